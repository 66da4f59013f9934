"""wsdet demo: train GP-Unet 2D on counts only, then detect and evaluate the objects.

Synthetic 64×64 phantoms hold 0–5 small bright blobs (the targets, point ground truth at
their centres) among larger blobs and tubes (distractors, not counted) and noise. The
network only ever sees the per-image count. At test time its CAM attention map is turned
into detections (NMS, top-n with n = rounded predicted count) and evaluated against the
hidden centres (one-to-one Hungarian matching within a radius).

Run: ``make demo`` (or ``python examples/demo.py --out demo_out``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

import wsdet
from wsdet.data.synthetic import make_phantoms_2d
from wsdet.metrics import evaluate
from wsdet.models import GPUnet
from wsdet.train import TrainConfig, Trainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="output folder (PNG, checkpoints)")
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--time-budget", type=float, default=200.0, help="training seconds")
    p.add_argument("--radius", type=float, default=3.0, help="hit radius in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    train = make_phantoms_2d(args.n_train, seed=args.seed + 1)
    val = make_phantoms_2d(128, seed=args.seed + 2)
    test = make_phantoms_2d(200, seed=args.seed + 3)
    print(
        f"data: {len(train)} train / {len(val)} val / {len(test)} test phantoms "
        f"{tuple(train.images.shape[2:])}, 0-5 targets each, with distractors"
    )

    model = GPUnet(dim=2)
    config = TrainConfig(
        optimizer="adam",
        lr=3e-3,
        init="kaiming",
        batch_size=32,
        max_epochs=args.epochs,
        patience=None,
        time_budget=args.time_budget,
        seed=args.seed,
        progress="log",
        log_every=2,
    )
    result = Trainer(model, config, out_dir=os.path.join(args.out, "train")).fit(
        (train.images, train.counts), (val.images, val.counts)
    )
    print(
        f"trained GP-Unet 2D ({sum(p.numel() for p in model.parameters()):,} parameters): "
        f"{result.epochs} epochs in {result.seconds:.0f} s, best epoch {result.best_epoch}"
    )

    model.eval()
    det = wsdet.Detector(model, method="gp_unet")
    all_dets = []
    for i in range(0, len(test), 50):
        all_dets += det.detect(test.images[i : i + 50], n="all", size=6)
    counts = np.array([d.count for d in all_dets])
    truth = test.counts.numpy()
    mae = float(np.abs(counts - truth).mean())
    base = float(np.abs(truth - train.counts.numpy().mean()).mean())
    print(f"count MAE on test: {mae:.3f} (predicting the training mean: {base:.3f})")

    report = evaluate(all_dets, test.points, radius=args.radius, max_fp=2.0, n_bootstrap=200)
    sens, fpi = report.op_sensitivity, report.op_fp_avg
    assert sens is not None and fpi is not None
    print(
        f"detection at the operating point (top-n, n = rounded predicted count), "
        f"hit radius {args.radius:g} px:\n"
        f"  sensitivity {sens.estimate:.3f}, false positives per image {fpi.estimate:.3f}"
    )
    print(f"  FAUC(0-2 FP/image) {report.fauc.estimate:.3f} ± {report.fauc.sd:.3f}")

    try:
        from wsdet.viz import overlay, save_figure
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no figure")
    else:
        import matplotlib.pyplot as plt

        idx = [int(i) for i in np.argsort(-truth, kind="stable")[:4]]
        maps = det.attention(test.images[idx])
        fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
        for j, i in enumerate(idx):
            k = wsdet.detection.round_half_up(all_dets[i].count)
            pts = all_dets[i].points[:k]
            overlay(
                test.images[i, 0],
                gt=test.points[i],
                points=pts,
                ax=axes[0, j],
                title=f"count {int(truth[i])}, predicted {all_dets[i].count:.2f}",
            )
            overlay(
                test.images[i, 0],
                maps[j].clamp_min(0),
                points=pts,
                ax=axes[1, j],
                title="GP-Unet attention + detections",
            )
        path = os.path.join(args.out, "demo.png")
        save_figure(fig, path)
        print(f"figure: {path} (green circles: truth, red crosses: detections)")
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
