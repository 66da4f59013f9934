"""Does per-volume z-scoring tell a counting network the lesion count? (v2 phantoms.)

Part 1 (no networks): per setting, the level of the tissue far from every lesion (> 3 mm
from a lesion's half-maximum footprint, outside the look-alikes) after z-scoring each
volume with its own region statistics, after normalising each with its own region's
median and MAD (``normalize_intensity(..., "robust")``), after z-scoring every volume
with the training volumes' pooled statistics, and raw; printed as its correlation with
the volume's lesion count and with the annotated slice's (the basal-ganglia-like
target). Bright lesions raise a volume's region mean, so under per-volume statistics the
far tissue lies lower the more lesions the volume holds, and with the region's outside set
to 0 the border becomes an edge whose height tracks the count.

Part 2 (``--out`` a v2 study folder): every cached network of ``--setting``, on the test
volumes normalised as it was trained (per volume or with the training volumes' pooled
statistics, read from its ``config.json``), and on the same volumes each shifted inside its
region so that its far tissue lies at the mean level of all of them, which removes the
count-linked part of the level and keeps everything else (scale, contrast, the average
level): mean squared error to the target count, its correlation with the target and with
the volume's lesion count, the mean prediction; and how far the mean prediction moves when
every region is shifted by -0.1 z (under per-volume statistics, what about 15 more lesions
do in the basal-ganglia-like setting). For GP-Unets, the mean of the class activation map
(unfused) on lesion footprints, on the far tissue and within 1 mm of the region border.

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
from wsdet.experiments.common import build_model, decoder_key
from wsdet.experiments.lesions import LesionStudy, LesionStudyConfig, data_seeds
from wsdet.io import normalize_intensity
from wsdet.train.checkpoints import weights_in_counts

FAR_MM = 3.0
SHIFT = 0.1  # z, the tissue shift of the level-sensitivity probe


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
            ("per volume, robust", None, True),
            ("training stats", shared, False),
            ("raw", (0.0, 1.0), False),
        ):
            level = []
            for v in volumes:
                if name.endswith("robust"):  # median and MAD of the region, 0 outside
                    z = normalize_intensity(v.image, "robust", mask=v.inside)
                else:
                    z = zscore(v, v.inside if own else None, stats)
                level.append(float(z[far_tissue(v, s.spacing)].mean()))
            slope = np.polyfit(total, level, 1)[0] * 10  # z per 10 lesions
            row.append(
                f"{name} {np.corrcoef(level, total)[0, 1]:+.2f} / "
                f"{np.corrcoef(level, target)[0, 1]:+.2f} ({slope:+.4f} per 10 lesions)"
            )
        print(f"  {setting}: " + "; ".join(row))


def predict(model: torch.nn.Module, arrays: list[np.ndarray], batch: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for k in range(0, len(arrays), batch):
            x = torch.from_numpy(np.stack(arrays[k : k + batch])[:, None])
            out.append(model(x).double().numpy().ravel())
    return np.concatenate(out)


def part2(cfg: LesionStudyConfig, out: Path, setting: str, n: int) -> None:
    train_seed, _, test_seed = data_seeds(cfg, setting)
    volumes = render_phantoms_v2(n, setting, test_seed)
    target, total = targets(volumes, setting)
    shared = pooled_stats(render_phantoms_v2(cfg.n_train, setting, train_seed))
    spacing = SETTINGS_V2[setting].spacing
    far = [far_tissue(v, spacing) for v in volumes]
    print(f"\n{setting}: {n} test volumes, target variance {target.var():.2f}")
    print("as trained: the volumes normalised as the network was trained; level-equalised:")
    print("the same, each shifted inside its region so that its far tissue has the mean level")
    print(f"of all {n} (only the count-linked part of the level removed); level -{SHIFT:g}:")
    print(f"every region shifted by -{SHIFT:g} z, the change of the mean prediction")
    # every network must have been trained on today's volumes (setting, sizes, seeds)
    expected = json.loads(json.dumps(LesionStudy(cfg)._data_key(setting)))  # as in the files
    expected.pop("zscore_stats", None)
    for folder in sorted(out.glob(f"models/{setting}-*")):
        if not (folder / "done.json").exists():
            continue
        spec = json.loads((folder / "config.json").read_text())["spec"]
        skip = {"zscore_stats", "arch", "dim", "width", "upsample"}
        keys = (set(expected) | set(spec)) - skip
        differ = sorted(k for k in keys if spec.get(k) != expected.get(k))
        if differ:
            raise ValueError(f"{folder.name}: trained on other volumes ({differ} differ)")
        aligned = decoder_key(spec["arch"], spec["dim"], spec["shape"]).get("upsample")
        if spec.get("upsample") != aligned:  # trained before UpsampleTo was aligned
            print(f"  {folder.name}: skipped (trained with the former stretched upsampling)")
            continue
        done = json.loads((folder / "done.json").read_text())
        model = build_model(spec["arch"], spec["dim"], spec.get("width"))
        model.load_state_dict(weights_in_counts(folder / "best.pt", model))
        model.eval()
        per_volume = spec.get("zscore_stats", "volume") == "volume"
        stats = None if per_volume else shared
        how = "each volume's own statistics" if per_volume else "the training volumes' statistics"
        print(f"  {folder.name} (z-scored with {how}; best val {done['best_val_loss']:.2f})")
        trained = [zscore(v, v.inside, stats) for v in volumes]
        levels = np.array([z[f].mean() for z, f in zip(trained, far, strict=True)])
        equalised = [
            np.where(v.inside, z - (lev - levels.mean()), 0.0).astype(np.float32)
            for z, v, lev in zip(trained, volumes, levels, strict=True)
        ]
        lowered = [
            np.where(v.inside, z - SHIFT, 0.0).astype(np.float32)
            for z, v in zip(trained, volumes, strict=True)
        ]
        base = predict(model, trained, cfg.eval_batch)
        for name, c in (
            ("as trained", base),
            ("level-equalised", predict(model, equalised, cfg.eval_batch)),
        ):
            print(
                f"    {name:16s} MSE {np.mean((c - target) ** 2):5.2f}, corr target "
                f"{np.corrcoef(c, target)[0, 1]:+.2f}, corr volume count "
                f"{np.corrcoef(c, total)[0, 1]:+.2f}, mean prediction {c.mean():.2f}"
            )
        delta = predict(model, lowered, cfg.eval_batch).mean() - base.mean()
        print(f"    level -{SHIFT:g}: mean prediction {delta:+.2f}")
        if spec["arch"].startswith("gpunet"):
            parts: dict[str, list[float]] = {"lesions": [], "far tissue": [], "border 1 mm": []}
            for k in range(0, n, cfg.eval_batch):
                x = torch.from_numpy(np.stack(trained[k : k + cfg.eval_batch])[:, None])
                cams = Detector(model, method="gp_unet").attention(x).double().numpy()
                for cam, v, f in zip(cams, volumes[k:], far[k:], strict=False):
                    depth = ndimage.distance_transform_edt(v.inside, sampling=spacing)
                    if v.footprint.any():
                        parts["lesions"].append(float(cam[v.footprint].mean()))
                    parts["far tissue"].append(float(cam[f].mean()))
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
