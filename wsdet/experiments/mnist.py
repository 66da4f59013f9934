"""The MNIST study (paper §3.1, §4.1, Fig. 3–5): six methods × two objectives.

Networks: GPUnet, GPUnetNoResidual, GatedAttentionNet and BaseCNN (shared by Grad, Guided
backpropagation and Grad-CAM), each trained with the regression objective (count of the
target digit) and the classification objective (presence). Evaluation on balanced test
grids from a held-out digit pool: NMS size 6, negatives clipped, one-to-one Hungarian
matching with the box rule (a hit lies in the target digit's 28×28 cell), FROC, FAUC over
0–2 FP/image with a bootstrap SD, and for regression the operating point given by the
rounded predicted count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from wsdet._checks import PathLike, check_choice
from wsdet.data.augment import augment as augment_batch
from wsdet.data.mnist import GridSampler, MNISTGrid, mnist_grid_splits
from wsdet.detection import Detections
from wsdet.experiments.common import METHOD_ARCHITECTURE, Store, TrainJob, detect_cached
from wsdet.experiments.figures import FIG4_OBJECTIVES, mnist_examples, mnist_figures
from wsdet.experiments.keys import RunKey
from wsdet.experiments.report import mnist_markdown
from wsdet.experiments.runner import Maps, Plan, Run, RunOptions, TestSet, Trained, run_study
from wsdet.train import InitScheme, Objective, OptimizerName, Precision, TrainConfig

if TYPE_CHECKING:  # typing.Unpack is Python >= 3.11; annotations are not evaluated
    from typing_extensions import Unpack

__all__ = ["MNISTStudy", "MNISTStudyConfig", "run_mnist"]

PAPER_METHODS = (
    "grad",
    "guided_backprop",
    "grad_cam",
    "gp_unet_no_residual",
    "gp_unet",
    "gated_attention",
)


@dataclass
class MNISTStudyConfig:
    """Settings of the MNIST study. Defaults: the full run reported in docs/results.md.

    ``data="fresh"`` draws new training grids (without augmentation: the stream of new
    grids replaces it) from the training digit pool every epoch (a documented deviation:
    the paper's 400 fixed images give 7 optimiser steps per epoch); ``faithful_gpunet``
    adds a GP-Unet network per objective trained the paper's way (the fixed 400 images,
    with augmentation) for comparison. Training is bounded by epochs, not time, so that a
    rerun on a busy machine trains the same networks; ``time_budget_min`` adds a cap.
    ``source``: where the digit pools come from (:func:`wsdet.data.mnist_grid_splits`):
    ``"test"`` splits the 10,000 test digits into three pools (the runs reported so far);
    ``"train5k"`` draws the training grids from the 5,000 training digits of the
    ``train5k`` files and splits the test digits into the validation and test pools, as
    the paper trains on training digits. ``replicate_paper400``: the replicate seeds also
    train the paper-faithful GP-Unet networks (a seed table row for them);
    ``duplicates_ignored``: every FAUC also with duplicate hits ignored instead of counted
    as false positives (a second seed table). :meth:`settle` combines them.
    """

    digit: int = 4
    root: str | None = None
    seed: int = 0
    n_train: int = 400
    n_val: int = 100
    n_test: int = 500
    data: Literal["fresh", "fixed"] = "fresh"
    source: Literal["test", "train5k"] = "test"
    methods: tuple[str, ...] = PAPER_METHODS
    objectives: tuple[Objective, ...] = ("regression", "classification")
    optimizer: OptimizerName = "adam"
    lr: float = 3e-3
    init: InitScheme = "kaiming_conv"
    batch_size: int = 64
    max_epochs: int = 300
    patience: int | None = 100
    time_budget_min: float | None = None
    faithful_gpunet: bool = True
    max_restarts: int = 2
    replicate_seeds: tuple[int, ...] = (100, 200)
    nms_size: int = 6
    max_fp: float = 2.0
    n_bootstrap: int = 1000
    eval_batch: int = 50
    precision: Precision = "fp32"
    replicate_paper400: bool = False
    duplicates_ignored: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def smoke(cls, **overrides: Any) -> MNISTStudyConfig:
        """A tiny configuration exercising the whole path in well under 2 minutes."""
        base: dict[str, Any] = dict(
            n_train=32,
            n_val=16,
            n_test=24,
            max_epochs=1,
            patience=None,
            time_budget_min=2.0,
            n_bootstrap=50,
            batch_size=16,
            max_restarts=0,  # one epoch cannot leave the plateau: no restarts
            replicate_seeds=(),
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def settle(cls, **overrides: Any) -> MNISTStudyConfig:
        """Regression against classification, settled across seeds (GP-Unet only).

        Both objectives in both data regimes (fresh grids every epoch, and the paper's 400
        fixed grids with augmentation), 8 initialisation seeds each (the study's 0 and
        100, 200, ..., 700: a restart moves a seed by one, so the seeds stay apart), 32
        networks stopped by patience 100 or the 2,000-epoch cap; training grids from the
        5,000 training digits (``source="train5k"``); each FAUC also with duplicates
        ignored (``duplicates_ignored``: size-6 NMS leaves about two peaks per digit,
        which penalises multi-peak maps). Sized for a GPU: ``--device cuda`` with several
        ``--train-only all`` processes.
        """
        base: dict[str, Any] = dict(
            methods=("gp_unet",),
            source="train5k",
            faithful_gpunet=True,
            replicate_paper400=True,
            replicate_seeds=tuple(range(100, 800, 100)),
            max_epochs=2000,
            patience=100,
            duplicates_ignored=True,
        )
        base.update(overrides)
        return cls(**base)

    def train_config(
        self, objective: Objective, *, epochs: int | None = None, seed: int | None = None
    ) -> TrainConfig:
        """The training configuration of the networks trained with ``objective``
        (``seed``: a replicate's; default: the study's)."""
        return TrainConfig(
            objective=objective,
            optimizer=self.optimizer,
            lr=self.lr,
            init=self.init,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs if epochs is None else epochs,
            patience=self.patience,
            time_budget=None if self.time_budget_min is None else self.time_budget_min * 60.0,
            seed=self.seed if seed is None else seed,
            precision=self.precision,
            progress="log",
            log_every=10,
        )


def target_digits(grids: MNISTGrid) -> list[np.ndarray]:
    """Per grid, the pool index of each target digit, in the order of ``grids.boxes``
    (row-major cells): equal indices are the same digit image shown in several grids."""
    is_target = grids.cell_labels == grids.target
    return [cells[mask] for cells, mask in zip(grids.cell_indices, is_target, strict=True)]


def digit_under(grids: MNISTGrid) -> Callable[[int, np.ndarray], np.ndarray]:
    """``f(i, points)``: the pool index of the digit under each point ``(row, col)`` of
    grid ``i`` (every cell holds a digit; points outside the grid get -1)."""
    h, w = grids.cell_shape

    def under(i: int, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
        r, c = pts[:, 0] // h, pts[:, 1] // w
        inside = (r >= 0) & (r < grids.rows) & (c >= 0) & (c < grids.cols)
        out = np.full(len(pts), -1, dtype=np.int64)
        out[inside] = grids.cell_indices[i][r[inside], c[inside]]
        return out

    return under


class MNISTStudy:
    """The MNIST study as a :class:`~wsdet.experiments.runner.Study`.

    Networks: every architecture of ``config.methods`` per objective (named like
    ``"gpunet-regression"``), the paper-faithful GP-Unet (``"gpunet-regression-paper400"``)
    and the replicates (``"gpunet-regression-seed100"``). Runs: every method per objective,
    the paper-faithful GP-Unet, and every method on the replicates (FAUC per seed only).
    """

    def __init__(self, config: MNISTStudyConfig) -> None:
        if config.data not in ("fresh", "fixed"):
            raise ValueError(f"data must be 'fresh' or 'fixed', got {config.data!r}")
        check_choice("source", config.source, ("test", "train5k"))
        if config.replicate_paper400 and not config.faithful_gpunet:
            raise ValueError("replicate_paper400 needs faithful_gpunet=True (its networks)")
        self._config = config
        self.data_key: dict[str, Any] = {}

    @property
    def config(self) -> MNISTStudyConfig:
        return self._config

    def plan(self, store: Store) -> Plan:
        """Load the grids and list the study's networks, runs and comparisons."""
        cfg = self.config
        splits = mnist_grid_splits(
            cfg.root,
            target=cfg.digit,
            n_train=cfg.n_train,
            n_val=cfg.n_val,
            n_test=cfg.n_test,
            seed=cfg.seed,
            source=cfg.source,
        )
        self.test = test = splits.test
        self.data_key = {
            "study": "mnist",
            "digit": cfg.digit,
            "seed": cfg.seed,
            "n_train": cfg.n_train,
            "n_val": cfg.n_val,
            "n_test": cfg.n_test,
            "root_files": "mnist-test-10k",
        }
        if cfg.source != "test":  # the runs on the test pools keep their cache keys
            pool = splits.train_pool  # keyed by content: another subset trains anew
            digest = hashlib.md5(pool.images.tobytes() + pool.labels.tobytes()).hexdigest()
            self.data_key["root_files"] = f"mnist-test-10k+train5k-{digest[:12]}"
        # the test grids reuse digits: the bootstrap also resamples distinct digits
        digits = target_digits(test)
        pos, neg = mnist_examples(test.counts.numpy())
        shown = [(RunKey(m, "regression"), pos) for m in cfg.methods]
        if "gp_unet" in cfg.methods:
            shown += [(RunKey("gp_unet", o), i) for i in (neg, pos) for o in FIG4_OBJECTIVES]
        return Plan(
            jobs=self._jobs(splits),
            runs=self._runs(),
            tests={
                "": TestSet(
                    test.images, test.boxes, {"match": "boxes"}, test, digits, digit_under(test)
                )
            },
            comparisons=self._comparisons(),
            figure_maps=shown,
            seed_table=True,
        )

    def _jobs(self, splits: Any) -> list[TrainJob]:
        """Main networks, the paper-faithful GP-Unet, then the replicates (same data)."""
        cfg = self.config
        val = (splits.val.images, splits.val.counts)
        if cfg.data == "fresh":
            pool = splits.train_pool
            train: Any = GridSampler(
                pool.images, pool.labels, cfg.digit, cfg.n_train, seed=cfg.seed + 1000
            )
        else:
            train = (splits.train.images, splits.train.counts)
        fixed = (splits.train.images, splits.train.counts)
        archs = _architectures(cfg.methods)
        spec = {a: {"arch": a, "dim": 2, "data": cfg.data, **self.data_key} for a in archs}
        paper = {"arch": "gpunet", "dim": 2, "data": "fixed+augment", **self.data_key}

        # a network's name is the label of its key with the architecture for the method
        def job(key: RunKey, spec: dict[str, Any], data: Any, augment: Any = None) -> TrainJob:
            tcfg = cfg.train_config(key.objective, seed=key.seed)
            restarts = cfg.max_restarts
            return TrainJob(key.label, spec, tcfg, data, val, augment, max_restarts=restarts)

        jobs = [job(RunKey(a, o), spec[a], train) for o in cfg.objectives for a in archs]
        if cfg.faithful_gpunet:
            paper400 = [RunKey("gpunet", o, "paper400") for o in cfg.objectives]
            jobs += [job(k, paper, fixed, augment_batch) for k in paper400]
        # The same networks trained again from other seeds (initialisation and batch order;
        # same data): how much of a difference between methods the training seed alone makes.
        for rseed in cfg.replicate_seeds:
            jobs += [
                job(RunKey(a, o, seed=rseed), spec[a], train) for o in cfg.objectives for a in archs
            ]
            if cfg.faithful_gpunet and cfg.replicate_paper400:
                jobs += [
                    job(RunKey("gpunet", o, "paper400", seed=rseed), paper, fixed, augment_batch)
                    for o in cfg.objectives
                ]
        return jobs

    def _runs(self) -> list[Run]:
        cfg = self.config
        keys = [RunKey(m, o) for m in cfg.methods for o in cfg.objectives]
        keys += [RunKey("gp_unet", o, "paper400") for o in cfg.objectives]
        keys += [
            RunKey(m, o, seed=s) for s in cfg.replicate_seeds for o in cfg.objectives
            for m in cfg.methods
        ]  # fmt: skip
        if cfg.faithful_gpunet and cfg.replicate_paper400:
            keys += [
                RunKey("gp_unet", o, "paper400", seed=s)
                for s in cfg.replicate_seeds
                for o in cfg.objectives
            ]
        return [Run(k, k.label, k.label, k.network(METHOD_ARCHITECTURE[k.method])) for k in keys]

    def _comparisons(self) -> list[tuple[str, RunKey, RunKey]]:
        methods = self.config.methods
        reg: Objective = "regression"
        cls: Objective = "classification"
        p400 = "paper400"
        pairs = [(RunKey(m, reg), RunKey(m, cls)) for m in methods]
        pairs += [(RunKey("gp_unet", reg), RunKey(m, reg)) for m in methods if m != "gp_unet"]
        pairs += [(RunKey("gp_unet", reg, p400), RunKey("gp_unet", reg))]
        pairs += [(RunKey("gp_unet", reg, p400), RunKey("gp_unet", cls, p400))]
        return [(f"{a.label} vs {b.label}", a, b) for a, b in pairs]

    def detections(
        self, store: Store, run: Run, net: Trained | None
    ) -> tuple[list[Detections], float]:
        """The cached detections of one method on one network's test maps."""
        assert net is not None  # every MNIST run reads a network
        model, info = net
        dets, seconds = detect_cached(
            store,
            run.name,
            {"network": info["folder"], **self.data_key},
            model,
            run.key.method,
            self.test.images,
            batch_size=self.config.eval_batch,
            size=self.config.nms_size,
        )
        if run.key.objective == "classification":  # a logit, not a count: no operating point
            for d in dets:
                d.count = float("nan")
        return dets, seconds

    def record(self, run: Run, dets: list[Detections]) -> dict[str, Any]:
        """Regression: the count's mean absolute error."""
        if run.key.objective != "regression":
            return {}
        counts = np.array([d.count for d in dets])
        return {"count_mae": float(np.abs(counts - self.test.counts.numpy()).mean())}

    def markdown(self, results: dict[str, Any]) -> str:
        return mnist_markdown(results)

    def figures(self, curves: dict[RunKey, Any], maps: Maps, out: Path) -> None:
        mnist_figures(curves, maps, self.test, out, self.config)


def _architectures(methods: Sequence[str]) -> list[str]:
    """The architectures the methods read, sorted."""
    return sorted({METHOD_ARCHITECTURE[m] for m in methods})


def run_mnist(
    config: MNISTStudyConfig, out: PathLike, **options: Unpack[RunOptions]
) -> dict[str, Any]:
    """Run (or resume) the MNIST study under ``out``; return the results as a dict.

    Writes ``out/results.json``, ``out/report.md`` and figures ``out/*.png``. The keyword
    arguments ``interim``, ``train_only`` (network names such as
    ``"gpunet-regression-paper400"``) and ``device`` are those of
    :func:`~wsdet.experiments.run_study`.
    """
    return run_study(MNISTStudy(config), out, **options)
