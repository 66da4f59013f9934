"""What the :class:`~wsdet.train.Trainer` reads: tensors, any ``Dataset``, or your ``DataLoader``.

Training and validation data may be

* tensors ``(images (N, C, *S), counts (N,))``, an object with such ``.images`` and
  ``.counts`` (:class:`~wsdet.data.MNISTGrid`, :class:`~wsdet.data.PhantomSet`), or (for
  training) a sampler ``epoch -> (images, counts)``: batches are gathered by index;
* a map-style :class:`torch.utils.data.Dataset` whose items are ``(image, count, ...)`` or
  dicts with ``"image"`` ``(C, *S)`` and ``"count"``: the trainer builds a ``DataLoader``
  each epoch (``TrainConfig.num_workers`` worker processes, :func:`collate_counts`) over the
  same seeded sample order as for tensors, so a dataset and the tensors it holds train
  identically;
* an :class:`~torch.utils.data.IterableDataset` yielding such items (read in its own order;
  its ``set_epoch(epoch)`` is called when it has one);
* a :class:`~torch.utils.data.DataLoader` you built (your workers, sampler and collate),
  yielding batches ``(images, counts, ...)`` or dicts with ``"image"`` and ``"count"``; its
  sampler's ``set_epoch(epoch)`` is called every epoch (``DistributedSampler``).

Under ``torch.distributed`` (see :mod:`wsdet.distributed`) tensors and map-style datasets
are sharded by :class:`~torch.utils.data.DistributedSampler` over the epoch's order, and
validation data by contiguous blocks without padding; an iterable dataset or a user
``DataLoader`` must shard itself (``DistributedSampler``, or ``torch.distributed.get_rank()``
inside the dataset).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from wsdet.distributed import Collective

__all__ = [
    "EvalInput",
    "TrainInput",
    "as_eval_input",
    "as_train_input",
    "batch_images_counts",
    "collate_counts",
    "gather_outputs",
    "item_image_count",
    "score_outputs",
]

#: ``check(name, data) -> (images, counts)``: the trainer's validation of tensor data.
CheckFn = Callable[[str, object], tuple[Tensor, Tensor]]
#: A sampler of fresh training tensors, ``epoch -> (images, counts[, ...])``.
SamplerFn = Callable[[int], Sequence[Tensor]]

Batches = Iterator[tuple[Tensor, Tensor]]

_ITEM_HELP = "items must be (image, count, ...) or dicts with 'image' and 'count'"
_BATCH_HELP = "batches must be (images, counts, ...) or dicts with 'image' and 'count'"


# --------------------------------------------------------------------------- items, batches


def _image(value: object, where: str, ndims: tuple[int, ...]) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{where} image must be a torch.Tensor or numpy array; got "
                        f"{type(value).__name__}")  # fmt: skip
    if value.ndim not in ndims or not value.is_floating_point():
        lead = "(C, H, W) or (C, D, H, W)" if ndims == (3, 4) else "(B, C, H, W) or (B, C, D, H, W)"
        raise ValueError(
            f"{where} image must be a floating-point tensor {lead}; got shape "
            f"{tuple(value.shape)} dtype {value.dtype}"
        )
    return value


def _image_and_count(value: object, where: str, usage: str) -> tuple[object, object]:
    """The ``"image"`` and ``"count"`` of a dict, or the first two entries of a sequence."""
    if isinstance(value, Mapping):
        missing = [k for k in ("image", "count") if k not in value]
        if missing:
            raise KeyError(f"{where} has no {missing} (keys {list(value)}): {usage}")
        return value["image"], value["count"]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) >= 2:
        return value[0], value[1]
    raise TypeError(f"{where} is a {type(value).__name__}: {usage}")


def item_image_count(item: object, where: str = "item") -> tuple[Tensor, Tensor]:
    """The image ``(C, *S)`` and the count (0-d float64) of one dataset item.

    Parameters
    ----------
    item : tuple, list or mapping
        ``(image, count, ...)`` (extra entries ignored) or a dict with ``"image"`` and
        ``"count"`` (other keys ignored). The image is a floating-point tensor or numpy
        array ``(C, H, W)`` or ``(C, D, H, W)``; the count a number or one-element tensor.
    where : str, default "item"
        How to name the item in error messages.

    Returns
    -------
    (torch.Tensor, torch.Tensor)

    Examples
    --------
    >>> image, count = item_image_count({"image": torch.zeros(1, 4, 4), "count": 2})
    >>> image.shape, count
    (torch.Size([1, 4, 4]), tensor(2., dtype=torch.float64))
    """
    image, count = _image_and_count(item, where, _ITEM_HELP)
    c = torch.as_tensor(count)
    if c.numel() != 1 or c.dtype == torch.bool or c.is_complex():
        raise ValueError(f"{where} count must be one real number; got {count!r}")
    c = c.reshape(()).to(torch.float64)
    if not bool(torch.isfinite(c)):
        raise ValueError(f"{where} count must be finite; got {float(c)}")
    return _image(image, where, (3, 4)), c


def collate_counts(items: Sequence[object]) -> tuple[Tensor, Tensor]:
    """Collate dataset items into ``(images (B, C, *S), counts (B,) float64)``.

    The ``collate_fn`` the trainer gives its ``DataLoader`` objects; use it in your own for
    items in the formats of :func:`item_image_count`.

    Examples
    --------
    >>> images, counts = collate_counts([(torch.zeros(1, 4, 4), 1), (torch.ones(1, 4, 4), 3)])
    >>> images.shape, counts.tolist()
    (torch.Size([2, 1, 4, 4]), [1.0, 3.0])
    """
    if len(items) == 0:
        raise ValueError("items must hold at least one item")
    pairs = [item_image_count(item, f"item {i}") for i, item in enumerate(items)]
    shapes = {tuple(p[0].shape) for p in pairs}
    if len(shapes) > 1:
        raise ValueError(
            f"the items of a batch must have images of one shape; got {sorted(shapes)} (use "
            "batch_size=1, or crop or pad the images to one shape)"
        )
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def batch_images_counts(batch: object, where: str = "batch") -> tuple[Tensor, Tensor]:
    """``(images (B, C, *S), counts (B,))`` of a ``DataLoader`` batch.

    Parameters
    ----------
    batch : tuple, list or mapping
        ``(images, counts, ...)`` or a dict with ``"image"`` and ``"count"`` (e.g. the
        output of :func:`wsdet.data.collate_points` or ``default_collate``).
    where : str, default "batch"
        How to name the batch in error messages.

    Examples
    --------
    >>> x, y = batch_images_counts({"image": torch.zeros(2, 1, 4, 4), "count": torch.ones(2, 1)})
    >>> x.shape, y.shape
    (torch.Size([2, 1, 4, 4]), torch.Size([2]))
    """
    images, counts = _image_and_count(batch, where, _BATCH_HELP)
    x = _image(images, where, (4, 5))
    if not isinstance(counts, Tensor):
        counts = torch.as_tensor(counts)
    if counts.dtype == torch.bool or counts.is_complex() or counts.numel() != x.shape[0]:
        raise ValueError(
            f"{where} counts must hold {x.shape[0]} real numbers (one per image); got shape "
            f"{tuple(counts.shape)} dtype {counts.dtype}"
        )
    y = counts.reshape(x.shape[0])
    if not bool(torch.isfinite(y.double()).all()):
        raise ValueError(f"{where} counts must be finite")
    return x, y


# --------------------------------------------------------------------------- inputs


class TrainInput:
    """Training (or validation) data, read one epoch at a time by one process.

    Built by :func:`as_train_input` / :func:`as_eval_input`; the trainer draws the epoch's
    sample order (when :meth:`length` is known), deals it to the processes and asks for the
    batches.
    """

    #: what the data are, in messages ("tensors", "dataset", "iterable dataset", "DataLoader")
    kind = "data"

    def __init__(self, name: str) -> None:
        self.name = name

    def length(self, epoch: int) -> int | None:
        """Number of samples of ``epoch``, or ``None`` when unknown (iterables, loaders)."""
        return None

    def tensors(self, epoch: int) -> tuple[Tensor, Tensor] | None:
        """The epoch's tensors, when the data are tensors."""
        return None

    def layout(self, epoch: int) -> tuple[int, ...]:
        """A representative shape ``(N, C, *S)`` (N may be a batch size)."""
        raise NotImplementedError

    def counts(self, epoch: int, comm: Collective) -> Tensor:
        """Every count of ``epoch`` (all processes together), float64, for the statistics."""
        parts = comm.gather([y.double().cpu() for _, y in self._own(epoch, comm, 64)])
        flat = [y for part in parts for y in part]
        if not flat:
            raise ValueError(f"{self.name} data hold no sample")
        return torch.cat(flat)

    def _own(self, epoch: int, comm: Collective, batch_size: int) -> Batches:
        """This process's samples of ``epoch`` (each once, no shuffling).

        By default the unordered :meth:`batches` of inputs of unknown length (iterables,
        loaders), which each process reads as its own stream.
        """
        return self.batches(epoch, None, batch_size, False, 0)

    def batches(
        self, epoch: int, order: Tensor | None, batch_size: int, drop_last: bool, seed: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's training batches of ``epoch``.

        ``order``: the sample indices of this process (``None`` when :meth:`length` is);
        ``seed``: seeds the workers of the trainer's ``DataLoader``.
        """
        raise NotImplementedError

    def eval_batches(self, comm: Collective, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's share of the validation samples, each sample once overall."""
        return self._own(0, comm, batch_size)

    def check(self, epoch: int, comm: Collective) -> None:
        """Checks before training on ``epoch`` (that every process holds the same tensors)."""

    def describe(self, epoch: int, batch_size: int) -> str:
        """Words for the "no batch" error."""
        return f"the {self.name} {self.kind} yielded no batch"


class _Tensors(TrainInput):
    kind = "tensors"

    def __init__(
        self,
        name: str,
        check: CheckFn,
        fixed: tuple[Tensor, Tensor] | None,
        sampler: SamplerFn | None,
    ) -> None:
        super().__init__(name)
        self._check = check
        self._fixed = fixed
        self._sampler = sampler
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}
        self._checked: int | None = None

    def _first_checked(self, epoch: int) -> int:
        """The first epoch checked (fixed tensors are compared once)."""
        if self._checked is None:
            self._checked = epoch
        return self._checked

    def tensors(self, epoch: int) -> tuple[Tensor, Tensor]:
        if self._fixed is not None:
            return self._fixed
        if epoch not in self._cache:
            assert self._sampler is not None
            self._cache.clear()
            out = self._sampler(epoch)
            self._cache[epoch] = self._check(f"{self.name} sampler output of epoch {epoch}", out)
        return self._cache[epoch]

    def length(self, epoch: int) -> int:
        return int(self.tensors(epoch)[0].shape[0])

    def layout(self, epoch: int) -> tuple[int, ...]:
        return tuple(self.tensors(epoch)[0].shape)

    def counts(self, epoch: int, comm: Collective) -> Tensor:
        return self.tensors(epoch)[1]

    def check(self, epoch: int, comm: Collective) -> None:
        """Every process must hold the same tensors (a sampler is called by each)."""
        if comm.active and (self._sampler is not None or epoch == self._first_checked(epoch)):
            images, counts = self.tensors(epoch)
            sums = (images.shape[0], images.sum(dtype=torch.float64), counts.double().sum())
            comm.check_same([float(v) for v in sums], f"the {self.name} tensors of epoch {epoch}")

    def _own(self, epoch: int, comm: Collective, batch_size: int) -> Batches:
        images, counts = self.tensors(epoch)
        block = comm.shard(images.shape[0])
        x, y = images[block.start : block.stop], counts[block.start : block.stop]
        for begin in range(0, x.shape[0], batch_size):
            yield x[begin : begin + batch_size], y[begin : begin + batch_size]

    def batches(
        self, epoch: int, order: Tensor | None, batch_size: int, drop_last: bool, seed: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        images, counts = self.tensors(epoch)
        assert order is not None
        order = order.to(images.device)
        for begin in range(0, order.numel(), batch_size):
            idx = order[begin : begin + batch_size]
            if drop_last and idx.numel() < batch_size:
                break
            yield images.index_select(0, idx), counts.index_select(0, idx)

    def describe(self, epoch: int, batch_size: int) -> str:
        n = self.length(epoch)
        return f"{n} images with batch_size={batch_size} and drop_last=True"


def _loader(
    data: Dataset[Any],
    *,
    batch_size: int,
    sampler: Sequence[int] | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader[Any]:
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=collate_counts,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def _set_epoch(obj: object, epoch: int) -> None:
    set_epoch = getattr(obj, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


class _MapDataset(TrainInput):
    kind = "dataset"

    def __init__(self, name: str, dataset: Dataset[Any], num_workers: int, pin: bool) -> None:
        super().__init__(name)
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"{name}: a map-style Dataset must have a length (__len__)")
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin = pin

    def length(self, epoch: int) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def layout(self, epoch: int) -> tuple[int, ...]:
        n = self.length(epoch)
        if n == 0:
            raise ValueError(f"{self.name} dataset is empty")
        image, _ = item_image_count(self.dataset[0], f"{self.name} item 0")
        return (n, *image.shape)

    def counts(self, epoch: int, comm: Collective) -> Tensor:
        own = getattr(self.dataset, "counts", None)
        if isinstance(own, Tensor) and own.shape == (self.length(epoch),):
            return own.double()
        return super().counts(epoch, comm)

    def _own(self, epoch: int, comm: Collective, batch_size: int) -> Batches:
        block = comm.shard(self.length(epoch))
        subset = Subset(self.dataset, list(block))
        yield from _loader(
            subset, batch_size=batch_size, num_workers=self.num_workers, pin_memory=self.pin
        )

    def batches(
        self, epoch: int, order: Tensor | None, batch_size: int, drop_last: bool, seed: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        assert order is not None
        loader = _loader(
            self.dataset,
            batch_size=batch_size,
            sampler=order.tolist(),
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin,
            seed=seed,
        )
        yield from loader

    def describe(self, epoch: int, batch_size: int) -> str:
        n = self.length(epoch)
        return f"{n} items with batch_size={batch_size} and drop_last=True"


class _Iterable(TrainInput):
    kind = "iterable dataset"

    def __init__(self, name: str, dataset: IterableDataset[Any], num_workers: int, pin: bool):
        super().__init__(name)
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin = pin

    def layout(self, epoch: int) -> tuple[int, ...]:
        _set_epoch(self.dataset, epoch)
        for item in self.dataset:
            image, _ = item_image_count(item, f"{self.name} item 0")
            return (-1, *image.shape)
        raise ValueError(f"{self.name} iterable dataset yielded nothing")

    def batches(
        self, epoch: int, order: Tensor | None, batch_size: int, drop_last: bool, seed: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        _set_epoch(self.dataset, epoch)
        loader = _loader(
            self.dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin,
            seed=seed,
        )
        yield from loader


class _Loader(TrainInput):
    kind = "DataLoader"

    def __init__(self, name: str, loader: DataLoader[Any]) -> None:
        super().__init__(name)
        self.loader = loader
        self._checked = False

    def _epoch(self, epoch: int) -> None:
        """``set_epoch(epoch)`` on the sampler(s) and dataset that have it, once each."""
        seen: list[object] = []
        for obj in (
            self.loader.sampler,
            getattr(self.loader.batch_sampler, "sampler", None),
            self.loader.dataset,
        ):
            if obj is not None and not any(obj is s for s in seen):
                seen.append(obj)
                _set_epoch(obj, epoch)

    def layout(self, epoch: int) -> tuple[int, ...]:
        self._epoch(epoch)
        for batch in self.loader:
            return tuple(batch_images_counts(batch, f"{self.name} batch 0")[0].shape)
        raise ValueError(f"{self.name} DataLoader yielded no batch")

    def batches(
        self, epoch: int, order: Tensor | None, batch_size: int, drop_last: bool, seed: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        self._epoch(epoch)
        for i, batch in enumerate(self.loader):
            yield batch_images_counts(batch, f"{self.name} batch {i}")

    def check(self, epoch: int, comm: Collective) -> None:
        if self._checked:
            return
        self._checked = True
        sampler = self.loader.sampler
        if comm.world > 1 and isinstance(sampler, RandomSampler | SequentialSampler):
            warnings.warn(
                f"the {self.name} DataLoader uses a {type(sampler).__name__}: each of the "
                f"{comm.world} processes reads all the data (give it "
                "sampler=torch.utils.data.DistributedSampler(dataset))",
                stacklevel=4,
            )


EvalInput = TrainInput


def as_train_input(
    data: object, *, check: CheckFn, num_workers: int = 0, pin_memory: bool = False
) -> TrainInput:
    """Wrap what :meth:`~wsdet.train.Trainer.fit` was given as training data.

    Parameters
    ----------
    data : tensors, dataset, sampler or DataLoader
        See the module docstring.
    check : callable
        ``check(name, data) -> (images, counts)`` validating tensor data.
    num_workers : int, default 0
        Worker processes of the ``DataLoader`` built for a ``Dataset``.
    pin_memory : bool, default False
        Pin the batches (when training on CUDA).
    """
    return _as_input("train", data, check, num_workers, pin_memory, sampler_ok=True)


def as_eval_input(
    data: object, *, check: CheckFn, num_workers: int = 0, pin_memory: bool = False
) -> TrainInput:
    """Wrap the validation data (as :func:`as_train_input`, without samplers)."""
    return _as_input("val", data, check, num_workers, pin_memory, sampler_ok=False)


def _as_input(
    name: str, data: object, check: CheckFn, workers: int, pin: bool, *, sampler_ok: bool
) -> TrainInput:
    if isinstance(data, DataLoader):
        return _Loader(name, data)
    if hasattr(data, "images") and hasattr(data, "counts"):
        return _Tensors(name, check, check(name, data), None)
    if isinstance(data, IterableDataset):
        return _Iterable(name, data, workers, pin)
    if isinstance(data, Dataset):
        return _MapDataset(name, data, workers, pin)
    if sampler_ok and callable(data):
        return _Tensors(name, check, None, data)
    return _Tensors(name, check, check(name, data), None)


# --------------------------------------------------------------------------- scoring


def score_outputs(
    out: Tensor, counts: Tensor, *, regression: bool, mean: float, std: float
) -> tuple[float, float]:
    """Validation loss and metric of model outputs ``(N,)`` against counts ``(N,)``.

    Regression: the mean squared error and the mean absolute error of the counts
    ``out * std + mean``; classification: the binary cross-entropy with logits on
    ``count > 0`` and the accuracy (logit > 0 predicts presence). In float64.
    """
    out = out.double()
    y = counts.to(out.device, torch.float64)
    if regression:
        err = out * std + mean - y
        return float((err**2).mean()), float(err.abs().mean())
    present = (y > 0).double()
    loss = F.binary_cross_entropy_with_logits(out, present)
    return float(loss), float(((out > 0).double() == present).double().mean())


def gather_outputs(
    batches: Iterator[tuple[Tensor, Tensor]],
    forward: Callable[[Tensor], Tensor],
    comm: Collective,
) -> tuple[Tensor, Tensor]:
    """Every process's outputs and counts, concatenated in rank order, on every process.

    Each process runs ``forward`` on its share of the validation batches; the float64
    outputs and counts are gathered, so that :func:`score_outputs` reduces the very vectors
    one process would have scored (the blocks of :meth:`Collective.shard` in rank order are
    the data in their order): the validation loss does not depend on the number of
    processes. The result is on the device of the outputs.
    """
    outs: list[Tensor] = []
    ys: list[Tensor] = []
    device = torch.device("cpu")
    for x, y in batches:
        out = forward(x).double()
        device = out.device
        outs.append(out.cpu())
        ys.append(y.double().cpu())
    parts = comm.gather((outs, ys))
    all_out = [t for part in parts for t in part[0]]
    all_y = [t for part in parts for t in part[1]]
    if not all_out:
        raise ValueError("the validation data hold no sample")
    return torch.cat(all_out).to(device), torch.cat(all_y).to(device)
