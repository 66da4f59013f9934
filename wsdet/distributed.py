"""Beyond one machine: ``torch.distributed`` process groups, launched by ``torchrun``.

wsdet builds on PyTorch's own engine. ``torchrun`` starts one process per GPU (or per CPU
worker) and gives each its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init` joins the default process group with the gloo backend on CPUs
or NCCL on GPUs. :class:`wsdet.train.Trainer` and :func:`wsdet.run_detection` call it
themselves when they run under ``torchrun`` and no group exists yet, so a script written for
one process runs unchanged on several::

    torchrun --standalone --nproc-per-node 4 train.py

Inside the script, put the model on :func:`device` (``cuda:LOCAL_RANK``, or the CPU) and
leave the rest to the trainer: ``DistributedDataParallel``, the sharding of the data,
the reductions, and writing files from rank 0 only. See ``docs/scaling.md``.

:class:`Collective` gathers the few collective operations the trainer and the sharded
inference need; in a single process each is the identity, so the same code serves both.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

__all__ = [
    "Collective",
    "DistInfo",
    "barrier",
    "destroy",
    "device",
    "info",
    "init",
    "is_main",
    "launched",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Backend = Literal["auto", "gloo", "nccl"]

#: The variables ``torchrun`` (and ``torch.distributed.launch``) set for every process.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes
    ----------
    rank : int
        Global rank, ``0 .. world_size - 1`` (0 in a single process).
    world_size : int
        Number of processes (1 in a single process).
    local_rank : int
        Rank on this node (the GPU index to use).
    backend : str or None
        ``"gloo"``, ``"nccl"``, or ``None`` when no process group is initialised.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its rendezvous variables are set).

    Examples
    --------
    >>> isinstance(launched(), bool)
    True
    """
    return all(key in os.environ for key in LAUNCH_ENV)


def _local_rank() -> int:
    value = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"the LOCAL_RANK environment variable must be an int; got {value!r}"
        ) from None


def info() -> DistInfo:
    """Rank, world size, local rank and backend of this process.

    Examples
    --------
    >>> info().world_size >= 1
    True
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=_local_rank(),
            backend=str(dist.get_backend()),
        )
    return DistInfo(rank=0, world_size=1, local_rank=0, backend=None)


def is_main() -> bool:
    """Whether this process is rank 0 (always true in a single process)."""
    return info().rank == 0


def device() -> torch.device:
    """The device this process should use: ``cuda:LOCAL_RANK`` when CUDA is available.

    Examples
    --------
    >>> device().type in ("cpu", "cuda")
    True
    """
    if torch.cuda.is_available():
        return torch.device("cuda", _local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def init(
    backend: Backend = "auto",
    *,
    device_type: Literal["auto", "cpu", "cuda"] = "auto",
    timeout: float | None = None,
) -> DistInfo:
    """Join the default process group of a ``torchrun`` job (once; later calls return).

    Parameters
    ----------
    backend : {"auto", "gloo", "nccl"}, default "auto"
        ``"auto"``: NCCL when the processes use CUDA, gloo otherwise.
    device_type : {"auto", "cpu", "cuda"}, default "auto"
        The device the processes compute on; ``"auto"``: CUDA when available. With CUDA the
        process's current device is set to ``cuda:LOCAL_RANK`` first.
    timeout : float, optional
        Seconds a collective may wait before failing (PyTorch's default when omitted).

    Returns
    -------
    DistInfo

    Raises
    ------
    RuntimeError
        If ``torch.distributed`` is unavailable, or the process was not started by
        ``torchrun`` and no group exists.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl'; got {backend!r}")
    if device_type not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device_type must be 'auto', 'cpu' or 'cuda'; got {device_type!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed")
    if dist.is_initialized():
        return info()
    if not launched():
        raise RuntimeError(
            "no process group: start the script with torchrun (which sets "
            f"{', '.join(LAUNCH_ENV)}), e.g. `torchrun --standalone --nproc-per-node 2 "
            "script.py`, or call torch.distributed.init_process_group yourself"
        )
    cuda = device_type == "cuda" or (device_type == "auto" and torch.cuda.is_available())
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(device())
    kwargs: dict[str, Any] = {"backend": backend}
    if timeout is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout)
    dist.init_process_group(**kwargs)
    atexit.register(destroy)
    found = info()
    logger.info("joined a %s process group: rank %d of %d", backend, found.rank, found.world_size)
    return found


def destroy() -> None:
    """Leave the default process group, if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _Sized:
    """A stand-in dataset of ``n`` items: :class:`DistributedSampler` reads only its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class Collective:
    """The collectives of one training or inference run; identities in a single process.

    Parameters
    ----------
    device : torch.device
        Where the model computes. NCCL reductions run on it (it must be a CUDA device);
        gloo reductions run on the CPU.

    Notes
    -----
    Use :meth:`setup`, which first joins the process group when the process was started by
    ``torchrun``. A group of one process (``torchrun --nproc-per-node 1``) is *active*:
    the model is wrapped in ``DistributedDataParallel`` all the same.
    """

    def __init__(self, device: torch.device) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        where = info()
        self.rank, self.world = where.rank, where.world_size
        self.backend = where.backend
        self.model_device = device
        self.device = torch.device("cpu")
        if self.backend == "nccl":
            if device.type != "cuda":
                raise ValueError(
                    "the process group uses NCCL, which needs the model on a CUDA device "
                    f"(wsdet.distributed.device()); it is on {device}"
                )
            torch.cuda.set_device(device)
            self.device = device

    @classmethod
    def setup(cls, device: torch.device) -> Collective:
        """The collectives for a model on ``device``, joining the group under ``torchrun``."""
        if dist.is_available() and not dist.is_initialized() and launched():
            init(device_type="cuda" if device.type == "cuda" else "cpu")
        return cls(device)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the files (rank 0)."""
        return self.rank == 0

    # ---------------------------------------------------------------- reductions

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the processes, in float64."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def max(self, value: float) -> float:
        """The largest of the processes' values."""
        if not self.active:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process (pickled by ``broadcast_object_list``)."""
        if not self.active:
            return obj
        box: list[Any] = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return cast(T, box[0])

    def gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return cast(list[T], out)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give its result, or raise its exception, everywhere."""
        if not self.active:
            return fn()
        payload: tuple[bool, Any] = (True, None)
        if self.rank == 0:
            try:
                payload = (True, fn())
            except Exception as err:  # re-raised below, on every rank
                payload = (False, err)
        ok, value = self.broadcast(payload)
        if not ok:
            raise value
        return cast(T, value)

    def check_same(self, values: Sequence[float], what: str, rel: float = 1e-9) -> None:
        """Raise on every process if ``values`` differ between processes (beyond ``rel``,
        which absorbs sums taken in another order on another machine)."""
        if not self.active:
            return
        seen = self.gather([float(v) for v in values])
        ref = seen[0]
        if any(
            abs(a - b) > rel * max(abs(a), abs(b), 1e-300)
            for other in seen[1:]
            for a, b in zip(other, ref, strict=True)
        ):
            raise ValueError(
                f"{what} differ between the {self.world} processes (per rank: {seen}): every "
                "process must see the same data"
            )

    def barrier(self) -> None:
        """Wait for every process."""
        if self.active:
            dist.barrier()

    # ---------------------------------------------------------------- data and model

    def shard(self, n: int) -> range:
        """This process's contiguous block of ``range(n)`` (blocks differ by at most one)."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def shard_order(self, order: torch.Tensor) -> torch.Tensor:
        """This process's part of a sample order, as :class:`DistributedSampler` deals it.

        Rank ``r`` takes positions ``r, r + W, r + 2W, ...`` (the order padded with its first
        items to a multiple of ``W``), so that the ``k``-th batches of size ``b`` of the
        ``W`` processes together hold positions ``kWb .. (k+1)Wb - 1``: the ``k``-th batch
        of one process with batch size ``Wb`` over the same order.
        """
        if not self.active:
            return order
        sampler: DistributedSampler[int] = DistributedSampler(
            _Sized(int(order.numel())),  # type: ignore[arg-type]
            num_replicas=self.world,
            rank=self.rank,
            shuffle=False,
        )
        positions = torch.tensor(list(sampler), dtype=torch.long)
        return order[positions.to(order.device)]

    def wrap(self, model: nn.Module, *, compile: bool = False) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (then ``torch.compile``-d if asked)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.model_device.index] if self.model_device.type == "cuda" else None
        wrapped: nn.Module = DDP(model, device_ids=ids)
        if compile:
            wrapped = cast(nn.Module, torch.compile(wrapped))
        return wrapped

    @contextlib.contextmanager
    def join(self, model: nn.Module, *, enable: bool) -> Iterator[None]:
        """DDP's ``join`` context for processes that may run different numbers of batches."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = getattr(model, "_orig_mod", model)
        if enable and self.active and isinstance(ddp, DDP):
            with ddp.join():
                yield
        else:
            yield


def seed_for_rank(seed: int, epoch: int, rank: int, stream: int) -> int:
    """A 63-bit seed for ``(seed, epoch, rank, stream)``, independent of the others."""
    state = np.random.SeedSequence([seed, 2, stream, epoch, rank]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def global_batch_change(
    saved_batch: int | None, saved_world: int, batch: int | None, world: int
) -> str | None:
    """Why a run of ``saved_world`` processes cannot resume with ``world``, or ``None``.

    A run may resume with another number of processes when the global batch (per-process
    ``batch_size`` x processes) stays the same, e.g. 2 processes x 4 -> 1 process x 8.

    Examples
    --------
    >>> global_batch_change(4, 2, 8, 1) is None
    True
    >>> global_batch_change(4, 2, 4, 1)
    'batch_size: 4 x 2 processes -> 4 x 1 process (keep batch_size x processes the same)'
    """
    if saved_world == world and saved_batch == batch:
        return None
    if saved_batch is not None and batch is not None and saved_batch * saved_world == batch * world:
        return None
    if saved_world == world:
        return f"batch_size: {saved_batch!r} -> {batch!r}"

    def text(b: int | None, w: int) -> str:
        return f"{b!r} x {w} process{'es' if w > 1 else ''}"

    return (
        f"batch_size: {text(saved_batch, saved_world)} -> {text(batch, world)} (keep "
        "batch_size x processes the same)"
    )
