"""Training-free baselines on the phantom settings v1 and v2 (no network is trained).

For every setting: the sigma of each filter is chosen on validation volumes (their own
data seed), then the FAUC over 0–1, 0–2 and 0–15 false positives per volume is measured
on test volumes (another data seed). Rows:

* ``LoG``: the scale-normalised negative Laplacian of Gaussian
  (:func:`wsdet.baselines.log_maps`), sigma in mm chosen among ``LOG_SIGMAS``;
* ``smoothed intensity``: the Gaussian-smoothed image (sigma 0 = raw intensity) among
  ``SMOOTH_SIGMAS``, the other training-free detector;
* ``chance``: i.i.d. uniform noise inside the region mask (a random map), the same NMS.

v2 volumes are z-scored inside their region masks (0 outside). ``--zscore pooled`` (the
default) z-scores validation and test volumes with one mean and sd, pooled over the
validation volumes' regions: the study's protocol, which pools its training volumes (a
training-free method has none; validation volumes come from the same distribution).
``--zscore volume`` z-scores each volume with its own statistics, as the first v2 study
runs did; this changes how candidates of different volumes rank against each other, since
a volume's statistics then depend on its lesion count. Every map goes
through :func:`wsdet.detect_maps` (every NMS candidate, the learned
methods' NMS) and :func:`wsdet.metrics.evaluate` (one-to-one matching within the hit
radius in mm, with the voxel spacing). v2: NMS size and hit radius from
:func:`~wsdet.data.phantoms.v2.nms_size` and :func:`~wsdet.data.phantoms.v2.hit_radius_mm`
(6 voxels in-plane = 3 mm); v1: NMS 6 and 6 voxels (isotropic 1 mm voxels). Slice-annotated
settings (basal ganglia) are evaluated on the annotated slice (2D NMS and matching).

    python benchmarks/phantom_v2_baselines.py            # about 3 minutes on one core
    python benchmarks/phantom_v2_baselines.py --zscore volume   # the first v2 runs' inputs
    python benchmarks/phantom_v2_baselines.py --n-val 20 --n-test 40 --out table.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsdet._io import atomic_write_text
from wsdet.baselines import choose_sigma, log_maps, set_report, smooth_maps
from wsdet.data.phantoms import PhantomSet, make_lesion_volumes
from wsdet.data.phantoms.v2 import SETTINGS_V2, hit_radius_mm, make_phantoms_v2, nms_size
from wsdet.experiments.lesions import SETTINGS, LesionStudyConfig
from wsdet.metrics import fauc

LOG_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # mm; v1 voxels are 1 mm
SMOOTH_SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.5)
MAX_FPS = (1.0, 2.0, 15.0)
VAL_SEED, TEST_SEED = 1000, 2000  # + the setting's index


def chance_maps(test: PhantomSet, seed: int) -> np.ndarray:
    """Uniform noise inside each volume's region mask (zero outside)."""
    assert test.mask is not None
    rng = np.random.default_rng(seed)
    noise = rng.random(tuple(test.images[:, 0].shape)) * test.mask.numpy()
    return np.asarray(noise, dtype=np.float32)


def readings(maps: np.ndarray, test: PhantomSet, opts: dict[str, Any]) -> list[float]:
    """FAUC over each of ``MAX_FPS`` and the bootstrap SD of the last (200 replicates)."""
    report = set_report(maps, test, max_fp=MAX_FPS[-1], n_bootstrap=200, **opts)
    return [float(fauc(report.curve, f)) for f in MAX_FPS] + [report.fauc.sd]


def measure(
    name: str, make: Callable[[int, int], PhantomSet], index: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The rows of one setting: sigma chosen on validation, FAUCs on test."""
    t0 = time.perf_counter()
    val = make(args.n_val, VAL_SEED + index)
    test = make(args.n_test, TEST_SEED + index)
    if name.startswith("v2:"):  # v1 sets are fed raw, as the v1 study does
        stats = val.region_stats() if args.zscore == "pooled" else None
        val, test = val.zscored(stats), test.zscored(stats)
    isotropic = len(set(test.spacing)) == 1
    radius = 6.0 * test.spacing[0] if isotropic else hit_radius_mm(test.spacing)
    size: int | tuple[int, ...] = 6 if isotropic else nms_size(test.spacing)
    opts: dict[str, Any] = {"radius_mm": radius, "size": size}
    rows: dict[str, Any] = {}
    for label, maps, sigmas in (
        ("LoG", log_maps, LOG_SIGMAS),
        ("smoothed intensity", smooth_maps, SMOOTH_SIGMAS),
    ):
        choice = choose_sigma(val, sigmas, maps=maps, **opts)
        test_maps = maps(test.images, choice.sigma_mm, test.spacing, masks=test.mask)
        rows[label] = (choice.sigma_mm, choice.fauc, readings(test_maps, test, opts))
    rows["chance"] = (None, None, readings(chance_maps(test, index), test, opts))
    lesions = int(sum(len(p) for p in test.points))
    return {
        "setting": name,
        "rows": rows,
        "radius": radius,
        "size": size,
        "lesions": lesions,
        "seconds": time.perf_counter() - t0,
    }


def v2_maker(setting: str) -> Callable[[int, int], PhantomSet]:
    """The raw v2 phantoms of ``setting`` (:func:`measure` z-scores them)."""
    return lambda n, seed: make_phantoms_v2(n, setting, seed=seed)


def v1_maker(setting: str) -> Callable[[int, int], PhantomSet]:
    """The v1 phantoms of the 3D study's default configuration (read-only use)."""
    cfg = LesionStudyConfig()
    kw = dict(SETTINGS[setting])
    kw["mean_count"] = cfg.mean_count * kw.pop("count_factor", 1.0)
    return lambda n, seed: make_lesion_volumes(n, cfg.shape_of(setting), seed=seed, **kw)


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Validation {args.n_val} volumes (seed {VAL_SEED} + i), test {args.n_test} "
        f"(seed {TEST_SEED} + i) per setting; v2 inputs z-scored in the region with "
        + (
            "the validation volumes' pooled statistics"
            if args.zscore == "pooled"
            else "each volume's own statistics"
        )
        + "; FAUC in %, every NMS candidate; SD: bootstrap over test volumes (200 replicates).",
        "",
        "| phantoms | setting | method | sigma (mm) | val FAUC(0–15) | FAUC(0–1) | FAUC(0–2) "
        "| FAUC(0–15) ± SD | test lesions | hit radius (mm) | NMS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for method, (sigma, val_fauc, faucs) in r["rows"].items():
            val_txt = "—" if val_fauc is None else f"{100 * val_fauc:.1f}"
            cells = " | ".join(f"{100 * f:.1f}" for f in faucs[:-1])
            cells += f" ± {100 * faucs[-1]:.1f}"
            lines.append(
                f"| {r['setting'].split(':')[0]} | {r['setting'].split(':')[1]} | {method} | "
                f"{'—' if sigma is None else sigma} | {val_txt} | {cells} | {r['lesions']} | "
                f"{r['radius']:g} | {r['size']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-val", type=int, default=20)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument(
        "--zscore",
        choices=("pooled", "volume"),
        default="pooled",
        help="v2 normalisation: one pooled mean/sd from the validation volumes (the study's "
        "protocol) or each volume's own (the first v2 runs)",
    )
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for i, name in enumerate(SETTINGS_V2):
        results.append(measure(f"v2:{name}", v2_maker(name), i, args))
        print(f"v2 {name}: {results[-1]['seconds']:.0f} s", flush=True)
    for i, name in enumerate(SETTINGS):
        results.append(measure(f"v1:{name}", v1_maker(name), i, args))
        print(f"v1 {name}: {results[-1]['seconds']:.0f} s", flush=True)
    text = table(results, args)
    print(text)
    if args.out:
        atomic_write_text(text, args.out)


if __name__ == "__main__":
    main()
