"""IDX files (the MNIST container format): :func:`read_idx` and :class:`IDXFormatError`."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from wsdet._checks import PathLike

__all__ = ["IDXFormatError", "read_idx"]

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
