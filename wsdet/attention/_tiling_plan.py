"""Tile geometry for exact tiled attention: cores, halos, and feature-resolution cores.

A volume of spatial size ``S`` is cut into *cores* of ``tile_size`` voxels per axis (the
last core of an axis may be smaller); each *tile* is its core plus ``halo`` voxels on each
side, clipped at the volume border. Core starts and halos are multiples of the network's
downsampling factor ``D``, so every tile starts on the network's feature grid: a feature
at position ``q`` of scale ``d`` (``d`` divides ``D``) of a tile starting at ``t0`` is the
whole volume's feature ``t0 / d + q``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["Tile", "TilePlan", "feature_core", "full_feature_size", "make_plan"]


@dataclass(frozen=True)
class Tile:
    """One tile: its core and its window (core + halo, clipped), in input voxels.

    Attributes
    ----------
    grid : tuple of int
        Position of the tile in the tile grid.
    core_start, core_stop : tuple of int
        The core, ``[core_start, core_stop)`` per axis.
    start, stop : tuple of int
        The window the network is run on, ``[start, stop)`` per axis.
    """

    grid: tuple[int, ...]
    core_start: tuple[int, ...]
    core_stop: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def window(self) -> tuple[slice, ...]:
        """Spatial slices of the window in the volume."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def core(self) -> tuple[slice, ...]:
        """Spatial slices of the core in the volume."""
        return tuple(slice(a, b) for a, b in zip(self.core_start, self.core_stop, strict=True))

    @property
    def core_in_window(self) -> tuple[slice, ...]:
        """Spatial slices of the core in the window's own coordinates."""
        return tuple(
            slice(c0 - s, c1 - s)
            for c0, c1, s in zip(self.core_start, self.core_stop, self.start, strict=True)
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the window."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def voxels(self) -> int:
        """Number of voxels of the window."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class TilePlan:
    """How a volume is cut into tiles.

    Attributes
    ----------
    size : tuple of int
        Spatial size ``S`` of the volume.
    core : tuple of int
        Core size per axis (at most ``S``).
    halo : tuple of int
        Halo per axis, in input voxels.
    grid : tuple of int
        Number of tiles per axis.
    tiles : tuple of Tile
        Every tile; the first one is the far corner (the last tile along every axis), so
        that the whole volume's feature sizes are known after the first tile.
    """

    size: tuple[int, ...]
    core: tuple[int, ...]
    halo: tuple[int, ...]
    grid: tuple[int, ...]
    tiles: tuple[Tile, ...]

    @property
    def overhead(self) -> float:
        """Voxels computed (all windows) divided by the voxels of the volume."""
        return sum(t.voxels for t in self.tiles) / math.prod(self.size)


def make_plan(size: Sequence[int], core: Sequence[int], halo: Sequence[int]) -> TilePlan:
    """Cut ``size`` into cores of ``core`` voxels with ``halo`` voxels around each.

    Examples
    --------
    >>> plan = make_plan((10, 8), (4, 8), (2, 0))
    >>> plan.grid, [(t.start, t.stop) for t in plan.tiles]
    ((3, 1), [((6, 0), (10, 8)), ((0, 0), (6, 8)), ((2, 0), (10, 8))])
    """
    size, halo = tuple(size), tuple(halo)
    core = tuple(min(c, s) for c, s in zip(core, size, strict=True))
    per_axis: list[list[tuple[int, int, int, int]]] = []
    for s, c, h in zip(size, core, halo, strict=True):
        axis = []
        for c0 in range(0, s, c):
            c1 = min(c0 + c, s)
            axis.append((c0, c1, max(c0 - h, 0), min(c1 + h, s)))
        per_axis.append(axis)
    grid = tuple(len(a) for a in per_axis)
    tiles = []
    for idx in itertools.product(*(range(n) for n in grid)):
        parts = [per_axis[a][i] for a, i in enumerate(idx)]
        tiles.append(
            Tile(
                grid=tuple(idx),
                core_start=tuple(p[0] for p in parts),
                core_stop=tuple(p[1] for p in parts),
                start=tuple(p[2] for p in parts),
                stop=tuple(p[3] for p in parts),
            )
        )
    far = tiles.pop()  # the last tile of product() is the far corner
    return TilePlan(size, core, halo, grid, (far, *tiles))


def full_feature_size(tile: Tile, factor: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """The whole volume's feature size, from a tile touching the far border on every axis.

    ``shape`` is the spatial shape of the tile's features at scale ``factor``.
    """
    return tuple(t0 // d + n for t0, d, n in zip(tile.start, factor, shape, strict=True))


def feature_core(
    tile: Tile, factor: Sequence[int], shape: Sequence[int], size: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The tile's core at feature scale ``factor``: ``(slices in the tile, slices in the volume)``.

    ``shape`` is the spatial shape of the tile's features and ``size`` the volume's input
    size. A core ending at the volume border keeps every feature position up to the end
    of the tile's features (whatever the network's rounding of odd sizes).
    """
    local, full = [], []
    for a, d in enumerate(factor):
        off = tile.start[a] // d
        g0 = tile.core_start[a] // d
        g1 = tile.core_stop[a] // d if tile.core_stop[a] < size[a] else off + shape[a]
        g1 = max(g1, g0)
        if g1 - off > shape[a]:
            raise RuntimeError(
                f"tiling: the tile's features along axis {a} have {shape[a]} positions, "
                f"fewer than its core needs ({g1 - off}); the network's geometry changed "
                "since it was probed"
            )
        local.append(slice(g0 - off, g1 - off))
        full.append(slice(g0, g1))
    return tuple(local), tuple(full)


def batch_index(spatial: tuple[slice, ...]) -> tuple[slice, ...]:
    """``(:, :, *spatial)``: index a ``(B, C, *S)`` tensor."""
    return (slice(None), slice(None), *spatial)


def map_index(spatial: tuple[slice, ...]) -> tuple[slice, ...]:
    """``(:, *spatial)``: index a ``(B, *S)`` map."""
    return (slice(None), *spatial)


def spatial_dims(t: Tensor) -> tuple[int, ...]:
    """The spatial dims of a ``(B, C, *S)`` tensor."""
    return tuple(range(2, t.ndim))
