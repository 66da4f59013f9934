"""The ``wsdet`` command: ``attention``, ``detect``, ``evaluate`` and ``train`` on your files.

Run ``wsdet --help`` (or ``python -m wsdet --help``) and ``wsdet COMMAND --help``. Inputs are
files, folders or ``.txt`` lists of NIfTI (``.nii``, ``.nii.gz``; the ``nifti`` extra),
NumPy (``.npy``, ``.npz``) or 2D image (PNG, TIFF) volumes. Every user error (a missing
file, a wrong shape, an unknown architecture, a corrupt NIfTI) ends with one line on
stderr and exit code 1; ``--debug`` shows the traceback instead. See ``docs/nifti.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from wsdet.cli._common import UserError, one_line

__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``wsdet`` command."""
    from wsdet import __version__
    from wsdet.cli import _detect, _evaluate, _train

    p = argparse.ArgumentParser(
        prog="wsdet",
        description="Weakly supervised object detection from counting networks: attention "
        "maps, point detections in voxels and millimetres, 3D Slicer markups, FROC.",
        epilog="Run 'wsdet COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"wsdet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _detect.add_parsers(sub)
    _evaluate.add_parser(sub)
    _train.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsdet`` command line; returns the exit code.

    Examples
    --------
    >>> main(["evaluate", "missing.csv", "--targets", "t.csv"])
    1
    """
    args = build_parser().parse_args(argv)
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("wsdet")
    old = (root.level, root.handlers[:], root.propagate)
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("wsdet: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        hint = (
            ""
            if isinstance(err, (UserError, FileNotFoundError, ImportError))
            else (" (run with --debug for the traceback)")
        )
        print(f"wsdet: error: {one_line(err)}{hint}", file=sys.stderr)
        return 1
    finally:
        root.setLevel(old[0])
        root.handlers = old[1]
        root.propagate = old[2]
