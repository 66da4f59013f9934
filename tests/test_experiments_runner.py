"""The generic study runner, run keys, the model zoo, the detection-cache lock and the
per-seed table's true seeds: fast checks against hand-computed results."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsdet.detection import Detections
from wsdet.experiments.keys import RunKey


# ----------------------------------------------------------------------------- run keys
@pytest.mark.parametrize(
    ("key", "label"),
    [
        (RunKey("gp_unet", "regression"), "gp_unet-regression"),
        (RunKey("gp_unet", "classification", "paper400"), "gp_unet-classification-paper400"),
        (RunKey("grad_cam", "regression", seed=100), "grad_cam-regression-seed100"),
    ],
)
def test_run_key_labels_are_the_report_strings(key: RunKey, label: str) -> None:
    assert key.label == label
    assert RunKey.parse(label) == key
    assert key.main().label == "-".join(label.split("-")[:3]).replace("-seed100", "")


def test_run_key_names_its_network_and_refuses_bad_parts() -> None:
    key = RunKey("gp_unet", "regression", "paper400")
    assert key.network("gpunet") == "gpunet-regression-paper400"
    assert RunKey("grad", "classification", seed=7).network("basecnn") == (
        "basecnn-classification-seed7"
    )
    with pytest.raises(ValueError, match="objective must be one of"):
        RunKey("grad", "count")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not contain '-'"):
        RunKey("grad-cam", "regression")
    with pytest.raises(ValueError, match="not a run label"):
        RunKey.parse("grad-regression-a-b")


# ----------------------------------------------------------------------------- model zoo
def test_get_model_builds_each_architecture_and_lists_the_choices() -> None:
    from wsdet.experiments.common import build_model
    from wsdet.models import BaseCNN, GatedAttentionNet, GPUnet, GPUnetNoResidual, get_model

    expected = {
        "gpunet": GPUnet,
        "gpunet_no_residual": GPUnetNoResidual,
        "gated_attention": GatedAttentionNet,
        "basecnn": BaseCNN,
    }
    for name, cls in expected.items():
        torch.manual_seed(0)
        net = get_model(name, dim=2, width=4)
        torch.manual_seed(0)
        ref = cls(dim=2, width=4)
        assert type(net) is cls
        for a, b in zip(net.state_dict().values(), ref.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        assert type(build_model(name, 3, 4)) is cls  # the old name, a thin alias
    with pytest.raises(ValueError, match=r"name must be one of .*'gpunet_no_residual'.*'unet'"):
        get_model("unet", dim=2)


# ----------------------------------------------------------------------------- cache lock
def _dets(n: int) -> list[Detections]:
    return [Detections(np.array([[i, i]], np.int64), np.array([1.0]), 1.0, 1) for i in range(n)]


def test_detection_cache_is_computed_once_by_two_threads(tmp_path: Path) -> None:
    """Two callers at once: one computes (slowly), the other waits and loads its result."""
    from wsdet.experiments.detections import cached_detections

    path = tmp_path / "detections" / "m-abc.npz"
    calls: list[int] = []

    def compute() -> list[Detections]:
        calls.append(1)
        time.sleep(0.5)
        return _dets(3)

    got: list[tuple[list[Detections], float]] = []
    threads = [
        threading.Thread(target=lambda: got.append(cached_detections(path, compute)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(calls) == 1 and len(got) == 2
    for dets, seconds in got:
        assert [d.points.tolist() for d in dets] == [[[0, 0]], [[1, 1]], [[2, 2]]]
        assert seconds >= 0.5
    assert got[0][1] == pytest.approx(got[1][1])  # the waiter read the first one's time


def test_detection_cache_waits_for_the_holder_then_loads(tmp_path: Path) -> None:
    """An entry another process is computing is waited for, not computed again."""
    from wsdet.experiments.detections import cached_detections, save_detections
    from wsdet.experiments.store import FolderLock

    path = tmp_path / "m-abc.npz"
    other = FolderLock(path.with_suffix(".lock"))
    assert other.acquire(wait=False)
    calls: list[int] = []
    got: list[Any] = []
    worker = threading.Thread(
        target=lambda: got.append(cached_detections(path, lambda: calls.append(1) or _dets(1)))
    )
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive() and not got  # waiting for the lock
    save_detections(path, _dets(2), 7.0)  # the other process finishes ...
    other.release()  # ... and lets go
    worker.join(timeout=60)
    assert calls == [] and got[0][1] == 7.0 and len(got[0][0]) == 2


# ----------------------------------------------------------------------------- runner
@dataclass
class _Config:
    seed: int = 0
    max_fp: float = 2.0
    n_bootstrap: int = 20
    nms_size: int = 3
    eval_batch: int = 2


class _FakeStudy:
    """Two images with one target each; run "hit" finds both (FAUC 1), run "miss" finds
    none (FAUC 0) with one false positive per image; a replicate of "hit" misses."""

    def __init__(self, objects: bool = False) -> None:
        self._config = _Config()
        self.figure_calls: list[Any] = []
        self.objects = objects

    @property
    def config(self) -> _Config:
        return self._config

    def plan(self, store: Any) -> Any:
        from wsdet.experiments.runner import Plan, Run, TestSet

        targets = [np.array([[2.0, 2.0]]), np.array([[5.0, 5.0]])]
        # with objects: both targets show object 7; every detection lies on object 3
        clusters = [np.array([7]), np.array([7])] if self.objects else None

        def on(i: int, points: np.ndarray) -> np.ndarray:
            return np.full(len(points), 3)

        object_at = on if self.objects else None
        test = TestSet(torch.zeros(2, 1, 8, 8), targets, {"radius": 1.0}, None, clusters, object_at)
        keys = [RunKey("hit"), RunKey("miss"), RunKey("hit", seed=9)]
        runs = [Run(k, k.label, k.label, None, "g") for k in keys]
        a, b = keys[:2]
        return Plan(
            jobs=[],
            runs=runs,
            tests={"g": test, "empty": test},
            comparisons=[("hit vs miss", a, b), ("hit vs absent", a, RunKey("absent"))],
            seed_table=True,
        )

    def detections(self, store: Any, run: Any, net: Any) -> tuple[list[Detections], float]:
        hits = run.key.method == "hit" and run.key.seed is None
        pts = [[2, 2], [5, 5]] if hits else [[7, 0], [0, 7]]
        dets = [Detections(np.array([p], np.int64), np.array([0.9]), 1.0, 1) for p in pts]
        return dets, 0.25

    def record(self, run: Any, dets: list[Detections]) -> dict[str, Any]:
        return {"n_dets": len(dets)}

    def markdown(self, results: dict[str, Any]) -> str:
        return f"{sorted(results['evaluations']['g'])}\n"

    def figures(self, curves: Any, maps: Any, out: Path) -> None:
        self.figure_calls.append((sorted(k.label for k in curves), maps))


def test_run_study_evaluates_compares_and_reports(tmp_path: Path) -> None:
    from wsdet.experiments.runner import run_study

    study = _FakeStudy()
    results = run_study(study, tmp_path)
    ev = results["evaluations"]
    assert set(ev) == {"g", "empty"} and ev["empty"] == {}  # every group, nested
    assert set(ev["g"]) == {"hit-regression", "miss-regression"}  # no replicate
    assert ev["g"]["hit-regression"]["fauc"]["estimate"] == pytest.approx(1.0)
    assert ev["g"]["miss-regression"]["fauc"]["estimate"] == pytest.approx(0.0)
    assert ev["g"]["hit-regression"]["detect_seconds"] == 0.25
    assert ev["g"]["hit-regression"]["n_dets"] == 2
    # the replicate (seed 9) is kept only per seed, beside the study's own seed 0
    by_seed = results["fauc_by_seed"]
    assert by_seed == {"hit-regression": {"0": 1.0, "9": 0.0}, "miss-regression": {"0": 0.0}}
    assert list(results["comparisons"]) == ["hit vs miss"]  # "absent" was never evaluated
    assert results["comparisons"]["hit vs miss"]["difference"] == pytest.approx(1.0)
    assert (tmp_path / "report.md").read_text() == "['hit-regression', 'miss-regression']\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["evaluations"] == json.loads(json.dumps(ev))
    assert study.figure_calls == [(["hit-regression", "miss-regression"], {})]


def test_run_study_adds_the_two_way_bootstrap_when_objects_repeat(tmp_path: Path) -> None:
    from wsdet.experiments.runner import run_study

    results = run_study(_FakeStudy(objects=True), tmp_path)
    hit = results["evaluations"]["g"]["hit-regression"]
    two = hit["fauc_two_way"]
    assert two["estimate"] == hit["fauc"]["estimate"] == pytest.approx(1.0)
    assert two["n_objects"] == 1  # one distinct target object
    comparison = results["comparisons"]["hit vs miss"]
    assert comparison["two_way"]["difference"] == pytest.approx(1.0)
    assert set(comparison["two_way"]) >= {"sd", "ci", "p_value"}
    plain = run_study(_FakeStudy(), tmp_path / "plain")
    assert "fauc_two_way" not in plain["evaluations"]["g"]["hit-regression"]
    assert "two_way" not in plain["comparisons"]["hit vs miss"]


def test_fauc_by_seed_keys_the_replicates_by_their_seed() -> None:
    from wsdet.experiments.runner import _fauc_by_seed

    faucs = {
        RunKey("grad"): 0.5,
        RunKey("grad", seed=100): 0.25,
        RunKey("gp_unet", variant="paper400"): 0.9,  # not a seed-table run
    }
    assert _fauc_by_seed(faucs, seed=3) == {"grad-regression": {"3": 0.5, "100": 0.25}}


# ----------------------------------------------------------------------------- seed table
def test_seed_table_labels_restarted_runs_with_their_true_seeds() -> None:
    """A network restarted off the plateau shows the seed it was trained from (the
    training summary's last attempt), in the column of the seed that was asked for."""
    from wsdet.experiments.report import _seed_table

    def attempts(*seeds: int) -> dict[str, Any]:
        return {"attempts": [{"seed": s, "best_val_loss": 1.0} for s in seeds]}

    results = {
        "config": {"methods": ["gp_unet_no_residual", "gp_unet"], "seed": 0},
        "networks": {
            "gpunet_no_residual-regression": attempts(0, 1),  # restarted: seed 1
            "gpunet_no_residual-regression-seed100": attempts(100),
            "gpunet-classification-seed100": attempts(100, 101),  # restarted: seed 101
            "gpunet-classification": attempts(0),
        },
        "fauc_by_seed": {
            "gp_unet_no_residual-regression": {"0": 0.972, "100": 0.684, "200": 0.977},
            "gp_unet-classification": {"0": 0.924, "100": 0.904, "200": 0.865},
            "gp_unet_no_residual-classification": {"0": 0.950, "100": 0.938, "200": 0.929},
        },
    }
    rows = _seed_table(results)
    nr = next(r for r in rows if r.startswith("| GP-Unet no residual |"))
    # mean (97.2 + 68.4 + 97.7) / 3 = 87.77; sd sqrt((9.43² + 19.37² + 9.93²) / 2) = 16.77
    assert nr.startswith("| GP-Unet no residual | 97.2 (seed 1) / 68.4 / 97.7 | 87.8 ± 16.8 |")
    # seed-level test, by hand: differences +2.2, -25.4, +4.8 (x100): mean -6.13, sd 16.74,
    # t(0.975, 2) = 4.303: half-width 4.303 * 16.74 / sqrt(3) = 41.6; every sign flip gives
    # |mean| >= 18.4 / 3, so the permutation p is 1 (its floor with 3 seeds is 0.25)
    assert nr.endswith("| 2 of 3 | -6.1 (-47.7 to +35.4), p 1 (≥ 0.25) |"), nr
    gp = next(r for r in rows if r.startswith("| GP-Unet |"))
    # mean (92.4 + 90.4 + 86.5) / 3 = 89.77; sd sqrt((2.63² + 0.63² + 3.27²) / 2) = 3.00
    assert "| 92.4 / 90.4 (seed 101) / 86.5 | 89.8 ± 3.0 |" in gp
    assert rows[-1].startswith("(seed N): the network stayed on the plateau")
    # without restarts, no seed marks and no note
    for info in results["networks"].values():
        info["attempts"] = info["attempts"][:1]
    plain = _seed_table(results)
    assert not any("(seed" in r for r in plain)


def test_target_digits_are_the_pool_images_drawn_in_the_target_boxes() -> None:
    """Independent check: the pixels inside each target box are the pool digit named."""
    from wsdet.data.mnist import MNISTGrid
    from wsdet.experiments.mnist import target_digits

    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.array([4, 4, 4, 1, 2, 3, 5, 6, 7, 8, 9, 0])
    grids = MNISTGrid(pool, labels, target=4, n_images=20, rows=2, cols=3, seed=1)
    per_grid = target_digits(grids)
    assert sum(len(d) for d in per_grid) == int(grids.counts.sum()) > 0
    for i, digits in enumerate(per_grid):
        lo, hi = grids.boxes[i]
        assert len(digits) == len(lo)
        for d, a, b in zip(digits, lo, hi, strict=True):
            crop = grids.images[i, 0, a[0] : b[0], a[1] : b[1]].numpy()
            np.testing.assert_allclose(crop, pool[d] / 255.0, atol=1e-6)
            assert labels[d] == 4
    # only 3 distinct "4"s: the grids reuse them
    assert len({int(d) for digits in per_grid for d in digits}) <= 3


def test_digit_under_names_the_pool_digit_of_each_point() -> None:
    from wsdet.data.mnist import MNISTGrid
    from wsdet.experiments.mnist import digit_under

    rng = np.random.default_rng(2)
    pool = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    grids = MNISTGrid(pool, np.arange(10), target=4, n_images=3, rows=2, cols=3, seed=0)
    under = digit_under(grids)
    # a point in cell (1, 2) of grid 1, one at a cell's first pixel, one outside the grid
    pts = np.array([[28 + 13, 56 + 27], [0, 0], [56, 0]])
    got = under(1, pts)
    assert got.tolist() == [
        grids.cell_indices[1][1, 2],
        grids.cell_indices[1][0, 0],
        -1,
    ]
    # the pixels of the named digit are the ones drawn there
    crop = grids.images[1, 0, 28:56, 56:84].numpy()
    np.testing.assert_allclose(crop, pool[got[0]] / 255.0, atol=1e-6)


@dataclass
class _DupsConfig(_Config):
    duplicates_ignored: bool = True


class _DupsStudy(_FakeStudy):
    """Run "hit" puts a second, lower-scored candidate on the first image's target (a
    duplicate hit) above the second image's hit; its replicate (seed 9) has no duplicate."""

    def __init__(self) -> None:
        super().__init__()
        self._config = _DupsConfig()

    def detections(self, store: Any, run: Any, net: Any) -> tuple[list[Detections], float]:
        if run.key.method != "hit":
            return super().detections(store, run, net)
        first = [[2, 2], [2, 3]] if run.key.seed is None else [[2, 2]]
        scores = [0.9, 0.8][: len(first)]
        dets = [
            Detections(np.array(first, np.int64), np.array(scores), 1.0, len(first)),
            Detections(np.array([[5, 5]], np.int64), np.array([0.7]), 1.0, 1),
        ]
        return dets, 0.25


def test_run_study_adds_faucs_with_duplicates_ignored(tmp_path: Path) -> None:
    from wsdet.experiments.runner import run_study

    results = run_study(_DupsStudy(), tmp_path)
    hit = results["evaluations"]["g"]["hit-regression"]
    # counted as a false positive, the duplicate comes before the second hit (0.5 FP per
    # image at sensitivity 1/2): FAUC below 1; ignored, both hits come at 0 FP: FAUC 1
    assert hit["fauc"]["estimate"] < 0.99
    assert hit["fauc_dups_ignored"] == pytest.approx(1.0)
    ignored = results["fauc_by_seed_dups_ignored"]
    assert ignored["hit-regression"] == {"0": pytest.approx(1.0), "9": pytest.approx(1.0)}
    assert ignored["miss-regression"] == {"0": pytest.approx(0.0)}
    assert results["fauc_by_seed"]["hit-regression"]["9"] == pytest.approx(1.0)
    plain = run_study(_FakeStudy(), tmp_path / "plain")  # off by default
    assert "fauc_by_seed_dups_ignored" not in plain
    assert "fauc_dups_ignored" not in plain["evaluations"]["g"]["hit-regression"]


def test_seed_table_rows_for_the_paper400_replicates_and_duplicates_ignored() -> None:
    from wsdet.experiments.report import _seed_table

    results = {
        "config": {"methods": ["gp_unet"], "seed": 0},
        "networks": {},
        "fauc_by_seed": {
            "gp_unet-regression": {"0": 0.9, "100": 0.8},
            "gp_unet-classification": {"0": 0.7, "100": 0.75},
            "gp_unet-regression-paper400": {"0": 0.5, "100": 0.6},
            "gp_unet-classification-paper400": {"0": 0.4, "100": 0.3},
        },
        "fauc_by_seed_dups_ignored": {"gp_unet-regression": {"0": 0.95, "100": 0.85}},
    }
    rows = _seed_table(results)
    assert any(r.startswith("| GP-Unet | 90.0 / 80.0 | 85.0 ± 7.1 | 70.0 / 75.0 |") for r in rows)
    # differences +10 and +30 (x100): regression wins in 2 of 2 seeds
    paper = next(r for r in rows if r.startswith("| GP-Unet, the paper's 400 fixed grids"))
    assert "| 50.0 / 60.0 | 55.0 ± 7.1 | 40.0 / 30.0 | 35.0 ± 7.1 | 2 of 2 |" in paper
    ignored = _seed_table(results, "fauc_by_seed_dups_ignored")
    assert any("duplicate hits ignored" in r for r in ignored)
    assert any(r.startswith("| GP-Unet | 95.0 / 85.0 | 90.0 ± 7.1 | — / — |") for r in ignored)
    assert not any("paper's 400" in r for r in ignored)
    del results["fauc_by_seed"]["gp_unet-regression-paper400"]  # one objective is enough
    assert any("paper's 400" in r for r in _seed_table(results))
