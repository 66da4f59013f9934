"""Argument types and array validation shared by the metrics modules (private).

Scalar arguments are checked with :mod:`wsdet._checks` (NumPy only, like this module). Every
check raises ``ValueError`` or ``TypeError`` with a message that names the argument
and what was expected. Inputs may be NumPy arrays, sequences, or array-likes exposing
``__array__``; objects with ``detach``/``cpu`` methods (torch tensors) are moved to host
memory by duck typing, so this package never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from wsdet._checks import check_choice, check_float

#: Another evaluator's conventions to reproduce.
Compat = Literal["monai", "luna16"]
COMPAT_VALUES: tuple[str, ...] = ("monai", "luna16")
#: What an unmatched detection within reach of a target is: a false positive, or not counted.
Duplicates = Literal["fp", "ignore"]
#: Among tied scores, prefer closer pairs, or not.
Tiebreak = Literal["distance", "none"]
#: Hit rule: within a radius of a target point, or inside a target box.
MatchKind = Literal["points", "boxes"]
#: How a FROC curve is read between its points.
Interpolation = Literal["linear", "step"]
#: A FROC reading beyond the curve's end-point.
Extrapolate = Literal["flat", "nan"]
#: Pooled ("micro") or mean per-image ("macro") sensitivity.
SensitivityKind = Literal["micro", "macro"]


def to_numpy(x: Any) -> Any:
    """Return ``x`` as something ``np.asarray`` accepts (tensors detached and moved to CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if hasattr(x, "numpy"):
            return x.numpy()
    return x


def check_compat(compat: object) -> None:
    """Validate a ``compat`` argument (``None`` or one of :data:`COMPAT_VALUES`)."""
    if compat is not None:
        check_choice("compat", compat, COMPAT_VALUES)


def as_points(x: Any, name: str, ndim: int | None = None) -> NDArray[np.float64]:
    """Validate an ``(n, ndim)`` array of finite coordinates and return it as float64.

    A zero-length input of any shape with ``size == 0`` becomes ``(0, ndim)`` when ``ndim`` is
    known (``(0, 0)`` otherwise), so that "no points" can be written ``[]``.
    """
    try:
        arr = np.asarray(to_numpy(x), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an (n, ndim) array of coordinates; {err}") from None
    if arr.size == 0 and arr.ndim <= 1:
        return np.zeros((0, ndim if ndim is not None else 0), dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (n, ndim) array of coordinates; got shape {arr.shape}"
        )
    if ndim is not None and arr.shape[1] != ndim:
        raise ValueError(
            f"{name} has {arr.shape[1]} coordinates per point but {ndim} were expected "
            "(points and targets must have the same number of dimensions)"
        )
    if arr.shape[1] == 0 and arr.shape[0] > 0:
        raise ValueError(
            f"{name} must have at least one coordinate per point; got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return arr


def as_scores(x: Any, name: str, n: int) -> NDArray[np.float64]:
    """Validate a ``(n,)`` vector of finite scores and return it as float64."""
    try:
        arr = np.asarray(to_numpy(x), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a 1-D array of real scores; {err}") from None
    if arr.size == 0 and n == 0:
        return np.zeros(0, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} detections")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values; scores must be finite real numbers")
    return arr


def as_mask(x: Any, name: str, n: int) -> NDArray[np.bool_]:
    """Validate an optional boolean mask of length ``n`` (``None`` means all False)."""
    if x is None:
        return np.zeros(n, dtype=bool)
    arr = np.asarray(to_numpy(x))
    if arr.size == 0 and n == 0:
        return np.zeros(0, dtype=bool)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean mask; got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one flag per target); got {arr.shape}")
    return arr


def as_spacing(x: Any, ndim: int) -> NDArray[np.float64]:
    """Validate ``spacing``: ``None`` (unit), a positive scalar, or ``ndim`` positive values."""
    if x is None:
        return np.ones(ndim, dtype=np.float64)
    arr = np.asarray(to_numpy(x), dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    if arr.shape != (ndim,):
        raise ValueError(
            f"spacing must be a scalar or have {ndim} entries (one per axis); got {arr.shape}"
        )
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"spacing must be finite and positive; got {arr.tolist()}")
    return arr


def as_radius(x: Any, n_targets: int) -> NDArray[np.float64]:
    """Validate ``radius``: a non-negative scalar or one non-negative value per target."""
    arr = np.asarray(to_numpy(x), dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n_targets, check_float("radius", float(arr), nonnegative=True))
    if arr.shape != (n_targets,):
        raise ValueError(
            f"radius must be a scalar or have one entry per target ({n_targets},); got {arr.shape}"
        )
    if not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError("radius must contain finite non-negative values")
    return arr


def as_sequence(x: Any, name: str) -> list[Any]:
    """Validate a per-image sequence (list/tuple/...), rejecting bare arrays as ambiguous."""
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") or isinstance(x, (str, bytes)):
        raise TypeError(
            f"{name} must be a sequence with one entry per image (e.g. a list of arrays); "
            f"got {type(x).__name__}. Wrap a single image in a list: [{name}]"
        )
    if not isinstance(x, Sequence):
        try:
            return list(x)
        except TypeError:
            raise TypeError(f"{name} must be a sequence with one entry per image") from None
    return list(x)


def check_ci(ci: float | None) -> float | None:
    """Validate a confidence level in ``(0, 1)`` (or None)."""
    if ci is None:
        return None
    return check_float("ci", ci, level=True)
