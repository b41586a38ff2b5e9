"""`lpmace.bench.report`: report.md, a self-contained report.html and the PNG figures of a results dict."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
from matplotlib.image import imread

from lpmace.bench.report import fmt_error, fmt_number, write_report

PRECISIONS = ("fp64", "fp32", "bf16-mixed")
MACE_TORCH = (("e3nn", "fp64"), ("e3nn", "fp32"))
FIGURES = ("pareto.png", "scaling.png", "nve.png", "time_to_accuracy.png")


def _who(code, backend, precision):
    return {"code": code, "backend": backend, "precision": precision}


def _engines():
    return [("lpmace", "reference", p) for p in PRECISIONS] + [("mace-torch", b, p) for b, p in MACE_TORCH]


def _speed_row(workload, who, atoms, median_ms, memory_mb, status="ok"):
    ok = status == "ok"
    return {"workload": workload, **_who(*who), "atoms": atoms, "edges": atoms * 50, "repeats": 20,
            "median_ms": median_ms if ok else None, "iqr_ms": 0.8 if ok else None,
            "min_ms": median_ms * 0.97 if ok else None, "max_ms": median_ms * 1.1 if ok else None,
            "atom_steps_per_s": atoms / median_ms * 1e3 if ok else None,
            "peak_memory_mb": memory_mb, "status": status}


def _trace(steps, slope, blow_up_at=None):
    time = [float(i) for i in range(steps)]
    energy = [-4000.0 + slope * t + 0.01 * math.sin(t) for t in time]
    if blow_up_at is not None:
        time, energy = time[:blow_up_at], energy[:blow_up_at]
        energy[-1] += 5e4
    return {"time_fs": time, "total_mev_per_atom": energy}


def synthetic_results() -> dict:
    """A GPU-shaped results dict: lpmace at three precisions beside mace-torch e3nn fp64/fp32, one OOM
    scaling point, one OOM speed row, one unstable MD run, roofline skipped with its reason."""
    train_ms = {"fp64": 120.0, "fp32": 71.7, "bf16-mixed": 40.25}
    infer_ms = {"fp64": 209.6, "fp32": 128.7, "bf16-mixed": 55.3}
    rel_error = {"fp64": 0.0, "fp32": 1.8e-6, "bf16-mixed": 9.4e-3}
    memory_mb = {"fp64": 33500.0, "fp32": 16812.0, "bf16-mixed": 11700.0}
    work = {"fp64": 2.0, "fp32": 1.0, "bf16-mixed": 0.5}
    speed, scaling, accuracy, equivariance, md = [], [], [], [], []
    for who in _engines():
        precision = who[2]
        speed.append(_speed_row("train W1", who, 864, train_ms[precision] * (1.2 if who[0] == "mace-torch" else 1),
                                1200.0))
        if who == ("mace-torch", "e3nn", "fp64"):
            speed.append(_speed_row("infer W2", who, 4096, None, None, status="OOM"))
        else:
            speed.append(_speed_row("infer W2", who, 4096, infer_ms[precision], memory_mb[precision]))
        for atoms in (512, 1024, 2048, 4096):
            failed = who == ("lpmace", "reference", "fp64") and atoms == 4096
            ms = atoms / 40.0 * work[precision] * (1.3 if who[0] == "mace-torch" else 1.0)
            scaling.append({**_who(*who), "atoms": atoms, "edges": atoms * 50, "median_ms": None if failed else ms,
                            "atom_steps_per_s": None if failed else atoms / ms * 1e3,
                            "peak_memory_mb": None if failed else atoms * 4.0 * work[precision],
                            "status": "OOM" if failed else "ok"})
        accuracy.append({"dataset": "W2 box", "configs": 1, "atoms": 4096, **_who(*who),
                         "energy_rmse_mev_per_atom": rel_error[precision] * 10, "energy_max_mev_per_atom": None,
                         "force_rmse_mev_per_A": rel_error[precision] * 1000, "force_max_mev_per_A": None,
                         "force_rel_rmse": rel_error[precision], "stress_rmse_mev_per_A3": None})
        equivariance.append({**_who(*who), "rotations": 8, "force_rel_rmse_rotation": 1.1e-7,
                             "force_rel_rmse_reflection": float("nan"), "energy_rel_rotation": 2.5e-8})
        if who[0] == "lpmace":
            for engine in ("ase", "torch"):  # bf16-mixed blows up on ASE's engine only
                unstable = precision == "bf16-mixed" and engine == "ase"
                md.append({"system": "3BPA molecule", "atoms": 27, "engine": engine, **_who(*who), "steps": 200,
                           "steps_done": 120 if unstable else 200, "dt_fs": 0.5, "temperature_K": 300.0,
                           "drift_mev_per_atom_per_ps": None if unstable else 0.0123,
                           "fluctuation_mev_per_atom": 0.5, "drift_vs_fp64": None, "stable": not unstable,
                           "unstable_step": 120 if unstable else None, "reason": "energy jump" if unstable else None,
                           "ms_per_step": 4.0 if engine == "ase" else 1.5,
                           "model_ms_per_step": None if engine == "ase" else 1.25,
                           "neighbour_list_builds": 121 if unstable else (201 if engine == "ase" else 7),
                           "trace": _trace(200, 0.0123e-3, blow_up_at=120 if unstable else None)})
    runs = [{**_who("lpmace", "reference", p), "metric": "test force RMSE",
             "curve": [{"time_s": t, "epoch": i, "force_rmse_mev_per_A": 300.0 / (1 + t / 10)}
                       for i, t in enumerate((5.0, 20.0, 60.0, 150.0))],
             "time_to_target_s": 150.0 if p == "fp32" else None, "final_force_rmse_mev_per_A": 18.75,
             "status": "ok"} for p in ("fp32", "bf16-mixed")]
    return {
        "schema": 1,
        "environment": {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "driver": "580.65",
                        "cuda": "13.0", "torch": "2.11.0", "triton": "3.5.0", "e3nn": "0.5.6", "mace_torch": "0.3.16",
                        "python": "3.12.3", "platform": "Linux", "lpmace": "0.1.0", "git_commit": "f665235",
                        "date": "2026-11-25T10:00:00Z", "command": "lpmace bench --quick"},
        "settings": {"model": "MACE L=1 128 channels", "model_config": {"max_ell": 3, "channels": 128},
                     "parameters": 1234567, "precisions": list(PRECISIONS), "backends": ["reference"],
                     "workloads": ["train W1", "infer W2"], "quick": True, "repeats": 20, "warmup": 5, "seed": 1},
        "speed": speed, "scaling": scaling, "accuracy": accuracy, "equivariance": equivariance, "md": md,
        "time_to_accuracy": {"target_mev_per_A": 40.0, "budget_s": 300.0, "runs": runs},
        "skipped": [{"section": "roofline", "what": "roofline", "why": "no peak table entry for this device"},
                    {"section": "speed", "what": "mace-torch cueq fp32", "why": "cuequivariance is not installed"}],
    }


@pytest.fixture
def results():
    return synthetic_results()


def _table_row(markdown: str, *first_cells: str) -> list[str]:
    """The cells of the first Markdown table row that starts with `first_cells`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no table row starting {first_cells}")


def _section(markdown: str, heading: str) -> str:
    """The text of one `## heading` section."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.DOTALL | re.MULTILINE)
    assert match, f"no section {heading!r}"
    return match.group(1)


def test_numbers_are_formatted_to_three_significant_figures():
    assert fmt_number(71.73) == "71.7"
    assert fmt_number(16812.0) == "16,800"
    assert fmt_number(4096) == "4,096"
    assert fmt_number(0.0421) == "0.0421"
    assert fmt_number(3.2e7) == "3.20e7"
    assert fmt_error(1.8e-6) == "1.80e-6"
    assert fmt_error(9.4e-3) == "9.40e-3"
    assert fmt_error(0.0) == "0"
    for fmt in (fmt_number, fmt_error):
        assert fmt(None) == "—"
        assert fmt(float("nan")) == "nan"


def test_every_file_is_written_and_every_png_is_an_image(results, tmp_path):
    written = write_report(results, tmp_path / "report")
    assert set(written) == {"report.md", "report.html", *FIGURES}
    for name, path in written.items():
        assert path == tmp_path / "report" / name and path.stat().st_size > 0
    for name in FIGURES:
        image = imread(written[name])
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200 and image.shape[2] in (3, 4)
        # Not a blank canvas: something was drawn.
        assert np.ptp(image[..., :3]) > 0.5


def test_markdown_has_every_section_and_the_numbers(results, tmp_path):
    markdown = write_report(results, tmp_path)["report.md"].read_text()
    for heading in ("Headline", "Environment", "Settings", "Speed", "Scaling with system size", "Memory",
                    "Accuracy against fp64", "Equivariance", "MD stability (NVE)", "Time to accuracy", "Roofline"):
        assert f"\n## {heading}\n" in markdown
    assert markdown.index("## Headline") < markdown.index("## Environment") < markdown.index("## Speed")
    assert "NVIDIA H100 80GB HBM3" in markdown and "lpmace bench --quick" in markdown and "f665235" in markdown
    for image in FIGURES:
        assert f"]({image})" in markdown

    # Headline: bf16 against the mace-torch e3nn fp32 baseline (W1 86.04 ms, W2 128.7 ms).
    headline = _section(markdown, "Headline")
    bf16 = _table_row(headline, "lpmace", "reference", "bf16-mixed")
    assert bf16[3:8] == ["40.2", "2.14", "55.3", "11,700", "2.33"]
    assert bf16[8:11] == ["9.40e-3", "1.10e-7", "unstable at step 120"]
    assert _table_row(headline, "lpmace", "reference", "fp32")[8:11] == ["1.80e-6", "1.10e-7", "1.23e-2"]
    assert _table_row(headline, "lpmace", "reference", "fp64")[8] == "0"
    assert _table_row(headline, "mace-torch", "e3nn", "fp32")[4] == "1"
    assert _table_row(headline, "mace-torch", "e3nn", "fp64")[5:8] == ["OOM", "OOM", "—"]
    assert "mace-torch e3nn fp32" in headline

    speed = _section(markdown, "Speed")
    assert _table_row(speed, "infer W2", "mace-torch", "e3nn", "fp64")[-1] == "OOM"
    assert _table_row(speed, "infer W2", "lpmace", "reference", "fp32")[7] == "129"
    assert "skipped mace-torch cueq fp32: cuequivariance is not installed" in speed
    memory = _section(markdown, "Memory")
    assert _table_row(memory, "infer W2", "lpmace", "reference", "bf16-mixed")[5:] == ["11,700", "0.696"]
    scaling = _section(markdown, "Scaling with system size")
    assert _table_row(scaling, "lpmace", "reference", "fp64", "4,096")[-1] == "OOM"
    accuracy = _section(markdown, "Accuracy against fp64")
    assert _table_row(accuracy, "W2 box", "1", "4,096", "lpmace", "reference", "bf16-mixed")[10:] == [
        "9.40e-3", "—"]
    equivariance = _section(markdown, "Equivariance")
    assert _table_row(equivariance, "lpmace", "reference", "fp32")[3:] == ["8", "1.10e-7", "nan", "2.50e-8"]
    md = _section(markdown, "MD stability (NVE)")
    assert "no: step 120 (energy jump)" in _table_row(md, "3BPA molecule", "27", "ase", "lpmace", "reference",
                                                       "bf16-mixed")
    assert _table_row(md, "3BPA molecule", "27", "torch", "lpmace", "reference", "bf16-mixed")[12] == "yes"
    assert _table_row(md, "3BPA molecule", "27", "ase", "lpmace", "reference", "fp32")[6:8] == ["200 / 200", "0.5"]
    assert _table_row(md, "3BPA molecule", "27", "ase", "lpmace", "reference", "fp32")[-3:] == ["4", "—", "201"]
    assert _table_row(md, "3BPA molecule", "27", "torch", "lpmace", "reference", "fp32")[-3:] == ["1.5", "1.25", "7"]
    # per engine and precision: systems, atoms, blow-ups, summed times and builds
    assert _table_row(md, "ase", "lpmace", "reference", "bf16-mixed")[4:] == ["1", "27", "1", "4", "—", "121"]
    assert _table_row(md, "torch", "lpmace", "reference", "bf16-mixed")[4:] == ["1", "27", "0", "1.5", "1.25", "7"]
    # the headline shows the ASE engine's drift where both engines ran
    headline = _section(markdown, "Headline")
    assert _table_row(headline, "lpmace", "reference", "bf16-mixed")[-1] == "unstable at step 120"
    time_to_accuracy = _section(markdown, "Time to accuracy")
    assert "Target 40 meV/Å, budget 300 s" in time_to_accuracy
    assert _table_row(time_to_accuracy, "lpmace", "reference", "fp32")[4:7] == ["150", "18.8", "3"]


def test_html_is_self_contained(results, tmp_path):
    written = write_report(results, tmp_path)
    page = written["report.html"].read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert "<h2>Accuracy against fp64</h2>" in page and "<td>9.40e-3</td>" in page and "<td>—</td>" in page


def test_missing_sections_say_what_was_skipped_and_why(results, tmp_path):
    markdown = write_report(results, tmp_path)["report.md"].read_text()
    roofline = _section(markdown, "Roofline")
    assert "Not measured." in roofline and "skipped roofline: no peak table entry for this device" in roofline

    bare = {"schema": 1, "environment": {"device": "cpu"}, "settings": {},
            "skipped": [{"section": "md", "what": "NVE runs", "why": "--quick"}]}
    written = write_report(bare, tmp_path / "bare")
    assert set(written) == {"report.md", "report.html"}
    markdown = written["report.md"].read_text()
    assert "skipped NVE runs: --quick" in _section(markdown, "MD stability (NVE)")
    assert "no scaling results in results.json and no reason recorded" in _section(markdown, "Scaling with system size")
    assert "Figure pareto.png not drawn: no accuracy rows" in markdown
    assert _table_row(_section(markdown, "Environment"), "torch") == ["torch", "—"]
    assert "<li>skipped NVE runs: --quick</li>" in written["report.html"].read_text()
    assert "None recorded." in _section(markdown, "Settings")


def test_an_empty_results_dict_still_reports_every_section(tmp_path):
    markdown = write_report({}, tmp_path)["report.md"].read_text()
    assert "No speed, accuracy, equivariance or MD results to summarise." in markdown
    for heading in ("Speed", "Scaling with system size", "Memory", "Accuracy against fp64", "Equivariance",
                    "MD stability (NVE)", "Time to accuracy", "Roofline"):
        assert "Not measured." in _section(markdown, heading) and "no reason recorded" in _section(markdown, heading)


def test_cpu_results_without_peak_memory(results, tmp_path):
    cpu = copy.deepcopy(results)
    cpu["environment"]["device"] = "cpu"
    for row in cpu["speed"] + cpu["scaling"]:
        row["peak_memory_mb"] = None
    written = write_report(cpu, tmp_path)
    markdown = written["report.md"].read_text()
    assert _table_row(_section(markdown, "Headline"), "lpmace", "reference", "fp32")[6] == "—"
    assert "skipped peak memory: not measured on CPU" in _section(markdown, "Memory")
    assert imread(written["scaling.png"]).shape[0] > 200


def test_md_rows_from_before_the_torch_engine_are_ase_rows(results, tmp_path):
    old = copy.deepcopy(results)
    old["md"] = [r for r in old["md"] if r["engine"] == "ase"]
    for row in old["md"]:
        for key in ("engine", "ms_per_step", "model_ms_per_step", "neighbour_list_builds"):
            del row[key]
        row["wall_s_per_step"] = 0.004
    md = _section(write_report(old, tmp_path)["report.md"].read_text(), "MD stability (NVE)")
    assert _table_row(md, "3BPA molecule", "27", "ase", "lpmace", "reference", "fp32")[-3:] == ["4", "—", "—"]


def test_a_figure_that_fails_to_draw_does_not_cost_the_report(results, tmp_path):
    broken = copy.deepcopy(results)
    broken["md"][0]["trace"]["total_mev_per_atom"] = "not a list of numbers"
    written = write_report(broken, tmp_path)
    assert "nve.png" not in written and "Figure nve.png not drawn: drawing failed" in written["report.md"].read_text()
