"""The dataset every phantom generator returns: :class:`PhantomSet`."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from wsdet.data._items import item_index
from wsdet.data.phantoms._shapes import FloatArray, IntArray

__all__ = ["PhantomSet"]


class PhantomSet(Dataset[dict[str, Any]]):
    """A set of synthetic images with counts and point ground truth.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 1, *S)`` float32, in ``[0, 1]`` as generated (:meth:`zscored`: z-scored
        inside the region mask).
    counts : torch.Tensor
        ``(N,)`` float32, the count label: the number of rows of ``points[i]``.
    points : list of numpy.ndarray
        Per image, ``(k, ndim)`` float64 annotated target centres (index coordinates).
    spacing : tuple of float
        Voxel size per axis (mm for the 3D lesion volumes, 1.0 for the 2D phantoms).
    mask : torch.Tensor or None
        ``(N, *S)`` bool region mask (3D lesion volumes): the support of the smooth
        mask, outside which the image is exactly zero; ``None`` when there is none.
    target_mask : torch.Tensor
        ``(N, *S)`` bool, voxels inside any target's half-maximum footprint (all targets,
        annotated or not).
    target_points : list of numpy.ndarray
        Per image, ``(k, ndim)`` centres of *all* placed targets. Equal to ``points``
        unless only one slice is annotated (``annotation="slice"``).
    target_kinds : list of numpy.ndarray
        Per image, the kind of each target of ``target_points`` (``"blob"``,
        ``"ellipsoid"`` or ``"tube"``).
    slice_axis : int or None
        Axis of the annotated slice (3D only).
    annotated_slice : numpy.ndarray or None
        ``(N,)`` int64 index of the annotated slice along ``slice_axis`` (3D only).
    slice_points : list of numpy.ndarray or None
        Per image, ``(k, 2)`` in-slice coordinates (the remaining axes, in order) of the
        targets whose centre lies in the annotated slice (3D only).
    slice_counts : torch.Tensor or None
        ``(N,)`` float32 number of ``slice_points`` (3D only).

    Items (``ds[i]``) are dicts with ``"image"`` ``(1, *S)``, ``"count"`` (0-d float32)
    and ``"points"`` ``(k, ndim)``, plus ``"mask"``, ``"annotated_slice"`` and
    ``"slice_points"`` when present; batch them with :func:`wsdet.data.collate_points`.
    """

    def __init__(
        self,
        *,
        images: torch.Tensor,
        points: list[FloatArray],
        spacing: tuple[float, ...],
        target_mask: torch.Tensor,
        target_points: list[FloatArray],
        target_kinds: list[npt.NDArray[np.str_]],
        mask: torch.Tensor | None = None,
        slice_axis: int | None = None,
        annotated_slice: IntArray | None = None,
        slice_points: list[FloatArray] | None = None,
    ) -> None:
        n = images.shape[0]
        if images.ndim not in (4, 5) or images.shape[1] != 1:
            raise ValueError(f"images must have shape (N, 1, *S), got {tuple(images.shape)}")
        if len(points) != n or len(target_points) != n or len(target_kinds) != n:
            raise ValueError("points, target_points and target_kinds need one entry per image")
        self.images = images
        self.points = points
        self.counts = torch.tensor([len(p) for p in points], dtype=torch.float32)
        self.spacing = spacing
        self.mask = mask
        self.target_mask = target_mask
        self.target_points = target_points
        self.target_kinds = target_kinds
        self.slice_axis = slice_axis
        self.annotated_slice = annotated_slice
        self.slice_points = slice_points
        self.slice_counts = (
            None
            if slice_points is None
            else torch.tensor([len(p) for p in slice_points], dtype=torch.float32)
        )

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.images.ndim - 2

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = item_index(index, len(self))
        item: dict[str, Any] = {
            "image": self.images[i],
            "count": self.counts[i],
            "points": self.points[i],
        }
        if self.mask is not None:
            item["mask"] = self.mask[i]
        if self.annotated_slice is not None and self.slice_points is not None:
            item["annotated_slice"] = int(self.annotated_slice[i])
            item["slice_points"] = self.slice_points[i]
        return item

    def region_stats(self) -> tuple[float, float]:
        """The mean and standard deviation of every voxel inside the region masks of all
        volumes together (what :meth:`zscored` takes as ``stats`` for a whole data set).

        Raises
        ------
        ValueError
            If the set has no region masks or they are all empty.
        """
        if self.mask is None:
            raise ValueError("region_stats needs the region masks; this set has none (mask=None)")
        values = self.images[:, 0][self.mask].double()
        if values.numel() == 0:
            raise ValueError("the region masks are empty: no voxel to take the statistics from")
        return float(values.mean()), float(values.std(unbiased=False))

    def zscored(self, stats: tuple[float, float] | None = None) -> PhantomSet:
        """A copy whose images are z-scored inside the region masks and 0 outside.

        ``stats=None``: each volume with its own region's mean and sd, the usual
        preprocessing of masked MRI crops (:func:`wsdet.io.normalize_intensity` with
        ``mask``). ``stats=(mean, sd)``: every volume with the same affine map, e.g. the
        training set's :meth:`region_stats`. Per-volume statistics carry the volume's
        content: bright lesions raise its region's mean, so the z-scored tissue lies lower
        the more lesions a volume holds and the region's border (0 outside) becomes an edge
        whose height tracks the lesion count, which a counting network can read without
        localising a lesion (``docs/phantoms_v2.md``, "Normalisation"). Shared statistics
        add no such shift: the tissue's level then moves with the count only as much as the
        lesions' own faint tails raise it in the raw image. Networks trained on the raw
        phantoms (tissue about 0.3, lesions 0.1–0.2 above it) stay on the constant-output
        plateau far longer. Every other attribute is shared with this set.

        Raises
        ------
        ValueError
            If the set has no region masks, or ``stats`` has a standard deviation <= 0.
        """
        from wsdet.io import normalize_intensity

        if self.mask is None:
            raise ValueError("zscored needs the region masks; this set has none (mask=None)")
        masks = self.mask.numpy()
        arrays = self.images[:, 0].numpy()
        if stats is None:
            z = np.stack(
                [normalize_intensity(a, mask=m) for a, m in zip(arrays, masks, strict=True)]
            )
        else:
            mean, sd = (float(v) for v in stats)
            if not sd > 0:
                raise ValueError(f"stats must be (mean, sd) with sd > 0, got {stats!r}")
            z = np.where(masks, (arrays - mean) / sd, 0.0).astype(np.float32)
        out = copy.copy(self)  # every other attribute shared
        out.images = torch.from_numpy(z[:, None])
        return out

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[2:])
        return (
            f"PhantomSet(n={len(self)}, shape={shape}, spacing={self.spacing}, "
            f"mean_count={float(self.counts.mean()) if len(self) else 0.0:.2f})"
        )
