"""wsdet._io: atomic writes, stale temporary files, damaged and malicious checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wsdet import _io
from wsdet._io import (
    DamagedCheckpointError,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temporaries,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="pid checks need POSIX signals")


class Evil:
    """An arbitrary class: a weights-only load must refuse to unpickle it."""


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


def tmp_name(dest: str, pid: int) -> str:
    return f".{dest}.{pid}.0123456789ab.tmp"


def age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


# --------------------------------------------------------------------------- atomic writes


def test_atomic_save_crash_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ck.pt"
    atomic_save({"w": torch.arange(3.0)}, path)

    def crash(obj: object, f: object) -> None:
        f.write(b"partial bytes")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(_io.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(1000)}, path)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(1000)}, tmp_path / "new.pt")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]  # no temporary or partial file left
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(3.0))


def test_atomic_write_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder of path does not exist"):
        atomic_write_text("x", tmp_path / "missing" / "a.txt")
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        atomic_write_text("x", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a str"):
        atomic_write_text(b"x", tmp_path / "a.txt")  # type: ignore[arg-type]


@posix_only
def test_the_first_write_removes_only_dead_processes_old_temporaries(tmp_path: Path) -> None:
    """SIGKILL leaves ``.<name>.<pid>.<hex>.tmp``: the next write into the folder removes
    it when its process is gone; live processes' files and other names stay."""
    dead, live = dead_pid(), os.getppid()  # our parent is alive while we run
    stale = tmp_path / tmp_name("last.pt", dead)
    kept = [
        tmp_path / tmp_name("last.pt", live),  # another live process, writing
        tmp_path / tmp_name("best.pt", os.getpid()),  # this process
        tmp_path / f".last.pt.{dead}.0123456789ab.tmp.bak",  # not our pattern
        tmp_path / f".last.pt.{dead}.xyz.tmp",  # not our pattern either
        tmp_path / tmp_name("last.pt", 10**30),  # no such pid can be asked about: kept
    ]
    for path in (stale, *kept):
        path.write_bytes(b"half a checkpoint")
        age(path, 3600)
    recent = tmp_path / tmp_name("history.csv", dead)  # dead, but modified a moment ago
    recent.write_bytes(b"")
    atomic_write_text("epoch\n", tmp_path / "history.csv")
    assert not stale.exists()
    assert all(p.exists() for p in (*kept, recent))
    assert (tmp_path / "history.csv").read_text() == "epoch\n"


@posix_only
def test_remove_stale_temporaries_reports_what_it_removed(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = tmp_path / tmp_name("a.pt", dead)
    stale.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path, stale_after=3600) == []  # too recent
    assert remove_stale_temporaries(tmp_path, stale_after=0.0) == [stale]
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- damaged files


def good_checkpoint(folder: Path) -> Path:
    return atomic_save({"w": torch.arange(4000.0), "epoch": 3}, folder / "last.pt")


@pytest.mark.parametrize("damage", ["cut in half", "text", "random bytes", "empty"])
def test_damaged_checkpoints_raise_one_clear_error(tmp_path: Path, damage: str) -> None:
    data = good_checkpoint(tmp_path).read_bytes()
    path = tmp_path / "damaged.pt"
    if damage == "cut in half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        path.write_text("epoch,train_loss\n0,1.5\n")
    elif damage == "random bytes":
        path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0))
                         .to(torch.uint8).numpy().tobytes())  # fmt: skip
    else:
        path.write_bytes(b"")
    with pytest.raises(DamagedCheckpointError, match="is damaged") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_legacy_checkpoint_loads_and_cut_short_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedCheckpointError, match=r"legacy\.pt is damaged: it is cut short"):
        load_checkpoint(path)


def test_a_malicious_pickle_is_refused_not_called_damaged(tmp_path: Path) -> None:
    torch.save({"obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only") as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert not isinstance(info.value, DamagedCheckpointError)
    assert "holds objects other than tensors" in str(info.value)


def test_load_checkpoint_other_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save(torch.ones(2), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="must hold a dict; got Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")
