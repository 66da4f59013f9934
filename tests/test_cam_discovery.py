"""CAM discovery by what is pooled: functional pooling forms, verified explicit layers, and
the precise errors where CAM is undefined. References are hand-computed from the model's
own submodules (Σ_k w_k f_k with f rebuilt by hand)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsdet
from wsdet.attention.base import AttentionUndefinedError
from wsdet.attention.cam import discover_cam_layers


class Functional(nn.Module):
    """Functional ReLUs; the pooling written in one of the ways users write it."""

    def __init__(self, pool: str, dim: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.conv1 = conv(1, 5, 3, padding=1)
        self.conv2 = conv(5, 4, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4, 1)
        self.pool = pool

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv2(torch.relu(self.conv1(x)))
        spatial = tuple(range(2, f.ndim))
        if self.pool == "module":
            v = torch.flatten(self.gap(torch.relu(f)), 1)
        elif self.pool == "inplace_functional":
            v = torch.flatten(F.adaptive_avg_pool2d(F.relu(f, inplace=True), (1, 1)), 1)
        elif self.pool == "mean":
            v = torch.relu(f).mean(spatial)
        elif self.pool == "mean_negative_dims":
            v = torch.relu(f).mean(dim=tuple(-d for d in range(1, f.ndim - 1)))
        elif self.pool == "avg_pool":
            v = F.avg_pool2d(torch.relu(f), f.shape[2:]).flatten(1)
        elif self.pool == "flatten_mean":
            v = torch.flatten(torch.relu(f), 2).mean(-1)
        elif self.pool == "view_mean":
            g = torch.relu(f)
            v = g.view(g.shape[0], g.shape[1], -1).mean(2)
        elif self.pool == "sum":
            v = torch.relu(f).sum(spatial)
        else:
            raise AssertionError(self.pool)
        return self.fc(v).squeeze(1)


POOLS_2D = [
    "module",
    "inplace_functional",
    "mean",
    "mean_negative_dims",
    "avg_pool",
    "flatten_mean",
    "view_mean",
    "sum",
]


def hand_cam(m: Functional, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        f = m.features(x)
        cam = torch.einsum("bk...,k->b...", f, m.fc.weight[0])
    return cam * (f[0, 0].numel() if m.pool == "sum" else 1)


@pytest.mark.parametrize("pool", POOLS_2D)
def test_functional_pooling_forms_give_the_hand_cam(pool: str) -> None:
    torch.manual_seed(0)
    m = Functional(pool).eval()
    x = torch.rand(3, 1, 9, 11)
    maps, y = wsdet.Detector(m).attention_and_count(x)
    ref = hand_cam(m, x)
    torch.testing.assert_close(maps, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    # the identity the method checks: mean(map) + bias == output
    torch.testing.assert_close(maps.mean((1, 2)) + m.fc.bias.detach(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["module", "mean_negative_dims", "flatten_mean", "sum"])
def test_functional_pooling_forms_3d(pool: str) -> None:
    torch.manual_seed(1)
    m = Functional(pool, dim=3).eval()
    x = torch.rand(2, 1, 5, 6, 7)
    maps = wsdet.Detector(m).attention(x)
    ref = hand_cam(m, x)
    torch.testing.assert_close(maps, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_the_pooled_tensor_is_named_when_a_module_returns_it() -> None:
    seq = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 1),
    )
    layers = discover_cam_layers(seq, torch.rand(2, 1, 6, 6))
    assert layers.features == (("1", 0),) and layers.head == "4"
    # after an in-place functional op the module's output is no longer what is pooled
    layers = discover_cam_layers(Functional("inplace_functional"), torch.rand(2, 1, 6, 6))
    assert layers.features[0][0].startswith("<tensor pooled by adaptive_avg_pool2d")


# --------------------------------------------------------- explicit layers verified


def test_explicit_features_before_a_functional_relu_are_rejected() -> None:
    torch.manual_seed(0)
    m = Functional("mean").eval()
    x = torch.rand(2, 1, 8, 8)
    # conv2's output is pooled only after torch.relu: its CAM would be silently wrong
    with pytest.raises(ValueError, match=r"'conv2'.*not the input of the head 'fc'.*auto"):
        wsdet.Detector(m, features="conv2").attention(x)


def test_explicit_pooled_vector_as_features_is_rejected() -> None:
    m = Functional("module").eval()
    with pytest.raises(ValueError, match=r"'gap' returns a single voxel per channel"):
        wsdet.Detector(m, features="gap").attention(torch.rand(2, 1, 8, 8))


class MLPHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).mean((2, 3)))))


def test_explicit_head_that_is_not_the_output_is_rejected() -> None:
    m = Functional("mean").eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"head: 'conv2' must be an nn\.Linear"):
        wsdet.Detector(m, head="conv2").attention(x)
    with pytest.raises(ValueError, match=r"head: the output of 'fc1' is not the explained output"):
        wsdet.Detector(MLPHead(), head="fc1").attention(x)
    with pytest.raises(ValueError, match="no submodule named"):
        wsdet.Detector(m, head="nope").attention(x)


def test_explicit_grad_cam_layer_of_one_voxel_is_an_error() -> None:
    seq = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 1),
    )
    with pytest.raises(AttentionUndefinedError, match="single voxel") as err:
        wsdet.Detector(seq, method="grad_cam", layer="1").attention(torch.rand(2, 1, 8, 8))
    assert err.value.reason == "one_voxel"
    with pytest.raises(ValueError, match="no submodule named"):
        wsdet.Detector(seq, method="grad_cam", layer="9")


# --------------------------------------------------------- where CAM is undefined


class NoPooling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class MaxPooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_max_pool2d(self.conv(x), 1).flatten(1))


class DensitySum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.conv(x)).sum((1, 2, 3))


class SoftplusCount(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.fc(self.conv(x).mean((2, 3)))).squeeze(1)


class Strided(nn.Module):
    """Two stride-4 convolutions: (n - 1) // 4 + 1 per layer, 1 voxel below n = 17."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, stride=4, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=4, padding=1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "reason", "pattern"),
    [
        (NoPooling, "no_pooling", "no global average"),
        (MaxPooled, "no_pooling", "max pooling"),
        (MLPHead, "mlp_head", r"two or more Linear layers \('fc1' \.\.\. 'fc2'\)"),
        (DensitySum, "no_linear_head", "density map"),
        (SoftplusCount, "no_linear_head", "softplus"),
    ],
)
@pytest.mark.parametrize("method", ["gp_unet", "gated_attention"])
def test_undefined_cam_is_a_precise_error(
    model: type[nn.Module], reason: str, pattern: str, method: str
) -> None:
    with pytest.raises(AttentionUndefinedError, match=pattern) as err:
        wsdet.Detector(model(), method=method).attention(torch.rand(2, 1, 8, 8))
    assert err.value.reason == reason
    assert "grad_cam" in str(err.value)


def test_features_of_one_voxel_name_the_smallest_input() -> None:
    # by hand: 16 -> 4 -> 1 voxel, 17 -> 5 -> 2 voxels
    with pytest.raises(AttentionUndefinedError, match=r"smallest input .* is \[17, 17\]") as err:
        wsdet.Detector(Strided()).attention(torch.rand(2, 1, 16, 16))
    assert err.value.reason == "one_voxel"
    assert wsdet.Detector(Strided()).attention(torch.rand(2, 1, 17, 17)).shape == (2, 17, 17)


def test_coarse_features_warn_once() -> None:
    coarse = nn.Sequential(
        nn.Conv2d(1, 3, 1, stride=32),  # 64 -> 2 voxels per axis: 2 * 16 < 64
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 1),
    )
    det = wsdet.Detector(coarse)
    with pytest.warns(UserWarning, match="coarser than 1/16"):
        det.attention(torch.rand(1, 1, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.attention(torch.rand(1, 1, 64, 64))  # once per method object
        wsdet.Detector(Strided()).attention(torch.rand(1, 1, 17, 17))  # 2 * 16 >= 17


# ------------------------------------------------------------- review regressions


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_keep_working(dtype: torch.dtype) -> None:
    from wsdet.models import GPUnet

    torch.manual_seed(0)
    m = GPUnet(dim=2, width=4).eval().to(dtype)
    x = torch.rand(2, 1, 16, 16, dtype=dtype)
    declared = wsdet.Detector(m).attention(x)  # wsdet_layers() features, verified
    auto = wsdet.Detector(nn.Sequential(m)).attention(x)
    ref = torch.einsum("bkhw,k->bhw", _conv5(m, x).float(), m.head.weight[0].detach().float())
    for maps in (declared, auto):
        assert maps.dtype == dtype
        torch.testing.assert_close(maps.float(), ref.float(), rtol=2e-2, atol=2e-2)


def _conv5(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    got: list[torch.Tensor] = []
    h = m.conv5.register_forward_hook(lambda mod, i, o: got.append(o.detach()))
    try:
        with torch.no_grad():
            m(x)
    finally:
        h.remove()
    return got[0]


def test_explicit_features_of_a_sum_pooled_head() -> None:
    torch.manual_seed(0)
    m = Functional("sum").eval()
    x = torch.rand(2, 1, 8, 8)

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = m
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.act(m.conv2(torch.relu(m.conv1(x))))
            return m.fc(f.sum((2, 3))).squeeze(1)

    named = Named()
    maps = wsdet.Detector(named, features="act").attention(x)
    torch.testing.assert_close(maps, wsdet.Detector(named).attention(x))
    torch.testing.assert_close(maps, hand_cam(m, x), rtol=1e-5, atol=1e-4)


def test_compiled_model_grad_cam_layer_by_its_eager_name() -> None:
    m = Functional("mean").eval()
    det = wsdet.Detector(torch.compile(m), method="grad_cam", layer="conv2")
    assert det.method.layer == "conv2"
    assert det.attention(torch.rand(1, 1, 8, 8)).shape == (1, 8, 8)


def test_tiled_grad_cam_with_a_callable_target_on_a_dict_output() -> None:
    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            f = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return {"count": self.fc(f.mean((2, 3)))[:, 0]}

    torch.manual_seed(0)
    m = DictOut().eval()
    x = torch.rand(1, 1, 32, 32)
    det = wsdet.Detector(m, method="grad_cam", target=lambda o: o["count"])
    whole = det.attention(x)
    tiled = wsdet.Detector(m, method="grad_cam", target=lambda o: o["count"]).attention(
        x, tile_size=(16, 16)
    )
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5 * float(whole.abs().max()))
