"""Memory and time of exact tiled attention against untiled attention, GPUnet 3D.

For every attention method, ``GPUnet(dim=3)`` at its default width (32), one volume of
``N³`` voxels (``--sizes``, default 128 and 256): the untiled ``Detector.attention_and_count``
and the tiled one (``tile_size=`` per method, ``--tiles``). Each configuration ("cell")
runs in a fresh subprocess, which reports

* peak RSS above the baseline (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the
  call minus the same after building the model and the input), and the absolute peak;
* wall time of the call, of which the probe (receptive field + verification, once per
  model);
* the probed radius ``R``, the halo and the number of tiles.

Finished cells are appended to a JSON file under ``runs/`` (git-ignored); a rerun skips
them, so the script can be interrupted and resumed. Maps of the 128³ cells are saved next
to it, so that tiled and untiled maps are compared (max |Δ| / max |untiled|). The untiled
256³ cells are skipped by default (``--untiled-max``): they need 24–37 GB.

``--write-docs`` rewrites the tiled-attention section of ``docs/benchmarks.md`` from the
JSON file (other sections untouched). ``--quick`` is a smoke run (width 4, 32³ and 48³).

Run: ``nohup python benchmarks/bench_tiling.py > /tmp/bench_tiling.log 2>&1 &``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = [
    "gp_unet",
    "gp_unet_no_residual",
    "gated_attention",
    "grad_cam",
    "intensity",
    "grad",
    "guided_backprop",
]
#: Core sizes per method and volume edge (memory of one tile: < 4 GiB at 256³).
TILES: dict[str, dict[int, tuple[int, int, int]]] = {
    "forward": {128: (128, 128, 64), 256: (128, 128, 64)},
    "grad": {128: (128, 128, 64), 256: (128, 64, 64)},
    "guided_backprop": {128: (128, 128, 64), 256: (128, 64, 64)},
}
QUICK_TILES = {"forward": (32, 16, 16), "grad": (32, 16, 16), "guided_backprop": (32, 16, 16)}
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Tiled attention (`benchmarks/bench_tiling.py`)"


def _family(method: str) -> str:
    return method if method in ("grad", "guided_backprop") else "forward"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- one cell


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model and the input, run one configuration, report (in the subprocess)."""
    import torch

    import wsdet
    from wsdet.attention.tiling import TiledAttention
    from wsdet.models import GPUnet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPUnet(dim=3, width=args.width).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((1, 1, args.size, args.size, args.size), generator=gen)
    det = wsdet.Detector(model, method=args.method)
    base = _rss_mib()
    tiled = None
    times, probe = [], 0.0
    for i in range(args.repeats):
        t0 = time.perf_counter()
        if args.mode == "untiled":
            maps, y = det.attention_and_count(x)
        else:
            tiled = TiledAttention(det.method, tile_size=tuple(args.tile))
            with det._mode():
                maps, y = tiled(x)
            if i == 0:
                probe = tiled.probe_seconds
        times.append(time.perf_counter() - t0 - (probe if i == 0 else 0.0))
        if i + 1 < args.repeats:
            del maps, y
    seconds = min(times)  # without the probe (cached per model after the first call)
    peak = _rss_mib()
    out: dict[str, Any] = {
        "size": args.size,
        "method": args.method,
        "mode": args.mode,
        "width": args.width,
        "threads": args.threads,
        "seconds": seconds,
        "repeats": args.repeats,
        "per_mvoxel_s": seconds / (args.size**3 / 1e6),
        "rss_base_mib": base,
        "rss_peak_mib": peak,
        "rss_delta_mib": peak - base,
        "y": float(y[0]),
    }
    if tiled is not None:
        plan = tiled.plan
        assert plan is not None
        out.update(
            tile=list(args.tile),
            radius=list(tiled.radius or ()),
            halo=list(tiled.halo or ()),
            tiles=len(plan.tiles),
            overhead=plan.overhead,
            probe_s=probe,
        )
    if args.save_map:
        torch.save(maps.detach().clone(), args.save_map)
    return out


# ------------------------------------------------------------------------ orchestration


def _cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    cells = []
    for k, size in enumerate(args.sizes):
        repeats = args.repeats[min(k, len(args.repeats) - 1)]
        for method in args.methods:
            fam = _family(method)
            tile = list(QUICK_TILES[fam] if args.quick else TILES[fam][size])
            for mode in ("untiled", "tiled"):
                if mode == "untiled" and size > args.untiled_max:
                    continue
                cells.append(
                    {"size": size, "method": method, "mode": mode, "tile": tile, "repeats": repeats}
                )
    return cells


def _key(c: dict[str, Any]) -> str:
    return f"{c['size']}/{c['method']}/{c['mode']}"


def orchestrate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    maps_dir = out.parent / (out.stem + "_maps")
    maps_dir.mkdir(exist_ok=True)
    for cell in _cells(args):
        key = _key(cell)
        if key in done:
            print(f"skip {key} (done)", flush=True)
            continue
        save = maps_dir / f"{cell['size']}_{cell['method']}_{cell['mode']}.pt"
        cmd = [
            sys.executable,
            __file__,
            "--cell",
            "--size",
            str(cell["size"]),
            "--method",
            cell["method"],
            "--mode",
            cell["mode"],
            "--tile",
            *map(str, cell["tile"]),
            "--width",
            str(args.width),
            "--threads",
            str(args.threads),
            "--repeats",
            str(cell["repeats"]),
        ]
        if cell["size"] <= args.untiled_max:
            cmd += ["--save-map", str(save)]
        print(f"run {key} ...", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"FAILED {key} ({time.perf_counter() - t0:.0f} s):\n{proc.stderr}", flush=True)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        done[key] = result
        out.write_text(json.dumps(done, indent=1))
        mib = result["rss_delta_mib"]
        print(f"done {key}: {result['seconds']:.1f} s, +{mib:.0f} MiB", flush=True)
    _compare_maps(done, maps_dir, args)
    out.write_text(json.dumps(done, indent=1))


def _compare_maps(done: dict[str, Any], maps_dir: Path, args: argparse.Namespace) -> None:
    import torch

    for size in args.sizes:
        for method in args.methods:
            a = maps_dir / f"{size}_{method}_untiled.pt"
            b = maps_dir / f"{size}_{method}_tiled.pt"
            key = f"{size}/{method}/tiled"
            if key in done and a.exists() and b.exists():
                ref, got = torch.load(a), torch.load(b)
                done[key]["max_rel_err"] = float((got - ref).abs().max() / ref.abs().max())


# ---------------------------------------------------------------------------- the docs


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f}"


def table(done: dict[str, Any], sizes: list[int]) -> str:
    """The results as a markdown table (with the machine line above it)."""
    import torch

    widths = sorted({c["width"] for c in done.values()})
    threads = sorted({c.get("threads", 2) for c in done.values()})
    repeats = sorted({c.get("repeats", 1) for c in done.values()})
    rows = [
        f"Machine: {_machine()} ({os.cpu_count()} cores), {', '.join(map(str, threads))} "
        f"threads, torch {torch.__version__}, Python {platform.python_version()}. "
        f"GPUnet(dim=3), width {', '.join(map(str, widths))}, one volume (B=1, C=1), float32. "
        "ΔRSS: increase of the peak resident memory (`ru_maxrss`) during the call, each cell "
        "in a fresh process. Times in seconds per million voxels, the fastest of "
        f"{'/'.join(map(str, repeats))} calls, the tiled ones without the probe (measured "
        "once per model and input layout, then cached; its time is the probe column). "
        "Ratio: tiled ÷ untiled per voxel at the same size (256³: ÷ untiled 128³).",
        "",
        "| size | method | tile core | R / halo | tiles (voxels computed) | untiled ΔRSS (GiB) "
        "| untiled s/Mvox | tiled ΔRSS (GiB) | tiled s/Mvox | probe (s) | ratio "
        "| max Δ / max |untiled| |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        for method in METHODS:
            t = done.get(f"{size}/{method}/tiled")
            u = done.get(f"{size}/{method}/untiled")
            ref = u or done.get(f"128/{method}/untiled")
            if t is None and u is None:
                continue
            cols = [f"{size}³", method]
            if t:
                cols += [
                    "×".join(map(str, t["tile"])),
                    f"{t['radius'][0]} / {t['halo'][0]}",
                    f"{t['tiles']} ({t['overhead']:.2f}×)",
                ]
            else:
                cols += ["—", "—", "—"]
            cols += [_gib(u["rss_delta_mib"]), f"{u['per_mvoxel_s']:.2f}"] if u else ["—", "—"]
            if t:
                ratio = t["per_mvoxel_s"] / ref["per_mvoxel_s"] if ref else None
                cols += [
                    _gib(t["rss_delta_mib"]),
                    f"{t['per_mvoxel_s']:.2f}",
                    f"{t['probe_s']:.1f}",
                    "—" if ratio is None else f"{ratio:.2f}" + ("" if u else " (vs 128³)"),
                    f"{t['max_rel_err']:.1e}" if "max_rel_err" in t else "—",
                ]
            else:
                cols += ["not run"] + ["—"] * 4
            rows.append("| " + " | ".join(cols) + " |")
    return "\n".join(rows)


def _reading(done: dict[str, Any]) -> list[str]:
    """Target checks, computed from the results."""
    out = []
    big = [
        (c["rss_delta_mib"], c["rss_peak_mib"], c["method"])
        for c in done.values()
        if c["size"] == 256 and c["mode"] == "tiled"
    ]
    if big:
        worst, peak, method = max(big)
        ok = "met" if worst < 4096 else "missed"
        out.append(
            f"- Memory: the largest tiled 256³ increase is {_gib(worst)} GiB ({method}; the "
            f"whole process, model and input included, peaked at {_gib(peak)} GiB); target "
            f"< 4 GiB {ok} for the {len(big)} methods run."
        )
    ratios = []
    for c in done.values():
        u = done.get(f"{c['size']}/{c['method']}/untiled")
        if c["mode"] == "tiled" and u:
            ratios.append((c["per_mvoxel_s"] / u["per_mvoxel_s"], c["method"]))
    if ratios:
        over = sorted(m for r, m in ratios if r > 1.5)
        out.append(
            f"- Time where the untiled call fits (128³): tiled ÷ untiled per voxel "
            f"{min(ratios)[0]:.2f}–{max(ratios)[0]:.2f}; target ≤ 1.5 "
            + (f"missed for {', '.join(over)}." if over else "met for every method.")
        )
    big_ratios = []
    for c in done.values():
        u = done.get(f"128/{c['method']}/untiled")
        if c["mode"] == "tiled" and c["size"] > 128 and u:
            big_ratios.append((c["per_mvoxel_s"] / u["per_mvoxel_s"], c["overhead"], c["method"]))
    if big_ratios:
        lo, hi = min(big_ratios), max(big_ratios)
        out.append(
            f"- Larger than fits (256³, tiles sized for < 4 GiB): per voxel {lo[0]:.2f}–"
            f"{hi[0]:.2f}× the untiled 128³ call. The excess follows the voxels computed "
            f"twice in halos ({lo[1]:.2f}× for {lo[2]} to {hi[1]:.2f}× for {hi[2]}); guided "
            "backprop is the most expensive because its halo is 2R and its tiles are the "
            "most memory-hungry."
        )
    return out


def write_docs(args: argparse.Namespace) -> None:
    done = json.loads(Path(args.out).read_text())
    missing = [_key(c) for c in _cells(args) if _key(c) not in done]
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    body = [
        SECTION,
        "",
        "Exact tiled attention (`Detector.attention(x, tile_size=...)`, see "
        "`wsdet.attention.tiling`) against the untiled call. Targets: tiled 256³ under 4 GiB "
        "peak for every method; time per voxel within 1.5× of untiled where the untiled call "
        "fits.",
        "",
        f"Command: `{args.command}` (in the background, resumable: finished cells are kept in "
        "`runs/bench_tiling.json`; `--write-docs` rewrites this section from it)",
        "",
        table(done, args.sizes),
        "",
        *_reading(done),
        "",
    ]
    if missing:
        body += [f"Not finished when this table was written: {', '.join(missing)}.", ""]
    body += [
        "The untiled 256³ calls are not run: they would need 24–37 GB (8× the 128³ peaks), "
        "more than this 24 GiB machine has.",
        "",
    ]
    section = "\n".join(body)
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.write_text(text)
    print(f"wrote {DOCS} ({len(done)} cells)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats",
        type=int,
        nargs="+",
        default=None,
        help="calls per cell, per size in --sizes order (default 2 1; the fastest is kept)",
    )
    p.add_argument("--untiled-max", type=int, default=128, help="largest untiled size run")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_tiling.json"))
    p.add_argument("--quick", action="store_true", help="smoke run: width 4, 32³ and 48³")
    p.add_argument("--write-docs", action="store_true", help="write the docs table and exit")
    # one cell (internal)
    p.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["untiled", "tiled"], help=argparse.SUPPRESS)
    p.add_argument("--tile", type=int, nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--save-map", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        args.repeats = (args.repeats or [1])[0]
        print(json.dumps(run_cell(args)))
        return
    if args.repeats is None:
        args.repeats = [2, 1]
    if args.quick:
        args.width, args.sizes, args.untiled_max = 4, [32, 48], 48
        if args.out == str(ROOT / "runs" / "bench_tiling.json"):
            args.out = str(ROOT / "runs" / "bench_tiling_quick.json")
    args.command = " ".join(
        ["python benchmarks/bench_tiling.py", *(a for a in sys.argv[1:] if a != "--write-docs")]
    )
    if args.write_docs:
        write_docs(args)
        return
    orchestrate(args)
    if args.quick:  # a smoke run never touches the docs
        print(table(json.loads(Path(args.out).read_text()), args.sizes))
    else:
        write_docs(args)


if __name__ == "__main__":
    main()
