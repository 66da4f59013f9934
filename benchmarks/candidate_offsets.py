"""Where do a method's candidates lie relative to the lesions, axis by axis? (v2 study.)

For each cached detection file of ``--setting`` in a v2 study folder (``--match``: only
files whose name contains it), every candidate within ``--in-plane`` mm in-plane of a
lesion centre is paired with its nearest lesion, and the signed offset along the first
(through-plane) axis is counted in slices: a systematic offset shows a map that is
displaced, not blurred. Also printed: the fraction of lesions whose nearest candidate lies
within the hit radius (3 mm over all axes), and the median in-plane and through-plane
distances. Regenerates the test volumes with their truth (``render_phantoms_v2``, the
study's test seed), so the study must use the v2 default data seed.

    python benchmarks/candidate_offsets.py --out runs/lesions3d_v2n --match gp_unet-
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from wsdet.data.phantoms.v2 import SETTINGS_V2, hit_radius_mm, render_phantoms_v2
from wsdet.experiments.detections import load_detections
from wsdet.experiments.lesions import LesionStudyConfig, data_seeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the study's output folder")
    p.add_argument("--setting", default="midbrain", choices=[s for s in SETTINGS_V2])
    p.add_argument("--match", default="", help="only files whose name contains this")
    p.add_argument("--in-plane", type=float, default=3.0, help="mm, for the offset counts")
    args = p.parse_args()
    cfg = LesionStudyConfig.v2()
    if SETTINGS_V2[args.setting].annotation != "volume":
        raise SystemExit(f"--setting {args.setting}: evaluated on one slice, no offset across")
    volumes = render_phantoms_v2(cfg.n_test, args.setting, seed=data_seeds(cfg, args.setting)[2])
    spacing = np.asarray(SETTINGS_V2[args.setting].spacing, dtype=float)
    radius = hit_radius_mm(tuple(spacing))
    files = sorted(Path(args.out, "detections").glob(f"{args.setting}-*.npz"))
    for path in (f for f in files if args.match in f.name):
        dets, _ = load_detections(path)
        if len(dets) != len(volumes):
            raise ValueError(f"{path.name}: {len(dets)} volumes, expected {len(volumes)}")
        hit, dz, dxy = [], [], []
        offsets: Counter[int] = Counter()
        for d, v in zip(dets, volumes, strict=True):
            lesions = np.asarray(v.points, dtype=float).reshape(-1, 3)
            cands = np.asarray(d.points, dtype=float).reshape(-1, 3)
            if len(lesions) == 0 or len(cands) == 0:
                hit += [False] * len(lesions)
                continue
            diff = (cands[:, None, :] - lesions[None]) * spacing  # candidate - lesion, mm
            dist = np.linalg.norm(diff, axis=2)
            nearest = diff[dist.argmin(0), np.arange(len(lesions))]  # per lesion
            hit += (np.linalg.norm(nearest, axis=1) <= radius).tolist()
            dz += np.abs(nearest[:, 0]).tolist()
            dxy += np.linalg.norm(nearest[:, 1:], axis=1).tolist()
            per_cand = diff[np.arange(len(cands)), dist.argmin(1)]
            close = np.linalg.norm(per_cand[:, 1:], axis=1) <= args.in_plane
            offsets.update(np.rint(per_cand[close, 0] / spacing[0]).astype(int).tolist())
        print(
            f"{path.stem}: nearest candidate within {radius:g} mm for {np.mean(hit):.2f} of "
            f"{len(hit)} lesions; median |through-plane| {np.median(dz):.1f} mm, in-plane "
            f"{np.median(dxy):.1f} mm; candidates within {args.in_plane:g} mm in-plane of a "
            f"lesion by slice offset: {dict(sorted(offsets.items()))}"
        )


if __name__ == "__main__":
    main()
