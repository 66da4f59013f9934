"""What the map-style datasets of :mod:`wsdet.data` share: the checked item index."""

from __future__ import annotations

from wsdet._checks import check_int

__all__ = ["item_index"]


def item_index(index: object, n: int) -> int:
    """``index`` as a position in ``0..n-1`` (negative indices count from the end).

    >>> item_index(-1, 5)
    4
    >>> item_index(5, 5)
    Traceback (most recent call last):
    ...
    IndexError: index 5 out of range for 5 images
    """
    i = check_int("index", index)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for {n} images")
    return i % n
