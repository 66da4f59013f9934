"""grad and guided_backprop: hand-computed maps, targets, channel rules, guided coverage.

Truth comes from NumPy re-derivations of the backward pass on tiny hand-weighted models
(Captum's testing style) and from Captum's GuidedBackprop on a module-only twin model.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import wsdet
from wsdet.attention.gradient import GuidedBackprop, InputGradient, reduce_channels
from wsdet.models import BaseCNN

# ------------------------------------------------------------------- tiny hand model

W1 = np.array(
    [
        [[1.0, -0.5, 0.0], [0.5, 1.0, -1.0], [0.0, 0.25, 0.5]],
        [[-1.0, 0.5, 0.5], [0.0, -0.5, 1.0], [1.0, 0.0, -0.25]],
    ]
)
B1 = np.array([0.1, -0.2])
V = np.array([[1.0, -1.5], [-0.75, 1.0]])  # conv2 1x1: V[out, in]
D = np.array([0.05, 0.3])
WH = np.array([1.0, -2.0])  # head weights
BH = 0.7
IMAGES = np.array(
    [
        [[0.0, 1.0, 2.0, 0.5, -1.0], [1.0, -2.0, 0.5, 1.5, 0.0], [0.25, 0.5, -1.0, 2.0, 1.0]],
        [[2.0, -1.0, 0.0, 1.0, 0.5], [-0.5, 1.0, 1.5, -2.0, 1.0], [1.0, 0.0, 0.5, 0.25, -1.5]],
    ]
)  # (2, 3, 5)


class Tiny(nn.Module):
    """conv3x3(1->2) - ReLU - conv1x1(2->2) - ReLU - GAP - Linear(2->1), set weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(2, 1)
        self.double()
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(W1).reshape(2, 1, 3, 3))
            self.conv1.bias.copy_(torch.tensor(B1))
            self.conv2.weight.copy_(torch.tensor(V).reshape(2, 2, 1, 1))
            self.conv2.bias.copy_(torch.tensor(D))
            self.head.weight.copy_(torch.tensor(WH).reshape(1, 2))
            self.head.bias.fill_(BH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.head(h.mean((2, 3))).squeeze(-1)


def np_forward(img: np.ndarray) -> dict[str, np.ndarray]:
    """Forward pass of :class:`Tiny` by loops."""
    h, w = img.shape
    pad = np.pad(img, 1)
    pre1 = np.zeros((2, h, w))
    for k in range(2):
        for i in range(h):
            for j in range(w):
                pre1[k, i, j] = (W1[k] * pad[i : i + 3, j : j + 3]).sum() + B1[k]
    a1 = np.maximum(pre1, 0)
    pre2 = np.einsum("kj,jhw->khw", V, a1) + D[:, None, None]
    a2 = np.maximum(pre2, 0)
    y = float((WH * a2.mean((1, 2))).sum() + BH)
    return {"pre1": pre1, "a1": a1, "pre2": pre2, "a2": a2, "y": np.array(y)}


def np_backward(img: np.ndarray, guided: bool) -> dict[str, np.ndarray]:
    """Input gradient (plain or guided) and the gradient at relu1's output, by hand."""
    f = np_forward(img)
    h, w = img.shape
    z = h * w
    g_a2 = np.broadcast_to(WH[:, None, None] / z, (2, h, w))
    if guided:
        g_a2 = np.maximum(g_a2, 0)
    g_pre2 = g_a2 * (f["pre2"] > 0)
    g_a1 = np.einsum("kj,khw->jhw", V, g_pre2)
    g_in1 = np.maximum(g_a1, 0) if guided else g_a1
    g_pre1 = g_in1 * (f["pre1"] > 0)
    g_pad = np.zeros((h + 2, w + 2))
    for k in range(2):
        for i in range(h):
            for j in range(w):
                g_pad[i : i + 3, j : j + 3] += W1[k] * g_pre1[k, i, j]
    return {**f, "x": g_pad[1:-1, 1:-1], "g_a1": g_a1}


def test_hand_model_is_not_trivial() -> None:
    # The hand weights exercise both masks: non-positive ReLU inputs and negative
    # incoming gradients at relu1 (otherwise guided == grad and the test proves little).
    b = [np_backward(img, guided=False) for img in IMAGES]
    assert all((r["pre1"] <= 0).any() and (r["pre1"] > 0).any() for r in b)
    assert all((r["g_a1"] < 0).any() and (r["g_a1"] > 0).any() for r in b)
    g = [np_backward(img, guided=True)["x"] for img in IMAGES]
    assert not np.allclose(b[0]["x"], g[0])


def test_grad_equals_hand_gradient() -> None:
    x = torch.tensor(IMAGES)[:, None]
    maps, out = InputGradient(Tiny()).compute(x)
    for i, img in enumerate(IMAGES):
        ref = np_backward(img, guided=False)
        np.testing.assert_allclose(maps[i].numpy(), ref["x"], rtol=1e-10, atol=1e-12)
        assert out[i].item() == pytest.approx(float(ref["y"]), rel=1e-12)
    assert maps.dtype == x.dtype and maps.shape == (2, 3, 5)


def test_guided_backprop_equals_hand_guided_gradient() -> None:
    x = torch.tensor(IMAGES)[:, None]
    maps, _ = GuidedBackprop(Tiny()).compute(x)
    for i, img in enumerate(IMAGES):
        ref = np_backward(img, guided=True)["x"]
        np.testing.assert_allclose(maps[i].numpy(), ref, rtol=1e-10, atol=1e-12)
    # Negative map values survive: conv1 has negative weights below the last ReLU.
    assert (maps < 0).any()


def test_grad_signed_and_finite_difference_3d() -> None:
    torch.manual_seed(0)
    model = BaseCNN(3, width=4).double().eval()
    x = torch.rand(2, 1, 4, 4, 4, dtype=torch.double)
    maps, _ = InputGradient(model).compute(x)
    assert (maps < 0).any() and (maps > 0).any()
    eps = 1e-6
    for idx in [(0, 0, 1, 2, 3), (1, 0, 3, 0, 1)]:
        xp, xm = x.clone(), x.clone()
        xp[idx] += eps
        xm[idx] -= eps
        with torch.no_grad():
            fd = (model(xp) - model(xm))[idx[0]] / (2 * eps)
        assert maps[(idx[0], *idx[2:])].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)


# ------------------------------------------------------------ targets and channels


def linear_model(c: int, h: int, w: int, k: int) -> tuple[nn.Module, torch.Tensor]:
    """``Flatten → Linear``: the input gradient of output ``j`` is weight row ``j``."""
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(k, c * h * w, generator=g, dtype=torch.double)
    weight[0, 0] = -5.0  # a dominant negative entry (channel 0, pixel (0, 0))
    lin = nn.Linear(c * h * w, k).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), lin), weight.reshape(k, c, h, w)


@pytest.mark.parametrize(
    ("target", "rows"),
    [(0, [1.0, 0.0, 0.0]), (2, [0.0, 0.0, 1.0]), (-2, [0.0, 1.0, 0.0])],
)
def test_int_target_selects_output_column(target: int, rows: list[float]) -> None:
    model, a = linear_model(1, 3, 4, 3)
    x = torch.rand(2, 1, 3, 4, dtype=torch.double)
    for cls in (InputGradient, GuidedBackprop):
        maps, out = cls(model, target=target).compute(x)
        expect = torch.einsum("k,kchw->chw", torch.tensor(rows, dtype=torch.double), a)[0]
        torch.testing.assert_close(maps, expect.expand(2, 3, 4), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, model(x)[:, target].detach())


def test_callable_target() -> None:
    model, a = linear_model(1, 3, 4, 3)
    x = torch.rand(3, 1, 3, 4, dtype=torch.double)
    maps, out = InputGradient(model, target=lambda o: o[:, 0] - 2 * o[:, 2]).compute(x)
    torch.testing.assert_close(maps[1], (a[0] - 2 * a[2])[0], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        o = model(x)
    torch.testing.assert_close(out, o[:, 0] - 2 * o[:, 2])


def test_target_errors() -> None:
    model, _ = linear_model(1, 3, 4, 3)
    x = torch.rand(2, 1, 3, 4, dtype=torch.double)
    with pytest.raises(ValueError, match="not one scalar per sample"):
        InputGradient(model).compute(x)
    with pytest.raises(ValueError, match="out of range"):
        InputGradient(model, target=3).compute(x)
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        InputGradient(model, target=lambda o: o).compute(x)


@pytest.mark.parametrize("how", ["sum", "mean", "max_abs", 0, 2, -1])
def test_channel_reduce_rules(how: str | int) -> None:
    model, a = linear_model(3, 2, 3, 1)
    x = torch.rand(2, 3, 2, 3, dtype=torch.double)
    maps, _ = InputGradient(model, channel_reduce=how).compute(x)  # type: ignore[arg-type]
    g = a[0].numpy()  # (3, 2, 3)
    if how == "sum":
        expect = g.sum(0)
    elif how == "mean":
        expect = g.mean(0)
    elif how == "max_abs":
        expect = np.zeros(g.shape[1:])
        for i in range(g.shape[1]):
            for j in range(g.shape[2]):
                c = int(np.argmax(np.abs(g[:, i, j])))
                expect[i, j] = g[c, i, j]
        assert (expect < 0).any()  # the sign is kept
    else:
        expect = g[how]
    np.testing.assert_allclose(maps[0].numpy(), expect, rtol=1e-12)
    np.testing.assert_allclose(maps[1].numpy(), expect, rtol=1e-12)


def test_channel_reduce_single_channel_is_identity() -> None:
    g = torch.randn(2, 1, 3, 4)
    for how in ("sum", "mean", "max_abs", 0):
        assert torch.equal(reduce_channels(g, how), g[:, 0])  # type: ignore[arg-type]


def test_channel_reduce_validation() -> None:
    model, _ = linear_model(3, 2, 3, 1)
    with pytest.raises(ValueError, match="channel_reduce must be one of"):
        InputGradient(model, channel_reduce="median")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel_reduce"):
        InputGradient(model, channel_reduce=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel_reduce"):
        GuidedBackprop(model, channel_reduce=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range for an input with 3"):
        InputGradient(model, channel_reduce=3).compute(torch.rand(1, 3, 2, 3).double())


def test_output_not_depending_on_input_is_an_error() -> None:
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((1, 2, 3)).detach()

    class Ignores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.p.expand(x.shape[0]) * 2

    x = torch.rand(2, 1, 5, 5)
    with pytest.raises(ValueError, match="no autograd graph"):
        InputGradient(Detached()).compute(x)
    with pytest.raises(ValueError, match="does not depend on the input"):
        GuidedBackprop(Ignores()).compute(x)


# -------------------------------------------------- autograd context and parameters


@pytest.mark.parametrize("cls", [InputGradient, GuidedBackprop])
def test_no_grad_inference_mode_and_frozen_parameters(cls: type[InputGradient]) -> None:
    model = Tiny()
    x = torch.tensor(IMAGES)[:, None]
    ref, ref_out = cls(model).compute(x)
    preset = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), preset, strict=True):
        p.grad = g.clone()
    method = cls(model)
    with torch.no_grad():
        a, _ = method.compute(x)
    with torch.inference_mode():
        x_inf = x.clone()  # an inference tensor
        b, out_b = method.compute(x_inf)
        assert torch.is_inference_mode_enabled()
    for p in model.parameters():
        p.requires_grad_(False)
    c, _ = method.compute(x)
    for m in (a, b, c):
        torch.testing.assert_close(m, ref, rtol=0, atol=0)
    torch.testing.assert_close(out_b, ref_out)
    assert all(not p.requires_grad for p in model.parameters())
    for p, g in zip(model.parameters(), preset, strict=True):
        assert torch.equal(p.grad, g)  # parameter .grad untouched


def test_grad_mode_restored_after_call() -> None:
    model = Tiny()
    x = torch.tensor(IMAGES)[:, None]
    with torch.no_grad():
        GuidedBackprop(model).compute(x)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


# ----------------------------------------------------------- batch independence


@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(2, 4),
    i=st.integers(0, 3),
    method=st.sampled_from(["grad", "guided_backprop", "grad_cam", "intensity"]),
    seed=st.integers(0, 2**16),
)
def test_sample_map_independent_of_batch(b: int, i: int, method: str, seed: int) -> None:
    i = i % b
    torch.manual_seed(seed)
    model = BaseCNN(2, width=2).double()
    model.train()  # the Detector puts it in eval mode for the call
    x = torch.rand(b, 1, 6, 8, dtype=torch.double)
    det = wsdet.Detector(model, method=method)
    batch = det.attention(x)
    alone = det.attention(x[i : i + 1])
    torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-10, atol=1e-14)
    assert model.training


def test_batchnorm_train_mode_caveat() -> None:
    # Documented caveat: with eval_mode=False and BatchNorm in training mode, a map
    # depends on the other samples of the batch (batch statistics).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 1),
    ).double()
    x = torch.rand(3, 1, 6, 6, dtype=torch.double)
    det = wsdet.Detector(model, method="grad", eval_mode=False)
    with pytest.warns(UserWarning, match="depend on the other samples"):
        batch = det.attention(x)
    alone = det.attention(x[:1])
    assert not torch.allclose(batch[:1], alone)
    det_eval = wsdet.Detector(model, method="grad")
    torch.testing.assert_close(det_eval.attention(x)[:1], det_eval.attention(x[:1]))


# ---------------------------------------------------------- guided backprop coverage


class ModuleReLUs(nn.Module):
    """Five conv layers, each followed by its own (not in-place) ``nn.ReLU``."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.convs = nn.ModuleList([conv(1 if k == 0 else 3, 3, 3, padding=1) for k in range(5)])
        self.relus = nn.ModuleList([nn.ReLU() for _ in range(5)])
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, relu in zip(self.convs, self.relus, strict=True):
            x = relu(conv(x))
        return self.head(x.flatten(2).mean(2)).squeeze(-1)


class FunctionalReLUs(ModuleReLUs):
    """The same network using every functional ReLU entry point, in place or not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        h = F.relu(c[0](x))
        h = torch.relu(c[1](h))
        h = c[2](h).relu()
        h = F.relu(c[3](h), inplace=True)
        h = c[4](h)
        h = torch.relu_(h) if h.shape[0] % 2 else h.relu_()
        return self.head(h.flatten(2).mean(2)).squeeze(-1)


class ReusedInplaceReLU(ModuleReLUs):
    """The same network with one ``nn.ReLU(inplace=True)`` module called five times."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__(dim)
        self.shared = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.shared(conv(x))
        return self.head(x.flatten(2).mean(2)).squeeze(-1)


@pytest.mark.parametrize("batch", [2, 3])  # even/odd picks Tensor.relu_ / torch.relu_
@pytest.mark.parametrize("variant", [FunctionalReLUs, ReusedInplaceReLU])
def test_guided_covers_functional_inplace_and_reused_relus(
    variant: type[ModuleReLUs], batch: int
) -> None:
    from captum.attr import GuidedBackprop as CaptumGuided

    torch.manual_seed(11)
    ref_model = ModuleReLUs().double().eval()
    model = variant().double().eval()
    model.load_state_dict(ref_model.state_dict(), strict=False)
    x = torch.randn(batch, 1, 7, 6, dtype=torch.double)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's own notices
        ref = CaptumGuided(ref_model).attribute(x.clone())[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every ReLU is guided: no warning expected
        ours, _ = GuidedBackprop(model).compute(x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
    plain, _ = InputGradient(model).compute(x)
    assert not torch.allclose(ours, plain)  # guidance did change something


def test_guided_warns_once_naming_unguided_activations() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
            self.act1 = nn.LeakyReLU(0.1)
            self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
            self.head = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.gelu(self.conv2(self.act1(self.conv1(x))))
            return self.head(torch.relu(h).mean((2, 3))).squeeze(-1)

    method = GuidedBackprop(Mixed())
    x = torch.rand(2, 1, 5, 5)
    with pytest.warns(UserWarning, match=r"leaky_relu, gelu .*'act1' \(LeakyReLU\)"):
        method.compute(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.compute(x)  # once per method object
    with pytest.warns(UserWarning, match="guides only ReLU"):
        GuidedBackprop(Mixed()).compute(x)  # a new object warns again


@pytest.mark.parametrize(
    "act", [nn.SiLU(), nn.ELU(), nn.PReLU(), nn.Softplus(), nn.Mish(), nn.Hardswish()]
)
def test_guided_warns_for_each_unguided_module(act: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), act, nn.Flatten(), nn.LazyLinear(1))
    x = torch.rand(2, 1, 5, 5)
    model(x)  # materialise the lazy layer
    with pytest.warns(UserWarning, match=type(act).__name__):
        GuidedBackprop(model).compute(x)


def test_warning_not_lost_when_a_freed_object_address_is_reused() -> None:
    # warn_once is keyed by the (weakly held) object, not by id(): a new method object
    # allocated at the address of a collected one must warn again.
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(18, 1))
    x = torch.rand(2, 1, 5, 5)
    for _ in range(6):
        with pytest.warns(UserWarning, match="gelu"):
            GuidedBackprop(model).compute(x)
