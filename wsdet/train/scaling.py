"""Target standardisation folded into (and out of) the head of a counting network."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from wsdet._checks import check_float
from wsdet._modules import find_count_head

__all__ = ["find_head", "fold_target_scaling", "target_stats", "unfold_target_scaling"]


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The final ``Linear(K, 1)`` that the target scaling is folded into.

    The head :func:`wsdet._modules.find_count_head` finds (``wsdet_layers()["head"]`` when
    declared, else the last ``nn.Linear`` with one output); where there is none, the error
    suggests training without target standardisation.

    Parameters
    ----------
    model : torch.nn.Module
        A counting network (one output per sample).

    Returns
    -------
    (str, torch.nn.Linear)
        The head's dotted name in ``model``, and the head.

    Raises
    ------
    ValueError
        No head, or a declared head that is not a ``Linear(K, 1)``; the message ends with
        ``or train with standardize_targets=False``.

    Examples
    --------
    >>> find_head(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)))
    ('2', Linear(in_features=3, out_features=1, bias=True))
    """
    try:
        return find_count_head(model)
    except ValueError as err:
        raise ValueError(
            f"target scaling needs a final nn.Linear(K, 1) to fold into: {err}; or train with "
            "standardize_targets=False"
        ) from None


def target_stats(
    fixed: tuple[float, float] | None, counts: torch.Tensor | None
) -> tuple[float, float]:
    """The ``(mean, std)`` to standardise regression targets with: ``fixed`` when given,
    else the mean and population standard deviation of the training ``counts``.

    Examples
    --------
    >>> target_stats(None, torch.tensor([1.0, 3.0]))
    (2.0, 1.0)
    """
    if fixed is not None:
        return float(fixed[0]), float(fixed[1])
    if counts is None:
        raise ValueError("target_stats needs the training counts when none are fixed")
    y = counts.double()
    mean, std = float(y.mean()), float(y.std(correction=0))
    if not std > 0:
        raise ValueError(
            f"the training counts all equal {mean}: they cannot be standardised (set "
            "standardize_targets=False or target_stats)"
        )
    return mean, std


def _affine(mean: float, std: float) -> tuple[float, float]:
    """``(mean, std)`` validated: a finite mean and a finite std > 0."""
    return check_float("mean", mean), check_float("std", std, positive=True)


def _rescale_head(model: nn.Module, scale: float, shift: float) -> None:
    """``weight <- scale * weight``, ``bias <- scale * bias + shift`` on the head, in place."""
    _, head = find_head(model)
    if head.bias is None and shift != 0.0:
        raise ValueError(
            "the head nn.Linear has no bias, so the target mean cannot be folded into it "
            "(train with standardize_targets=False or target_stats=(0.0, std))"
        )
    with torch.no_grad():
        head.weight.mul_(scale)
        if head.bias is not None:
            head.bias.mul_(scale).add_(shift)


def fold_target_scaling(model: nn.Module, mean: float, std: float) -> None:
    """Fold a target standardisation into the head, in place: output ``mean + std * raw``.

    A network trained on ``(y - mean) / std`` outputs ``raw``; with the head's weight
    ``w <- std * w`` and bias ``b <- std * b + mean`` it outputs ``mean + std * raw``, in the
    units of ``y``. The CAM (``sum_k w_k A_k``) is multiplied by ``std > 0``.

    Parameters
    ----------
    model : torch.nn.Module
        Counting network whose head :func:`find_head` finds.
    mean : float
        Mean of the training targets.
    std : float
        Standard deviation of the training targets, > 0.

    Examples
    --------
    >>> net = nn.Linear(2, 1)
    >>> x = torch.randn(5, 2)
    >>> raw = net(x)
    >>> fold_target_scaling(net, mean=3.0, std=2.0)
    >>> torch.allclose(net(x), 3.0 + 2.0 * raw)
    True
    """
    mean, std = _affine(mean, std)
    _rescale_head(model, std, mean)


def unfold_target_scaling(model: nn.Module, mean: float, std: float) -> None:
    """Undo :func:`fold_target_scaling` in place: output ``(y - mean) / std``.

    Parameters
    ----------
    model, mean, std
        As for :func:`fold_target_scaling`.

    Examples
    --------
    A fold and an unfold with the same statistics give the network back:

    >>> net = nn.Linear(2, 1)
    >>> before = net.weight.detach().clone()
    >>> fold_target_scaling(net, mean=3.0, std=4.0)
    >>> unfold_target_scaling(net, mean=3.0, std=4.0)
    >>> torch.equal(net.weight, before)
    True
    """
    mean, std = _affine(mean, std)
    _rescale_head(model, 1.0 / std, -mean / std)


def _folded_state(
    state: Mapping[str, torch.Tensor], head: str, mean: float, std: float
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with the standardisation folded into the head's tensors."""
    out = {k: v.detach().clone() for k, v in state.items()}
    prefix = f"{head}." if head else ""
    out[prefix + "weight"] = out[prefix + "weight"] * std
    if prefix + "bias" in out:
        out[prefix + "bias"] = out[prefix + "bias"] * std + mean
    return out
