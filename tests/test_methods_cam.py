"""CAM family by hand: gp_unet (Σ w f), gp_unet_no_residual's intensity fusion (hand
min-max rescaling + sum), gated_attention's multi-scale CAM (hand linear upsampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import wsdet
from wsdet.attention.cam import CAM, GatedAttentionCAM, GPUnetNoResidualCAM
from wsdet.models import GatedAttentionNet, GPUnet, GPUnetNoResidual


def capture(model: nn.Module, names: list[str], x: torch.Tensor) -> list[np.ndarray]:
    """Outputs of the named modules in a plain forward pass (a test-owned hook)."""
    got: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())
    handles = [
        mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.detach()))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [got[n].numpy() for n in names]


def np_linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation, align_corners=False, by hand."""
    u = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        u[o, i0] += 1 - lam
        u[o, i1] += lam
    return u


def np_upsample(m: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Separable (bi/tri)linear upsampling of one map ``m`` to ``size``. Along an axis of
    ``f * m + r`` voxels (``f`` a power of two, ``0 <= r < f``: floored pooling) the map is
    upsampled by ``f`` and the last ``r`` voxels repeat the edge row; otherwise stretched."""
    out = m
    for axis, n in enumerate(size):
        k = out.shape[axis]
        fits = [f for f in (1, 2, 4, 8, 16, 32) if 0 <= n - f * k < f]
        if fits:
            u = np_linear_weights(k, fits[0] * k)
            u = u[np.minimum(np.arange(n), fits[0] * k - 1)]
        else:
            u = np_linear_weights(k, n)
        out = np.moveaxis(np.tensordot(u, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out


def test_np_upsample_matches_known_values() -> None:
    # 2 -> 4: v0, .75 v0 + .25 v1, .25 v0 + .75 v1, v1 (the textbook half-pixel rule)
    np.testing.assert_allclose(np_upsample(np.array([0.0, 4.0]), (4,)), [0.0, 1.0, 3.0, 4.0])
    # 2 -> 5 (5 pooled once, floored): the same four, then the edge value
    np.testing.assert_allclose(np_upsample(np.array([0.0, 4.0]), (5,)), [0, 1, 3, 4, 4.0])
    # 3 -> 4 is no floored pooling: stretched, sampling (o + 0.5) * 3 / 4 - 0.5
    np.testing.assert_allclose(np_upsample(np.array([0.0, 4.0, 8.0]), (4,)), [0, 2.5, 5.5, 8])


def test_upsample_to_decides_per_axis() -> None:
    from wsdet.attention.base import upsample_to

    # 11 from 6 is no floored pooling (stretched); 9 from 4 is (in place)
    m = np.random.default_rng(0).random((6, 4))
    got = upsample_to(torch.tensor(m)[None], (11, 9))[0].numpy()
    np.testing.assert_allclose(got, np_upsample(m, (11, 9)), rtol=1e-12)


# ------------------------------------------------------------ tiny hand CAM model

W = np.array(
    [
        [[1.0, -0.5, 0.0], [0.5, 1.0, -1.0], [0.0, 0.25, 0.5]],
        [[-1.0, 0.5, 0.5], [0.0, -0.5, 1.0], [1.0, 0.0, -0.25]],
        [[0.25, 0.25, 0.25], [0.25, -2.0, 0.25], [0.25, 0.25, 0.25]],
    ]
)
B = np.array([0.1, -0.2, 0.3])
WH = np.array([1.5, -2.0, 0.5])
BH = -0.3


class OneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(3, 1)
        self.double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(W)[:, None])
            self.conv.bias.copy_(torch.tensor(B))
            self.head.weight.copy_(torch.tensor(WH)[None])
            self.head.bias.fill_(BH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x)).mean((2, 3))).squeeze(-1)


def test_cam_on_one_conv_model_by_hand() -> None:
    g = np.random.default_rng(0)
    imgs = g.normal(size=(2, 4, 6))
    maps, out = CAM(OneConv()).compute(torch.tensor(imgs)[:, None])
    for i, img in enumerate(imgs):
        pad = np.pad(img, 1)
        f = np.zeros((3, 4, 6))
        for k in range(3):
            for r in range(4):
                for c in range(6):
                    f[k, r, c] = max((W[k] * pad[r : r + 3, c : c + 3]).sum() + B[k], 0.0)
        ref = np.einsum("k,khw->hw", WH, f)
        np.testing.assert_allclose(maps[i].numpy(), ref, rtol=1e-12, atol=1e-14)
        assert out[i].item() == pytest.approx(ref.mean() + BH, rel=1e-12)
    assert (maps < 0).any() and (maps > 0).any()  # signed


# ------------------------------------------------------------------- gp_unet


@pytest.mark.parametrize("dim", [2, 3])
def test_gp_unet_equals_hand_weighted_sum(dim: int) -> None:
    torch.manual_seed(dim)
    model = GPUnet(dim, width=3).double().eval()
    x = torch.rand(3, 1, *((9, 10) if dim == 2 else (5, 6, 4)), dtype=torch.double)
    (f,) = capture(model, ["conv5"], x)
    w = model.head.weight.detach().numpy()[0]
    ref = np.einsum("k,bk...->b...", w, f)
    maps, out = wsdet.Detector(model, method="gp_unet").attention_and_count(x)
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(out, model(x).detach())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), b=st.integers(1, 3), h=st.integers(2, 9))
def test_cam_mean_plus_bias_is_the_output(seed: int, b: int, h: int) -> None:
    torch.manual_seed(seed)
    model = GPUnet(2, width=2).double().eval()
    x = torch.randn(b, 1, h, 7, dtype=torch.double)
    maps, out = CAM(model).compute(x)
    torch.testing.assert_close(
        maps.flatten(1).mean(1) + model.head.bias.detach(), out, rtol=1e-10, atol=1e-12
    )


# ------------------------------------------------------- gp_unet_no_residual fusion


def np_rescale01(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(), a.max()
    return np.zeros_like(a) if hi == lo else (a - lo) / (hi - lo)


@pytest.mark.parametrize("dim", [2, 3])
def test_no_residual_fusion_by_hand(dim: int) -> None:
    torch.manual_seed(10 + dim)
    model = GPUnetNoResidual(dim, in_channels=2, width=2).double().eval()
    x = torch.rand(3, 2, *((8, 12) if dim == 2 else (4, 8, 4)), dtype=torch.double)
    x[2, 1] = 0.5  # a constant channel rescales to zeros
    (f,) = capture(model, ["conv7"], x)
    w = model.head.weight.detach().numpy()[0]
    cam = np.einsum("k,bk...->b...", w, f)
    plain = GPUnetNoResidualCAM(model).compute(x)[0]
    np.testing.assert_allclose(plain.numpy(), cam, rtol=1e-10, atol=1e-13)
    for channel in (0, 1):
        fused = GPUnetNoResidualCAM(model, fuse_intensity=True, fuse_channel=channel)
        maps = fused.compute(x)[0].numpy()
        for i in range(3):
            img = x[i, channel].numpy()
            ref = np_rescale01(np.maximum(cam[i], 0)) + np_rescale01(img)
            np.testing.assert_allclose(maps[i], ref, rtol=1e-10, atol=1e-13)
    assert maps[2].max() <= 1.0 + 1e-12  # constant channel 1 of image 2 adds nothing


def test_fusion_via_detector_option() -> None:
    model = GPUnetNoResidual(2, width=2).eval()
    x = torch.rand(2, 1, 8, 8)
    plain = wsdet.Detector(model, method="gp_unet_no_residual").attention(x).numpy()
    maps = wsdet.Detector(model, method="gp_unet_no_residual", fuse_intensity=True).attention(x)
    for i in range(2):
        ref = np_rescale01(np.maximum(plain[i], 0)) + np_rescale01(x[i, 0].numpy())
        np.testing.assert_allclose(maps[i].numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channel", [2, -3])
def test_fuse_channel_out_of_range_is_a_clear_error(channel: int) -> None:
    model = GPUnetNoResidual(2, in_channels=2, width=2).eval()
    x = torch.rand(1, 2, 8, 8)
    cam = GPUnetNoResidualCAM(model, fuse_intensity=True, fuse_channel=channel)
    expected = rf"fuse_channel={channel} is out of range .* 2 channel.*-2 <= fuse_channel <= 1"
    with pytest.raises(ValueError, match=expected):
        cam.compute(x)
    assert cam.layers is None  # refused before any work
    # in range, counted from the end: the last channel
    last = GPUnetNoResidualCAM(model, fuse_intensity=True, fuse_channel=-1).compute(x)[0]
    ref = GPUnetNoResidualCAM(model, fuse_intensity=True, fuse_channel=1).compute(x)[0]
    torch.testing.assert_close(last, ref, rtol=0, atol=0)
    # without fusion the channel is never read
    GPUnetNoResidualCAM(model, fuse_channel=channel).compute(x)
    with pytest.raises(TypeError, match="fuse_channel must be an int"):
        GPUnetNoResidualCAM(model, fuse_intensity=True, fuse_channel=1.0)  # type: ignore[arg-type]


# ----------------------------------------------------------- gated attention


@pytest.mark.parametrize("size", [(8, 10), (9, 7), (4, 6, 5)])
def test_gated_attention_equals_hand_multiscale_cam(size: tuple[int, ...]) -> None:
    dim = len(size)
    torch.manual_seed(dim)
    model = GatedAttentionNet(dim, width=2).double().eval()
    x = torch.rand(2, 1, *size, dtype=torch.double)
    f_high, f_low = capture(model, ["gate", "cat2"], x)
    w = model.head.weight.detach().numpy()[0]
    c_high = f_high.shape[1]
    assert c_high + f_low.shape[1] == w.size
    maps, out = GatedAttentionCAM(model).compute(x)
    for i in range(2):
        high = np.einsum("k,k...->...", w[:c_high], f_high[i])
        low = np.einsum("k,k...->...", w[c_high:], f_low[i])
        assert low.shape == tuple(s // 2 for s in size)
        ref = high + np_upsample(low, size)
        np.testing.assert_allclose(maps[i].numpy(), ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(out, model(x).detach())
