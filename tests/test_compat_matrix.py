"""The compatibility matrix: users' models × the built-in attention methods.

Every cell of :data:`compat_models.CASES` × :data:`compat_models.METHODS` either works and
equals an independent reference, or raises :class:`AttentionUndefinedError` with the
expected ``reason``; which one is data (``Case.expected``), the same data that renders the
table of ``docs/bring_your_own_model.md``.

References, never wsdet's code:

* CAM family: a hand CAM (the test calls the model's submodules itself to get the pooled
  features), ``Σ_k w_k f_k`` with the head's weight row (times the number of positions
  for sum pooling), upsampled with ``F.interpolate(align_corners=False)`` when coarser;
  the decomposition itself is checked: ``Σ_s mean(map_s) + bias == output``.
* ``grad``: Captum ``Saliency(abs=False)``, summed over channels.
* ``guided_backprop``: a hand guided backprop (every ReLU call guided, through a
  ``TorchFunctionMode``); also Captum ``GuidedBackprop`` where it applies (models whose
  ReLUs are all ``nn.ReLU`` modules, the only ones Captum guides).
* ``grad_cam``: Captum ``LayerGradCam(relu_attributions=False)`` on the layer wsdet names,
  upsampled by ``LayerAttribution.interpolate`` (bi/trilinear, ``align_corners=False``).
* ``intensity``: ``x[:, 0]``.

Every cell, working or not, also checks that the model is left as it was: state_dict
bit-identical, ``training``/``requires_grad``/``inplace`` flags, no hooks, no ``.grad``,
the input untouched, autograd mode restored.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from compat_models import (
    CAM_METHODS,
    CASES,
    MARK_END,
    MARK_START,
    METHODS,
    OK,
    REASONS,
    Case,
    by_name,
    render_matrix,
    update_page,
)
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import wsdet
from wsdet.attention.base import AttentionUndefinedError

captum_attr = pytest.importorskip("captum.attr")
pytest.importorskip("monai.networks.nets")

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "bring_your_own_model.md"
MODES = {2: "bilinear", 3: "trilinear"}


@pytest.fixture(autouse=True)
def _quiet_peers() -> Iterator[None]:
    # Captum and MONAI announce their own hooks and input flags. wsdet's own warnings
    # about unguided activations (softplus) and about CAM features coarser than 1/16 of
    # the input (the /32 networks here run at their smallest inputs) are not the point.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"captum\..*|monai\..*")
        warnings.filterwarnings("ignore", message=".*required_grads has been set.*")
        warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU.*")
        warnings.filterwarnings("ignore", message="guided_backprop guides only ReLU")
        warnings.filterwarnings("ignore", message="the CAM features have shape")
        yield


# ------------------------------------------------------------------ model state


@dataclass
class Snapshot:
    state: dict[str, Tensor]
    training: list[tuple[str, bool]]
    requires_grad: list[tuple[str, bool]]
    inplace: list[tuple[str, bool]]
    hooks: list[tuple[str, tuple[int, ...]]]
    global_hooks: tuple[int, ...]


def _hook_counts(m: nn.Module) -> tuple[int, ...]:
    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
    )
    return tuple(len(getattr(m, n, {})) for n in names)


def _global_hooks() -> tuple[int, ...]:
    mod = torch.nn.modules.module
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return tuple(len(getattr(mod, n, {})) for n in names)


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        training=[(n, m.training) for n, m in model.named_modules()],
        requires_grad=[(n, p.requires_grad) for n, p in model.named_parameters()],
        inplace=[
            (n, m.inplace)
            for n, m in model.named_modules()
            if isinstance(getattr(m, "inplace", None), bool)
        ],
        hooks=[(n, _hook_counts(m)) for n, m in model.named_modules()],
        global_hooks=_global_hooks(),
    )


def bits(t: Tensor) -> Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def assert_bit_identical(a: Tensor, b: Tensor, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert torch.equal(bits(a), bits(b)), f"{what} changed"


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    after = snapshot(model)
    assert after.state.keys() == before.state.keys()
    for k, v in before.state.items():
        assert_bit_identical(after.state[k], v, f"state_dict[{k!r}]")
    assert after.training == before.training
    assert after.requires_grad == before.requires_grad
    assert after.inplace == before.inplace
    assert after.hooks == before.hooks
    assert after.hooks == [(n, (0,) * 6) for n, _ in after.hooks], "hooks left on the model"
    assert after.global_hooks == before.global_hooks
    assert all(p.grad is None for p in model.parameters()), "parameter .grad was written"
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


# ------------------------------------------------------------------- references


class Explained(nn.Module):
    """``x -> (B,)``: the model followed by the case's target selection (for Captum)."""

    def __init__(self, model: nn.Module, select: Callable[[Any], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.select = select

    def forward(self, x: Tensor) -> Tensor:
        return self.select(self.model(x))


def upsample(m: Tensor, size: torch.Size) -> Tensor:
    if tuple(m.shape[1:]) == tuple(size):
        return m
    mode = MODES[len(size)]
    return F.interpolate(m[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def cam_reference(case: Case, model: nn.Module, x: Tensor) -> Tensor:
    assert case.cam is not None
    with torch.no_grad():
        ref = case.cam(model, x)
        y = case.explain(model(x))
        total: Tensor | None = None
        means = torch.zeros_like(y)
        for f, w, s in zip(ref.features, ref.weights, ref.scales, strict=True):
            assert f.ndim == x.ndim and f.shape[1] == w.numel()
            raw = s * torch.einsum("k,bk...->b...", w.to(f.dtype), f)
            means = means + raw.flatten(1).mean(1)
            up = upsample(raw, x.shape[2:])
            total = up if total is None else total + up
        # the hand decomposition is the model: Σ_s mean(map_s) + bias == output
        torch.testing.assert_close(
            means + ref.bias, y, rtol=1e-4, atol=1e-5 * (1 + float(y.abs().max()))
        )
    assert total is not None
    return total


def grad_reference(case: Case, model: nn.Module, x: Tensor) -> Tensor:
    sal = captum_attr.Saliency(Explained(model, case.explain))
    return sal.attribute(x.clone(), abs=False).sum(1).detach()  # type: ignore[no-any-return]


class _RefGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return g.clamp_min(0) * (out > 0).to(g.dtype)


_RELUS = (F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_)


class _GuideEveryReLU(TorchFunctionMode):
    """Every ReLU call (module or functional) → a guided, out-of-place ReLU."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if any(func is r for r in _RELUS):
            return _RefGuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_reference(case: Case, model: nn.Module, x: Tensor) -> Tensor:
    leaf = x.clone().requires_grad_()
    with _GuideEveryReLU():
        y = case.explain(model(leaf))
    (g,) = torch.autograd.grad(y.sum(), leaf)
    hand = g.sum(1)
    if not case.functional_relu:  # Captum guides nn.ReLU modules, so agrees here
        cap = captum_attr.GuidedBackprop(Explained(model, case.explain))
        assert_maps_close(cap.attribute(x.clone()).sum(1).detach(), hand, "captum vs hand")
    return hand


def resolve_layer(model: nn.Module, name: str | None) -> nn.Module:
    assert isinstance(name, str), f"det.method.layer should name the layer, got {name!r}"
    named = dict(model.named_modules())
    key = name.removeprefix("_orig_mod.")
    assert key in named, f"det.method.layer {name!r} is not a submodule name"
    return named[key]


def grad_cam_reference(case: Case, model: nn.Module, x: Tensor, layer: str | None) -> Tensor:
    mod = resolve_layer(model, layer)
    gc = captum_attr.LayerGradCam(Explained(model, case.explain), mod)
    attr = gc.attribute(x.clone(), relu_attributions=False)
    assert attr.ndim == x.ndim and attr[0, 0].numel() > 1, f"layer {layer!r}: one voxel"
    up = captum_attr.LayerAttribution.interpolate(attr, tuple(x.shape[2:]), MODES[case.dim])
    return up[:, 0].detach()  # type: ignore[no-any-return]


def assert_maps_close(ours: Tensor, ref: Tensor, what: str = "") -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, what
    scale = float(ref.abs().max())
    assert scale > 0, f"{what}: a vacuous comparison, the reference map is all zeros"
    rel, atol = (1e-10, 1e-300) if ref.dtype == torch.float64 else (1e-5, 1e-12)
    err = float((ours - ref).abs().max())
    assert err <= rel * scale + atol, (
        f"{what}: max |ours - ref| = {err:.3g}, max |ref| = {scale:.3g}"
    )


def reference(case: Case, method: str, model: nn.Module, x: Tensor, det: Any) -> Tensor:
    if method in CAM_METHODS:
        # single-scale models: gated_attention's multi-scale CAM is gp_unet's CAM
        return cam_reference(case, model, x)
    if method == "grad":
        return grad_reference(case, model, x)
    if method == "guided_backprop":
        return guided_reference(case, model, x)
    if method == "grad_cam":
        return grad_cam_reference(case, model, x, det.method.layer)
    assert method == "intensity"
    return x[:, 0].clone()


# ------------------------------------------------------------------------- cells


def _cells() -> list[Any]:
    out = []
    for case in CASES:
        marks = [pytest.mark.slow] if case.slow else []
        for method in METHODS:
            out.append(pytest.param(case.name, method, id=f"{case.name}-{method}", marks=marks))
    return out


def reference_model(case: Case, model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of the (unwrapped) model, for the references."""
    inner = getattr(model, "_orig_mod", model)
    return copy.deepcopy(inner).eval()


@pytest.mark.parametrize(("name", "method"), _cells())
def test_cell(name: str, method: str) -> None:
    case = by_name(name)
    expected = case.expected[method]
    model = case.make_model()
    x = case.make_input()
    x_before = x.clone()
    ref_model = reference_model(case, model)
    before = snapshot(model)
    inner = getattr(model, "_orig_mod", model)
    assert all(m.training for m in inner.modules()) == case.train_mode

    if expected != OK:
        with pytest.raises(AttentionUndefinedError) as info:
            det = wsdet.Detector(model, method=method, target=case.target)
            det.attention_and_count(x)
        assert info.value.reason == expected, str(info.value)
        if expected == "one_voxel":
            assert str(case.min_side) in str(info.value), str(info.value)
        assert_unchanged(model, before)
        assert_bit_identical(x, x_before, "the input")
        return

    det = wsdet.Detector(model, method=method, target=case.target)
    maps, count = det.attention_and_count(x)
    assert_unchanged(model, before)
    assert_bit_identical(x, x_before, "the input")
    assert not x.requires_grad and x.grad is None

    assert maps.shape == (x.shape[0], *x.shape[2:]) and maps.dtype == x.dtype
    with torch.no_grad():
        y = case.explain(ref_model(x))
    assert count.shape == y.shape
    assert_maps_close(count.detach()[:, None], y[:, None], "count")

    ref = reference(case, method, ref_model, x, det)
    assert_maps_close(maps.detach(), ref, f"{name}/{method}")
    if method != "intensity":  # a map, not a constant (e.g. from a one-voxel layer)
        assert bool((ref.flatten(1).std(1) > 0).all())


# --------------------------------------------------------------- beyond the cells


def test_matrix_covers_every_builtin_method_and_enough_models() -> None:
    builtin = {
        m
        for m in wsdet.available_methods()
        if wsdet.attention.get_method(m).__module__.startswith("wsdet.")
    }
    assert builtin == set(METHODS)
    assert len({c.name for c in CASES}) == len(CASES) >= 22
    for c in CASES:
        assert set(c.expected) == set(METHODS)
        assert all(v == OK or v in REASONS for v in c.expected.values()), c.name
        assert (c.cam is not None) or c.cam_reason != OK, f"{c.name}: no hand CAM"


def test_cam_undefined_cases_are_undefined_by_hand() -> None:
    # The undefined rows really lack what CAM needs; the defined rows' hand decomposition
    # is checked in every CAM cell (Σ mean(map) + bias == output).
    flat = by_name("flatten_head").make_model()
    assert isinstance(flat.fc, nn.Linear) and flat.fc.in_features > flat.body.c2.out_channels
    mlp = by_name("mlp_head").make_model()
    assert sum(isinstance(m, nn.Linear) for m in mlp.modules()) == 2
    dens = by_name("density_sum").make_model()
    assert not any(isinstance(m, nn.Linear) for m in dens.modules())


def test_too_small_min_side_is_the_smallest_input() -> None:
    case = by_name("too_small")
    assert case.cam is not None and case.min_side is not None
    model = case.make_model()
    for side, ok in ((case.min_side - 1, False), (case.min_side, True)):
        x = torch.rand(1, 3, side, side)
        with torch.no_grad():
            f = case.cam(model, x).features[0]
        assert (min(f.shape[2:]) >= 2) == ok, (side, tuple(f.shape))


def test_grad_cam_on_a_one_voxel_layer_raises() -> None:
    case = by_name("too_small")
    model, x = case.make_model(), case.make_input()
    before = snapshot(model)
    det = wsdet.Detector(model, method="grad_cam", layer="layer4")
    with pytest.raises(AttentionUndefinedError) as info:
        det.attention(x)
    assert info.value.reason == "one_voxel"
    assert_unchanged(model, before)


def test_train_mode_case_is_discriminating() -> None:
    # Eval-mode maps are asserted in the train_mode cells; they would differ in train mode.
    case = by_name("train_mode")
    model, x = case.make_model(), case.make_input()
    with torch.no_grad():
        y_train = case.explain(copy.deepcopy(model)(x))
        y_eval = case.explain(copy.deepcopy(model).eval()(x))
    assert not torch.allclose(y_train, y_eval, rtol=1e-3, atol=1e-3)


def test_docs_matrix_is_generated_from_the_expected_outcomes() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert text.count(MARK_START) == 1 and text.count(MARK_END) == 1
    table = text.split(MARK_START)[1].split(MARK_END)[0]
    assert table.strip() == render_matrix().strip(), (
        "docs/bring_your_own_model.md is stale: run `python docs/gen_compat_matrix.py`"
    )
    assert update_page(text) == text
    assert "python docs/gen_compat_matrix.py" in text
    # one table row per case, in order, with each expected outcome
    rows = [r for r in table.strip().splitlines()[2:]]
    assert len(rows) == len(CASES)
    for row, case in zip(rows, CASES, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        got = ["ok" if c == "✓" else c.strip("`") for c in cells]
        assert got == [case.expected[m] for m in METHODS], case.name


def test_renderer_follows_the_data() -> None:
    case = by_name("mlp_head")
    row = render_matrix([case]).splitlines()[2]
    assert row.count("`mlp_head`") == len(CAM_METHODS) and row.count("✓") == 4
    edited = copy.copy(case)
    edited.grad_cam_reason = "one_voxel"
    assert "`one_voxel`" in render_matrix([edited])
    with pytest.raises(ValueError, match="markers"):
        update_page("no markers here")
