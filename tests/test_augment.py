"""Tests of wsdet.data.augment: batched random shift / rotation / flip in 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from wsdet.data.augment import (
    RandomAffine,
    apply_affine,
    augment,
    random_affine,
    transform_points,
)

F64 = torch.float64


def blob(shape: tuple[int, ...], center: np.ndarray, sigma: float = 1.5) -> torch.Tensor:
    grids = torch.meshgrid(*(torch.arange(s, dtype=F64) for s in shape), indexing="ij")
    d2 = sum((g - float(c)) ** 2 for g, c in zip(grids, center, strict=True))
    return torch.exp(-d2 / (2 * sigma**2)).float()


def centroid(image: torch.Tensor) -> np.ndarray:
    w = image.double().clamp(min=0)
    grids = torch.meshgrid(*(torch.arange(s, dtype=F64) for s in image.shape), indexing="ij")
    return np.array([float((w * g).sum() / w.sum()) for g in grids])


# ------------------------------------------------------------------ exact cases


@pytest.mark.parametrize("shape", [(4, 2, 20, 30), (3, 1, 6, 10, 12)])
def test_zero_ranges_are_identity(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape)
    out = augment(x, seed=0, max_shift=0, max_rotation=0, flip=False)
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()
    pts = [np.array([[1.0, 2.0] + [3.0] * (len(shape) - 4)])] * shape[0]
    _, moved = augment(x, seed=0, max_shift=0, max_rotation=0, flip=False, points=pts)
    assert all(np.array_equal(p, q) for p, q in zip(pts, moved, strict=True))


@pytest.mark.parametrize("shape", [(16, 2, 11, 14), (16, 1, 5, 7, 9)])
def test_pure_flips_equal_torch_flip(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape)
    ndim = len(shape) - 2
    out = augment(x, seed=3, max_shift=0, max_rotation=0, flip=True)
    matrix, _ = random_affine(
        shape[0],
        shape[2:],
        generator=torch.Generator().manual_seed(3),
        max_shift=0,
        max_rotation=0,
    )
    seen = set()
    for i in range(shape[0]):
        axes = [a for a in range(ndim) if matrix[i, a, a] < 0]
        seen.add(tuple(axes))
        expected = x[i].flip([a + 1 for a in axes]) if axes else x[i]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    assert len(seen) > 2  # several flip combinations occurred


def test_flip_only_selected_axes() -> None:
    x = torch.rand(32, 1, 8, 9)
    matrix, _ = random_affine(32, (8, 9), generator=torch.Generator().manual_seed(0), flip=[1])
    assert bool((torch.diagonal(matrix, dim1=1, dim2=2)[:, 0] > 0).all())
    out = augment(x, seed=1, max_shift=0, max_rotation=0, flip=[0])
    for i in range(32):
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(
            out[i], x[i].flip(1), atol=1e-5
        )


@pytest.mark.parametrize("shift", [(2, -1), (0, 3), (-2, -2)])
def test_integer_shift_equals_roll_on_interior(shift: tuple[int, int]) -> None:
    x = torch.rand(2, 3, 15, 17)
    matrix = torch.eye(2, dtype=F64).expand(2, 2, 2)
    offset = torch.tensor([shift, shift], dtype=F64)
    out = apply_affine(x, matrix, offset)
    rolled = torch.roll(x, shift, dims=(2, 3))
    rows = slice(max(shift[0], 0), 15 + min(shift[0], 0))
    cols = slice(max(shift[1], 0), 17 + min(shift[1], 0))
    torch.testing.assert_close(out[..., rows, cols], rolled[..., rows, cols], atol=1e-5, rtol=0)
    # what came in from outside is zero padding
    mask = torch.ones(15, 17, dtype=torch.bool)
    mask[rows, cols] = False
    assert float(out[..., mask].abs().max()) < 1e-6


def test_integer_shift_3d_equals_roll() -> None:
    x = torch.rand(1, 1, 6, 7, 8)
    out = apply_affine(
        x, torch.eye(3, dtype=F64)[None], torch.tensor([[1.0, -2.0, 1.0]], dtype=F64)
    )
    rolled = torch.roll(x, (1, -2, 1), dims=(2, 3, 4))
    torch.testing.assert_close(out[..., 1:, :-2, 1:], rolled[..., 1:, :-2, 1:], atol=1e-5, rtol=0)


# ------------------------------------------------------------- against SciPy


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_transforms_match_scipy_affine_transform(ndim: int) -> None:
    shape = (13, 17) if ndim == 2 else (9, 11, 12)
    x = torch.rand(4, 1, *shape, dtype=F64)
    g = torch.Generator().manual_seed(7)
    matrix, offset = random_affine(4, shape, generator=g, max_shift=2.0, max_rotation=0.3)
    out = apply_affine(x, matrix, offset)
    for i in range(4):
        inverse = np.linalg.inv(matrix[i].numpy())
        expected = ndimage.affine_transform(
            x[i, 0].numpy(),
            inverse,
            offset=-inverse @ offset[i].numpy(),
            order=1,
            mode="grid-constant",
            cval=0.0,
        )
        np.testing.assert_allclose(out[i, 0].numpy(), expected, atol=1e-9)


def test_continuous_shift_matches_scipy_shift() -> None:
    x = torch.rand(6, 1, 20, 24, dtype=F64)
    g = torch.Generator().manual_seed(11)
    matrix, offset = random_affine(6, (20, 24), generator=g, max_rotation=0.0, flip=False)
    torch.testing.assert_close(matrix, torch.eye(2, dtype=F64).expand(6, 2, 2))
    assert float(offset.abs().max()) <= 2.0
    out = apply_affine(x, matrix, offset)
    for i in range(6):
        expected = ndimage.shift(x[i, 0].numpy(), offset[i].numpy(), order=1, mode="grid-constant")
        np.testing.assert_allclose(out[i, 0].numpy(), expected, atol=1e-9)


# ------------------------------------------------------------------- points


def test_rotated_dot_lands_on_transformed_point_2d() -> None:
    shape = (64, 80)
    center = np.array([20.3, 50.7])
    x = blob(shape, center)[None, None].repeat(8, 1, 1, 1)
    out, pts = augment(x, seed=5, max_rotation=0.5, max_shift=2.0, points=[center[None]] * 8)
    for i in range(8):
        assert np.abs(centroid(out[i, 0]) - pts[i][0]).max() < 0.5
        peak = np.unravel_index(int(out[i, 0].argmax()), shape)
        assert np.abs(np.array(peak) - pts[i][0]).max() <= 1.0


def test_rotated_dot_lands_on_transformed_point_3d_anisotropic() -> None:
    shape = (16, 40, 36)
    center = np.array([7.0, 25.0, 12.0])
    x = blob(shape, center, sigma=1.8)[None, None].repeat(6, 1, 1, 1, 1)
    out, pts = augment(
        x, seed=2, max_rotation=0.2, spacing=(2.0, 1.0, 1.0), points=[center[None]] * 6
    )
    for i in range(6):
        assert np.abs(centroid(out[i, 0]) - pts[i][0]).max() < 0.5


def test_rotations_are_rigid_in_mm_with_spacing() -> None:
    spacing = np.array([3.0, 1.0, 0.5])
    g = torch.Generator().manual_seed(0)
    matrix, offset = random_affine(
        20, (10, 30, 60), generator=g, max_rotation=0.2, spacing=spacing.tolist()
    )
    rng = np.random.default_rng(0)
    pts = [rng.uniform(0, 10, (5, 3)) for _ in range(20)]
    moved = transform_points(pts, matrix, offset)
    for p, q in zip(pts, moved, strict=True):
        d_before = np.linalg.norm((p[:, None] - p[None]) * spacing, axis=-1)
        d_after = np.linalg.norm((q[:, None] - q[None]) * spacing, axis=-1)
        np.testing.assert_allclose(d_after, d_before, atol=1e-9)
    # every plane is rotated: all off-diagonal entries occur
    assert bool((matrix[:, ~torch.eye(3, dtype=torch.bool)].abs() > 1e-3).any(0).all())


def test_transform_points_types_and_errors() -> None:
    matrix = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]] * 2, dtype=F64)
    offset = torch.tensor([[9.0, 0.0], [1.0, 1.0]], dtype=F64)
    out = transform_points(
        [np.array([[1.0, 2.0]], dtype=np.float32), torch.tensor([[1, 2]])], matrix, offset
    )
    assert isinstance(out[0], np.ndarray) and out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], [[7.0, 1.0]])  # (-2 + 9, 1 + 0)
    assert isinstance(out[1], torch.Tensor) and out[1].dtype == F64
    torch.testing.assert_close(out[1], torch.tensor([[-1.0, 2.0]], dtype=F64))
    empty = transform_points([np.zeros((0, 2)), np.zeros((0, 2))], matrix, offset)
    assert empty[0].shape == (0, 2)
    with pytest.raises(ValueError, match="one per sample"):
        transform_points([np.zeros((1, 2))], matrix, offset)
    with pytest.raises(ValueError, match=r"points\[1\] must have shape"):
        transform_points([np.zeros((1, 2)), np.zeros((1, 3))], matrix, offset)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    row=st.floats(12, 36),
    col=st.floats(12, 44),
)
def test_point_follows_image_property(seed: int, row: float, col: float) -> None:
    center = np.array([row, col])
    x = blob((48, 56), center)[None, None]
    out, pts = augment(x, seed=seed, points=[center[None]])
    assert np.abs(centroid(out[0, 0]) - pts[0][0]).max() < 0.5


# ----------------------------------------------------------- randomness, dtypes


def test_determinism_and_per_sample_transforms() -> None:
    x = torch.rand(8, 1, 30, 30)
    a = augment(x, seed=4)
    b = augment(x, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, seed=5))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(augment(x, generator=g1), augment(x, generator=g2))
    assert torch.equal(augment(x, generator=g1), augment(x, generator=g2))  # states advance alike
    matrix, offset = random_affine(8, (30, 30), generator=torch.Generator().manual_seed(0))
    params = torch.cat([matrix.flatten(1), offset], dim=1)
    assert len({tuple(p.tolist()) for p in params}) == 8
    # identical samples come out different
    same = x[:1].repeat(8, 1, 1, 1)
    out = augment(same, seed=0)
    assert all(not torch.equal(out[0], out[i]) for i in range(1, 8))


def test_parameter_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    matrix, offset = random_affine(
        500, (21, 21), generator=g, max_shift=1.5, max_rotation=0.1, flip=False
    )
    angles = torch.atan2(matrix[:, 1, 0], matrix[:, 0, 0])
    assert float(angles.abs().max()) <= 0.1 + 1e-12 and float(angles.abs().max()) > 0.09
    shift = offset - (
        torch.tensor([10.0, 10.0], dtype=F64) - matrix @ torch.tensor([10.0, 10.0], dtype=F64)
    )
    assert float(shift.abs().max()) <= 1.5 and float(shift.abs().max()) > 1.4
    flips = random_affine(500, (5, 5, 5), generator=g)[0]
    signs = torch.sign(torch.linalg.det(flips))
    assert 0.4 < float((signs < 0).double().mean()) < 0.6  # odd number of flips half the time


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    x = torch.rand(4, 1, 20, 24)
    ref = augment(x, seed=1)
    out = augment(x.to(dtype), seed=1)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=0)


def test_random_affine_module_and_nearest_mode() -> None:
    aug = RandomAffine(max_shift=2, max_rotation=0.2, seed=3)
    again = RandomAffine(max_shift=2, max_rotation=0.2, seed=3)
    x = torch.rand(4, 1, 16, 16)
    first = aug(x)
    assert torch.equal(first, again(x))
    assert not torch.equal(aug(x), first)  # the generator advances
    mask = (torch.rand(4, 1, 16, 16) > 0.5).float()
    out, pts = RandomAffine(mode="nearest", seed=0)(mask, points=[np.zeros((0, 2))] * 4)
    assert set(torch.unique(out).tolist()) <= {0.0, 1.0}
    assert len(pts) == 4
    assert "RandomAffine(max_shift=2" in repr(aug)


def test_argument_errors() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(TypeError, match="floating-point"):
        augment(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        augment(torch.rand(8, 8))
    with pytest.raises(ValueError, match=">= 2"):
        augment(torch.rand(2, 1, 1, 8))
    with pytest.raises(ValueError, match="either generator or seed"):
        augment(x, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="flip"):
        augment(x, flip=[2])
    with pytest.raises(ValueError, match="max_shift"):
        augment(x, max_shift=-1)
    with pytest.raises(ValueError, match="max_rotation"):
        augment(x, max_rotation=math.inf)
    with pytest.raises(ValueError, match="spacing"):
        augment(x, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="one"):
        augment(x, points=[np.zeros((1, 2))])
    with pytest.raises(ValueError, match="matrix and offset"):
        apply_affine(x, torch.eye(2, dtype=F64)[None], torch.zeros(1, 2, dtype=F64))
