"""Miniature networks and data shared by the training tests and ``tests/dist_worker.py``."""

from __future__ import annotations

import math

import torch
from torch import nn

from wsdet.train import TrainConfig

__all__ = ["LOSSES", "Scripted", "TinyNet", "flip_augment", "quiet", "spot_data"]


def quiet(**kwargs: object) -> TrainConfig:
    """A :class:`TrainConfig` without progress display (unless asked for)."""
    return TrainConfig(**{"progress": "none", **kwargs})  # type: ignore[arg-type]


class TinyNet(nn.Module):
    """conv -> ReLU -> (dropout) -> GAP -> Linear(4, 1): a miniature counting network."""

    def __init__(self, dim: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.conv = conv(1, 4, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.conv(x)))
        return self.head(h.flatten(2).mean(2)).squeeze(-1)


class Scripted(nn.Module):
    """Its validation MSE (val counts all 0) at epoch e is ``losses[e]``.

    A buffer counts training forward passes (one per epoch with a single batch), so the
    weights of epoch e are recognisable: restoring the best weights restores its output.
    """

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses = losses
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = self.w * x.flatten(1).sum(1) * 0.0
        if self.training:
            self.calls += 1
            return zero
        return zero + math.sqrt(self.losses[int(self.calls) - 1])


LOSSES = [5.0, 4.0, 3.0, 3.5, 3.2, 2.9, 3.0, 3.1, 2.95, 3.3, 1.0, 0.5]


def spot_data(n: int, seed: int, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with 0-4 bright pixels on a dim background; the count is the number of spots."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=gen) * 0.2
    counts = torch.randint(0, 5, (n,), generator=gen)
    for i in range(n):
        pos = torch.randperm(size * size, generator=gen)[: int(counts[i])]
        images[i, 0].view(-1)[pos] = 1.0
    return images, counts.float()


def flip_augment(images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Random per-sample horizontal flips drawn from ``generator``."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    out = images.clone()
    out[flip] = images[flip].flip(-1)
    return out
