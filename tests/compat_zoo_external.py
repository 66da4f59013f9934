"""Other codebases' architectures for the compatibility matrix, with their hand CAMs:
torchvision's ResNet-18 and DenseNet (their functional forwards written out by hand;
torchvision is not imported) and MONAI's networks and blocks.

MONAI is imported only inside the builders that need it, so importing this module (and
rendering the table) needs torch alone. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from compat_base import CamRef, _head_ref
from torch import Tensor, nn

# ------------------------------------------------------ torchvision-style ResNet-18


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding (torchvision)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution (torchvision)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: one in-place ReLU module called twice, ``out += identity``."""

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class TVResNet(nn.Module):
    """torchvision's ``ResNet`` (``resnet18``: ``BasicBlock``, layers ``[2, 2, 2, 2]``), with
    widths ``(4, 8, 8, 16)`` instead of ``(64, 128, 256, 512)``."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (4, 8, 8, 16),
        num_classes: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(
            in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def cam_tv_resnet(m: Any, x: Tensor) -> CamRef:
    h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    f = m.layer4(m.layer3(m.layer2(m.layer1(h))))
    return _head_ref(f, m.fc)


# ----------------------------------------------------- torchvision-style DenseNet-121


class _DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer`` (``memory_efficient=False`` path)."""

    def __init__(
        self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False
        )
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = float(drop_rate)

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        concated_features = torch.cat(inputs, 1)
        bottleneck_output: Tensor = self.conv1(self.relu1(self.norm1(concated_features)))
        return bottleneck_output

    def forward(self, input: Tensor | list[Tensor]) -> Tensor:
        prev_features = [input] if isinstance(input, Tensor) else input
        bottleneck_output = self.bn_function(prev_features)
        new_features: Tensor = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    """torchvision's ``_DenseBlock``: a ModuleDict whose layers see all previous features."""

    _version = 2

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=drop_rate,
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for _name, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """torchvision's ``_Transition``: BN-ReLU-conv1x1-avgpool2."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(
            num_input_features, num_output_features, kernel_size=1, stride=1, bias=False
        )
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class TVDenseNet(nn.Module):
    """torchvision's ``DenseNet`` with its functional head:
    ``F.relu(features, inplace=True)`` → ``F.adaptive_avg_pool2d`` → ``torch.flatten`` →
    ``classifier``. Small growth rate and block config (DenseNet-121 is ``(6, 12, 24, 16)``,
    growth 32)."""

    def __init__(
        self,
        growth_rate: int = 4,
        block_config: Sequence[int] = (2, 2, 2, 2),
        num_init_features: int = 8,
        bn_size: int = 2,
        drop_rate: float = 0.0,
        num_classes: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv0",
                        nn.Conv2d(
                            in_channels,
                            num_init_features,
                            kernel_size=7,
                            stride=2,
                            padding=3,
                            bias=False,
                        ),
                    ),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(
                num_layers=num_layers,
                num_input_features=num_features,
                bn_size=bn_size,
                growth_rate=growth_rate,
                drop_rate=drop_rate,
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(
                    num_input_features=num_features, num_output_features=num_features // 2
                )
                self.features.add_module(f"transition{i + 1}", trans)
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


def cam_tv_densenet(m: Any, x: Tensor) -> CamRef:
    return _head_ref(F.relu(m.features(x)), m.classifier)


# ------------------------------------------------------------------------------ MONAI


def monai_densenet(dim: int) -> nn.Module:
    from monai.networks.nets import DenseNet

    return DenseNet(
        spatial_dims=dim,
        in_channels=1,
        out_channels=1,
        init_features=4,
        growth_rate=4,
        block_config=(2, 2),
        bn_size=2,
    )


def cam_monai_densenet(m: Any, x: Tensor) -> CamRef:
    return _head_ref(m.class_layers.relu(m.features(x)), m.class_layers.out)


def monai_resnet(dim: int) -> nn.Module:
    from monai.networks.nets import ResNet

    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[4, 4, 8, 8],
        spatial_dims=dim,
        n_input_channels=1,
        num_classes=1,
    )


def cam_monai_resnet(m: Any, x: Tensor) -> CamRef:
    h = m.act(m.bn1(m.conv1(x)))
    if not m.no_max_pool:
        h = m.maxpool(h)
    return _head_ref(m.layer4(m.layer3(m.layer2(m.layer1(h)))), m.fc)


def monai_senet(dim: int) -> nn.Module:
    """MONAI ``SENet`` with SE-ResNet bottlenecks, one block per stage (SEResNet50 has
    ``(3, 4, 6, 3)``), a 7x7 stem of 16 maps, dropout 0.2 before the head."""
    from monai.networks.nets import SENet

    return SENet(
        spatial_dims=dim,
        in_channels=1,
        block="se_resnet_bottleneck",
        layers=(1, 1, 1, 1),
        groups=1,
        reduction=16,
        dropout_prob=0.2,
        inplanes=16,
        input_3x3=False,
        downsample_kernel_size=1,
        num_classes=1,
    )


def monai_seresnet50() -> nn.Module:
    from monai.networks.nets import SEResNet50

    return SEResNet50(spatial_dims=2, in_channels=1, num_classes=1)


def cam_monai_senet(m: Any, x: Tensor) -> CamRef:
    return _head_ref(m.features(x), m.last_linear)


class MonaiSEBlocksNet(nn.Module):
    """A user's net assembled from MONAI blocks: ``Convolution`` units (conv-BN-ReLU) and
    ``ChannelSELayer`` squeeze-and-excitation (GAP → Linear → ReLU → Linear → sigmoid, a
    pooled-into-Linear pattern that is *not* the head), then GAP + Linear."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.blocks import ChannelSELayer, Convolution

        self.conv1 = Convolution(2, 1, 8, strides=1, kernel_size=3, act="relu", norm="batch")
        self.se1 = ChannelSELayer(2, 8, r=2)
        self.conv2 = Convolution(2, 8, 8, strides=2, kernel_size=3, act="relu", norm="batch")
        self.se2 = ChannelSELayer(2, 8, r=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se2(self.conv2(self.se1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))  # type: ignore[no-any-return]


def cam_monai_se_blocks(m: Any, x: Tensor) -> CamRef:
    return _head_ref(m.se2(m.conv2(m.se1(m.conv1(x)))), m.fc)
