"""What a training run looks like while it runs: its session state, progress display and
memory formats."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from wsdet.train.config import ProgressMode

if TYPE_CHECKING:  # annotations only (the checkpoints module imports this one)
    from wsdet.data.loading import TrainInput
    from wsdet.distributed import Collective
    from wsdet.train.checkpoints import _Run

logger = logging.getLogger("wsdet.train")

_TQDM_MISSING = "progress='bar' needs tqdm: pip install 'wsdet[progress]'"


def _tqdm() -> Any:
    """``tqdm.auto.tqdm``, or ``None`` when tqdm is not installed (or fails to import)."""
    try:
        return importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return None


def progress_mode(mode: ProgressMode | str) -> str:
    """The display ``mode`` resolves to: ``"bar"``, ``"log"``, ``"print"`` or ``"none"``
    (a resolved mode is returned as it is).

    ``"auto"``: a bar when tqdm is installed and stderr is a terminal or the code runs in a
    Jupyter kernel; else log lines when the ``wsdet.train`` logger shows INFO records
    somewhere; else lines printed to stderr.

    Raises
    ------
    ImportError
        ``mode="bar"`` without tqdm installed, naming the extra that installs it.
    """
    if mode == "bar":
        if _tqdm() is None:
            raise ImportError(_TQDM_MISSING) from None
        return "bar"
    if mode != "auto":
        return mode
    tty = sys.stderr is not None and sys.stderr.isatty()
    if (tty or "ipykernel" in sys.modules) and importlib.util.find_spec("tqdm") is not None:
        if _tqdm() is not None:
            return "bar"
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        return "log"
    return "print"  # nothing would show a log line: print it


class _Progress:
    """A tqdm bar over epochs, or one line every ``log_every`` epochs (logged or printed)."""

    def __init__(self, mode: ProgressMode | str, total: int, start: int, log_every: int) -> None:
        self.log_every = log_every
        self.start = start
        self.mode: str = progress_mode(mode)
        self.bar: Any = None
        if self.mode == "bar":
            tqdm_bar = _tqdm()
            if tqdm_bar is None:  # uninstalled since progress_mode looked
                raise ImportError(_TQDM_MISSING) from None
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


# --------------------------------------------------------------------------- memory formats


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


def _set_memory_format(model: nn.Module, fmt: torch.memory_format, ndim: int) -> None:
    """Convert the model's ``ndim``-D parameters and buffers to ``fmt``, in place."""
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            if t.dim() == ndim:
                t.data = _to_format(t.data, fmt)


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def standard_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the row-major strides of its shape (itself when it has them).

    ``x.contiguous()`` keeps channels-last strides where a dimension has size 1 (a
    one-channel convolution weight counts as contiguous either way), and kernels may then
    take another path and round differently. A fresh tensor has unambiguous strides.

    Examples
    --------
    >>> w = torch.empty(4, 1, 3, 3, memory_format=torch.channels_last)
    >>> w.is_contiguous(), w.stride(), standard_strides(w).stride()
    (True, (9, 1, 3, 1), (9, 9, 3, 1))
    """
    if x.stride() == _row_major(x.shape):
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


def restore_standard_strides(model: nn.Module) -> None:
    """Give every parameter and buffer of ``model`` row-major strides, in place."""
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            t.data = standard_strides(t.data)


@dataclass
class FitSession:
    """What one call of :meth:`Trainer.fit` works with, and where it stands."""

    comm: Collective
    train: TrainInput
    val: TrainInput
    val_tensors: tuple[torch.Tensor, torch.Tensor] | None
    val_shape: tuple[int, ...]
    fmt: torch.memory_format
    head: str  # dotted name of the head the target scaling folds into
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batch_size: int
    eval_batch_size: int
    cuda_devices: list[int]
    writes: bool  # this process writes the files (rank 0, with an out_dir)
    progress_mode: str
    state: dict[str, Any] | None  # the training state resumed from
    run: _Run
    in_counts: bool = True  # the head predicts counts (not standardised units)
    progress: _Progress | None = None

    @property
    def ndim(self) -> int:
        return len(self.val_shape)
