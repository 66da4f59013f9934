"""grad_cam: hand-computed maps (with hand bilinear/trilinear upsampling), the CAM identity,
layer discovery, the truncated backward pass, and error messages."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import wsdet
from wsdet.attention.cam import CAM
from wsdet.attention.gradcam import GradCAM, LayerLeaves
from wsdet.models import BaseCNN, GatedAttentionNet, GPUnet

# ----------------------------------------------------------- hand model, 2D and 3D


def _weights(dim: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(7 + dim)
    return {
        "W1": g.choice([-1.0, -0.5, 0.5, 1.0], size=(2, 2**dim)),
        "B1": np.array([0.1, -0.2]),
        "V": np.array([[1.0, -1.5], [-0.75, 1.0]]),
        "D": np.array([0.05, 0.3]),
        "WH": np.array([1.0, -2.0]),
        "BH": np.array(0.7),
    }


class Strided(nn.Module):
    """conv k2 s2 (1->2) - relu1 - conv 1x1 (2->2) - relu2 - GAP - Linear, set weights."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        w = _weights(dim)
        self.conv1 = conv(1, 2, 2, stride=2)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(2, 2, 1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(2, 1)
        self.double()
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(w["W1"]).reshape(self.conv1.weight.shape))
            self.conv1.bias.copy_(torch.tensor(w["B1"]))
            self.conv2.weight.copy_(torch.tensor(w["V"]).reshape(self.conv2.weight.shape))
            self.conv2.bias.copy_(torch.tensor(w["D"]))
            self.head.weight.copy_(torch.tensor(w["WH"]).reshape(1, 2))
            self.head.bias.copy_(torch.tensor(w["BH"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.head(h.flatten(2).mean(2)).squeeze(-1)


def np_upsample_2x(m: np.ndarray) -> np.ndarray:
    """Linear upsampling by 2 per axis, align_corners=False, written out by hand.

    Output index ``o`` samples input coordinate ``(o + 0.5) / 2 - 0.5``, clamped at the
    borders: for a size-2 axis the 4 outputs are ``v0, .75 v0 + .25 v1, .25 v0 + .75 v1, v1``.
    """
    u = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    out = m
    for axis in range(m.ndim):
        out = np.moveaxis(np.tensordot(u, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out


def np_gradcam(img: np.ndarray, dim: int, layer: str, relu: bool) -> np.ndarray:
    """Grad-CAM of :class:`Strided` at ``relu1`` or ``relu2`` by hand (input 4 per axis)."""
    w = _weights(dim)
    coarse = (2,) * dim
    pre1 = np.zeros((2, *coarse))
    for p in itertools.product(range(2), repeat=dim):
        block = img[tuple(slice(2 * i, 2 * i + 2) for i in p)].reshape(-1)
        pre1[(slice(None), *p)] = w["W1"] @ block + w["B1"]
    a1 = np.maximum(pre1, 0)
    pre2 = np.einsum("kj,j...->k...", w["V"], a1) + w["D"].reshape(2, *([1] * dim))
    a2 = np.maximum(pre2, 0)
    z = 2**dim
    g_a2 = np.broadcast_to(w["WH"].reshape(2, *([1] * dim)) / z, a2.shape)
    if layer == "relu2":
        f, g = a2, g_a2
    else:
        f, g = a1, np.einsum("kj,k...->j...", w["V"], g_a2 * (pre2 > 0))
    alpha = g.reshape(2, -1).mean(1)
    m = np.einsum("k,k...->...", alpha, f)
    if relu:
        m = np.maximum(m, 0)
    return np_upsample_2x(m)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layer", ["relu1", "relu2"])
@pytest.mark.parametrize("dim", [2, 3])
def test_gradcam_equals_hand_map(dim: int, layer: str, relu: bool) -> None:
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(3, 1, *([4] * dim), generator=g, dtype=torch.double)
    model = Strided(dim)
    maps, out = GradCAM(model, layer=layer, relu=relu).compute(x)
    assert maps.shape == (3, *([4] * dim)) and maps.dtype == torch.double
    for i in range(3):
        ref = np_gradcam(x[i, 0].numpy(), dim, layer, relu)
        np.testing.assert_allclose(maps[i].numpy(), ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(out, model(x).detach())
    if not relu:
        assert (maps < 0).any(), "signed by default: the hand weights give negative values"


# ---------------------------------------------------------------- CAM identity


@pytest.mark.parametrize("dim", [2, 3])
def test_gradcam_of_pooled_layer_is_cam_over_positions(dim: int) -> None:
    # For a layer feeding GAP -> Linear: ∂ŷ/∂f_k(p) = w_k / Z, so Grad-CAM = CAM / Z.
    torch.manual_seed(dim)
    size = (10, 12) if dim == 2 else (6, 4, 8)
    x = torch.rand(2, 1, *size, dtype=torch.double)
    gp = GPUnet(dim, width=3).double().eval()
    z = int(np.prod(size))
    gc, y1 = GradCAM(gp).compute(x)
    cam, y2 = CAM(gp).compute(x)
    torch.testing.assert_close(gc * z, cam, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(y1, y2)
    base = BaseCNN(dim, width=3).double().eval()  # cat2 at half resolution, upsampled
    z_half = int(np.prod([s // 2 for s in size]))
    gc = GradCAM(base).compute(x)[0]
    cam = CAM(base).compute(x)[0]
    torch.testing.assert_close(gc * z_half, cam, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------- truncated backward


def test_no_graph_is_recorded_before_the_layer() -> None:
    torch.manual_seed(0)
    model = BaseCNN(2, width=2).eval()
    seen: dict[str, bool] = {}
    handles = [
        getattr(model, n).register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, o.requires_grad)
        )
        for n in ("conv1", "conv4", "gap", "head")
    ]
    try:
        method = GradCAM(model)
        method.compute(torch.rand(2, 1, 8, 8))  # first call resolves the layer
        seen.clear()
        method.compute(torch.rand(2, 1, 8, 8))
    finally:
        for h in handles:
            h.remove()
    assert method.layer == "cat2"
    assert seen == {"conv1": False, "conv4": False, "gap": True, "head": True}


def test_inplace_operation_after_the_layer() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    model = nn.Sequential(
        conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1)
    ).double()
    x = torch.randn(2, 1, 5, 5, dtype=torch.double)
    maps, _ = GradCAM(model, layer=conv).compute(x)
    # Hand: α_k = w_k · mean_p [f_k(p) > 0] / Z over the *pre-ReLU* features f.
    with torch.no_grad():
        f = conv(x)
        w = model[4].weight[0]
        alpha = (f > 0).double().flatten(2).mean(2) * w / 25
        ref = torch.einsum("bk,bkhw->bhw", alpha, f)
    torch.testing.assert_close(maps, ref, rtol=1e-10, atol=1e-14)
    assert (maps < 0).any()  # the pre-ReLU features were used, not the rectified ones


def test_reused_module_uses_its_last_call() -> None:
    torch.manual_seed(0)

    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 2, 3, padding=1)
            self.c2 = nn.Conv2d(2, 2, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.act(self.c2(self.act(self.c1(x))))
            return self.head(f.mean((2, 3))).squeeze(-1)

    model = Reuse().double()
    x = torch.rand(2, 1, 6, 6, dtype=torch.double)
    by_name = GradCAM(model, layer="act").compute(x)[0]
    cam = CAM(model).compute(x)[0]  # GAP -> Linear on the last call of act
    torch.testing.assert_close(by_name * 36, cam, rtol=1e-10, atol=1e-14)
    auto = GradCAM(model)
    torch.testing.assert_close(auto.compute(x)[0], by_name)
    assert auto.layer == "act"


# ----------------------------------------------------------- layer discovery


def test_declared_layer_is_used() -> None:
    for cls, name in ((BaseCNN, "cat2"), (GPUnet, "conv5"), (GatedAttentionNet, "gate")):
        det = wsdet.Detector(cls(2, width=2), method="grad_cam")
        assert det.method.layer is None
        det.attention(torch.rand(1, 1, 8, 8))
        assert det.method.layer == name


def test_auto_layer_on_plain_sequential() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
    )
    method = GradCAM(model)
    method.compute(torch.rand(2, 1, 7, 7))
    assert method.layer == "3"


def test_auto_layer_falls_back_to_last_spatial_module() -> None:
    class AmaxHead(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).amax(1)

    no_linear = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), AmaxHead()
    )
    method = GradCAM(no_linear)
    method.compute(torch.rand(2, 1, 7, 7))
    assert method.layer == "2"

    class TwoScales(nn.Module):  # GAP at two scales: CAM finds two feature modules
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(2, 3, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.head = nn.Linear(5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f1 = self.relu1(self.conv1(x))
            f2 = self.relu2(self.conv2(self.pool(f1)))
            return self.head(torch.cat([f1.mean((2, 3)), f2.mean((2, 3))], 1)).squeeze(-1)

    method = GradCAM(TwoScales())
    maps, _ = method.compute(torch.rand(2, 1, 8, 8))
    assert method.layer == "relu2" and maps.shape == (2, 8, 8)


class WithUnused(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(3, 1),
        )
        self.register_module("unused", nn.Conv2d(1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(5):
            x = self[k](x)
        return x


def test_layer_errors() -> None:
    model = WithUnused()
    x = torch.rand(2, 1, 6, 6)
    with pytest.raises(ValueError, match="layer: no submodule named 'nope'"):
        GradCAM(model, layer="nope")
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(model, layer=nn.ReLU())
    with pytest.raises(TypeError, match="layer must be"):
        GradCAM(model, layer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'unused' was not called"):
        GradCAM(model, layer="unused").compute(x)
    with pytest.raises(ValueError, match="needs feature maps"):
        GradCAM(model, layer="4").compute(x)
    with pytest.raises(TypeError, match="relu must be a bool"):
        GradCAM(model, relu=1)  # type: ignore[arg-type]
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="pass layer=<module or dotted name>"):
        GradCAM(mlp).compute(x)


def test_layer_output_not_used_is_an_error() -> None:
    class SideBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.side = nn.Conv2d(1, 2, 3, padding=1)
            self.head = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.side(x)
            return self.head(self.conv(x).mean((2, 3))).squeeze(-1)

    with pytest.raises(ValueError, match="does not depend"):
        GradCAM(SideBranch(), layer="side").compute(torch.rand(2, 1, 5, 5))


@pytest.mark.parametrize("dim", [2, 3])
def test_no_grad_and_inference_mode(dim: int) -> None:
    torch.manual_seed(1)
    model = BaseCNN(dim, width=2).eval()
    x = torch.rand(2, 1, *([6] * dim))
    method = GradCAM(model)
    ref, _ = method.compute(x)
    with torch.no_grad():
        a, _ = method.compute(x)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        b, _ = method.compute(x.clone())
    for p in model.parameters():
        p.requires_grad_(False)
    c, _ = method.compute(x)
    for m in (a, b, c):
        torch.testing.assert_close(m, ref, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


def test_layer_leaves_start_autograd_at_the_layer() -> None:
    torch.manual_seed(0)
    conv, head = nn.Conv2d(1, 2, 1), nn.Linear(2, 1)
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    hook = LayerLeaves("1")
    handle = net[1].register_forward_hook(hook)
    try:
        with torch.no_grad():  # the layers before the hooked one record no graph
            y = net(torch.rand(3, 1, 4, 5))
            assert y.requires_grad
            (g,) = torch.autograd.grad(y.sum(), hook.leaves[0])
            (w,) = torch.autograd.grad(y.sum(), conv.weight, allow_unused=True)
    finally:
        handle.remove()
    # y = head(mean(f)): dy/df = head.weight / (4 * 5) at every position
    expected = (head.weight[0] / 20).reshape(1, 2, 1, 1).expand(3, 2, 4, 5)
    torch.testing.assert_close(g, expected)
    assert w is None
    assert len(hook.leaves) == 1 and hook.outputs == []  # clones only kept on request
    hook.clear()
    assert hook.leaves == []


def test_layer_leaves_non_tensor_outputs() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    pair = Pair()
    with pytest.raises(TypeError, match="layer: 'pair' returned tuple"):
        LayerLeaves("pair")(pair, (), pair(torch.zeros(1)))
    lenient = LayerLeaves("pair", strict=False, keep_outputs=True)
    assert lenient(pair, (), pair(torch.zeros(1))) is None
    assert lenient.leaves == [] and lenient.outputs == []
