"""Training of the paper-reproduction studies' networks: resumable, cached, shareable.

A network is trained once and cached under the study's output folder
(:class:`~wsdet.experiments.store.Store`), keyed by a hash of its exact configuration:
``models/<name>-<key>/`` holds the Trainer's ``last.pt`` (resumable training state),
``best.pt`` (best-validation weights), ``history.csv``, ``config.json`` and, once the run
ended, ``done.json`` (epochs, stop reason, seconds). A run interrupted mid-training resumes
from ``last.pt`` bit for bit; a finished one is loaded, never retrained. The detections
are cached beside them (:mod:`wsdet.experiments.detections`, re-exported here).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsdet.experiments.detections import (
    detect_all,
    detect_cached,
    load_detections,
    save_detections,
)
from wsdet.experiments.store import FolderLock, Store, config_key
from wsdet.models import UpsampleTo
from wsdet.models.zoo import ARCHITECTURES, METHOD_ARCHITECTURE, get_model
from wsdet.train import TrainConfig, Trainer

__all__ = [
    "ARCHITECTURES",
    "METHOD_ARCHITECTURE",
    "METHOD_LABELS",
    "STUCK_FRACTION",
    "Store",
    "TrainJob",
    "build_model",
    "config_key",
    "constant_val_loss",
    "detect_all",
    "detect_cached",
    "load_detections",
    "model_folder",
    "save_detections",
    "train_all",
    "train_cached",
]

log = logging.getLogger("wsdet.experiments")

#: Display names, in the paper's order (Fig. 5: A–F).
METHOD_LABELS: dict[str, str] = {
    "grad": "Grad",
    "guided_backprop": "Guided backprop",
    "grad_cam": "Grad-CAM",
    "gp_unet_no_residual": "GP-Unet no residual",
    "gp_unet": "GP-Unet",
    "gated_attention": "Gated Attention",
    "intensity": "Intensities",
}


def build_model(arch: str, dim: int, width: int | None = None) -> nn.Module:
    """A fresh reference network by architecture name: :func:`wsdet.models.get_model`."""
    return get_model(arch, dim=dim, width=width)


def decoder_key(arch: str, dim: int, shape: Sequence[int]) -> dict[str, Any]:
    """``{"upsample": "aligned"}`` for a network of ``arch`` whose decoder upsamples a map
    pooled to a size that is not a multiple of its pooling along some axis of ``shape``,
    else ``{}``: a part of its cache key. Such networks were trained with stretched
    upsampling before :class:`~wsdet.models.UpsampleTo` aligned it, and must not be read
    back; at the other sizes both agree, and the keys of those networks stay as they were.
    """
    model = build_model(arch, dim, 1)
    factor = 2 ** int(getattr(model, "n_pools", 0))
    upsamples = any(isinstance(m, UpsampleTo) for m in model.modules())
    return {"upsample": "aligned"} if upsamples and any(n % factor for n in shape) else {}


def _model_key(spec: dict[str, Any], config: TrainConfig, init_from: Path | None) -> dict[str, Any]:
    key: dict[str, Any] = {"spec": spec, "train": config.to_dict()}
    if init_from is not None:
        key["init_from"] = Path(init_from).parent.name
    return key


def model_folder(
    store: Store,
    name: str,
    spec: dict[str, Any],
    config: TrainConfig,
    init_from: Path | None = None,
) -> Path:
    """The cache folder of the network :func:`train_cached` trains for these arguments."""
    return store.entry("models", name, _model_key(spec, config, init_from))


class _TrainLock(FolderLock):
    """The lock of a network being trained: ``folder/train.lock`` (see :class:`FolderLock`)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "train.lock")


def train_cached(
    store: Store,
    name: str,
    spec: dict[str, Any],
    config: TrainConfig,
    train: Any,
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    augment: Any = None,
    on_trained: Callable[[str], None] | None = None,
    wait: bool = True,
    init_from: Path | None = None,
    train_missing: bool = True,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, dict[str, Any]] | None:
    """Train the network described by ``spec`` (arch, dim, width, data...) or load it.

    ``spec`` and ``config`` together form the cache key; ``config.time_budget`` and
    ``config.max_epochs`` are part of it, so a longer budget is a different network.
    The network is built with the global generator seeded by ``config.seed`` (so that
    parameters an ``init`` scheme keeps, e.g. biases under ``"kaiming_conv"``, are
    reproducible). While training, the entry is locked: another process running the same
    study waits for it (``wait=True``) or gets ``None`` back (``wait=False``) and can train
    something else meanwhile. ``init_from``: the ``best.pt`` of another network to
    fine-tune from (its folder name, which carries that network's key, joins the key).
    ``train_missing=False`` only loads: a network that has not finished gives ``None``.
    ``device``: where to train (e.g. ``"cuda"``); not part of the key. The network is
    built and initialised on the CPU either way (the same starting weights), trained on
    ``device`` and returned on the CPU; the summary records the device.
    Returns the model (CPU, eval mode, predicting counts or logits) and the run summary.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    key_cfg = _model_key(spec, config, init_from)
    folder = store.entry("models", name, key_cfg)  # = model_folder(...)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(spec["arch"], spec["dim"], spec.get("width"))
    done = folder / "done.json"
    if not train_missing and not done.exists():
        return None
    lock = _TrainLock(folder)
    if not done.exists() and not lock.acquire(wait):
        return None
    try:
        if done.exists():
            Trainer(model).finetune_from(folder / "best.pt")
            info: dict[str, Any] = store.read_json(done)
            info["cached"] = True
            info["folder"] = folder.name
            return model.eval(), info
        store.write_json(folder / "config.json", key_cfg)
        resumed = (folder / "last.pt").exists()
        log.info("training %s (%s)%s", name, folder.name, " — resuming" if resumed else "")
        t0 = time.perf_counter()
        trainer = Trainer(model, config, out_dir=folder, augment=augment, init_from=init_from)
        model.to(dev)  # after the initialisation, which is the same on every device
        try:
            result = trainer.fit(train, val, resume=True)
        finally:
            model.cpu()
        info = {
            "name": name,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "epochs": result.epochs,
            "stop_reason": result.stop_reason,
            "train_seconds": result.seconds,
            "wall_seconds_this_call": time.perf_counter() - t0,
            "parameters": sum(p.numel() for p in model.parameters()),
            "resumed": resumed,
            "device": _device_name(dev),
        }
        store.write_json(done, info)
    finally:
        lock.release()
    if on_trained is not None:
        on_trained(name)
    info["cached"] = False
    info["folder"] = folder.name
    return model.eval(), info


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@dataclasses.dataclass
class TrainJob:
    """One network of a study: the arguments of :func:`train_cached`.

    ``max_restarts``: how often to train the network again, with the next seed
    (``config.seed + k``), while its best validation loss is no better than
    ``STUCK_FRACTION`` times that of the best constant prediction (see
    :func:`constant_val_loss`): a run that never left the constant-output plateau.
    ``source``: the name of another job of the same :func:`train_all` call to fine-tune
    from; its *final* network (after any restart, see :func:`final_folder`) replaces
    ``init_from`` once it has finished.
    """

    name: str
    spec: dict[str, Any]
    config: TrainConfig
    train: Any
    val: tuple[torch.Tensor, torch.Tensor]
    augment: Any = None
    init_from: Path | None = None
    max_restarts: int = 0
    source: str | None = None


#: A run whose best validation loss is above this fraction of the constant prediction's is
#: taken to have stayed on the plateau of constant outputs (see ``TrainJob.max_restarts``).
STUCK_FRACTION = 0.9


def constant_val_loss(objective: str, counts: torch.Tensor) -> float:
    """Validation loss of the best constant output, the level of the plateau.

    Regression: the MSE of predicting the validation mean (their variance). Classification
    (labels ``counts > 0``): the binary cross-entropy of predicting their rate.
    """
    y = counts.to(torch.float64)
    if objective == "regression":
        return float(((y - y.mean()) ** 2).mean())
    p = float((y > 0).to(torch.float64).mean())
    if p in (0.0, 1.0):
        return 0.0
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def _stuck(best_val_loss: float, plateau: float) -> bool:
    return bool(best_val_loss > STUCK_FRACTION * plateau)


def final_folder(store: Store, job: TrainJob) -> Path | None:
    """The cache folder of ``job``'s network as :func:`train_all` leaves it: its first
    attempt off the plateau, or else its last allowed restart; ``None`` while an attempt
    that decides it has not finished (e.g. another process is still training it)."""
    plateau = constant_val_loss(job.config.objective, job.val[1])
    folder: Path | None = None
    for k in range(job.max_restarts + 1):
        config = dataclasses.replace(job.config, seed=job.config.seed + k)
        folder = model_folder(store, job.name, job.spec, config, job.init_from)
        done = folder / "done.json"
        if not done.exists():
            return None
        if not _stuck(float(store.read_json(done)["best_val_loss"]), plateau):
            return folder
    return folder


def train_all(
    store: Store,
    jobs: Sequence[TrainJob],
    *,
    on_trained: Callable[[str], None] | None = None,
    train: bool = True,
    only: Collection[str] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """Train (or load) every job; networks locked by another process are left for last.

    Start the same study command in two shells to use two cores: each process takes the
    next network nobody holds, and both finish with every network available. A job that
    fine-tunes another network (``init_from``) waits until that network has finished; list
    it after its source.

    ``train=False`` trains nothing: it returns only the jobs whose networks have finished
    (for an interim report while other processes train), in job order. ``only``: train
    just the jobs of these names (the others as with ``train=False``), e.g. to train some
    networks of a study on another machine; unknown names raise ``ValueError``.
    ``device``: where to train (see :func:`train_cached`).
    """
    names = [job.name for job in jobs]
    if only is not None:
        if isinstance(only, str):
            raise TypeError("only must be a collection of job names, not a single string")
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"only: unknown network(s) {unknown}; expected some of {names}")

    def run(job: TrainJob, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]] | None:
        plateau = constant_val_loss(job.config.objective, job.val[1])
        attempts: list[dict[str, Any]] = []
        for k in range(job.max_restarts + 1):
            config = dataclasses.replace(job.config, seed=job.config.seed + k)
            got = train_cached(
                store,
                job.name,
                job.spec,
                config,
                job.train,
                job.val,
                augment=job.augment,
                init_from=job.init_from,
                device=device,
                **kwargs,
            )
            if got is None:  # held by another process, or not finished (interim)
                return None
            info = got[1]
            stuck = _stuck(info["best_val_loss"], plateau)
            attempts.append(
                {
                    "seed": config.seed,
                    "folder": info["folder"],
                    "best_val_loss": info["best_val_loss"],
                }
            )
            if not stuck or k == job.max_restarts:
                info.update(constant_val_loss=plateau, stuck=stuck, attempts=attempts)
                return got
            log.info(
                "%s stayed on the plateau (best val loss %.4g vs %.4g for a constant): "
                "training again with seed %d",
                job.name,
                info["best_val_loss"],
                plateau,
                config.seed + 1,
            )
            kwargs["wait"] = True  # a restart is this process's job now
        raise AssertionError("unreachable")

    by_name = {job.name: job for job in jobs}
    unknown_sources = sorted({j.source for j in jobs if j.source and j.source not in by_name})
    if unknown_sources:
        raise ValueError(f"source: unknown network(s) {unknown_sources}; expected some of {names}")

    def ready(job: TrainJob) -> TrainJob | None:
        """``job`` with the network to fine-tune from resolved, or ``None`` until that
        network has finished."""
        if job.source is not None:
            folder = final_folder(store, by_name[job.source])
            return (
                None if folder is None else dataclasses.replace(job, init_from=folder / "best.pt")
            )
        if job.init_from is not None and not (job.init_from.parent / "done.json").exists():
            return None
        return job

    out: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    to_train = [job for job in jobs if train and (only is None or job.name in only)]
    trained_here = {job.name for job in to_train}
    for job in jobs:
        if job.name in trained_here or (resolved := ready(job)) is None:
            continue
        if (got := run(resolved, train_missing=False)) is not None:
            out[job.name] = got
    deferred: list[TrainJob] = []
    for wait, todo in ((False, to_train), (True, deferred)):
        for job in todo:
            resolved = ready(job)
            if not wait and resolved is None:
                log.info("%s waits for the network it is fine-tuned from; later", job.name)
                deferred.append(job)
                continue
            if resolved is None:  # its source was trained by another process meanwhile
                raise RuntimeError(
                    f"{job.name}: the network to fine-tune from has not finished "
                    f"({job.source or job.init_from}); list every job after its source"
                )
            got = run(resolved, on_trained=on_trained, wait=wait)
            if got is None:
                log.info("%s is being trained by another process; later", job.name)
                deferred.append(job)
            else:
                out[job.name] = got
    return {job.name: out[job.name] for job in jobs if job.name in out}
