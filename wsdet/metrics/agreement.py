"""Agreement of two point annotations of the same images (the paper's intra-rater figure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from wsdet.metrics._checks import as_points, as_sequence
from wsdet.metrics.matchers import match_images

__all__ = ["AnnotationAgreement", "compare_annotations"]


@dataclass(frozen=True)
class AnnotationAgreement:
    """Agreement of one annotation set with a reference set (see :func:`compare_annotations`).

    Attributes
    ----------
    sensitivity : float
        Fraction of reference points matched (``nan`` when the reference is empty).
    fp_avg : float
        Unmatched test points per image.
    n_tp, n_fp, n_reference, n_images : int
        Matched test points, unmatched test points, reference points, images.
    """

    sensitivity: float
    fp_avg: float
    n_tp: int
    n_fp: int
    n_reference: int
    n_images: int


def compare_annotations(
    a: Sequence[ArrayLike],
    b: Sequence[ArrayLike],
    radius: float = 6.0,
    *,
    spacing: ArrayLike | None = None,
    inclusive: bool = True,
) -> AnnotationAgreement:
    """Sensitivity and false positives per image of annotation ``a`` against reference ``b``.

    This is the paper's intra-rater figure (Section 3.8): one series of point annotations is
    taken as the reference, the other is matched one-to-one to it (maximum matching within
    ``radius``); unmatched points of ``a`` are false positives. Swap the arguments for the
    other direction.

    Parameters
    ----------
    a, b : sequence of array_like
        Per image, ``(m_i, ndim)`` points of the evaluated and of the reference annotation.
    radius, spacing, inclusive
        As in :func:`match_points`.

    Returns
    -------
    AnnotationAgreement

    Examples
    --------
    >>> agr = compare_annotations([[[0, 0], [20, 20]]], [[[0, 2]]], radius=6)
    >>> agr.sensitivity, agr.fp_avg
    (1.0, 1.0)
    """
    a_list = as_sequence(a, "a")
    b_list = as_sequence(b, "b")
    if len(a_list) != len(b_list):
        raise ValueError(
            f"a and b must have one entry per image; got {len(a_list)} and {len(b_list)}"
        )
    pts = [as_points(p, f"a[{n}]") for n, p in enumerate(a_list)]
    res = match_images(
        pts,
        [np.zeros(p.shape[0]) for p in pts],
        b_list,
        radius=radius,
        spacing=spacing,
        inclusive=inclusive,
    )
    n_tp = sum(r.n_tp for r in res)
    n_fp = sum(r.n_fp for r in res)
    n_ref = sum(r.n_targets for r in res)
    n_img = len(res)
    return AnnotationAgreement(
        sensitivity=n_tp / n_ref if n_ref else float("nan"),
        fp_avg=n_fp / n_img if n_img else float("nan"),
        n_tp=n_tp,
        n_fp=n_fp,
        n_reference=n_ref,
        n_images=n_img,
    )
