"""Scenarios that ``tests/test_distributed.py`` runs under ``torchrun`` (2 gloo processes).

Each training case is defined once, by :func:`make_case`, for any number of processes: the
per-process batch is the global batch divided by the world size, so the test can build the
single-process reference (one process, the whole global batch) from the same definition.

Run as ``torchrun --standalone --nproc-per-node 2 tests/dist_worker.py {train,detect} OUT``;
every rank writes what it computed under ``OUT`` (model weights, results, the files it wrote,
the volumes it read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _train_helpers import LOSSES, Scripted, TinyNet, spot_data
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import wsdet.distributed
import wsdet.train.checkpoints
from wsdet.train import TrainConfig, Trainer, TrainResult

GLOBAL_BATCH = 8
CASES = ("adam", "adadelta_dataset", "loader", "early_stop", "time_budget")
RESUME_CASES = ("resume_from_one", "resume_to_one")


def _loader(data: Dataset[Any], batch: int, world: int, rank: int, shuffle: bool) -> DataLoader:
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=5)
    return DataLoader(data, batch_size=batch, sampler=sampler)


def make_case(
    name: str, world: int, rank: int, out_dir: Path | None, device: str | torch.device = "cpu"
) -> tuple[Trainer, Any, Any, dict[str, Any]]:
    """Trainer, train data, val data and ``fit`` keywords of a case for ``world`` processes."""
    b = GLOBAL_BATCH // world
    torch.manual_seed(0)
    if name in ("early_stop", "time_budget"):
        images = torch.rand(4, 1, 4, 4)
        extra = {"patience": 3} if name == "early_stop" else {"time_budget": 1e-9}
        cfg = TrainConfig(
            standardize_targets=False, max_epochs=12, batch_size=4 // world,
            optimizer="adam", progress="none", **extra,  # type: ignore[arg-type]
        )  # fmt: skip
        trainer = Trainer(Scripted(LOSSES), cfg, out_dir=out_dir)
        return trainer, (images, torch.ones(4)), (images, torch.zeros(4)), {}
    train, val = spot_data(36, 0), spot_data(10, 1)
    if name == "adadelta_dataset":  # map-style datasets, drop_last
        # (no worker processes under torchrun here: a forked worker hung once at fork, in
        # CPython 3.11.7's PyOS_AfterFork_Child (cf. gh-112275); workers are tested in one process)
        cfg = TrainConfig(
            batch_size=6 // world, drop_last=True, max_epochs=3, progress="none", seed=2
        )
        trainer = Trainer(TinyNet(), cfg, out_dir=out_dir)
        return trainer, TensorDataset(*spot_data(34, 0)), TensorDataset(*val), {}
    cfg = TrainConfig(optimizer="adam", lr=0.01, batch_size=b, max_epochs=4, progress="none")
    if name == "loader":  # the user's DataLoader: their sampler, batch size, workers
        trainer = Trainer(TinyNet(), cfg, out_dir=out_dir)
        train_loader = _loader(TensorDataset(*train), b, world, rank, shuffle=True)
        val_loader = _loader(TensorDataset(*val), 5, world, rank, shuffle=False)
        return trainer, train_loader, val_loader, {}
    if name.startswith("resume"):  # continued to 4 epochs with the other number of processes
        return Trainer(TinyNet(), cfg, out_dir=out_dir), train, val, {"resume": True}
    assert name == "adam", name
    return Trainer(TinyNet().to(device), cfg, out_dir=out_dir), train, val, {}


def result_dict(result: TrainResult) -> dict[str, Any]:
    out = dataclasses.asdict(result)
    for key in ("best_checkpoint", "last_checkpoint"):
        out[key] = None if out[key] is None else str(out[key])
    return out


def run_case(name: str, out: Path, rank: int, world: int, **overrides: Any) -> None:
    folder = out / name
    trainer, train, val, kwargs = make_case(name, world, rank, folder / "ckpt")
    if overrides:
        trainer.config = dataclasses.replace(trainer.config, **overrides)
    result = trainer.fit(train, val, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state": trainer.model.state_dict(), "result": result_dict(result)},
        folder / f"rank{rank}.pt",
    )


@dataclasses.dataclass
class Recorder:
    """Which files each rank writes through the trainer."""

    paths: list[str] = dataclasses.field(default_factory=list)

    def wrap(self, fn: Any) -> Any:
        def recorded(obj: Any, path: Any, *args: Any) -> Any:
            self.paths.append(str(path))
            return fn(obj, path, *args)

        return recorded


def train_main(out: Path) -> None:
    where = wsdet.distributed.init()  # explicit here; run_detection joins by itself
    rank, world = where.rank, where.world_size
    assert (world, where.backend) == (2, "gloo")
    recorder = Recorder()
    files = wsdet.train.checkpoints  # the module that writes the trainer's files
    files.atomic_save = recorder.wrap(files.atomic_save)  # type: ignore[assignment]
    files.atomic_write_text = recorder.wrap(files.atomic_write_text)  # type: ignore[assignment]
    for name in CASES:
        run_case(name, out, rank, world)
    # A run that one process started (the test wrote its first 2 epochs) goes on with two.
    run_case("resume_from_one", out, rank, world)
    # Two processes start a run (2 epochs) that the test continues with one.
    run_case("resume_to_one", out, rank, world, max_epochs=2)
    (out / f"writes_rank{rank}.json").write_text(json.dumps(recorder.paths))
    (out / f"misuse_rank{rank}.json").write_text(json.dumps(misuse(rank)))


def misuse(rank: int) -> dict[str, str]:
    """What a sampler giving each rank other data, and an unsharded loader, lead to."""
    import warnings

    said: dict[str, str] = {}
    cfg = TrainConfig(max_epochs=1, batch_size=4, progress="none")
    val = spot_data(4, 1)
    try:
        Trainer(TinyNet(), cfg).fit(lambda epoch: spot_data(8, rank), val)
    except ValueError as err:
        said["sampler"] = str(err)
    loader = DataLoader(TensorDataset(*spot_data(8, 0)), batch_size=4, shuffle=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(TinyNet(), cfg).fit(loader, val)
    said["loader"] = " ".join(str(w.message) for w in caught)
    return said


# --------------------------------------------------------------------------- detection


class Volumes(Dataset[dict[str, Any]]):
    """Seeded random 3D volumes; records which items are read (= computed)."""

    def __init__(self, n: int = 7) -> None:
        self.n = n
        self.read: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.read.append(index)
        gen = torch.Generator().manual_seed(1000 + index)
        return {"image": torch.rand(1, 8, 12, 12, generator=gen), "id": f"case{index:02d}"}


def detector() -> Any:
    from wsdet import Detector
    from wsdet.models import GPUnet

    torch.manual_seed(0)
    return Detector(GPUnet(dim=3, width=4, init="kaiming").eval(), method="gp_unet")


DETECT_OPTIONS: dict[str, Any] = {"n": "all", "size": 3}


def detect_main(out: Path) -> None:
    from wsdet import run_detection

    read: dict[str, list[int]] = {}
    for name in ("fresh", "resumed"):  # resumed: the test left some volumes done
        data = Volumes()
        run_detection(data, detector(), out / name, **DETECT_OPTIONS)
        read[name] = data.read
    (out / f"read_rank{dist.get_rank()}.json").write_text(json.dumps(read))


# --------------------------------------------------------------------------- GPU


def deterministic() -> None:
    """No TF32, deterministic cuDNN: two GPU runs of the same work agree."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def cuda_main(out: Path) -> None:
    """World size 1 on one GPU: the trainer and run_detection join an NCCL group themselves."""
    from wsdet import Detector, run_detection

    deterministic()
    device = wsdet.distributed.device()
    trainer, train, val, kwargs = make_case("adam", 1, 0, out / "adam" / "ckpt", device)
    result = trainer.fit(train, val, **kwargs)
    state = {k: v.cpu() for k, v in trainer.model.state_dict().items()}
    backend = str(dist.get_backend())
    folder = out / "adam"
    torch.save({"state": state, "result": result_dict(result), "backend": backend},
               folder / "rank0.pt")  # fmt: skip
    gpu = detector()
    run_detection(Volumes(), Detector(gpu.model.to(device), "gp_unet"), out / "detect",
                  **DETECT_OPTIONS)  # fmt: skip


# --------------------------------------------------------------------------- launch


def launch(scenario: str, out: Path, nproc: int = 2, timeout: float = 240) -> None:
    """Run a scenario under ``torchrun --standalone --nproc-per-node nproc``, one thread each."""
    import os
    import subprocess

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(nproc), __file__, scenario, str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    markers = [_finished(out, scenario, rank) for rank in range(nproc)]
    for marker in markers:
        marker.unlink(missing_ok=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode == 0:
        return
    report = f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    if not all(marker.exists() for marker in markers):
        raise AssertionError(report)
    # Every rank finished its scenario (outputs written; the tests check them) and one
    # crashed while gloo tore the process group down (seen once under a loaded CPU:
    # SIGABRT "terminate called without an active exception" after destroy_process_group).
    import warnings

    warnings.warn(
        f"a crash at process-group teardown, after every rank finished: {report}", stacklevel=2
    )


def _finished(out: Path, scenario: str, rank: int) -> Path:
    """The file a rank writes when its scenario has finished (before the teardown)."""
    return out / f".finished-{scenario}-rank{rank}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("train", "detect", "cuda"))
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    {"train": train_main, "detect": detect_main, "cuda": cuda_main}[args.scenario](args.out)
    wsdet.distributed.barrier()  # leave together, as torch.distributed asks
    _finished(args.out, args.scenario, wsdet.distributed.info().rank).touch()
    wsdet.distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
