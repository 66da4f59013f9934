"""``wsdet train``: a counting network from a folder of volumes and their counts (or masks)."""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from wsdet.cli._common import (
    ARCHS,
    DEFAULT_METHOD,
    UPSAMPLE,
    UserError,
    _reference_model,
    add_runtime_args,
    expand_inputs,
    load,
    parse_spacing,
    predates_alignment,
    read_model_json,
    setup_runtime,
    write_model_json,
)
from wsdet.cli._detect import NORMALIZE

logger = logging.getLogger("wsdet.cli")


def add_parser(sub: Any) -> None:
    helptext = "train a counting network on volumes and their counts (resumable)"
    p = sub.add_parser("train", help=helptext, description=helptext)
    p.add_argument("inputs", nargs="+", help="training volumes: files, folders or .txt lists")
    p.add_argument("--out", "-o", required=True, help="run folder: best.pt, last.pt, ...")
    c = p.add_mutually_exclusive_group(required=True)
    c.add_argument("--counts", help="CSV with columns image,count (image = file name stem)")
    c.add_argument(
        "--masks", nargs="+", help="mask volumes named like the images; count = components"
    )
    p.add_argument("--val", nargs="+", default=None, help="validation volumes (default: split)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held out when no --val")
    p.add_argument("--arch", choices=ARCHS, default="gpunet")
    p.add_argument("--dim", type=int, choices=(2, 3), default=None, help="default: the data's")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--normalize", choices=NORMALIZE, default="zscore")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    p.add_argument("--patience", type=int, default=20, help="early stopping (0: off)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--optimizer", choices=("adadelta", "adam"), default="adadelta")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--init",
        choices=("default", "keras", "kaiming", "kaiming_conv"),
        default=None,
        help="weight initialisation (default: the architecture's)",
    )
    p.add_argument("--objective", choices=("regression", "classification"), default="regression")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--init-from", default=None, help="weights to start from (fine-tuning)")
    add_runtime_args(p)
    p.set_defaults(func=run)


def _read_counts(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise UserError(f"--counts not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = fields
        if "image" not in fields or "count" not in fields:
            raise UserError(f"{path} needs the columns image,count; found {', '.join(fields)}")
        out: dict[str, float] = {}
        for n, row in enumerate(reader, start=2):
            try:
                count = float(row["count"])
            except (TypeError, ValueError):
                raise UserError(
                    f"{path} line {n}: count {row['count']!r} is not a number"
                ) from None
            if not (math.isfinite(count) and count >= 0):
                raise UserError(f"{path} line {n}: count {row['count']!r} must be a number >= 0")
            out[row["image"].strip()] = count
    return out


def _data(files: list[Path], counts: dict[str, float], args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from wsdet.io import normalize_intensity

    spacing = parse_spacing(args.spacing)
    arrays, ys, shape = [], [], None
    for f in files:
        vol = load(f, spacing)
        if vol.id not in counts:
            raise UserError(f"no count for image {vol.id!r} ({f})")
        if shape is None:
            shape = vol.shape
        elif vol.shape != shape:
            raise UserError(
                f"training volumes must share one shape: {files[0].name} is {shape}, "
                f"{f.name} is {vol.shape} (crop, pad or resample them first)"
            )
        arrays.append(normalize_intensity(vol.array, args.normalize))
        ys.append(counts[vol.id])
    x = torch.from_numpy(np.stack(arrays)[:, None])
    return x, torch.tensor(ys, dtype=torch.float32)


def _mask_counts(items: list[str]) -> dict[str, float]:
    from wsdet.io import points_from_mask

    return {
        (v := load(f)).id: float(len(points_from_mask(v)))
        for f in expand_inputs(items, what="mask")
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from wsdet.train import TrainConfig, Trainer

    device = setup_runtime(args)
    files = expand_inputs(args.inputs)
    counts = _read_counts(Path(args.counts)) if args.counts else _mask_counts(args.masks)
    if args.val:
        train_files, val_files = files, expand_inputs(args.val, what="validation volume")
    else:
        if len(files) < 2:
            raise UserError("train needs at least 2 volumes (one held out), or --val")
        if not 0 < args.val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
        order = np.random.default_rng(args.seed).permutation(len(files))
        n_val = min(len(files) - 1, max(1, round(args.val_fraction * len(files))))
        val_files = [files[i] for i in sorted(order[:n_val])]
        train_files = [files[i] for i in sorted(order[n_val:])]
    train = _data(train_files, counts, args)
    val = _data(val_files, counts, args)
    if train[0].shape[2:] != val[0].shape[2:]:
        raise UserError(
            f"training and validation volumes differ in shape: {tuple(train[0].shape[2:])} "
            f"and {tuple(val[0].shape[2:])}"
        )
    dim = train[0].ndim - 2
    if args.dim is not None and args.dim != dim:
        raise UserError(f"--dim {args.dim} but the volumes are {dim}D")
    arch = {"arch": args.arch, "dim": dim, "in_channels": 1, "width": args.width}
    out = Path(args.out)
    # resuming a run begun by wsdet 0.1.0 with the stretching decoder: keep it, exactly
    legacy = (
        args.resume and (out / "last.pt").is_file() and predates_alignment(read_model_json(out))
    )
    with torch.random.fork_rng(devices=[]):  # initial weights from --seed, reproducibly
        torch.manual_seed(args.seed)
        model = _reference_model(arch, stretch=legacy).to(device)
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "arch": args.arch,
        "dim": dim,
        "width": model.width,
        "in_channels": 1,
        "normalize": args.normalize,
        "method": DEFAULT_METHOD[args.arch],
        "objective": args.objective,
    }
    if not legacy:
        spec["upsample"] = UPSAMPLE
    write_model_json(out, spec)
    config = TrainConfig(
        objective=args.objective,
        optimizer=args.optimizer,
        lr=args.lr,
        init=args.init,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.patience or None,
        seed=args.seed,
        time_budget=args.time_budget,
        progress="none" if args.quiet else "auto",
        log_every=max(1, args.epochs // 20),
    )
    trainer = Trainer(model, config, out_dir=out, init_from=args.init_from)
    logger.info(
        "training %s %dD on %d volumes (%d validation), shape %s",
        args.arch,
        dim,
        len(train_files),
        len(val_files),
        tuple(train[0].shape[2:]),
    )
    result = trainer.fit(train, val, resume=bool(args.resume))
    if not args.quiet:
        print(
            f"stopped ({result.stop_reason}) after {result.epochs} epochs; best epoch "
            f"{result.best_epoch}, validation loss {result.best_val_loss:.4g}"
        )
        print(f"weights: {result.best_checkpoint} (model description: {out / 'model.json'})")
    return 0
