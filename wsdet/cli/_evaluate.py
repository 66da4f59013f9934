"""``wsdet evaluate``: detections (CSV) against targets (CSV or masks) -> FROC report."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wsdet.cli._common import UserError, expand_inputs, load

logger = logging.getLogger("wsdet.cli")


def add_parser(sub: Any) -> None:
    helptext = "FROC evaluation of detections (CSV) against target points (CSV) or masks"
    p = sub.add_parser("evaluate", help=helptext, description=helptext)
    p.add_argument(
        "detections",
        nargs="+",
        help="detection CSV files, or folders of them (a "
        "summary.csv inside gives the image list and predicted counts)",
    )
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--targets", help="CSV of target points: image and i,j[,k] or x_mm,y_mm,z_mm")
    t.add_argument(
        "--target-masks",
        nargs="+",
        metavar="MASK",
        help="mask volumes (files, folders, "
        "lists) named like the images: one target per connected component",
    )
    p.add_argument(
        "--images",
        default=None,
        help="CSV with an image column (and count): every image "
        "evaluated, also those without detections (default: the summary.csv of a folder)",
    )
    r = p.add_mutually_exclusive_group()
    r.add_argument("--radius", type=float, default=None, help="hit radius in voxels (default 6)")
    r.add_argument("--radius-mm", type=float, default=None, help="hit radius in millimetres")
    p.add_argument("--max-fp", type=float, default=None, help="FAUC range (default 15)")
    p.add_argument("--bootstrap", type=int, default=1000, help="replicates (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--figure", default=None, help="write the FROC curve (PNG/PDF/SVG)")
    p.add_argument("--log-x", action="store_true", help="logarithmic FP axis in the figure")
    p.add_argument("--label", default="detections", help="curve name in the figure")
    p.add_argument("--quiet", "-q", action="store_true", help="no notes on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def _csv_files(items: list[str]) -> tuple[list[Path], Path | None]:
    files: list[Path] = []
    summary = None
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.glob("*.csv") if f.name != "summary.csv")
            if (p / "summary.csv").is_file():
                summary = p / "summary.csv"
            if not found and summary is None:
                raise UserError(f"detections folder {p} holds no CSV files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"detections not found: {p}")
    return files, summary


def _read_images(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise UserError(f"--images not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "image" not in rows[0]:
        raise UserError(f"{path} needs an 'image' column")
    out: dict[str, float] = {}
    for row in rows:
        c = (row.get("count") or "").strip()
        try:
            out[row["image"].strip()] = float(c) if c else float("nan")
        except ValueError:
            raise UserError(f"{path}: count {c!r} of {row['image']} is not a number") from None
    return out


def run(args: argparse.Namespace) -> int:
    from wsdet.detection import Detections
    from wsdet.export import read_points_csv
    from wsdet.metrics import evaluate, match_images

    if (args.radius is not None and args.radius < 0) or (
        args.radius_mm is not None and (args.radius_mm < 0)
    ):
        raise UserError("the hit radius must be >= 0")
    coords: Literal["voxel", "mm"] = "mm" if args.radius_mm is not None else "voxel"
    files, summary = _csv_files(args.detections)
    images_csv = Path(args.images) if args.images else summary
    det: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for f in files:
        for name, (pts, sc) in read_points_csv(f, coords=coords).items():
            if sc is None:
                raise UserError(f"{f} has no score column: detections need scores")
            if name in det:
                pts = np.concatenate([det[name][0], pts])
                sc = np.concatenate([det[name][1], sc])
            det[name] = (pts, sc)
    targets = _targets(args, coords)
    counts = _read_images(images_csv) if images_csv is not None else None
    if counts is not None:
        images = list(counts)
        extra = sorted(set(det) - set(counts))
        if extra:
            raise UserError(f"detections of images missing from {images_csv}: {extra[:5]}")
    else:
        images = list(dict.fromkeys([*det, *targets]))
        _note(
            args,
            "no image list: images with neither detections nor targets are not counted "
            "(give --images, e.g. the summary.csv of wsdet detect)",
        )
    missing = [i for i in images if i not in targets]
    if args.target_masks is not None and missing:
        raise UserError(f"no target mask for image(s) {missing[:5]}")
    if missing:
        _note(args, f"{len(missing)} image(s) have no target rows and count as target-free")
    shapes = [p.shape[1] for p, _ in det.values() if p.size]
    shapes += [p.shape[1] for p in targets.values() if p.size]
    ndim = shapes[0] if shapes else 3
    empty = np.zeros((0, ndim))
    dets = [
        Detections(
            points=det.get(i, (empty, None))[0],
            scores=det.get(i, (None, np.zeros(0)))[1],
            count=float("nan") if counts is None else counts[i],
        )
        for i in images
    ]
    if dets and not all(math.isfinite(d.count) for d in dets):
        for d in dets:
            d.count = float("nan")  # the operating point needs every image's count
    tg = [targets.get(i, empty) for i in images]
    options: dict[str, Any] = {"radius": 6.0 if args.radius is None else args.radius}
    if args.radius_mm is not None:
        options = {"radius_mm": args.radius_mm, "spacing": 1.0}  # points are world mm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(
            dets, tg, max_fp=args.max_fp, n_bootstrap=args.bootstrap, seed=args.seed, **options
        )
    for w in caught:
        _note(args, str(w.message))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=True))
    else:
        print(report)
    if args.figure:
        _figure(args, report, dets, tg, options, match_images)
    return 0


def _targets(args: argparse.Namespace, coords: Literal["voxel", "mm"]) -> dict[str, np.ndarray]:
    from wsdet.export import read_points_csv
    from wsdet.io import points_from_mask

    if args.targets:
        return {k: v[0] for k, v in read_points_csv(args.targets, coords=coords).items()}
    out: dict[str, np.ndarray] = {}
    for f in expand_inputs(args.target_masks, what="target mask"):
        vol = load(f)
        pts = points_from_mask(vol)
        out[vol.id] = vol.to_world(pts) if coords == "mm" else pts
    return out


def _figure(
    args: argparse.Namespace, report: Any, dets: list[Any], tg: list[Any], options: Any, match: Any
) -> None:
    from wsdet import viz

    opts = dict(options)
    if "radius_mm" in opts:
        opts["radius"] = opts.pop("radius_mm")
    results = match([d.points for d in dets], [d.scores for d in dets], tg, **opts)
    max_fp = report.max_fp
    bands = {}
    if args.bootstrap > 0 and report.n_targets > 0:
        grid = list(np.geomspace(0.125, max_fp, 120)) if args.log_x else None
        bands[args.label] = viz.froc_band(
            results, fp=grid, max_fp=max_fp, n_bootstrap=args.bootstrap, seed=args.seed
        )
    unit = "mm" if "spacing" in opts else "voxels"
    fig = viz.plot_froc(
        {args.label: report.curve},
        max_fp=max_fp,
        bands=bands,
        log_x=args.log_x,
        title=f"FROC (hit within {opts['radius']:g} {unit}), FAUC {report.fauc.estimate:.3f}",
        fp_unit="volume",
    )
    viz.save_figure(fig, args.figure, dpi=120)
    _note(args, f"wrote {args.figure}")


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"wsdet: note: {text}", file=sys.stderr)
