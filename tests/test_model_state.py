"""Every built-in method leaves the model exactly as it was — also after an exception
raised inside the forward pass — and releases what it allocated (10 calls; 100 in the
slow tier)."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch
import torch.nn.modules.module as module_globals
from torch import nn
from torch.overrides import _get_current_function_mode_stack
from torch.utils.hooks import RemovableHandle

import wsdet
from wsdet.attention.base import get_method
from wsdet.models import GatedAttentionNet

#: Methods registered by wsdet itself (other test modules may register their own).
BUILTIN = [n for n in wsdet.available_methods() if get_method(n).__module__.startswith("wsdet.")]


def test_all_paper_methods_are_registered() -> None:
    assert set(BUILTIN) >= {
        "gp_unet",
        "gp_unet_no_residual",
        "gated_attention",
        "grad_cam",
        "grad",
        "guided_backprop",
        "intensity",
    }


class Boom(nn.Module):
    """Identity that raises when armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom inside the forward pass")
        return x


class StateNet(nn.Module):
    """BatchNorm, in-place ReLU, dropout, and two places to raise an exception."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(0.5)
        self.boom_early = Boom()  # before the feature / Grad-CAM layer
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.boom_late = Boom()  # after it
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.boom_early(self.drop(self.relu1(self.bn(self.conv1(x)))))
        h = self.relu2(self.conv2(h))
        return self.head(self.boom_late(self.flat(self.gap(h)))).squeeze(-1)


def mixed_state_net() -> StateNet:
    torch.manual_seed(0)
    model = StateNet()
    model.train()
    model.bn.eval()  # mixed training flags
    model.conv1.requires_grad_(False)  # partly frozen
    model.head.weight.grad = torch.full_like(model.head.weight, 3.0)  # a stale .grad
    return model


def hook_total(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks):
            n += len(d)
        n += len(m._backward_pre_hooks)
        n += len(m._forward_hooks_with_kwargs) + len(m._forward_pre_hooks_with_kwargs)
    return n


def global_hooks() -> tuple[int, ...]:
    return tuple(
        len(getattr(module_globals, name))
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "hooks": hook_total(model),
        "global_hooks": global_hooks(),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "grad_mode": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "function_modes": len(_get_current_function_mode_stack()),
    }


def assert_unchanged(before: dict[str, Any], model: nn.Module) -> None:
    after = snapshot(model)
    for key in ("hooks", "global_hooks", "training", "requires_grad", "inplace"):
        assert after[key] == before[key], key
    for key in ("grad_mode", "inference_mode", "function_modes"):
        assert after[key] == before[key], key
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k  # parameters and BN running stats
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)


@pytest.mark.parametrize("method", BUILTIN)
def test_state_restored_after_success(method: str) -> None:
    model = mixed_state_net()
    before = snapshot(model)
    det = wsdet.Detector(model, method=method)
    x = torch.rand(2, 1, 8, 8)
    maps = det.attention(x)
    assert maps.shape == (2, 8, 8)
    det.detect(x, n=2)
    det.count(x)
    assert_unchanged(before, model)
    # Calling the method directly (no Detector): the model's own (mixed) mode is used.
    model.bn.eval()
    model.drop.eval()
    before = snapshot(model)
    det.method.compute(x)
    assert_unchanged(before, model)


@pytest.mark.parametrize("method", BUILTIN)
def test_state_restored_on_gated_attention_net_3d(method: str) -> None:
    torch.manual_seed(0)
    model = GatedAttentionNet(3, width=2)
    model.conv3.requires_grad_(False)
    before = snapshot(model)
    with torch.no_grad():
        before["grad_mode"] = False
        maps = wsdet.Detector(model, method=method).attention(torch.rand(2, 1, 4, 6, 4))
        assert_unchanged(before, model)
    assert maps.shape == (2, 4, 6, 4)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("resolved", [False, True])
@pytest.mark.parametrize("where", ["boom_early", "boom_late"])
@pytest.mark.parametrize("method", BUILTIN)
def test_state_restored_after_exception_in_forward(
    method: str, where: str, resolved: bool, grad_enabled: bool
) -> None:
    model = mixed_state_net()
    det = wsdet.Detector(model, method=method)
    x = torch.rand(2, 1, 8, 8)
    if resolved:
        det.attention(x)  # layers discovered and cached: the next call hooks directly
    boom: Boom = getattr(model, where)
    boom.armed = True
    with torch.set_grad_enabled(grad_enabled):
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="boom inside the forward pass"):
            det.attention(x)
        assert_unchanged(before, model)
    boom.armed = False
    # The method still works afterwards, and gives the same map as a fresh one.
    torch.testing.assert_close(det.attention(x), wsdet.Detector(model, method=method).attention(x))


def _live_counts() -> tuple[int, int]:
    gc.collect()
    objs = gc.get_objects()
    # type(o), not isinstance: some lazy torch proxies warn when their __class__ is read.
    tensors = sum(1 for o in objs if issubclass(type(o), torch.Tensor))
    handles = sum(1 for o in objs if issubclass(type(o), RemovableHandle))
    return tensors, handles


@pytest.mark.parametrize(
    "calls",
    [
        # any leak made by every call shows after 10 calls already
        pytest.param(10, id="10calls"),
        # a leak made only every few calls (a cache growing by steps) needs more
        pytest.param(100, id="100calls", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("method", BUILTIN)
def test_no_memory_growth(method: str, calls: int) -> None:
    model = mixed_state_net()
    det = wsdet.Detector(model, method=method)
    x = torch.rand(2, 1, 8, 8)
    for _ in range(5):  # warm-up: layer discovery, lazy caches
        det.attention(x)
    before = _live_counts()
    hooks = hook_total(model)
    for _ in range(calls):
        det.attention(x)
    after = _live_counts()
    assert after[0] <= before[0], f"{after[0] - before[0]} tensors leaked over {calls} calls"
    assert after[1] <= before[1], f"{after[1] - before[1]} hook handles leaked"
    assert hook_total(model) == hooks
