"""The polynomial envelope: what smoothness at r_max it actually guarantees.

u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) has u(1) = u'(1) = u''(1) = 0 for
every p, and u'''(1) = -p(p+1)(p+2) ≠ 0: energies are C², forces C¹ across the cutoff, whatever p
(the DimeNet/mace-torch envelope; p sets how flat it is near 0, not the order of contact at 1).
"""

from __future__ import annotations

import pytest
import torch

from lpmace.nn.radial import RadialEmbedding


def derivatives_at(envelope, x: float, order: int) -> list[float]:
    point = torch.tensor([[x]], dtype=torch.float64, requires_grad=True)
    values = [envelope(point)]
    for _ in range(order):
        values.append(torch.autograd.grad(values[-1].sum(), point, create_graph=True)[0])
    return [float(v.detach()) for v in values]


@pytest.mark.parametrize("p", [3, 5, 6])
def test_envelope_has_second_order_contact_at_r_max(p):
    r_max = 2.5
    embedding = RadialEmbedding(r_max, 4, p)
    u, du, d2u, d3u = derivatives_at(embedding.envelope, r_max * (1 - 1e-12), 3)
    assert abs(u) < 1e-10 and abs(du) < 1e-9 and abs(d2u) < 1e-6, (u, du, d2u)
    assert d3u == pytest.approx(-p * (p + 1) * (p + 2) / r_max**3, rel=1e-6)
    assert derivatives_at(embedding.envelope, 0.0, 0)[0] == 1.0


def test_envelope_and_radial_features_are_exactly_zero_beyond_r_max():
    embedding = RadialEmbedding(2.5, 4, 5).double()
    lengths = torch.tensor([[2.5], [2.5 + 1e-9], [3.0], [7.0]], dtype=torch.float64, requires_grad=True)
    features = embedding(lengths)
    assert torch.all(features == 0.0)
    (grad,) = torch.autograd.grad(features.sum(), lengths)
    assert torch.all(grad == 0.0)
