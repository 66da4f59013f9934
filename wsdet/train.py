"""Training counting networks: regression or classification, early stopping, exact resume.

The :class:`Trainer` optimises a network whose forward pass returns one value per sample
``(B,)`` (a count, or a logit for the classification objective), as in Dubost et al. §3.3
and §3.5:

* objectives: ``"regression"`` — mean squared error on the count (the paper's);
  ``"classification"`` — binary cross-entropy with logits on the presence ``count > 0``;
* optimisers: Adadelta with the paper's (Keras) settings ``lr=1.0, rho=0.95, eps=1e-7``
  (default) or Adam;
* regression targets standardised with the training statistics, the scaling then folded into
  the final ``Linear(K, 1)`` so that the returned model predicts counts;
* early stopping with patience (paper: 100 epochs), a maximum number of epochs and a time
  budget; the lowest-validation-loss weights are kept;
* atomic checkpoints that load with ``weights_only=True`` and resume bit for bit;
* fine-tuning from another checkpoint (the paper first trains the easiest region).

Data are tensors ``(images, counts)``, a callable ``epoch -> (images, counts[, ...])``
drawing fresh data each epoch, any ``torch.utils.data.Dataset`` (map-style or iterable)
yielding ``(image, count)`` or dicts, or a ``DataLoader`` of your own
(:mod:`wsdet.data.loading`). Shuffling and the ``augment`` callable use a generator seeded by
``(seed, epoch)``, so an interrupted run resumed from its checkpoint follows the
uninterrupted run exactly. Launched by ``torchrun``, :meth:`Trainer.fit` trains data-parallel
(:mod:`wsdet.distributed`, ``docs/scaling.md``).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import itertools
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wsdet._io import PathLike, atomic_save, atomic_write_text, load_checkpoint
from wsdet.data.loading import (
    TrainInput,
    as_eval_input,
    as_train_input,
    gather_outputs,
    score_outputs,
)
from wsdet.distributed import Collective, global_batch_change, seed_for_rank
from wsdet.models import init_weights

__all__ = [
    "AugmentFn",
    "CountData",
    "Sampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "find_head",
    "fold_target_scaling",
    "unfold_target_scaling",
]

logger = logging.getLogger(__name__)

Objective: TypeAlias = Literal["regression", "classification"]
OptimizerName: TypeAlias = Literal["adadelta", "adam"]
InitScheme: TypeAlias = Literal["default", "keras", "kaiming", "kaiming_conv"]
Precision: TypeAlias = Literal["fp32", "bf16", "fp16"]
MemoryFormat: TypeAlias = Literal["auto", "contiguous", "channels_last"]
ProgressMode: TypeAlias = Literal["auto", "bar", "log", "none"]
StopReason: TypeAlias = Literal["max_epochs", "patience", "time_budget"]

#: A sampler of fresh training data: ``epoch -> (images, counts)`` (extra items ignored).
Sampler: TypeAlias = Callable[[int], Sequence[torch.Tensor]]
TrainData: TypeAlias = (
    "tuple[torch.Tensor, torch.Tensor] | CountData | Sampler | Dataset[Any] | DataLoader[Any]"
)
ValData: TypeAlias = (
    "tuple[torch.Tensor, torch.Tensor] | CountData | Dataset[Any] | DataLoader[Any]"
)

_STATE_FORMAT = "wsdet.train.state/1"
_MODEL_FORMAT = "wsdet.model/1"
_LAST, _BEST, _HISTORY = "last.pt", "best.pt", "history.csv"

# Config fields that change the optimisation trajectory: they must match on resume.
_RESUME_FIELDS = (
    "objective",
    "optimizer",
    "lr",
    "rho",
    "eps",
    "betas",
    "weight_decay",
    "standardize_targets",
    "target_stats",
    "batch_size",
    "drop_last",
    "shuffle",
    "seed",
    "precision",
)


class CountData(Protocol):
    """A dataset exposing all its images (N, C, *S) and counts (N,) as tensors.

    :class:`wsdet.data.MNISTGrid` and :class:`wsdet.data.PhantomSet` fit this protocol.
    """

    @property
    def images(self) -> torch.Tensor: ...

    @property
    def counts(self) -> torch.Tensor: ...


class AugmentFn(Protocol):
    """A batched augmentation: ``augment(images, generator=g) -> images`` (same shape).

    :func:`wsdet.data.augment.augment` fits this protocol.
    """

    def __call__(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor: ...


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def _check_float(name: str, value: object, *, positive: bool = False, unit: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float; got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0) or (unit and v >= 1):
        kind = "in [0, 1)" if unit else ("> 0" if positive else ">= 0")
        raise ValueError(f"{name} must be a finite number {kind}; got {value}")
    return v


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _check_images(name: str, images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(images).__name__}")
    if images.ndim not in (4, 5) or not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (N, C, H, W) or (N, C, D, H, W); "
            f"got shape {tuple(images.shape)} dtype {images.dtype}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image")
    return images


def _check_data(name: str, data: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(images, counts, ...)``, or an object with ``.images`` and ``.counts``
    (e.g. :class:`wsdet.data.MNISTGrid`); return images (N, C, *S) float and counts (N,)."""
    if hasattr(data, "images") and hasattr(data, "counts"):
        data = (data.images, data.counts)
    if not isinstance(data, Sequence) or isinstance(data, str) or len(data) < 2:
        raise TypeError(f"{name} must be a tuple (images, counts); got {type(data).__name__}")
    images = _check_images(f"{name} images", data[0])
    counts = data[1]
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"{name} counts must be a torch.Tensor; got {type(counts).__name__}")
    if counts.shape != (images.shape[0],):
        raise ValueError(
            f"{name} counts must have shape ({images.shape[0]},) to match the images; "
            f"got {tuple(counts.shape)}"
        )
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"{name} counts must be integer or float; got {counts.dtype}")
    if not bool(torch.isfinite(counts.double()).all()):
        raise ValueError(f"{name} counts must be finite")
    return images, counts


# --------------------------------------------------------------------------- config / result


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; the defaults follow the paper where it fixes them.

    Parameters
    ----------
    objective : {"regression", "classification"}, default "regression"
        ``"regression"``: mean squared error between the output and the count (paper §3.5).
        ``"classification"``: binary cross-entropy with logits on ``count > 0``; the model's
        single output is the logit.
    optimizer : {"adadelta", "adam"}, default "adadelta"
        The paper uses Adadelta.
    lr : float, optional
        Learning rate; ``None`` gives 1.0 for Adadelta (paper / Keras) and 1e-3 for Adam.
    rho : float, default 0.95
        Adadelta decay (Keras default, the paper's set-up).
    eps : float, default 1e-7
        Adadelta / Adam epsilon (the Keras default of both).
    betas : (float, float), default (0.9, 0.999)
        Adam moment decays.
    weight_decay : float, default 0.0
        L2 penalty added by the optimiser.
    init : {"default", "keras", "kaiming", "kaiming_conv"}, optional
        If given, :func:`wsdet.models.init_weights` is applied when the :class:`Trainer` is
        created, with a generator seeded by ``seed`` (``"keras"``: N(0, 0.05), zero bias;
        ``"kaiming"``: Kaiming-normal, zero bias; ``"kaiming_conv"``: Kaiming-normal
        convolution weights, biases and linear layers as constructed). ``None`` keeps the
        model's weights.
    standardize_targets : bool, default True
        Regression only (ignored for classification): train on ``(y - mean) / std`` of the
        training counts, then fold the scaling into the final ``Linear(K, 1)`` (see
        :func:`fold_target_scaling`) so that the trained model outputs counts. The CAM is
        unchanged up to a positive factor. Without it, regressing raw counts through global
        average pooling starts very slowly (see ``docs/training.md``).
    target_stats : (float, float), optional
        ``(mean, std)`` to standardise with; by default computed from the training counts
        (of epoch 0 when training data come from a sampler).
    batch_size : int, optional
        ``None``: 64 for 2D images (paper, MNIST) and 1 for 3D volumes (paper, brain MRI).
    eval_batch_size : int, optional
        Batch size of validation and prediction; ``None`` uses ``batch_size``.
    drop_last : bool, default False
        Drop the last incomplete batch of every epoch.
    shuffle : bool, default True
        Shuffle the training set every epoch (seeded by ``(seed, epoch)``).
    max_epochs : int, default 1000
        Maximum number of epochs, counted from the start of the run (resumes included).
    patience : int, optional, default 100
        Stop once ``patience`` epochs have passed without a validation improvement (paper:
        at least 100). ``None`` disables early stopping.
    min_delta : float, default 0.0
        An epoch improves on the best when its validation loss is below ``best - min_delta``.
    time_budget : float, optional
        Stop before starting an epoch once the cumulated training time (seconds, resumes
        included) reaches it; a run overshoots by at most one epoch.
    seed : int, default 0
        Seeds initialisation, shuffling, augmentation and the global torch generator inside
        :meth:`Trainer.fit` (dropout), which is restored for the caller afterwards.
    memory_format : {"auto", "contiguous", "channels_last"}, default "auto"
        Memory format of the model and batches during :meth:`Trainer.fit`.
        ``"auto"``: ``channels_last`` for 2D models on CPU (a GP-Unet 2D step measured 1.36x
        faster, ``docs/training.md``), contiguous otherwise (``channels_last_3d`` brought
        nothing in 3D). The model is returned contiguous.
    precision : {"fp32", "bf16", "fp16"}, default "fp32"
        ``"bf16"`` / ``"fp16"`` run the training forward pass under ``torch.autocast`` in
        bfloat16 / float16 (validation and prediction stay float32); ``"fp16"`` scales the
        loss with a ``torch.amp.GradScaler`` (its state is saved in ``last.pt``). Meant for
        GPUs; bf16 is five times slower on CPUs without native bf16 (measured on AVX2).
    num_workers : int, default 0
        Worker processes of the ``DataLoader`` the trainer builds when training or
        validation data are a ``torch.utils.data.Dataset`` (see :mod:`wsdet.data.loading`).
    compile : bool, default False
        Train through ``torch.compile(model)`` (the first steps pay the compilation; it
        was not faster on the development CPU).
    checkpoint_every : int, default 1
        Write the training state every this many epochs (when the trainer has an ``out_dir``).
    progress : {"auto", "bar", "log", "none"}, default "auto"
        ``"bar"``: a tqdm bar (the ``progress`` extra), a widget in Jupyter. ``"log"``: one
        ``logging`` line (logger ``wsdet.train``) every ``log_every`` epochs. ``"auto"``: a
        bar when tqdm is installed and stderr is a terminal or the code runs in a Jupyter
        kernel; else the log lines when logging is configured to show them (the ``wsdet``
        command does); else the same lines printed to stderr, after the first epoch and then
        every ``log_every`` epochs, so that progress shows in a notebook or a batch job.
    log_every : int, default 10
        Epochs between log lines.

    Examples
    --------
    >>> TrainConfig(optimizer="adam", lr=3e-3, init="kaiming").learning_rate
    0.003
    >>> TrainConfig().learning_rate
    1.0
    """

    objective: Objective = "regression"
    optimizer: OptimizerName = "adadelta"
    lr: float | None = None
    rho: float = 0.95
    eps: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    init: InitScheme | None = None
    standardize_targets: bool = True
    target_stats: tuple[float, float] | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    drop_last: bool = False
    shuffle: bool = True
    max_epochs: int = 1000
    patience: int | None = 100
    min_delta: float = 0.0
    time_budget: float | None = None
    seed: int = 0
    memory_format: MemoryFormat = "auto"
    precision: Precision = "fp32"
    num_workers: int = 0
    compile: bool = False
    checkpoint_every: int = 1
    progress: ProgressMode = "auto"
    log_every: int = 10

    def __post_init__(self) -> None:
        _check_choice("objective", self.objective, ("regression", "classification"))
        _check_choice("optimizer", self.optimizer, ("adadelta", "adam"))
        if self.lr is not None:
            _check_float("lr", self.lr)
        _check_float("rho", self.rho, unit=True)
        _check_float("eps", self.eps, positive=True)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise TypeError(f"betas must be a tuple of two floats; got {self.betas!r}")
        for b in self.betas:
            _check_float("betas", b, unit=True)
        _check_float("weight_decay", self.weight_decay)
        if self.init is not None:
            _check_choice("init", self.init, ("default", "keras", "kaiming", "kaiming_conv"))
        for flag in ("standardize_targets", "drop_last", "shuffle", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool; got {getattr(self, flag)!r}")
        if self.target_stats is not None:
            if not isinstance(self.target_stats, tuple) or len(self.target_stats) != 2:
                raise TypeError(f"target_stats must be (mean, std); got {self.target_stats!r}")
            mean, std = self.target_stats
            if isinstance(mean, bool) or not isinstance(mean, int | float):
                raise TypeError(f"target_stats mean must be a float; got {mean!r}")
            if not math.isfinite(mean):
                raise ValueError(f"target_stats mean must be finite; got {mean}")
            _check_float("target_stats std", std, positive=True)
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_int("max_epochs", self.max_epochs, 0)
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
        _check_float("min_delta", self.min_delta)
        if self.time_budget is not None:
            _check_float("time_budget", self.time_budget, positive=True)
        _check_int("seed", self.seed, 0)
        _check_choice("memory_format", self.memory_format, ("auto", "contiguous", "channels_last"))
        _check_choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        _check_int("num_workers", self.num_workers, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_choice("progress", self.progress, ("auto", "bar", "log", "none"))
        _check_int("log_every", self.log_every, 1)

    @property
    def learning_rate(self) -> float:
        """The learning rate in use (``lr``, or the optimiser's default)."""
        if self.lr is not None:
            return float(self.lr)
        return 1.0 if self.optimizer == "adadelta" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain Python values (stored in checkpoints)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes
    ----------
    best_epoch : int
        0-based epoch of the lowest validation loss (its weights are in the model).
    best_val_loss : float
        That loss: MSE in counts² (regression) or BCE (classification).
    epochs : int
        Epochs completed since the start of the run (resumes included).
    stop_reason : {"max_epochs", "patience", "time_budget"}
        Why training stopped.
    history : dict of str to list
        One list per column of the history file, one entry per epoch.
    seconds : float
        Training time of the run (resumes included).
    target_mean, target_std : float
        The standardisation of the regression targets (0 and 1 when not standardised); it is
        already folded into the returned model.
    best_checkpoint, last_checkpoint : pathlib.Path or None
        ``best.pt`` (model weights, in counts) and ``last.pt`` (training state), when the
        trainer has an ``out_dir``.
    """

    best_epoch: int
    best_val_loss: float
    epochs: int
    stop_reason: StopReason
    history: dict[str, list[float]]
    seconds: float
    target_mean: float
    target_std: float
    best_checkpoint: Path | None
    last_checkpoint: Path | None


# --------------------------------------------------------------------------- head scaling


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Find the final ``Linear(K, 1)`` of a counting network.

    Uses ``model.wsdet_layers()["head"]`` when the model provides it, else the last
    ``nn.Linear`` with ``out_features == 1`` in registration order.

    Parameters
    ----------
    model : torch.nn.Module
        A network with a single output.

    Returns
    -------
    (str, torch.nn.Linear)
        Dotted name and module.

    Raises
    ------
    ValueError
        If there is no such layer, or the declared head is not a ``Linear(K, 1)``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> find_head(net)[0]
    '3'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    layers = getattr(model, "wsdet_layers", None)
    if callable(layers):
        declared = layers()
        name = declared.get("head") if isinstance(declared, Mapping) else None
        if isinstance(name, str):
            module = model.get_submodule(name)
            if not isinstance(module, nn.Linear) or module.out_features != 1:
                raise ValueError(
                    f"model.wsdet_layers()['head'] = {name!r} must be an nn.Linear(K, 1); "
                    f"got {module}"
                )
            return name, module
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == 1:
            found = (name, module)
    if found is None:
        raise ValueError(
            "target scaling needs a final nn.Linear(K, 1) to fold into: the model declares no "
            "wsdet_layers()['head'] and has no nn.Linear with out_features == 1 (train with "
            "standardize_targets=False)"
        )
    return found


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
    _check_float("std", std, positive=True)
    if not math.isfinite(float(mean)):
        raise ValueError(f"mean must be finite; got {mean}")
    _rescale_head(model, float(std), float(mean))


def unfold_target_scaling(model: nn.Module, mean: float, std: float) -> None:
    """Undo :func:`fold_target_scaling` in place: output ``(y - mean) / std``.

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
    >>> y = net(x)
    >>> unfold_target_scaling(net, mean=3.0, std=2.0)
    >>> torch.allclose(net(x), (y - 3.0) / 2.0)
    True
    """
    _check_float("std", std, positive=True)
    if not math.isfinite(float(mean)):
        raise ValueError(f"mean must be finite; got {mean}")
    _rescale_head(model, 1.0 / float(std), -float(mean) / float(std))


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


# --------------------------------------------------------------------------- RNG / misc


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of ``epoch``: shuffling and augmentation, independent of history."""
    state = np.random.SeedSequence([seed, 0, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _global_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0])


def _rng_snapshot(cuda: bool) -> dict[str, Any]:
    """Global RNG states as tensors and plain Python values (weights-only loadable)."""
    # The legacy global numpy generator is saved on purpose: samplers may draw from it.
    np_state = cast(
        tuple[str, np.ndarray, int, int, float],
        np.random.get_state(legacy=True),  # noqa: NPY002
    )
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _rng_restore(snapshot: Mapping[str, Any], cuda: bool) -> None:
    """Restore the global RNGs; the CUDA ones only when training on CUDA (a run saved on
    a GPU resumes on a CPU with its CPU-side randomness exact)."""
    torch.set_rng_state(snapshot["torch"])
    if cuda and snapshot["cuda"]:
        torch.cuda.set_rng_state_all(snapshot["cuda"])
    npd = snapshot["numpy"]
    keys = npd["keys"].numpy().astype(np.uint32)
    np_state = ("MT19937", keys, npd["pos"], npd["has_gauss"], npd["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    version, internal, gauss = snapshot["python"]
    random.setstate((version, tuple(internal), gauss))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _set_memory_format(model: nn.Module, fmt: torch.memory_format, ndim: int) -> None:
    """Convert the model's ``ndim``-D parameters and buffers to ``fmt``, in place."""
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            if t.dim() == ndim:
                t.data = _to_format(t.data, fmt)


def _to_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``x`` in memory format ``fmt``, with strides that say so even for one channel.

    ``x.contiguous(memory_format=torch.channels_last)`` returns a one-channel NCHW tensor
    unchanged (it counts as channels-last contiguous), and PyTorch then infers NCHW for the
    concatenations that follow, so that every later convolution converts layouts back and
    forth. A fresh channels-last tensor has unambiguous strides.
    """
    if fmt == torch.contiguous_format:
        return x.contiguous()
    if x.is_contiguous(memory_format=fmt) and x.stride(1) == 1:
        return x
    return torch.empty_like(x, memory_format=fmt).copy_(x)


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _batch_output(out: object, batch: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor; got {type(out).__name__}")
    if out.shape == (batch, 1):
        out = out[:, 0]
    if out.shape != (batch,):
        raise ValueError(
            f"the model must return one value per sample, shape ({batch},); got {tuple(out.shape)}"
        )
    return out


class _Progress:
    """A tqdm bar over epochs, or one line every ``log_every`` epochs (logged or printed)."""

    def __init__(self, mode: ProgressMode, total: int, start: int, log_every: int) -> None:
        self.bar: Any = None
        self.log_every = log_every
        self.start = start
        self.mode: str = mode
        if mode == "auto":
            tty = sys.stderr is not None and sys.stderr.isatty()
            if importlib.util.find_spec("tqdm") is not None and (tty or "ipykernel" in sys.modules):
                self.mode = "bar"
            elif logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
                self.mode = "log"
            else:  # nothing would show a log line: print it
                self.mode = "print"
        if self.mode == "bar":
            try:
                from tqdm.auto import tqdm as tqdm_bar
            except ImportError:
                raise ImportError(
                    "progress='bar' needs tqdm: pip install 'wsdet[progress]'"
                ) from None
            self.bar = tqdm_bar(total=total, initial=start, unit="epoch", dynamic_ncols=True)

    def update(self, row: Mapping[str, float], best_epoch: int) -> None:
        epoch = int(row["epoch"])
        metrics = {k: v for k, v in row.items() if k not in ("epoch", "lr", "elapsed")}
        if self.bar is not None:
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if k != "seconds"}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        elif self.mode == "log" and (epoch + 1) % self.log_every == 0:
            text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            logger.info("epoch %d: %s (best epoch %d)", epoch, text, best_epoch)
        elif self.mode == "print" and (epoch == self.start or (epoch + 1) % self.log_every == 0):
            text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"epoch {epoch}: {text} (best epoch {best_epoch})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Run:
    """The mutable state of a training run (what ``last.pt`` stores besides the optimiser)."""

    mean: float = 0.0
    std: float = 1.0
    epoch: int = 0  # epochs completed
    best_epoch: int = -1
    best_loss: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    elapsed: float = 0.0

    @classmethod
    def from_checkpoint(cls, ck: Mapping[str, Any]) -> _Run:
        return cls(
            mean=float(ck["target_mean"]),
            std=float(ck["target_std"]),
            epoch=int(ck["epoch"]),
            best_epoch=int(ck["best_epoch"]),
            best_loss=float(ck["best_val_loss"]),
            best_state=ck["best_model"],
            history={k: list(v) for k, v in ck["history"].items()},
            elapsed=float(ck["elapsed"]),
        )

    def record(self, row: Mapping[str, float], improved: bool, model: nn.Module) -> None:
        """Append an epoch's row; on improvement, copy the model's weights as the best."""
        if improved:
            self.best_epoch, self.best_loss = int(row["epoch"]), float(row["val_loss"])
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for key, value in row.items():
            self.history[key].append(value)
        self.elapsed = float(row["elapsed"])
        self.epoch += 1


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Train a counting network (output ``(B,)``) on images and per-image counts.

    Parameters
    ----------
    model : torch.nn.Module
        The network, on the device to train on. It is trained in place.
    config : TrainConfig, optional
        Settings; ``TrainConfig()`` by default (the paper's Adadelta regression).
    augment : callable, optional
        Batched augmentation ``augment(images, generator=g)`` applied to every training
        batch on the model's device, e.g. :func:`wsdet.data.augment.augment`; ``g`` is the
        epoch's seeded CPU generator.
    out_dir : str or os.PathLike, optional
        Folder (created if needed) for ``last.pt`` (training state, every
        ``checkpoint_every`` epochs), ``best.pt`` (best weights, in counts, on every
        improvement) and ``history.csv`` (every epoch). Nothing is written without it.
    init_from : str or os.PathLike, optional
        Checkpoint whose model weights to start from (see :meth:`finetune_from`).

    Notes
    -----
    Regression with ``standardize_targets``: outside :meth:`fit` the model predicts counts.
    During :meth:`fit` its head works in standardised units. A freshly built model's head is
    taken to be in standardised units already (so that its initialisation keeps the scale
    that makes training start quickly); a model that this trainer has fitted or loaded with
    :meth:`finetune_from` is converted with :func:`unfold_target_scaling` first, so that
    fine-tuning starts from the same count predictions.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
    >>> images = torch.rand(32, 1, 8, 8)
    >>> counts = (images > 0.9).sum(dim=(1, 2, 3)).float()
    >>> config = TrainConfig(optimizer="adam", lr=1e-2, max_epochs=5, progress="none")
    >>> result = Trainer(net, config).fit((images, counts), (images, counts))
    >>> result.epochs, result.stop_reason
    (5, 'max_epochs')
    >>> Trainer(net, config).predict(images[:3]).shape
    torch.Size([3])
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        *,
        augment: AugmentFn | None = None,
        out_dir: PathLike | None = None,
        init_from: PathLike | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("model has no trainable parameters")
        if config is None:
            config = TrainConfig()
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable or None; got {type(augment).__name__}")
        self.model = model
        self.config = config
        self.augment = augment
        self.out_dir = None if out_dir is None else Path(out_dir)
        #: mean and std of the regression targets of the last fit (already folded).
        self.target_mean, self.target_std = 0.0, 1.0
        self._count_space = False
        self._compiled: nn.Module | None = None
        if config.init is not None:
            device = next(model.parameters()).device
            if config.init == "default":
                init_weights(model, "default")
            else:
                gen = torch.Generator(device=device).manual_seed(config.seed)
                init_weights(model, config.init, generator=gen)
        if init_from is not None:
            self.finetune_from(init_from)

    # ------------------------------------------------------------------ public helpers

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def finetune_from(self, path: PathLike, *, strict: bool = True) -> None:
        """Load model weights (only) from a checkpoint, to fine-tune from them.

        Accepts ``best.pt`` (weights in counts), ``last.pt`` (its best-validation weights,
        with the target scaling folded in) or a plain ``state_dict`` file. The optimiser
        state, history and RNG are not loaded: the next :meth:`fit` starts a new run.

        Parameters
        ----------
        path : str or os.PathLike
            Checkpoint file (loaded with ``weights_only=True``).
        strict : bool, default True
            Passed to :meth:`torch.nn.Module.load_state_dict`.

        Examples
        --------
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> src, dst = nn.Linear(3, 1), nn.Linear(3, 1)
        >>> _ = torch.save(src.state_dict(), folder / "w.pt")
        >>> Trainer(dst).finetune_from(folder / "w.pt")
        >>> torch.equal(dst.weight, src.weight)
        True
        """
        ck = load_checkpoint(path, map_location=self.device)
        fmt = ck.get("format")
        if fmt == _MODEL_FORMAT:
            state = ck["model"]
        elif fmt == _STATE_FORMAT:
            raw = ck["best_model"] if ck["best_model"] is not None else ck["model"]
            state = raw
            if ck["standardized"]:
                head, _ = find_head(self.model)
                state = _folded_state(raw, head, ck["target_mean"], ck["target_std"])
        elif ck and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ck.items()):
            state = ck
        else:
            raise ValueError(
                f"{path} is neither a wsdet checkpoint (best.pt / last.pt) nor a state_dict"
            )
        self.model.load_state_dict(state, strict=strict)
        self._count_space = True

    def predict(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Model outputs for ``images``: counts (regression) or logits (classification).

        Runs in eval mode under ``torch.inference_mode`` in float32; the submodules'
        training flags are restored afterwards.

        Parameters
        ----------
        images : torch.Tensor
            (N, C, *S) floating point, any device.
        batch_size : int, optional
            Images per forward pass; default ``config.eval_batch_size`` or ``batch_size``.

        Returns
        -------
        torch.Tensor
            (N,) float32 on the device of ``images``.

        Examples
        --------
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
        >>> Trainer(net).predict(torch.zeros(5, 1, 2, 2)).shape
        torch.Size([5])
        """
        images = _check_images("images", images)
        bs = self._eval_batch_size(images.ndim, batch_size)
        return self._forward(images, bs, self._memory_format(images.ndim)).to(images.device)

    def evaluate(
        self, images: torch.Tensor, counts: torch.Tensor, batch_size: int | None = None
    ) -> dict[str, float]:
        """Score the model on ``(images, counts)``.

        Parameters
        ----------
        images : torch.Tensor
            (N, C, *S) floating point.
        counts : torch.Tensor
            (N,) true counts.
        batch_size : int, optional
            Images per forward pass.

        Returns
        -------
        dict
            Regression: ``{"mse", "mae"}`` of the predicted counts. Classification:
            ``{"bce", "accuracy"}`` of the presence ``count > 0`` (logit > 0 predicts
            presence).

        Examples
        --------
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
        >>> _ = nn.init.zeros_(net[1].weight), nn.init.constant_(net[1].bias, 1.0)
        >>> Trainer(net).evaluate(torch.zeros(2, 1, 2, 2), torch.tensor([0.0, 3.0]))
        {'mse': 2.5, 'mae': 1.5}
        """
        images, counts = _check_data("evaluate data", (images, counts))
        out = self.predict(images, batch_size).double().cpu()
        y = counts.double().cpu()
        if self.config.objective == "regression":
            err = out - y
            return {"mse": float((err**2).mean()), "mae": float(err.abs().mean())}
        present = (y > 0).double()
        bce = F.binary_cross_entropy_with_logits(out, present)
        accuracy = ((out > 0).double() == present).double().mean()
        return {"bce": float(bce), "accuracy": float(accuracy)}

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        train: TrainData,
        val: ValData,
        *,
        resume: bool | PathLike = False,
    ) -> TrainResult:
        """Train with early stopping; leave the best-validation weights in the model.

        Parameters
        ----------
        train : (images, counts), dataset, callable or DataLoader
            Training tensors ``images`` (N, C, *S) float and ``counts`` (N,), an object with
            such ``.images`` and ``.counts`` (:class:`wsdet.data.MNISTGrid`,
            :class:`wsdet.data.PhantomSet`), a sampler ``epoch -> (images, counts[, ...])``
            returning fresh data for every epoch (it must be deterministic in ``epoch`` for
            exact resumes; extra items are ignored), a ``torch.utils.data.Dataset``
            (map-style or iterable) of ``(image, count)`` items or dicts with ``"image"``
            and ``"count"``, or a ``DataLoader`` of such batches (its own batch size,
            sampler, workers and collate; see :mod:`wsdet.data.loading`). Batches are moved
            to the model's device. Under ``torchrun`` the data are sharded over the
            processes and the model trains in ``DistributedDataParallel``
            (``docs/scaling.md``); ``batch_size`` is then per process.
        val : (images, counts), dataset or DataLoader
            Validation data in the same forms (no sampler), scored after every epoch (under
            ``torchrun``: each process scores its share, the sums are reduced).
        resume : bool or path, default False
            ``True``: continue from ``out_dir/last.pt`` if it exists (else start afresh);
            a path: continue from that training-state checkpoint. The run then continues
            exactly as if it had not been interrupted; ``max_epochs``, ``patience`` and
            ``time_budget`` may be changed, settings that change the trajectory may not.

        Returns
        -------
        TrainResult

        Raises
        ------
        FloatingPointError
            If the training loss becomes NaN or infinite.
        """
        cfg = self.config
        device = self.device
        comm = Collective.setup(device)  # joins the process group when run by torchrun
        pin = device.type == "cuda"
        val_in = as_eval_input(val, check=_check_data, num_workers=cfg.num_workers, pin_memory=pin)
        train_in = as_train_input(
            train, check=_check_data, num_workers=cfg.num_workers, pin_memory=pin
        )
        state = comm.on_main(lambda: self._resume_state(resume, comm.world))
        if state is None and cfg.max_epochs == 0:
            raise ValueError("max_epochs must be >= 1 to start a new run")
        writes = self.out_dir is not None and comm.is_main  # only rank 0 writes files
        if writes:
            assert self.out_dir is not None
            self.out_dir.mkdir(parents=True, exist_ok=True)

        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):  # probing a loader draws a seed
            val_shape = val_in.layout(0)
        val_tensors = None if comm.active else val_in.tensors(0)
        ndim = len(val_shape)
        standardized = cfg.objective == "regression" and cfg.standardize_targets
        head = find_head(self.model)[0] if standardized else ""
        fmt = self._memory_format(ndim)
        optimizer = self._make_optimizer()
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        bs, eval_bs = self._batch_size(ndim), self._eval_batch_size(ndim, None)
        run = _Run(history={k: [] for k in self._columns()})
        in_counts = True  # whether the head currently predicts counts (not standardised units)
        progress: _Progress | None = None
        reason: StopReason | None = None
        with torch.random.fork_rng(devices=cuda_devices):
            try:
                if state is not None:
                    self._restore(state, optimizer, scaler, comm.rank)
                    run = _Run.from_checkpoint(state)
                    in_counts = not standardized
                    logger.info("resuming at epoch %d (best epoch %d)", run.epoch, run.best_epoch)
                else:
                    torch.manual_seed(_global_seed(cfg.seed))
                first = train_in.layout(run.epoch)
                if len(first) != ndim or first[1] != val_shape[1]:
                    raise ValueError(
                        "train and val images must have the same layout (N, C, *S); got "
                        f"{first} and {val_shape}"
                    )
                if state is None and standardized:
                    stats = (
                        None if cfg.target_stats is not None else train_in.counts(run.epoch, comm)
                    )
                    run.mean, run.std = self._target_stats(stats)
                    if self._count_space:
                        unfold_target_scaling(self.model, run.mean, run.std)
                    in_counts = False
                step_model = self._step_model()
                _set_memory_format(self.model, fmt, ndim)
                if comm.active:  # DistributedDataParallel, after the memory format is set
                    step_model = comm.wrap(self.model, compile=cfg.compile)
                shown = cfg.progress if comm.is_main else "none"
                progress = _Progress(shown, cfg.max_epochs, run.epoch, cfg.log_every)
                while (reason := self._stop_reason(run)) is None:
                    start = time.perf_counter()
                    train_in.check(run.epoch, comm)
                    train_loss = self._train_epoch(
                        step_model, optimizer, train_in, bs, run.epoch, run.mean, run.std, fmt,
                        comm, scaler,
                    )  # fmt: skip
                    if not math.isfinite(train_loss):
                        raise FloatingPointError(
                            f"the training loss became {train_loss} at epoch {run.epoch}"
                        )
                    if val_tensors is not None:
                        val_loss, val_metric = self._validate(*val_tensors, run.mean, run.std, fmt)
                    else:  # each process scores its share; all outputs gathered, then scored
                        outputs, targets = gather_outputs(
                            val_in.eval_batches(comm, eval_bs),
                            lambda x: self._forward(x, eval_bs, fmt),
                            comm,
                        )
                        regression = cfg.objective == "regression"
                        val_loss, val_metric = score_outputs(
                            outputs, targets, regression=regression, mean=run.mean, std=run.std
                        )
                    improved = val_loss < run.best_loss - cfg.min_delta
                    seconds = comm.max(time.perf_counter() - start)  # one clock for all ranks
                    lr = float(optimizer.param_groups[0]["lr"])
                    values = (run.epoch, train_loss, val_loss, val_metric, lr, seconds)
                    row = dict(zip(self._columns(), (*values, run.elapsed + seconds), strict=True))
                    run.record(row, improved, self.model)
                    if writes:
                        self._write_history(run.history)
                        if improved:
                            self._write_best(run, head)
                        if run.epoch % cfg.checkpoint_every == 0:
                            self._write_state(run, optimizer, None, cuda_devices, comm, scaler)
                    progress.update(row, run.best_epoch)
                del step_model  # drop the DistributedDataParallel wrapper and its hooks
                if writes:
                    self._write_state(run, optimizer, reason, cuda_devices, comm, scaler)
                if run.best_state is not None:
                    self.model.load_state_dict(run.best_state)
            finally:
                if progress is not None:
                    progress.close()
                _set_memory_format(self.model, torch.contiguous_format, ndim)
                if not in_counts:
                    fold_target_scaling(self.model, run.mean, run.std)
        if cfg.objective == "regression":
            self._count_space = True
        self.target_mean, self.target_std = run.mean, run.std
        logger.info(
            "stopped (%s) after %d epochs, %.1f s; best epoch %d, val loss %.4g",
            reason,
            run.epoch,
            run.elapsed,
            run.best_epoch,
            run.best_loss,
        )
        out = self.out_dir
        return TrainResult(
            best_epoch=run.best_epoch,
            best_val_loss=run.best_loss,
            epochs=run.epoch,
            stop_reason=reason,
            history=run.history,
            seconds=run.elapsed,
            target_mean=run.mean,
            target_std=run.std,
            best_checkpoint=None if out is None or run.best_epoch < 0 else out / _BEST,
            last_checkpoint=None if out is None else out / _LAST,
        )

    # ------------------------------------------------------------------ internals

    def _columns(self) -> tuple[str, ...]:
        metric = "val_mae" if self.config.objective == "regression" else "val_accuracy"
        return ("epoch", "train_loss", "val_loss", metric, "lr", "seconds", "elapsed")

    def _batch_size(self, ndim: int) -> int:
        if self.config.batch_size is not None:
            return self.config.batch_size
        return 64 if ndim == 4 else 1

    def _eval_batch_size(self, ndim: int, batch_size: int | None) -> int:
        if batch_size is not None:
            return _check_int("batch_size", batch_size, 1)
        return self.config.eval_batch_size or self._batch_size(ndim)

    def _memory_format(self, ndim: int) -> torch.memory_format:
        choice = self.config.memory_format
        if choice == "channels_last" or (
            choice == "auto" and ndim == 4 and self.device.type == "cpu"
        ):
            return _channels_last(ndim)
        return torch.contiguous_format

    def _step_model(self) -> nn.Module:
        if not self.config.compile:
            return self.model
        if self._compiled is None:
            self._compiled = cast(nn.Module, torch.compile(self.model))
        return self._compiled

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "adadelta":
            return torch.optim.Adadelta(
                params, lr=cfg.learning_rate, rho=cfg.rho, eps=cfg.eps,
                weight_decay=cfg.weight_decay,
            )  # fmt: skip
        return torch.optim.Adam(
            params, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip

    def _target_stats(self, counts: torch.Tensor | None) -> tuple[float, float]:
        if self.config.target_stats is not None:
            return float(self.config.target_stats[0]), float(self.config.target_stats[1])
        assert counts is not None
        y = counts.double()
        mean, std = float(y.mean()), float(y.std(correction=0))
        if not std > 0:
            raise ValueError(
                "the training counts all equal "
                f"{mean}: they cannot be standardised (set standardize_targets=False or "
                "target_stats)"
            )
        return mean, std

    def _stop_reason(self, run: _Run) -> StopReason | None:
        cfg = self.config
        if run.epoch >= cfg.max_epochs:
            return "max_epochs"
        since_best = run.epoch - 1 - run.best_epoch
        if cfg.patience is not None and run.best_epoch >= 0 and since_best >= cfg.patience:
            return "patience"
        if cfg.time_budget is not None and run.elapsed >= cfg.time_budget:
            return "time_budget"
        return None

    def _train_epoch(
        self,
        step_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: TrainInput,
        bs: int,
        epoch: int,
        mean: float,
        std: float,
        fmt: torch.memory_format,
        comm: Collective,
        scaler: torch.amp.GradScaler,
    ) -> float:
        """One pass over the data; the mean training loss (regression: in counts²).

        The epoch's sample order is drawn from the ``(seed, epoch)`` generator and dealt to
        the processes by :meth:`Collective.shard_order` (the identity in one process).
        """
        cfg = self.config
        device = self.device
        gen = _epoch_generator(cfg.seed, epoch)
        n = data.length(epoch)
        order = None
        if n is not None:  # tensors and map-style datasets; loaders keep their own order
            order = torch.randperm(n, generator=gen) if cfg.shuffle else torch.arange(n)
            order = comm.shard_order(order)
        if comm.rank > 0:  # other ranks: own dropout and augmentation streams, per epoch
            torch.manual_seed(seed_for_rank(cfg.seed, epoch, comm.rank, 1))
            gen = torch.Generator().manual_seed(seed_for_rank(cfg.seed, epoch, comm.rank, 0))
        regression = cfg.objective == "regression"
        amp = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        batches = data.batches(
            epoch, order, bs, cfg.drop_last, seed_for_rank(cfg.seed, epoch, comm.rank, 2)
        )
        with comm.join(step_model, enable=n is None):  # loaders: ranks may differ in batches
            for x, y in batches:
                b = x.shape[0]
                x = x.to(device, non_blocking=True)
                if self.augment is not None:
                    x = self.augment(x, generator=gen)
                x = _to_format(x, fmt)
                y = y.to(device, torch.float32, non_blocking=True)
                with torch.autocast(device.type, dtype=amp, enabled=cfg.precision != "fp32"):
                    out = _batch_output(step_model(x), b)
                if regression:
                    loss = F.mse_loss(out.float(), (y - mean) / std)
                else:
                    loss = F.binary_cross_entropy_with_logits(out.float(), (y > 0).float())
                optimizer.zero_grad(set_to_none=True)
                if scaler.is_enabled():  # fp16: scaled loss, steps skipped on overflow
                    torch.autograd.backward(scaler.scale(loss))
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    torch.autograd.backward(loss)
                    optimizer.step()
                total += loss.detach().double() * b
                seen += b
        summed, count = comm.sum([float(total), seen])
        if count == 0:
            raise ValueError(f"no training batch in epoch {epoch}: {data.describe(epoch, bs)}")
        mean_loss = summed / count
        return mean_loss * std**2 if regression else mean_loss

    def _forward(self, images: torch.Tensor, bs: int, fmt: torch.memory_format) -> torch.Tensor:
        """Eval-mode float32 outputs (N,) on the model's device."""
        device = self.device
        outs = []
        with _eval_mode(self.model), torch.inference_mode():
            for begin in range(0, images.shape[0], bs):
                x = _to_format(images[begin : begin + bs].to(device, non_blocking=True), fmt)
                outs.append(_batch_output(self.model(x), x.shape[0]).float())
        return torch.cat(outs)

    def _validate(
        self,
        images: torch.Tensor,
        counts: torch.Tensor,
        mean: float,
        std: float,
        fmt: torch.memory_format,
    ) -> tuple[float, float]:
        """Validation loss and metric (count MAE, or presence accuracy)."""
        out = self._forward(images, self._eval_batch_size(images.ndim, None), fmt)
        regression = self.config.objective == "regression"
        return score_outputs(out, counts, regression=regression, mean=mean, std=std)

    def _resume_state(self, resume: bool | PathLike, world: int = 1) -> dict[str, Any] | None:
        if resume is False:
            return None
        if resume is True:
            if self.out_dir is None:
                raise ValueError("resume=True needs the trainer's out_dir (or pass a path)")
            path = self.out_dir / _LAST
            if not path.is_file():
                logger.info("no checkpoint at %s: starting a new run", path)
                return None
        elif isinstance(resume, str | Path) or hasattr(resume, "__fspath__"):
            path = Path(resume)
        else:
            raise TypeError(f"resume must be a bool or a path; got {type(resume).__name__}")
        # On the CPU: the RNG states must stay there; load_state_dict moves the rest.
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"{path} is not a training-state checkpoint (last.pt)")
        saved, now = state["config"], self.config.to_dict()
        diff = [
            f"{k}: {saved.get(k)!r} -> {now[k]!r}"
            for k in _RESUME_FIELDS
            if k != "batch_size" and _plain(saved.get(k)) != _plain(now[k])
        ]
        batch = global_batch_change(
            saved.get("batch_size"), int(state.get("world_size", 1)), now["batch_size"], world
        )  # another number of processes may resume, with the same global batch
        diff += [] if batch is None else [batch]
        if diff:
            raise ValueError(f"cannot resume {path} with different settings: {'; '.join(diff)}")
        return state

    def _restore(
        self,
        state: Mapping[str, Any],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        rank: int = 0,
    ) -> None:
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        # Every rank takes rank 0's CPU-side generators (a sampler must draw alike on all);
        # the CUDA ones only rank 0 (the others reseed theirs every epoch).
        _rng_restore(state["rng"], cuda=self.device.type == "cuda" and rank == 0)

    def _write_history(self, history: Mapping[str, list[float]]) -> None:
        assert self.out_dir is not None
        cols = list(history)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for i in range(len(history["epoch"])):
            writer.writerow(
                [int(history[c][i]) if c == "epoch" else repr(history[c][i]) for c in cols]
            )
        atomic_write_text(buf.getvalue(), self.out_dir / _HISTORY)

    def _write_best(self, run: _Run, head: str) -> None:
        assert self.out_dir is not None and run.best_state is not None
        standardized = self.config.objective == "regression" and self.config.standardize_targets
        model = run.best_state
        if standardized:
            model = _folded_state(model, head, run.mean, run.std)
        atomic_save(
            {
                "format": _MODEL_FORMAT,
                "model": {k: v.contiguous() for k, v in model.items()},
                "epoch": run.best_epoch,
                "val_loss": run.best_loss,
                "objective": self.config.objective,
                "target_mean": run.mean,
                "target_std": run.std,
                "config": self.config.to_dict(),
            },
            self.out_dir / _BEST,
        )

    def _write_state(
        self,
        run: _Run,
        optimizer: torch.optim.Optimizer,
        stop_reason: StopReason | None,
        cuda_devices: list[int],
        comm: Collective,
        scaler: torch.amp.GradScaler,
    ) -> None:
        assert self.out_dir is not None
        cfg = self.config
        atomic_save(
            {
                "format": _STATE_FORMAT,
                "epoch": run.epoch,
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best_model": run.best_state,
                "best_epoch": run.best_epoch,
                "best_val_loss": run.best_loss,
                "standardized": cfg.objective == "regression" and cfg.standardize_targets,
                "target_mean": run.mean,
                "target_std": run.std,
                "rng": _rng_snapshot(bool(cuda_devices)),
                "history": run.history,
                "elapsed": run.elapsed,
                "stop_reason": stop_reason,
                "config": cfg.to_dict(),
                "world_size": comm.world,
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            },
            self.out_dir / _LAST,
        )


def _plain(value: object) -> object:
    """Tuples and lists compare equal after a checkpoint round trip."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
