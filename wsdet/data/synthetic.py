"""Synthetic phantoms: the former name of :mod:`wsdet.data.phantoms`, kept for imports.

``from wsdet.data.synthetic import make_phantoms_2d`` (and every other name this module
has exported) keeps working; new code imports from :mod:`wsdet.data.phantoms` or
:mod:`wsdet.data`.

>>> import wsdet.data.phantoms
>>> make_phantoms_2d is wsdet.data.phantoms.make_phantoms_2d
True
"""

from __future__ import annotations

from wsdet.data.phantoms import PhantomSet, make_lesion_volumes, make_phantoms_2d
from wsdet.data.phantoms._shapes import FloatArray as FloatArray
from wsdet.data.phantoms._shapes import IntArray as IntArray
from wsdet.data.phantoms.lesions import CountDistribution as CountDistribution
from wsdet.data.phantoms.lesions import Distractors3D as Distractors3D
from wsdet.data.phantoms.lesions import TargetKind as TargetKind

__all__ = ["PhantomSet", "make_lesion_volumes", "make_phantoms_2d"]
