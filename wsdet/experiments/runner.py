"""One runner for every study: train → detect → evaluate → compare → report.

A study is data: its :class:`Plan` lists the networks to train
(:class:`~wsdet.experiments.TrainJob`), the runs to evaluate (:class:`Run`: one attention
method read from one network, keyed by a :class:`~wsdet.experiments.keys.RunKey`), the
test set of each evaluation group, the paired comparisons and the attention maps its
figures show. The few things that differ between
studies (how detections are made and cached, extra fields of a record, the report's
tables and figures) are the methods of a :class:`Study`. :func:`run_study` does the rest,
the same way for the MNIST study and the 3D lesion study.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypedDict

import numpy as np
import torch
from torch import nn

from wsdet._checks import PathLike
from wsdet._io import atomic_write_text
from wsdet.detection import Detections
from wsdet.detector import Detector
from wsdet.experiments.common import Store, TrainJob, train_all
from wsdet.experiments.keys import RunKey
from wsdet.metrics import (
    EvaluationReport,
    bootstrap_weights,
    evaluate,
    fauc,
    paired_bootstrap,
    two_way_bootstrap,
    two_way_paired_bootstrap,
)
from wsdet.metrics.bootstrap import bootstrap_table
from wsdet.metrics.events import EventTable

__all__ = ["Plan", "Run", "RunOptions", "Study", "StudyConfig", "TestSet", "Trained", "run_study"]

log = logging.getLogger("wsdet.experiments")

#: A trained network and its run summary (see :func:`~wsdet.experiments.train_cached`).
Trained = tuple[nn.Module, dict[str, Any]]
#: The attention maps the figures show: ``(run, test image index) -> map`` (≥ 0).
Maps = dict[tuple[RunKey, int], np.ndarray]


class StudyConfig(Protocol):
    """The settings every study has (its configuration dataclass has more)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    seed: int
    max_fp: float
    n_bootstrap: int
    nms_size: int
    eval_batch: int


@dataclass(frozen=True)
class TestSet:
    """The test images of one evaluation group, their targets and how to match them.

    ``match``: the matching options of :func:`~wsdet.metrics.evaluate` and
    :func:`~wsdet.metrics.match_images` (e.g. ``{"match": "boxes"}`` or
    ``{"radius": 6.0}``). ``data``: the study's own test set object, for its figures.
    ``clusters``: per image, one object label per target when test images reuse objects
    (the MNIST test grids reuse digits): the FAUC and the comparisons then also get a
    two-way bootstrap over images and objects (:func:`~wsdet.metrics.two_way_bootstrap`).
    ``object_at(i, points)``: the object label under each of image ``i``'s detections
    (``-1``: none), so that false positives on a repeated look-alike are resampled with it.
    """

    images: torch.Tensor
    targets: Sequence[Any]
    match: dict[str, Any]
    data: Any = None
    clusters: Sequence[Any] | None = None
    object_at: Callable[[int, np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class Run:
    """One method read from one network, evaluated on its group's test set.

    ``label``: its key in ``results["evaluations"]`` (inside its ``group``'s dict when the
    group is not ``""``); ``name``: its detection-cache entry and log name; ``network``:
    the :class:`TrainJob` name of the network it reads (``None``: it needs none);
    ``options``: the :class:`~wsdet.detector.Detector` options of the method. A run whose
    key has a ``seed`` is a replicate: only its FAUC is kept, per training seed.
    """

    key: RunKey
    label: str
    name: str
    network: str | None
    group: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """What a study trains and evaluates (see the module docstring).

    ``tests``: the test set per group (``""`` when the study has one). ``comparisons``:
    ``(name, a, b)``: a paired bootstrap of FAUC(a) − FAUC(b), when both were evaluated.
    ``figure_maps``: ``(run, test image)`` pairs whose attention maps the figures show.
    ``seed_table``: record ``results["fauc_by_seed"]`` (FAUC per training seed).
    """

    jobs: list[TrainJob]
    runs: list[Run]
    tests: dict[str, TestSet]
    comparisons: list[tuple[str, RunKey, RunKey]] = field(default_factory=list)
    figure_maps: list[tuple[RunKey, int]] = field(default_factory=list)
    seed_table: bool = False


class Study(Protocol):
    """The parts of a study that differ from the others; :func:`run_study` runs it."""

    @property
    def config(self) -> StudyConfig: ...

    def plan(self, store: Store) -> Plan:
        """The networks, runs, test sets, comparisons and figure maps of the study."""
        ...

    def detections(
        self, store: Store, run: Run, net: Trained | None
    ) -> tuple[list[Detections], float]:
        """The (cached) detections of ``run`` on its test set, and the seconds they took."""
        ...

    def record(self, run: Run, dets: list[Detections]) -> dict[str, Any]:
        """Study-specific fields of ``run``'s evaluation record."""
        ...

    def markdown(self, results: dict[str, Any]) -> str:
        """The report's tables."""
        ...

    def figures(self, curves: dict[RunKey, Any], maps: Maps, out: Path) -> None:
        """The report's figures from the FROC curves and the attention maps."""
        ...


class RunOptions(TypedDict, total=False):
    """The keyword arguments of :func:`run_study`, passed on by the per-study runners."""

    interim: bool
    train_only: Sequence[str] | None
    device: str | None


def run_study(
    study: Study,
    out: PathLike,
    *,
    interim: bool = False,
    train_only: Sequence[str] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``study`` under ``out``; return its results.

    Trains every network of the plan (or loads it), then, unless ``train_only``, detects
    with every run, evaluates, compares, writes ``out/results.json`` and ``out/report.md``
    (atomically) and the figures ``out/*.png``.
    :func:`~wsdet.experiments.run_mnist` and :func:`~wsdet.experiments.run_lesions` pass
    their keyword arguments (:class:`RunOptions`) on to this function.

    Parameters
    ----------
    study : Study
        What to train, detect, evaluate and report.
    out : str or os.PathLike
        The study's folder: its cache of trained networks and detections, and its results.
    interim : bool, default False
        Train nothing and report the networks that have finished so far
        (``results["missing"]`` lists the others; their rows show "—"), for a look at a long
        study while other processes train it; the full run overwrites these files.
    train_only : sequence of str, optional
        Train just the networks of these names (e.g. ``"gpunet-classification"``,
        ``"midbrain-gpunet"``) and return before any evaluation, writing nothing but their
        cache entries (to train part of a study on another machine); ``["all"]``: every
        network of the plan (start several such processes to train them side by side on
        one GPU, then the same command without ``train_only`` to evaluate).
    device : str, optional
        Where to train (e.g. ``"cuda"``); networks are evaluated on the CPU.

    Returns
    -------
    dict
        The results, as written to ``out/results.json``; with ``train_only``, only
        ``"networks"`` and ``"missing"``.
    """
    if train_only is not None and "all" in train_only and list(train_only) != ["all"]:
        raise ValueError("train_only: 'all' names every network; give it alone, not with names")
    cfg = study.config
    store = Store(out)
    t_start = time.perf_counter()
    plan = study.plan(store)
    only = None if train_only is not None and list(train_only) == ["all"] else train_only
    got = train_all(store, plan.jobs, train=not interim, only=only, device=device)
    networks = {name: info for name, (_, info) in got.items()}
    missing = [job.name for job in plan.jobs if job.name not in got]
    if train_only is not None:
        return {"networks": networks, "missing": missing}
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "networks": networks,
        "missing": missing,
    }
    runs = [r for r in plan.runs if r.network is None or r.network in got]
    evaluations, curves, faucs, matches, ignored = _evaluate_runs(study, store, plan, runs, got)
    results["evaluations"] = evaluations
    if plan.seed_table:
        results["fauc_by_seed"] = _fauc_by_seed(faucs, cfg.seed)
        if ignored:
            results["fauc_by_seed_dups_ignored"] = _fauc_by_seed(ignored, cfg.seed)
    clusters = {run.key: plan.tests[run.group].clusters for run in runs}
    results["comparisons"] = _compare(plan.comparisons, matches, cfg, clusters)
    results["seconds_this_call"] = time.perf_counter() - t_start
    store.write_json(Path(out) / "results.json", results)
    atomic_write_text(study.markdown(results), Path(out) / "report.md")
    study.figures(curves, figure_maps(plan, runs, got), Path(out))
    return results


def _evaluate_runs(
    study: Study, store: Store, plan: Plan, runs: list[Run], got: dict[str, Trained]
) -> tuple[
    dict[str, Any], dict[RunKey, Any], dict[RunKey, float], dict[RunKey, Any], dict[RunKey, float]
]:
    """Detect and evaluate every run: records, FROC curves, FAUCs and matches by key, and
    (when the study's ``duplicates_ignored``) the FAUCs with duplicate hits ignored."""
    cfg = study.config
    dups_ignored = bool(getattr(cfg, "duplicates_ignored", False))
    ignored: dict[RunKey, float] = {}
    compared = {k for _, a, b in plan.comparisons for k in (a, b)}
    evaluations: dict[str, Any] = {g: {} for g in plan.tests if g}
    curves: dict[RunKey, Any] = {}
    faucs: dict[RunKey, float] = {}
    matches: dict[RunKey, Any] = {}
    for run in runs:
        test = plan.tests[run.group]
        net = got[run.network] if run.network is not None else None
        dets, seconds = study.detections(store, run, net)
        replicate = run.key.seed is not None
        report = evaluate(
            dets,
            test.targets,
            **test.match,
            max_fp=cfg.max_fp,
            n_bootstrap=0 if replicate else cfg.n_bootstrap,
            seed=cfg.seed,
        )
        faucs[run.key] = report.fauc.estimate
        log.info("%s: FAUC %.3f", run.name, report.fauc.estimate)
        if dups_ignored:
            kept = evaluate(
                dets,
                test.targets,
                **test.match,
                max_fp=cfg.max_fp,
                n_bootstrap=0,
                duplicates="ignore",
            )
            ignored[run.key] = kept.fauc.estimate
        if replicate:
            continue
        record = {**report.to_dict(), "detect_seconds": seconds, **study.record(run, dets)}
        if dups_ignored:
            record["fauc_dups_ignored"] = ignored[run.key]
        on = (
            None
            if test.object_at is None
            else [test.object_at(i, d.points) for i, d in enumerate(dets)]
        )
        if test.clusters is not None and cfg.n_bootstrap > 0:
            record["fauc_two_way"] = _two_way_fauc(report, test.clusters, on, cfg)
        budgets: tuple[float, ...] = getattr(cfg, "fauc_budgets", ())
        if budgets:
            record["fauc_at"] = _budget_faucs(report, budgets, cfg)
        (evaluations.setdefault(run.group, {}) if run.group else evaluations)[run.label] = record
        curves[run.key] = report.curve
        if run.key in compared:
            matches[run.key] = (report, on)  # the report keeps its matches
    return evaluations, curves, faucs, matches, ignored


def _fauc_by_seed(faucs: dict[RunKey, float], seed: int) -> dict[str, dict[str, float]]:
    """FAUC per label and training seed: the study's own seed and the replicates'."""
    out: dict[str, dict[str, float]] = {}
    replicated = {key.main() for key in faucs if key.seed is not None}
    for key, value in faucs.items():
        if not key.variant or key.main() in replicated:
            run_seed = seed if key.seed is None else key.seed
            out.setdefault(key.main().label, {})[str(run_seed)] = value
    return out


def _summary(r: Any) -> dict[str, Any]:
    """A bootstrap result as JSON values (its CI as a list), without the replicates."""
    out = {k: v for k, v in dataclasses.asdict(r).items() if k != "replicates"}
    if out.get("ci") is not None:
        out["ci"] = list(out["ci"])
    return out


def _budget_faucs(
    report: EvaluationReport, budgets: tuple[float, ...], cfg: StudyConfig
) -> dict[str, dict[str, float]]:
    """FAUC over 0–``b`` FP per image for each budget ``b``, with image-bootstrap sds: one
    event table and one set of replicates (those of the report's seed) for all budgets."""
    fns = [partial(fauc, max_fp=b) for b in budgets]
    if cfg.n_bootstrap == 0:
        sds = [float("nan")] * len(budgets)
        estimates = [float(fn(report.curve)) for fn in fns]
    else:
        s = report.settings
        table = EventTable(list(report.matches), None, s["compat"], s["sensitivity"])
        weights = bootstrap_weights(table.n_images, cfg.n_bootstrap, cfg.seed)
        boot = bootstrap_table(table, fns, weights, max_fp=max(budgets))
        estimates, sds = [r.estimate for r in boot], [r.sd for r in boot]
    keys = [f"{b:g}" for b in budgets]
    return {k: {"estimate": e, "sd": d} for k, e, d in zip(keys, estimates, sds, strict=True)}


def _two_way_fauc(
    report: EvaluationReport, clusters: Sequence[Any], on: Any, cfg: StudyConfig
) -> dict[str, Any]:
    """FAUC with its two-way bootstrap (images and objects; false positives on objects when
    ``on`` labels the detections), and the number of distinct target objects."""
    r = two_way_bootstrap(
        partial(fauc, max_fp=report.max_fp),
        report.matches,
        clusters,
        B=cfg.n_bootstrap,
        seed=cfg.seed,
        ci=0.95,
        fp_clusters=on,
    )
    counted = zip(report.matches, clusters, strict=True)
    objects = {int(c) for m, per in counted for c in np.asarray(per)[~m.gt_ignored]}
    return {**_summary(r), "n_objects": len(objects)}


def _compare(
    pairs: list[tuple[str, RunKey, RunKey]],
    evaluated: dict[RunKey, Any],
    cfg: StudyConfig,
    clusters: dict[RunKey, Sequence[Any] | None],
) -> dict[str, Any]:
    """Paired bootstrap FAUC differences of the pairs whose runs were both evaluated (with
    the reports' own matching and curve options), and their two-way versions where the test
    images reuse objects."""
    out: dict[str, Any] = {}
    for name, a, b in pairs:
        if a in evaluated and b in evaluated:
            (report_a, on_a), (report_b, on_b) = evaluated[a], evaluated[b]
            b_, seed = cfg.n_bootstrap, cfg.seed
            out[name] = _summary(paired_bootstrap(report_a, report_b, B=b_, seed=seed, ci=0.95))
            objects = clusters.get(a)
            if objects is not None and b_ > 0:
                two = two_way_paired_bootstrap(
                    partial(fauc, max_fp=report_a.max_fp),
                    report_a.matches,
                    report_b.matches,
                    objects,
                    B=b_,
                    seed=seed,
                    ci=0.95,
                    fp_clusters_a=on_a,
                    fp_clusters_b=on_b,
                )
                out[name]["two_way"] = _summary(two)
    return out


def figure_maps(plan: Plan, runs: list[Run], got: dict[str, Trained]) -> Maps:
    """The attention maps (negatives clipped) the figures show, each computed once."""
    by_key = {run.key: run for run in runs if run.network is not None}
    maps: Maps = {}
    for key, index in plan.figure_maps:
        run = by_key.get(key)
        if run is None or run.network is None:  # interim report: not trained yet
            continue
        x = plan.tests[run.group].images[index : index + 1]
        det = Detector(got[run.network][0], method=key.method, **run.options)
        maps[(key, index)] = det.attention(x)[0].clamp_min(0).float().cpu().numpy()
    return maps
