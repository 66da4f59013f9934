"""The GPU path measured: attention, NMS and training throughput on one CUDA device.

Three tables, printed as Markdown (and written as JSON with ``--out``):

``attention``
    ``Detector.attention`` of all seven registered methods on ``GPUnet(dim=3)`` (default
    width 32, Kaiming init, eval mode) for one volume of each ``--sizes`` (default 128³ and
    256³): median seconds over ``--repeats`` calls after a warm-up, peak GPU memory, and
    whether the volume had to be tiled. A method is first run on the whole volume; if that
    runs out of GPU memory it is run with ``tile_size`` ``--tile`` (exact tiling, see
    ``wsdet.attention.tiling``).
``nms``
    ``find_peaks_batch`` of a smooth random map (Gaussian-filtered noise, as in
    ``bench_nms.py``) on the GPU (the torch path, the map stays on the device) against the
    CPU (the SciPy path), at 168×128×84 (the paper's hippocampi crop) and each ``--sizes``;
    checks that both give identical candidates.
``train``
    Training throughput of ``Trainer.fit`` (GPUnet, Adam, the trainer's defaults otherwise)
    in images per second with ``precision`` fp32 / bf16 / fp16 (autocast; fp16 with a
    GradScaler): 2D batches of 64 × 1 × 140 × 196 (the MNIST grids' size) and 3D batches of
    2 × 1 × 64³. The median over epochs 2.. of ``images / epoch seconds`` (an epoch's
    seconds include its small validation pass).

Run on a GPU machine::

    python benchmarks/bench_gpu.py --out gpu.json

``--quick`` runs tiny sizes (a smoke test, also on a CPU with ``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

import wsdet
from wsdet.detection import find_peaks_batch
from wsdet.models import GPUnet
from wsdet.train import TrainConfig, Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**30


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


# --------------------------------------------------------------------------- attention


def bench_attention(
    device: torch.device, sizes: list[int], tile: int, repeats: int, width: int | None
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = GPUnet(dim=3, width=width, init="kaiming").to(device).eval()
    rows = []
    for size in sizes:
        x = torch.rand(1, 1, size, size, size, device=device)
        for method in wsdet.available_methods():
            det = wsdet.Detector(model, method=method)
            row: dict[str, Any] = {"method": method, "size": size, "tiled": False}
            for tiling in (None, (tile, tile, tile)):
                row["tiled"] = tiling is not None

                def call(
                    tiling: tuple[int, int, int] | None = tiling,
                    det: wsdet.Detector = det,
                    x: torch.Tensor = x,
                ) -> object:
                    return det.attention(x, tile_size=tiling)

                try:
                    peak_reset(device)
                    timed(call, device)  # warm-up
                    times = [timed(call, device) for _ in range(repeats)]
                except RuntimeError as err:
                    if not is_oom(err) or tiling is not None:
                        raise
                    continue
                row |= {"seconds": statistics.median(times), "peak_gib": peak_gib(device)}
                break
            rows.append(row)
            print(f"attention {method} {size}^3: {row}", flush=True)
        del x
    return rows


# --------------------------------------------------------------------------- NMS


def smooth_map(shape: tuple[int, ...], sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.ascontiguousarray(ndi.gaussian_filter(noise, sigma), dtype=np.float32)


def bench_nms(
    device: torch.device, shapes: list[tuple[int, ...]], repeats: int
) -> list[dict[str, Any]]:
    rows = []
    for shape in shapes:
        a = smooth_map(shape)
        cpu = torch.from_numpy(a)[None]
        gpu = cpu.to(device)
        ((c_cpu, s_cpu),) = find_peaks_batch(cpu, size=6)
        ((c_gpu, s_gpu),) = find_peaks_batch(gpu, size=6, backend="torch")
        same = torch.equal(c_cpu, c_gpu.cpu()) and torch.equal(s_cpu, s_gpu.cpu())
        on_cpu = lambda m=cpu: find_peaks_batch(m, size=6)  # noqa: E731
        on_gpu = lambda m=gpu: find_peaks_batch(m, size=6, backend="torch")  # noqa: E731
        t_cpu, t_gpu = [], []
        for _ in range(repeats + 1):  # the first round is a warm-up
            t_cpu.append(timed(on_cpu, torch.device("cpu")))
            t_gpu.append(timed(on_gpu, device))
        row = {
            "shape": "×".join(map(str, shape)),
            "candidates": int(c_cpu.shape[0]),
            "cpu_scipy_s": statistics.median(t_cpu[1:]),
            "gpu_torch_s": statistics.median(t_gpu[1:]),
            "identical": bool(same),
        }
        rows.append(row)
        print(f"nms {row}", flush=True)
    return rows


# --------------------------------------------------------------------------- training


def bench_train(
    device: torch.device, settings: list[tuple[int, int, tuple[int, ...]]], epochs: int
) -> list[dict[str, Any]]:
    rows = []
    for dim, batch, shape in settings:
        g = torch.Generator().manual_seed(0)
        n = 4 * batch
        x = torch.rand(n, 1, *shape, generator=g)
        y = (x > 0.999).flatten(1).sum(1).float()
        val = (x[:batch], y[:batch])
        for precision in ("fp32", "bf16", "fp16"):
            torch.manual_seed(0)
            model = GPUnet(dim=dim, init="kaiming").to(device)
            cfg = TrainConfig(
                optimizer="adam", lr=1e-3, batch_size=batch, max_epochs=epochs,
                precision=precision, progress="none",  # type: ignore[arg-type]
            )  # fmt: skip
            result = Trainer(model, cfg).fit((x, y), val)
            rates = [n / s for s in result.history["seconds"][1:]]
            row = {
                "dim": dim,
                "batch": f"{batch}×1×{'×'.join(map(str, shape))}",
                "precision": precision,
                "images_per_s": statistics.median(rates),
                "final_val_loss": result.history["val_loss"][-1],
            }
            rows.append(row)
            print(f"train {row}", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--tile", type=int, default=128, help="tile core size when needed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (>= 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--only", choices=("attention", "nms", "train"), nargs="+")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (use --device cpu --quick for a smoke test)")
        return 0
    parts = set(args.only or ("attention", "nms", "train"))
    width: int | None = None
    train_settings = [(2, 64, (140, 196)), (3, 2, (64, 64, 64))]
    nms_shapes: list[tuple[int, ...]] = [(168, 128, 84)] + [(s, s, s) for s in args.sizes]
    if args.quick:
        args.sizes, args.tile, args.repeats, args.epochs, width = [16], 8, 1, 2, 4
        train_settings = [(2, 4, (28, 28)), (3, 2, (16, 16, 16))]
        nms_shapes = [(24, 20, 16)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if "attention" in parts:
        report["attention"] = bench_attention(device, args.sizes, args.tile, args.repeats, width)
    if "nms" in parts:
        report["nms"] = bench_nms(device, nms_shapes, args.repeats)
    if "train" in parts:
        report["train"] = bench_train(device, train_settings, args.epochs)
    print(f"\n### GPU path on {name} (torch {torch.__version__}, CUDA {torch.version.cuda})\n")
    if "attention" in report:
        cols = ["method", "size", "tiled", "seconds", "peak_gib"]
        print("Attention, GPUnet(dim=3), one volume:\n\n" + table(report["attention"], cols))
    if "nms" in report:
        cols = ["shape", "candidates", "cpu_scipy_s", "gpu_torch_s", "identical"]
        print("\nNMS (size 6), GPU torch path vs CPU SciPy path:\n\n" + table(report["nms"], cols))
    if "train" in report:
        cols = ["dim", "batch", "precision", "images_per_s", "final_val_loss"]
        print("\nTraining throughput, GPUnet, Adam:\n\n" + table(report["train"], cols))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(r["identical"] for r in report.get("nms", [])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
