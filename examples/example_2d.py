"""2D workflow: count-trained GP-Unet -> attention maps -> detections -> FROC and figures.

1. Trains a 2D GP-Unet on 2D phantoms, seeing only each image's count of small blobs.
2. Computes three attention maps of a test image (GP-Unet CAM, input gradient, intensity).
3. Detects every NMS candidate of the test images, writes them as one CSV, and evaluates
   them against the hidden blob centres (hit within 3 pixels).
4. Draws an overlay, an attention grid and the FROC curve with its bootstrap band.

Run: ``python examples/example_2d.py --out out_2d`` (``--smoke``: seconds; needs ``viz``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

import wsdet
from wsdet import viz
from wsdet.data.synthetic import make_phantoms_2d
from wsdet.export import write_detections_csv
from wsdet.metrics import evaluate, match_images
from wsdet.models import GPUnet
from wsdet.train import TrainConfig, Trainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out_2d")
    p.add_argument("--smoke", action="store_true", help="tiny data, one epoch")
    p.add_argument("--figures", default=None, help="also copy the figures to this folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    n_train, epochs = (48, 1) if args.smoke else (384, 10)
    train = make_phantoms_2d(n_train, seed=args.seed + 1)
    val = make_phantoms_2d(32 if args.smoke else 128, seed=args.seed + 2)
    test = make_phantoms_2d(8 if args.smoke else 100, seed=args.seed + 3)

    model = GPUnet(dim=2)
    config = TrainConfig(
        optimizer="adam",
        lr=3e-3,
        init="kaiming",
        batch_size=32,
        max_epochs=epochs,
        patience=None,
        progress="none",
        seed=args.seed,
    )
    Trainer(model, config).fit(train, val)

    gp = wsdet.Detector(model, method="gp_unet")
    dets = gp.detect(test.images, n="all", size=5)
    write_detections_csv(out / "detections.csv", {f"test{i:03d}": d for i, d in enumerate(dets)})
    report = evaluate(dets, test.points, radius=3.0, max_fp=2.0, n_bootstrap=200)
    print(report)

    image = test.images[0, 0]
    maps = {
        name: wsdet.Detector(model, method=name).attention(test.images[:1])[0]
        for name in ("gp_unet", "grad", "intensity")
    }
    top = dets[0].points[: int(np.floor(dets[0].count + 0.5))]
    results = match_images(
        [d.points for d in dets], [d.scores for d in dets], test.points, radius=3.0
    )
    band = viz.froc_band(results, max_fp=2.0, n_bootstrap=200)
    figs = {
        "overlay.png": viz.overlay(
            image,
            maps["gp_unet"],
            points=top,
            gt=test.points[0],
            title=f"GP-Unet, count {dets[0].count:.2f}",
        ),
        "attention_grid.png": viz.attention_grid(image, maps, gt=test.points[0], ncols=4),
        "froc_2d.png": viz.plot_froc(
            {"GP-Unet": report.curve}, bands={"GP-Unet": band}, max_fp=2.0
        ),
    }
    for name, fig in figs.items():
        viz.save_figure(fig, str(out / name), dpi=90)
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            shutil.copy(out / name, Path(args.figures) / name)
    print(f"wrote {out}/detections.csv and {', '.join(figs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
