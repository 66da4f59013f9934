"""Cost of every attention method, relative to the network and to the peer libraries.

For every registered built-in method, on BaseCNN and GPUnet (and GPUnetNoResidual /
GatedAttentionNet for the methods named after them), in 2D (batch 16 of 1×140×196, width
8) and 3D (1×1×64×64×64, width 32), the median wall time of ``Detector.attention_and_count``
is divided by

* the bare forward pass under ``torch.inference_mode`` (CAM family and ``intensity``;
  target ≤ 1.05), or the forward pass plus one input-gradient backward pass (gradient
  family: ``grad``, ``guided_backprop``, ``grad_cam``; target ≤ 1.05);
* the Captum call producing the same map (``Saliency(abs=False)``, ``GuidedBackprop``,
  ``LayerGradCam`` + ``LayerAttribution.interpolate``) or, for CAM, MONAI's
  ``visualize.CAM`` (one call per pooled scale for ``gated_attention``) with identity
  post-processing; target ≤ 1.0.

The timed calls are interleaved (ours, baseline, peer, rotating the order every round)
after a warm-up. Times are medians; a ratio is the median over rounds of the per-round
ratio (calls seconds apart, robust to a machine load that drifts). The last column is the
largest difference to the peer's map relative to the peer map's largest magnitude
(MONAI's CAM includes the head bias, which is subtracted first).

Run ``python benchmarks/bench_attention.py`` (``--quick`` for a smoke run on tiny inputs,
``--dims 2`` for 2D only, ``--threads 1`` on a machine shared with other jobs, where
multi-threaded small kernels pay for descheduled threads).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import wsdet
from wsdet.attention.base import get_method, model_layers
from wsdet.models import BaseCNN, GatedAttentionNet, GPUnet, GPUnetNoResidual

GRADIENT_FAMILY = ("grad", "guided_backprop", "grad_cam")
CAM_FAMILY = ("gp_unet", "gp_unet_no_residual", "gated_attention")
OWN_ARCH: dict[str, type[nn.Module]] = {
    "gp_unet_no_residual": GPUnetNoResidual,
    "gated_attention": GatedAttentionNet,
}
MODES = {2: "bilinear", 3: "trilinear"}


@dataclass
class Setting:
    dim: int
    batch: int
    size: tuple[int, ...]
    width: int | None


FULL = {2: Setting(2, 16, (140, 196), None), 3: Setting(3, 1, (64, 64, 64), None)}
QUICK = {2: Setting(2, 2, (16, 24), 4), 3: Setting(3, 1, (8, 8, 8), 4)}


class _Logits(nn.Module):
    """``(B,)`` -> ``(B, 1)`` for MONAI's CAM, which indexes the class dimension."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.m(x)
        return out.reshape(x.shape[0], 1)


def _time_rounds(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median time per call, and the median over rounds of ``t_ours / t_other``.

    The calls are interleaved (one call of each per round, the order rotating every
    round), so the per-round ratio compares calls made seconds apart: robust to a load
    that drifts during the run, which the ratio of two medians is not.
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {
        k: statistics.median(o / t for o, t in zip(times["ours"], v, strict=True))
        for k, v in times.items()
    }
    return med, ratio


def _ours(det: wsdet.Detector, x: torch.Tensor) -> Callable[[], Any]:
    return lambda: det.attention_and_count(x)


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run


def _forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        leaf = x.detach().requires_grad_()
        y = model(leaf)
        return torch.autograd.grad(y.sum(), leaf)[0]

    return run


def _peer(method: str, model: nn.Module, x: torch.Tensor) -> tuple[str, Callable[[], Any]] | None:
    """The peer call producing the same map as ``method`` (``None``: no peer)."""
    import captum.attr as ca

    b, dim = x.shape[0], x.ndim - 2
    declared = model_layers(model)
    modules = dict(model.named_modules())
    if method == "grad":
        sal = ca.Saliency(model)
        return "Captum Saliency", lambda: sal.attribute(x.clone(), abs=False)[:, 0]
    if method == "guided_backprop":
        gb = ca.GuidedBackprop(model)
        return "Captum GuidedBackprop", lambda: gb.attribute(x.clone())[:, 0]
    if method == "grad_cam":
        layer = modules[declared["gradcam"]]
        lgc = ca.LayerGradCam(model, layer)

        def gradcam() -> torch.Tensor:
            a = lgc.attribute(x)
            up: torch.Tensor = ca.LayerAttribution.interpolate(a, tuple(x.shape[2:]), MODES[dim])
            return up[:, 0]

        return "Captum LayerGradCam", gradcam
    if method in CAM_FAMILY:
        from monai.visualize.class_activation_maps import CAM as MonaiCAM

        wrapped = _Logits(copy.deepcopy(model))  # MONAI leaves its hooks registered
        feats = declared["features"]
        feats = [feats] if isinstance(feats, str) else list(feats)
        head = modules[declared["head"]]
        assert isinstance(head, nn.Linear) and head.bias is not None
        weight = head.weight.detach()[0]
        bias = float(head.bias.detach())
        if len(feats) == 1:
            cam = MonaiCAM(wrapped, f"m.{feats[0]}", "m.head", postprocessing=lambda t: t)
            return "MONAI CAM", lambda: cam(x, class_idx=[0] * b)[:, 0] - bias
        # gated_attention: one MONAI CAM per pooled scale, with the head's weight slice.
        cams, j = [], 0
        for f in feats:
            with torch.inference_mode():
                n = _channels(model, modules[f], x)
            part = nn.Linear(n, 1)
            with torch.no_grad():
                part.weight.copy_(weight[j : j + n][None])
                part.bias.zero_()
            j += n
            cams.append(
                MonaiCAM(wrapped, f"m.{f}", lambda m, p=part: p, postprocessing=lambda t: t)
            )

        def multi() -> torch.Tensor:
            total = torch.zeros(b, *x.shape[2:])
            for cam in cams:
                total += cam(x, class_idx=[0] * b)[:, 0]
            return total

        return f"MONAI CAM ×{len(cams)}", multi
    return None


def _channels(model: nn.Module, module: nn.Module, x: torch.Tensor) -> int:
    got: list[int] = []
    h = module.register_forward_hook(lambda m, i, o: got.append(o.shape[1]))
    try:
        model(x)
    finally:
        h.remove()
    return got[-1]


def _methods() -> list[str]:
    return [n for n in wsdet.available_methods() if get_method(n).__module__.startswith("wsdet.")]


def run(dims: list[int], quick: bool, repeats: int, warmup: int, methods: list[str]) -> list[str]:
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    settings = QUICK if quick else FULL
    for dim in dims:
        s = settings[dim]
        torch.manual_seed(0)
        x = torch.rand(s.batch, 1, *s.size)
        header = [
            "",
            f"### {dim}D: input {s.batch}×1×{'×'.join(map(str, s.size))}, "
            f"width {s.width or ('8' if dim == 2 else '32')}, "
            f"{repeats} interleaved rounds; times are medians, ratios medians of per-round ratios",
            "",
            "| method | model | ours (ms) | baseline (ms) | ours ÷ baseline | peer | "
            "peer (ms) | ours ÷ peer | max Δ / max |peer| |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for line in header:
            emit(line)
        for method in methods:
            archs: list[type[nn.Module]] = [BaseCNN, GPUnet]
            if method in OWN_ARCH:
                archs.append(OWN_ARCH[method])
            for arch in archs:
                model = arch(dim, width=s.width).eval()  # type: ignore[call-arg]
                det = wsdet.Detector(model, method=method)
                base_name = "fwd+bwd" if method in GRADIENT_FAMILY else "fwd"
                fns: dict[str, Callable[[], Any]] = {
                    "ours": _ours(det, x),
                    "base": (_forward_backward if method in GRADIENT_FAMILY else _forward)(
                        model, x
                    ),
                }
                peer = _peer(method, model, x)
                if peer is not None:
                    fns["peer"] = peer[1]
                t, ratio = _time_rounds(fns, repeats, warmup)
                target = "≤ 1.05"
                row = (
                    f"| {method} | {arch.__name__} | {t['ours'] * 1e3:.1f} | "
                    f"{t['base'] * 1e3:.1f} ({base_name}) | "
                    f"{ratio['base']:.3f} (target {target}) | "
                )
                if peer is not None:
                    ours_map = det.attention(x)
                    ref = peer[1]().detach()
                    delta = float((ours_map - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                    row += (
                        f"{peer[0]} | {t['peer'] * 1e3:.1f} | "
                        f"{ratio['peer']:.3f} (target ≤ 1.0) | {delta:.1e} |"
                    )
                else:
                    row += "— | — | — | — |"
                emit(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs, few repeats")
    parser.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=[2, 3])
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 11)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 2)")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of method names")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the CPU cores)"
    )
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or cores or 1)
    repeats = args.repeats or (2 if args.quick else 11)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 2)
    methods = args.methods or _methods()
    unknown = sorted(set(methods) - set(_methods()))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {_methods()}")
    print(
        f"## wsdet attention benchmark\n\ntorch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"python {sys.version.split()[0]}{' (quick)' if args.quick else ''}",
        flush=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum/MONAI notices about hooks and input flags
        run(args.dims, args.quick, repeats, warmup, methods)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
