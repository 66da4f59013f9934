"""User-style nets for the compatibility matrix (the ways users write the pooling and the
head, outputs, dtypes and modes), the models where CAM is undefined, and wsdet's own
architectures, each explainable one with its hand CAM.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from compat_base import CamRef, _head_ref, aligned_up, randomize_norms
from torch import Tensor, nn

# --------------------------------------------------------------------- user-style nets


def _conv(dim: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv2d if dim == 2 else nn.Conv3d


class DoubleConv3d(nn.Sequential):
    """(conv3 - BN - ReLU) x 2, the U-Net block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
        )


class UNet3DCounter(nn.Module):
    """A two-level 3D U-Net (transposed-conv upsampling, ``torch.cat`` skips) counting
    through a GAP + Linear head on the full-resolution decoder output."""

    def __init__(self, base: int = 3) -> None:
        super().__init__()
        b = base
        self.enc1 = DoubleConv3d(1, b)
        self.pool1 = nn.MaxPool3d(2)
        self.enc2 = DoubleConv3d(b, 2 * b)
        self.pool2 = nn.MaxPool3d(2)
        self.bottleneck = DoubleConv3d(2 * b, 4 * b)
        self.up2 = nn.ConvTranspose3d(4 * b, 2 * b, kernel_size=2, stride=2)
        self.dec2 = DoubleConv3d(4 * b, 2 * b)
        self.up1 = nn.ConvTranspose3d(2 * b, b, kernel_size=2, stride=2)
        self.dec1 = DoubleConv3d(2 * b, b)
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(b, 1)

    def decode(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        bottom = self.bottleneck(self.pool2(e2))
        d2 = self.dec2(torch.cat([self.up2(bottom), e2], dim=1))
        return self.dec1(torch.cat([self.up1(d2), e1], dim=1))  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.gap(self.decode(x)), 1)).squeeze(1)


def cam_unet3d(m: Any, x: Tensor) -> CamRef:
    # by hand, not through m.decode: the skips and upsampling written out again
    e1 = m.enc1(x)
    e2 = m.enc2(m.pool1(e1))
    d2 = m.dec2(torch.cat([m.up2(m.bottleneck(m.pool2(e2))), e2], 1))
    return _head_ref(m.dec1(torch.cat([m.up1(d2), e1], 1)), m.head)


class FunctionalReLUNet(nn.Module):
    """``torch.relu(self.conv(x))`` in forward; pooling module + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def cam_functional_relu(m: Any, x: Tensor) -> CamRef:
    return _head_ref(torch.relu(m.conv2(torch.relu(m.conv1(x)))), m.fc)


class Body(nn.Module):
    """A small conv body ``(B, cin, *S) -> (B, cout, *S/2)`` shared by the pooling variants:
    conv-ReLU, max-pool 2, conv-ReLU."""

    def __init__(self, dim: int, cin: int = 1, cout: int = 6) -> None:
        super().__init__()
        conv = _conv(dim)
        self.c1 = conv(cin, 4, 3, padding=1)
        self.a1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if dim == 2 else nn.MaxPool3d(2)
        self.c2 = conv(4, cout, 3, padding=1)
        self.a2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.a2(self.c2(self.pool(self.a1(self.c1(x)))))  # type: ignore[no-any-return]


def _body_by_hand(b: Any, x: Tensor) -> Tensor:
    return b.a2(b.c2(b.pool(b.a1(b.c1(x)))))  # type: ignore[no-any-return]


class MeanPool2d(nn.Module):
    """``x.mean((2, 3))`` as the global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).mean((2, 3))).squeeze(-1)


class MeanPool3d(nn.Module):
    """``x.mean(dim=(-3, -2, -1))`` as the global pooling (3D)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(3)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        x = x.mean(dim=(-3, -2, -1))
        return self.fc(x)


class AvgPoolFullWindow(nn.Module):
    """``F.avg_pool2d(x, x.shape[2:])`` (a window as large as the map) as the pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        x = F.avg_pool2d(x, x.shape[2:])
        return self.fc(x.view(x.size(0), -1))


class InlinePoolModule3d(nn.Module):
    """``torch.flatten(nn.AdaptiveAvgPool3d(1)(x), 1)``: a pooling module built in forward
    (not a submodule, so no module hook can see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(3)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        return self.fc(torch.flatten(nn.AdaptiveAvgPool3d(1)(x), 1))


class SumPool2d(nn.Module):
    """``x.sum((2, 3))``: global *sum* pooling (the CAM is scaled by the number of positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).sum((2, 3)))


def cam_body_mean(m: Any, x: Tensor) -> CamRef:
    return _head_ref(_body_by_hand(m.body, x), m.fc)


def cam_body_sum(m: Any, x: Tensor) -> CamRef:
    f = _body_by_hand(m.body, x)
    return _head_ref(f, m.fc, scale=float(f[0, 0].numel()))


class LateDeclaredConv(nn.Module):
    """A 1x1 projection declared in ``__init__`` before the stem (it runs last): the first
    ``Conv2d`` in ``modules()`` order is not the one that sees the input."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(8, 5, kernel_size=1)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.proj(self.act(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def cam_late_conv(m: Any, x: Tensor) -> CamRef:
    return _head_ref(F.relu(m.proj(F.relu(m.stem(x)))), m.fc)


class MultiOutput(nn.Module):
    """Three outputs per sample ``(B, 3)`` (e.g. counts of three lesion types)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.gap(self.body(x))))  # type: ignore[no-any-return]


def cam_multi_output(m: Any, x: Tensor) -> CamRef:
    return _head_ref(_body_by_hand(m.body, x), m.fc, row=1)


class TupleOutput(nn.Module):
    """Returns ``(count (B, 1), aux map (B, 1, *S/2))``: a count and an auxiliary output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.aux = nn.Conv2d(6, 1, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.body(x)
        return self.fc(torch.flatten(self.gap(f), 1)), torch.sigmoid(self.aux(f))


class DictOutput(nn.Module):
    """Returns ``{"count": (B, 1), "embedding": (B, 6)}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        emb = F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)
        return {"count": self.fc(emb), "embedding": emb}


def _tuple_target(o: Any) -> Tensor:
    return o[0].squeeze(1)  # type: ignore[no-any-return]


def _dict_target(o: Any) -> Tensor:
    return o["count"][:, 0]  # type: ignore[no-any-return]


class SmallBNNet(nn.Module):
    """conv-BN-ReLU(inplace) x 2, Dropout, GAP, Linear: a plain user model."""

    def __init__(self, cin: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(0.5)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 1)

    def features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.gap(self.drop(self.features(x))).flatten(1))  # type: ignore[no-any-return]


def cam_small_bn(m: Any, x: Tensor) -> CamRef:
    h = F.relu(m.bn1(m.conv1(x)))
    return _head_ref(F.relu(m.bn2(m.conv2(h))), m.fc)


class RGBNormalized(nn.Module):
    """An RGB model that normalises its input with ImageNet statistics (registered buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.body = Body(2, cin=3)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        return self.fc(self.gap(self.body(x)).flatten(1))  # type: ignore[no-any-return]


def cam_rgb(m: Any, x: Tensor) -> CamRef:
    return _head_ref(_body_by_hand(m.body, (x - m.mean) / m.std), m.fc)


def _refuse_to_compile(gm: Any, example_inputs: Any) -> Any:
    raise RuntimeError("compat matrix: a torch.compile'd model was compiled instead of unwrapped")


def compiled_small_bn() -> nn.Module:
    """``torch.compile(model)``, with a backend that refuses to compile: wsdet unwraps
    ``_orig_mod`` and never triggers a compilation."""
    return torch.compile(randomize_norms(SmallBNNet()).eval(), backend=_refuse_to_compile)  # type: ignore[return-value]


# ------------------------------------------------------------- where CAM is undefined


class FlattenHead(nn.Module):
    """No global pooling: the whole feature map is flattened into the Linear head."""

    def __init__(self, side: tuple[int, int] = (6, 5)) -> None:
        super().__init__()
        self.body = Body(2)
        self.fc = nn.Linear(6 * side[0] * side[1], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.body(x), 1))  # type: ignore[no-any-return]


class MLPHead(nn.Module):
    """GAP, then Linear-ReLU-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gap(self.body(x)))  # type: ignore[no-any-return]


class DensityCounter(nn.Module):
    """The count is the sum of a predicted density map (no Linear head at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.density = nn.Conv2d(6, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        d = F.softplus(self.density(self.body(x)))
        return d.sum(dim=(1, 2, 3))


class SoftplusCount(nn.Module):
    """GAP + Linear, then ``F.softplus`` so that the count is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(2)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(self.fc(self.body(x).mean((2, 3)))).squeeze(1)


# ------------------------------------------------------------ wsdet's own architectures


def _wsdet_model(cls_name: str, dim: int) -> nn.Module:
    import wsdet.models

    cls = getattr(wsdet.models, cls_name)
    return cls(dim, width=2 if dim == 3 else 3)  # type: ignore[no-any-return]


def _encoder(m: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(high, low)`` of GPUnet/BaseCNN/GatedAttentionNet, by hand."""
    high = torch.cat([x, F.relu(m.conv2.conv(F.relu(m.conv1.conv(x))))], 1)
    p = m.pool(high)
    low = torch.cat([p, F.relu(m.conv4.conv(F.relu(m.conv3.conv(p))))], 1)
    return high, low


def cam_gpunet(m: Any, x: Tensor) -> CamRef:
    high, low = _encoder(m, x)
    up = aligned_up(low, high)
    return _head_ref(F.relu(m.conv5.conv(torch.cat([high, up], 1))), m.head)


def cam_basecnn(m: Any, x: Tensor) -> CamRef:
    return _head_ref(_encoder(m, x)[1], m.head)


def cam_gated(m: Any, x: Tensor) -> CamRef:
    high, low = _encoder(m, x)
    g = m.gate
    alpha = torch.sigmoid(g.psi(F.relu(g.theta(high) + g.phi(low))))
    alpha = aligned_up(alpha, high, "linear")
    w = m.head.weight[0]
    n = high.shape[1]
    return CamRef([high * alpha, low], [w[:n], w[n:]], m.head.bias[0])


def cam_gpunet_no_residual(m: Any, x: Tensor) -> CamRef:
    def cr(block: Any, t: Tensor) -> Tensor:
        return F.relu(block.conv(t))

    up = aligned_up
    f1 = cr(m.conv2, cr(m.conv1, x))
    f2 = cr(m.conv4, cr(m.conv3, m.pool1(f1)))
    f3 = cr(m.conv5, m.pool2(f2))
    d2 = cr(m.conv6, torch.cat([f2, up(f3, f2)], 1))
    d1 = cr(m.conv7, torch.cat([f1, up(d2, f1)], 1))
    return _head_ref(d1, m.head)
