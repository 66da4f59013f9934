"""Exact tiled attention: tiled maps equal the untiled ones for every method and reference
architecture (2D and 3D, tiles that do not divide the volume), the probe measures the
receptive field, non-local models and bad arguments are refused, the model is restored.

The reference is the untiled map of the same method (itself tested against hand-computed
maps and Captum elsewhere). Volumes are small (24 x 28 x 20, width 4) so that every tile
has a clipped halo on some side and interior tiles exist.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsdet
from wsdet.attention._tiling_head import is_affine
from wsdet.attention._tiling_plan import make_plan
from wsdet.attention.tiling import TiledAttention, check_module, probe_geometry
from wsdet.models import BaseCNN, GatedAttentionNet, GPUnet, GPUnetNoResidual, UpsampleTo

METHODS = [
    "gp_unet",
    "gp_unet_no_residual",
    "gated_attention",
    "grad",
    "guided_backprop",
    "grad_cam",
    "intensity",
]
SIZE3 = (24, 28, 20)
TILE3 = (8, 12, 8)  # divides none of the axes: the last core is smaller on axes 0 and 2


def _model(cls: type[nn.Module], dim: int = 3, seed: int = 0, **kw: Any) -> nn.Module:
    torch.manual_seed(seed)
    m = cls(dim=dim, width=4, **kw)
    m.eval()
    return m


@functools.cache
def _shared(
    cls: type[nn.Module], dim: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """One model per configuration for the read-only exactness tests (probed once)."""
    return _model(cls, dim=dim, seed=seed).to(dtype)


def _x(shape: tuple[int, ...], seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)


def _assert_same(
    tiled: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor], rel: float
) -> None:
    (m, y), (mr, yr) = tiled, ref
    assert m.shape == mr.shape and m.dtype == mr.dtype and m.device == mr.device
    scale = float(mr.abs().max())
    assert scale > 0, "degenerate reference map"
    err = float((m - mr).abs().max())
    assert err <= rel * scale, f"map error {err:.3g} > {rel} x {scale:.3g}"
    assert y.shape == yr.shape
    yerr = float((y.double() - yr.double()).abs().max())
    assert yerr <= rel * max(1.0, float(yr.abs().max())), f"output error {yerr:.3g}"


def _compare(
    model: nn.Module,
    method: str,
    x: torch.Tensor,
    tile: tuple[int, ...],
    rel: float,
    **options: Any,
) -> TiledAttention:
    det = wsdet.Detector(model, method=method, **options)
    ref = det.attention_and_count(x)
    tiled = TiledAttention(det.method, tile_size=tile)
    with det._mode():
        got = tiled(x)
    _assert_same(got, ref, rel)
    # the Detector's own entry point gives the same
    _assert_same(det.attention_and_count(x, tile_size=tile), ref, rel)
    return tiled


# ------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cls", [GPUnet, BaseCNN, GatedAttentionNet])
def test_tiled_equals_untiled_3d(cls: type[nn.Module], method: str) -> None:
    tiled = _compare(_shared(cls), method, _x((2, 1, *SIZE3)), TILE3, rel=1e-5)
    assert tiled.plan is not None and tiled.plan.grid == (3, 3, 3)
    assert tiled.factor == (2, 2, 2)


@pytest.mark.parametrize("method", METHODS)
def test_tiled_equals_untiled_2d(method: str) -> None:
    _compare(_shared(GPUnet, dim=2), method, _x((2, 1, 40, 36)), (16, 12), rel=1e-5)


@pytest.mark.parametrize("method", ["gp_unet_no_residual", "grad", "guided_backprop", "grad_cam"])
def test_downsampling_by_four_aligns_tiles_to_four(method: str) -> None:
    """GPUnetNoResidual pools twice: its pooled features are at full resolution, but it is
    shift-equivariant only by multiples of 4, which the probe finds from the encoder maps."""
    model = _shared(GPUnetNoResidual, seed=3)
    tiled = _compare(model, method, _x((1, 1, 24, 28, 20)), (8, 12, 8), rel=1e-5)
    assert tiled.factor == (4, 4, 4)
    assert all(h % 4 == 0 for h in tiled.halo or ())


@pytest.mark.parametrize("method", ["gp_unet", "grad", "guided_backprop", "grad_cam", "intensity"])
def test_float64_is_exact_to_rounding(method: str) -> None:
    model = _shared(GPUnet, dtype=torch.float64)
    _compare(model, method, _x((1, 1, *SIZE3), dtype=torch.float64), TILE3, rel=1e-10)


def test_fuse_intensity_after_assembly() -> None:
    _compare(
        _model(GPUnetNoResidual, seed=3),
        "gp_unet_no_residual",
        _x((2, 1, *SIZE3)),
        TILE3,
        rel=1e-5,
        fuse_intensity=True,
    )


def test_fuse_channel_out_of_range_is_a_clear_error() -> None:
    method = wsdet.attention.get_method("gp_unet_no_residual")(
        _model(GPUnetNoResidual, seed=3), fuse_intensity=True, fuse_channel=1
    )
    tiled = TiledAttention(method, tile_size=TILE3)
    with pytest.raises(ValueError, match=r"fuse_channel=1 is out of range .* 1 channel"):
        tiled(_x((1, 1, *SIZE3)))


@pytest.mark.parametrize("layer", ["conv2", "cat2"])
def test_grad_cam_on_layers_that_are_not_only_pooled(layer: str) -> None:
    """``conv2`` is upstream of the pooled features; GatedAttentionNet's ``cat2`` is pooled
    *and* feeds the gate: both need the per-tile gradient at the layer (two sweeps)."""
    cls = GPUnet if layer == "conv2" else GatedAttentionNet
    _compare(_model(cls), "grad_cam", _x((2, 1, *SIZE3)), TILE3, rel=1e-5, layer=layer)


def test_odd_sizes_with_floor_pooling_are_exact() -> None:
    """BaseCNN on odd sizes: the last voxel is dropped by max pooling, cores ending at the
    border keep every feature position."""
    model = _model(BaseCNN)
    for method in ["gp_unet", "grad", "guided_backprop", "grad_cam"]:
        _compare(model, method, _x((1, 1, 25, 27, 21)), TILE3, rel=1e-5)


# -------------------------------------------------------------- heads and targets


class Three(nn.Module):
    """Three 3x3(x3) convolutions (receptive-field radius 3), a global pooling, a head."""

    def __init__(
        self,
        head: str = "linear",
        pool: str = "mean",
        outputs: int = 1,
        kernel: tuple[int, int, int] = (3, 3, 3),
        norm: nn.Module | None = None,
        mid_mean: bool = False,
    ) -> None:
        super().__init__()
        pad = tuple(k // 2 for k in kernel)
        self.c1 = nn.Conv3d(1, 4, kernel, padding=pad)
        self.norm = norm if norm is not None else nn.Identity()
        self.c2 = nn.Conv3d(4, 4, kernel, padding=pad)
        self.c3 = nn.Conv3d(4, 4, kernel, padding=pad)
        self.pool = pool
        self.mid_mean = mid_mean
        self.head: nn.Module = (
            nn.Linear(4, outputs)
            if head == "linear"
            else nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, outputs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.relu(self.c1(x)))
        if self.mid_mean:  # a functional squeeze-excitation: a global mean mid-network
            h = h * torch.sigmoid(h.mean((2, 3, 4), keepdim=True))
        h = F.relu(self.c3(F.relu(self.c2(h))))
        p = h.mean((2, 3, 4)) if self.pool == "mean" else h.sum((2, 3, 4))
        out: torch.Tensor = self.head(p)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _three(**kw: Any) -> nn.Module:
    torch.manual_seed(0)
    return Three(**kw).eval()


@pytest.mark.parametrize("method", ["grad", "guided_backprop", "grad_cam", "intensity"])
def test_nonlinear_head(method: str) -> None:
    """An MLP on the pooled vector: ∂y/∂pooled depends on the exact pooled vector, found by a
    pooling sweep before the gradient sweep."""
    _compare(_three(head="mlp"), method, _x((2, 1, 20, 18, 22)), (8, 8, 8), rel=1e-5)


@pytest.mark.parametrize("method", ["gp_unet", "grad", "grad_cam", "intensity"])
def test_sum_pooling(method: str) -> None:
    _compare(_three(pool="sum"), method, _x((2, 1, 20, 18, 22)), (8, 8, 8), rel=1e-5)


@pytest.mark.parametrize("method", ["gp_unet", "grad", "grad_cam"])
def test_int_target_of_a_two_output_head(method: str) -> None:
    _compare(_three(outputs=2), method, _x((2, 1, 20, 18, 22)), (8, 8, 8), rel=1e-5, target=1)


def test_affine_head_recognised_from_the_graph() -> None:
    w = torch.randn(3, 2)
    p = torch.randn(2, 3, requires_grad=True)
    assert is_affine((p @ w * 2.0 + 1.0).sum(1).grad_fn)
    assert not is_affine((torch.relu(p @ w)).sum(1).grad_fn)
    assert not is_affine((p * p).sum(1).grad_fn)


# ----------------------------------------------------------------------- the halo


def test_probe_finds_the_receptive_field_of_three_convolutions() -> None:
    geo = probe_geometry(_three(), _x((1, 1, 8, 8, 8)))
    assert geo.radius == (3, 3, 3) and geo.factor == (1, 1, 1)
    aniso = probe_geometry(_three(kernel=(3, 5, 1)), _x((1, 1, 8, 8, 8)))
    assert aniso.radius == (3, 6, 0)


@pytest.mark.parametrize(
    ("cls", "radius"),
    # GPUnet: conv1+conv2 (2) -> max pool -> conv3+conv4 at half resolution (2 cells = 4
    # voxels, plus the 2x2 cell) -> nearest upsampling -> conv5 (1): 8 voxels beyond the
    # cell. BaseCNN stops at the half-resolution cat2: 6. GatedAttentionNet: the gate's
    # linear upsampling of alpha reaches one more half-resolution cell: 8.
    [(GPUnet, 8), (BaseCNN, 6), (GatedAttentionNet, 8)],
)
def test_probe_radius_of_the_reference_models(cls: type[nn.Module], radius: int) -> None:
    geo = probe_geometry(_model(cls), _x((1, 1, 8, 8, 8)))
    assert geo.radius == (radius,) * 3
    assert geo.factor == (2, 2, 2)


def test_guided_backprop_needs_twice_the_radius() -> None:
    """With halo R the guided gradient near core borders is wrong (its ReLU rule clamps the
    total upstream gradient, which a tile only sees within R); the default 2R is exact."""
    model = _model(GPUnet)
    det = wsdet.Detector(model, method="guided_backprop")
    x = _x((1, 1, *SIZE3))
    ref = det.attention(x)
    default = TiledAttention(det.method, tile_size=TILE3)
    err = float((default(x)[0] - ref).abs().max()) / float(ref.abs().max())
    assert default.radius == (8, 8, 8) and default.halo == (16, 16, 16)
    assert err <= 1e-5
    with pytest.warns(UserWarning, match="guided backprop needs"):
        short = TiledAttention(det.method, tile_size=TILE3, halo=8)(x)[0]
    assert float((short - ref).abs().max()) / float(ref.abs().max()) > 1e-3


def test_grad_is_exact_with_halo_r() -> None:
    model = _model(GPUnet)
    det = wsdet.Detector(model, method="grad")
    tiled = TiledAttention(det.method, tile_size=TILE3)
    x = _x((1, 1, *SIZE3))
    _assert_same(tiled(x), det.attention_and_count(x), 1e-5)
    assert tiled.halo == tiled.radius == (8, 8, 8)


def test_tiles_larger_than_the_volume_run_untiled() -> None:
    model = _model(GPUnet)
    x = _x((2, 1, *SIZE3))
    for method in ["gp_unet", "grad"]:
        det = wsdet.Detector(model, method=method)
        tiled = TiledAttention(det.method, tile_size=(64, 64, 64))
        maps, y = tiled(x)
        ref, yr = det.attention_and_count(x)
        assert torch.equal(maps, ref) and torch.equal(y, yr)
        assert tiled.plan is not None and tiled.plan.grid == (1, 1, 1)


def test_odd_size_with_resize_to_reference_is_refused_or_left_unsplit() -> None:
    """A decoder that stretches to the skip connection's size (``UpsampleTo(factor=None)``):
    for an odd size the nearest upsampling scale is not 1/2, positions shift, and no tiling
    along that axis is exact. Along an axis that is not split the tiles see the whole
    axis: exact. GPUnet's own aligned upsampling tiles exactly at the same odd size."""
    x = _x((1, 1, 25, 28, 20))
    model = _model(GPUnet)
    det = wsdet.Detector(model, method="gp_unet")
    _assert_same(det.attention_and_count(x, tile_size=TILE3), det.attention_and_count(x), 1e-5)
    stretched = _model(GPUnet)
    stretched.up = UpsampleTo("nearest", factor=None)
    det = wsdet.Detector(stretched, method="gp_unet")
    with pytest.raises(ValueError, match=r"not a multiple of the network's downsampling factor"):
        det.attention(x, tile_size=TILE3)
    _assert_same(
        det.attention_and_count(x, tile_size=(32, 12, 8)), det.attention_and_count(x), 1e-5
    )


def test_attributes_report_the_measurements() -> None:
    det = wsdet.Detector(_model(BaseCNN), method="grad")
    tiled = TiledAttention(det.method, tile_size=TILE3)
    x = _x((1, 1, *SIZE3))
    geo = tiled.probe(x)
    assert tiled.radius == geo.radius == (6, 6, 6) and tiled.factor == (2, 2, 2)
    assert [p.kind for p in geo.pools] == ["mean"]
    tiled(x)
    assert tiled.halo == (6, 6, 6)
    assert tiled.plan is not None and tiled.plan.tiles[0].grid == (2, 2, 2)  # far corner first
    assert "TiledAttention" in repr(tiled)


def test_plan_cores_partition_the_volume() -> None:
    plan = make_plan((25, 12), (8, 12), (4, 0))
    covered = torch.zeros(25, 12, dtype=torch.int64)
    for t in plan.tiles:
        covered[t.core] += 1
        assert all(s % 2 == 0 for s in t.start if s < 25)
    assert bool((covered == 1).all())
    assert plan.grid == (4, 1) and plan.overhead > 1


# ----------------------------------------------------------------- refused models


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Conv3d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(self.pool(x)))


@pytest.mark.parametrize(
    ("norm", "match"),
    [
        (nn.InstanceNorm3d(4), r"'norm' \(InstanceNorm3d\) is not local"),
        (nn.GroupNorm(2, 4), r"'norm' \(GroupNorm\) is not local"),
        # found by structure, whatever the weights: a pooled vector feeds spatial maps
        (SqueezeExcite(4), r"not local: a global pooling in the middle of the network"),
        (None, r"not local: a global pooling in the middle"),  # a functional mean mid-network
    ],
)
def test_non_local_layers_are_refused(norm: nn.Module | None, match: str) -> None:
    model = _three(norm=norm, mid_mean=norm is None)
    det = wsdet.Detector(model, method="grad")
    with pytest.raises(ValueError, match=match):
        det.attention(_x((1, 1, 20, 18, 22)), tile_size=(8, 8, 8))


def test_batchnorm_with_batch_statistics_is_refused_and_untouched() -> None:
    model = _three(norm=nn.BatchNorm3d(4))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    det = wsdet.Detector(model, method="grad", eval_mode=False)
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=r"'norm' \(BatchNorm3d\).*training mode"),
    ):
        det.attention(_x((2, 1, 20, 18, 22)), tile_size=(8, 8, 8))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics not updated by the probe
    # in eval mode BatchNorm is a per-channel affine map: local, exact
    _compare(model, "grad", _x((2, 1, 20, 18, 22)), (8, 8, 8), rel=1e-5)


def test_check_module_reasons() -> None:
    assert check_module(nn.BatchNorm2d(3).eval()) is None
    assert "training mode" in (check_module(nn.BatchNorm2d(3)) or "")
    assert "random" in (check_module(nn.Dropout3d()) or "")
    assert check_module(nn.AdaptiveAvgPool3d(1)) is None
    assert "whole input" in (check_module(nn.AdaptiveAvgPool2d(4)) or "")
    assert check_module(nn.InstanceNorm2d(3, track_running_stats=True).eval()) is None


class MaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(1, 3, 3, padding=1)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.c(x)).amax((2, 3, 4))).squeeze(-1)


class FlatHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(1, 3, 3, padding=1)
        self.head = nn.LazyLinear(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.c(x)).flatten(1)).squeeze(-1)


class FlatSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.c(x)).flatten(1).sum(1)  # a sum, but not over (B, C, *S)


@pytest.mark.parametrize(
    ("cls", "match"),
    [(MaxHead, "global max"), (FlatHead, "inputs of any size"), (FlatSum, "no global average")],
)
def test_heads_that_cannot_be_assembled_are_refused(cls: type[nn.Module], match: str) -> None:
    torch.manual_seed(0)
    model = cls()
    x = _x((1, 1, 16, 16, 16))
    model(x)  # materialise the lazy layer for this size
    with pytest.raises(ValueError, match=match):
        wsdet.Detector(model, method="grad").attention(x, tile_size=(8, 8, 8))


# -------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_size": (8, 8)}, "tile_size has 2 values but x has 3 spatial dims"),
        ({"tile_size": (8, 0, 8)}, "tile_size must be a sequence of positive ints"),
        ({"tile_size": (8, -4, 8)}, "tile_size must be a sequence of positive ints"),
        ({"tile_size": (8.0, 8, 8)}, "tile_size must be a sequence of positive ints"),
        ({"tile_size": (True, 8, 8)}, "tile_size must be a sequence of positive ints"),
        ({"tile_size": "888"}, "tile_size must be a sequence of positive ints"),
        ({"tile_size": 8}, "tile_size must be a sequence of positive ints"),
        ({"tile_size": (8, 12, 7)}, r"tile_size must be a multiple of .*\[2, 2, 2\].*axes \[2\]"),
        (
            {"tile_size": TILE3, "tile_halo": -2},
            "halo must be an int or a sequence of non-negative",
        ),
        ({"tile_size": TILE3, "tile_halo": (8, 8)}, "halo must be an int or 3 ints"),
        ({"tile_size": TILE3, "tile_halo": 9}, r"halo must be a multiple of .*\[2, 2, 2\]"),
        ({"tile_size": TILE3, "tile_halo": 6}, r"halo=\[6, 6, 6\] is smaller than the receptive"),
        ({"tile_halo": 8}, "tile_halo is only used with tile_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    det = wsdet.Detector(_model(GPUnet), method="grad")
    with pytest.raises(ValueError, match=match):
        det.attention(_x((1, 1, *SIZE3)), **kwargs)


def test_unsupported_method_is_refused() -> None:
    from wsdet.attention.base import AttentionMethod

    class Mine(AttentionMethod):
        pass

    with pytest.raises(ValueError, match="method: tiled attention supports"):
        TiledAttention(Mine(_model(GPUnet)), tile_size=TILE3)


# ------------------------------------------------------------ model state, batches


def _snapshot(model: nn.Module) -> dict[str, Any]:
    hooks = sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )
    return {
        "hooks": hooks,
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad_mode": torch.is_grad_enabled(),
    }


def _assert_restored(before: dict[str, Any], model: nn.Module) -> None:
    after = _snapshot(model)
    for key in ("hooks", "training", "requires_grad", "grad_mode"):
        assert after[key] == before[key], key
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom inside the forward pass")
        return x


@pytest.mark.parametrize("method", METHODS)
def test_model_restored_after_success_and_error(method: str) -> None:
    model = _model(GatedAttentionNet)
    model.conv3.requires_grad_(False)
    model.head.weight.grad = torch.full_like(model.head.weight, 3.0)
    model.conv1.train()  # a mixed flag, put back after the Detector's eval()
    model.boom = Boom()  # type: ignore[assignment]
    model.conv2.register_forward_hook(lambda m, i, o: model.boom(o))
    before = _snapshot(model)
    det = wsdet.Detector(model, method=method)
    x = _x((1, 1, *SIZE3))
    det.attention(x, tile_size=TILE3)
    _assert_restored(before, model)
    model.boom.armed = True  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="boom"):
        det.attention(x, tile_size=TILE3)
    _assert_restored(before, model)
    model.boom.armed = False  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        det.attention(x, tile_size=TILE3, tile_halo=2)
    _assert_restored(before, model)


def test_batch_chunks_equal_the_whole_batch() -> None:
    det = wsdet.Detector(_model(GPUnet), method="guided_backprop")
    x = _x((3, 1, *SIZE3))
    whole = det.attention(x)
    torch.testing.assert_close(det.attention(x, batch_size=1), whole, rtol=0, atol=1e-6)
    tiled = det.attention(x, tile_size=TILE3, batch_size=2)
    assert float((tiled - whole).abs().max()) <= 1e-5 * float(whole.abs().max())


def test_detect_with_tiles_finds_the_same_points() -> None:
    det = wsdet.Detector(_model(GPUnet), method="gp_unet")
    x = _x((2, 1, *SIZE3))
    whole = det.detect(x, n=4)
    tiled = det.detect(x, n=4, tile_size=TILE3)
    for a, b in zip(whole, tiled, strict=True):
        assert (a.points == b.points).all()
        assert abs(a.count - b.count) <= 1e-5 * max(1.0, abs(a.count))


@pytest.mark.parametrize("method", ["gp_unet", "grad", "grad_cam"])
def test_works_under_inference_mode(method: str) -> None:
    det = wsdet.Detector(_model(BaseCNN), method=method)
    x = _x((1, 1, *SIZE3))
    ref = det.attention(x)
    with torch.inference_mode():
        got = det.attention(x.clone(), tile_size=TILE3)
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["gp_unet", "grad", "guided_backprop", "grad_cam"])
def test_cuda_tiled_equals_untiled(method: str) -> None:
    """On the GPU (cuDNN may pick different convolution algorithms per tile size)."""
    model = _model(GPUnet).cuda()
    x = _x((2, 1, 48, 40, 36)).cuda()
    det = wsdet.Detector(model, method=method)
    got = det.attention_and_count(x, tile_size=(16, 24, 16))
    _assert_same(got, det.attention_and_count(x), 1e-5)
    assert got[0].device == x.device
