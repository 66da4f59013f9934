"""Synthetic phantoms with point ground truth: 2D blobs and 3D lesion volumes.

Two generators, pure numpy (the result is handed over as torch tensors):

* :func:`make_phantoms_2d` — small bright Gaussian blobs (the targets, counted) among
  larger blobs and elongated tubes (distractors, not counted). Quick to learn; the data
  of ``make demo`` and of the test-suite.
* :func:`make_lesion_volumes` — a stand-in for the paper's private brain MRI data
  (enlarged perivascular spaces, PVS): small hyperintense ellipsoids or short tubes inside
  a smooth region mask, with optional CSF-like distractors that make raw intensity a poor
  detector (like the hippocampi), or none (like the midbrain, where intensity works).
  Each volume also carries a single annotated slice, as in the basal-ganglia protocol.

Conventions: points are index coordinates in array axis order — ``(row, col)`` in 2D,
``(z, y, x)`` in 3D — with voxel centres at integer positions; target centres are
integer voxels and are local maxima of the noise-free image. Physical sizes (radii,
distances) of the 3D generator are in millimetres and converted with ``spacing``
(mm per voxel along each axis), so targets are round in mm on anisotropic grids.

Every sample is generated from its own child of ``numpy.random.SeedSequence(seed)``
(geometry and noise from separate streams), so the first ``m`` samples of a set of
``n`` equal a set of ``m`` with the same seed, and changing ``noise`` leaves the
geometry unchanged.

Everything is importable from ``wsdet.data.phantoms`` (and from :mod:`wsdet.data`; the
former module ``wsdet.data.synthetic`` re-exports the same names). The modules:
:mod:`~wsdet.data.phantoms.blobs2d` and :mod:`~wsdet.data.phantoms.lesions` (the two
generators), :mod:`~wsdet.data.phantoms.dataset` (:class:`PhantomSet`, what both return);
the private ``_shapes``, ``_placement`` and ``_regions`` hold the shapes, the isolated
placement of targets and the lesion regions they share.
"""

from __future__ import annotations

from wsdet.data.phantoms.blobs2d import make_phantoms_2d
from wsdet.data.phantoms.dataset import PhantomSet
from wsdet.data.phantoms.lesions import CountDistribution as CountDistribution
from wsdet.data.phantoms.lesions import Distractors3D as Distractors3D
from wsdet.data.phantoms.lesions import TargetKind as TargetKind
from wsdet.data.phantoms.lesions import make_lesion_volumes
from wsdet.data.phantoms.v2 import SETTINGS_V2 as SETTINGS_V2
from wsdet.data.phantoms.v2 import PhantomSettingV2 as PhantomSettingV2
from wsdet.data.phantoms.v2 import make_phantoms_v2 as make_phantoms_v2

__all__ = ["PhantomSet", "make_lesion_volumes", "make_phantoms_2d"]
