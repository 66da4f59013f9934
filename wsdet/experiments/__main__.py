"""Command line of the reproduction studies: ``python -m wsdet.experiments ...``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import torch

INTERIM = "train nothing; report the networks that have finished so far"
TRAIN_ONLY = (
    "train just these networks (names as in the report; 'all': every one), then stop: no "
    "evaluation. Several such processes share the networks (e.g. on one GPU)"
)
DEVICE = "device to train on, e.g. cuda (default: cpu); evaluation runs on the CPU"


def _summary(got: dict[str, Any]) -> str:
    lines = [f"trained or cached: {sorted(got['networks'])}"]
    lines.append(f"not finished: {got['missing']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsdet.experiments", description=__doc__)
    sub = p.add_subparsers(dest="study", required=True)
    m = sub.add_parser("mnist", help="six methods x two objectives on MNIST grids")
    m.add_argument("--out", required=True, help="output/cache folder")
    m.add_argument("--smoke", action="store_true", help="tiny data, one epoch")
    m.add_argument(
        "--settle",
        action="store_true",
        help="regression vs classification settled: GP-Unet, both data regimes, 8 seeds, "
        "training digits (implies --source train5k; sized for a GPU)",
    )
    m.add_argument("--digits", type=int, nargs="+", default=[4])
    m.add_argument("--root", default=None, help="MNIST folder (default: $WSDET_MNIST_DIR)")
    m.add_argument(
        "--source",
        choices=["test", "train5k"],
        default=None,
        help="digit pools: the test set split in three, or training grids from the train5k "
        "training digits (validation and test grids from the test set)",
    )
    m.add_argument("--budget-min", type=float, default=None, help="training minutes/network")
    m.add_argument("--max-epochs", type=int, default=None)
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--interim", action="store_true", help=INTERIM)
    m.add_argument("--train-only", nargs="+", default=None, metavar="NAME", help=TRAIN_ONLY)
    m.add_argument("--device", default=None, help=DEVICE)
    les = sub.add_parser("lesions3d", help="the 3D lesion study on synthetic phantoms")
    les.add_argument("--out", required=True, help="output/cache folder")
    les.add_argument("--smoke", action="store_true", help="tiny volumes, one epoch")
    les.add_argument(
        "--v2",
        action="store_true",
        help="benchmark v2: phantom settings v2, 3 initialisation seeds, LoG baseline",
    )
    les.add_argument("--settings", nargs="+", default=None)
    les.add_argument("--budget-min", type=float, default=None, help="training minutes/network")
    les.add_argument("--threads", type=int, default=None)
    les.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="epoch cap of the networks trained from scratch (the scratch setting's: "
        "--scratch-epochs where given; default: the study's)",
    )
    les.add_argument(
        "--patience",
        type=int,
        default=None,
        help="patience of every network (the scratch setting's: --scratch-patience where "
        "given; default: the study's)",
    )
    les.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help="epoch cap of the fine-tuned networks (default: the study's)",
    )
    les.add_argument(
        "--scratch-epochs",
        type=int,
        default=None,
        help="epoch cap of the networks trained from scratch in a later setting "
        "(v2: basal_ganglia; default: as the others)",
    )
    les.add_argument(
        "--scratch-patience",
        type=int,
        default=None,
        help="patience of those networks (default: as the others)",
    )
    les.add_argument(
        "--zscore-stats",
        choices=["volume", "train"],
        default=None,
        help="z-score each volume with its own region statistics, or every volume with the "
        "training volumes' (default: the study's; v2: train)",
    )
    les.add_argument("--interim", action="store_true", help=INTERIM)
    les.add_argument("--train-only", nargs="+", default=None, metavar="NAME", help=TRAIN_ONLY)
    les.add_argument("--device", default=None, help=DEVICE)
    args = p.parse_args(argv)
    if getattr(args, "settle", False) and args.smoke:
        p.error("--settle and --smoke exclude each other")
    if getattr(args, "settle", False) and args.source == "test":
        p.error("--settle trains on the train5k training digits; --source test contradicts it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.study == "mnist":
        from wsdet.experiments.mnist import MNISTStudyConfig, run_mnist

        for digit in args.digits:
            over: dict[str, Any] = {"digit": digit, "root": args.root}
            if args.source is not None:
                over["source"] = args.source
            if args.budget_min is not None:
                over["time_budget_min"] = args.budget_min
            if args.max_epochs is not None:
                over["max_epochs"] = args.max_epochs
            if args.settle:
                cfg = MNISTStudyConfig.settle(**over)
            else:
                cfg = MNISTStudyConfig.smoke(**over) if args.smoke else MNISTStudyConfig(**over)
            out = f"{args.out}/digit{digit}"
            got = run_mnist(
                cfg, out, interim=args.interim, train_only=args.train_only, device=args.device
            )
            print(_summary(got) if args.train_only else open(f"{out}/report.md").read())
    if args.study == "lesions3d":
        from wsdet.experiments.lesions import LesionStudyConfig, run_lesions

        over3: dict[str, Any] = {}
        if args.settings:
            over3["settings"] = tuple(args.settings)
        if args.budget_min is not None:
            over3["time_budget_min"] = args.budget_min
        for flag in (
            "max_epochs",
            "patience",
            "finetune_epochs",
            "scratch_epochs",
            "scratch_patience",
            "zscore_stats",
        ):
            if getattr(args, flag) is not None:
                over3[flag] = getattr(args, flag)
        if args.v2:
            cfg3 = LesionStudyConfig.v2(smoke=args.smoke, **over3)
        elif args.smoke:
            cfg3 = LesionStudyConfig.smoke(**over3)
        else:
            cfg3 = LesionStudyConfig(**over3)
        got3 = run_lesions(
            cfg3, args.out, interim=args.interim, train_only=args.train_only, device=args.device
        )
        print(_summary(got3) if args.train_only else open(f"{args.out}/report.md").read())
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
