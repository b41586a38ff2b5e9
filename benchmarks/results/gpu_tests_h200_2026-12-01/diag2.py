import sys, torch
sys.path.insert(0, "tests")
from conftest import tiny_model
from lpmace import datasets
from lpmace.data import graph_from_configuration, read_configurations, collate
from lpmace.data.extxyz import Configuration
import dataclasses
c0 = read_configurations(datasets.path("3bpa/test_300K.xyz"))[0]
def sub(n):
    return graph_from_configuration(Configuration(numbers=c0.numbers[:n], positions=c0.positions[:n], cell=c0.cell, pbc=c0.pbc), 4.0).to("cuda")
for shift in (0.1, 0.3):
    m = tiny_model(max_ell=1, max_L=0, shift=shift).to("cuda")
    for n in (27, 20, 9):
        g = sub(n)
        r = float(m(g, precision="fp64", backend="reference")["energy"][0])
        c = float(m(g, precision="fp64", backend="compiled")["energy"][0])
        print(f"shift {shift} atoms {n} edges {g.num_edges}: compiled - reference = {c - r:+.6f} eV", flush=True)
