"""Settings and outcome of a training run, and the checks of the data it is given."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import torch
from torch.utils.data import DataLoader, Dataset

from wsdet._checks import check_bool, check_choice, check_float, check_int

__all__ = [
    "AugmentFn",
    "CountData",
    "Sampler",
    "TrainConfig",
    "TrainResult",
]

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


# --------------------------------------------------------------------------- data checks


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


def _check_counts(name: str, counts: torch.Tensor) -> torch.Tensor:
    """Refuse counts that are not finite or negative (a count is >= 0)."""
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"{name} must be integer or float; got {counts.dtype}")
    y = counts.double()
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} must be finite")
    if y.numel() and float(y.min()) < 0:
        first = int(torch.nonzero(y < 0)[0, 0])
        raise ValueError(f"{name} must be >= 0 (a count); got {float(y[first]):g} at index {first}")
    return counts


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
    return images, _check_counts(f"{name} counts", counts)


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
        Learning rate, > 0; ``None`` gives 1.0 for Adadelta (paper / Keras) and 1e-3 for
        Adam.
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
        check_choice("objective", self.objective, ("regression", "classification"))
        check_choice("optimizer", self.optimizer, ("adadelta", "adam"))
        if self.init is not None:
            check_choice("init", self.init, ("default", "keras", "kaiming", "kaiming_conv"))
        check_choice("memory_format", self.memory_format, ("auto", "contiguous", "channels_last"))
        check_choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        check_choice("progress", self.progress, ("auto", "bar", "log", "none"))
        # Stored as plain Python numbers: checkpoints hold the config and load weights-only.
        if self.lr is not None:
            self._set("lr", check_float("lr", self.lr, positive=True))
        self._set("rho", check_float("rho", self.rho, unit=True))
        self._set("eps", check_float("eps", self.eps, positive=True))
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise TypeError(f"betas must be a tuple of two floats; got {self.betas!r}")
        self._set("betas", tuple(check_float("betas", b, unit=True) for b in self.betas))
        self._set("weight_decay", check_float("weight_decay", self.weight_decay, nonnegative=True))
        for flag in ("standardize_targets", "drop_last", "shuffle", "compile"):
            self._set(flag, check_bool(flag, getattr(self, flag)))
        if self.target_stats is not None:
            if not isinstance(self.target_stats, tuple) or len(self.target_stats) != 2:
                raise TypeError(f"target_stats must be (mean, std); got {self.target_stats!r}")
            mean = check_float("target_stats mean", self.target_stats[0])
            self._set(
                "target_stats",
                (mean, check_float("target_stats std", self.target_stats[1], positive=True)),
            )
        for name, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("patience", 1)):
            if getattr(self, name) is not None:
                self._set(name, check_int(name, getattr(self, name), minimum=minimum))
        for name, minimum in (("max_epochs", 0), ("seed", 0), ("num_workers", 0)):
            self._set(name, check_int(name, getattr(self, name), minimum=minimum))
        for name in ("checkpoint_every", "log_every"):
            self._set(name, check_int(name, getattr(self, name), minimum=1))
        self._set("min_delta", check_float("min_delta", self.min_delta, nonnegative=True))
        if self.time_budget is not None:
            self._set("time_budget", check_float("time_budget", self.time_budget, positive=True))

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen: only while validating

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


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser ``config`` asks for, over ``params``."""
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(
            params, lr=config.learning_rate, rho=config.rho, eps=config.eps,
            weight_decay=config.weight_decay,
        )  # fmt: skip
    return torch.optim.Adam(
        params, lr=config.learning_rate, betas=config.betas, eps=config.eps,
        weight_decay=config.weight_decay,
    )  # fmt: skip
