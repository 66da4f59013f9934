"""Benchmark of wsdet.train.Trainer against a plain hand-written PyTorch training loop.

Three measurements, each printed as a Markdown table:

``throughput`` (default)
    Training images per second of ``Trainer.fit`` (its defaults: Adadelta, memory format
    ``"auto"``, fp32, eager; one epoch per ``fit`` call) against a plain eager fp32 NCHW loop
    (shuffle, forward, MSE, backward, Adadelta step) on the same model, data and optimiser;
    both score the same validation images after the epoch. The two alternate epoch by epoch
    (ABBA order) so that drifting machine load hits both alike; medians over ``--repeats``
    pairs, and the median of the per-pair ratios.
``steps``
    Seconds per optimiser step (forward + backward + Adadelta) of one model in the
    variants eager fp32 NCHW / channels_last (naive, and with the Trainer's unambiguous
    strides) / bf16 autocast / torch.compile / compile + channels_last, interleaved step by
    step; median over ``--steps``.

2D data are MNIST grids (140 x 196, target digit 4) from ``$WSDET_MNIST_DIR`` (default
``../shared/data/mnist``), random images if absent; 3D data are synthetic lesion volumes
(1 x 32 x 64 x 64 by default). Examples::

    python benchmarks/bench_train.py throughput --dim 2 --arch all
    python benchmarks/bench_train.py throughput --dim 3 --arch all --images 6
    python benchmarks/bench_train.py steps --dim 2 --arch gpunet --steps 8

``convergence``
    Trains GP-Unet 2D to count digit ``--target`` (Adam, Kaiming init, standardised targets,
    the paper's augmentation, batch 64, 100 validation grids) on the paper's 400 fixed
    training grids, or with ``--fresh`` on 400 newly drawn grids every epoch, for at most
    ``--minutes`` of training (resumable: rerun the same command to continue after an
    interruption), and reports the first epoch and time at which the validation count MAE
    falls below ``--mae`` and the test MAE of the best model::

    python benchmarks/bench_train.py convergence --out runs/conv_fixed --minutes 25
    python benchmarks/bench_train.py convergence --fresh --out runs/conv_fresh --minutes 25

    Then it scores the best model's GP-Unet detections on the 500 test grids (box
    matching, FAUC over 0-2 FP/image) at each of ``--nms-sizes`` (default 6).

``convergence3d``
    The same question for a 3D network on the lesion study's phantoms (``--setting``,
    ``--shape3d``, ``--width``; Adam, standardised targets, batch 4, the paper's
    augmentation unless ``--no-augment``); prints the validation count MAE every 5 epochs::

    python benchmarks/bench_train.py convergence3d --shape3d 16 32 32 --no-augment \\
        --lr 1e-3 --init conv-kaiming --threads 1 --minutes 20 --out runs/conv3d_noaug

``activity``
    A diagnostic of the count-regression plateau: trains GP-Unet 2D with Adam on the 400
    fixed training grids (standardised targets, no augmentation, batches of ``--batch``,
    default 16) for ``--iters`` steps and prints every 50 steps the validation count MAE,
    the spread of the predicted counts and, per convolution, the fraction of positive
    (alive) ReLU outputs on the validation grids::

    python benchmarks/bench_train.py activity --lr 3e-3 --iters 300
    python benchmarks/bench_train.py activity --lr 3e-3 --warmup 200 --iters 300
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsdet.models import BaseCNN, GatedAttentionNet, GPUnet, GPUnetNoResidual
from wsdet.train import TrainConfig, Trainer

ARCHS: dict[str, type[nn.Module]] = {
    "gpunet": GPUnet,
    "gated_attention": GatedAttentionNet,
    "basecnn": BaseCNN,
    "gpunet_no_residual": GPUnetNoResidual,
}
REPO = Path(__file__).resolve().parents[1]


def load_data(dim: int, n: int, shape3d: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images and counts: MNIST grids in 2D, lesion phantoms in 3D."""
    if dim == 3:
        from wsdet.data.synthetic import make_lesion_volumes

        vols = make_lesion_volumes(n, shape3d, seed=0)
        return vols.images, vols.counts.float()
    root = Path(os.environ.get("WSDET_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
    if (root / "t10k-images-idx3-ubyte.gz").is_file():
        from wsdet.data.mnist import mnist_grid_splits

        splits = mnist_grid_splits(root, target=4, n_train=n, n_val=8, n_test=8, seed=0)
        return splits.train.images, splits.train.counts.float()
    print(f"(MNIST not found in {root}: random images)")
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 140, 196, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def make_model(arch: str, dim: int) -> nn.Module:
    torch.manual_seed(0)
    return ARCHS[arch](dim=dim, init="kaiming")


def plain_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
) -> float:
    """The reference: a hand-written eager fp32 NCHW loop over one shuffled epoch, then the
    validation loss (the same work as one epoch of ``Trainer.fit``)."""
    images, counts = data
    model.train()
    order = torch.randperm(images.shape[0])
    for begin in range(0, images.shape[0], batch_size):
        idx = order[begin : begin + batch_size]
        loss = F.mse_loss(model(images[idx]), counts[idx])
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    with torch.no_grad():
        preds = [model(val[0][i : i + batch_size]) for i in range(0, val[0].shape[0], batch_size)]
    return float(F.mse_loss(torch.cat(preds), val[1]))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed2(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput(args: argparse.Namespace) -> None:
    archs = list(ARCHS) if args.arch == "all" else [args.arch]
    images, counts = load_data(args.dim, args.images, tuple(args.shape3d))
    val = (images[: args.val], counts[: args.val])
    batch = 64 if args.dim == 2 else 1
    print(
        f"\n{args.dim}D, {args.images} training images {tuple(images.shape[1:])}, "
        f"batch {batch}, {args.val} validation images, Adadelta, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} epoch pairs\n"
    )
    print(
        "| architecture | plain loop (img/s) | Trainer (img/s) | Trainer / plain "
        "(wall) | Trainer / plain (CPU time) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for arch in archs:
        ref_model = make_model(arch, args.dim)
        ref_opt = torch.optim.Adadelta(ref_model.parameters(), lr=1.0, rho=0.95, eps=1e-7)
        cfg = TrainConfig(max_epochs=1, patience=None, progress="none", compile=args.compile)
        trainer = Trainer(make_model(arch, args.dim), cfg)

        def ref() -> None:
            plain_epoch(ref_model, ref_opt, (images, counts), val, batch)  # noqa: B023

        def ours() -> None:
            trainer.fit((images, counts), val)  # noqa: B023

        ref()  # warm-up (allocator, oneDNN primitive caches; compilation)
        ours()
        t_ref: list[tuple[float, float]] = []
        t_ours: list[tuple[float, float]] = []
        for r in range(args.repeats):
            pair = (ref, ours) if r % 2 == 0 else (ours, ref)
            for fn in pair:
                (t_ref if fn is ref else t_ours).append(timed2(fn))
        wall = statistics.median(a[0] / b[0] for a, b in zip(t_ref, t_ours, strict=True))
        cpu = statistics.median(a[1] / b[1] for a, b in zip(t_ref, t_ours, strict=True))
        n = images.shape[0]
        print(
            f"| {arch} | {n / statistics.median(t[0] for t in t_ref):.3g} | "
            f"{n / statistics.median(t[0] for t in t_ours):.3g} | {wall:.2f}x | {cpu:.2f}x |",
            flush=True,
        )


def steps(args: argparse.Namespace) -> None:
    dim = args.dim
    batch = args.batch or (64 if dim == 2 else 1)
    images, counts = load_data(dim, batch, tuple(args.shape3d))
    y = (counts - counts.mean()) / counts.std().clamp_min(1e-6)
    cl = torch.channels_last if dim == 2 else torch.channels_last_3d
    # (memory format: 0 NCHW, 1 channels_last via x.contiguous(), 2 channels_last with
    # unambiguous strides as the Trainer makes them; bf16 autocast; torch.compile)
    variants = {
        "eager fp32 NCHW": (0, False, False),
        "channels_last, x.contiguous(memory_format)": (1, False, False),
        "channels_last, unambiguous strides (Trainer)": (2, False, False),
        "bf16 autocast": (0, True, False),
        "bf16 autocast + channels_last": (2, True, False),
        "torch.compile": (0, False, True),
        "torch.compile + channels_last": (2, False, True),
    }
    chosen = {
        k: v
        for i, (k, v) in enumerate(variants.items())
        if args.variants == "all" or str(i) in args.variants
    }
    runs: dict[str, tuple[Callable[[], None], list[float]]] = {}
    for name, (use_cl, bf16, compiled) in chosen.items():
        model = make_model(args.arch, dim)
        x = images
        if use_cl:
            model = model.to(memory_format=cl)  # type: ignore[call-overload]
            x = images.contiguous(memory_format=cl)
            if use_cl == 2:  # one channel: .contiguous() keeps NCHW strides
                x = torch.empty_like(images, memory_format=cl).copy_(images)
        fwd = torch.compile(model) if compiled else model
        opt = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-7)

        def step(fwd: nn.Module = fwd, x: torch.Tensor = x, opt: torch.optim.Optimizer = opt,
                 bf16: bool = bf16) -> None:  # fmt: skip
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = fwd(x)
            loss = F.mse_loss(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        warm = timed(step) + timed(step)
        print(f"(warm-up of {name}: {warm:.1f} s)", flush=True)
        runs[name] = (step, [])
    for _ in range(args.steps):
        for step, times in runs.values():
            times.append(timed(step))
    base = next(iter(runs.values()))[1]
    shape = tuple(images.shape[1:])
    print(
        f"\n{args.arch} {dim}D, batch {batch} x {shape}, Adadelta, "
        f"{torch.get_num_threads()} threads, median of {args.steps} interleaved steps\n"
    )
    print("| variant | s / step | speed-up vs eager fp32 NCHW |")
    print("| --- | --- | --- |")
    for name, (_, times) in runs.items():
        ratio = statistics.median(b / t for b, t in zip(base, times, strict=True))
        print(f"| {name} | {statistics.median(times):.3f} | {ratio:.2f}x |")


def _init_model(model: nn.Module, init: str) -> nn.Module:
    """``init_weights`` schemes; "paper": N(0, 1) weights and zero biases as the paper
    states; "conv-kaiming": PyTorch's default initialisation with Kaiming-normal convolution
    weights (biases and the head left as PyTorch draws them)."""
    from wsdet.models import init_weights

    gen = torch.Generator().manual_seed(0)
    if init == "paper":  # N(0, 1) weights, zero biases (paper §3.5: "unit variance")
        return init_weights(model, "keras", std=1.0, generator=gen)
    if init != "conv-kaiming":
        return init_weights(model, init, generator=gen)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def convergence(args: argparse.Namespace) -> None:
    import logging

    from wsdet.data.augment import augment
    from wsdet.data.mnist import GridSampler, mnist_grid_splits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(os.environ.get("WSDET_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
    splits = mnist_grid_splits(root, target=args.target, n_train=400, n_val=100, seed=0)
    pool = splits.train_pool
    train: tuple[torch.Tensor, torch.Tensor] | GridSampler = (
        GridSampler(pool.images, pool.labels, target=args.target, n_images=400, seed=1)
        if args.fresh
        else (splits.train.images, splits.train.counts)
    )
    cfg = TrainConfig(
        optimizer="adam", lr=args.lr, max_epochs=args.max_epochs,
        init=None,  # _init_model below draws the same weights as the Trainer's init would
        patience=100, time_budget=args.minutes * 60.0, progress="log", log_every=5,
        batch_size=args.batch or 64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = _init_model(GPUnet(dim=2), args.init)
    trainer = Trainer(model, cfg, augment=None if args.no_augment else augment, out_dir=args.out)
    result = trainer.fit(train, (splits.val.images, splits.val.counts), resume=True)
    hist = result.history
    hit = next((i for i, m in enumerate(hist["val_mae"]) if m < args.mae), None)
    test = trainer.evaluate(splits.test.images, splits.test.counts)
    mean_mae = float((splits.test.counts - splits.train.counts.float().mean()).abs().mean())
    data = "fresh grids every epoch" if args.fresh else "400 fixed grids"
    data += ", no augmentation" if args.no_augment else ""
    print(f"\n| run | epochs to val MAE < {args.mae} | minutes | epochs run | stop | "
          "best val MAE (epoch) | test MAE | test MAE of the mean |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    reached = (
        f"{hit + 1} | {hist['elapsed'][hit] / 60:.1f}" if hit is not None else "not reached | -"
    )
    best_mae = hist["val_mae"][result.best_epoch]
    print(
        f"| digit {args.target}, {data} | {reached} | {result.epochs} | {result.stop_reason} | "
        f"{best_mae:.3f} ({result.best_epoch}) | {test['mae']:.3f} | {mean_mae:.3f} |"
    )
    # Detection with the best model on the 500 test grids: GP-Unet CAM, size-6 NMS, clipped
    # negatives, one-to-one box matching, FAUC over 0-2 FP/image (the MNIST protocol).
    from wsdet import Detector
    from wsdet.metrics import evaluate

    detector = Detector(trainer.model, method="gp_unet")
    print("\n| NMS size | duplicates | FAUC(0-2) | sensitivity at 1 FP/image | candidates/image |")
    print("| --- | --- | --- | --- | --- |")
    for size in args.nms_sizes:
        dets = [
            d
            for i in range(0, len(splits.test.images), 50)
            for d in detector.detect(splits.test.images[i : i + 50], n="all", size=size)
        ]
        per_image = sum(len(d) for d in dets) / len(dets)
        for dup in ("fp", "ignore") if size == args.nms_sizes[0] else ("fp",):
            report = evaluate(
                dets,
                splits.test.boxes,
                match="boxes",
                max_fp=2.0,
                duplicates=dup,  # type: ignore[arg-type]
                fps=[1.0],
                n_bootstrap=1000 if (size, dup) == (6, "fp") else 0,
            )
            sd = f" +- {report.fauc.sd:.3f}" if (size, dup) == (6, "fp") else ""
            sens = report.sensitivity_at[1.0]
            print(
                f"| {size} | {dup} | {report.fauc.estimate:.3f}{sd} | {sens:.3f} "
                f"| {per_image:.1f} |"
            )


def convergence3d(args: argparse.Namespace) -> None:
    """GP-Unet (or ``--arch``) 3D on the lesion study's phantoms of ``--setting``: how soon the
    validation count error leaves that of the mean (Adam, standardised targets, batch 4)."""
    import logging

    from wsdet.data.augment import augment
    from wsdet.experiments.common import build_model
    from wsdet.experiments.lesions import LesionStudyConfig, _data

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    study = LesionStudyConfig(shape=tuple(args.shape3d))  # type: ignore[arg-type]
    train, val, _ = _data(study, args.setting)
    arch = "gpunet" if args.arch == "all" else args.arch
    torch.manual_seed(0)
    model = build_model(arch, 3, args.width)
    init = "kaiming_conv" if args.init == "conv-kaiming" else args.init
    cfg = TrainConfig(
        optimizer="adam", lr=args.lr, init=init, batch_size=args.batch or 4,  # type: ignore[arg-type]
        max_epochs=args.max_epochs, patience=None, time_budget=args.minutes * 60.0,
        progress="log", log_every=1,
    )  # fmt: skip
    trainer = Trainer(model, cfg, augment=None if args.no_augment else augment, out_dir=args.out)
    result = trainer.fit((train.images, train.counts), (val.images, val.counts), resume=True)
    hist = result.history
    mean_mae = float((val.counts.float() - train.counts.float().mean()).abs().mean())
    marks = [e for e in (4, 9, 14, 19, 24, 29) if e < result.epochs]
    print(
        f"\n{args.setting}, {tuple(args.shape3d)}, {arch} width {args.width}, "
        f"augmentation {'off' if args.no_augment else 'on'}, lr {args.lr}, init {init}; "
        f"val MAE of the mean {mean_mae:.3f}\n"
    )
    header = [f"val MAE epoch {e + 1}" for e in marks] + ["best (epoch)", "minutes"]
    cells = [f"{hist['val_mae'][e]:.3f}" for e in marks] + [
        f"{hist['val_mae'][result.best_epoch]:.3f} ({result.best_epoch + 1})",
        f"{hist['elapsed'][-1] / 60:.1f}",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    print("| " + " | ".join(cells) + " |")


def activity(args: argparse.Namespace) -> None:
    from wsdet.data.mnist import mnist_grid_splits

    root = Path(os.environ.get("WSDET_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
    splits = mnist_grid_splits(root, target=args.target, n_train=400, n_val=100, seed=0)
    x, y = splits.train.images, splits.train.counts.float()
    vx, vy = splits.val.images, splits.val.counts.float()
    mean, std = float(y.mean()), float(y.std(correction=0))
    torch.manual_seed(0)
    model = _init_model(GPUnet(dim=2), args.init)
    opt: torch.optim.Optimizer
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    elif args.optimizer == "sgd":  # with momentum 0.9
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    else:  # the paper's (Keras) Adadelta; --lr scales its steps (1.0 = Keras)
        opt = torch.optim.Adadelta(model.parameters(), lr=args.lr, rho=0.95, eps=1e-7)
    alive: dict[str, float] = {}
    names = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for name in names:
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: alive.__setitem__(name, float((out > 0).float().mean()))
        )
    gen = torch.Generator().manual_seed(1)
    batch = args.batch or 16
    print(f"\nGP-Unet 2D, {args.optimizer} lr {args.lr}, warm-up {args.warmup} steps, "
          f"init {args.init}, batch {batch}, 400 fixed grids, digit {args.target}\n")  # fmt: skip
    print("| step | val MAE | spread of predictions | " + " | ".join(names) + " |")
    print("| --- " * (3 + len(names)) + "|")
    for step in range(1, args.iters + 1):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = ((model(x[idx]) - (y[idx] - mean) / std) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / args.warmup) if args.warmup else args.lr
        opt.step()
        if step % 50 == 0 or step == args.iters:
            with torch.no_grad():
                pred = model(vx) * std + mean
            cells = " | ".join(f"{alive[n]:.3f}" for n in names)
            mae = float((pred - vy).abs().mean())
            print(f"| {step} | {mae:.3f} | {float(pred.std()):.3f} | {cells} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what",
        nargs="?",
        default="throughput",
        choices=["throughput", "steps", "convergence", "convergence3d", "activity"],
    )
    parser.add_argument("--dim", type=int, default=2, choices=[2, 3])
    parser.add_argument("--arch", default="gpunet", choices=[*ARCHS, "all"])
    parser.add_argument("--images", type=int, default=128, help="training images per epoch")
    parser.add_argument("--val", type=int, default=16, help="validation images (throughput)")
    parser.add_argument("--repeats", type=int, default=5, help="epoch pairs (throughput)")
    parser.add_argument("--steps", type=int, default=8, help="steps per variant (steps)")
    parser.add_argument(
        "--batch", type=int, default=None, help="batch (steps, convergence); default 64/1"
    )
    parser.add_argument(
        "--variants", default="all", help="comma-separated variant numbers 0-6 (steps)"
    )
    parser.add_argument("--compile", action="store_true", help="Trainer with compile=True")
    parser.add_argument("--shape3d", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setting", default="midbrain", help="lesion setting (convergence3d)")
    parser.add_argument("--width", type=int, default=16, help="3D width (convergence3d)")
    parser.add_argument("--fresh", action="store_true", help="fresh grids (convergence)")
    parser.add_argument("--no-augment", action="store_true", help="(convergence)")
    parser.add_argument("--target", type=int, default=4, help="digit (convergence)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam lr (convergence)")
    parser.add_argument("--mae", type=float, default=0.5, help="MAE threshold (convergence)")
    parser.add_argument(
        "--nms-sizes",
        type=int,
        nargs="+",
        default=[6],
        help="NMS sizes of the test detection table (convergence; the first also scored "
        "with duplicate hits ignored)",
    )
    parser.add_argument("--minutes", type=float, default=25.0, help="time cap (convergence)")
    parser.add_argument("--max-epochs", type=int, default=1000, help="(convergence)")
    parser.add_argument("--out", default="runs/convergence", help="run folder (convergence)")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "adadelta", "sgd"],
                        help="(activity)")  # fmt: skip
    parser.add_argument("--iters", type=int, default=300, help="optimiser steps (activity)")
    parser.add_argument("--warmup", type=int, default=0, help="linear lr warm-up (activity)")
    parser.add_argument("--init", default="kaiming",
                        choices=["kaiming", "keras", "default", "conv-kaiming", "paper"],
                        help="weight init (convergence, activity)")  # fmt: skip
    args = parser.parse_args()
    if args.variants != "all":
        args.variants = [v.strip() for v in args.variants.split(",")]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    commands = {
        "throughput": throughput,
        "steps": steps,
        "convergence": convergence,
        "convergence3d": convergence3d,
        "activity": activity,
    }
    commands[args.what](args)


if __name__ == "__main__":
    main()
