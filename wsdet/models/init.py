"""Weight initialisation schemes for the reference architectures."""

from __future__ import annotations

import torch
from torch import nn

from wsdet._checks import check_choice, check_float

__all__ = ["INIT_SCHEMES", "init_weights"]

#: Accepted values of ``scheme`` / the models' ``init`` argument.
INIT_SCHEMES: tuple[str, ...] = ("default", "keras", "kaiming", "kaiming_conv")

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def init_weights(
    model: nn.Module,
    scheme: str = "default",
    *,
    std: float = 0.05,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise the convolution and linear layers of ``model`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        Model whose ``Conv{1,2,3}d`` and ``Linear`` submodules (the model itself included)
        are re-initialised. Other modules (transposed convolutions, normalisation layers...)
        keep their initialisation.
    scheme : {"default", "keras", "kaiming", "kaiming_conv"}, default "default"
        ``"default"`` leaves PyTorch's initialisation untouched. ``"keras"`` draws weights from
        N(0, std) and zeroes biases (the paper's Keras set-up). ``"kaiming"`` draws weights
        with Kaiming-normal (``mode="fan_in"``, ``nonlinearity="relu"``) and zeroes biases.
        ``"kaiming_conv"`` redraws only the convolution weights with Kaiming-normal and keeps
        every bias and every ``Linear`` layer as PyTorch drew them (the setting with which
        GP-Unet left the count plateau soonest on MNIST grids; docs/training.md).
    std : float, default 0.05
        Standard deviation of the ``"keras"`` scheme; must stay at its default for the others.
    generator : torch.Generator, optional
        Random generator for reproducible draws (all schemes but ``"default"``). It must
        live on the same device as the parameters.

    Returns
    -------
    torch.nn.Module
        ``model`` itself, for chaining.

    Raises
    ------
    ValueError
        On an unknown scheme, a non-positive/non-finite ``std``, or ``std``/``generator`` given
        to a scheme that does not use them.

    Examples
    --------
    >>> lin = init_weights(nn.Linear(1000, 10), "keras", generator=torch.Generator().manual_seed(0))
    >>> round(lin.weight.std().item(), 2), lin.bias.abs().sum().item()
    (0.05, 0.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    check_choice("scheme", scheme, INIT_SCHEMES)
    std = check_float("std", std, positive=True)
    if scheme != "keras" and std != 0.05:
        raise ValueError(f"std is only used by scheme='keras'; got std={std} with {scheme!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator)}")
    if scheme == "default":
        if generator is not None:
            raise ValueError("generator has no effect with scheme='default' (nothing is drawn)")
        return model

    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, _WEIGHTED):
                continue
            if scheme == "kaiming_conv":
                if not isinstance(module, nn.Linear):
                    nn.init.kaiming_normal_(
                        module.weight, mode="fan_in", nonlinearity="relu", generator=generator
                    )
                continue
            if scheme == "keras":
                nn.init.normal_(module.weight, mean=0.0, std=float(std), generator=generator)
            else:
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_in", nonlinearity="relu", generator=generator
                )
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
