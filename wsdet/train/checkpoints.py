"""A training run's state and its files: ``last.pt``, ``best.pt``, ``history.csv``.

``last.pt`` holds everything an exact resume needs (model, optimiser, best weights, history,
the global random generators); ``best.pt`` the best-validation weights in counts. Both are
written atomically and load with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from wsdet._checks import PathLike
from wsdet._io import atomic_save, atomic_write_text, load_checkpoint
from wsdet.distributed import global_batch_change
from wsdet.train.config import StopReason, TrainConfig
from wsdet.train.runtime import standard_strides
from wsdet.train.scaling import _folded_state, find_head

logger = logging.getLogger("wsdet.train")

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


# --------------------------------------------------------------------------- random generators


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


# --------------------------------------------------------------------------- run state


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

    def stop_reason(self, config: TrainConfig) -> StopReason | None:
        """Why the run stops before its next epoch (``None``: it goes on)."""
        if self.epoch >= config.max_epochs:
            return "max_epochs"
        since_best = self.epoch - 1 - self.best_epoch
        if config.patience is not None and self.best_epoch >= 0 and since_best >= config.patience:
            return "patience"
        if config.time_budget is not None and self.elapsed >= config.time_budget:
            return "time_budget"
        return None

    def record(self, row: Mapping[str, float], improved: bool, model: nn.Module) -> None:
        """Append an epoch's row; on improvement, copy the model's weights as the best."""
        if improved:
            self.best_epoch, self.best_loss = int(row["epoch"]), float(row["val_loss"])
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for key, value in row.items():
            self.history[key].append(value)
        self.elapsed = float(row["elapsed"])
        self.epoch += 1


def history_columns(objective: str) -> tuple[str, ...]:
    """The columns of ``history.csv`` (and of :attr:`TrainResult.history`)."""
    metric = "val_mae" if objective == "regression" else "val_accuracy"
    return ("epoch", "train_loss", "val_loss", metric, "lr", "seconds", "elapsed")


def _plain(value: object) -> object:
    """Tuples and lists compare equal after a checkpoint round trip."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- writing


def write_history(out_dir: Path, history: Mapping[str, list[float]]) -> None:
    """``history.csv``: one row per epoch (the epoch as an int, the rest as ``repr``)."""
    cols = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for i in range(len(history["epoch"])):
        writer.writerow([int(history[c][i]) if c == "epoch" else repr(history[c][i]) for c in cols])
    atomic_write_text(buf.getvalue(), out_dir / _HISTORY)


def write_best(out_dir: Path, run: _Run, head: str, config: TrainConfig) -> None:
    """``best.pt``: the best weights in counts (the target scaling folded into ``head``)."""
    assert run.best_state is not None
    model = run.best_state
    if config.objective == "regression" and config.standardize_targets:
        model = _folded_state(model, head, run.mean, run.std)
    atomic_save(
        {
            "format": _MODEL_FORMAT,
            "model": {k: standard_strides(v) for k, v in model.items()},
            "epoch": run.best_epoch,
            "val_loss": run.best_loss,
            "objective": config.objective,
            "target_mean": run.mean,
            "target_std": run.std,
            "config": config.to_dict(),
        },
        out_dir / _BEST,
    )


def write_state(
    out_dir: Path,
    run: _Run,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    stop_reason: StopReason | None,
    cuda: bool,
    world_size: int,
) -> None:
    """``last.pt``: everything an exact resume needs."""
    atomic_save(
        {
            "format": _STATE_FORMAT,
            "epoch": run.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_model": run.best_state,
            "best_epoch": run.best_epoch,
            "best_val_loss": run.best_loss,
            "standardized": config.objective == "regression" and config.standardize_targets,
            "target_mean": run.mean,
            "target_std": run.std,
            "rng": _rng_snapshot(cuda),
            "history": run.history,
            "elapsed": run.elapsed,
            "stop_reason": stop_reason,
            "config": config.to_dict(),
            "world_size": world_size,
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        },
        out_dir / _LAST,
    )


# --------------------------------------------------------------------------- reading


def read_resume_state(
    resume: bool | PathLike, out_dir: Path | None, config: TrainConfig, world: int = 1
) -> dict[str, Any] | None:
    """The training state to resume from (``None``: start a new run).

    ``resume=True`` reads ``out_dir/last.pt`` when it exists; a path reads that file. The
    settings that change the trajectory must match those saved (the global batch may be
    split over another number of processes).
    """
    if resume is False:
        return None
    if resume is True:
        if out_dir is None:
            raise ValueError("resume=True needs the trainer's out_dir (or pass a path)")
        path = out_dir / _LAST
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
    saved, now = state["config"], config.to_dict()
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


def restore_state(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    cuda: bool,
) -> None:
    """Load the model, optimiser, loss scaler and global RNGs of a training state.

    Every process takes rank 0's CPU-side generators (a sampler must draw alike on all);
    ``cuda``: also the CUDA ones (rank 0 on a GPU; the other ranks reseed every epoch).
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _rng_restore(state["rng"], cuda=cuda)


def weights_in_counts(path: PathLike, model: nn.Module) -> dict[str, torch.Tensor]:
    """The model weights of ``best.pt``, ``last.pt`` (its best, scaling folded in) or a
    plain ``state_dict`` file, for ``model`` (whose device they are loaded onto)."""
    device = next(model.parameters()).device
    ck = load_checkpoint(path, map_location=device)
    fmt = ck.get("format")
    if fmt == _MODEL_FORMAT:
        return cast(dict[str, torch.Tensor], ck["model"])
    if fmt == _STATE_FORMAT:
        raw = ck["best_model"] if ck["best_model"] is not None else ck["model"]
        if not ck["standardized"]:
            return cast(dict[str, torch.Tensor], raw)
        head, _ = find_head(model)
        return _folded_state(raw, head, ck["target_mean"], ck["target_std"])
    if ck and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ck.items()):
        return ck
    raise ValueError(f"{path} is neither a wsdet checkpoint (best.pt / last.pt) nor a state_dict")
