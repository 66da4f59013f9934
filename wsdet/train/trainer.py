"""The :class:`Trainer`: fit a counting network, predict, evaluate, fine-tune."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from wsdet._checks import PathLike, check_int
from wsdet._modules import eval_mode, one_value_per_sample
from wsdet.data.loading import (
    as_eval_input,
    as_train_input,
    gather_outputs,
    score_outputs,
)
from wsdet.distributed import Collective, seed_for_rank
from wsdet.models import init_weights
from wsdet.train.checkpoints import (
    _BEST,
    _LAST,
    _epoch_generator,
    _global_seed,
    _Run,
    history_columns,
    read_resume_state,
    restore_state,
    weights_in_counts,
    write_best,
    write_history,
    write_state,
)
from wsdet.train.config import (
    AugmentFn,
    StopReason,
    TrainConfig,
    TrainData,
    TrainResult,
    ValData,
    _check_counts,
    _check_data,
    _check_images,
    make_optimizer,
)
from wsdet.train.runtime import (
    FitSession,
    _channels_last,
    _Progress,
    _set_memory_format,
    _to_format,
    progress_mode,
    restore_standard_strides,
)
from wsdet.train.scaling import (
    find_head,
    fold_target_scaling,
    target_stats,
    unfold_target_scaling,
)

__all__ = ["Trainer"]

logger = logging.getLogger("wsdet.train")


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
        state = weights_in_counts(path, self.model)
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
        ValueError
            If the data are not as described (e.g. a count is negative or not finite), or
            ``resume`` names a run with other settings.
        ImportError
            If ``progress="bar"`` and tqdm is not installed (before anything changes).
        FloatingPointError
            If the training loss becomes NaN or infinite.
        """
        s = self._prepare(train, val, resume)
        with torch.random.fork_rng(devices=s.cuda_devices):
            try:
                step_model = self._start(s)
                while (reason := s.run.stop_reason(self.config)) is None:
                    self._run_epoch(s, step_model)
                del step_model  # drop the DistributedDataParallel wrapper and its hooks
                if s.writes:
                    self._write_state(s, reason)
                if s.run.best_state is not None:
                    self.model.load_state_dict(s.run.best_state)
            finally:
                self._hand_back(s)
        return self._result(s, reason)

    # ------------------------------------------------------------------ fit, step by step

    def _prepare(self, train: TrainData, val: ValData, resume: bool | PathLike) -> FitSession:
        """Check the data and settings, read the state to resume from; change nothing."""
        cfg = self.config
        device = self.device
        comm = Collective.setup(device)  # joins the process group when run by torchrun
        shown = progress_mode(cfg.progress if comm.is_main else "none")  # tqdm missing: now
        pin = device.type == "cuda"
        val_in = as_eval_input(val, check=_check_data, num_workers=cfg.num_workers, pin_memory=pin)
        train_in = as_train_input(
            train, check=_check_data, num_workers=cfg.num_workers, pin_memory=pin
        )
        state = comm.on_main(lambda: read_resume_state(resume, self.out_dir, cfg, comm.world))
        if state is None and cfg.max_epochs == 0:
            raise ValueError("max_epochs must be >= 1 to start a new run")
        writes = self.out_dir is not None and comm.is_main  # only rank 0 writes files
        if writes:
            assert self.out_dir is not None
            self.out_dir.mkdir(parents=True, exist_ok=True)
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):  # probing a loader draws a seed
            val_shape = val_in.layout(0)
        ndim = len(val_shape)
        return FitSession(
            comm=comm,
            train=train_in,
            val=val_in,
            val_tensors=None if comm.active else val_in.tensors(0),
            val_shape=val_shape,
            fmt=self._memory_format(ndim),
            head=find_head(self.model)[0] if self._standardized else "",
            optimizer=make_optimizer(cfg, [p for p in self.model.parameters() if p.requires_grad]),
            scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
            batch_size=self._batch_size(ndim),
            eval_batch_size=self._eval_batch_size(ndim, None),
            cuda_devices=cuda_devices,
            writes=writes,
            progress_mode=shown,
            state=state,
            run=_Run(history={k: [] for k in history_columns(cfg.objective)}),
        )

    def _start(self, s: FitSession) -> nn.Module:
        """Restore the state (or seed a new run), standardise the head, set the memory
        format; the module that training steps call."""
        cfg = self.config
        if s.state is not None:
            cuda = self.device.type == "cuda" and s.comm.rank == 0
            restore_state(s.state, self.model, s.optimizer, s.scaler, cuda=cuda)
            s.run = _Run.from_checkpoint(s.state)
            s.in_counts = not self._standardized
            logger.info("resuming at epoch %d (best epoch %d)", s.run.epoch, s.run.best_epoch)
        else:
            torch.manual_seed(_global_seed(cfg.seed))
        first = s.train.layout(s.run.epoch)
        if len(first) != s.ndim or first[1] != s.val_shape[1]:
            raise ValueError(
                "train and val images must have the same layout (N, C, *S); got "
                f"{first} and {s.val_shape}"
            )
        if s.state is None and self._standardized:
            stats = None if cfg.target_stats is not None else s.train.counts(s.run.epoch, s.comm)
            s.run.mean, s.run.std = target_stats(cfg.target_stats, stats)
            if self._count_space:
                unfold_target_scaling(self.model, s.run.mean, s.run.std)
            s.in_counts = False
        step_model = self._step_model()
        _set_memory_format(self.model, s.fmt, s.ndim)
        if s.comm.active:  # DistributedDataParallel, after the memory format is set
            step_model = s.comm.wrap(self.model, compile=cfg.compile)
        s.progress = _Progress(s.progress_mode, cfg.max_epochs, s.run.epoch, cfg.log_every)
        return step_model

    def _run_epoch(self, s: FitSession, step_model: nn.Module) -> None:
        """Train one epoch, validate, record the row, write the files, show progress."""
        run = s.run
        start = time.perf_counter()
        s.train.check(run.epoch, s.comm)
        train_loss = self._train_epoch(step_model, s)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"the training loss became {train_loss} at epoch {run.epoch}")
        val_loss, val_metric = self._validate(s)
        improved = val_loss < run.best_loss - self.config.min_delta
        seconds = s.comm.max(time.perf_counter() - start)  # one clock for all ranks
        lr = float(s.optimizer.param_groups[0]["lr"])
        values = (run.epoch, train_loss, val_loss, val_metric, lr, seconds)
        columns = history_columns(self.config.objective)
        row = dict(zip(columns, (*values, run.elapsed + seconds), strict=True))
        run.record(row, improved, self.model)
        if s.writes:
            assert self.out_dir is not None
            write_history(self.out_dir, run.history)
            if improved:
                write_best(self.out_dir, run, s.head, self.config)
            if run.epoch % self.config.checkpoint_every == 0:
                self._write_state(s, None)
        assert s.progress is not None
        s.progress.update(row, run.best_epoch)

    def _hand_back(self, s: FitSession) -> None:
        """Whatever happened: close the display, give the model standard strides and its
        head back in counts."""
        if s.progress is not None:
            s.progress.close()
        restore_standard_strides(self.model)
        if not s.in_counts:
            fold_target_scaling(self.model, s.run.mean, s.run.std)

    def _result(self, s: FitSession, reason: StopReason) -> TrainResult:
        run = s.run
        if self.config.objective == "regression":
            self._count_space = True
        self.target_mean, self.target_std = run.mean, run.std
        said = "stopped (%s) after %d epochs, %.1f s; best epoch %d, val loss %.4g"
        logger.info(said, reason, run.epoch, run.elapsed, run.best_epoch, run.best_loss)
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

    def _write_state(self, s: FitSession, reason: StopReason | None) -> None:
        assert self.out_dir is not None
        write_state(
            self.out_dir,
            s.run,
            model=self.model,
            optimizer=s.optimizer,
            scaler=s.scaler,
            config=self.config,
            stop_reason=reason,
            cuda=bool(s.cuda_devices),
            world_size=s.comm.world,
        )

    # ------------------------------------------------------------------ internals

    @property
    def _standardized(self) -> bool:
        """Whether regression targets are standardised during :meth:`fit`."""
        return self.config.objective == "regression" and self.config.standardize_targets

    def _batch_size(self, ndim: int) -> int:
        if self.config.batch_size is not None:
            return self.config.batch_size
        return 64 if ndim == 4 else 1

    def _eval_batch_size(self, ndim: int, batch_size: int | None) -> int:
        if batch_size is not None:
            return check_int("batch_size", batch_size, minimum=1)
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

    def _train_epoch(self, step_model: nn.Module, s: FitSession) -> float:
        """One pass over the data; the mean training loss (regression: in counts²).

        The epoch's sample order is drawn from the ``(seed, epoch)`` generator and dealt to
        the processes by :meth:`Collective.shard_order` (the identity in one process).
        """
        cfg, comm, data, epoch = self.config, s.comm, s.train, s.run.epoch
        mean, std = s.run.mean, s.run.std
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
        checked = data.tensors(epoch) is not None  # tensors: counts checked up front
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        batches = data.batches(
            epoch, order, s.batch_size, cfg.drop_last, seed_for_rank(cfg.seed, epoch, comm.rank, 2)
        )
        with comm.join(step_model, enable=n is None):  # loaders: ranks may differ in batches
            for x, y in batches:
                if not checked:
                    _check_counts(f"train counts of epoch {epoch}", y)
                b = x.shape[0]
                x = x.to(device, non_blocking=True)
                if self.augment is not None:
                    x = self.augment(x, generator=gen)
                x = _to_format(x, s.fmt)
                y = y.to(device, torch.float32, non_blocking=True)
                with torch.autocast(device.type, dtype=amp, enabled=cfg.precision != "fp32"):
                    out = one_value_per_sample(step_model(x), b)
                if regression:
                    loss = F.mse_loss(out.float(), (y - mean) / std)
                else:
                    loss = F.binary_cross_entropy_with_logits(out.float(), (y > 0).float())
                self._step(s, loss)
                total += loss.detach().double() * b
                seen += b
        summed, count = comm.sum([float(total), seen])
        if count == 0:
            raise ValueError(
                f"no training batch in epoch {epoch}: {data.describe(epoch, s.batch_size)}"
            )
        mean_loss = summed / count
        return mean_loss * std**2 if regression else mean_loss

    @staticmethod
    def _step(s: FitSession, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` and step the optimiser (fp16: scaled, skipped on overflow)."""
        s.optimizer.zero_grad(set_to_none=True)
        if s.scaler.is_enabled():
            torch.autograd.backward(s.scaler.scale(loss))
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            torch.autograd.backward(loss)
            s.optimizer.step()

    def _forward(self, images: torch.Tensor, bs: int, fmt: torch.memory_format) -> torch.Tensor:
        """Eval-mode float32 outputs (N,) on the model's device."""
        device = self.device
        outs = []
        with eval_mode(self.model), torch.inference_mode():
            for begin in range(0, images.shape[0], bs):
                x = _to_format(images[begin : begin + bs].to(device, non_blocking=True), fmt)
                outs.append(one_value_per_sample(self.model(x), x.shape[0]).float())
        return torch.cat(outs)

    def _validate(self, s: FitSession) -> tuple[float, float]:
        """Validation loss and metric (count MAE, or presence accuracy) of the epoch.

        Tensors are scored here; otherwise each process scores its share of the batches
        and every output is gathered, then scored.
        """
        bs = s.eval_batch_size
        if s.val_tensors is not None:
            outputs, targets = self._forward(s.val_tensors[0], bs, s.fmt), s.val_tensors[1]
        else:
            batches = s.val.eval_batches(s.comm, bs)
            outputs, targets = gather_outputs(
                batches, lambda x: self._forward(x, bs, s.fmt), s.comm
            )
            _check_counts("val counts", targets)
        regression = self.config.objective == "regression"
        return score_outputs(
            outputs, targets, regression=regression, mean=s.run.mean, std=s.run.std
        )
