"""Smoke test of the metrics benchmark script, and the worked example of docs/metrics.md."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_runs_on_tiny_sizes(capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_metrics", ROOT / "benchmarks" / "bench_metrics.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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
    seconds = [float(x) for x in re.findall(r"\| ([0-9.]+) \|", table)]
    assert seconds and all(s >= 0 for s in seconds)


def test_worked_example_in_the_docs_reproduces():
    text = (ROOT / "docs" / "metrics.md").read_text()
    match = re.search(r"<<'EOF'\n(.*?)\nEOF\n```\n\nIt prints:\n\n```text\n(.*?)\n```", text, re.S)
    assert match, "docs/metrics.md must contain the worked example and its output"
    code, expected = match.group(1), match.group(2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/metrics.md", "exec"), {"__name__": "__docs__"})
    assert out.getvalue().rstrip() == expected.rstrip()
