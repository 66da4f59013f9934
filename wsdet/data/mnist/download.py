"""Verified download of the MNIST files: :func:`download_mnist`."""

from __future__ import annotations

import hashlib
import http.client
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from wsdet._checks import PathLike, check_choice, check_float
from wsdet._io import atomic_write
from wsdet.data.mnist.files import MNIST_ENV_VAR, MNIST_FILES, _resolve_root

__all__ = ["MNIST_MD5", "MNIST_MIRRORS", "DownloadError", "download_mnist", "file_md5"]

#: Official md5 checksums of the gzip-compressed MNIST files.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: Mirrors tried in order by :func:`download_mnist` (the file name is appended).
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


class DownloadError(OSError):
    """A file could not be fetched (with the right checksum) from any mirror."""


def file_md5(path: PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Return the hexadecimal md5 digest of a file, read in chunks.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "empty")
    >>> open(p, "wb").close()
    >>> file_md5(p)
    'd41d8cd98f00b204e9800998ecf8427e'
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str, timeout: float, deadline: float = math.inf) -> None:
    """Download ``url`` into ``dest`` atomically within ``deadline`` seconds.

    Raises ``ValueError`` on an md5 mismatch and ``TimeoutError`` when the download is
    still running ``deadline`` seconds after it started (checked after every read, and
    no socket operation waits longer than ``min(timeout, deadline)``); either way the
    temporary file is removed and ``dest`` is left as it was.
    """
    start = time.monotonic()

    def write(out: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        with urllib.request.urlopen(url, timeout=min(timeout, deadline)) as resp:
            # read1 returns what has arrived, so a trickling server cannot hold one call
            read = getattr(resp, "read1", resp.read)
            while chunk := read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                if time.monotonic() - start > deadline:
                    raise TimeoutError(
                        f"exceeded the deadline of {deadline:g} s after {received} bytes"
                    )
        got = digest.hexdigest()
        if got != md5:  # raised inside atomic_write: the temporary file is removed
            raise ValueError(f"md5 mismatch (got {got}, expected {md5})")

    atomic_write(dest, write)


def download_mnist(
    root: PathLike | None = None,
    *,
    splits: Sequence[str] = ("train", "test"),
    mirrors: Sequence[str] = MNIST_MIRRORS,
    md5s: Mapping[str, str] = MNIST_MD5,
    timeout: float = 30.0,
    deadline: float = 600.0,
) -> Path:
    """Download the MNIST IDX files (gzip), verifying their md5 checksums.

    Each file is fetched from the first mirror that serves it with the expected md5,
    written to a temporary file in ``root`` and moved into place with ``os.replace``, so
    an interrupted download never leaves a partial file under the final name. Files
    already present with the right md5 are skipped; a present file with a wrong md5 is
    downloaded again.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Destination folder (created if needed); defaults to ``WSDET_MNIST_DIR``.
    splits : sequence of {"train", "test"}
        Which splits to fetch (both by default: the four official files).
    mirrors : sequence of str
        Base URLs tried in order; the file name is appended (``file://`` URLs work).
    md5s : mapping of str to str
        Expected md5 per ``.gz`` file name (the official checksums by default).
    timeout : float
        Socket timeout, in seconds: the longest wait for the connection or for any one
        read. A server that keeps sending a little at a time never reaches it; the
        ``deadline`` bounds the whole download.
    deadline : float
        Longest time, in seconds, for downloading one file from one mirror (10 minutes
        by default, ample for the 9.9 MB training images). A mirror still sending after
        it is abandoned (no partial file is left behind) and the next mirror is tried;
        each read waits at most ``min(timeout, deadline)``, so an attempt ends within
        about ``deadline + min(timeout, deadline)`` seconds. ``math.inf``: no deadline.

    Returns
    -------
    Path
        The destination folder, ready for :func:`~wsdet.data.mnist.load_mnist`.

    Raises
    ------
    DownloadError
        If a file could not be obtained with the right md5 from any mirror within the
        deadline; the message lists every URL tried and why it failed.

    Examples
    --------
    >>> root = download_mnist("~/data/mnist", splits=["test"])  # doctest: +SKIP
    >>> images, labels = load_mnist(root, "test")  # doctest: +SKIP
    """
    if isinstance(splits, str):
        raise TypeError(f"splits must be a sequence of split names, got the string {splits!r}")
    for split in splits:  # train5k is a local subset, on no mirror
        check_choice("split", split, ("train", "test"))
    if isinstance(mirrors, str) or len(mirrors) == 0:
        raise ValueError("mirrors must be a non-empty sequence of base URLs")
    timeout = check_float("timeout", timeout, positive=True)
    deadline = check_float("deadline", deadline, positive=True, finite=False)
    dest_dir = _resolve_root(root)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        for stem in MNIST_FILES[split]:
            name = stem + ".gz"
            if name not in md5s:
                raise ValueError(f"md5s has no checksum for {name!r}")
            expected = md5s[name].lower()
            dest = dest_dir / name
            if dest.is_file() and file_md5(dest) == expected:
                continue
            failures: list[str] = []
            for mirror in mirrors:
                url = mirror.rstrip("/") + "/" + name
                try:
                    _fetch(url, dest, expected, timeout, deadline)
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                    failures.append(f"{url} ({reason})")
                    continue
                break
            else:
                raise DownloadError(
                    f"could not download {name} with md5 {expected} from any mirror; tried: "
                    + "; ".join(failures)
                    + f". If this machine is offline, copy the MNIST files into {dest_dir} "
                    f"or set {MNIST_ENV_VAR} to a folder holding them."
                )
    return dest_dir
