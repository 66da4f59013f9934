"""Atomic file writes and weights-only checkpoint loading.

Every file wsdet writes (checkpoints, training histories) goes through :func:`atomic_write`:
the content is written to a temporary file in the destination folder, flushed to disk, and
moved over the destination with :func:`os.replace`. A crash mid-write leaves either the old
file or no file, never a truncated one. Checkpoints are read back with
``torch.load(..., weights_only=True)`` only, so they must hold nothing but tensors and plain
Python containers and scalars.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["PathLike", "atomic_save", "atomic_write", "atomic_write_text", "load_checkpoint"]

PathLike = str | os.PathLike[str]


def _as_path(path: object, name: str = "path") -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike; got {type(path).__name__}")
    return Path(path)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder entry to disk where the platform allows it (POSIX); no-op elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file atomically: temporary file in the same folder, fsync, ``os.replace``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Its folder must exist.
    write : callable
        Called with a binary file object open for writing; it writes the whole content.

    Returns
    -------
    pathlib.Path
        The destination path.

    Raises
    ------
    FileNotFoundError
        If the destination folder does not exist.

    Notes
    -----
    If ``write`` raises (or the process is interrupted), the temporary file is removed and the
    destination keeps its previous content (or stays absent). The temporary file is created
    with the process umask, like an ordinary ``open(path, "wb")``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.bin", lambda f: f.write(b"abc")).read_bytes()
    b'abc'
    """
    dest = _as_path(path)
    if not callable(write):
        raise TypeError(f"write must be callable; got {type(write).__name__}")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"the folder of path does not exist: {dest.parent}")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def atomic_save(obj: object, path: PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save`, atomically.

    Parameters
    ----------
    obj : object
        What to save. To be loadable by :func:`load_checkpoint` it may hold only tensors,
        dicts, lists, tuples, strings, numbers, booleans and ``None``.
    path : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        The destination path.

    Examples
    --------
    >>> import tempfile
    >>> p = atomic_save({"w": torch.ones(2)}, Path(tempfile.mkdtemp()) / "ck.pt")
    >>> load_checkpoint(p)["w"]
    tensor([1., 1.])
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: PathLike, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically.

    Parameters
    ----------
    text : str
        The whole content.
    path : str or os.PathLike
        Destination file.
    encoding : str, default "utf-8"
        Text encoding.

    Returns
    -------
    pathlib.Path
        The destination path.

    Examples
    --------
    >>> import tempfile
    >>> atomic_write_text("a,b\\n", Path(tempfile.mkdtemp()) / "h.csv").read_text()
    'a,b\\n'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    data = text.encode(encoding)
    return atomic_write(path, lambda handle: handle.write(data))


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dictionary with ``torch.load(..., weights_only=True)``.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`atomic_save` (or any ``torch.save`` of a dict of tensors and
        plain Python values).
    map_location : str or torch.device, default "cpu"
        Where to put the tensors.

    Returns
    -------
    dict
        The saved dictionary.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file holds objects a weights-only load refuses (arbitrary pickled classes),
        or is not a dictionary.

    Examples
    --------
    >>> import tempfile
    >>> p = atomic_save({"epoch": 3}, Path(tempfile.mkdtemp()) / "ck.pt")
    >>> load_checkpoint(p)
    {'epoch': 3}
    """
    src = _as_path(path)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    try:
        obj = torch.load(src, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{src} cannot be loaded with weights_only=True (it holds objects other than "
            f"tensors and plain Python values): {err}"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{src} must hold a dict; got {type(obj).__name__}")
    return obj
