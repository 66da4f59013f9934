"""The metrics benchmark script (its table, its FAUC, its MONAI comparison), and the worked
example of docs/metrics.md."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest

from wsdet.metrics import froc_curve, froc_score, match_images

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_metrics", ROOT / "benchmarks" / "bench_metrics.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def brute_force_fauc(fp_avg, sens, max_fp):
    """Trapezoids through the curve's points up to max_fp, flat beyond its end, / max_fp."""
    inside = fp_avg < max_fp
    xs = np.append(fp_avg[inside], max_fp)
    ys = np.append(sens[inside], np.interp(max_fp, fp_avg, sens))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2) / max_fp)


def test_benchmark_table_reports_the_data_and_its_fauc(capsys):
    bench = load_bench()
    table = bench.main(
        [
            "--images",
            "6",
            "--targets",
            "3",
            "--candidates",
            "15",
            "--size",
            "24",
            "--replicates",
            "20",
            "--repeats",
            "2",
            "--monai-replicates",
            "2",
        ]
    )
    assert table == capsys.readouterr().out.strip()
    for row in (
        "| matching |",
        "| FROC curve |",
        "| bootstrap (20 replicates) |",
        "| total |",
        "| speed-up (MONAI / wsdet) |",
    ):
        assert row in table
    # timings are machine-dependent and not asserted; what the header states about the
    # data and its FAUC is checked against the data itself
    points, scores, targets = bench.make_data(6, 3, 15, 24, 0)
    head = re.search(r"(\d+) targets, (\d+) candidates, radius 6, FAUC 0-15 = ([0-9.]+);", table)
    assert head, table.splitlines()[0]
    assert int(head.group(1)) == sum(len(t) for t in targets)
    assert int(head.group(2)) == sum(len(s) for s in scores)
    curve = froc_curve(match_images(points, scores, targets, radius=6.0))
    assert float(head.group(3)) == pytest.approx(
        brute_force_fauc(curve.fp_avg, curve.sensitivity, 15.0), abs=5e-5
    )


def test_benchmark_data_scores_the_same_with_monai():
    """What the benchmark times in MONAI computes the same FROC score as wsdet."""
    monai = pytest.importorskip("monai.metrics")
    points, scores, targets = load_bench().make_data(40, 4, 30, 24, 1)
    probs = [1.0 / (1.0 + np.exp(-s)) for s in scores]  # MONAI needs probabilities in (0, 1)
    results = match_images(points, probs, targets, radius=6.0)
    fp = np.concatenate([r.scores[r.det_label == 0] for r in results])
    # MONAI's per-target probabilities: the score of the detection credited, 0 if missed
    tp = np.concatenate([np.where(r.gt_hit, r.gt_score, 0.0) for r in results])
    n_targets = sum(r.n_targets for r in results)
    fps, sens = monai.compute_froc_curve_data(fp, tp.astype(np.float32), n_targets, len(results))
    expected = monai.compute_froc_score(fps, sens)
    assert froc_score(froc_curve(results, compat="monai")) == pytest.approx(expected, abs=1e-12)


def test_worked_example_in_the_docs_reproduces():
    text = (ROOT / "docs" / "metrics.md").read_text()
    match = re.search(r"<<'EOF'\n(.*?)\nEOF\n```\n\nIt prints:\n\n```text\n(.*?)\n```", text, re.S)
    assert match, "docs/metrics.md must contain the worked example and its output"
    code, expected = match.group(1), match.group(2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/metrics.md", "exec"), {"__name__": "__docs__"})
    assert out.getvalue().rstrip() == expected.rstrip()
