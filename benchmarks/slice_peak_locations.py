"""Where do a method's highest candidates lie? (basal-ganglia-like v2 setting, after it has run.)

For each cached detection file of the basal-ganglia-like setting of a v2 study, takes the
``--top`` highest candidates on each test volume's annotated slice and prints the fraction
that lie on a lesion's half-maximum footprint, the fraction on a look-alike's (both dilated
by ``--dilate`` voxels in-plane) and their median distance (mm) to the region border.
Regenerates the test volumes with their full truth (``render_phantoms_v2``, the study's
test seed, ``wsdet.experiments.lesions.data_seeds``), so the study's data seed must
be the v2 default.

    python benchmarks/slice_peak_locations.py --out runs/lesions3d_v2_long --match seed100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsdet.data.phantoms.v2 import SETTINGS_V2, render_phantoms_v2
from wsdet.experiments.detections import load_detections
from wsdet.experiments.lesions import LesionStudyConfig, data_seeds

SETTING = "basal_ganglia"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the study's output folder")
    p.add_argument("--match", default="", help="only files whose name contains this")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--dilate", type=int, default=2)
    args = p.parse_args()
    cfg = LesionStudyConfig.v2()
    volumes = render_phantoms_v2(cfg.n_test, SETTING, seed=data_seeds(cfg, SETTING)[2])
    spacing = SETTINGS_V2[SETTING].spacing[1]
    files = sorted(Path(args.out, "detections").glob(f"{SETTING}-*.npz"))
    for path in (f for f in files if args.match in f.name):
        dets, _ = load_detections(path)
        if len(dets) != len(volumes):
            raise ValueError(f"{path.name}: {len(dets)} volumes, expected {len(volumes)}")
        on_lesion, on_lookalike, to_border = [], [], []
        for d, v in zip(dets, volumes, strict=True):
            s = v.slice_index
            lesion = ndimage.binary_dilation(v.footprint[s], iterations=args.dilate)
            lookalike = ndimage.binary_dilation(v.lookalike_labels[s] > 0, iterations=args.dilate)
            border = ndimage.distance_transform_edt(v.inside[s]) * spacing
            for y, x in np.asarray(d.points[: args.top], dtype=int):
                on_lesion.append(lesion[y, x])
                on_lookalike.append(lookalike[y, x])
                to_border.append(border[y, x])
        print(
            f"{path.stem}: top {args.top} on a lesion {np.mean(on_lesion):.2f}, "
            f"on a look-alike {np.mean(on_lookalike):.2f}, "
            f"median {np.median(to_border):.1f} mm to the region border"
        )


if __name__ == "__main__":
    main()
