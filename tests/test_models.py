"""Tests for the reference architectures in wsdet.models."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compat_base import aligned_up
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from wsdet._modules import WsdetLayers, declared_layers
from wsdet.models import (
    AttentionGate,
    BaseCNN,
    Concat,
    ConvReLU,
    GatedAttentionNet,
    GlobalAvgPool,
    GPUnet,
    GPUnetNoResidual,
    UpsampleTo,
    init_weights,
)
from wsdet.models import _blocks as blocks_module
from wsdet.models import base as base_module
from wsdet.models import basecnn as basecnn_module
from wsdet.models import gated_attention as gated_module
from wsdet.models import gpunet as gpunet_module
from wsdet.models import gpunet_no_residual as nores_module
from wsdet.models import init as init_module

ALL_MODELS = [GPUnet, BaseCNN, GPUnetNoResidual, GatedAttentionNet]
ModelCls = type[GPUnet] | type[BaseCNN] | type[GPUnetNoResidual] | type[GatedAttentionNet]


def n_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def conv(dim: int, cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    """Parameters of a dense convolution with a cubic kernel of size k."""
    return int(k**dim) * cin * cout + (cout if bias else 0)


def expected_params(name: str, dim: int, w: int, c: int = 1) -> int:
    """Parameter counts written out layer by layer from the paper's description (§2.2)."""
    encoder = conv(dim, c, w) + conv(dim, w, w) + conv(dim, c + w, 2 * w) + conv(dim, 2 * w, 2 * w)
    if name == "GPUnet":
        return encoder + conv(dim, (c + w) + (c + 3 * w), w) + (w + 1)
    if name == "BaseCNN":
        return encoder + (c + 3 * w) + 1
    if name == "GPUnetNoResidual":
        return (
            conv(dim, c, w)
            + conv(dim, w, w)
            + conv(dim, w, 2 * w)
            + conv(dim, 2 * w, 2 * w)
            + conv(dim, 2 * w, 4 * w)
            + conv(dim, 4 * w + 2 * w, 2 * w)
            + conv(dim, 2 * w + w, w)
            + (w + 1)
        )
    if name == "GatedAttentionNet":
        gate = conv(dim, c + w, w, k=2, bias=False) + conv(dim, c + 3 * w, w, k=1) + (w + 1)
        return encoder + gate + (2 * c + 4 * w) + 1
    raise AssertionError(name)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("cls", "dim", "expected"),
    [
        (GPUnet, 3, 308_705),  # the paper: "less than 309 000 parameters"
        (GPUnet, 2, 6_761),
        (BaseCNN, 3, 196_418),
        (BaseCNN, 2, 4_322),
        (GPUnetNoResidual, 3, 830_753),
    ],
)
def test_parameter_counts_literal(cls: ModelCls, dim: int, expected: int) -> None:
    assert n_params(cls(dim)) == expected


@pytest.mark.parametrize("cls", ALL_MODELS)
@pytest.mark.parametrize(("dim", "width", "in_channels"), [(2, None, 1), (3, None, 1), (2, 5, 3)])
def test_parameter_counts_layer_by_layer(
    cls: ModelCls, dim: int, width: int | None, in_channels: int
) -> None:
    model = cls(dim, in_channels=in_channels, width=width)
    w = {2: 8, 3: 32}[dim] if width is None else width
    assert model.width == w
    assert n_params(model) == expected_params(cls.__name__, dim, w, in_channels)


def test_2d_uses_four_times_fewer_maps() -> None:
    for cls in ALL_MODELS:
        assert cls(3).width == 4 * cls(2).width


# --------------------------------------------------------------------------- forward shapes


@pytest.mark.parametrize("cls", ALL_MODELS)
@pytest.mark.parametrize(
    ("dim", "spatial"),
    [(2, (16, 12)), (2, (13, 17)), (3, (8, 8, 8)), (3, (9, 11, 7))],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(cls: ModelCls, dim: int, spatial: tuple[int, ...], batch: int) -> None:
    torch.manual_seed(0)
    model = cls(dim, width=4 if dim == 3 else None)
    y = model(torch.randn(batch, 1, *spatial))
    assert y.shape == (batch,)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_minimal_spatial_size(cls: ModelCls) -> None:
    model = cls(2, width=2)
    m = 2**model.n_pools
    assert model(torch.randn(2, 1, m, m + 1)).shape == (2,)
    with pytest.raises(ValueError, match=r"x must have spatial size >= " + str(m)):
        model(torch.randn(2, 1, m - 1, 8))


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_samples_in_a_batch_are_independent(cls: ModelCls) -> None:
    torch.manual_seed(1)
    model = cls(2, width=3).double()
    x = torch.randn(4, 1, 11, 10, dtype=torch.float64)
    batched = model(x)
    single = torch.stack([model(x[i : i + 1])[0] for i in range(4)])
    torch.testing.assert_close(batched, single)


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_every_parameter_receives_a_gradient(cls: ModelCls) -> None:
    torch.manual_seed(2)
    model = cls(3, width=2, init="kaiming")
    model(torch.randn(2, 1, 9, 8, 7)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@settings(max_examples=15, deadline=None)
@given(
    cls=st.sampled_from(ALL_MODELS),
    h=st.integers(4, 23),
    w=st.integers(4, 23),
    batch=st.integers(1, 3),
)
def test_any_2d_size_works_property(cls: ModelCls, h: int, w: int, batch: int) -> None:
    torch.manual_seed(3)
    model = cls(2, width=2)
    y = model(torch.randn(batch, 1, h, w))
    assert y.shape == (batch,)
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------- wiring vs. functional
# Each architecture rebuilt with torch.nn.functional from the layer tables in the paper, using
# the model's own weights: the module wiring (concat order, resampling, pooling) must agree.


def _fconv(block: ConvReLU, t: torch.Tensor) -> torch.Tensor:
    weight, bias = block.conv.weight, block.conv.bias
    f = F.conv2d if t.ndim == 4 else F.conv3d
    return F.relu(f(t, weight, bias, padding=1))


def _pool(t: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(t, 2) if t.ndim == 4 else F.max_pool3d(t, 2)


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=tuple(range(2, t.ndim)))


def _linear(head: nn.Linear, v: torch.Tensor) -> torch.Tensor:
    return (v @ head.weight.T + head.bias)[:, 0]


def _up(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return aligned_up(t, ref)


def ref_gpunet(m: GPUnet, x: torch.Tensor) -> torch.Tensor:
    skip = torch.cat([x, _fconv(m.conv2, _fconv(m.conv1, x))], 1)
    p = _pool(skip)
    low = torch.cat([p, _fconv(m.conv4, _fconv(m.conv3, p))], 1)
    return _linear(m.head, _gap(_fconv(m.conv5, torch.cat([skip, _up(low, skip)], 1))))


def ref_basecnn(m: BaseCNN, x: torch.Tensor) -> torch.Tensor:
    p = _pool(torch.cat([x, _fconv(m.conv2, _fconv(m.conv1, x))], 1))
    return _linear(m.head, _gap(torch.cat([p, _fconv(m.conv4, _fconv(m.conv3, p))], 1)))


def ref_nores(m: GPUnetNoResidual, x: torch.Tensor) -> torch.Tensor:
    f1 = _fconv(m.conv2, _fconv(m.conv1, x))
    f2 = _fconv(m.conv4, _fconv(m.conv3, _pool(f1)))
    f3 = _fconv(m.conv5, _pool(f2))
    d2 = _fconv(m.conv6, torch.cat([f2, _up(f3, f2)], 1))
    d1 = _fconv(m.conv7, torch.cat([f1, _up(d2, f1)], 1))
    return _linear(m.head, _gap(d1))


def ref_alpha(gate: AttentionGate, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    f = F.conv2d if x.ndim == 4 else F.conv3d
    theta = f(x, gate.theta.weight, None, stride=2)
    phi = f(g, gate.phi.weight, gate.phi.bias)
    alpha = torch.sigmoid(f(F.relu(theta + phi), gate.psi.weight, gate.psi.bias))
    return aligned_up(alpha, x, "linear")


def ref_gated(m: GatedAttentionNet, x: torch.Tensor) -> torch.Tensor:
    high = torch.cat([x, _fconv(m.conv2, _fconv(m.conv1, x))], 1)
    p = _pool(high)
    low = torch.cat([p, _fconv(m.conv4, _fconv(m.conv3, p))], 1)
    gated = high * ref_alpha(m.gate, high, low)
    return _linear(m.head, torch.cat([_gap(gated), _gap(low)], 1))


REFERENCES: dict[type[nn.Module], Callable[..., torch.Tensor]] = {
    GPUnet: ref_gpunet,
    BaseCNN: ref_basecnn,
    GPUnetNoResidual: ref_nores,
    GatedAttentionNet: ref_gated,
}


@pytest.mark.parametrize("cls", ALL_MODELS)
@pytest.mark.parametrize(("dim", "spatial"), [(2, (13, 17)), (3, (9, 11, 7))])
def test_forward_matches_functional_reference(
    cls: ModelCls, dim: int, spatial: tuple[int, ...]
) -> None:
    torch.manual_seed(4)
    model = cls(dim, width=3, init="kaiming").double()
    x = torch.randn(2, 1, *spatial, dtype=torch.float64)
    torch.testing.assert_close(model(x), REFERENCES[cls](model, x), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- module hygiene


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_relu_convs_and_blocks_are_modules(cls: ModelCls) -> None:
    model = cls(3)
    all_modules = list(model.modules())
    assert len(all_modules) == len({id(m) for m in all_modules}), "a module is reused"
    relus = [m for m in all_modules if isinstance(m, nn.ReLU)]
    assert relus and not any(r.inplace for r in relus)
    blocks = [m for m in all_modules if isinstance(m, ConvReLU)]
    gates = [m for m in all_modules if isinstance(m, AttentionGate)]
    assert len(relus) == len(blocks) + len(gates)  # one ReLU per conv block, one per gate
    for b in blocks:
        assert b.conv.kernel_size == (3, 3, 3)
        assert b.conv.padding == (1, 1, 1) and b.conv.padding_mode == "zeros"
    pools = [m for m in all_modules if isinstance(m, nn.MaxPool3d)]
    assert len(pools) == model.n_pools and all(p.kernel_size == 2 for p in pools)
    assert sum(isinstance(m, GlobalAvgPool) for m in all_modules) >= 1
    heads = [m for m in all_modules if isinstance(m, nn.Linear)]
    assert len(heads) == 1 and heads[0].out_features == 1


# --------------------------------------------------------------------------- wsdet_layers / CAM


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_wsdet_layers_resolve(cls: ModelCls) -> None:
    model = cls(2)
    layers = model.wsdet_layers()
    assert set(layers) == {"head", "features", "gradcam"}
    modules = dict(model.named_modules())
    head, features, gradcam = layers["head"], layers["features"], layers["gradcam"]
    assert isinstance(head, str) and isinstance(gradcam, str) and isinstance(features, list)
    assert isinstance(modules[head], nn.Linear)
    assert gradcam in modules and gradcam == features[0]
    assert len(features) == (2 if cls is GatedAttentionNet else 1)
    for name in features:
        assert name in modules
    # the layer list is a fresh object each call (callers may mutate it)
    features.append("x")
    assert model.wsdet_layers()["features"] != features


@pytest.mark.parametrize("cls", ALL_MODELS)
@pytest.mark.parametrize(("dim", "spatial"), [(2, (13, 17)), (3, (9, 11, 7))])
def test_cam_decomposition(cls: ModelCls, dim: int, spatial: tuple[int, ...]) -> None:
    """y = sum_s w^s . mean(f^s) + b with hooks on the real modules named by wsdet_layers."""
    torch.manual_seed(5)
    model = cls(dim, width=4 if dim == 3 else None, init="kaiming").double().eval()
    layers = model.wsdet_layers()
    modules = dict(model.named_modules())
    feats: dict[str, torch.Tensor] = {}
    head_in: list[torch.Tensor] = []
    handles = []
    try:
        for name in layers["features"]:

            def hook(_m: nn.Module, _i: object, out: torch.Tensor, name: str = name) -> None:
                feats[name] = out

            handles.append(modules[name].register_forward_hook(hook))
        head = modules[layers["head"]]
        assert isinstance(head, nn.Linear)
        handles.append(head.register_forward_pre_hook(lambda _m, a: head_in.append(a[0])))
        x = torch.randn(2, 1, *spatial, dtype=torch.float64)
        y = model(x)
    finally:
        for h in handles:
            h.remove()

    maps = [feats[n] for n in layers["features"]]
    assert sum(f.shape[1] for f in maps) == head.in_features
    # full-resolution feature maps for the first entry of A, B and D
    if cls is not BaseCNN:
        assert maps[0].shape[2:] == x.shape[2:]
    means = torch.cat([f.mean(dim=tuple(range(2, f.ndim))) for f in maps], dim=1)
    torch.testing.assert_close(means, head_in[0], rtol=0, atol=1e-12)

    # the CAM identity, slice by slice of head.weight
    pred = head.bias.expand(2).clone()
    start = 0
    for f in maps:
        k = f.shape[1]
        w_s = head.weight[0, start : start + k]
        cam = torch.einsum("k,bk...->b...", w_s, f)  # CAM at this scale
        pred = pred + cam.flatten(1).mean(1)
        start += k
    assert start == head.in_features
    torch.testing.assert_close(pred, y, rtol=0, atol=1e-5)
    assert (y - pred).abs().max() < 1e-10


@pytest.mark.parametrize(
    ("cls", "channels", "half"),
    [
        (GPUnet, 8, False),  # conv5: w maps at full resolution
        (BaseCNN, 1 + 3 * 8, True),  # cat2: c + 3w maps at half resolution
        (GPUnetNoResidual, 8, False),  # conv7: w maps at full resolution
        (GatedAttentionNet, 1 + 8, False),  # gate: the gated c + w maps, full resolution
    ],
)
def test_gradcam_layer_output_shape(cls: ModelCls, channels: int, half: bool) -> None:
    model = cls(2)
    layer = model.get_submodule(str(model.wsdet_layers()["gradcam"]))
    out: list[torch.Tensor] = []
    h = layer.register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        model(torch.randn(2, 1, 13, 17))
    finally:
        h.remove()
    assert len(out) == 1
    assert out[0].shape == ((2, channels, 6, 8) if half else (2, channels, 13, 17))


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_models_implement_the_wsdet_layers_protocol(cls: ModelCls) -> None:
    model = cls(2)
    assert isinstance(model, WsdetLayers)
    assert declared_layers(model) == model.wsdet_layers()


#: state_dict keys of the reference models: saved checkpoints depend on them.
STATE_KEYS = {
    "GPUnet": ["conv1", "conv2", "conv3", "conv4", "conv5"],
    "BaseCNN": ["conv1", "conv2", "conv3", "conv4"],
    "GPUnetNoResidual": ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7"],
    "GatedAttentionNet": ["conv1", "conv2", "conv3", "conv4"],
}


def _reference_layers(name: str, c: int, w: int) -> list[nn.Module]:
    """The model's convolutions and head built by hand, in registration (= draw) order."""

    def conv(cin: int, cout: int) -> nn.Module:
        return nn.Conv2d(cin, cout, 3, padding=1)

    if name == "GPUnetNoResidual":
        convs = [conv(c, w), conv(w, w), conv(w, 2 * w), conv(2 * w, 2 * w), conv(2 * w, 4 * w)]
        return [*convs, conv(6 * w, 2 * w), conv(3 * w, w), nn.Linear(w, 1)]
    stem = [conv(c, w), conv(w, w), conv(c + w, 2 * w), conv(2 * w, 2 * w)]
    if name == "GPUnet":
        return [*stem, conv(2 * c + 4 * w, w), nn.Linear(w, 1)]
    if name == "BaseCNN":
        return [*stem, nn.Linear(c + 3 * w, 1)]
    gate = [
        nn.Conv2d(c + w, w, 2, stride=2, bias=False),
        nn.Conv2d(c + 3 * w, w, 1),
        nn.Conv2d(w, 1, 1),
    ]
    return [*stem, *gate, nn.Linear(2 * c + 4 * w, 1)]


@pytest.mark.parametrize("cls", ALL_MODELS)
@pytest.mark.parametrize(("width", "in_channels"), [(None, 1), (5, 2)])
def test_state_dict_keys_and_default_draws(
    cls: ModelCls, width: int | None, in_channels: int
) -> None:
    """Checkpoints keep loading: same keys, and the same seed draws the same weights."""
    torch.manual_seed(11)
    model = cls(2, in_channels=in_channels, width=width)
    torch.manual_seed(11)
    ref = _reference_layers(cls.__name__, in_channels, model.width)
    keys = [f"{n}.conv.{p}" for n in STATE_KEYS[cls.__name__] for p in ("weight", "bias")]
    if cls is GatedAttentionNet:
        keys += [f"gate.{k}" for k in ("theta.weight", "phi.weight", "phi.bias")]
        keys += ["gate.psi.weight", "gate.psi.bias"]
    keys += ["head.weight", "head.bias"]
    state = model.state_dict()
    assert list(state) == keys
    expected = [t for m in ref for t in m.state_dict().values()]
    assert len(expected) == len(keys)
    for key, t in zip(keys, expected, strict=True):
        assert torch.equal(state[key], t), key


def test_basecnn_gradcam_layer_is_the_pooled_concat() -> None:
    model = BaseCNN(3, width=4)
    layer = dict(model.named_modules())[str(model.wsdet_layers()["gradcam"])]
    out: list[torch.Tensor] = []
    h = layer.register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        model(torch.randn(1, 1, 9, 11, 7))
    finally:
        h.remove()
    assert isinstance(layer, Concat)
    assert out[0].shape == (1, 1 + 4 + 8, 4, 5, 3)  # 1 + w + 2w maps at half resolution


# --------------------------------------------------------------------------- blocks


def test_upsample_linear_matches_hand_values() -> None:
    # align_corners=False: out[i] samples the input at (i + 0.5) / 2 - 0.5, clamped at 0.
    x = torch.tensor([[[0.0, 1.0]]])
    out = UpsampleTo("linear")(x, torch.zeros(1, 1, 4))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


def test_upsample_nearest_even_and_odd() -> None:
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    even = UpsampleTo()(x, torch.zeros(1, 1, 4, 6))
    torch.testing.assert_close(even, x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    odd = UpsampleTo()(x, torch.zeros(2, 9, 5, 7))
    assert odd.shape == (1, 1, 5, 7)
    # aligned: output voxel i lies in the block 2k..2k+1 that coarse voxel k = i // 2 pooled;
    # the voxel the floor dropped repeats the last one
    for i in range(5):
        for j in range(7):
            assert odd[0, 0, i, j] == x[0, 0, min(i // 2, 1), min(j // 2, 2)]
    # a ceil-pooled map (3 coarse voxels for 5) is cropped at the end
    torch.testing.assert_close(UpsampleTo()(x, torch.zeros(1, 1, 3, 5)), even[:, :, :3, :5])
    # factor=None stretches: output i reads floor(i * in / out)
    stretched = UpsampleTo(factor=None)(x, torch.zeros(1, 1, 5, 7))
    for i in range(5):
        for j in range(7):
            assert stretched[0, 0, i, j] == x[0, 0, (i * 2) // 5, (j * 3) // 7]
    # at multiples of the factor the aligned and the stretched upsampling agree bit for bit
    for mode in ("nearest", "linear"):
        y = torch.randn(2, 3, 5, 7, 3)
        ref = torch.zeros(1, 1, 10, 14, 6)
        assert torch.equal(UpsampleTo(mode)(y, ref), UpsampleTo(mode, factor=None)(y, ref))
    # per-axis factors (in-plane pooling only): the first axis is kept, the others doubled
    y = torch.arange(6.0).reshape(1, 1, 3, 2, 1)
    got = UpsampleTo(factor=(1, 2, 2))(y, torch.zeros(1, 1, 3, 5, 2))
    want = y.repeat_interleave(2, 3)[:, :, :, [0, 1, 2, 3, 3]].repeat_interleave(2, 4)
    torch.testing.assert_close(got, want)
    # factor 4 (two poolings: 11 -> 5 -> 2): blocks of four, the 3 dropped voxels repeat
    row = UpsampleTo(factor=4)(torch.tensor([[[1.0, 2.0]]]), torch.zeros(1, 1, 11))
    assert row.tolist() == [[[1.0] * 4 + [2.0] * 7]]


def test_upsample_linear_odd_keeps_block_centres() -> None:
    # align_corners=False with factor 2: coarse centres at 0.5, 2.5, ...; the dropped last
    # voxel is clamped (the edge value), as linear interpolation does at the border
    x = torch.tensor([[[0.0, 1.0]]])
    out = UpsampleTo("linear")(x, torch.zeros(1, 1, 5))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.25, 0.75, 1.0, 1.0]]]))


def _aligned_reference(coarse: np.ndarray, size: tuple[int, ...], mode: str) -> np.ndarray:
    """Upsampling by 2 per axis from first principles: coarse voxel k covers fine voxels 2k
    and 2k + 1 (centre 2k + 0.5); nearest repeats it (the dropped last voxel takes the
    last block's value), linear interpolates between centres (clamped at the ends)."""
    out = coarse
    for axis, n in enumerate(size):
        m = out.shape[axis]
        if mode == "nearest":
            out = np.take(out, np.minimum(np.arange(n) // 2, m - 1), axis=axis)
        else:
            grid, centres = np.arange(n), 2.0 * np.arange(m) + 0.5
            lines = np.moveaxis(out, axis, -1)  # interpolate every line along the axis
            flat = [np.interp(grid, centres, v) for v in lines.reshape(-1, m)]
            out = np.moveaxis(np.reshape(flat, (*lines.shape[:-1], n)), -1, axis)
    return out


def test_decoders_upsample_in_place_at_odd_sizes() -> None:
    # Every upsampling inside the reference architectures, observed in the forward pass of
    # an input of odd size, equals the aligned upsampling computed from first principles.
    torch.manual_seed(0)
    for cls in (GPUnet, GPUnetNoResidual, GatedAttentionNet):
        model = cls(dim=3, width=2).eval()
        seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

        def record(m: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor, seen=seen) -> None:
            seen.append((m.mode, i[0], o))

        ups = [m for m in model.modules() if isinstance(m, UpsampleTo)]
        hooks = [m.register_forward_hook(record) for m in ups]
        with torch.no_grad():
            model(torch.randn(1, 1, 11, 13, 9))
        for h in hooks:
            h.remove()
        assert seen, cls.__name__
        for mode, coarse, fine in seen:
            for b, c in ((0, 0), (0, coarse.shape[1] - 1)):
                ref = _aligned_reference(coarse[b, c].double().numpy(), fine.shape[2:], mode)
                np.testing.assert_allclose(fine[b, c].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_decoders_are_shift_equivariant_at_odd_sizes() -> None:
    # Shifting an input by a multiple of the network's downsampling factor shifts its
    # full-resolution CAM features by the same amount away from the borders, at odd sizes
    # too. Stretching the coarse maps to the reference size breaks this (and shifts maps
    # by up to one coarse voxel); the even size is the control where both agree.
    torch.manual_seed(0)
    for cls, layer, shift, margin in (
        (GPUnet, "conv5", 2, 12),
        (GPUnetNoResidual, "conv7", 4, 24),  # a larger receptive field
        (GatedAttentionNet, "gate", 2, 12),
    ):
        model = cls(dim=3, width=2).eval()
        for depth in (4 * margin - 1, 4 * margin):
            big = torch.randn(1, 1, depth + shift, 6, 6)
            feats = []
            with torch.no_grad():
                for start in (0, shift):
                    got: dict[str, torch.Tensor] = {}
                    h = dict(model.named_modules())[layer].register_forward_hook(
                        lambda m, i, o, got=got: got.update(f=o)
                    )
                    model(big[:, :, start : start + depth])
                    h.remove()
                    feats.append(got["f"])
            a = feats[0][:, :, shift + margin : depth - margin]
            b = feats[1][:, :, margin : depth - margin - shift]
            torch.testing.assert_close(a, b, msg=f"{cls.__name__}, depth {depth}")


def test_blocks_validate() -> None:
    with pytest.raises(ValueError, match="mode"):
        UpsampleTo("cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="factor must be"):
        UpsampleTo(factor=0)
    with pytest.raises(ValueError, match=r"along axes \[1\] \(x is not ref pooled by it\)"):
        UpsampleTo()(torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 4, 9))
    with pytest.raises(ValueError, match="one factor per spatial axis"):
        UpsampleTo(factor=(1, 2))(torch.zeros(1, 1, 2, 3, 3), torch.zeros(1, 1, 2, 6, 6))
    with pytest.raises(ValueError, match="x and ref"):
        UpsampleTo()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="x must have shape"):
        GlobalAvgPool()(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least one"):
        Concat()()
    with pytest.raises(ValueError, match="odd"):
        ConvReLU(2, 1, 1, kernel_size=2)
    torch.testing.assert_close(
        GlobalAvgPool()(torch.arange(8.0).reshape(1, 2, 2, 2)), torch.tensor([[1.5, 5.5]])
    )


@pytest.mark.parametrize(("dim", "spatial"), [(2, (9, 6)), (3, (5, 4, 7))])
def test_attention_gate(dim: int, spatial: tuple[int, ...]) -> None:
    torch.manual_seed(6)
    gate = AttentionGate(dim, x_channels=3, g_channels=5, inter_channels=4).double()
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    g = torch.randn(2, 5, *(s // 2 for s in spatial), dtype=torch.float64)
    captured: list[torch.Tensor] = []
    h = gate.upsample.register_forward_hook(lambda _m, _i, o: captured.append(o))
    try:
        gated = gate(x, g)
    finally:
        h.remove()
    alpha = ref_alpha(gate, x, g)
    assert alpha.shape == (2, 1, *spatial)
    assert ((alpha > 0) & (alpha < 1)).all()
    torch.testing.assert_close(captured[0], alpha)
    torch.testing.assert_close(gate.attention_coefficients(x, g), alpha)
    torch.testing.assert_close(gated, x * alpha)
    # channel by channel, by hand
    for k in range(3):
        torch.testing.assert_close(gated[:, k], x[:, k] * alpha[:, 0])
    with pytest.raises(ValueError, match="g must have spatial size"):
        gate(x, torch.randn(2, 5, *(s // 2 + 1 for s in spatial), dtype=torch.float64))
    with pytest.raises(ValueError, match="x and g"):
        gate(x[0], g)


def test_attention_gate_can_switch_off_regions() -> None:
    # psi with a large negative bias drives alpha to ~0 everywhere: the gated maps vanish
    gate = AttentionGate(2, 2, 2, 2)
    with torch.no_grad():
        gate.psi.weight.zero_()
        assert gate.psi.bias is not None
        gate.psi.bias.fill_(-50.0)
    x = torch.randn(1, 2, 6, 6)
    assert gate(x, torch.randn(1, 2, 3, 3)).abs().max() < 1e-20


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_forward_validation(cls: ModelCls) -> None:
    model2, model3 = cls(2, width=2), cls(3, width=2)
    with pytest.raises(
        ValueError, match=r"x must have shape \(B, 1, H, W\).*got shape \(1, 8, 8\)"
    ):
        model2(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, D, H, W\)"):
        model3(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\).*\(2, 3, 8, 8\)"):
        model2(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        cls(2, in_channels=3, width=2)(torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        model2(torch.zeros(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        model2([[0.0]])
    with pytest.raises(ValueError, match="spatial size"):
        model3(torch.zeros(1, 1, 8, 1, 8))


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_constructor_validation(cls: ModelCls) -> None:
    with pytest.raises(ValueError, match=r"dim must be one of \['2', '3'\]; got 4"):
        cls(4)
    with pytest.raises(TypeError, match="dim must be an int"):
        cls(True)
    with pytest.raises(TypeError, match="dim must be an int"):
        cls(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        cls(2, width=0)
    with pytest.raises(TypeError, match="width"):
        cls(2, width=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels"):
        cls(2, in_channels=0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        cls(2, init="xavier")


def test_gated_inter_channels() -> None:
    model = GatedAttentionNet(2, width=4, inter_channels=7)
    assert model.gate.psi.in_channels == 7 and model.inter_channels == 7
    with pytest.raises(ValueError, match="inter_channels"):
        GatedAttentionNet(2, inter_channels=0)


# --------------------------------------------------------------------------- initialisation


def _weights_and_biases(model: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    weights, biases = [], []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            weights.append(m.weight.detach().flatten())
            if m.bias is not None:
                biases.append(m.bias.detach())
    return torch.cat(weights), biases


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_keras_init(cls: ModelCls) -> None:
    torch.manual_seed(7)
    model = cls(3, init="keras")
    weights, biases = _weights_and_biases(model)
    # ~2e5 draws: the sample std of N(0, 0.05) is within 1% with overwhelming probability
    assert weights.numel() > 100_000
    assert abs(weights.std().item() - 0.05) < 0.0005
    assert abs(weights.mean().item()) < 0.001
    assert all((b == 0).all() for b in biases)


def test_keras_init_custom_std_and_generator() -> None:
    a = init_weights(GPUnet(2), "keras", std=0.2, generator=torch.Generator().manual_seed(0))
    b = init_weights(GPUnet(2), "keras", std=0.2, generator=torch.Generator().manual_seed(0))
    c = init_weights(GPUnet(2), "keras", std=0.2, generator=torch.Generator().manual_seed(1))
    wa, wb, wc = (_weights_and_biases(m)[0] for m in (a, b, c))
    torch.testing.assert_close(wa, wb)
    assert not torch.equal(wa, wc)
    assert abs(wa.std().item() - 0.2) < 0.01


def test_kaiming_init() -> None:
    torch.manual_seed(8)
    model = GPUnet(3, init="kaiming")
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            fan_in = m.weight[0].numel()
            expected = math.sqrt(2.0 / fan_in)
            n = m.weight.numel()
            # sample std of n normal draws: relative s.e. ~ 1/sqrt(2n); allow 6 s.e. (+ a floor)
            tol = max(6.0 / math.sqrt(2 * n), 0.05) if n > 100 else 1.0
            assert abs(m.weight.std().item() / expected - 1) < tol, (m, n)
            assert m.bias is not None and (m.bias == 0).all()
    big = model.conv5.conv.weight  # 130 * 27 * 32 weights
    assert abs(big.std().item() - math.sqrt(2.0 / (130 * 27))) < 0.01 * math.sqrt(2 / (130 * 27))


def test_kaiming_conv_init_redraws_only_conv_weights() -> None:
    torch.manual_seed(3)
    model = GPUnet(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model, "kaiming_conv", generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            w = after[f"{name}.weight"]
            assert not torch.equal(w, before[f"{name}.weight"]), name
            if w.numel() > 1000:  # std sqrt(2 / fan_in), 6 standard errors
                expected = math.sqrt(2.0 / w[0].numel())
                assert abs(w.std().item() / expected - 1) < 6 / math.sqrt(2 * w.numel()), name
            # biases keep PyTorch's (non-zero) draw
            torch.testing.assert_close(after[f"{name}.bias"], before[f"{name}.bias"])
            assert bool((after[f"{name}.bias"] != 0).any())
        if isinstance(module, nn.Linear):
            torch.testing.assert_close(after[f"{name}.weight"], before[f"{name}.weight"])
            torch.testing.assert_close(after[f"{name}.bias"], before[f"{name}.bias"])
    again = GPUnet(2)
    again.load_state_dict(before)
    init_weights(again, "kaiming_conv", generator=torch.Generator().manual_seed(0))
    for k, v in again.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_default_init_is_pytorch() -> None:
    torch.manual_seed(9)
    model = GPUnet(2)
    torch.manual_seed(9)
    ref = nn.Conv2d(1, 8, 3, padding=1)
    torch.testing.assert_close(model.conv1.conv.weight, ref.weight)
    before = [p.clone() for p in model.parameters()]
    init_weights(model, "default")
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    # PyTorch's default biases are not zero
    assert model.conv1.conv.bias is not None
    assert bool((model.conv1.conv.bias != 0).any())


def test_init_weights_validation() -> None:
    model = GPUnet(2)
    with pytest.raises(ValueError, match="scheme must be one of"):
        init_weights(model, "he")
    with pytest.raises(ValueError, match=r"std must be a finite number > 0; got 0\.0"):
        init_weights(model, "keras", std=0.0)
    with pytest.raises(ValueError, match="std must be a finite number > 0; got nan"):
        init_weights(model, "keras", std=float("nan"))
    with pytest.raises(TypeError, match="std must be a real number"):
        init_weights(model, "keras", std="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std is only used"):
        init_weights(model, "kaiming", std=0.1)
    with pytest.raises(ValueError, match="generator has no effect"):
        init_weights(model, "default", generator=torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        init_weights(model, "keras", generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        init_weights("model", "keras")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- docs


@pytest.mark.parametrize(
    "module",
    [
        blocks_module,
        base_module,
        basecnn_module,
        gated_module,
        gpunet_module,
        nores_module,
        init_module,
    ],
)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, verbose=False)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0
