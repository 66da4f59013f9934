"""What the ``wsdet`` subcommands share: inputs, models, devices, progress, errors."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger("wsdet.cli")
T = TypeVar("T")

#: Reference architectures by command-line name.
ARCHS = ("gpunet", "gpunet_no_residual", "gated_attention", "basecnn")
#: The attention method read by default from each architecture (the paper's pairing).
DEFAULT_METHOD = {
    "gpunet": "gp_unet",
    "gpunet_no_residual": "gp_unet_no_residual",
    "gated_attention": "gated_attention",
    "basecnn": "grad_cam",
}
MODEL_JSON = "model.json"
_MODEL_FORMAT = "wsdet.cli.model/1"
#: ``model.json``'s ``upsample`` entry for reference networks trained with aligned
#: upsampling (``UpsampleTo(factor=2)``); a description without it predates that.
UPSAMPLE = "aligned"


class UserError(Exception):
    """A mistake in the command line or its files: reported as one line, exit code 1."""


# ----------------------------------------------------------------------------- inputs
def expand_inputs(items: Sequence[str], what: str = "input") -> list[Path]:
    """Files from paths: a volume file, a folder (its volumes, sorted) or a ``.txt`` list
    (one path a line, relative to the list's folder; ``#`` comments)."""
    from wsdet.io import SUFFIXES, image_id

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(SUFFIXES)
            )
            if not found:
                raise UserError(f"{what} folder {p} holds no volumes ({', '.join(SUFFIXES)})")
            out += found
        elif p.suffix.lower() == ".txt" and p.is_file():
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            out += expand_inputs([str(p.parent / ln) for ln in lines if ln and ln[0] != "#"], what)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{what} not found: {p}")
    seen: dict[str, Path] = {}
    for f in out:
        key = image_id(f)
        if key in seen and seen[key].resolve() != f.resolve():
            raise UserError(f"two {what}s have the same image id {key!r}: {seen[key]} and {f}")
        seen[key] = f
    return list(dict.fromkeys(out))


def parse_spacing(values: Sequence[float] | None) -> float | tuple[float, ...] | None:
    if values is None:
        return None
    return float(values[0]) if len(values) == 1 else tuple(float(v) for v in values)


def load(path: Path, spacing: Any = None) -> Any:
    """:func:`wsdet.io.load_volume`, with files of geometry ignoring ``--spacing``."""
    from wsdet.io import NIFTI_SUFFIXES, load_volume

    if spacing is not None and path.name.lower().endswith(NIFTI_SUFFIXES):
        spacing = None
    try:
        return load_volume(path, spacing=spacing)
    except ValueError as err:
        if "spacing must be" in str(err):
            raise UserError(f"{path}: --spacing {err}") from None
        raise


# ----------------------------------------------------------------------------- models
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of: --arch, --model, --torchscript)")
    g.add_argument("--arch", choices=ARCHS, help="a reference architecture (with --dim)")
    g.add_argument("--dim", type=int, choices=(2, 3), help="2D or 3D architecture")
    g.add_argument("--width", type=int, help="first-layer filters (default: the arch's)")
    g.add_argument("--in-channels", type=int, default=None, help="input channels (default 1)")
    g.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="your network: FACTORY(**--model-kwargs) from an importable module",
    )
    g.add_argument("--model-kwargs", default=None, metavar="JSON", help="keyword arguments")
    g.add_argument("--torchscript", metavar="FILE", help="a TorchScript network file")
    g.add_argument(
        "--weights",
        metavar="FILE",
        help="best.pt / last.pt of the Trainer, or a state_dict (loaded with "
        "weights_only=True); a model.json beside it gives --arch/--dim when omitted",
    )


def model_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The model description: the command line, completed by ``model.json`` beside the
    weights (written by ``wsdet train``)."""
    spec: dict[str, Any] = {}
    if args.weights and not (args.model or args.torchscript):
        spec = read_model_json(Path(args.weights).parent)
    for key in ("arch", "dim", "width", "in_channels"):
        if getattr(args, key, None) is not None:
            spec[key] = getattr(args, key)
    return spec


def read_model_json(folder: Path) -> dict[str, Any]:
    """The model description ``folder/model.json`` ({} when there is none)."""
    side = folder / MODEL_JSON
    if not side.is_file():
        return {}
    try:
        spec = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{side} is not valid JSON: {err}") from None
    if not isinstance(spec, dict) or spec.get("format") != _MODEL_FORMAT:
        raise UserError(f"{side} is not a wsdet model description")
    return spec


def write_model_json(folder: Path, spec: dict[str, Any]) -> Path:
    from wsdet._io import atomic_write_text

    doc = {"format": _MODEL_FORMAT, **spec}
    return atomic_write_text(json.dumps(doc, indent=2) + "\n", folder / MODEL_JSON)


def build_model(args: argparse.Namespace, spec: dict[str, Any]) -> Any:
    """The network named on the command line, with its weights, on the CPU."""
    import torch

    chosen = [n for n in ("model", "torchscript") if getattr(args, n, None)]
    if (spec.get("arch") and chosen) or len(chosen) > 1:
        raise UserError("give one model: --arch, --model or --torchscript")
    if args.torchscript:
        if args.weights:
            raise UserError("a TorchScript file holds its weights: drop --weights")
        path = Path(args.torchscript)
        if not path.is_file():
            raise UserError(f"TorchScript file not found: {path}")
        try:
            return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as err:
            raise UserError(f"cannot load {path} as TorchScript: {_first_line(err)}") from None
    if args.model:
        model = _user_model(args.model, args.model_kwargs)
    elif spec.get("arch"):
        model = _reference_model(spec, stretch=predates_alignment(spec))
    else:
        raise UserError(
            "no model: give --arch NAME --dim D --weights FILE, --model MODULE:FACTORY "
            "--weights FILE, or --torchscript FILE"
        )
    if args.weights:
        _load_weights(model, Path(args.weights))
    return model


def arch_class(arch: str) -> Any:
    """The reference architecture class of a command-line name (one of :data:`ARCHS`)."""
    from wsdet import models

    classes = {
        "gpunet": models.GPUnet,
        "gpunet_no_residual": models.GPUnetNoResidual,
        "gated_attention": models.GatedAttentionNet,
        "basecnn": models.BaseCNN,
    }
    if arch not in classes:
        raise UserError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    return classes[arch]


def predates_alignment(spec: dict[str, Any]) -> bool:
    """Whether ``spec`` was read from a ``model.json`` written by wsdet 0.1.0, whose
    reference decoders stretched their upsampling (no ``"upsample": "aligned"`` entry)."""
    return spec.get("format") == _MODEL_FORMAT and spec.get("upsample") != UPSAMPLE


def _reference_model(spec: dict[str, Any], stretch: bool = False) -> Any:
    """The reference architecture ``spec`` names; ``stretch``: with the stretching
    upsampling of wsdet 0.1.0 (see :func:`predates_alignment`), and a warning."""
    arch = spec["arch"]
    cls = arch_class(arch)
    if spec.get("dim") not in (2, 3):
        raise UserError(f"--arch {arch} needs --dim 2 or --dim 3")
    model = cls(dim=spec["dim"], in_channels=spec.get("in_channels") or 1, width=spec.get("width"))
    if stretch:
        _as_trained_before_alignment(model, arch)
    return model


def _as_trained_before_alignment(model: Any, arch: str) -> None:
    """Give a network trained with wsdet 0.1.0 the stretching upsampling it was trained
    with (``UpsampleTo(factor=None)``)."""
    from wsdet.models import UpsampleTo

    ups = [m for m in model.modules() if isinstance(m, UpsampleTo)]
    for m in ups:
        m.factor = None
    if ups:
        logger.warning(
            '%s predates aligned decoder upsampling (wsdet 0.1.0, no "upsample" entry): '
            "%s is rebuilt with the stretching upsampling it was trained with, which shifts "
            "its maps by up to one coarse voxel at sizes that are not multiples of its "
            "pooling; train it again for aligned maps",
            MODEL_JSON,
            arch,
        )


def _user_model(target: str, kwargs_json: str | None) -> Any:
    from torch import nn

    if ":" not in target:
        raise UserError(f"--model must be MODULE:FACTORY (e.g. mypkg.nets:build), got {target!r}")
    mod_name, fn_name = target.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules beside the user
    try:
        module = importlib.import_module(mod_name)
    except ImportError as err:
        raise UserError(f"cannot import {mod_name!r} for --model: {err}") from None
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise UserError(f"{mod_name} has no callable {fn_name!r} for --model")
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--model-kwargs is not valid JSON: {err}") from None
    if not isinstance(kwargs, dict):
        raise UserError("--model-kwargs must be a JSON object, e.g. '{\"dim\": 3}'")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"{target} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_weights(model: Any, path: Path) -> None:
    from wsdet.train import Trainer

    if not path.is_file():
        raise UserError(f"weights not found: {path}")
    try:
        Trainer(model).finetune_from(path)  # weights_only=True; best.pt, last.pt, state_dict
    except RuntimeError as err:
        detail = " ".join(ln.strip() for ln in str(err).splitlines()[1:] if ln.strip())
        detail = detail or _first_line(err)
        if len(detail) > 160:
            detail = detail[:157] + "..."
        raise UserError(
            f"the weights in {path} do not fit the model ({detail}); check "
            "--arch, --dim, --width and --in-channels"
        ) from None


# ----------------------------------------------------------------------------- runtime
def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if any)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress, only results")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def setup_runtime(args: argparse.Namespace) -> Any:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r}: {_first_line(err)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def progress(items: Sequence[T], what: str, quiet: bool) -> Iterator[tuple[int, T]]:
    """Enumerate ``items`` with a tqdm bar on a terminal, else one log line per item."""
    bar: Any = None
    if not quiet and sys.stderr is not None and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=what, unit="file", dynamic_ncols=True)
        except ImportError:
            bar = None
    try:
        for n, item in enumerate(items):
            if bar is None:
                logger.info("%s [%d/%d] %s", what, n + 1, len(items), _label(item))
            yield n, item
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _label(item: Any) -> str:
    return Path(item).name if isinstance(item, (str, Path)) else str(item)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (its first line; the type when empty)."""
    if isinstance(err, KeyError):
        return f"missing key {err}"
    return _first_line(err)
