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

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from wsdet._checks import PathLike, check_choice, check_int
from wsdet.baselines import choose_sigma, log_maps, set_detections
from wsdet.data.augment import augment as augment_batch
from wsdet.data.phantoms.v2 import SETTINGS_V2, hit_radius_mm, make_phantoms_v2, nms_size
from wsdet.data.synthetic import PhantomSet, make_lesion_volumes
from wsdet.detection import Detections, find_peaks
from wsdet.detector import Detector
from wsdet.experiments import detections as cache
from wsdet.experiments.common import METHOD_ARCHITECTURE, Store, TrainJob, decoder_key
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


#: The tiny sizes of a smoke run (:meth:`LesionStudyConfig.smoke`, ``v2(smoke=True)``).
_SMOKE: dict[str, Any] = dict(
    shape=(16, 32, 32),
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


@dataclass
class LesionStudyConfig:
    """Settings of the 3D study (defaults: the v1 run reported in docs/results.md).

    The volumes, the width and the budget are sized for a 2-core CPU (paper: 32 filters,
    a day per network on a GPU): 16 × 32 × 32 volumes for the midbrain-like setting (the
    paper's midbrain crops are 88 × 88 × 11) and 24 × 48 × 48 for the two settings with
    distractors (their lesions and distractors do not fit in the smaller volumes; the
    paper's hippocampi and basal-ganglia crops are larger too), ``width=16`` halves the
    paper's 3D width, training runs in mini-batches of 4 volumes instead of 1 for at most
    ``max_epochs``. As in the paper, the networks of the
    first setting (the easiest, midbrain) are trained from scratch and those of the other
    settings fine-tuned from them (``finetune``, at most ``finetune_epochs``), except
    those listed in ``scratch`` (at most ``scratch_epochs`` epochs with patience
    ``scratch_patience``, where set; otherwise as the first setting's). ``zscore``:
    z-score every volume inside its region mask
    (:meth:`~wsdet.data.phantoms.PhantomSet.zscored`) for every method, the networks and
    the training-free references alike, with each volume's own region statistics
    (``zscore_stats="volume"``) or the training volumes' pooled ones (``"train"``: no
    count-dependent shift of the tissue's level, see ``PhantomSet.zscored``);
    ``mask_maps``: every attention map 0 outside the region mask before the NMS, as the
    LoG and chance maps (z-scored volumes are 0 outside, so a map could peak there).
    :meth:`v2` gives the benchmark v2 protocol.
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
    scratch: tuple[str, ...] = ()
    scratch_epochs: int | None = None
    scratch_patience: int | None = None
    augment: bool = False
    nms_size: int = 6
    radius: float = 6.0
    max_fp: float = 15.0
    fuse_intensity: bool = True
    chance: bool = True
    n_bootstrap: int = 1000
    eval_batch: int = 4
    phantoms: Literal["v1", "v2"] = "v1"
    data_seed: int | None = None
    init_seeds: tuple[int, ...] = ()
    fauc_budgets: tuple[float, ...] = ()
    max_restarts: int = 0
    log_baseline: bool = False
    log_sigmas_mm: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    zscore: bool = False
    zscore_stats: Literal["volume", "train"] = "volume"
    mask_maps: bool = False

    @classmethod
    def smoke(cls, **overrides: Any) -> LesionStudyConfig:
        """A tiny configuration exercising the whole path in about a minute."""
        base: dict[str, Any] = {**_SMOKE, "setting_shapes": {}}
        base.update(overrides)
        return cls(**base)

    @classmethod
    def v2(cls, *, smoke: bool = False, **overrides: Any) -> LesionStudyConfig:
        """The benchmark v2 protocol (:mod:`wsdet.data.phantoms.v2`): volumes z-scored
        inside their region masks with the training volumes' pooled statistics
        (``zscore``, ``zscore_stats="train"``), the midbrain-like networks trained from
        scratch, the hippocampi-like fine-tuned from them (the paper's protocol), the
        basal-ganglia-like from scratch (``scratch``); a data seed apart from the
        initialisation seeds, three initialisation seeds per network (the study's and
        ``init_seeds``), FAUC at 0–1, 0–2 and 0–15 FP per volume, networks no better than a
        constant restarted (once; not the fine-tuned ones) and marked failed, and the
        training-free LoG baseline (σ chosen on validation volumes). 96 training and 32
        validation volumes, at most 20 epochs with patience 10 per network: about 4 hours
        of two single-thread processes on 2 cores (``docs/phantoms_v2.md``). The first
        runs: per-volume statistics, 10 epochs, patience 5, 6 fine-tuning. ``smoke``: tiny
        data, one epoch, one extra seed."""
        base: dict[str, Any] = dict(
            phantoms="v2",
            setting_shapes={},
            finetune=True,
            max_epochs=20,
            finetune_epochs=20,
            scratch=("basal_ganglia",),
            patience=10,
            data_seed=1000,
            init_seeds=(100, 200),
            fauc_budgets=(1.0, 2.0),
            max_restarts=1,
            log_baseline=True,
            zscore=True,
            zscore_stats="train",
            mask_maps=True,
            n_train=96,
            n_val=32,
        )
        if smoke:  # the v1 smoke sizes (its shapes are unused: each v2 setting has one)
            base.update(_SMOKE, init_seeds=(100,), max_restarts=0, log_sigmas_mm=(0.75, 1.25))
        base.update(overrides)
        if not base["zscore"] and "zscore_stats" not in overrides:  # no statistics to choose
            base["zscore_stats"] = "volume"
        return cls(**base)

    def __post_init__(self) -> None:
        check_choice("phantoms", self.phantoms, ("v1", "v2"))
        check_choice("zscore_stats", self.zscore_stats, ("volume", "train"))
        if self.zscore_stats != "volume" and not self.zscore:
            raise ValueError(f"zscore_stats={self.zscore_stats!r} needs zscore=True")
        known = SETTINGS_V2 if self.phantoms == "v2" else SETTINGS
        for name, settings in (("settings", self.settings), ("scratch", self.scratch)):
            if isinstance(settings, str):
                raise TypeError(
                    f"{name} must be a tuple of setting names, not the string {settings!r}"
                )
            for setting in settings:
                if setting not in known:
                    raise ValueError(f"{name}: unknown setting {setting!r}; known: {list(known)}")
        for name in (
            "max_epochs",
            "finetune_epochs",
            "patience",
            "scratch_epochs",
            "scratch_patience",
        ):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, check_int(name, value, minimum=1))

    def shape_of(self, setting: str) -> tuple[int, int, int]:
        """The volume shape of ``setting``: the v2 setting's, or ``setting_shapes`` or
        else ``shape``."""
        if self.phantoms == "v2":
            return SETTINGS_V2[setting].shape
        d, h, w = self.setting_shapes.get(setting, self.shape)  # a list, when read from JSON
        return (d, h, w)

    def slice_mode(self, setting: str) -> bool:
        """Whether ``setting`` annotates one slice per volume (evaluated on it)."""
        if self.phantoms == "v2":
            return SETTINGS_V2[setting].annotation == "slice"
        return bool(SETTINGS[setting]["annotation"] == "slice")

    def spacing_of(self, setting: str) -> tuple[float, float, float]:
        """Voxel size (mm) of ``setting``'s volumes (1 mm for the v1 phantoms)."""
        return SETTINGS_V2[setting].spacing if self.phantoms == "v2" else (1.0, 1.0, 1.0)

    def nms_size_of(self, setting: str) -> int | tuple[int, ...]:
        """The NMS size of ``setting`` in 3D: ``nms_size``, or per axis for v2 (the paper's
        6 voxels in-plane, as many mm through-plane)."""
        if self.phantoms == "v2":
            return nms_size(self.spacing_of(setting))
        return self.nms_size

    def match_of(self, setting: str) -> dict[str, Any]:
        """The matching options of ``setting``: ``radius`` voxels (v1), or the paper's 6
        voxels in-plane as millimetres with the voxel size (v2)."""
        if self.phantoms == "v1":
            return {"radius": self.radius}
        spacing = self.spacing_of(setting)
        in_plane = spacing[1:]  # the slice axis is 0
        evaluated = in_plane if self.slice_mode(setting) else spacing
        return {"radius_mm": hit_radius_mm(spacing), "spacing": evaluated}

    def train_config(
        self, *, finetune: bool = False, seed: int | None = None, scratch: bool = False
    ) -> TrainConfig:
        """The training configuration of the networks (``finetune``: of the later
        settings' networks, fine-tuned from the first setting's; ``seed``: an
        initialisation seed other than the study's; ``scratch``: of a setting of
        ``scratch``, with ``scratch_epochs`` and ``scratch_patience`` where they are set)."""
        max_epochs = self.finetune_epochs if finetune else self.max_epochs
        patience = self.patience
        if scratch and self.scratch_epochs is not None:
            max_epochs = self.scratch_epochs
        if scratch and self.scratch_patience is not None:
            patience = self.scratch_patience
        return TrainConfig(
            objective="regression",
            optimizer=self.optimizer,
            lr=self.lr,
            init=None if finetune else self.init,
            batch_size=self.batch_size,
            max_epochs=max_epochs,
            patience=patience,
            time_budget=None if self.time_budget_min is None else self.time_budget_min * 60.0,
            seed=self.seed if seed is None else seed,
            progress="log",
            log_every=5,
        )


def data_seeds(cfg: LesionStudyConfig, setting: str) -> tuple[int, int, int]:
    """The seeds of ``setting``'s training, validation and test volumes, derived from the
    data seed (the study's seed unless ``data_seed`` is given)."""
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    names = list(SETTINGS_V2 if cfg.phantoms == "v2" else SETTINGS)
    base = 7919 * (1 + names.index(setting)) + data_seed
    return base, base + 1, base + 2


def _data(cfg: LesionStudyConfig, setting: str) -> tuple[PhantomSet, PhantomSet, PhantomSet]:
    """Training, validation and test volumes of ``setting`` (seeds: :func:`data_seeds`)."""
    train_seed, val_seed, test_seed = data_seeds(cfg, setting)
    kw = dict(SETTINGS[setting]) if cfg.phantoms == "v1" else {}
    # single-slice annotation: more lesions per volume, so that slices hold some
    kw["mean_count"] = cfg.mean_count * kw.pop("count_factor", 1.0)

    def make(n: int, seed: int) -> PhantomSet:
        if cfg.phantoms == "v2":
            return make_phantoms_v2(n, setting, seed=seed)
        return make_lesion_volumes(n, cfg.shape_of(setting), seed=seed, **kw)

    sets = make(cfg.n_train, train_seed), make(cfg.n_val, val_seed), make(cfg.n_test, test_seed)
    if not cfg.zscore:
        return sets
    stats = sets[0].region_stats() if cfg.zscore_stats == "train" else None
    return sets[0].zscored(stats), sets[1].zscored(stats), sets[2].zscored(stats)


def _network(setting: str, arch: str, seed: int | None) -> str:
    """The name of ``setting``'s network of ``arch`` (trained from ``seed``, when it is not
    the study's own)."""
    return f"{setting}-{arch}" + ("" if seed is None else f"-seed{seed}")


def _on_slice(
    volume: np.ndarray, test: PhantomSet, k: int, cfg: LesionStudyConfig, count: float
) -> Detections:
    """The candidates of ``volume`` (volume ``k`` of ``test``) on its annotated slice."""
    assert test.annotated_slice is not None
    axis = test.slice_axis if test.slice_axis is not None else 0
    peaks, index = partial(find_peaks, size=cfg.nms_size), int(test.annotated_slice[k])
    s = detect_on_slice(volume, test.points[k], peaks, axis=axis, slice_index=index, count=count)
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
        if cfg.mask_maps:  # 0 outside the region, as the references' maps
            assert test.mask is not None
            maps = maps * test.mask[i : i + cfg.eval_batch].numpy()
        out += [_on_slice(maps[j], test, i + j, cfg, float(counts[j])) for j in range(len(maps))]
    return out


def _slice_targets(test: PhantomSet) -> list[np.ndarray]:
    axis = test.slice_axis if test.slice_axis is not None else 0
    return [np.delete(np.asarray(p, float).reshape(-1, 3), axis, axis=1) for p in test.points]


def _chance_detections(
    test: PhantomSet, cfg: LesionStudyConfig, setting: str, count: float
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
        if cfg.slice_mode(setting):
            out.append(_on_slice(noise.numpy(), test, i, cfg, count))
        else:
            pts, scores = find_peaks(noise, size=cfg.nms_size_of(setting))
            out.append(Detections(pts, scores, count, len(pts)))
    return out


class LesionStudy:
    """The 3D lesion study as a :class:`~wsdet.experiments.runner.Study`.

    Networks: every architecture of ``config.methods`` per setting (``"midbrain-gpunet"``),
    those of the later settings fine-tuned from the first setting's. Runs: every method per
    setting, and the chance reference; evaluations and comparisons are grouped by setting.
    """

    def __init__(self, config: LesionStudyConfig) -> None:
        config.__post_init__()  # the settings exist (also for a config changed since)
        self._config = config
        self.data: dict[str, tuple[PhantomSet, PhantomSet, PhantomSet]] = {}
        self.data_keys: dict[str, dict[str, Any]] = {}
        self.log_sigma: dict[str, float] = {}

    @property
    def config(self) -> LesionStudyConfig:
        return self._config

    def _slice_mode(self, setting: str) -> bool:
        return self.config.slice_mode(setting)

    def _data_key(self, setting: str) -> dict[str, Any]:
        """What the volumes of ``setting`` depend on (a part of every cache key)."""
        cfg = self.config
        key: dict[str, Any] = {
            "study": "lesions3d",
            "setting": setting,
            "shape": list(cfg.shape_of(setting)),
            "mean_count": cfg.mean_count,
            "n_train": cfg.n_train,
            "n_val": cfg.n_val,
        }
        if cfg.zscore:  # absent when off: the keys of earlier runs stay valid
            key["zscore"] = True
            if cfg.zscore_stats != "volume":  # likewise
                key["zscore_stats"] = cfg.zscore_stats
        if cfg.phantoms == "v1":  # the v1 keys as they always were
            data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
            return {**key, "seed": data_seed, **SETTINGS[setting]}
        v2 = dataclasses.asdict(SETTINGS_V2[setting])
        return {**key, "phantoms": "v2", "data_seed": cfg.data_seed, **v2}

    def plan(self, store: Store) -> Plan:
        """Make the phantoms and list the study's networks, runs and comparisons.

        All networks come first (one list, so that two processes can share it and a
        fine-tuned network starts as soon as its source has finished), then the runs.
        """
        cfg = self.config
        tests: dict[str, TestSet] = {}
        for setting in cfg.settings:
            self.data[setting] = _data(cfg, setting)
            self.data_keys[setting] = self._data_key(setting)
            test = self.data[setting][2]
            targets = (
                _slice_targets(test)
                if self._slice_mode(setting)
                else [np.asarray(p) for p in test.points]
            )
            tests[setting] = TestSet(test.images, targets, cfg.match_of(setting), test)
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
            seed_table=bool(cfg.init_seeds),
        )

    def _jobs(self, store: Store) -> list[TrainJob]:
        """Every architecture per setting, from the study's seed and each ``init_seeds`` (same
        data); fine-tuned from the first setting's of its seed if ``finetune``, not ``scratch``."""
        cfg = self.config
        jobs: list[TrainJob] = []
        sources: dict[tuple[str, int | None], str] = {}  # the first setting's job names
        for setting in cfg.settings:
            train, val, _ = self.data[setting]
            first = setting == cfg.settings[0]
            for seed in (None, *cfg.init_seeds):
                for arch in sorted({METHOD_ARCHITECTURE[m] for m in cfg.methods}):
                    spec = {"arch": arch, "dim": 3, "width": cfg.width, **self.data_keys[setting]}
                    spec |= decoder_key(arch, 3, cfg.shape_of(setting))  # see UpsampleTo
                    tuned = cfg.finetune and not first and setting not in cfg.scratch
                    source = sources.get((arch, seed)) if tuned else None
                    job = TrainJob(
                        _network(setting, arch, seed),
                        spec,
                        cfg.train_config(
                            finetune=source is not None,
                            seed=seed,
                            scratch=setting in cfg.scratch,
                        ),
                        (train.images, train.counts),
                        (val.images, val.counts),
                        augment_batch if cfg.augment else None,
                        # a restart of a fine-tuned network would start from the same
                        # source again (only the batch order changes): none
                        max_restarts=0 if source is not None else cfg.max_restarts,
                        source=source,  # its final network, after any restart
                    )
                    jobs.append(job)
                    if first:
                        sources[(arch, seed)] = job.name
        return jobs

    def _runs(self, setting: str) -> list[Run]:
        """Every method on ``setting``'s networks (and on its replicates from the other
        initialisation seeds), then the training-free references."""
        cfg = self.config
        runs = []
        for seed in (None, *cfg.init_seeds):
            for m in cfg.methods:
                fuse = m == "gp_unet_no_residual" and cfg.fuse_intensity
                network = _network(setting, METHOD_ARCHITECTURE[m], seed)
                options = {"fuse_intensity": True} if fuse else {}
                key = RunKey(m, variant=setting, seed=seed)
                name = f"{setting}-{m}" + ("" if seed is None else f"-seed{seed}")
                runs.append(Run(key, m, name, network, setting, options))
        references = (["log"] if cfg.log_baseline else []) + (["chance"] if cfg.chance else [])
        for ref in references:
            runs.append(Run(RunKey(ref, variant=setting), ref, f"{setting}-{ref}", None, setting))
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
        if method == "log":
            return self._log_detections(setting)
        if net is None:  # chance; constant count: the training mean (a count-free guess)
            mean_count = float(train.counts.float().mean())
            return _chance_detections(test, cfg, setting, mean_count), 0.0
        model, info = net
        key = {"n_test": cfg.n_test, "slice": slice_mode, **self.data_keys[setting]}
        key["network_dir"] = info["folder"]
        key |= {"masked": True} if cfg.mask_maps else {}  # absent when off: earlier caches valid
        key |= cache.coarse_upsample_key(method, cfg.shape_of(setting))
        size = cfg.nms_size_of(setting)
        path = detections_path(store, run.name, key, method, size, run.options)
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
                size=size,
                options=run.options,
                masks=test.mask if cfg.mask_maps else None,
            )
        return cached_detections(path, compute)

    def _log_detections(self, setting: str) -> tuple[list[Detections], float]:
        """The training-free LoG baseline: σ chosen by FAUC on the validation volumes,
        every NMS candidate of the test volumes' LoG maps (no count)."""
        cfg = self.config
        _, val, test = self.data[setting]
        t0 = time.perf_counter()
        radius = cfg.match_of(setting).get("radius_mm", cfg.radius)  # v1: 1 mm voxels
        size = cfg.nms_size_of(setting)
        choice = choose_sigma(
            val, cfg.log_sigmas_mm, radius_mm=radius, max_fp=cfg.max_fp, size=size
        )
        self.log_sigma[setting] = float(np.max(choice.sigma_mm))
        maps = log_maps(test.images, choice.sigma_mm, test.spacing, masks=test.mask)
        dets, _, _ = set_detections(maps, test, size=size, slice_mode=cfg.slice_mode(setting))
        return dets, time.perf_counter() - t0

    def record(self, run: Run, dets: list[Detections]) -> dict[str, Any]:
        """The dimension the run was evaluated in (2: on the annotated slices), the count's
        mean absolute error (networks), the σ (mm) chosen for the LoG baseline."""
        out: dict[str, Any] = {"evaluated_ndim": 2 if self._slice_mode(run.group) else 3}
        if run.network is not None:
            truth = self.data[run.group][2].counts.numpy()
            counts = np.array([d.count for d in dets])
            out["count_mae"] = float(np.abs(counts - truth).mean())
        if run.key.method == "log":
            out["log_sigma_mm"] = self.log_sigma.get(run.group)
        return out

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
