"""``wsdet attention`` and ``wsdet detect``: volumes in, maps and located detections out."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from wsdet.cli._common import (
    DEFAULT_METHOD,
    UserError,
    add_model_args,
    add_runtime_args,
    build_model,
    expand_inputs,
    load,
    model_spec,
    parse_spacing,
    progress,
    setup_runtime,
)

logger = logging.getLogger("wsdet.cli")

NORMALIZE = ("zscore", "minmax", "none")  # per whole volume (no mask on the command line)


def add_parsers(sub: Any) -> None:
    for name in ("attention", "detect"):
        helptext = (
            "attention maps of volumes, saved with the input's geometry"
            if name == "attention"
            else "point detections of volumes: CSV + 3D Slicer markups per volume, summary CSV"
        )
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument(
            "inputs",
            nargs="+",
            help="volume files (.nii/.nii.gz/.npy/.npz/.png), folders, or .txt lists of paths",
        )
        p.add_argument("--out", "-o", required=True, help="output folder (created)")
        add_model_args(p)
        p.add_argument("--method", default=None, help="attention method (default: the arch's)")
        p.add_argument(
            "--normalize",
            choices=NORMALIZE,
            default=None,
            help="per-volume intensity normalisation (default: the model.json's, else zscore)",
        )
        p.add_argument(
            "--spacing",
            type=float,
            nargs="+",
            default=None,
            metavar="MM",
            help="voxel size of files without geometry (.npy, images): one or one per axis",
        )
        p.add_argument(
            "--tile-size", type=int, nargs="+", default=None, help="compute maps tile by tile"
        )
        p.add_argument("--overlay", action="store_true", help="also write an overlay PNG")
        if name == "detect":
            _add_detect_args(p)
        else:
            p.add_argument(
                "--format",
                choices=("auto", "nii.gz", "npz", "npy"),
                default="auto",
                help="map file type (auto: NIfTI for NIfTI inputs, else .npz)",
            )
        add_runtime_args(p)
        p.set_defaults(func=run_attention if name == "attention" else run_detect)


def _add_detect_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detection")
    win = g.add_mutually_exclusive_group()
    win.add_argument("--size", type=int, default=None, help="NMS window in voxels (default 6)")
    win.add_argument("--size-mm", type=float, default=None, help="NMS window in millimetres")
    g.add_argument(
        "--n",
        default="all",
        help="detections per volume in the CSV: all (default; for FROC), "
        "count (the rounded predicted count) or a number",
    )
    g.add_argument(
        "--markups-n",
        default="count",
        help="points in the .mrk.json: count (default), all or a number",
    )
    g.add_argument("--negatives", choices=("clip", "abs", "keep"), default="clip")
    g.add_argument(
        "--coordinate-system", choices=("RAS", "LPS"), default="RAS", help="of the markups"
    )
    g.add_argument("--save-maps", action="store_true", help="also write the attention maps")
    g.add_argument(
        "--save-mask", action="store_true", help="also write a label volume of the detections"
    )


def _keep(spec: str, count: float, total: int, option: str) -> int:
    from wsdet.metrics import round_half_up

    if spec == "all":
        return total
    if spec == "count":
        return min(total, round_half_up(count)) if math.isfinite(count) else 0
    try:
        k = int(spec)
    except ValueError:
        raise UserError(f"{option} must be all, count or a number, got {spec!r}") from None
    if k < 0:
        raise UserError(f"{option} must be >= 0, got {k}")
    return min(total, k)


def _check_detect_args(args: argparse.Namespace) -> None:
    """The detection options checked before any model is built or volume read."""
    for spec, option in ((args.n, "--n"), (args.markups_n, "--markups-n")):
        _keep(spec, math.nan, 0, option)
    if args.size is not None and args.size < 1:
        raise UserError(f"--size must be >= 1 (voxels), got {args.size}")
    if args.size_mm is not None and not (math.isfinite(args.size_mm) and args.size_mm > 0):
        raise UserError(f"--size-mm must be a positive length in mm, got {args.size_mm}")


class _Session:
    """A model bound to a method, applied to one volume at a time."""

    def __init__(self, args: argparse.Namespace) -> None:
        import wsdet

        self.device = setup_runtime(args)
        self.spec = model_spec(args)
        model = build_model(args, self.spec).to(self.device).eval()
        method = args.method or self.spec.get("method")
        if method is None:
            arch = str(self.spec.get("arch", ""))
            method = DEFAULT_METHOD.get(arch, "gp_unet") if not args.torchscript else "grad"
        if method not in wsdet.available_methods():
            raise UserError(
                f"unknown --method {method!r}; choose from {', '.join(wsdet.available_methods())}"
            )
        self.method = method
        self.detector = wsdet.Detector(model, method=method)
        self.normalize = args.normalize or self.spec.get("normalize", "zscore")
        self.spacing = parse_spacing(args.spacing)
        self.tile_size = args.tile_size

    def tensor(self, vol: Any) -> Any:
        import torch

        from wsdet.io import normalize_intensity

        arr = normalize_intensity(vol.array, self.normalize)
        return torch.from_numpy(arr)[None, None].to(self.device)

    def maps(self, vol: Any) -> tuple[np.ndarray, float]:
        maps, counts = self.detector.attention_and_count(self.tensor(vol), tile_size=self.tile_size)
        return maps[0].detach().float().cpu().numpy(), float(counts[0])


def _map_path(out: Path, vol: Any, fmt: str) -> Path:
    if fmt == "auto":
        fmt = "nii.gz" if vol.path.name.lower().endswith((".nii", ".nii.gz")) else "npz"
    return out / f"{vol.id}_attention.{fmt}"


def _overlay(path: Path, vol: Any, amap: np.ndarray, dets: Any, title: str) -> None:
    from wsdet import viz

    img = vol.array.astype(np.float32)
    pts = None if dets is None else dets.points
    if vol.ndim == 3:
        fig = viz.orthogonal_slices(img, amap, points=pts, affine=vol.affine, title=title)
    else:
        fig = viz.overlay(img, amap, points=pts, title=title)
    viz.save_figure(fig, str(path), dpi=100)


def run_attention(args: argparse.Namespace) -> int:
    from wsdet.io import save_volume

    files = expand_inputs(args.inputs)
    session = _Session(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for _, f in progress(files, "attention", args.quiet):
        vol = load(f, session.spacing)
        amap, count = session.maps(vol)
        path = save_volume(_map_path(out, vol, args.format), amap, like=vol)
        if args.overlay:
            _overlay(out / f"{vol.id}_overlay.png", vol, amap, None, f"{vol.id}: {session.method}")
        if not args.quiet:
            print(f"{vol.id}: predicted count {count:.3f}, map {path}")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    from wsdet.detection import detect_maps
    from wsdet.export import save_point_volume, write_csv, write_detections_csv, write_markups
    from wsdet.io import save_volume, size_in_voxels

    files = expand_inputs(args.inputs)
    _check_detect_args(args)
    session = _Session(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for _, f in progress(files, "detect", args.quiet):
        vol = load(f, session.spacing)
        amap, count = session.maps(vol)
        size: Any = 6 if args.size is None else args.size
        if args.size_mm is not None:
            size = size_in_voxels(args.size_mm, vol.spacing)
        (found,) = detect_maps(
            amap[None], n="all", counts=[count], size=size, negatives=args.negatives
        )
        located = vol.locate(found)
        total = len(located)
        k_csv = _keep(args.n, count, total, "--n")
        k_mrk = _keep(args.markups_n, count, total, "--markups-n")
        write_detections_csv(out / f"{vol.id}.csv", _head(located, k_csv), image=vol.id)
        if vol.ndim == 3 or vol.path.name.lower().endswith((".nii", ".nii.gz")):
            write_markups(
                out / f"{vol.id}.mrk.json",
                _head(located, k_mrk),
                coordinate_system=args.coordinate_system,
                name=vol.id,
            )
        if args.save_maps:
            save_volume(_map_path(out, vol, "auto"), amap, like=vol)
        if args.save_mask:
            suffix = "nii.gz" if vol.path.name.lower().endswith((".nii", ".nii.gz")) else "npz"
            save_point_volume(out / f"{vol.id}_detections.{suffix}", _head(located, k_mrk), vol)
        if args.overlay:
            title = f"{vol.id}: {session.method}, count {count:.2f}"
            _overlay(out / f"{vol.id}_overlay.png", vol, amap, _head(located, k_mrk), title)
        summary.append(
            [
                vol.id,
                str(f),
                "x".join(str(s) for s in vol.shape),
                " ".join(f"{s:g}" for s in vol.spacing),
                count,
                total,
                k_csv,
                k_mrk,
            ]
        )
        if not args.quiet:
            print(f"{vol.id}: predicted count {count:.3f}, {k_mrk} marked, {total} candidates")
    header = ["image", "path", "shape", "spacing_mm", "count", "n_candidates", "n_csv", "n_markups"]
    path = write_csv(out / "summary.csv", header, summary)
    if not args.quiet:
        print(f"wrote {len(files)} volume(s) to {out} (summary: {path})")
    return 0


def _head(dets: Any, k: int) -> Any:
    import dataclasses

    return dataclasses.replace(
        dets, points=dets.points[:k], scores=dets.scores[:k], points_mm=dets.points_mm[:k]
    )
