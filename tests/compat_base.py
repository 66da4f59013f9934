"""Shared pieces of the compatibility matrix: the table's columns and the outcome
constants, :class:`Case` (one row), :class:`CamRef` (a hand CAM decomposition) and the
helpers that the model zoos (``compat_zoo_external``, ``compat_zoo_user``) share.

Not collected by pytest (no ``test_`` prefix); ``tests/compat_models.py`` builds the
matrix from these pieces and re-exports them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CAM_METHODS",
    "METHODS",
    "OK",
    "REASONS",
    "CamFn",
    "CamRef",
    "Case",
    "Target",
    "_head_ref",
    "randomize_norms",
]

#: The built-in methods, in the order of the table's columns.
METHODS: tuple[str, ...] = (
    "gp_unet",
    "gp_unet_no_residual",
    "gated_attention",
    "grad_cam",
    "grad",
    "guided_backprop",
    "intensity",
)
#: The CAM family: defined only on global average/sum pooling + one Linear head.
CAM_METHODS: tuple[str, ...] = ("gp_unet", "gp_unet_no_residual", "gated_attention")
#: A cell that works (and equals its independent reference).
OK = "ok"
#: The ``AttentionUndefinedError.reason`` values a cell may expect.
REASONS: tuple[str, ...] = ("no_pooling", "mlp_head", "no_linear_head", "one_voxel")


# ------------------------------------------------------------------------------ cases


@dataclass
class CamRef:
    """A hand CAM decomposition: ``output = Σ_s scale_s · mean(Σ_k w^s_k f^s_k) + bias``.

    ``features[s]`` is ``(B, C_s, *s_s)``, ``weights[s]`` the matching ``(C_s,)`` slice of
    the head's weight row, ``scales[s]`` 1 for mean pooling and the number of positions
    for sum pooling.
    """

    features: list[Tensor]
    weights: list[Tensor]
    bias: Tensor
    scales: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.scales:
            self.scales = [1.0] * len(self.features)


CamFn = Callable[[nn.Module, Tensor], CamRef]
Target = None | int | Callable[[Any], Tensor]


@dataclass
class Case:
    """One row of the matrix: a user's model, its input and the expected outcomes."""

    name: str  # pytest id
    label: str  # row label on the docs page
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]  # input shape (B, C, *S)
    cam: CamFn | None = None  # hand CAM; None where CAM is undefined
    cam_reason: str = OK  # OK, or the reason CAM is undefined
    grad_cam_reason: str = OK
    target: Target = None
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    #: forward uses F.relu / torch.relu (Captum's GuidedBackprop guides nn.ReLU modules only)
    functional_relu: bool = False
    #: the model is left in training mode (BatchNorm/Dropout); the Detector must use eval
    train_mode: bool = False
    slow: bool = False
    #: the smallest input side that gives the pooled features >= 2 voxels (one_voxel cases)
    min_side: int | None = None
    seed: int = 0

    @property
    def dim(self) -> int:
        return len(self.shape) - 2

    @property
    def expected(self) -> dict[str, str]:
        """``{method: OK or reason}`` for every column of the matrix."""
        out = {m: self.cam_reason for m in CAM_METHODS}
        out["grad_cam"] = self.grad_cam_reason
        out.update(grad=OK, guided_backprop=OK, intensity=OK)
        return {m: out[m] for m in METHODS}

    def make_model(self) -> nn.Module:
        """A fresh model (seeded, without touching the global RNG stream)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + zlib.crc32(self.name.encode()))
            return self.build()

    def make_input(self) -> Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(self.name.encode()))
        x = torch.randn(*self.shape, generator=g, dtype=torch.float64).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def explain(self, output: Any) -> Tensor:
        """The explained scalar per sample, ``(B,)``, selected as ``target`` says."""
        t = self.target
        if callable(t):
            return t(output)
        if t is None:
            return output.reshape(output.shape[0])
        return output.reshape(output.shape[0], -1)[:, t]


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running stats and affine parameters, and every
    Linear a non-zero bias, so that eval-mode statistics and the bias matter in the maps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.out_features, generator=g) * 0.5 + 0.3)
    return model


def _head_ref(features: Tensor, head: nn.Linear, row: int = 0, scale: float = 1.0) -> CamRef:
    return CamRef([features], [head.weight[row]], head.bias[row], [scale])


def aligned_up(t: Tensor, ref: Tensor, mode: str = "nearest") -> Tensor:
    """Upsampling by 2 as the reference networks do it, written independently: each coarse
    voxel repeated over the two it pooled (linear: half-pixel interpolation to twice the
    size), then the voxel floor pooling dropped filled by replicating the edge."""
    nd = t.ndim - 2
    if mode == "nearest":
        out = t
        for d in range(2, t.ndim):
            out = out.repeat_interleave(2, d)
    else:
        lin = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]
        out = F.interpolate(t, size=[2 * s for s in t.shape[2:]], mode=lin, align_corners=False)
    extra = [r - o for r, o in zip(ref.shape[2:], out.shape[2:], strict=True)]
    assert all(0 <= e < 2 for e in extra), (t.shape, ref.shape)
    pad = [p for e in reversed(extra) for p in (0, e)]
    return F.pad(out, pad, mode="replicate") if any(extra) else out
