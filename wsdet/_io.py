"""Atomic file writes and weights-only checkpoint loading.

Every file wsdet writes (checkpoints, training histories) goes through :func:`atomic_write`:
the content is written to a temporary file in the destination folder, flushed to disk, and
moved over the destination with :func:`os.replace`. A crash mid-write leaves either the old
file or no file, never a truncated one. Checkpoints are read back with
``torch.load(..., weights_only=True)`` only, so they must hold nothing but tensors and plain
Python containers and scalars; a file that is truncated, corrupted or not a checkpoint at all
raises :class:`DamagedCheckpointError` naming it.

A process killed mid-write (SIGKILL, or SIGTERM without cleanup) leaves its temporary file
``.<name>.<pid>.<hex>.tmp`` behind; the first atomic write of a later process into that folder
removes those whose process is gone (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import os
import pickle
import re
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from wsdet._checks import PathLike, check_path

__all__ = [
    "DamagedCheckpointError",
    "PathLike",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "load_checkpoint",
    "remove_stale_temporaries",
]

#: The temporary files of :func:`atomic_write`: ``.<name>.<pid>.<12 hex digits>.tmp``.
_TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{12}\.tmp$")
#: A dead process's temporary file is removed only once untouched this long (seconds): on a
#: folder shared between machines, a pid dead here may be a live writer elsewhere.
STALE_AFTER = 600.0
_swept: set[Path] = set()  # folders this process has already cleaned

# torch.save's format before PyTorch 1.6 (not a zip): pickle protocol 2, then a long.
_LEGACY_MAGIC = b"\x80\x02\x8a\n"
_ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local file header


class DamagedCheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupted, or not a ``torch.save`` file at all."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may exist (POSIX): only "no such process" says it does not
    (a process of another user, or a pid out of range, counts as alive)."""
    if pid <= 0:
        return True  # 0 and negative numbers address process groups
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def remove_stale_temporaries(folder: PathLike, *, stale_after: float = STALE_AFTER) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``.

    Only names of the exact form :func:`atomic_write` gives (``.<name>.<pid>.<hex>.tmp``)
    are considered, and of those only the ones whose process no longer exists and that were
    not modified for ``stale_after`` seconds. A live process's file is never touched. On
    platforms without POSIX process signals (Windows) nothing is removed.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to clean (not recursive).
    stale_after : float, default 600
        Minimum age (seconds since the last modification) of a file to remove.

    Returns
    -------
    list of pathlib.Path
        The files removed.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / f".a.pt.{os.getpid()}.0123456789ab.tmp").write_bytes(b"")
    >>> remove_stale_temporaries(folder, stale_after=0.0)  # our own process: kept
    []
    """
    root = check_path("folder", folder)
    if os.name != "posix":
        return []
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_PATTERN.match(entry.name)
        if match is None or int(match["pid"]) == os.getpid() or _pid_alive(int(match["pid"])):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < stale_after:
                continue
            os.unlink(entry.path)
        except OSError:  # removed meanwhile by another process, or not ours to remove
            continue
        removed.append(Path(entry.path))
    return removed


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
    with the process umask, like an ordinary ``open(path, "wb")``. The first write of a
    process into a folder also removes the temporary files of dead processes there
    (:func:`remove_stale_temporaries`).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.bin", lambda f: f.write(b"abc")).read_bytes()
    b'abc'
    """
    dest = check_path("path", path)
    if not callable(write):
        raise TypeError(f"write must be callable; got {type(write).__name__}")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"the folder of path does not exist: {dest.parent}")
    if dest.parent not in _swept:
        remove_stale_temporaries(dest.parent)
        _swept.add(dest.parent)
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
    """Save ``obj`` with :func:`torch.save`, atomically (through :func:`atomic_write`).

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
        The destination, as a path.

    Examples
    --------
    >>> import tempfile
    >>> p = atomic_save({"w": torch.ones(2)}, Path(tempfile.mkdtemp()) / "ck.pt")
    >>> load_checkpoint(p)["w"]
    tensor([1., 1.])
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: PathLike, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (through :func:`atomic_write`); returns ``path``.

    Parameters
    ----------
    text : str
        The whole content.
    path : str or os.PathLike
        Destination file.
    encoding : str, default "utf-8"
        Text encoding.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_write_text("a,b\\n", folder / "h.csv").read_text()
    'a,b\\n'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    data = text.encode(encoding)
    return atomic_write(path, lambda handle: handle.write(data))


def _damage(src: Path) -> str | None:
    """Why ``src`` is not a sound ``torch.save`` file, or ``None`` when its structure is.

    A zip archive (the format since PyTorch 1.6) must have its central directory and
    every member must match its CRC; any other file must start as the legacy format does.
    """
    try:
        if zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as archive:
                bad = archive.testzip()
            return None if bad is None else f"its member {bad!r} fails its checksum"
        with open(src, "rb") as handle:
            head = handle.read(len(_LEGACY_MAGIC))
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        return f"its zip archive cannot be read ({err})"
    if head == _LEGACY_MAGIC:
        return None
    if head == _ZIP_MAGIC:
        return "it is cut short or corrupted (a zip archive without its directory at the end)"
    return "it is not a torch.save file (neither a zip archive nor the legacy format)"


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
    DamagedCheckpointError
        (a ``ValueError``) If the file cannot be read as a checkpoint: cut short, corrupted
        (a zip member failing its checksum) or not a ``torch.save`` file at all.
    ValueError
        If the file holds objects a weights-only load refuses (arbitrary pickled classes),
        or is not a dictionary.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> load_checkpoint(atomic_save({"epoch": 3}, folder / "ck.pt"))
    {'epoch': 3}
    >>> load_checkpoint(atomic_write_text("epoch,loss", folder / "h.pt"))
    Traceback (most recent call last):
    ...
    wsdet._io.DamagedCheckpointError: ...h.pt is damaged or not a checkpoint: it is not a...
    """
    src = check_path("path", path)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    try:
        obj = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as err:  # diagnosed from the file itself, not from torch's message
        damage = _damage(src)
        if damage is not None:
            raise DamagedCheckpointError(f"{src} is damaged or not a checkpoint: {damage}") from err
        if isinstance(err, pickle.UnpicklingError):  # a sound file with refused objects
            raise ValueError(
                f"{src} cannot be loaded with weights_only=True (it holds objects other than "
                f"tensors and plain Python values): {err}"
            ) from err
        if isinstance(err, EOFError):  # a legacy-format file cut short
            raise DamagedCheckpointError(f"{src} is damaged: it is cut short") from err
        raise
    if not isinstance(obj, dict):
        raise ValueError(f"{src} must hold a dict; got {type(obj).__name__}")
    return obj
