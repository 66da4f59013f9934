"""Does a GP-Unet leave the constant-output plateau on a phantom setting, and how soon?

Trains one ``GPUnet(dim=3)`` (regression, Adam, the 3D study's training settings) for a
fixed wall-clock budget on one CPU thread and prints one JSON line: the validation MSE of
the best constant (the plateau), the best validation MSE, their ratio (below 0.9: the
study's "learned" threshold), the epoch at which the ratio first fell below 0.9, the
seconds per epoch and the ratio after every epoch. Used to tune the v2 settings on
validation data only (``docs/phantoms_v2.md``, "Trainability"); no test volume is made.

    python benchmarks/phantom_v2_trainability.py midbrain --minutes 8
    python benchmarks/phantom_v2_trainability.py midbrain --set cnr=2.0 inhomogeneity=0.05
    python benchmarks/phantom_v2_trainability.py hippocampi --init runs/x/best.pt --raw

``--set`` changes fields of the setting (numbers, or ``a,b`` for a range); ``--raw``
trains on the raw intensities instead of the z-scored volumes (``PhantomSet.zscored``);
``--init`` fine-tunes from a ``best.pt``. Data seeds: training 11, validation 12.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from wsdet.data.phantoms.v2 import SETTINGS_V2, make_phantoms_v2
from wsdet.experiments.common import STUCK_FRACTION, constant_val_loss
from wsdet.models import get_model
from wsdet.train import TrainConfig, Trainer


def _value(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["cnr=3.5", "lesion_radius=0.75,1.5", "shape=8,96,96", "annotation=volume"]``
    -> ``{"cnr": 3.5, "lesion_radius": (0.75, 1.5), "shape": (8, 96, 96), "annotation":
    "volume"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        # "8" stays an int (shape, look-alike counts), "3.5" a float, "volume" a string
        parts = [_value(v) for v in value.split(",")]
        out[key] = parts[0] if len(parts) == 1 else tuple(parts)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("setting", choices=sorted(SETTINGS_V2))
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--raw", action="store_true", help="raw intensities, not z-scored")
    p.add_argument("--init", default=None, help="a best.pt to fine-tune from")
    p.add_argument("--out", default="runs/trainability", help="folder of the run")
    args = p.parse_args()
    torch.set_num_threads(1)
    changes = parse_set(args.set)
    setting = dataclasses.replace(SETTINGS_V2[args.setting], **changes)
    train = make_phantoms_v2(args.n_train, setting, seed=11)
    val = make_phantoms_v2(args.n_val, setting, seed=12)
    if not args.raw:
        train, val = train.zscored(), val.zscored()
    plateau = constant_val_loss("regression", val.counts)
    net = get_model("gpunet", dim=3, width=args.width)
    cfg = TrainConfig(
        objective="regression",
        optimizer="adam",
        lr=args.lr,
        init="kaiming_conv",
        batch_size=args.batch_size,
        max_epochs=100_000,
        patience=None,
        time_budget=args.minutes * 60.0,
        seed=0,
        progress="none",
    )
    init = Path(args.init).parent.name if args.init else ""
    tag = "-".join(p for p in (args.setting, *args.set, "raw" if args.raw else "z", init) if p)
    out = Path(args.out) / tag.replace("=", "").replace(",", "_")
    t0 = time.perf_counter()
    Trainer(net, cfg, out_dir=out, init_from=args.init).fit(
        (train.images, train.counts), (val.images, val.counts)
    )
    rows = [r.split(",") for r in (out / "history.csv").read_text().splitlines()[1:]]
    losses = [float(r[2]) for r in rows]  # columns: epoch, train_loss, val_loss, ...
    ratios = [v / plateau for v in losses]
    learned = [int(r[0]) for r, x in zip(rows, ratios, strict=True) if x < STUCK_FRACTION]
    print(
        json.dumps(
            {
                "setting": args.setting,
                "changes": changes,
                "zscored": not args.raw,
                "init": args.init,
                "constant_val_mse": round(plateau, 3),
                "best_val_mse": round(min(losses), 3),
                "ratio": round(min(ratios), 3),
                "first_epoch_below_0.9": learned[0] if learned else None,
                "epochs": len(losses),
                "seconds_per_epoch": round((time.perf_counter() - t0) / len(losses), 1),
                "ratios": [round(r, 2) for r in ratios],
            }
        )
    )


if __name__ == "__main__":
    main()
