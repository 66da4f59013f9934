"""Tests of wsdet.data.mnist: IDX reading, loading, verified download, MNIST grids."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from wsdet.data import collate_points
from wsdet.data.mnist import (
    DownloadError,
    GridSampler,
    IDXFormatError,
    MNISTGrid,
    download_mnist,
    file_md5,
    find_mnist_files,
    load_mnist,
    mnist_grid_splits,
    read_idx,
    split_pool,
)

# Written here from the IDX specification, independently of the reader.
TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise an array as IDX: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    code = TYPE_CODES[big.dtype if big.dtype.itemsize > 1 else np.dtype(array.dtype)]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def write_mnist(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    stems = {
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "train5k": ("train5k-images-idx3-ubyte", "train5k-labels-idx1-ubyte"),
    }[split]
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(stems, (images, labels), strict=True):
        data = idx_bytes(arr)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def fake_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random, pairwise distinct 28x28 'digits' with labels cycling through 0-9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


# ------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("dtype", list(TYPE_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_all_type_codes(tmp_path: Path, dtype: np.dtype, compress: bool) -> None:
    rng = np.random.default_rng(1)
    values = (
        rng.integers(-100, 100, (3, 4, 5)) if dtype.kind in "iu" else rng.normal(size=(3, 4, 5))
    )
    if dtype == np.uint8:
        values = np.abs(values)
    array = values.astype(dtype)
    data = idx_bytes(array)
    path = tmp_path / "plain-name-without-suffix"  # detection by magic bytes, not name
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == dtype.newbyteorder("=")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 0  # writable copy


def test_read_idx_gz_suffix_but_raw_content(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(path), array)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    dtype=st.sampled_from(list(TYPE_CODES)),
    compress=st.booleans(),
)
def test_read_idx_roundtrip_property(shape: list[int], dtype: np.dtype, compress: bool) -> None:
    import tempfile

    rng = np.random.default_rng(len(shape))
    array = (rng.random(shape) * 100).astype(dtype)
    data = idx_bytes(array)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x"
        path.write_bytes(gzip.compress(data) if compress else data)
        np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "magic"),
        (bytes([0, 1, 8, 1, 0, 0, 0, 1, 5]), "magic"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "type code"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 3, 0, 0, 0, 2]), "truncated IDX header"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + bytes(4), "truncated"),
        (bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + bytes(7), "truncated"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + bytes(3), "trailing"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(IDXFormatError, match=message):
        read_idx(path)
    # the same content compressed fails the same way once decompressed
    path.write_bytes(gzip.compress(content))
    with pytest.raises(IDXFormatError, match=message):
        read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------ load_mnist


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_layouts(tmp_path: Path, layout: str, gz: bool) -> None:
    images, labels = fake_digits(30)
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    write_mnist(folder, "test", images, labels, gz)
    out_images, out_labels = load_mnist(tmp_path, "test")
    assert out_images.dtype == np.uint8 and out_labels.dtype == np.uint8
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")


def test_load_mnist_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = fake_digits(10)
    write_mnist(tmp_path, "train", images, labels, gz=True)
    monkeypatch.setenv("WSDET_MNIST_DIR", str(tmp_path))
    np.testing.assert_array_equal(load_mnist(split="train")[1], labels)
    monkeypatch.delenv("WSDET_MNIST_DIR")
    with pytest.raises(ValueError, match="WSDET_MNIST_DIR"):
        load_mnist(split="train")


def test_load_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="download_mnist") as info:
        find_mnist_files(tmp_path, "test")
    assert str(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz") in str(info.value)
    images, labels = fake_digits(12)
    write_mnist(tmp_path, "test", images, labels[:11], gz=False)
    with pytest.raises(IDXFormatError, match="12 images but"):
        load_mnist(tmp_path, "test")
    write_mnist(tmp_path, "test", images, labels + 5, gz=False)
    with pytest.raises(IDXFormatError, match="0-9"):
        load_mnist(tmp_path, "test")
    write_mnist(tmp_path, "test", images[:, 0], labels, gz=False)
    with pytest.raises(IDXFormatError, match="shape"):
        load_mnist(tmp_path, "test")


# ------------------------------------------------------------------- download


@contextlib.contextmanager
def running(handler: Any) -> Iterator[str]:
    """Run an HTTP server with ``handler`` on 127.0.0.1; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(directory: Path) -> contextlib.AbstractContextManager[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yields the base URL."""
    return running(functools.partial(Quiet, directory=str(directory)))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


Mirror = tuple[Path, dict[str, str], np.ndarray, np.ndarray]


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    """A mirror folder with test-written gz IDX files and their md5 table."""
    images, labels = fake_digits(40, seed=3)
    folder = tmp_path / "mirror"
    write_mnist(folder, "test", images, labels, gz=True)
    write_mnist(folder, "train", images[:20], labels[:20], gz=True)
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return folder, md5s, images, labels


def test_download_over_http(tmp_path: Path, mirror: Mirror) -> None:
    folder, md5s, images, labels = mirror
    dest = tmp_path / "dest" / "nested"
    with serve(folder) as url:
        out = download_mnist(dest, mirrors=[url], md5s=md5s, timeout=5)
    assert out == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(md5s)
    for name, md5 in md5s.items():
        assert file_md5(dest / name) == md5
    np.testing.assert_array_equal(load_mnist(dest, "test")[0], images)
    np.testing.assert_array_equal(load_mnist(dest, "train")[1], labels[:20])
    umask = os.umask(0)
    os.umask(umask)
    for p in dest.iterdir():  # created like open(): the umask applies (mkstemp gives 0600)
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p
    # Files present with the right md5 are skipped: an unreachable mirror is never asked.
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    download_mnist(dest, mirrors=[closed_port_url()], md5s=md5s, timeout=2)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_download_falls_back_after_md5_mismatch_and_unreachable(
    tmp_path: Path, mirror: Mirror
) -> None:
    folder, md5s, images, _ = mirror
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for p in folder.iterdir():
        (corrupt / p.name).write_bytes(p.read_bytes()[:-3] + b"xyz")
    dest = tmp_path / "dest"
    with serve(corrupt) as bad_url:
        mirrors = [closed_port_url(), bad_url, folder.as_uri() + "/"]
        download_mnist(dest, splits=["test"], mirrors=mirrors, md5s=md5s, timeout=5)
    assert sorted(p.name for p in dest.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    np.testing.assert_array_equal(load_mnist(dest, "test")[0], images)


def test_download_error_names_mirrors_and_leaves_nothing(tmp_path: Path, mirror: Mirror) -> None:
    folder, md5s, _, _ = mirror
    dest = tmp_path / "dest"
    unreachable = closed_port_url()
    wrong = dict(md5s, **{"t10k-images-idx3-ubyte.gz": "0" * 32})
    with serve(folder) as url:
        with pytest.raises(DownloadError) as info:
            download_mnist(dest, splits=["test"], mirrors=[unreachable, url], md5s=wrong)
    message = str(info.value)
    assert unreachable + "t10k-images-idx3-ubyte.gz" in message
    assert url + "t10k-images-idx3-ubyte.gz" in message
    assert "md5 mismatch" in message and "offline" in message
    assert isinstance(info.value, OSError)
    assert not (dest / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]


def test_download_replaces_file_with_wrong_md5(tmp_path: Path, mirror: Mirror) -> None:
    folder, md5s, images, _ = mirror
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "t10k-images-idx3-ubyte.gz").write_bytes(b"stale")
    download_mnist(dest, splits=["test"], mirrors=[folder.as_uri()], md5s=md5s)
    np.testing.assert_array_equal(load_mnist(dest, "test")[0], images)


def test_download_argument_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="split"):
        download_mnist(tmp_path, splits=["val"])
    with pytest.raises(TypeError, match="splits"):
        download_mnist(tmp_path, splits="test")
    with pytest.raises(ValueError, match="mirrors"):
        download_mnist(tmp_path, mirrors=[])
    with pytest.raises(ValueError, match="timeout"):
        download_mnist(tmp_path, timeout=0)
    with pytest.raises(ValueError, match="deadline must be a number"):
        download_mnist(tmp_path, deadline=0)
    with pytest.raises(TypeError, match="deadline"):
        download_mnist(tmp_path, deadline="60")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no checksum"):
        download_mnist(tmp_path, splits=["test"], md5s={})
    monkeypatch.delenv("WSDET_MNIST_DIR", raising=False)
    with pytest.raises(ValueError, match="WSDET_MNIST_DIR"):
        download_mnist(None)


@contextlib.contextmanager
def serve_trickle(total: int, interval: float) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 announcing ``total`` bytes and sending one per
    ``interval`` seconds (each read returns long before any socket timeout)."""
    stop = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            for _ in range(total):
                if stop.wait(interval):
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return

        def log_message(self, format: str, *args: object) -> None:
            pass

    try:
        with running(Trickle) as url:
            yield url
    finally:
        stop.set()


def test_download_deadline_stops_a_trickling_server(tmp_path: Path, mirror: Mirror) -> None:
    # 10,000 bytes at one per 0.2 s would take 2,000 s; every read returns within the
    # 5 s socket timeout, so only the deadline can end the download.
    _, md5s, _, _ = mirror
    dest = tmp_path / "dest"
    start = time.monotonic()
    with serve_trickle(10_000, 0.2) as url:
        with pytest.raises(DownloadError) as info:
            download_mnist(dest, splits=["test"], mirrors=[url], md5s=md5s, timeout=5, deadline=1)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert url + "t10k-images-idx3-ubyte.gz (exceeded the deadline of 1 s after" in message
    received = int(message.split("after ")[1].split(" bytes")[0])
    assert 1 <= received < 100  # it was receiving, and stopped long before the end
    assert elapsed < 60  # not the 2,000 s of the whole transfer (generous: a loaded machine)
    assert list(dest.iterdir()) == []  # no partial file, no temporary file


def test_download_deadline_moves_on_to_the_next_mirror(tmp_path: Path, mirror: Mirror) -> None:
    folder, md5s, images, _ = mirror
    dest = tmp_path / "dest"
    with serve_trickle(10_000, 0.2) as slow:
        mirrors = [slow, folder.as_uri() + "/"]
        download_mnist(dest, splits=["test"], mirrors=mirrors, md5s=md5s, deadline=0.5)
    np.testing.assert_array_equal(load_mnist(dest, "test")[0], images)
    assert sorted(p.name for p in dest.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]


def test_official_md5_table() -> None:
    from wsdet.data.mnist import MNIST_MD5

    # the test-set checksums published in /work/shared/data/mnist/README.md
    assert MNIST_MD5["t10k-images-idx3-ubyte.gz"] == "9fb629c4189551a2d022fa330f9573f3"
    assert MNIST_MD5["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert len(MNIST_MD5) == 4


# --------------------------------------------------------------- the real files

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("WSDET_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
HAVE_REAL = (REAL_DIR / "t10k-images-idx3-ubyte.gz").is_file() or (
    REAL_DIR / "t10k-images-idx3-ubyte"
).is_file()
needs_real = pytest.mark.skipif(
    not HAVE_REAL,
    reason=f"real MNIST test files not found in {REAL_DIR} (set WSDET_MNIST_DIR to run)",
)


@needs_real
def test_real_mnist_test_set() -> None:
    gz = REAL_DIR / "t10k-images-idx3-ubyte.gz"
    if gz.is_file():
        assert file_md5(gz) == "9fb629c4189551a2d022fa330f9573f3"
        assert (
            file_md5(REAL_DIR / "t10k-labels-idx1-ubyte.gz") == "ec29112dd5afa0611ce80d1b7f02629c"
        )
    images, labels = load_mnist(REAL_DIR, "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    expected = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(labels, minlength=10).tolist() == expected
    assert images.max() == 255 and images.min() == 0


@needs_real
def test_real_mnist_grid_splits() -> None:
    splits = mnist_grid_splits(REAL_DIR, target=4, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (400, 100, 500)
    assert (len(splits.train_pool.indices), len(splits.val_pool.indices)) == (6000, 2000)
    pools = [set(p.indices.tolist()) for p in splits[3:]]
    assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2])
    for grid in splits[:3]:
        assert int(grid.labels.sum()) == len(grid) // 2
        assert grid.images.shape[1:] == (1, 140, 196)
    # each training cell shows a digit of the training pool, never one of another pool
    images, _ = load_mnist(REAL_DIR, "test")
    cell = splits.train.images[0, 0, 28:56, 56:84].mul(255).round().to(torch.uint8).numpy()
    source = splits.train_pool.indices[splits.train.cell_indices[0, 1, 2]]
    np.testing.assert_array_equal(cell, images[source])


# ------------------------------------------------------------------ split_pool


def test_split_pool_fractions_disjoint_stratified() -> None:
    images, _ = fake_digits(1000)
    labels = np.random.default_rng(0).choice(10, 1000, p=np.linspace(1, 2, 10) / 15)
    pools = split_pool(images, labels, (0.6, 0.2, 0.2), seed=1)
    assert [len(p.indices) for p in pools] == [600, 200, 200]
    everything = np.concatenate([p.indices for p in pools])
    assert np.array_equal(np.sort(everything), np.arange(1000))
    share = np.bincount(labels, minlength=10) / 1000
    for pool in pools:
        np.testing.assert_array_equal(pool.images, images[pool.indices])
        np.testing.assert_array_equal(pool.labels, labels[pool.indices])
        counts = np.bincount(pool.labels, minlength=10)
        assert np.max(np.abs(counts - share * len(pool.indices))) <= 2.0


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=200),
    weights=st.lists(st.integers(1, 10), min_size=1, max_size=4),
    seed=st.integers(0, 2**31),
)
def test_split_pool_property(labels: list[int], weights: list[int], seed: int) -> None:
    lab = np.array(labels)
    m = len(lab)
    images = np.arange(m, dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)
    fractions = tuple(w / sum(weights) for w in weights)
    pools = split_pool(images, lab, fractions, seed=seed)
    sizes = [len(p.indices) for p in pools]
    assert sum(sizes) == m
    assert all(abs(s - f * m) < 1 for s, f in zip(sizes, fractions, strict=True))
    seen = np.concatenate([p.indices for p in pools])
    assert len(np.unique(seen)) == m
    share = np.bincount(lab, minlength=5) / m
    for p in pools:
        counts = np.bincount(p.labels, minlength=5)
        assert np.max(np.abs(counts - share * len(p.indices))) <= 2.0 + 1e-9


def test_split_pool_sizes_and_errors() -> None:
    images, labels = fake_digits(100)
    pools = split_pool(images, labels, (10, 20), seed=0)
    assert [len(p.indices) for p in pools] == [10, 20]
    assert not set(pools[0].indices) & set(pools[1].indices)
    unstrat = split_pool(images, labels, (50, 50), seed=0, stratify=False)
    assert sorted(np.concatenate([p.indices for p in unstrat]).tolist()) == list(range(100))
    again = split_pool(images, labels, (10, 20), seed=0)
    assert np.array_equal(again[1].indices, pools[1].indices)
    with pytest.raises(ValueError, match="sum to at most"):
        split_pool(images, labels, (0.7, 0.7))
    with pytest.raises(ValueError, match="sum to at most the pool size"):
        split_pool(images, labels, (60, 60))
    with pytest.raises(TypeError, match="all floats"):
        split_pool(images, labels, (0.5, 10))
    with pytest.raises(ValueError, match="labels must have shape"):
        split_pool(images, labels[:5])


# ------------------------------------------------------------------ MNIST grids


def identify_cells(grid: MNISTGrid, digits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class of each cell, found by matching the cell's pixels to the pool digits."""
    lookup = {d.tobytes(): int(lab) for d, lab in zip(digits, labels, strict=True)}
    assert len(lookup) == len(digits), "pool digits must be distinct for this check"
    n, rows, cols = len(grid), grid.rows, grid.cols
    pixels = grid.images[:, 0].mul(255).round().to(torch.uint8).numpy()
    out = np.empty((n, rows, cols), dtype=np.int64)
    for i in range(n):
        for r in range(rows):
            for c in range(cols):
                out[i, r, c] = lookup[
                    pixels[i, r * 28 : r * 28 + 28, c * 28 : c * 28 + 28].tobytes()
                ]
    return out


def test_grid_counts_centres_and_boxes_against_pixels() -> None:
    digits, labels = fake_digits(120, seed=5)
    grid = MNISTGrid(digits, labels, target=4, n_images=40, seed=2)
    classes = identify_cells(grid, digits, labels)
    truth = (classes == 4).sum(axis=(1, 2))
    np.testing.assert_array_equal(grid.counts.numpy(), truth)
    np.testing.assert_array_equal(grid.labels.numpy(), (truth > 0).astype(np.float32))
    assert grid.images.dtype == torch.float32 and grid.images.shape == (40, 1, 140, 196)
    assert 0.0 <= float(grid.images.min()) and float(grid.images.max()) <= 1.0
    for i in range(len(grid)):
        item = grid[i]
        cells = np.argwhere(classes[i] == 4)
        assert item["centers"].shape == (len(cells), 2)
        np.testing.assert_allclose(item["centers"], cells * 28 + 13.5)
        lo, hi = item["boxes_lo"], item["boxes_hi"]
        np.testing.assert_array_equal(hi - lo, 28)
        assert np.all((lo <= item["centers"]) & (item["centers"] < hi))
        for (r0, c0), (r1, c1) in zip(lo, hi, strict=True):
            patch = item["image"][0, r0:r1, c0:c1].mul(255).round().to(torch.uint8).numpy()
            assert labels[[d.tobytes() for d in digits].index(patch.tobytes())] == 4
        assert float(item["count"]) == len(cells)
        assert item["image"].shape == (1, 140, 196)


def test_grid_balance_and_negatives() -> None:
    digits, labels = fake_digits(100, seed=1)
    for n, fraction in [(10, 0.5), (11, 0.5), (20, 0.25), (7, 1.0), (5, 0.0)]:
        grid = MNISTGrid(digits, labels, 7, n, positive_fraction=fraction, seed=n)
        assert int(grid.labels.sum()) == math.floor(n * fraction + 0.5)
        assert torch.equal(grid.labels, (grid.counts > 0).float())
        neg = grid.labels == 0
        assert int(grid.counts[neg].sum()) == 0


def test_grid_positive_count_distribution_matches_conditioned_uniform_draw() -> None:
    # Tiny 1x1 'digits' keep 6,000 images cheap. p = 3/20 target digits in the pool.
    digits = np.arange(20, dtype=np.uint8).reshape(20, 1, 1)
    labels = np.array([1, 1, 1] + [0] * 17)
    grid = MNISTGrid(digits, labels, target=1, n_images=6000, seed=0)
    p, n_cells = 3 / 20, 35
    k = grid.counts[grid.labels == 1].numpy().astype(np.float64)
    # Truncated binomial K | K >= 1: mean n p / (1 - (1-p)^n); second moment likewise.
    q0 = (1 - p) ** n_cells
    mean = n_cells * p / (1 - q0)
    second = (n_cells * p * (1 - p) + (n_cells * p) ** 2) / (1 - q0)
    sd = math.sqrt(second - mean**2)
    assert abs(k.mean() - mean) < 4 * sd / math.sqrt(len(k))
    assert abs(k.var() - sd**2) < 0.1 * sd**2
    # Target positions are uniform over the 35 cells; digits uniform within each class.
    is_target = grid.cell_labels[grid.labels.numpy() == 1] == 1
    per_cell = is_target.reshape(len(k), -1).sum(axis=0)
    expected = per_cell.sum() / n_cells
    assert np.all(np.abs(per_cell - expected) < 5 * math.sqrt(expected))
    used = np.bincount(grid.cell_indices.ravel(), minlength=20)
    assert np.all(used > 0)
    target_use = used[:3] / used[:3].sum()
    np.testing.assert_allclose(target_use, 1 / 3, atol=0.03)
    other_use = used[3:] / used[3:].sum()
    np.testing.assert_allclose(other_use, 1 / 17, atol=0.01)


def test_grid_determinism_resample_and_sampler() -> None:
    digits, labels = fake_digits(60, seed=2)
    a = MNISTGrid(digits, labels, 3, 12, seed=9)
    b = MNISTGrid(digits, labels, 3, 12, seed=9)
    assert torch.equal(a.images, b.images) and torch.equal(a.counts, b.counts)
    c = a.resample(10)
    assert not torch.equal(a.images, c.images)
    assert torch.equal(c.images, MNISTGrid(digits, labels, 3, 12, seed=10).images)
    sampler = GridSampler(digits, labels, 3, 12, seed=4)
    x0, y0, l0 = sampler(0)
    x0b, y0b, _ = sampler(0)
    x1, _, _ = sampler(1)
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)
    assert not torch.equal(x0, x1)
    assert x0.shape == (12, 1, 140, 196) and y0.dtype == torch.float32
    assert int(l0.sum()) == 6
    assert torch.equal(sampler.grid(3).images, sampler(3)[0])
    assert not torch.equal(GridSampler(digits, labels, 3, 12, seed=5)(0)[0], x0)
    with pytest.raises(ValueError, match="epoch"):
        sampler(-1)


def test_grid_float_pool_and_other_shapes() -> None:
    rng = np.random.default_rng(0)
    digits = rng.random((30, 4, 6)).astype(np.float64)
    labels = np.arange(30) % 10
    grid = MNISTGrid(digits, labels, 0, 5, rows=2, cols=3, seed=0)
    assert grid.images.shape == (5, 1, 8, 18)
    i = int(torch.nonzero(grid.counts)[0, 0])
    lo, hi = grid.boxes[i]
    np.testing.assert_array_equal(hi - lo, [[4, 6]] * len(lo))
    np.testing.assert_allclose(grid.centers[i], lo + np.array([1.5, 2.5]))
    r, c = lo[0] // [4, 6]
    np.testing.assert_allclose(
        grid.images[i, 0, lo[0][0] : hi[0][0], lo[0][1] : hi[0][1]].numpy(),
        digits[grid.cell_indices[i, r, c]].astype(np.float32),
    )


def test_grid_argument_errors() -> None:
    digits, labels = fake_digits(20)
    with pytest.raises(ValueError, match="no digit of target class"):
        MNISTGrid(digits[labels != 4], labels[labels != 4], 4, 2)
    with pytest.raises(ValueError, match="only digits of target class"):
        MNISTGrid(digits[labels == 4], labels[labels == 4], 4, 2)
    with pytest.raises(ValueError, match="positive_fraction"):
        MNISTGrid(digits, labels, 4, 2, positive_fraction=1.5)
    with pytest.raises(ValueError, match="digits must have shape"):
        MNISTGrid(digits[:, 0], labels, 4, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MNISTGrid(digits.astype(np.float32), labels, 4, 2)
    with pytest.raises(TypeError, match="n_images"):
        MNISTGrid(digits, labels, 4, 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="positive_fraction must be a real number"):
        MNISTGrid(digits, labels, 4, 2, positive_fraction="0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive_fraction must be a finite number"):
        MNISTGrid(digits, labels, 4, 2, positive_fraction=math.nan)
    grid = MNISTGrid(digits, labels, 4, 2)
    with pytest.raises(IndexError, match="index 2 out of range for 2 images"):
        grid[2]
    with pytest.raises(TypeError, match="index must be an int"):
        grid[False]  # type: ignore[index]
    assert grid[-1]["image"].shape == (1, 140, 196)


def test_grid_dataloader_with_collate_points() -> None:
    digits, labels = fake_digits(50)
    grid = MNISTGrid(digits, labels, 4, 6, seed=1)
    batch = next(iter(DataLoader(grid, batch_size=4, collate_fn=collate_points)))
    assert batch["image"].shape == (4, 1, 140, 196)
    assert torch.equal(batch["count"], grid.counts[:4])
    assert [len(c) for c in batch["centers"]] == grid.counts[:4].int().tolist()


def test_mnist_grid_splits_on_written_files(tmp_path: Path) -> None:
    images, labels = fake_digits(300, seed=7)
    write_mnist(tmp_path, "test", images, labels, gz=True)
    splits = mnist_grid_splits(tmp_path, target=2, n_train=8, n_val=4, n_test=6, seed=3)
    assert [len(g) for g in splits[:3]] == [8, 4, 6]
    assert [len(p.indices) for p in splits[3:]] == [180, 60, 60]
    pools = [set(p.indices.tolist()) for p in splits[3:]]
    assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2])
    # every cell of each split's images is a digit from that split's pool only
    for grid, pool in zip(splits[:3], splits[3:], strict=True):
        classes = identify_cells(grid, pool.images, pool.labels)
        np.testing.assert_array_equal(grid.counts.numpy(), (classes == 2).sum(axis=(1, 2)))
    again = mnist_grid_splits(tmp_path, target=2, n_train=8, n_val=4, n_test=6, seed=3)
    assert torch.equal(again.test.images, splits.test.images)
    # official source: train/val pools from the training digits, the test pool is the test set
    write_mnist(tmp_path, "train", images[:200], labels[:200], gz=False)
    official = mnist_grid_splits(tmp_path, 2, 4, 4, 4, source="official")
    assert [len(p.indices) for p in official[3:]] == [150, 50, 300]
    np.testing.assert_array_equal(official.test_pool.images, images)
    with pytest.raises(ValueError, match="source"):
        mnist_grid_splits(tmp_path, source="both")  # type: ignore[arg-type]


def test_package_keeps_the_former_module_names() -> None:
    """wsdet.data.mnist became a package: its names, private ones included, still import."""
    import wsdet.data
    import wsdet.data.mnist as mnist
    from wsdet.data.mnist import _fetch, _parse_idx  # noqa: F401
    from wsdet.data.mnist.download import _fetch as fetch

    assert mnist._fetch is fetch
    for name in mnist.__all__:
        assert getattr(wsdet.data, name) is getattr(mnist, name)
    # the pure IDX parser behind read_idx, on bytes written here from the specification
    np.testing.assert_array_equal(
        _parse_idx(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + bytes([5, 6]), "x"), [5, 6]
    )
