"""Parity with peer libraries, and users' networks.

* ``grad`` == Captum ``Saliency(abs=False)``; ``guided_backprop`` == Captum
  ``GuidedBackprop``; ``grad_cam`` == Captum ``LayerGradCam`` + ``LayerAttribution.
  interpolate`` (bilinear / trilinear) at sizes that are multiples of the pooling (at
  floored odd sizes the coarse map is upsampled in place, not stretched); ``gp_unet`` CAM
  == MONAI ``CAM`` raw map minus the head's bias; ``gated_attention`` == the sum of one
  MONAI CAM per scale.
* 2D and 3D, batch > 1, float32, relative tolerance 1e-5 (absolute 1e-5 of the map's
  largest magnitude, for values that cancel to ~0), on our architectures and on a model
  with BatchNorm (eval), an in-place ReLU and one ReLU module called twice.
* A user's MONAI DenseNet and a plain ``nn.Sequential`` work without naming layers.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import wsdet
from wsdet.attention.cam import CAM, GatedAttentionCAM
from wsdet.attention.gradcam import GradCAM
from wsdet.attention.gradient import GuidedBackprop, InputGradient
from wsdet.models import BaseCNN, GatedAttentionNet, GPUnet

captum_attr = pytest.importorskip("captum.attr")
monai_visualize = pytest.importorskip("monai.visualize")
monai_nets = pytest.importorskip("monai.networks.nets")

SIZES = {2: (12, 10), 3: (6, 8, 6)}
MODES = {2: "bilinear", 3: "trilinear"}


@pytest.fixture(autouse=True)
def _quiet_peers() -> Iterator[None]:
    # Captum and MONAI announce their own hooks and input flags; not our concern here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"captum\..*|monai\..*")
        warnings.filterwarnings("ignore", message=".*required_grads has been set.*")
        warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU.*")
        yield


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, allow_zero: bool = False) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    scale = float(ref.abs().max())
    assert scale > 0 or allow_zero, "a vacuous comparison: the reference map is all zeros"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale)


class BNNet(nn.Module):
    """conv-BN-ReLU(inplace) - conv-ReLU(shared) - conv-BN-ReLU(shared, 2nd call) - GAP - FC."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d
        pool = nn.AdaptiveAvgPool2d if dim == 2 else nn.AdaptiveAvgPool3d
        self.conv1 = conv(1, 4, 3, padding=1)
        self.bn1 = bn(4)
        self.relu_inplace = nn.ReLU(inplace=True)
        self.conv2 = conv(4, 4, 3, padding=1)
        self.shared = nn.ReLU()
        self.conv3 = conv(4, 5, 3, padding=1)
        self.bn3 = bn(5)
        self.gap = pool(1)
        self.flat = nn.Flatten()
        self.head = nn.Linear(5, 1)
        g = torch.Generator().manual_seed(dim)
        with torch.no_grad():
            for b in (self.bn1, self.bn3):
                b.running_mean.copy_(torch.randn(b.num_features, generator=g) * 0.1)
                b.running_var.copy_(torch.rand(b.num_features, generator=g) + 0.5)
                b.weight.copy_(torch.rand(b.num_features, generator=g) + 0.5)
                b.bias.copy_(torch.randn(b.num_features, generator=g) * 0.1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu_inplace(self.bn1(self.conv1(x)))
        h = self.shared(self.conv2(h))
        h = self.shared(self.bn3(self.conv3(h)))
        return self.head(self.flat(self.gap(h))).squeeze(-1)


def make(arch: str, dim: int) -> nn.Module:
    torch.manual_seed(100 + dim)
    if arch == "bn":
        return BNNet(dim)
    cls = {"base": BaseCNN, "gpunet": GPUnet, "gated": GatedAttentionNet}[arch]
    return cls(dim, width=3).eval()


def batch(dim: int, b: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(dim)
    return torch.rand(b, 1, *SIZES[dim], generator=g)


# ------------------------------------------------------------------ Captum


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", ["base", "gpunet", "gated", "bn"])
def test_grad_equals_captum_saliency(arch: str, dim: int) -> None:
    model, x = make(arch, dim), batch(dim)
    ref = captum_attr.Saliency(model).attribute(x.clone(), abs=False)[:, 0]
    assert_parity(InputGradient(model).compute(x)[0], ref)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", ["base", "gpunet", "bn"])
def test_guided_backprop_equals_captum(arch: str, dim: int) -> None:
    model, x = make(arch, dim), batch(dim)
    ref = captum_attr.GuidedBackprop(model).attribute(x.clone())[:, 0]
    ours = GuidedBackprop(model).compute(x)[0]
    assert_parity(ours, ref)
    assert not torch.allclose(ours, InputGradient(model).compute(x)[0])


def captum_gradcam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, relu: bool = False
) -> torch.Tensor:
    attr = captum_attr.LayerGradCam(model, layer).attribute(x, relu_attributions=relu)
    up = captum_attr.LayerAttribution.interpolate(attr, tuple(x.shape[2:]), MODES[x.ndim - 2])
    return up[:, 0].detach()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("base", "cat2"),  # half resolution: upsampled
        ("gpunet", "conv5"),
        ("gated", "gate"),
        ("gated", "conv3"),  # an inner layer, half resolution
        ("bn", "bn1"),  # followed by an in-place ReLU
        ("bn", "conv3"),
        ("bn", "shared"),  # a module called twice: its last call
    ],
)
def test_grad_cam_equals_captum_layer_gradcam(arch: str, layer: str, dim: int) -> None:
    model, x = make(arch, dim), batch(dim)
    mod = dict(model.named_modules())[layer]
    ours = GradCAM(model, layer=layer).compute(x)[0]
    assert_parity(ours, captum_gradcam(model, mod, x))
    ours_relu = GradCAM(model, layer=mod, relu=True).compute(x)[0]
    # (ReLU'd maps may be all zero for some of these random networks.)
    assert_parity(ours_relu, captum_gradcam(model, mod, x, relu=True), allow_zero=True)


def _aligned_linear(coarse: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Linear upsampling by 2 per axis from first principles: coarse voxel k is centred on
    the block 2k, 2k + 1 it pooled (2k + 0.5), values clamped beyond the end centres."""
    out = coarse
    for axis, n in enumerate(size):
        m = out.shape[axis]
        lines = np.moveaxis(out, axis, -1)
        flat = [np.interp(np.arange(n), 2.0 * np.arange(m) + 0.5, v) for v in lines.reshape(-1, m)]
        out = np.moveaxis(np.reshape(flat, (*lines.shape[:-1], n)), -1, axis)
    return out


@pytest.mark.parametrize("size", [(11, 8, 6), (9, 13, 7)])
def test_grad_cam_at_odd_sizes_is_captums_coarse_map_upsampled_in_place(size: tuple) -> None:
    # Captum's coarse LayerGradCam, upsampled by hand with each coarse voxel centred on the
    # block it pooled; Captum's own interpolate stretches it instead (it differs here).
    model = make("base", 3)
    x = torch.rand(2, 1, *size, generator=torch.Generator().manual_seed(5))
    layer = dict(model.named_modules())["cat2"]
    coarse = captum_attr.LayerGradCam(model, layer).attribute(x)[:, 0].detach()
    ours = GradCAM(model, layer="cat2").compute(x)[0]
    for i in range(2):
        ref = _aligned_linear(coarse[i].double().numpy(), size)
        np.testing.assert_allclose(ours[i].double().numpy(), ref, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(ours, captum_gradcam(model, layer, x), atol=1e-6)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", ["base", "gpunet", "gated"])
def test_grad_cam_default_layer_equals_captum_on_declared_layer(arch: str, dim: int) -> None:
    model, x = make(arch, dim), batch(dim)
    declared = dict(model.named_modules())[model.wsdet_layers()["gradcam"]]  # type: ignore[operator]
    ours = wsdet.Detector(model, method="grad_cam").attention(x)
    assert_parity(ours, captum_gradcam(model, declared, x))


# ------------------------------------------------------------------- MONAI


class Logits(nn.Module):
    """``(B,)`` -> ``(B, 1)``: MONAI's CAM takes ``argmax`` over dim 1 of the output.

    The wrapped model is a deep copy, since MONAI leaves its hooks registered.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = copy.deepcopy(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x).reshape(x.shape[0], 1)


def _fc(fc: object) -> object:
    return f"m.{fc}" if isinstance(fc, str) else fc


def monai_cam_raw(model: nn.Module, layer: str, fc: str, x: torch.Tensor) -> torch.Tensor:
    """MONAI's raw CAM (``compute_map``: the FC layer applied at every position)."""
    cam = monai_visualize.CAM(
        nn_module=Logits(model),
        target_layers=f"m.{layer}",
        fc_layers=_fc(fc),
        upsampler=lambda size: lambda t: t,
        postprocessing=lambda t: t,
    )
    return cam.compute_map(x, class_idx=[0] * x.shape[0])[:, 0].detach()


def monai_cam_upsampled(model: nn.Module, layer: str, fc: object, x: torch.Tensor) -> torch.Tensor:
    """MONAI's CAM upsampled by its default (bi/tri)linear upsampler, no post-processing."""
    cam = monai_visualize.CAM(
        nn_module=Logits(model),
        target_layers=f"m.{layer}",
        fc_layers=_fc(fc),
        postprocessing=lambda t: t,
    )
    return cam(x, class_idx=[0] * x.shape[0])[:, 0].detach()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(("arch", "layer"), [("gpunet", "conv5"), ("bn", "shared")])
def test_cam_equals_monai_raw_map_minus_bias(arch: str, layer: str, dim: int) -> None:
    model, x = make(arch, dim), batch(dim)
    bias = float(model.head.bias.detach())  # type: ignore[union-attr, arg-type]
    ref = monai_cam_raw(model, layer, "head", x) - bias
    method = CAM(model)
    assert_parity(method.compute(x)[0], ref)
    assert method.layers is not None and method.layers.features[0][0] == layer


@pytest.mark.parametrize("dim", [2, 3])
def test_cam_at_half_resolution_equals_monai_upsampled(dim: int) -> None:
    model, x = make("base", dim), batch(dim)
    # Linear interpolation preserves constants, so upsample(raw) - b == upsample(raw - b).
    ref = monai_cam_upsampled(model, "cat2", "head", x) - float(model.head.bias.detach())  # type: ignore[union-attr, arg-type]
    assert_parity(CAM(model).compute(x)[0], ref)


@pytest.mark.parametrize("dim", [2, 3])
def test_gated_attention_equals_sum_of_monai_cams_per_scale(dim: int) -> None:
    model, x = make("gated", dim), batch(dim)
    w = model.head.weight.detach()[0]  # type: ignore[union-attr, index]
    n_high = model.in_channels + model.width  # the gated maps: c + w channels
    total = torch.zeros(x.shape[0], *x.shape[2:])
    for layer, sl in (("gate", slice(0, n_high)), ("cat2", slice(n_high, None))):
        part = nn.Linear(w[sl].numel(), 1)
        with torch.no_grad():
            part.weight.copy_(w[sl][None])
            part.bias.zero_()
        total += monai_cam_upsampled(model, layer, lambda m, part=part: part, x)
    assert_parity(GatedAttentionCAM(model).compute(x)[0], total)


# ------------------------------------------------------------- users' networks


def small_monai_densenet() -> nn.Module:
    torch.manual_seed(0)
    return monai_nets.DenseNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        init_features=4,
        growth_rate=4,
        block_config=(2, 2),
        bn_size=2,
    ).eval()


def test_monai_densenet_without_naming_layers() -> None:
    model = small_monai_densenet()
    x = torch.rand(2, 1, 16, 16, 16)
    gc = GradCAM(model)
    maps = gc.compute(x)[0]
    assert gc.layer is not None
    layer = dict(model.named_modules())[gc.layer]
    assert_parity(maps, captum_gradcam(model, layer, x))
    assert_parity(
        InputGradient(model).compute(x)[0],
        captum_attr.Saliency(model).attribute(x.clone(), abs=False)[:, 0],
    )
    assert_parity(
        GuidedBackprop(model).compute(x)[0],
        captum_attr.GuidedBackprop(model).attribute(x.clone())[:, 0],
    )
    cam = CAM(model)
    raw = cam.compute(x)[0]
    assert cam.layers is not None
    (feat, _), head = cam.layers.features[0], cam.layers.head
    bias = float(dict(model.named_modules())[head].bias.detach())  # type: ignore[arg-type]
    assert_parity(raw, monai_cam_upsampled(model, feat, head, x) - bias)


@pytest.mark.slow
def test_monai_densenet121_3d_without_naming_layers() -> None:
    torch.manual_seed(0)
    model = monai_nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=1).eval()
    x = torch.rand(1, 1, 32, 32, 32)
    for name in ("grad_cam", "grad", "guided_backprop"):
        det = wsdet.Detector(model, method=name)
        maps, count = det.attention_and_count(x)
        assert maps.shape == (1, 32, 32, 32) and bool(torch.isfinite(maps).all())
        assert float(maps.abs().max()) > 0
        with torch.no_grad():
            torch.testing.assert_close(count, model(x).reshape(1))
        if name == "grad_cam":
            # 32³ ends at 1³ before pooling: the last layer with > 1 position is used.
            assert det.method.layer == "features.transition3.conv"


def plain_user_model(dim: int) -> nn.Module:
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d if dim == 2 else nn.AdaptiveAvgPool3d
    torch.manual_seed(dim)
    return nn.Sequential(
        conv(1, 4, 3, padding=1),
        nn.ReLU(),
        conv(4, 6, 3, padding=1),
        nn.ReLU(),
        pool(1),
        nn.Flatten(),
        nn.Linear(6, 1),
    )


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("method", wsdet.available_methods())
def test_plain_user_model_with_every_method(method: str, dim: int) -> None:
    if not wsdet.attention.get_method(method).__module__.startswith("wsdet."):
        pytest.skip("registered by another test")
    model = plain_user_model(dim)
    x = torch.rand(2, 1, *SIZES[dim])
    with torch.no_grad():
        model[-1].bias.fill_(2.6)  # predicted counts near 2.6 + small → rounded to 3
    det = wsdet.Detector(model, method=method)
    dets = det.detect(x)
    with torch.no_grad():
        counts = model(x)[:, 0].numpy()
    assert len(dets) == 2
    for d, c in zip(dets, counts, strict=True):
        assert d.count == pytest.approx(float(c), rel=1e-6)
        assert len(d) == min(int(np.floor(c + 0.5)), d.n_candidates)
        assert d.points.shape[1] == dim
        assert (d.points >= 0).all() and (d.points < np.array(SIZES[dim])).all()
        assert (np.diff(d.scores) <= 0).all()


# ------------------------------------------------------------------ benchmark


def test_benchmark_quick_smoke_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_attention", bench)  # for its dataclass
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "### 2D" in out and "### 3D" in out
    builtin = [
        m
        for m in wsdet.available_methods()
        if wsdet.attention.get_method(m).__module__.startswith("wsdet.")
    ]
    for method in builtin:
        assert out.count(f"| {method} | BaseCNN |") == 2, method  # 2D and 3D rows
    # Every peer comparison reproduced the peer's map (last column, relative difference).
    deltas = [
        float(r.rsplit("|", 2)[-2]) for r in out.splitlines() if "| Captum" in r or "| MONAI" in r
    ]
    assert deltas and max(deltas) < 1e-4
