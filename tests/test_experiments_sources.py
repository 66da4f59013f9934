"""A network fine-tuned from another job starts from that job's *final* network: after a
restart off the plateau, the restarted run, and only once every deciding run finished."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import wsdet.experiments.common as common
from wsdet.experiments import Store, TrainJob, train_all
from wsdet.experiments.common import final_folder, model_folder
from wsdet.train import TrainConfig


def _jobs() -> tuple[TrainJob, TrainJob]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=g)
    y = torch.tensor([0.0, 1.0, 2.0, 5.0, 0.0, 1.0, 2.0, 5.0])
    cfg = TrainConfig(optimizer="adam", lr=1e-3, max_epochs=2, batch_size=4, progress="none")
    spec = {"arch": "basecnn", "dim": 2, "width": 2}
    source = TrainJob("source", spec, cfg, (x, y), (x[:4], y[:4]), max_restarts=2)
    tuned = TrainJob("tuned", spec, cfg, (x, y), (x[:4], y[:4]), source="source")
    return source, tuned


def _finish(store: Store, job: TrainJob, k: int, best: float) -> Path:
    """Write attempt ``k`` of ``job`` as finished with ``best`` validation loss."""
    config = dataclasses.replace(job.config, seed=job.config.seed + k)
    folder = model_folder(store, job.name, job.spec, config, job.init_from)
    store.write_json(folder / "done.json", {"best_val_loss": best})
    return folder


def test_final_folder_follows_the_restarts(tmp_path: Path) -> None:
    store = Store(tmp_path)
    source, _ = _jobs()
    plateau = common.constant_val_loss("regression", source.val[1])  # 3.5 by hand
    assert plateau == pytest.approx(3.5)
    assert final_folder(store, source) is None  # nothing finished
    _finish(store, source, 0, plateau)  # stuck: a restart decides
    assert final_folder(store, source) is None
    learned = _finish(store, source, 1, 0.5 * plateau)
    assert final_folder(store, source) == learned
    _finish(store, source, 1, 0.95 * plateau)  # stuck too: the last allowed restart decides
    assert final_folder(store, source) is None
    last = _finish(store, source, 2, plateau)
    assert final_folder(store, source) == last  # out of restarts: kept, failed


def test_train_all_fine_tunes_from_the_restarted_source(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path)
    source, tuned = _jobs()
    plateau = common.constant_val_loss("regression", source.val[1])
    losses = {("source", 0): plateau, ("source", 1): 0.1 * plateau, ("tuned", 0): 0.2}
    started_from: list[Any] = []

    def fake(store, name, spec, config, *args, init_from=None, **kwargs):
        job = source if name == "source" else dataclasses.replace(tuned, init_from=init_from)
        k = config.seed - job.config.seed
        folder = _finish(store, job, k, losses[(name, config.seed)])
        if name == "tuned":
            started_from.append(init_from)
        return torch.nn.Linear(1, 1), {
            "best_val_loss": losses[(name, config.seed)],
            "folder": folder.name,
        }

    monkeypatch.setattr(common, "train_cached", fake)
    got = train_all(store, [source, tuned])
    restarted = model_folder(
        store, "source", source.spec, dataclasses.replace(source.config, seed=1)
    )
    assert started_from == [restarted / "best.pt"]  # not the stuck first attempt's
    assert [a["seed"] for a in got["source"][1]["attempts"]] == [0, 1]
    # a process that only loads (interim) resolves the same source
    again = train_all(store, [source, tuned], train=False)
    assert set(again) == {"source", "tuned"}
    with pytest.raises(ValueError, match="source: unknown network"):
        train_all(store, [dataclasses.replace(tuned, source="nowhere")])
