"""The typed key of one evaluated run of a study, and its label strings.

A run is one attention method read from one trained network. Its :class:`RunKey` names it
by fields; :attr:`RunKey.label` is the string the reports and ``results.json`` use
(``"gp_unet-regression"``, ``"gp_unet-regression-paper400"``, a replicate
``"grad-classification-seed100"``), and :meth:`RunKey.parse` reads one back.

>>> key = RunKey("gp_unet", "regression", variant="paper400")
>>> key.label
'gp_unet-regression-paper400'
>>> RunKey.parse(key.label) == key
True
>>> RunKey("grad", "classification", seed=100).label
'grad-classification-seed100'
>>> RunKey("grad", "classification", seed=100).network("basecnn")
'basecnn-classification-seed100'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import cast, get_args

from wsdet._checks import check_choice
from wsdet.train import Objective

__all__ = ["RunKey"]

_SEED = re.compile(r"seed(\d+)")


@dataclass(frozen=True)
class RunKey:
    """One evaluated run: ``method`` read from a network trained with ``objective``.

    Attributes
    ----------
    method : str
        The attention method (``"gp_unet"``, ``"grad_cam"``, ...).
    objective : {"regression", "classification"}
        The training objective of the network it reads.
    variant : str
        A variant of the network or of the data, ``""`` for none: ``"paper400"`` (MNIST,
        the paper's fixed training set) or the lesion study's setting (``"midbrain"``).
    seed : int or None
        The training seed of a replicate network; ``None`` for the study's own seed.
    """

    method: str
    objective: Objective = "regression"
    variant: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        check_choice("objective", self.objective, get_args(Objective))
        for part in (self.method, self.variant):
            if "-" in part:
                raise ValueError(f"RunKey parts must not contain '-'; got {part!r}")

    def _label(self, head: str) -> str:
        parts = [head, self.objective, self.variant]
        if self.seed is not None:
            parts.append(f"seed{self.seed}")
        return "-".join(p for p in parts if p)

    @property
    def label(self) -> str:
        """``method-objective[-variant][-seedN]``, as in the reports."""
        return self._label(self.method)

    def network(self, arch: str) -> str:
        """The name of the network of architecture ``arch`` this run reads (MNIST study)."""
        return self._label(arch)

    def main(self) -> RunKey:
        """The same run on the study's own seed (``seed=None``)."""
        return dataclasses.replace(self, seed=None)

    @classmethod
    def parse(cls, label: str) -> RunKey:
        """The key of a :attr:`label` (the inverse of :attr:`label`)."""
        method, objective, *rest = label.split("-")
        seed = None
        if rest and (m := _SEED.fullmatch(rest[-1])):
            seed = int(m.group(1))
            rest = rest[:-1]
        if len(rest) > 1:
            raise ValueError(f"not a run label: {label!r}")
        check_choice("objective", objective, get_args(Objective))
        return cls(method, cast(Objective, objective), rest[0] if rest else "", seed)
