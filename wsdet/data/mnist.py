"""MNIST: IDX reader, verified download, and the paper's MNIST-grid counting datasets.

The grid datasets follow §3.1 of the paper: every image is a grid of ``rows × cols``
(default 5 × 7) MNIST digits, each drawn uniformly from a digit pool; half of the images
contain no occurrence of the target digit and half contain at least one. The weak label
is the number of target digits (regression) or their presence (classification); the
cell centres and 28 × 28 cell boxes of the target digits are the detection ground truth.

Only the 10,000 MNIST *test* digits are available on the machines this project is
developed on, so :func:`mnist_grid_splits` splits them, by default, into disjoint
train / validation / test pools (60 / 20 / 20 %, stratified per class): no digit image
appears in two splits. With the official 60,000 training digits present,
``source="official"`` uses them for the training and validation pools and the test digits
for the test pool.

Coordinates are index coordinates in array axis order, ``(row, col)``, with pixel centres
at integer positions: the centre of the cell whose top-left pixel is ``(r0, c0)`` is
``(r0 + 13.5, c0 + 13.5)`` and its box is the half-open ``[r0, r0 + 28) × [c0, c0 + 28)``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from wsdet._io import atomic_write

__all__ = [
    "MNIST_ENV_VAR",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MIRRORS",
    "DigitPool",
    "DownloadError",
    "GridSampler",
    "GridSplits",
    "IDXFormatError",
    "MNISTGrid",
    "download_mnist",
    "file_md5",
    "find_mnist_files",
    "load_mnist",
    "mnist_grid_splits",
    "read_idx",
    "split_pool",
]

SeedLike: TypeAlias = int | Sequence[int] | np.random.SeedSequence
PathLike: TypeAlias = str | os.PathLike[str]

#: Environment variable naming the folder that holds the MNIST IDX files.
MNIST_ENV_VAR = "WSDET_MNIST_DIR"

#: Standard (uncompressed) file names per split: ``(images, labels)``.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

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

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """A file is not a valid IDX file (wrong magic, unknown type, truncated...)."""


class DownloadError(OSError):
    """A file could not be fetched (with the right checksum) from any mirror."""


# --------------------------------------------------------------------------- IDX


def read_idx(path: PathLike) -> npt.NDArray[Any]:
    """Read an IDX file (raw or gzip-compressed) into a numpy array.

    Compression is detected from the gzip magic bytes, not from the file name. The IDX
    header (two zero bytes, a type code, the number of dimensions, then one big-endian
    ``uint32`` per dimension) is validated against the file size.

    Parameters
    ----------
    path : str or os.PathLike
        The IDX file.

    Returns
    -------
    numpy.ndarray
        Array of the declared shape, in native byte order, with dtype ``uint8``, ``int8``,
        ``int16``, ``int32``, ``float32`` or ``float64`` according to the type code.

    Raises
    ------
    IDXFormatError
        If the file is not IDX (wrong magic bytes), uses an unknown type code, is
        truncated, has trailing bytes, or is a corrupt gzip stream.
    FileNotFoundError
        If ``path`` does not exist.

    Examples
    --------
    >>> import struct, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
    >>> with open(p, "wb") as f:
    ...     _ = f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
    >>> read_idx(p)
    array([7, 8, 9], dtype=uint8)
    """
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    else:
        data = raw
    return _parse_idx(data, str(path))


def _parse_idx(data: bytes, source: str) -> npt.NDArray[Any]:
    if len(data) < 4:
        raise IDXFormatError(
            f"{source}: {len(data)} bytes is too short for an IDX header (4-byte magic number)"
        )
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(
            f"{source}: not an IDX file: magic number starts with "
            f"0x{data[0]:02x} 0x{data[1]:02x}, expected 0x00 0x00"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise IDXFormatError(
            f"{source}: unknown IDX type code 0x{code:02x}; expected one of {known}"
        )
    if ndim == 0:
        raise IDXFormatError(f"{source}: IDX header declares 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{source}: truncated IDX header: {ndim} dimensions need {header} bytes, "
            f"the file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise IDXFormatError(
            f"{source}: truncated IDX file: shape {dims} of {dtype.name} needs {expected} data "
            f"bytes, only {actual} present"
        )
    if actual > expected:
        raise IDXFormatError(
            f"{source}: {actual - expected} unexpected trailing bytes after the data of shape "
            f"{dims} ({dtype.name}); the header does not match the file"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


# ------------------------------------------------------------------- find / load


def _resolve_root(root: PathLike | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(MNIST_ENV_VAR)
    if not env:
        raise ValueError(
            f"root is None and the environment variable {MNIST_ENV_VAR} is not set: pass "
            f"root='/path/to/mnist' or `export {MNIST_ENV_VAR}=/path/to/mnist` (the folder "
            "holding t10k-images-idx3-ubyte[.gz] etc.; download_mnist(root) fetches them)"
        )
    return Path(env).expanduser()


def _check_split(split: str) -> None:
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")


def find_mnist_files(root: PathLike | None = None, split: str = "test") -> tuple[Path, Path]:
    """Locate the image and label IDX files of an MNIST split.

    Looks for the standard names (``t10k-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ...), uncompressed or with ``.gz``, in ``root`` and in ``root/MNIST/raw`` (the
    torchvision layout), in that order.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder to search; defaults to the ``WSDET_MNIST_DIR`` environment variable.
    split : {"test", "train"}
        Which split.

    Returns
    -------
    (Path, Path)
        Image file and label file.

    Raises
    ------
    FileNotFoundError
        Naming every path that was tried.

    Examples
    --------
    >>> import tempfile
    >>> find_mnist_files(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: MNIST test images not found; tried ...
    """
    _check_split(split)
    base = _resolve_root(root)
    folders = (base, base / "MNIST" / "raw")
    found: list[Path] = []
    for kind, stem in zip(("images", "labels"), MNIST_FILES[split], strict=True):
        tried = [folder / (stem + ext) for folder in folders for ext in ("", ".gz")]
        hit = next((p for p in tried if p.is_file()), None)
        if hit is None:
            raise FileNotFoundError(
                f"MNIST {split} {kind} not found; tried {', '.join(map(str, tried))}. "
                f"Fetch them with wsdet.data.download_mnist({str(base)!r}) or point "
                f"{MNIST_ENV_VAR} at a folder holding them."
            )
        found.append(hit)
    return found[0], found[1]


def load_mnist(
    root: PathLike | None = None, split: Literal["test", "train"] = "test"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Load an MNIST split from its IDX files.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding the files (or ``root/MNIST/raw``); defaults to the
        ``WSDET_MNIST_DIR`` environment variable.
    split : {"test", "train"}
        ``"test"``: the 10,000 test digits; ``"train"``: the 60,000 training digits.

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array of shape ``(N, 28, 28)``, values 0–255.
    labels : numpy.ndarray
        ``uint8`` array of shape ``(N,)``, values 0–9.

    Raises
    ------
    FileNotFoundError
        If the files are missing.
    IDXFormatError
        If a file is corrupt or the two files do not belong together.

    Examples
    --------
    >>> images, labels = load_mnist(split="test")  # doctest: +SKIP
    >>> images.shape, labels.shape  # doctest: +SKIP
    ((10000, 28, 28), (10000,))
    """
    image_path, label_path = find_mnist_files(root, split)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise IDXFormatError(
            f"{image_path}: expected uint8 images of shape (N, rows, cols), got "
            f"{images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXFormatError(
            f"{label_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise IDXFormatError(f"{label_path}: labels must be digits 0-9, found {int(labels.max())}")
    return images, labels


# -------------------------------------------------------------------- download


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


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Download ``url`` into ``dest`` atomically; raise ValueError on md5 mismatch."""

    def write(out: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
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
        Socket timeout per request, in seconds.

    Returns
    -------
    Path
        The destination folder, ready for :func:`load_mnist`.

    Raises
    ------
    DownloadError
        If a file could not be obtained with the right md5 from any mirror; the message
        lists every URL tried and why it failed.

    Examples
    --------
    >>> root = download_mnist("~/data/mnist", splits=["test"])  # doctest: +SKIP
    >>> images, labels = load_mnist(root, "test")  # doctest: +SKIP
    """
    if isinstance(splits, str):
        raise TypeError(f"splits must be a sequence of split names, got the string {splits!r}")
    for split in splits:
        _check_split(split)
    if isinstance(mirrors, str) or len(mirrors) == 0:
        raise ValueError("mirrors must be a non-empty sequence of base URLs")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
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
                    _fetch(url, dest, expected, timeout)
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


# ------------------------------------------------------------------ digit pools


class DigitPool(NamedTuple):
    """A pool of digit images to draw grid cells from.

    Attributes
    ----------
    images : numpy.ndarray
        ``(M, h, w)`` digit images.
    labels : numpy.ndarray
        ``(M,)`` digit classes.
    indices : numpy.ndarray
        ``(M,)`` positions of these digits in the array the pool was split from.
    """

    images: npt.NDArray[Any]
    labels: npt.NDArray[Any]
    indices: npt.NDArray[np.int64]


def _split_sizes(fractions: Sequence[float] | Sequence[int], total: int) -> list[int]:
    values = list(fractions)
    if len(values) == 0:
        raise ValueError("fractions must hold at least one entry")
    if any(isinstance(v, bool) for v in values):
        raise TypeError("fractions must be numbers, not booleans")
    if all(isinstance(v, int | np.integer) for v in values):
        sizes = [int(v) for v in values]
        if any(s < 0 for s in sizes) or sum(sizes) > total:
            raise ValueError(
                f"sizes {sizes} must be non-negative and sum to at most the pool size {total}"
            )
        return sizes
    if not all(isinstance(v, float | np.floating) for v in values):
        raise TypeError(
            f"fractions must be all floats (fractions) or all ints (sizes), got {values!r}"
        )
    fr = np.asarray(values, dtype=np.float64)
    if np.any(fr < 0) or not np.all(np.isfinite(fr)) or fr.sum() > 1 + 1e-9:
        raise ValueError(f"fractions {values} must be non-negative and sum to at most 1")
    exact = fr * total
    sizes_arr = np.floor(exact + 1e-9).astype(np.int64)
    if abs(fr.sum() - 1) <= 1e-9:  # hand the rounding remainder out by largest remainder
        rest = total - int(sizes_arr.sum())
        order = np.argsort(-(exact - sizes_arr), kind="stable")
        sizes_arr[order[:rest]] += 1
    return [int(s) for s in sizes_arr]


def split_pool(
    images: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    fractions: Sequence[float] | Sequence[int] = (0.6, 0.2, 0.2),
    *,
    seed: SeedLike = 0,
    stratify: bool = True,
) -> list[DigitPool]:
    """Split digits into disjoint pools (e.g. train / validation / test).

    With only the 10,000 MNIST test digits available, the grid datasets of all three
    splits must be drawn from disjoint subsets of them, so that no digit image is seen
    both in training and in evaluation.

    Parameters
    ----------
    images : numpy.ndarray
        ``(M, h, w)`` digits.
    labels : numpy.ndarray
        ``(M,)`` integer classes.
    fractions : sequence of float, or sequence of int
        Floats: fraction of the digits per pool (summing to at most 1; when they sum to 1
        every digit is used). Ints: exact pool sizes (summing to at most ``M``).
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the random assignment.
    stratify : bool
        Keep every pool's class counts within two digits of proportional (digits are
        ordered so that every prefix is class-balanced, then cut into consecutive
        pools). Otherwise a plain random permutation.

    Returns
    -------
    list of DigitPool
        One pool per entry of ``fractions``, in order, with the exact requested sizes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    >>> labs = np.repeat(np.arange(10, dtype=np.uint8), 10)
    >>> train, val, test = split_pool(imgs, labs, (0.6, 0.2, 0.2), seed=0)
    >>> len(train.labels), len(val.labels), len(test.labels)
    (60, 20, 20)
    >>> np.bincount(val.labels).tolist()
    [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (M, h, w), got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    total = images.shape[0]
    sizes = _split_sizes(fractions, total)
    rng = np.random.default_rng(seed)
    if stratify:
        # Each class's digits are shuffled and spread evenly over [0, 1); sorting by that
        # position yields an order whose every prefix holds each class in proportion
        # (to about one digit), so consecutive chunks are stratified pools.
        key = np.empty(total, dtype=np.float64)
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            ranks = rng.permutation(len(members))
            key[members] = (ranks + rng.random()) / len(members)
        tie = np.asarray(rng.random(size=total), dtype=np.float64)
        order = np.lexsort((tie, key))
    else:
        order = rng.permutation(total)
    pools: list[DigitPool] = []
    start = 0
    for size in sizes:
        idx = np.sort(order[start : start + size]).astype(np.int64)
        pools.append(DigitPool(images[idx], labels[idx], idx))
        start += size
    return pools


# ------------------------------------------------------------------- MNIST grids


def _check_pool(
    digits: npt.NDArray[Any], labels: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    digits = np.asarray(digits)
    labels = np.asarray(labels)
    if digits.ndim != 3 or digits.shape[0] == 0:
        raise ValueError(f"digits must have shape (M, h, w) with M >= 1, got {digits.shape}")
    if labels.shape != (digits.shape[0],):
        raise ValueError(f"labels must have shape ({digits.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if digits.dtype == np.uint8:
        pass
    elif np.issubdtype(digits.dtype, np.floating):
        lo, hi = float(digits.min()), float(digits.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"float digits must lie in [0, 1], got range [{lo}, {hi}]; pass uint8 0-255 "
                "digits or scale them"
            )
        digits = digits.astype(np.float32, copy=False)
    else:
        raise TypeError(f"digits must be uint8 (0-255) or float in [0, 1], got {digits.dtype}")
    return digits, labels.astype(np.int64, copy=False)


def _truncated_binomial_pmf(n: int, p: float) -> npt.NDArray[np.float64]:
    """P(K = k | K >= 1) for K ~ Binomial(n, p), k = 1..n."""
    k = np.arange(1, n + 1)
    log_pmf = np.array(
        [
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + (i * math.log(p) if p > 0 else -math.inf)
            + ((n - i) * math.log1p(-p) if p < 1 else (0.0 if i == n else -math.inf))
            for i in k
        ]
    )
    pmf = np.exp(log_pmf - log_pmf.max())
    return np.asarray(pmf / pmf.sum(), dtype=np.float64)


def _sample_cells(
    rng: np.random.Generator,
    pool_labels: npt.NDArray[np.int64],
    target: int,
    n_images: int,
    n_cells: int,
    positive_fraction: float,
) -> npt.NDArray[np.int64]:
    """Pool indices ``(n_images, n_cells)``: exactly ``round(n * fraction)`` positives.

    A cell drawn uniformly from the pool is a target with probability ``p`` (the target
    fraction of the pool). Negatives: cells i.i.d. uniform over non-target digits (the
    uniform draw conditioned on "no target"). Positives: the uniform draw conditioned on
    "at least one target", sampled exactly without rejection: the number of targets
    ``K`` from Binomial(n_cells, p) truncated to ``K >= 1``, their positions a uniformly
    random ``K``-subset of the cells, target cells uniform over target digits and the
    other cells uniform over non-target digits.
    """
    target_idx = np.flatnonzero(pool_labels == target)
    other_idx = np.flatnonzero(pool_labels != target)
    n_pos = math.floor(n_images * positive_fraction + 0.5)
    n_neg = n_images - n_pos
    if n_pos > 0 and len(target_idx) == 0:
        raise ValueError(f"the digit pool holds no digit of target class {target}")
    if n_neg > 0 and len(other_idx) == 0:
        raise ValueError(f"the digit pool holds only digits of target class {target}")
    cells = np.empty((n_images, n_cells), dtype=np.int64)
    if n_pos > 0:
        p = len(target_idx) / len(pool_labels)
        k_values = rng.choice(
            np.arange(1, n_cells + 1), size=n_pos, p=_truncated_binomial_pmf(n_cells, p)
        )
        ranks = np.argsort(np.argsort(rng.random((n_pos, n_cells)), axis=1), axis=1)
        is_target = ranks < k_values[:, None]
        tgt = target_idx[rng.integers(0, len(target_idx), size=(n_pos, n_cells))]
        if len(other_idx):
            oth = other_idx[rng.integers(0, len(other_idx), size=(n_pos, n_cells))]
        else:  # p == 1: every cell is a target
            oth = tgt
        cells[:n_pos] = np.where(is_target, tgt, oth)
    if n_neg > 0:
        cells[n_pos:] = other_idx[rng.integers(0, len(other_idx), size=(n_neg, n_cells))]
    return cells[rng.permutation(n_images)]


def _render(digits: npt.NDArray[Any], cells: npt.NDArray[np.int64]) -> torch.Tensor:
    """Tile pool digits ``cells`` (N, rows, cols) into images (N, 1, rows*h, cols*w)."""
    n, rows, cols = cells.shape
    h, w = digits.shape[1:]
    tiles = digits[cells]  # (N, rows, cols, h, w)
    grid = np.ascontiguousarray(tiles.transpose(0, 1, 3, 2, 4)).reshape(n, 1, rows * h, cols * w)
    out = torch.from_numpy(grid)
    if out.dtype == torch.uint8:
        return out.to(torch.float32).div_(255.0)
    return out.to(torch.float32)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class MNISTGrid(Dataset[dict[str, Any]]):
    """Images of ``rows × cols`` MNIST digits, labelled by the count of a target digit.

    Every cell holds a digit drawn uniformly from the pool. ``round(n_images *
    positive_fraction)`` images contain at least one target digit and the others none,
    each drawn from the uniform-cell distribution conditioned on that event (paper
    §3.1); see the notes. The images are built at construction, vectorised.

    Parameters
    ----------
    digits : numpy.ndarray
        Pool of digit images ``(M, h, w)``: ``uint8`` 0–255 (scaled by 1/255) or float in
        ``[0, 1]``.
    labels : numpy.ndarray
        ``(M,)`` integer digit classes.
    target : int
        The digit class to count.
    n_images : int
        Number of images.
    rows, cols : int
        Grid size in cells (paper: 5 × 7, giving 140 × 196 images with 28 × 28 digits).
    positive_fraction : float
        Fraction of images containing at least one target (paper: 0.5).
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the numpy Generator; equal seeds give equal datasets.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 1, rows*h, cols*w)`` float32 in ``[0, 1]``.
    counts : torch.Tensor
        ``(N,)`` float32 number of target digits.
    labels : torch.Tensor
        ``(N,)`` float32, 1 where ``count > 0``.
    centers : list of numpy.ndarray
        Per image, ``(k, 2)`` float64 ``(row, col)`` centres of the target cells
        (``r0 + (h-1)/2, c0 + (w-1)/2``), in row-major cell order.
    boxes : list of (numpy.ndarray, numpy.ndarray)
        Per image, ``(lo, hi)`` int64 ``(k, 2)`` half-open cell boxes ``[lo, hi)``.
    cell_indices : numpy.ndarray
        ``(N, rows, cols)`` int64 index into the pool of every cell's digit.
    cell_labels : numpy.ndarray
        ``(N, rows, cols)`` int64 class of every cell's digit.

    Notes
    -----
    Negative images draw each cell uniformly from the non-target digits, which is exactly
    the uniform draw conditioned on containing no target. Positive images are the
    uniform draw conditioned on at least one target, sampled without rejection: the
    number of targets ``K`` follows Binomial(``rows*cols``, ``p``) truncated to ``K >= 1``
    (``p`` = target fraction of the pool, about 0.1), the ``K`` target positions are a
    uniformly random subset of the cells, and target / non-target cells are uniform within
    their class. This is the same distribution as "draw uniformly and resample until
    there is a target", at a fixed cost. Expected count of a positive image:
    ``rows*cols*p / (1 - (1-p)**(rows*cols))`` (≈ 3.5 for MNIST).

    Items (``grid[i]``) are dicts with ``"image"`` ``(1, H, W)`` float32, ``"count"``
    and ``"label"`` 0-d float32 tensors, ``"centers"`` ``(k, 2)`` float64 and
    ``"boxes_lo"`` / ``"boxes_hi"`` ``(k, 2)`` int64 numpy arrays; batch them with
    :func:`wsdet.data.collate_points`. For fast training use the stacked tensors
    ``images`` / ``counts`` / ``labels`` directly.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> digits = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    >>> labels = np.arange(50) % 10
    >>> grid = MNISTGrid(digits, labels, target=4, n_images=8, seed=0)
    >>> grid.images.shape
    torch.Size([8, 1, 140, 196])
    >>> int((grid.labels == 1).sum())
    4
    >>> item = grid[0]
    >>> item["centers"].shape == (int(item["count"]), 2)
    True
    """

    def __init__(
        self,
        digits: npt.NDArray[Any],
        labels: npt.NDArray[Any],
        target: int,
        n_images: int,
        *,
        rows: int = 5,
        cols: int = 7,
        positive_fraction: float = 0.5,
        seed: SeedLike = 0,
    ) -> None:
        self._digits, self._pool_labels = _check_pool(digits, labels)
        self.target = _check_int("target", target, 0)
        self.n_images = _check_int("n_images", n_images, 0)
        self.rows = _check_int("rows", rows, 1)
        self.cols = _check_int("cols", cols, 1)
        if not 0.0 <= float(positive_fraction) <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.positive_fraction = float(positive_fraction)
        self.seed = seed
        rng = np.random.default_rng(seed)
        cells = _sample_cells(
            rng,
            self._pool_labels,
            self.target,
            self.n_images,
            self.rows * self.cols,
            self.positive_fraction,
        )
        self.cell_indices = cells.reshape(self.n_images, self.rows, self.cols)
        self.cell_labels = self._pool_labels[self.cell_indices]
        self.cell_shape: tuple[int, int] = (int(self._digits.shape[1]), int(self._digits.shape[2]))
        self.images = _render(self._digits, self.cell_indices)
        is_target = self.cell_labels == self.target
        self.counts = torch.from_numpy(is_target.sum(axis=(1, 2)).astype(np.float32))
        self.labels = (self.counts > 0).to(torch.float32)
        size = np.array(self.cell_shape, dtype=np.int64)
        half = (size.astype(np.float64) - 1.0) / 2.0
        self.centers: list[npt.NDArray[np.float64]] = []
        self.boxes: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        for mask in is_target:
            lo = np.argwhere(mask).astype(np.int64).reshape(-1, 2) * size
            self.boxes.append((lo, lo + size))
            self.centers.append(lo + half)

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(index)
        if not -self.n_images <= i < self.n_images:
            raise IndexError(f"index {i} out of range for {self.n_images} images")
        i %= self.n_images
        lo, hi = self.boxes[i]
        return {
            "image": self.images[i],
            "count": self.counts[i],
            "label": self.labels[i],
            "centers": self.centers[i],
            "boxes_lo": lo,
            "boxes_hi": hi,
        }

    def resample(self, seed: SeedLike) -> MNISTGrid:
        """Draw a fresh dataset of the same size from the same pool with another seed.

        Examples
        --------
        >>> digits = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
        >>> grid = MNISTGrid(digits, np.arange(20) % 10, 4, 6, seed=0)
        >>> fresh = grid.resample(1)
        >>> bool((fresh.images == grid.images).all())
        False
        """
        return MNISTGrid(
            self._digits,
            self._pool_labels,
            self.target,
            self.n_images,
            rows=self.rows,
            cols=self.cols,
            positive_fraction=self.positive_fraction,
            seed=seed,
        )

    def __repr__(self) -> str:
        return (
            f"MNISTGrid(n_images={self.n_images}, target={self.target}, "
            f"grid={self.rows}x{self.cols}, pool={len(self._pool_labels)}, "
            f"positives={int(self.labels.sum())})"
        )


class GridSampler:
    """Fresh MNIST grids every epoch, deterministic per ``(seed, epoch)``.

    A callable ``epoch -> (images, counts, labels)`` for training on newly drawn grids
    each epoch from a (training) digit pool, instead of a fixed set of images.

    Parameters
    ----------
    digits, labels, target, n_images, rows, cols, positive_fraction
        As for :class:`MNISTGrid`.
    seed : int
        Base seed; epoch ``e`` uses the seed sequence ``(seed, e)``.

    Examples
    --------
    >>> digits = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    >>> sampler = GridSampler(digits, np.arange(40) % 10, target=4, n_images=16, seed=3)
    >>> images, counts, labels = sampler(0)
    >>> images.shape, counts.shape
    (torch.Size([16, 1, 140, 196]), torch.Size([16]))
    >>> bool(torch.equal(sampler(0)[0], images)), bool(torch.equal(sampler(1)[0], images))
    (True, False)
    """

    def __init__(
        self,
        digits: npt.NDArray[Any],
        labels: npt.NDArray[Any],
        target: int,
        n_images: int,
        *,
        rows: int = 5,
        cols: int = 7,
        positive_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self._digits, self._labels = _check_pool(digits, labels)
        self.seed = _check_int("seed", seed, 0)
        self._kwargs: dict[str, Any] = {
            "rows": rows,
            "cols": cols,
            "positive_fraction": positive_fraction,
        }
        self.target = target
        self.n_images = n_images
        self.grid(0)  # validate the remaining arguments now rather than at the first epoch

    def grid(self, epoch: int) -> MNISTGrid:
        """The full :class:`MNISTGrid` (with centres and boxes) of ``epoch``."""
        epoch = _check_int("epoch", epoch, 0)
        return MNISTGrid(
            self._digits,
            self._labels,
            self.target,
            self.n_images,
            seed=(self.seed, epoch),
            **self._kwargs,
        )

    def __call__(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grid = self.grid(epoch)
        return grid.images, grid.counts, grid.labels


class GridSplits(NamedTuple):
    """Train / validation / test MNIST grids and the disjoint digit pools they use."""

    train: MNISTGrid
    val: MNISTGrid
    test: MNISTGrid
    train_pool: DigitPool
    val_pool: DigitPool
    test_pool: DigitPool


def mnist_grid_splits(
    root: PathLike | None = None,
    target: int = 4,
    n_train: int = 400,
    n_val: int = 100,
    n_test: int = 500,
    seed: int = 0,
    *,
    source: Literal["test", "official"] = "test",
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    rows: int = 5,
    cols: int = 7,
    positive_fraction: float = 0.5,
) -> GridSplits:
    """Build the paper's train / validation / test MNIST grids from disjoint digit pools.

    Parameters
    ----------
    root : str or os.PathLike, optional
        MNIST folder; defaults to ``WSDET_MNIST_DIR``.
    target : int
        Digit to count (the paper reports 4 among others).
    n_train, n_val, n_test : int
        Number of grid images per split (paper: 400 / 100 / 500).
    seed : int
        Seeds the pool split and the three grid datasets (independent streams).
    source : {"test", "official"}
        ``"test"``: split the 10,000 test digits into three pools by ``fractions``
        (stratified per class). ``"official"``: split the 60,000 training digits into the
        train and validation pools in the ratio ``fractions[0] : fractions[1]``; the test
        pool is the 10,000 official test digits.
    fractions : sequence of three floats
        Pool fractions (see ``source``).
    rows, cols, positive_fraction
        As for :class:`MNISTGrid`.

    Returns
    -------
    GridSplits
        ``(train, val, test, train_pool, val_pool, test_pool)``.

    Examples
    --------
    >>> splits = mnist_grid_splits(target=4)  # doctest: +SKIP
    >>> len(splits.train), len(splits.val), len(splits.test)  # doctest: +SKIP
    (400, 100, 500)
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must hold three floats (train, val, test), got {fractions}")
    seeds = np.random.SeedSequence(seed).spawn(4)
    if source == "test":
        images, labels = load_mnist(root, "test")
        pools = split_pool(images, labels, tuple(float(f) for f in fractions), seed=seeds[0])
        train_pool, val_pool, test_pool = pools
    elif source == "official":
        train_images, train_labels = load_mnist(root, "train")
        test_images, test_labels = load_mnist(root, "test")
        f_train, f_val = float(fractions[0]), float(fractions[1])
        if f_train <= 0 or f_val <= 0:
            raise ValueError(f"fractions[0] and fractions[1] must be positive, got {fractions}")
        share = f_train / (f_train + f_val)
        train_pool, val_pool = split_pool(
            train_images, train_labels, (share, 1.0 - share), seed=seeds[0]
        )
        test_pool = DigitPool(test_images, test_labels, np.arange(len(test_labels)))
    else:
        raise ValueError(f"source must be 'test' or 'official', got {source!r}")
    kwargs: dict[str, Any] = {"rows": rows, "cols": cols, "positive_fraction": positive_fraction}
    grids = [
        MNISTGrid(pool.images, pool.labels, target, n, seed=s, **kwargs)
        for pool, n, s in zip(
            (train_pool, val_pool, test_pool), (n_train, n_val, n_test), seeds[1:], strict=True
        )
    ]
    return GridSplits(grids[0], grids[1], grids[2], train_pool, val_pool, test_pool)
