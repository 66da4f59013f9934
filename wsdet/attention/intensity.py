"""The image itself as an attention map: a baseline (paper Section 4, "Intensities").

The map is one channel of the input, unchanged; the count that ``detect(n=None)`` keeps
comes from the model (in the paper, the base architecture C), computed in one forward
pass under ``torch.inference_mode``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsdet._checks import check_int
from wsdet.attention.base import (
    AttentionMethod,
    Target,
    check_channel,
    instrumented,
    register_method,
    select_target,
)

__all__ = ["Intensity"]


@register_method("intensity")
class Intensity(AttentionMethod):
    """Attention map = input intensities of one channel; counts from the model.

    Parameters
    ----------
    model : torch.nn.Module
        The counting network that provides the number of detections per image.
    target : None, int or callable
        Which scalar of the model output is the count (see
        :func:`wsdet.attention.base.select_target`).
    channel : int
        Input channel used as the map (default 0; negative indices count from the end).

    Examples
    --------
    >>> import torch, wsdet
    >>> from wsdet.models import BaseCNN
    >>> det = wsdet.Detector(BaseCNN(dim=2), method="intensity")
    >>> x = torch.rand(2, 1, 16, 16)
    >>> bool((det.attention(x) == x[:, 0]).all())
    True
    """

    def __init__(self, model: nn.Module, *, target: Target = None, channel: int = 0) -> None:
        super().__init__(model, target=target)
        self.channel = check_int("channel", channel)

    def compute(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x[:, channel] copy (B, *S), model output (B,))``."""
        check_channel("channel", self.channel, x.shape[1])
        with instrumented(self.model), torch.inference_mode():
            y = select_target(self.model(x), self.target, x.shape[0])
        return x[:, self.channel].detach().clone(), y
