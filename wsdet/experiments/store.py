"""The cache folder of a study: entries keyed by configuration hashes, and their locks.

Every expensive result (a trained network, the detections of a method) lives in an entry
``root/<kind>/<name>-<key>`` whose ``key`` is a short hash of the exact configuration that
produced it (:func:`config_key`). An entry being computed is held by a :class:`FolderLock`,
so that several processes working through the same study never compute it twice.

>>> config_key({"b": 1, "a": [1, 2.0]}) == config_key({"a": [1, 2.0], "b": 1})
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import IO, Any

import numpy as np

from wsdet._checks import PathLike
from wsdet._io import atomic_write_text

__all__ = ["FolderLock", "Store", "config_key"]


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (dataclasses, tuples and NumPy scalars converted)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def config_key(config: Any) -> str:
    """A short stable hash of a JSON-able configuration."""
    text = json.dumps(_plain(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class Store:
    """The cache folder of a study (see the module docstring)."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def entry(self, kind: str, name: str, config: Any) -> Path:
        """``root/kind/name-key`` for ``config`` (the folder is not created)."""
        return self.root / kind / f"{name}-{config_key(config)}"

    def write_json(self, path: Path, obj: Any) -> None:
        """Write ``obj`` as sorted, indented JSON to ``path``, atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(_plain(obj), indent=2, sort_keys=True) + "\n", path)

    @staticmethod
    def read_json(path: Path) -> Any:
        """The JSON document at ``path``."""
        return json.loads(path.read_text())


class FolderLock:
    """An exclusive advisory lock on the file ``path`` (POSIX ``flock``).

    Lets several processes work through the same study at once: each computes the entries
    nobody else holds. The lock is per open file, so two threads of one process exclude
    each other too. Without ``fcntl`` (Windows) the lock is a no-op (one process).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; ``wait=False``: give up (``False``) when another holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # held until release()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        """Let the lock go (closing the descriptor drops the ``flock``)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FolderLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
