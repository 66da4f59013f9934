"""Evaluate someone else's detections: a CSV in millimetres against NIfTI lesion masks.

Another tool (here simulated: two "methods", one sharper than the other) wrote its
detections as CSV rows ``image, score, x_mm, y_mm, z_mm`` in RAS millimetres. The targets
are the connected components of NIfTI lesion masks. This example

1. reads both CSVs (:func:`wsdet.export.read_points_csv`) and the masks' centroids in mm,
2. evaluates each method with a 4 mm hit radius (FAUC with bootstrap SD, operating point
   none: the tool gave no counts) and compares them with a paired bootstrap,
3. runs the same evaluation through the command line (``wsdet evaluate``, same report),
4. draws both FROC curves with their bootstrap bands on LUNA16's log axis.

Run: ``python examples/example_evaluate.py --out eval_out`` (``--smoke``: seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
from functools import partial
from pathlib import Path

import numpy as np

from wsdet import viz
from wsdet.cli import main as wsdet_main
from wsdet.export import read_points_csv
from wsdet.io import Volume, load_volume, points_from_mask, save_volume
from wsdet.metrics import evaluate, fauc, match_images, paired_bootstrap


def simulate(folder: Path, n: int, seed: int) -> None:
    """NIfTI masks with 0-4 spherical lesions, and two tools' detection CSVs in mm."""
    rng = np.random.default_rng(seed)
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = (-30.0, -25.0, 12.0)
    shape = (40, 40, 16)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[list[object]]] = {"sharp": [], "blurry": []}
    for i in range(n):
        name = f"scan{i:02d}"
        centres = rng.integers((5, 5, 3), (35, 35, 13), size=(rng.integers(0, 5), 3))
        mask = np.zeros(shape, np.uint8)
        for c in centres:
            mask[(((grid - c) * [0.9, 0.9, 2.5]) ** 2).sum(-1) <= 9.0] = 1
        vol = Volume(mask, affine=affine)
        save_volume(folder / "masks" / f"{name}.nii.gz", vol)
        truth = vol.to_world(centres)
        for tool, jitter in (("sharp", 1.0), ("blurry", 3.0)):
            found = truth + rng.normal(0, jitter, truth.shape)
            noise = vol.to_world(rng.uniform(0, shape, size=(rng.integers(2, 8), 3)))
            scores = np.concatenate(
                [rng.uniform(0.4, 1.0, len(found)), rng.uniform(0, 0.7, len(noise))]
            )
            for p, s in zip(np.concatenate([found, noise]), scores, strict=True):
                rows[tool].append([name, float(s), *map(float, p)])
            if not len(found) + len(noise):
                rows[tool].append([name, "", "", "", ""])
    for tool, r in rows.items():
        with open(folder / f"{tool}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "score", "x_mm", "y_mm", "z_mm"])
            w.writerows(r)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="eval_out")
    p.add_argument("--smoke", action="store_true", help="few scans, few replicates")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    n, boot = (6, 50) if args.smoke else (40, 1000)
    simulate(out, n, args.seed)

    names = [f"scan{i:02d}" for i in range(n)]  # every scan, also those without rows
    targets = []
    for name in names:
        mask = load_volume(out / "masks" / f"{name}.nii.gz")
        targets.append(mask.to_world(points_from_mask(mask)))
    results, reports = {}, {}
    for tool in ("sharp", "blurry"):
        table = read_points_csv(out / f"{tool}.csv", coords="mm")
        dets = [
            (table[m][0], table[m][1]) if m in table else (np.zeros((0, 3)), np.zeros(0))
            for m in names
        ]
        reports[tool] = evaluate(
            dets, targets, radius_mm=4.0, spacing=1.0, max_fp=8.0, n_bootstrap=boot
        )
        results[tool] = match_images(
            [d[0] for d in dets], [d[1] for d in dets], targets, radius=4.0
        )
        print(f"== {tool}\n{reports[tool]}")
    diff = paired_bootstrap(partial(fauc, max_fp=8.0), results["sharp"], results["blurry"], B=boot)
    print(f"FAUC sharp - blurry: {diff}")

    with open(out / "images.csv", "w") as f:  # the image list, for images without rows
        f.write("image\n" + "\n".join(names) + "\n")
    cli = io.StringIO()
    with contextlib.redirect_stdout(cli):
        wsdet_main(
            [
                "evaluate",
                str(out / "sharp.csv"),
                "--target-masks",
                str(out / "masks"),
                "--images",
                str(out / "images.csv"),
                "--radius-mm",
                "4",
                "--max-fp",
                "8",
                "--bootstrap",
                str(boot),
                "--quiet",
            ]
        )
    assert cli.getvalue().strip() == str(reports["sharp"]), "CLI and API disagree"

    grid = np.geomspace(0.125, 8.0, 60)
    bands = {t: viz.froc_band(r, fp=grid, n_bootstrap=boot) for t, r in results.items()}
    fig = viz.plot_froc(
        {t: r.curve for t, r in reports.items()},
        bands=bands,
        max_fp=8.0,
        log_x=True,
        fp_unit="scan",
        title="two tools, hit within 4 mm",
    )
    viz.save_figure(fig, str(out / "froc_compare.png"), dpi=90)
    print(f"wrote {out / 'froc_compare.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
