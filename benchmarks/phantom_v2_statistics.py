"""Measured statistics of the v2 phantom settings (the table in ``docs/phantoms_v2.md``).

For each built-in setting, ``--n`` volumes (data seed 2000 + the setting's index): the
noise sd (noisy minus noise-free image inside the region), the CNR (mean lesion peak above
the noise-free background at the annotated voxels, over that sd), the lesion count mean
and variance, look-alikes per volume and the fraction placed touching a lesion, and the
lesions on the annotated slice. The unit tests check each against the configuration;
this prints the numbers.

    python benchmarks/phantom_v2_statistics.py            # 40 volumes per setting, ~1 min
"""

from __future__ import annotations

import argparse

import numpy as np

from wsdet.data.phantoms.v2 import SETTINGS_V2, render_phantoms_v2


def measure(name: str, index: int, n: int) -> dict[str, float]:
    noisy = render_phantoms_v2(n, name, seed=2000 + index)
    clean = render_phantoms_v2(n, name, seed=2000 + index, noise=False)
    residual = np.concatenate(
        [(v.image - c.image)[v.inside] for v, c in zip(noisy, clean, strict=True)]
    )
    sd = float(residual.std())
    peaks = np.concatenate([(v.clean - v.background)[tuple(v.points.T)] for v in noisy])
    counts = np.array([len(v.points) for v in noisy], dtype=float)
    touching = np.concatenate([v.lookalike_touching for v in noisy]).astype(float)
    on_slice = [int((v.points[:, 0] == v.slice_index).sum()) for v in noisy]
    return {
        "noise sd": sd,
        "CNR": float(peaks.mean()) / sd,
        "lesions mean": float(counts.mean()),
        "lesions variance": float(counts.var(ddof=1)),
        "look-alikes per volume": len(touching) / n,
        "touching": float(touching.mean()) if len(touching) else float("nan"),
        "lesions on the annotated slice": float(np.mean(on_slice)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="volumes per setting")
    args = parser.parse_args()
    rows = {name: measure(name, i, args.n) for i, name in enumerate(SETTINGS_V2)}
    print("| | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for key in next(iter(rows.values())):
        print(f"| {key} | " + " | ".join(f"{r[key]:.3g}" for r in rows.values()) + " |")


if __name__ == "__main__":
    main()
