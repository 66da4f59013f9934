"""Data-parallel training and sharded inference on torch.distributed (2 gloo processes).

The reference is always the single-process run: two processes with per-process batch ``b``
must train as one process with batch ``2b`` over the same sample order, and the merged
sharded detections must equal the single-process ones exactly. The processes are started
by ``torchrun`` (``python -m torch.distributed.run --standalone``) running
``tests/dist_worker.py``, one thread each; the in-process references run on one thread too.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dist_worker as worker
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import wsdet
from wsdet._io import load_checkpoint
from wsdet.data.loading import batch_images_counts, collate_counts, item_image_count
from wsdet.distributed import Collective, global_batch_change
from wsdet.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="no torch.distributed gloo"
)

REL = 1e-6  # the acceptance bound on the weights, relative


@contextmanager
def one_thread() -> Iterator[None]:
    """Float sums depend on the thread count: the references use one, as the workers do."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def torchrun(scenario: str, out: Path, nproc: int = 2) -> None:
    worker.launch(scenario, out, nproc)


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|b|`` over the tensors of two state dicts."""
    assert a.keys() == b.keys()
    worst = 0.0
    for key, ref in b.items():
        if ref.is_floating_point():
            scale = float(ref.abs().max().clamp_min(1e-30))
            worst = max(worst, float((a[key] - ref).abs().max()) / scale)
        else:
            assert torch.equal(a[key], ref), key
    return worst


def reference(name: str, folder: Path, **overrides: Any) -> tuple[Trainer, Any]:
    """The single-process run of a case (one process, the whole global batch)."""
    import dataclasses

    trainer, train, val, kwargs = worker.make_case(name, 1, 0, folder / "ckpt")
    if overrides:
        trainer.config = dataclasses.replace(trainer.config, **overrides)
    with one_thread():
        result = trainer.fit(train, val, **kwargs)
    return trainer, result


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    reference("resume_from_one", out / "resume_from_one", max_epochs=2)  # 2 epochs, 1 process
    first = out / "resume_from_one" / "ckpt" / "last.pt"
    shutil.copy(first, out / "resume_from_one_first.pt")
    torchrun("train", out)
    return out


@pytest.mark.parametrize("name", ["adam", "adadelta_dataset", "loader"])
def test_two_processes_train_as_one_with_the_global_batch(
    trained: Path, tmp_path: Path, name: str
) -> None:
    ref, result = reference(name, tmp_path / name)
    ranks = [load_checkpoint(trained / name / f"rank{r}.pt") for r in (0, 1)]
    for key, value in ranks[0]["state"].items():  # DDP keeps the replicas identical
        assert torch.equal(ranks[1]["state"][key], value), key
    diff = rel_diff(ranks[0]["state"], ref.model.state_dict())
    print(f"{name}: max relative weight difference, 2 x b vs 1 x 2b: {diff:.2e}")
    assert diff <= REL
    got = ranks[0]["result"]
    assert (got["epochs"], got["best_epoch"], got["stop_reason"]) == (
        result.epochs, result.best_epoch, result.stop_reason,
    )  # fmt: skip
    # target scaling: the same statistics, folded into the same head
    # (the counts of datasets and loaders are gathered from the ranks: sums in another order)
    stats = pytest.approx((result.target_mean, result.target_std), rel=1e-14)
    assert (got["target_mean"], got["target_std"]) == stats
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(got["history"][column], result.history[column], rtol=1e-5)
    # the same checkpoints, written by rank 0
    mine, theirs = (load_checkpoint(d / name / "ckpt" / "last.pt") for d in (trained, tmp_path))
    assert (mine["epoch"], mine["best_epoch"], mine["stop_reason"]) == (
        theirs["epoch"], theirs["best_epoch"], theirs["stop_reason"],
    )  # fmt: skip
    assert (mine["world_size"], theirs["world_size"]) == (2, 1)
    assert rel_diff(mine["model"], theirs["model"]) <= REL
    assert rel_diff(mine["best_model"], theirs["best_model"]) <= REL
    for pid, state in theirs["optimizer"]["state"].items():
        assert rel_diff(mine["optimizer"]["state"][pid], state) <= 1e-5
    best = [load_checkpoint(d / name / "ckpt" / "best.pt") for d in (trained, tmp_path)]
    assert rel_diff(best[0]["model"], best[1]["model"]) <= REL
    assert rel_diff(best[0]["model"], ranks[0]["state"]) == 0.0  # the returned model, folded


def test_early_stopping_and_time_budget_as_in_one_process(trained: Path, tmp_path: Path) -> None:
    for name, epochs, best, reason in [
        ("early_stop", 9, 5, "patience"),
        ("time_budget", 1, 0, "time_budget"),
    ]:
        _, single = reference(name, tmp_path / name)
        for rank in (0, 1):
            got = load_checkpoint(trained / name / f"rank{rank}.pt")["result"]
            assert (got["epochs"], got["best_epoch"], got["stop_reason"]) == (epochs, best, reason)
            assert (single.epochs, single.best_epoch, single.stop_reason) == (epochs, best, reason)
            # the validation loss reduced over the two shards is each epoch's scripted loss
            assert got["history"]["val_loss"] == single.history["val_loss"]
            assert got["history"]["val_loss"] == pytest.approx(worker.LOSSES[:epochs], rel=1e-6)


def test_only_rank_zero_writes(trained: Path) -> None:
    writes = [json.loads((trained / f"writes_rank{r}.json").read_text()) for r in (0, 1)]
    assert writes[1] == []
    names = {Path(p).name for p in writes[0]}
    assert names == {"last.pt", "best.pt", "history.csv"}
    for name in worker.CASES:  # no temporary file left behind
        assert not [p for p in os.listdir(trained / name / "ckpt") if p.endswith(".tmp")]


def test_processes_that_see_different_data_are_told(trained: Path) -> None:
    for rank in (0, 1):
        said = json.loads((trained / f"misuse_rank{rank}.json").read_text())
        assert "differ between the 2 processes" in said["sampler"]
        assert "RandomSampler: each of the 2 processes reads all the data" in said["loader"]


def test_resume_with_another_number_of_processes(trained: Path, tmp_path: Path) -> None:
    straight, _ = reference("adam", tmp_path / "straight")  # 1 process, 4 epochs
    # started by one process (2 epochs), finished by two
    two = load_checkpoint(trained / "resume_from_one" / "rank0.pt")
    first = load_checkpoint(trained / "resume_from_one_first.pt")
    assert (first["epoch"], first["world_size"], two["result"]["epochs"]) == (2, 1, 4)
    seconds = two["result"]["history"]["seconds"]
    assert seconds[:2] == first["history"]["seconds"]  # the first two epochs were resumed
    diff = rel_diff(two["state"], straight.model.state_dict())
    print(f"1 -> 2 processes: max relative weight difference to 1 process: {diff:.2e}")
    assert diff <= REL
    # started by two processes (2 epochs), finished by one
    folder = tmp_path / "to_one"
    shutil.copytree(trained / "resume_to_one" / "ckpt", folder / "ckpt")
    assert load_checkpoint(folder / "ckpt" / "last.pt")["epoch"] == 2
    started = load_checkpoint(folder / "ckpt" / "last.pt")
    assert started["world_size"] == 2
    one, result = reference("resume_to_one", folder)
    assert result.epochs == 4
    assert result.history["seconds"][:2] == started["history"]["seconds"]
    diff = rel_diff(one.model.state_dict(), straight.model.state_dict())
    print(f"2 -> 1 processes: max relative weight difference to 1 process: {diff:.2e}")
    assert diff <= REL


def test_resume_refuses_another_global_batch(tmp_path: Path) -> None:
    assert global_batch_change(4, 2, 8, 1) is None
    assert global_batch_change(None, 1, None, 1) is None
    assert "batch_size x processes" in str(global_batch_change(4, 2, 4, 1))
    assert global_batch_change(4, 1, 8, 1) == "batch_size: 4 -> 8"
    trainer, train, val, _ = worker.make_case("adam", 1, 0, tmp_path)
    trainer.config = TrainConfig(optimizer="adam", lr=0.02, batch_size=8, max_epochs=1)
    trainer.fit(train, val)
    state = load_checkpoint(tmp_path / "last.pt")
    state["world_size"] = 2  # as if two processes had trained with batch 8 each
    torch.save(state, tmp_path / "last.pt")
    again = Trainer(worker.TinyNet(), trainer.config, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"batch_size: 8 x 2 processes -> 8 x 1 process"):
        again.fit(train, val, resume=True)


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    from wsdet import run_detection

    out = tmp_path_factory.mktemp("sharded")
    with one_thread():
        expected = run_detection(
            worker.Volumes(), worker.detector(), out / "ref", **worker.DETECT_OPTIONS
        )
    shutil.copytree(out / "ref", out / "resumed")  # an interrupted run: three volumes missing
    for i in (1, 4, 5):
        (out / "resumed" / "volumes" / f"{i:06d}.npz").unlink()
    for name in ("detections.npz", "detections.csv"):
        (out / "resumed" / name).unlink()
    torchrun("detect", out)
    return out, expected


def assert_same(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a.points, b.points) and a.points.dtype == b.points.dtype
        assert np.array_equal(a.scores, b.scores) and a.scores.dtype == b.scores.dtype
        assert (a.count, a.n_candidates) == (b.count, b.n_candidates)


def test_sharded_detection_equals_one_process(detected: tuple[Path, list[Any]]) -> None:
    from wsdet.inference import read_detections

    out, expected = detected
    assert all(len(d) > 0 for d in expected)
    assert_same(read_detections(out / "fresh"), expected)
    reads = [json.loads((out / f"read_rank{r}.json").read_text())["fresh"] for r in (0, 1)]
    assert sorted(reads[0] + reads[1]) == list(range(7))  # each volume once, on one rank
    assert reads[0] and reads[1]
    assert (out / "fresh" / "detections.csv").read_text() == (
        out / "ref" / "detections.csv"
    ).read_text()
    with np.load(out / "fresh" / "detections.npz") as f:
        assert f["ids"].tolist() == [f"case{i:02d}" for i in range(7)]


def test_sharded_rerun_computes_only_the_missing_volumes(
    detected: tuple[Path, list[Any]],
) -> None:
    from wsdet.inference import read_detections

    out, expected = detected
    reads = [json.loads((out / f"read_rank{r}.json").read_text())["resumed"] for r in (0, 1)]
    assert sorted(reads[0] + reads[1]) == [1, 4, 5]
    assert_same(read_detections(out / "resumed"), expected)


def test_rerun_skips_finished_volumes_and_refuses_other_settings(tmp_path: Path) -> None:
    from wsdet import run_detection

    first = worker.Volumes(4)
    expected = run_detection(first, worker.detector(), tmp_path, n=2)
    assert sorted(first.read) == [0, 1, 2, 3]
    (tmp_path / "volumes" / "000002.npz").unlink()
    again = worker.Volumes(4)
    assert_same(run_detection(again, worker.detector(), tmp_path, n=2), expected)
    assert again.read == [2]
    with pytest.raises(ValueError, match="other settings"):
        run_detection(worker.Volumes(4), worker.detector(), tmp_path, n=3)
    other = worker.detector()
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="other settings"):  # other weights
        run_detection(worker.Volumes(4), other, tmp_path, n=2)
    fused = worker.detector()
    fused = wsdet.Detector(fused.model, method="gp_unet", fuse_intensity=True)
    with pytest.raises(ValueError, match=r"other settings \(method_options\)"):
        run_detection(worker.Volumes(4), fused, tmp_path, n=2)  # same weights, other option
    # tiling is exact, so another tile size is not another setting
    tiled = run_detection(worker.Volumes(4), worker.detector(), tmp_path, n=2, tile_size=(8, 8, 8))
    assert_same(tiled, expected)
    with pytest.raises(TypeError, match="indexable"):
        run_detection(iter([]), worker.detector(), tmp_path / "x")
    with pytest.raises(ValueError, match="ids must have one entry"):
        run_detection(worker.Volumes(4), worker.detector(), tmp_path / "y", ids=["a"])


def test_run_detection_reads_volumes_and_arrays(tmp_path: Path) -> None:
    """Volumes (named by file), numpy arrays and tuples give the detector's own answer."""
    from wsdet import run_detection
    from wsdet.io import Volume

    det = worker.detector()
    images = [worker.Volumes()[i]["image"] for i in range(3)]
    items = [
        Volume(images[0][0].double().numpy(), path=tmp_path / "a.nii.gz"),
        images[1].numpy(),
        (images[2], "extra"),
    ]
    got = run_detection(items, det, tmp_path / "out", n=3, size=3)
    for image, found in zip(images, got, strict=True):
        (direct,) = det.detect(image[None], n=3, size=3)
        assert_same([found], [direct])
    with np.load(tmp_path / "out" / "detections.npz") as f:
        assert f["ids"].tolist() == ["a", "1", "2"]


# --------------------------------------------------------------------------- data input


def _fit(train: Any, val: Any, **config: Any) -> tuple[Trainer, Any]:
    torch.manual_seed(0)
    config = {"optimizer": "adam", "lr": 0.02, "max_epochs": 3, "progress": "none"} | config
    cfg = TrainConfig(**config)
    trainer = Trainer(worker.TinyNet(), cfg)
    return trainer, trainer.fit(train, val)


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    for key, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[key], value), key


def test_map_dataset_of_tuples_or_dicts_trains_as_its_tensors() -> None:
    train, val = worker.spot_data(20, 0), worker.spot_data(6, 1)
    tensors, r1 = _fit(train, val, batch_size=6)
    as_tuples, r2 = _fit(TensorDataset(*train), TensorDataset(*val), batch_size=6)
    assert_same_weights(tensors, as_tuples)  # the same batches in the same order

    class Dicts(torch.utils.data.Dataset[dict[str, Any]]):
        def __init__(self, data: tuple[torch.Tensor, torch.Tensor]) -> None:
            self.data = data

        def __len__(self) -> int:
            return len(self.data[1])

        def __getitem__(self, i: int) -> dict[str, Any]:  # numpy image, int count
            return {"image": self.data[0][i].numpy(), "count": int(self.data[1][i]), "id": i}

    as_dicts, r3 = _fit(Dicts(train), Dicts(val), batch_size=6, num_workers=2)
    assert_same_weights(tensors, as_dicts)  # worker processes change nothing
    assert r1.history["val_loss"] == pytest.approx(r2.history["val_loss"], rel=1e-12)
    for column in ("train_loss", "val_loss", "val_mae"):
        assert r2.history[column] == r3.history[column]


class Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Yields the items in a fixed order; counts its epochs."""

    def __init__(self, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.data = data
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        step, first = (1, 0) if info is None else (info.num_workers, info.id)
        for i in range(first, len(self.data[1]), step):
            yield self.data[0][i], self.data[1][i]


def test_iterable_dataset_and_user_loader_train_as_unshuffled_tensors() -> None:
    train, val = worker.spot_data(16, 0), worker.spot_data(6, 1)
    tensors, _ = _fit(train, val, batch_size=4, shuffle=False)
    stream = Stream(train)
    streamed, _ = _fit(stream, TensorDataset(*val), batch_size=4)
    assert_same_weights(tensors, streamed)
    assert stream.epochs[-3:] == [0, 1, 2]
    loader = DataLoader(TensorDataset(*train), batch_size=4, num_workers=2)
    loaded, _ = _fit(loader, DataLoader(TensorDataset(*val), batch_size=4))
    assert_same_weights(tensors, loaded)


def test_user_loader_sampler_gets_the_epoch() -> None:
    train, val = worker.spot_data(12, 0), worker.spot_data(6, 1)
    sampler = torch.utils.data.DistributedSampler(
        TensorDataset(*train), num_replicas=1, rank=0, shuffle=True, seed=3
    )
    epochs: list[int] = []
    set_epoch = sampler.set_epoch
    sampler.set_epoch = lambda e: (epochs.append(e), set_epoch(e))[1]  # type: ignore[method-assign]
    loader = DataLoader(TensorDataset(*train), batch_size=4, sampler=sampler)
    _fit(loader, val)
    assert epochs[-3:] == [0, 1, 2]


def test_dataset_statistics_come_from_all_items_or_a_counts_attribute() -> None:
    train, val = worker.spot_data(20, 0), worker.spot_data(6, 1)
    _, result = _fit(TensorDataset(*train), val, max_epochs=1)
    y = train[1].double()
    assert (result.target_mean, result.target_std) == (float(y.mean()), float(y.std(correction=0)))

    class WithCounts(TensorDataset):
        counts = torch.full((20,), 2.0)
        counts[0] = 4.0

    _, result = _fit(WithCounts(*train), val, max_epochs=1)
    assert result.target_mean == pytest.approx(2.1)


def test_bad_items_and_batches_name_what_was_expected() -> None:
    with pytest.raises(KeyError, match="'count'"):
        item_image_count({"image": torch.zeros(1, 4, 4)})
    with pytest.raises(ValueError, match="floating-point"):
        item_image_count((torch.zeros(1, 4, 4, dtype=torch.long), 1))
    with pytest.raises(ValueError, match="one real number"):
        item_image_count((torch.zeros(1, 4, 4), [1, 2]))
    with pytest.raises(ValueError, match="one shape"):
        collate_counts([(torch.zeros(1, 4, 4), 1), (torch.zeros(1, 5, 4), 1)])
    with pytest.raises(ValueError, match="hold 2 real numbers"):
        batch_images_counts((torch.zeros(2, 1, 4, 4), torch.ones(3)))
    with pytest.raises(TypeError, match="batches must be"):
        batch_images_counts(torch.zeros(2, 1, 4, 4))
    trainer = Trainer(worker.TinyNet(), TrainConfig(max_epochs=1, progress="none"))
    with pytest.raises(ValueError, match="same layout"):
        trainer.fit(
            TensorDataset(*worker.spot_data(4, 0)), (torch.rand(4, 2, 10, 10), torch.ones(4))
        )
    with pytest.raises(ValueError, match="num_workers"):
        TrainConfig(num_workers=-1)


def test_fp16_autocast_scales_the_loss_and_resumes_exactly(tmp_path: Path) -> None:
    train, val = worker.spot_data(16, 0), worker.spot_data(6, 1)

    def run(out: Path, epochs: int) -> Trainer:
        torch.manual_seed(0)
        cfg = TrainConfig(
            optimizer="adam", lr=0.02, batch_size=8, max_epochs=epochs, precision="fp16",
            progress="none",
        )  # fmt: skip
        trainer = Trainer(worker.TinyNet(), cfg, out_dir=out)
        trainer.fit(train, val, resume=True)
        return trainer

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    resumed = run(tmp_path / "part", 4)
    assert_same_weights(full, resumed)
    state = load_checkpoint(tmp_path / "full" / "last.pt")
    assert state["scaler"]["scale"] > 1.0  # the loss was scaled
    assert all(p.dtype == torch.float32 for p in full.model.parameters())


def test_collective_is_the_identity_in_one_process() -> None:
    comm = Collective(torch.device("cpu"))
    assert not comm.active and comm.world == 1 and comm.is_main
    assert comm.sum([1.5, 2]) == [1.5, 2.0]
    assert comm.on_main(lambda: 3) == 3
    order = torch.tensor([3, 1, 2])
    assert comm.shard_order(order) is order
    assert comm.shard(5) == range(0, 5)


def test_shard_order_deals_global_batches() -> None:
    """Rank r's k-th batch of b: positions kWb..(k+1)Wb-1 of the order, all ranks together."""
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    parts = []
    for rank in (0, 1, 2):
        comm = Collective(torch.device("cpu"))
        comm.active, comm.rank, comm.world = True, rank, 3
        parts.append(comm.shard_order(order))
    for k in range(2):  # b = 2, W = 3: global batches of 6
        together = torch.cat([p[2 * k : 2 * k + 2] for p in parts])
        assert sorted(together.tolist()) == sorted(order[6 * k : 6 * k + 6].tolist())


@contextmanager
def group_of_one() -> Iterator[None]:
    """A gloo process group of one process, in this process (no network: a HashStore)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_group_of_one_trains_bit_exactly_as_no_group(tmp_path: Path) -> None:
    """Rank 0 of DistributedDataParallel follows the single-process run exactly (dropout,
    augmentation, a sampler, resume), and the model comes back free of DDP's hooks."""
    from test_train import TinyNet, flip_augment, spot_data

    def run(out: Path, epochs: int) -> Trainer:
        torch.manual_seed(0)
        cfg = TrainConfig(
            optimizer="adam", lr=0.02, batch_size=6, max_epochs=epochs, seed=4, progress="none"
        )
        trainer = Trainer(TinyNet(dropout=0.3), cfg, augment=flip_augment, out_dir=out)
        trainer.fit(lambda e: spot_data(18, e % 2), spot_data(8, 1), resume=True)
        return trainer

    plain = run(tmp_path / "plain", 3)
    with group_of_one():
        assert Collective.setup(torch.device("cpu")).active
        run(tmp_path / "ddp", 2)
        ddp = run(tmp_path / "ddp", 3)  # resumed
    assert_same_weights(plain, ddp)
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("plain", "ddp"))
    assert a["history"]["val_loss"] == b["history"]["val_loss"]
    assert (a["world_size"], b["world_size"]) == (1, 1)
    # no hook left: a backward pass without any process group works
    x = torch.rand(2, 1, 10, 10)
    ddp.model(x).sum().backward()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ddp.model.modules())
