"""The 3D lesion study (paper §3.2, §4.2, Tables 1–3, Fig. 6–8) on synthetic phantoms.

Three settings stand in for the paper's brain regions (the real data are private):

- ``midbrain``: small hyperintense lesions in a smooth region, no other bright structure;
  raw intensity is a good detector there.
- ``hippocampi``: the same lesions among CSF-like sheets and tubes and bright blobs, so
  that intensity alone fails.
- ``basal_ganglia``: lesions among bright blobs, annotated on one slice per volume only;
  networks learn the in-slice count and are evaluated on that slice (the attention map's
  slice taken before NMS, 2D NMS and matching), as in the paper's basal-ganglia protocol.

Networks (regression only, as in the paper): GPUnet, GPUnetNoResidual (its map fused with
the intensities), GatedAttentionNet and BaseCNN (shared by Grad, Guided backpropagation,
Grad-CAM, and giving the count of the intensity baseline). Evaluation: NMS size 6, one-to-
one Hungarian matching within 6 voxels, FAUC over 0–15 FP per volume with a bootstrap SD,
operating point at the rounded predicted count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from wsdet._checks import PathLike
from wsdet.data.augment import augment as augment_batch
from wsdet.data.synthetic import PhantomSet, make_lesion_volumes
from wsdet.detection import Detections, find_peaks
from wsdet.detector import Detector
from wsdet.experiments.common import METHOD_ARCHITECTURE, Store, TrainJob, model_folder
from wsdet.experiments.detections import cached_detections, detect_all, detections_path
from wsdet.experiments.figures import lesion_example, lesions_figures
from wsdet.experiments.keys import RunKey
from wsdet.experiments.report import lesions_markdown
from wsdet.experiments.runner import Maps, Plan, Run, RunOptions, TestSet, Trained, run_study
from wsdet.metrics import detect_on_slice
from wsdet.train import InitScheme, OptimizerName, TrainConfig

if TYPE_CHECKING:  # typing.Unpack is Python >= 3.11; annotations are not evaluated
    from typing_extensions import Unpack

__all__ = ["SETTINGS", "LesionStudy", "LesionStudyConfig", "run_lesions"]

#: Phantom settings: keyword arguments of :func:`make_lesion_volumes` per setting.
SETTINGS: dict[str, dict[str, Any]] = {
    "midbrain": {"distractors": "none", "annotation": "volume"},
    "hippocampi": {"distractors": "csf+blobs", "annotation": "volume"},
    "basal_ganglia": {"distractors": "blobs", "annotation": "slice", "count_factor": 2.0},
}

METHODS_3D = (
    "gp_unet",
    "gp_unet_no_residual",
    "intensity",
    "gated_attention",
    "grad",
    "guided_backprop",
    "grad_cam",
)


@dataclass
class LesionStudyConfig:
    """Settings of the 3D study (defaults: the run reported in docs/results.md).

    The volumes, the width and the budget are sized for a 2-core CPU (paper: 32 filters,
    a day per network on a GPU): 16 × 32 × 32 volumes for the midbrain-like setting (the
    paper's midbrain crops are 88 × 88 × 11) and 24 × 48 × 48 for the two settings with
    distractors (their lesions and distractors do not fit in the smaller volumes; the
    paper's hippocampi and basal-ganglia crops are larger too), ``width=16`` halves the
    paper's 3D width, training runs in mini-batches of 4 volumes instead of 1 for at most
    ``max_epochs``. As in the paper, the networks of the
    first setting (the easiest, midbrain) are trained from scratch and those of the other
    settings fine-tuned from them (``finetune``, at most ``finetune_epochs``).
    """

    settings: tuple[str, ...] = ("midbrain", "hippocampi", "basal_ganglia")
    methods: tuple[str, ...] = METHODS_3D
    shape: tuple[int, int, int] = (16, 32, 32)
    setting_shapes: dict[str, tuple[int, int, int]] = field(
        default_factory=lambda: {"hippocampi": (24, 48, 48), "basal_ganglia": (24, 48, 48)}
    )
    mean_count: float = 4.0
    n_train: int = 240
    n_val: int = 48
    n_test: int = 100
    width: int = 16
    seed: int = 0
    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    init: InitScheme = "kaiming_conv"
    batch_size: int = 4
    max_epochs: int = 30
    patience: int | None = 10
    time_budget_min: float | None = None
    finetune: bool = True
    finetune_epochs: int = 8
    augment: bool = False
    nms_size: int = 6
    radius: float = 6.0
    max_fp: float = 15.0
    fuse_intensity: bool = True
    chance: bool = True
    n_bootstrap: int = 1000
    eval_batch: int = 4

    @classmethod
    def smoke(cls, **overrides: Any) -> LesionStudyConfig:
        """A tiny configuration exercising the whole path in about a minute."""
        base: dict[str, Any] = dict(
            shape=(16, 32, 32),
            setting_shapes={},
            n_train=8,
            n_val=4,
            n_test=4,
            width=4,
            max_epochs=1,
            finetune_epochs=1,
            patience=None,
            time_budget_min=1.0,
            n_bootstrap=20,
            mean_count=2.0,
        )
        base.update(overrides)
        return cls(**base)

    def shape_of(self, setting: str) -> tuple[int, int, int]:
        """The volume shape of ``setting``: ``setting_shapes`` or else ``shape``."""
        d, h, w = self.setting_shapes.get(setting, self.shape)  # a list, when read from JSON
        return (d, h, w)

    def train_config(self, *, finetune: bool = False) -> TrainConfig:
        """The training configuration of the networks (``finetune``: of the later
        settings' networks, fine-tuned from the first setting's)."""
        return TrainConfig(
            objective="regression",
            optimizer=self.optimizer,
            lr=self.lr,
            init=None if finetune else self.init,
            batch_size=self.batch_size,
            max_epochs=self.finetune_epochs if finetune else self.max_epochs,
            patience=self.patience,
            time_budget=None if self.time_budget_min is None else self.time_budget_min * 60.0,
            seed=self.seed,
            progress="log",
            log_every=5,
        )


def _data(cfg: LesionStudyConfig, setting: str) -> tuple[PhantomSet, PhantomSet, PhantomSet]:
    kw = dict(SETTINGS[setting])
    # single-slice annotation: more lesions per volume, so that slices hold some
    kw["mean_count"] = cfg.mean_count * kw.pop("count_factor", 1.0)
    base = 7919 * (1 + list(SETTINGS).index(setting)) + cfg.seed

    def make(n: int, seed: int) -> PhantomSet:
        return make_lesion_volumes(n, cfg.shape_of(setting), seed=seed, **kw)

    return make(cfg.n_train, base), make(cfg.n_val, base + 1), make(cfg.n_test, base + 2)


def _on_slice(
    volume: np.ndarray, test: PhantomSet, k: int, cfg: LesionStudyConfig, count: float
) -> Detections:
    """The candidates of ``volume`` (volume ``k`` of ``test``) on its annotated slice."""
    assert test.annotated_slice is not None
    s = detect_on_slice(
        volume,
        test.points[k],
        partial(find_peaks, size=cfg.nms_size),
        axis=test.slice_axis if test.slice_axis is not None else 0,
        slice_index=int(test.annotated_slice[k]),
        count=count,
    )
    return Detections(np.asarray(s.points, np.int64), np.asarray(s.scores), count, len(s.points))


def _slice_detections(
    model: nn.Module, method: str, test: PhantomSet, cfg: LesionStudyConfig, options: Any
) -> list[Detections]:
    """Every method's candidates on each volume's annotated slice (the attention map's
    slice taken before NMS)."""
    det = Detector(model, method=method, **options)
    out: list[Detections] = []
    for i in range(0, len(test), cfg.eval_batch):
        maps_t, counts = det.attention_and_count(test.images[i : i + cfg.eval_batch])
        maps = maps_t.clamp_min(0).float().cpu().numpy()
        out += [_on_slice(maps[j], test, i + j, cfg, float(counts[j])) for j in range(len(maps))]
    return out


def _slice_targets(test: PhantomSet) -> list[np.ndarray]:
    axis = test.slice_axis if test.slice_axis is not None else 0
    return [np.delete(np.asarray(p, float).reshape(-1, 3), axis, axis=1) for p in test.points]


def _chance_detections(
    test: PhantomSet, cfg: LesionStudyConfig, count: float, slice_mode: bool
) -> list[Detections]:
    """A chance reference: NMS on i.i.d. uniform noise inside each volume's region mask, so
    the ranking of well-spread candidates is random. Its FAUC shows how much of a method's
    score the hit radius alone gives in volumes of this size."""
    if test.mask is None:
        raise ValueError("the chance reference needs the phantoms' region masks")
    out: list[Detections] = []
    for i in range(len(test)):
        g = torch.Generator().manual_seed(1_000_003 * (cfg.seed + 1) + i)
        noise = torch.rand(test.images.shape[2:], generator=g) * test.mask[i].float()
        if slice_mode:
            out.append(_on_slice(noise.numpy(), test, i, cfg, count))
        else:
            pts, scores = find_peaks(noise, size=cfg.nms_size)
            out.append(Detections(pts, scores, count, len(pts)))
    return out


class LesionStudy:
    """The 3D lesion study as a :class:`~wsdet.experiments.runner.Study`.

    Networks: every architecture of ``config.methods`` per setting (``"midbrain-gpunet"``),
    those of the later settings fine-tuned from the first setting's. Runs: every method per
    setting, and the chance reference; evaluations and comparisons are grouped by setting.
    """

    def __init__(self, config: LesionStudyConfig) -> None:
        for setting in config.settings:
            if setting not in SETTINGS:
                raise ValueError(f"settings: unknown setting {setting!r}; known: {list(SETTINGS)}")
        self._config = config
        self.data: dict[str, tuple[PhantomSet, PhantomSet, PhantomSet]] = {}
        self.data_keys: dict[str, dict[str, Any]] = {}

    @property
    def config(self) -> LesionStudyConfig:
        return self._config

    def _slice_mode(self, setting: str) -> bool:
        return bool(SETTINGS[setting]["annotation"] == "slice")

    def plan(self, store: Store) -> Plan:
        """Make the phantoms and list the study's networks, runs and comparisons.

        All networks come first (one list, so that two processes can share it and a
        fine-tuned network starts as soon as its source has finished), then the runs.
        """
        cfg = self.config
        tests: dict[str, TestSet] = {}
        for setting in cfg.settings:
            self.data[setting] = _data(cfg, setting)
            self.data_keys[setting] = {
                "study": "lesions3d",
                "setting": setting,
                "shape": list(cfg.shape_of(setting)),
                "mean_count": cfg.mean_count,
                "n_train": cfg.n_train,
                "n_val": cfg.n_val,
                "seed": cfg.seed,
                **SETTINGS[setting],
            }
            test = self.data[setting][2]
            targets = (
                _slice_targets(test)
                if self._slice_mode(setting)
                else [np.asarray(p) for p in test.points]
            )
            tests[setting] = TestSet(test.images, targets, {"radius": cfg.radius}, test)
        methods = [m for m in cfg.methods if m != "gp_unet"]
        return Plan(
            jobs=self._jobs(store),
            runs=[run for setting in cfg.settings for run in self._runs(setting)],
            tests=tests,
            comparisons=[
                (f"{s}: gp_unet vs {m}", RunKey("gp_unet", variant=s), RunKey(m, variant=s))
                for s in cfg.settings
                for m in methods
            ],
            figure_maps=[
                (RunKey(m, variant=s), lesion_example(tests[s].data)[0])
                for s in cfg.settings
                for m in cfg.methods
            ],
        )

    def _jobs(self, store: Store) -> list[TrainJob]:
        cfg = self.config
        jobs: list[TrainJob] = []
        sources: dict[str, Path] = {}  # arch -> best.pt of the first setting's network
        for setting in cfg.settings:
            train, val, _ = self.data[setting]
            first = setting == cfg.settings[0]
            for arch in sorted({METHOD_ARCHITECTURE[m] for m in cfg.methods}):
                spec = {"arch": arch, "dim": 3, "width": cfg.width, **self.data_keys[setting]}
                source = sources.get(arch) if cfg.finetune and not first else None
                job = TrainJob(
                    f"{setting}-{arch}",
                    spec,
                    cfg.train_config(finetune=source is not None),
                    (train.images, train.counts),
                    (val.images, val.counts),
                    augment_batch if cfg.augment else None,
                    source,
                )
                jobs.append(job)
                if first:
                    folder = model_folder(store, job.name, job.spec, job.config)
                    sources[arch] = folder / "best.pt"
        return jobs

    def _runs(self, setting: str) -> list[Run]:
        """Every method on ``setting``'s networks, then the chance reference."""
        cfg = self.config
        runs = []
        for m in cfg.methods:
            fuse = m == "gp_unet_no_residual" and cfg.fuse_intensity
            network = f"{setting}-{METHOD_ARCHITECTURE[m]}"
            options = {"fuse_intensity": True} if fuse else {}
            key = RunKey(m, variant=setting)
            runs.append(Run(key, m, f"{setting}-{m}", network, setting, options))
        if cfg.chance:
            runs.append(
                Run(RunKey("chance", variant=setting), "chance", f"{setting}-chance", None, setting)
            )
        return runs

    def detections(
        self, store: Store, run: Run, net: Trained | None
    ) -> tuple[list[Detections], float]:
        """The cached detections of one method on one setting's test volumes (on the
        annotated slices in a slice setting); the chance reference's, not cached."""
        cfg = self.config
        setting, method = run.group, run.key.method
        train, _, test = self.data[setting]
        slice_mode = self._slice_mode(setting)
        if net is None:  # chance; constant count: the training mean (a count-free guess)
            mean_count = float(train.counts.float().mean())
            return _chance_detections(test, cfg, mean_count, slice_mode), 0.0
        model, info = net
        key = {"n_test": cfg.n_test, "slice": slice_mode, **self.data_keys[setting]}
        key["network_dir"] = info["folder"]
        path = detections_path(store, run.name, key, method, cfg.nms_size, run.options)
        compute: Callable[[], list[Detections]]
        if slice_mode:
            compute = partial(_slice_detections, model, method, test, cfg, run.options)
        else:
            compute = partial(
                detect_all,
                model,
                method,
                test.images,
                batch_size=cfg.eval_batch,
                size=cfg.nms_size,
                options=run.options,
            )
        return cached_detections(path, compute)

    def record(self, run: Run, dets: list[Detections]) -> dict[str, Any]:
        """The dimension the run was evaluated in (2: on the annotated slices)."""
        return {"evaluated_ndim": 2 if self._slice_mode(run.group) else 3}

    def markdown(self, results: dict[str, Any]) -> str:
        return lesions_markdown(results)

    def figures(self, curves: dict[RunKey, Any], maps: Maps, out: Path) -> None:
        tests = {s: self.data[s][2] for s in self.config.settings}
        lesions_figures(curves, maps, tests, out, self.config)


def run_lesions(
    config: LesionStudyConfig, out: PathLike, **options: Unpack[RunOptions]
) -> dict[str, Any]:
    """Run (or resume) the 3D study under ``out``; return the results as a dict.

    Writes ``out/results.json``, ``out/report.md`` and figures ``out/*.png``. The keyword
    arguments ``interim``, ``train_only`` (network names such as ``"midbrain-gpunet"``) and
    ``device`` are those of :func:`~wsdet.experiments.run_study`.
    """
    return run_study(LesionStudy(config), out, **options)
