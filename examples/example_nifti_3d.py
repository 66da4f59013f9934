"""3D NIfTI workflow: volumes with an oblique affine -> detections in mm -> Slicer -> FROC.

1. Writes synthetic lesion volumes as NIfTI (3 mm slices, a tilted scanner frame) and their
   lesion masks (your data: skip this step).
2. Trains a 3D GP-Unet on the masks' counts (one number per volume).
3. Detects with a 6 mm NMS window, locates the detections in RAS millimetres through each
   affine, and writes per volume a CSV, a 3D Slicer markups file and a label volume.
4. Evaluates against the masks' components with a 5 mm hit radius and draws orthogonal
   slices, maximum-intensity projections and the FROC curve with its bootstrap band.

Run: ``python examples/example_nifti_3d.py --out nifti_out`` (``--smoke``: seconds).
Needs the ``nifti`` and ``viz`` extras.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

import wsdet
from wsdet import viz
from wsdet.data.synthetic import make_lesion_volumes
from wsdet.export import save_point_volume, write_detections_csv, write_markups
from wsdet.io import Volume, load_volume, normalize_intensity, points_from_mask, save_volume
from wsdet.metrics import evaluate, match_images
from wsdet.models import GPUnet
from wsdet.train import TrainConfig, Trainer


def write_volumes(folder: Path, n: int, shape: tuple[int, int, int], seed: int) -> None:
    """Synthetic lesion volumes and masks as NIfTI, with an oblique, anisotropic affine."""
    data = make_lesion_volumes(
        n, shape, spacing=(3.0, 1.0, 1.0), mean_count=3, region="full", seed=seed
    )
    a = 0.3
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(data.spacing)
    affine[:3, 3] = (-20.0, -14.0, 8.0)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_volume(
            folder / "images" / f"case{i:02d}.nii.gz", data.images[i, 0].numpy(), affine=affine
        )
        mask = data.target_mask[i].numpy().astype(np.uint8)
        save_volume(folder / "masks" / f"case{i:02d}.nii.gz", mask, affine=affine)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="nifti_out")
    p.add_argument("--smoke", action="store_true", help="tiny data, one epoch")
    p.add_argument("--figures", default=None, help="also copy the figures to this folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    n, shape, epochs = (6, (12, 24, 24), 1) if args.smoke else (40, (16, 32, 32), 30)
    torch.manual_seed(args.seed)
    write_volumes(out, n, shape, args.seed)

    # 2. train on counts: the masks' connected components
    vols = [load_volume(out / "images" / f"case{i:02d}.nii.gz") for i in range(n)]
    masks = [load_volume(out / "masks" / f"case{i:02d}.nii.gz") for i in range(n)]
    x = torch.from_numpy(np.stack([normalize_intensity(v.array) for v in vols])[:, None])
    counts = torch.tensor([len(points_from_mask(m)) for m in masks], dtype=torch.float32)
    n_train = n * 2 // 3
    model = GPUnet(dim=3, width=4)
    config = TrainConfig(
        optimizer="adam",
        lr=3e-3,
        init="kaiming",
        batch_size=4,
        max_epochs=epochs,
        patience=10,
        progress="none",
        seed=args.seed,
    )
    Trainer(model, config, out_dir=out / "run").fit(
        (x[:n_train], counts[:n_train]), (x[n_train:], counts[n_train:])
    )

    # 3. detect on the held-out volumes: voxels and RAS millimetres
    det = wsdet.Detector(model, method="gp_unet")
    found, targets = [], []
    (out / "results").mkdir(exist_ok=True)
    for i in range(n_train, n):
        vol: Volume = vols[i]
        (d,) = det.detect(x[i : i + 1], n="all", size_mm=6.0, spacing=vol.spacing)
        located = vol.locate(d)
        top = int(np.floor(located.count + 0.5))
        write_detections_csv(out / "results" / f"{vol.id}.csv", located)
        write_markups(
            out / "results" / f"{vol.id}.mrk.json",
            located.points_mm[:top],
            scores=located.scores[:top],
            name=vol.id,
        )
        save_point_volume(
            out / "results" / f"{vol.id}_detections.nii.gz",
            wsdet.Detections(located.points[:top], located.scores[:top]),
            vol,
        )
        found.append(located)
        targets.append(vol.to_world(points_from_mask(masks[i])))
        print(f"{vol.id}: count {located.count:.2f} ({int(counts[i])} lesions), top {top}")

    # 4. evaluate in millimetres (world coordinates: spacing 1) and draw
    dets = [(f.points_mm, f.scores, f.count) for f in found]
    report = evaluate(dets, targets, radius_mm=5.0, spacing=1.0, max_fp=8.0, n_bootstrap=200)
    print(report)
    first = found[0]
    top = first.points[: int(np.floor(first.count + 0.5))]
    amap = det.attention(x[n_train : n_train + 1])[0].numpy()
    mask_pts = points_from_mask(masks[n_train])
    cross = mask_pts[0] if len(mask_pts) else None  # slices through a lesion
    figs = {
        "slices.png": viz.orthogonal_slices(
            vols[n_train].array,
            amap,
            point=cross,
            points=top,
            targets=mask_pts,
            affine=first.affine,
            title="GP-Unet map, detections (x) and lesions (o)",
        ),
        "mip.png": viz.mip(vols[n_train].array, points=top, targets=mask_pts, affine=first.affine),
    }
    results = match_images([d[0] for d in dets], [d[1] for d in dets], targets, radius=5.0)
    band = viz.froc_band(results, max_fp=8.0, n_bootstrap=200, fp=np.geomspace(0.125, 8, 60))
    figs["froc_3d.png"] = viz.plot_froc(
        {"GP-Unet": report.curve}, bands={"GP-Unet": band}, max_fp=8.0, log_x=True, fp_unit="volume"
    )
    for name, fig in figs.items():
        viz.save_figure(fig, str(out / name), dpi=90)
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            shutil.copy(out / name, Path(args.figures) / name)
    print(f"wrote {out}/results (CSV, .mrk.json, label volumes) and {', '.join(figs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
