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
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsdet.data.augment import augment as augment_batch
from wsdet.data.synthetic import PhantomSet, make_lesion_volumes
from wsdet.detection import Detections, find_peaks
from wsdet.detector import Detector
from wsdet.experiments.common import (
    METHOD_ARCHITECTURE,
    METHOD_LABELS,
    Store,
    TrainJob,
    detect_cached,
    load_detections,
    model_folder,
    save_detections,
    train_all,
)
from wsdet.metrics import detect_on_slice, evaluate, fauc, match_images, paired_bootstrap
from wsdet.train import TrainConfig

__all__ = ["SETTINGS", "LesionStudyConfig", "run_lesions"]

log = logging.getLogger("wsdet.experiments")

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
    optimizer: str = "adam"
    lr: float = 1e-3
    init: str = "kaiming_conv"
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
        return tuple(self.setting_shapes.get(setting, self.shape))  # type: ignore[return-value]

    def train_config(self, *, finetune: bool = False) -> TrainConfig:
        return TrainConfig(
            objective="regression",
            optimizer=self.optimizer,  # type: ignore[arg-type]
            lr=self.lr,
            init=None if finetune else self.init,  # type: ignore[arg-type]
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


def _slice_detections(
    model: nn.Module, method: str, test: PhantomSet, cfg: LesionStudyConfig, options: Any
) -> list[Detections]:
    det = Detector(model, method=method, **options)
    out: list[Detections] = []
    assert test.annotated_slice is not None
    for i in range(0, len(test), cfg.eval_batch):
        x = test.images[i : i + cfg.eval_batch]
        maps_t, counts = det.attention_and_count(x)
        maps = maps_t.clamp_min(0).float().cpu().numpy()
        for j in range(maps.shape[0]):
            k = i + j
            s = detect_on_slice(
                maps[j],
                test.points[k],
                partial(find_peaks, size=cfg.nms_size),
                axis=test.slice_axis if test.slice_axis is not None else 0,
                slice_index=int(test.annotated_slice[k]),
                count=float(counts[j]),
            )
            out.append(
                Detections(
                    np.asarray(s.points, np.int64),
                    np.asarray(s.scores),
                    float(counts[j]),
                    len(s.points),
                )
            )
    return out


def _slice_targets(test: PhantomSet) -> list[np.ndarray]:
    axis = test.slice_axis if test.slice_axis is not None else 0
    return [np.delete(np.asarray(p, float).reshape(-1, 3), axis, axis=1) for p in test.points]


def _score(
    dets: list[Detections],
    targets: list[np.ndarray],
    cfg: LesionStudyConfig,
    seconds: float,
    slice_mode: bool,
) -> tuple[Any, dict[str, Any]]:
    """The evaluation report of one method on one setting, and its JSON record."""
    report = evaluate(
        dets,
        targets,
        radius=cfg.radius,
        max_fp=cfg.max_fp,
        n_bootstrap=cfg.n_bootstrap,
        seed=cfg.seed,
    )
    record = {
        **report.to_dict(),
        "detect_seconds": seconds,
        "evaluated_ndim": 2 if slice_mode else 3,
    }
    return report, record


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
            assert test.annotated_slice is not None
            s = detect_on_slice(
                noise.numpy(),
                test.points[i],
                partial(find_peaks, size=cfg.nms_size),
                axis=test.slice_axis if test.slice_axis is not None else 0,
                slice_index=int(test.annotated_slice[i]),
                count=count,
            )
            pts, scores = np.asarray(s.points, np.int64), np.asarray(s.scores)
        else:
            pts, scores = find_peaks(noise, size=cfg.nms_size)
        out.append(Detections(pts, scores, count, len(pts)))
    return out


def run_lesions(
    config: LesionStudyConfig,
    out: str | Path,
    *,
    interim: bool = False,
    train_only: Sequence[str] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the 3D study under ``out``; return the results as a dict.

    Writes ``out/results.json``, ``out/report.md`` and figures ``out/*.png``.
    ``interim=True`` trains nothing and reports the networks that have finished so far
    (``results["missing"]`` lists the others; their methods show "—").
    ``train_only``: train just the networks of these names (e.g. ``"midbrain-gpunet"``) and
    return before any evaluation, writing nothing but their cache entries. ``device``:
    where to train (e.g. ``"cuda"``); networks are evaluated on the CPU.
    """
    cfg = config
    store = Store(out)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"config": dataclasses.asdict(cfg), "networks": {}}
    evals: dict[str, dict[str, Any]] = {}
    comparisons: dict[str, Any] = {}
    curves: dict[str, dict[str, Any]] = {}
    examples: dict[str, Any] = {}
    archs = sorted({METHOD_ARCHITECTURE[m] for m in cfg.methods})
    fn = partial(fauc, max_fp=cfg.max_fp)
    # All networks first (one list, so that two processes can share it and a fine-tuned
    # network starts as soon as its source has finished), then the evaluation per setting.
    data: dict[str, tuple[PhantomSet, PhantomSet, PhantomSet]] = {}
    data_keys: dict[str, dict[str, Any]] = {}
    jobs: list[TrainJob] = []
    sources: dict[str, Path] = {}  # arch -> best.pt of the first setting's network
    for setting in cfg.settings:
        if setting not in SETTINGS:
            raise ValueError(f"settings: unknown setting {setting!r}; known: {list(SETTINGS)}")
        train, val, test = data[setting] = _data(cfg, setting)
        data_keys[setting] = {
            "study": "lesions3d",
            "setting": setting,
            "shape": list(cfg.shape_of(setting)),
            "mean_count": cfg.mean_count,
            "n_train": cfg.n_train,
            "n_val": cfg.n_val,
            "seed": cfg.seed,
            **SETTINGS[setting],
        }
        first = setting == cfg.settings[0]
        for arch in archs:
            spec = {"arch": arch, "dim": 3, "width": cfg.width, **data_keys[setting]}
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
    trained = train_all(store, jobs, train=not interim, only=train_only, device=device)
    results["missing"] = [job.name for job in jobs if job.name not in trained]
    if train_only is not None:
        return {"networks": {k: v[1] for k, v in trained.items()}, "missing": results["missing"]}
    for setting in cfg.settings:
        train, val, test = data[setting]
        data_key = data_keys[setting]
        slice_mode = SETTINGS[setting]["annotation"] == "slice"
        nets: dict[str, nn.Module] = {}
        folders: dict[str, str] = {}
        for arch in archs:
            if f"{setting}-{arch}" not in trained:  # interim report
                continue
            model, info = trained[f"{setting}-{arch}"]
            nets[arch] = model
            folders[arch] = info["folder"]
            results["networks"][f"{setting}-{arch}"] = info
        targets = _slice_targets(test) if slice_mode else [np.asarray(p) for p in test.points]
        evals[setting], curves[setting] = {}, {}
        matches = {}
        for method in cfg.methods:
            arch = METHOD_ARCHITECTURE[method]
            if arch not in nets:
                continue
            model = nets[arch]
            options = (
                {"fuse_intensity": True}
                if (method == "gp_unet_no_residual" and cfg.fuse_intensity)
                else {}
            )
            key: dict[str, Any] = {"n_test": cfg.n_test, "slice": slice_mode, **data_key}
            key["network_dir"] = folders[arch]
            label = f"{setting}-{method}"
            if slice_mode:
                path = store.entry(
                    "detections",
                    label,
                    {**key, "method": method, "options": options, "size": cfg.nms_size},
                ).with_suffix(".npz")
                if path.exists():
                    dets, seconds = load_detections(path)
                else:
                    t0 = time.perf_counter()
                    dets = _slice_detections(model, method, test, cfg, options)
                    seconds = time.perf_counter() - t0
                    save_detections(path, dets, seconds)
            else:
                dets, seconds = detect_cached(
                    store,
                    label,
                    key,
                    model,
                    method,
                    test.images,
                    batch_size=cfg.eval_batch,
                    size=cfg.nms_size,
                    options=options,
                )
            report, evals[setting][method] = _score(dets, targets, cfg, seconds, slice_mode)
            curves[setting][METHOD_LABELS[method]] = report.curve
            matches[method] = match_images(
                [d.points for d in dets], [d.scores for d in dets], targets, radius=cfg.radius
            )
            log.info("%s: FAUC %.3f", label, report.fauc.estimate)
        if cfg.chance:
            # constant count: the training mean (the operating point of a count-free guess)
            mean_count = float(train.counts.float().mean())
            dets = _chance_detections(test, cfg, mean_count, slice_mode)
            report, evals[setting]["chance"] = _score(dets, targets, cfg, 0.0, slice_mode)
            curves[setting]["Chance (random map)"] = report.curve
            log.info("%s-chance: FAUC %.3f", setting, report.fauc.estimate)
        for m in matches:
            if m != "gp_unet" and "gp_unet" in matches:
                r = paired_bootstrap(
                    fn,
                    matches["gp_unet"],
                    matches[m],
                    B=cfg.n_bootstrap,
                    seed=cfg.seed,
                    ci=0.95,
                    max_fp=cfg.max_fp,
                )
                comparisons[f"{setting}: gp_unet vs {m}"] = {
                    k: v for k, v in dataclasses.asdict(r).items() if k != "replicates"
                }
        examples[setting] = (test, nets)
    results["evaluations"] = evals
    results["comparisons"] = comparisons
    results["seconds_this_call"] = time.perf_counter() - t_start
    store.write_json(Path(out) / "results.json", results)
    from wsdet.experiments.report import lesions_figures, lesions_markdown

    (Path(out) / "report.md").write_text(lesions_markdown(results))
    lesions_figures(curves, examples, Path(out), cfg)
    return results
