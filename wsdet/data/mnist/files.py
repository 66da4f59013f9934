"""Locating and loading the MNIST IDX files of a split: :func:`load_mnist`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from wsdet._checks import PathLike, check_choice
from wsdet.data.mnist.idx import IDXFormatError, read_idx

__all__ = ["MNIST_ENV_VAR", "MNIST_FILES", "find_mnist_files", "load_mnist"]

#: Environment variable naming the folder that holds the MNIST IDX files.
MNIST_ENV_VAR = "WSDET_MNIST_DIR"

#: Standard (uncompressed) file names per split: ``(images, labels)``.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train5k": ("train5k-images-idx3-ubyte", "train5k-labels-idx1-ubyte"),
}


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


def find_mnist_files(root: PathLike | None = None, split: str = "test") -> tuple[Path, Path]:
    """Locate the image and label IDX files of an MNIST split.

    Looks for the standard names (``t10k-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ...), uncompressed or with ``.gz``, in ``root`` and in ``root/MNIST/raw`` (the
    torchvision layout), in that order.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder to search; defaults to the ``WSDET_MNIST_DIR`` environment variable.
    split : {"test", "train", "train5k"}
        Which split (``"train5k"``: a balanced subset of 5,000 training digits, 500 per
        class, as shipped beside the test set on machines without the full training set).

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
    check_choice("split", split, MNIST_FILES)
    base = _resolve_root(root)
    folders = (base, base / "MNIST" / "raw")
    found: list[Path] = []
    for kind, stem in zip(("images", "labels"), MNIST_FILES[split], strict=True):
        tried = [folder / (stem + ext) for folder in folders for ext in ("", ".gz")]
        hit = next((p for p in tried if p.is_file()), None)
        if hit is None:
            fetch = (
                "The train5k files are a local subset of the training digits (500 per "
                "class), on no download mirror: copy them there or point"
                if split == "train5k"
                else f"Fetch them with wsdet.data.download_mnist({str(base)!r}) or point"
            )
            raise FileNotFoundError(
                f"MNIST {split} {kind} not found; tried {', '.join(map(str, tried))}. "
                f"{fetch} {MNIST_ENV_VAR} at a folder holding them."
            )
        found.append(hit)
    return found[0], found[1]


def load_mnist(
    root: PathLike | None = None, split: Literal["test", "train", "train5k"] = "test"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Load an MNIST split from its IDX files.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding the files (or ``root/MNIST/raw``); defaults to the
        ``WSDET_MNIST_DIR`` environment variable.
    split : {"test", "train", "train5k"}
        ``"test"``: the 10,000 test digits; ``"train"``: the 60,000 training digits;
        ``"train5k"``: a subset of 5,000 training digits (500 per class) in files named
        ``train5k-images-idx3-ubyte`` / ``train5k-labels-idx1-ubyte`` (``.gz`` or not).

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
