"""Which lesions does a method never propose? (3D study, after it has run.)

For every method of the 3D lesion study, counts the test lesions with no NMS candidate
within the hit radius at all (so that no threshold can detect them: the FROC curve ends
below sensitivity 1) and how many of those have another lesion close by, where one smooth
blob of the attention map covers two lesions and yields one peak.

    python benchmarks/lesion_misses.py --out runs/lesions3d_v2

Reads the cached detections of ``python -m wsdet.experiments lesions3d --out ...`` (the
volume settings only; run the study first) and regenerates the test phantoms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

from wsdet.experiments.common import load_detections
from wsdet.experiments.lesions import SETTINGS, LesionStudyConfig, _data


def misses(
    points: list[np.ndarray], targets: list[np.ndarray], radius: float, close: float
) -> tuple[int, int, int, int]:
    """(targets, targets without a candidate within ``radius``, targets with another target
    closer than ``close``, of the missed ones those with such a neighbour)."""
    n = missed = near = near_missed = 0
    for pts, tgt in zip(points, targets, strict=True):
        if len(tgt) == 0:
            continue
        if len(pts):
            got = cdist(tgt, pts.astype(float)).min(1) <= radius
        else:
            got = np.zeros(len(tgt), bool)
        dt = cdist(tgt, tgt)
        np.fill_diagonal(dt, np.inf)
        has_neighbour = dt.min(1) < close
        n += len(tgt)
        missed += int((~got).sum())
        near += int(has_neighbour.sum())
        near_missed += int((~got & has_neighbour).sum())
    return n, missed, near, near_missed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/lesions3d_v2", help="the study's output folder")
    p.add_argument("--settings", nargs="+", default=["midbrain", "hippocampi"])
    p.add_argument("--close", type=float, default=8.0, help="neighbour distance (voxels)")
    args = p.parse_args()
    cfg = LesionStudyConfig()
    print(
        f"| setting | method | lesions | without a candidate within {cfg.radius:g} voxels "
        f"| of those, with another lesion < {args.close:g} voxels away | all lesions with "
        "such a neighbour |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for setting in args.settings:
        if SETTINGS[setting]["annotation"] != "volume":
            raise SystemExit(f"{setting}: only the volume-annotated settings are supported")
        _, _, test = _data(cfg, setting)
        targets = [np.asarray(t, float).reshape(-1, 3) for t in test.points]
        for method in cfg.methods:
            found = sorted(Path(args.out, "detections").glob(f"{setting}-{method}-*.npz"))
            if len(found) != 1:
                raise SystemExit(
                    f"expected one cached detection file for {setting}-{method} in "
                    f"{args.out}/detections, found {len(found)}: run the study first"
                )
            dets, _ = load_detections(found[0])
            n, missed, near, near_missed = misses(
                [d.points for d in dets], targets, cfg.radius, args.close
            )
            print(f"| {setting} | {method} | {n} | {missed} | {near_missed} | {near} |")


if __name__ == "__main__":
    main()
