"""Does per-volume z-scoring tell a counting network the lesion count? (v2 phantoms.)

Part 1 (no networks): per setting, the level of the tissue far from every lesion (> 3 mm
from a lesion's half-maximum footprint, outside the look-alikes) after z-scoring each
volume with its own region statistics, after z-scoring every volume with the training
volumes' pooled statistics, and raw; printed as its correlation with the volume's lesion
count and with the annotated slice's (the basal-ganglia-like target). Bright lesions
raise a volume's region mean, so under per-volume statistics the far tissue lies lower the
more lesions the volume holds, and with the region's outside set to 0 the border becomes
an edge whose height tracks the count.

Part 2 (``--out`` a v2 study folder): every cached network of ``--setting``: its count
predictions on the test volumes, z-scored as it was trained (per volume or with the
training volumes' statistics, read from its ``config.json``), and z-scored per volume with
the statistics of the tissue alone (lesion footprints and look-alikes left out, which
removes the count from the tissue level): mean squared error to the target count, its
correlation with the target and with the volume's lesion count, and the mean prediction.
A network that reads the tissue level loses accuracy when it is removed. For GP-Unets, the
mean of the class activation map on lesion footprints, on the tissue and within 1 mm of
the region border.

    python benchmarks/zscore_leak.py                                   # part 1, ~1 min
    python benchmarks/zscore_leak.py --out runs/lesions3d_v2_long --setting basal_ganglia
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from wsdet.data.phantoms.v2 import SETTINGS_V2, PhantomVolumeV2, render_phantoms_v2
from wsdet.detector import Detector
from wsdet.experiments.common import build_model
from wsdet.experiments.lesions import LesionStudyConfig, data_seeds
from wsdet.train.checkpoints import weights_in_counts

FAR_MM = 3.0


def targets(volumes: list[PhantomVolumeV2], setting: str) -> tuple[np.ndarray, np.ndarray]:
    """The networks' target counts (annotated slice or volume) and the volume counts."""
    total = np.array([len(v.points) for v in volumes])
    if SETTINGS_V2[setting].annotation == "volume":
        return total, total
    in_slice = [int((v.points[:, 0] == v.slice_index).sum()) for v in volumes]
    return np.array(in_slice), total


def tissue(v: PhantomVolumeV2) -> np.ndarray:
    return v.inside & ~v.footprint & ~(v.lookalike_labels > 0)


def far_tissue(v: PhantomVolumeV2, spacing: tuple[float, float, float]) -> np.ndarray:
    dist = ndimage.distance_transform_edt(~v.footprint, sampling=spacing)
    return tissue(v) & (dist > FAR_MM)


def zscore(v: PhantomVolumeV2, select: np.ndarray | None, stats: tuple[float, float] | None):
    """``v.image`` z-scored with the statistics of ``select`` (or ``stats``), 0 outside."""
    if stats is None:
        values = v.image[select].astype(np.float64)
        stats = float(values.mean()), float(values.std())
    return np.where(v.inside, (v.image - stats[0]) / stats[1], 0.0).astype(np.float32)


def pooled_stats(volumes: list[PhantomVolumeV2]) -> tuple[float, float]:
    values = np.concatenate([v.image[v.inside].astype(np.float64) for v in volumes])
    return float(values.mean()), float(values.std())


def part1(cfg: LesionStudyConfig, n: int) -> None:
    print(f"Tissue > {FAR_MM:g} mm from every lesion: correlation of its mean level with the")
    print("volume's lesion count / the target count, and the level's change per 10 lesions")
    print(f"(z units; raw: intensity units), {n} training volumes per setting")
    for setting, s in SETTINGS_V2.items():
        volumes = render_phantoms_v2(n, setting, data_seeds(cfg, setting)[0])
        target, total = targets(volumes, setting)
        shared = pooled_stats(volumes)
        row = []
        for name, stats, own in (
            ("per volume", None, True),
            ("training stats", shared, False),
            ("raw", (0.0, 1.0), False),
        ):
            level = []
            for v in volumes:
                z = zscore(v, v.inside if own else None, stats)
                level.append(float(z[far_tissue(v, s.spacing)].mean()))
            slope = np.polyfit(total, level, 1)[0] * 10  # z per 10 lesions
            row.append(
                f"{name} {np.corrcoef(level, total)[0, 1]:+.2f} / "
                f"{np.corrcoef(level, target)[0, 1]:+.2f} ({slope:+.4f} per 10 lesions)"
            )
        print(f"  {setting}: " + "; ".join(row))


def part2(cfg: LesionStudyConfig, out: Path, setting: str, n: int) -> None:
    train_seed, _, test_seed = data_seeds(cfg, setting)
    volumes = render_phantoms_v2(n, setting, test_seed)
    target, total = targets(volumes, setting)
    shared = pooled_stats(render_phantoms_v2(cfg.n_train, setting, train_seed))
    spacing = SETTINGS_V2[setting].spacing
    print(f"\n{setting}: {n} test volumes, target variance {target.var():.2f}")
    for folder in sorted(out.glob(f"models/{setting}-*")):
        if not (folder / "done.json").exists():
            continue
        spec = json.loads((folder / "config.json").read_text())["spec"]
        if spec.get("data_seed") != cfg.data_seed:
            seed = spec.get("data_seed")
            raise ValueError(f"{folder.name}: data seed {seed}, not the v2 default {cfg.data_seed}")
        done = json.loads((folder / "done.json").read_text())
        model = build_model(spec["arch"], spec["dim"], spec.get("width"))
        model.load_state_dict(weights_in_counts(folder / "best.pt", model))
        model.eval()
        trained = "train" if spec.get("zscore_stats") == "train" else "volume"
        stats = shared if trained == "train" else None
        print(f"  {folder.name} (z-scored per {trained}, best val {done['best_val_loss']:.2f})")
        inputs = {
            "as trained": [zscore(v, v.inside, stats) for v in volumes],
            "tissue-only stats": [zscore(v, tissue(v), None) for v in volumes],
        }
        for name, arrays in inputs.items():
            x = torch.from_numpy(np.stack(arrays)[:, None])
            with torch.no_grad():
                c = model(x).double().numpy().ravel()
            print(
                f"    {name:18s} MSE {np.mean((c - target) ** 2):5.2f}, corr target "
                f"{np.corrcoef(c, target)[0, 1]:+.2f}, corr volume count "
                f"{np.corrcoef(c, total)[0, 1]:+.2f}, mean prediction {c.mean():.2f}"
            )
        if spec["arch"].startswith("gpunet"):
            x = torch.from_numpy(np.stack(inputs["as trained"])[:, None])
            cams = Detector(model, method="gp_unet").attention(x).double().numpy()
            parts: dict[str, list[float]] = {"lesions": [], "tissue": [], "border 1 mm": []}
            for cam, v in zip(cams, volumes, strict=True):
                depth = ndimage.distance_transform_edt(v.inside, sampling=spacing)
                parts["lesions"].append(float(cam[v.footprint].mean()))
                parts["tissue"].append(float(cam[far_tissue(v, spacing)].mean()))
                parts["border 1 mm"].append(float(cam[v.inside & (depth <= 1.0)].mean()))
            print("    CAM mean: " + ", ".join(f"{k} {np.mean(x):+.2f}" for k, x in parts.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="a v2 study folder (part 2)")
    p.add_argument("--setting", default="basal_ganglia", choices=list(SETTINGS_V2))
    p.add_argument("--volumes", type=int, default=60, help="volumes per setting")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = LesionStudyConfig.v2()
    part1(cfg, args.volumes)
    if args.out is not None:
        part2(cfg, Path(args.out), args.setting, args.volumes)


if __name__ == "__main__":
    main()
