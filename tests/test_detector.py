"""Detector: CAM by hand, top-n, state restoration, input validation, a user's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import wsdet
from wsdet.attention.base import AttentionMethod, AttentionUndefinedError, register_method


def user_model(dim: int = 2, c_in: int = 1) -> nn.Module:
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d if dim == 2 else nn.AdaptiveAvgPool3d
    return nn.Sequential(
        conv(c_in, 4, 3, padding=1),
        nn.ReLU(),
        conv(4, 6, 3, padding=1),
        nn.ReLU(),
        pool(1),
        nn.Flatten(),
        nn.Linear(6, 1),
    )


def hook_total(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def snapshot(model: nn.Module):
    return (
        hook_total(model),
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


def assert_same(a, b):
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert a[2] == b[2]
    for p, q in zip(a[3], b[3], strict=True):
        assert torch.equal(p, q)
    for p, q in zip(a[4], b[4], strict=True):
        assert (p is None and q is None) or torch.equal(p, q)


@pytest.mark.parametrize("dim", [2, 3])
def test_cam_equals_hand_sum_on_set_weights(dim):
    torch.manual_seed(0)
    m = user_model(dim)
    with torch.no_grad():
        m[6].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0, -1.0]]))
        m[6].bias.fill_(0.7)
    x = torch.rand(3, 1, *([6] * dim))
    det = wsdet.Detector(m, method="gp_unet")
    maps = det.attention(x)
    f = m[:4](x).detach()
    w = m[6].weight[0].detach()
    ref = sum(w[k] * f[:, k] for k in range(6))
    torch.testing.assert_close(maps, ref, rtol=1e-5, atol=1e-6)
    # spatial mean + bias = output (GAP -> Linear)
    out = det.count(x)
    torch.testing.assert_close(maps.flatten(1).mean(1) + 0.7, out, rtol=1e-5, atol=1e-5)


def test_cam_exact_tiny_model():
    # one 1x1 conv with weight 2 -> relu -> GAP -> linear w=3: map = 3*relu(2x)
    m = nn.Sequential(
        nn.Conv2d(1, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 1)
    )
    with torch.no_grad():
        m[0].weight.fill_(2.0)
        m[0].bias.fill_(0.0)
        m[4].weight.fill_(3.0)
        m[4].bias.fill_(1.0)
    x = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    maps = wsdet.Detector(m).attention(x)
    assert maps.tolist() == [[[6.0, 0.0], [3.0, 0.0]]]


def test_map_shape_device_dtype():
    m = user_model(3).double()
    x = torch.rand(2, 1, 5, 6, 7, dtype=torch.float64)
    maps = wsdet.Detector(m).attention(x)
    assert maps.shape == (2, 5, 6, 7) and maps.dtype == torch.float64
    assert maps.device == x.device


def test_detect_top_n_rules():
    torch.manual_seed(1)
    m = user_model(2)
    x = torch.rand(3, 1, 24, 24)
    det = wsdet.Detector(m)
    allc = det.detect(x, n="all", size=3)
    counts = det.count(x).numpy()
    auto = det.detect(x, size=3)
    for a, d, c in zip(allc, auto, counts, strict=True):
        k = max(0, int(np.floor(c + 0.5)))
        assert len(d) == min(k, len(a))
        np.testing.assert_array_equal(d.points, a.points[: len(d)])
        assert d.count == pytest.approx(float(c))
        assert np.all(np.diff(a.scores) <= 0)
        assert a.points.dtype == np.int64 and a.points.shape[1] == 2
    per = det.detect(x, n=[0, 1, 2.5], size=3)
    assert [len(d) for d in per] == [0, 1, min(3, len(allc[2]))]
    with pytest.raises(ValueError, match="one per image"):
        det.detect(x, n=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        det.detect(x, n=-1)


def test_detect_rounding_half_up_from_count():
    # a model whose count is exactly 2.5 -> 3 detections (banker's rounding would give 2)
    m = user_model(2)
    with torch.no_grad():
        m[6].weight.fill_(1e-3)
        m[6].bias.fill_(0.0)

    class Shift(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * 0 + 2.5

    x = torch.rand(1, 1, 16, 16) + 0.1
    det = wsdet.Detector(Shift(m), method="intensity")
    d = det.detect(x, size=3)[0]
    assert d.count == 2.5 and len(d) == 3


@pytest.mark.parametrize("train", [True, False])
def test_model_state_restored_after_calls(train):
    m = user_model(2)
    m.train(train)
    m[2].weight.requires_grad_(False)
    before = snapshot(m)
    det = wsdet.Detector(m)
    x = torch.rand(2, 1, 12, 12)
    det.attention(x)
    det.detect(x)
    det.count(x)
    with torch.no_grad():
        det.detect(x)
    assert_same(before, snapshot(m))


def test_model_state_restored_after_exception():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = user_model(2)
            self.fail = False

        def forward(self, x):
            y = self.net[:4](x)
            if self.fail:
                raise RuntimeError("boom")
            return self.net[4:](y)

    m = Boom()
    m.train()
    det = wsdet.Detector(m)
    x = torch.rand(2, 1, 10, 10)
    det.attention(x)  # discovery on a working call
    before = snapshot(m)
    m.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        det.attention(x)
    with pytest.raises(RuntimeError, match="boom"):
        det.count(x)
    assert_same(before, snapshot(m))
    # discovery itself failing also leaves no hooks
    det2 = wsdet.Detector(m)
    with pytest.raises(RuntimeError, match="boom"):
        det2.detect(x)
    assert_same(before, snapshot(m))


def test_input_errors():
    det = wsdet.Detector(user_model(2))
    with pytest.raises(ValueError, match=r"x must have shape"):
        det.attention(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        det.attention(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        det.attention(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="spatial dims"):
        det.attention(torch.rand(1, 1, 4, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        det.attention(torch.ones(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        det.attention(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ValueError, match="method must be one of"):
        wsdet.Detector(user_model(2), method="nope")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        wsdet.Detector("model")  # type: ignore[arg-type]


def test_no_linear_head_is_a_precise_error():
    class NoHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x).amax(dim=(1, 2, 3))

    with pytest.raises(AttentionUndefinedError, match="grad_cam") as err:
        wsdet.Detector(NoHead()).attention(torch.rand(2, 1, 8, 8))
    assert err.value.reason == "no_linear_head"


def test_functional_features_found_and_wrong_explicit_features_rejected():
    class CatModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3, padding=1)
            self.b = nn.Conv2d(1, 3, 3, padding=1)
            self.fc = nn.Linear(5, 1)

        def forward(self, x):
            f = torch.cat([self.a(x), self.b(x)], 1) * 2  # not a module output
            return self.fc(f.mean((2, 3)))

    m = CatModel()
    x = torch.rand(2, 1, 8, 8)
    # the pooled maps are 2*a and 2*b, found by what is pooled (no module returns them)
    maps, y = wsdet.Detector(m).attention_and_count(x)
    f = 2 * torch.cat([m.a(x), m.b(x)], 1).detach()
    ref = torch.einsum("bkhw,k->bhw", f, m.fc.weight[0].detach())
    torch.testing.assert_close(maps, ref)
    torch.testing.assert_close(maps.mean((1, 2)) + m.fc.bias.detach(), y)
    # the modules a and b are not what is pooled (half of it): an error, never a wrong map
    with pytest.raises(ValueError, match=r"not the input of the head 'fc'.*features='auto'"):
        wsdet.Detector(m, features=["a", "b"], head="fc").attention(x)
    with pytest.raises(ValueError, match="no submodule named"):
        wsdet.Detector(m, features=["zz"], head="fc").attention(x)


def test_multi_scale_auto_discovery():
    class TwoScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hi = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
            self.lo = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(5, 1)

        def forward(self, x):
            h, lo = self.hi(x), self.lo(x)
            return self.fc(torch.cat([h.mean((2, 3)), lo.mean((2, 3))], 1)).squeeze(1)

    torch.manual_seed(0)
    m = TwoScale()
    x = torch.rand(2, 1, 8, 10)
    det = wsdet.Detector(m, method="gated_attention")
    maps = det.attention(x)
    w = m.fc.weight[0].detach()
    h, lo = m.hi(x).detach(), m.lo(x).detach()
    ref_lo = torch.einsum("bkhw,k->bhw", lo, w[2:])
    ref = (
        torch.einsum("bkhw,k->bhw", h, w[:2])
        + torch.nn.functional.interpolate(
            ref_lo[:, None], size=(8, 10), mode="bilinear", align_corners=False
        )[:, 0]
    )
    torch.testing.assert_close(maps, ref, rtol=1e-5, atol=1e-6)
    # the container and its last child return the same tensor: either is a correct answer
    names = [n for n, _ in det.method.layers.features]
    assert names[0] in ("hi", "hi.1") and names[1] in ("lo", "lo.2")


def test_user_model_end_to_end_and_no_grad():
    torch.manual_seed(0)
    m = user_model(2)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        dets = wsdet.Detector(m, method="gp_unet").detect(x, n=2)
    assert [d.points.shape for d in dets] == [(2, 2), (2, 2)]
    assert all(np.isfinite(d.count) for d in dets)


def test_register_custom_method():
    @register_method("test_ones", overwrite=True)
    class Ones(AttentionMethod):
        def compute(self, x):
            with torch.inference_mode():
                return torch.ones_like(x[:, 0]), self.model(x).reshape(-1)

    assert "test_ones" in wsdet.available_methods()
    maps = wsdet.Detector(user_model(2), method="test_ones").attention(torch.rand(1, 1, 4, 4))
    assert torch.equal(maps, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="already registered"):
        register_method("test_ones", type("Other", (AttentionMethod,), {}))
    with pytest.raises(TypeError, match="subclass"):
        register_method("bad", int)  # type: ignore[arg-type]
