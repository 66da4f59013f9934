"""The reproduction runner: the --smoke path end to end, and resumability."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("WSDET_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
needs_mnist = pytest.mark.skipif(
    not (MNIST / "t10k-images-idx3-ubyte.gz").exists(),
    reason=f"MNIST test set not found in {MNIST} (set WSDET_MNIST_DIR)",
)


def test_config_key_is_stable_and_sensitive():
    from wsdet.experiments import config_key

    a = config_key({"b": 1, "a": [1, 2.0]})
    assert a == config_key({"a": [1, 2.0], "b": 1})
    assert a != config_key({"a": [1, 2.5], "b": 1})
    assert len(a) == 12


@pytest.mark.slow
@needs_mnist
def test_mnist_smoke_resumes_without_retraining(tmp_path, monkeypatch):
    import wsdet.experiments.common as common
    import wsdet.experiments.mnist as mn

    cfg = mn.MNISTStudyConfig.smoke(
        root=str(MNIST),
        methods=("gp_unet", "grad_cam"),
        faithful_gpunet=False,
        n_test=12,
        n_bootstrap=20,
    )
    real = common.train_cached
    calls: list[str] = []

    def interrupted(store, name, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated interruption after the first network")
        out = real(store, name, *args, **kwargs)
        calls.append(name)
        return out

    # an interim report before anything has been trained: nothing trained, all missing
    empty = mn.run_mnist(cfg, tmp_path, interim=True)
    assert empty["evaluations"] == {} and empty["networks"] == {}
    assert len(empty["missing"]) == 4  # 2 architectures x 2 objectives
    assert not (tmp_path / "models").exists()
    assert "Interim report" in (tmp_path / "report.md").read_text()

    monkeypatch.setattr(common, "train_cached", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mn.run_mnist(cfg, tmp_path)
    assert len(calls) == 1
    first = calls[0]
    done = list((tmp_path / "models").glob(f"{first}-*/done.json"))
    assert len(done) == 1
    stamp = done[0].stat().st_mtime_ns
    best = done[0].parent / "best.pt"
    best_stamp = best.stat().st_mtime_ns

    monkeypatch.setattr(common, "train_cached", real)
    results = mn.run_mnist(cfg, tmp_path)
    nets = results["networks"]
    assert nets[first]["cached"] is True  # loaded, not retrained
    assert sum(not v["cached"] for v in nets.values()) == len(nets) - 1
    assert done[0].stat().st_mtime_ns == stamp and best.stat().st_mtime_ns == best_stamp
    # a rerun with nothing changed does no work
    again = mn.run_mnist(cfg, tmp_path)
    assert all(v["cached"] for v in again["networks"].values())
    assert (
        again["evaluations"] == json.loads((tmp_path / "results.json").read_text())["evaluations"]
    )
    report = (tmp_path / "report.md").read_text()
    assert "GP-Unet" in report and "Grad-CAM" in report
    for png in ("froc_regression.png", "fig3_methods.png", "fig4_regression_vs_classification.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.slow
@needs_mnist
def test_mnist_train_only_trains_part_of_the_study_and_stops(tmp_path):
    import wsdet.experiments.mnist as mn

    cfg = mn.MNISTStudyConfig.smoke(
        root=str(MNIST),
        methods=("grad", "gp_unet"),
        faithful_gpunet=False,
        n_test=12,
        objectives=("classification",),
        replicate_seeds=(7,),
    )
    names = ["basecnn-classification", "basecnn-classification-seed7"]
    got = mn.run_mnist(cfg, tmp_path, train_only=names, device="cpu")
    assert list(got["networks"]) == names
    assert got["networks"]["basecnn-classification"]["device"] == "cpu"
    assert got["networks"][names[1]]["attempts"][0]["seed"] == 7
    assert sorted(got["missing"]) == ["gpunet-classification", "gpunet-classification-seed7"]
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "detections").exists()
    with pytest.raises(ValueError, match="gpunet-regression-paper400"):
        mn.run_mnist(cfg, tmp_path, train_only=["gpunet-regression-paper400"])
    rest = mn.run_mnist(cfg, tmp_path, train_only=["all"])  # every network, then stop
    assert rest["missing"] == [] and len(rest["networks"]) == 4
    assert rest["networks"]["basecnn-classification"]["cached"] is True
    assert rest["networks"]["gpunet-classification"]["cached"] is False
    assert not (tmp_path / "report.md").exists()
    # the whole study: the replicate networks are evaluated too, per training seed
    full = mn.run_mnist(cfg, tmp_path)
    assert full["networks"]["basecnn-classification"]["cached"] is True
    by_seed = full["fauc_by_seed"]
    assert sorted(by_seed) == ["gp_unet-classification", "grad-classification"]
    assert all(sorted(v) == ["0", "7"] for v in by_seed.values())
    main = full["evaluations"]["grad-classification"]["fauc"]["estimate"]
    assert by_seed["grad-classification"]["0"] == main
    assert "trained from 2 seeds" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@needs_mnist
def test_cli_smoke(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsdet.experiments",
            "mnist",
            "--smoke",
            "--out",
            str(tmp_path),
            "--root",
            str(MNIST),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "### MNIST, target digit 4" in proc.stdout
    assert (tmp_path / "digit4" / "results.json").exists()


@pytest.mark.slow
def test_lesions3d_smoke_and_cache(tmp_path):
    from wsdet.experiments.lesions import LesionStudyConfig, run_lesions

    cfg = LesionStudyConfig.smoke(
        settings=("midbrain", "basal_ganglia"), methods=("gp_unet", "intensity", "grad_cam")
    )
    first = run_lesions(cfg, tmp_path)
    assert set(first["evaluations"]) == {"midbrain", "basal_ganglia"}
    for setting in first["evaluations"].values():
        for ev in setting.values():
            assert 0.0 <= ev["fauc"]["estimate"] <= 1.0
            assert ev["operating_point"] is not None
    # the slice setting is evaluated in 2D on the annotated slice
    assert first["evaluations"]["basal_ganglia"]["gp_unet"]["evaluated_ndim"] == 2
    # the second setting's networks are fine-tuned from the first setting's (paper §3.5)
    nets = first["networks"]
    for arch in ("gpunet", "basecnn"):
        folder = tmp_path / "models" / nets[f"basal_ganglia-{arch}"]["folder"]
        key = json.loads((folder / "config.json").read_text())
        assert key["init_from"] == nets[f"midbrain-{arch}"]["folder"]
        assert key["train"]["init"] is None
        assert "init_from" not in json.loads(
            (tmp_path / "models" / nets[f"midbrain-{arch}"]["folder"] / "config.json").read_text()
        )
    # the chance reference: evaluated like a method, with the training mean as its count
    for setting, ev in first["evaluations"].items():
        assert 0.0 <= ev["chance"]["fauc"]["estimate"] <= 1.0
        assert ev["chance"]["evaluated_ndim"] == (2 if setting == "basal_ganglia" else 3)
    assert "Chance (random map)" in (tmp_path / "report.md").read_text()
    again = run_lesions(cfg, tmp_path)
    assert all(v["cached"] for v in again["networks"].values())
    assert again["evaluations"] == first["evaluations"]
    assert (tmp_path / "froc_lesions3d.png").exists()
    assert (tmp_path / "slices_basal_ganglia.png").exists()
    assert again["missing"] == [] and "Interim" not in (tmp_path / "report.md").read_text()

    # interim report while one network is unfinished: it is neither trained nor reported
    unfinished = tmp_path / "models" / nets["basal_ganglia-gpunet"]["folder"]
    (unfinished / "done.json").rename(unfinished / "done.json.bak")
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "models").rglob("*")}
    part = run_lesions(cfg, tmp_path, interim=True)
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "models").rglob("*")} == before
    assert part["missing"] == ["basal_ganglia-gpunet"]
    assert "basal_ganglia-gpunet" not in part["networks"]
    assert part["evaluations"]["midbrain"] == first["evaluations"]["midbrain"]
    bg = part["evaluations"]["basal_ganglia"]
    assert set(bg) == {"intensity", "grad_cam", "chance"}
    assert all(bg[m] == first["evaluations"]["basal_ganglia"][m] for m in bg)
    assert not any(k.startswith("basal_ganglia") for k in part["comparisons"])
    report = (tmp_path / "report.md").read_text()
    assert "Interim report" in report and "basal_ganglia-gpunet" in report


def _tiny_jobs():
    import torch

    from wsdet.experiments import TrainJob
    from wsdet.train import TrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, max_epochs=2, batch_size=4, progress="none")
    return [
        TrainJob(name, {"arch": "basecnn", "dim": 2, "width": 2}, cfg, (x, y), (x[:4], y[:4]))
        for name in ("first", "second")
    ]


def test_train_all_leaves_a_network_locked_elsewhere_for_last(tmp_path):
    """Two processes on one study: a network another process holds is trained last (after
    that process lets it go), the others meanwhile; nothing is trained twice."""
    import threading
    import time

    from wsdet.experiments import Store, train_all, train_cached
    from wsdet.experiments.common import _TrainLock

    store = Store(tmp_path)
    jobs = _tiny_jobs()
    first = jobs[0]
    folder = store.entry(
        "models", first.name, {"spec": first.spec, "train": first.config.to_dict()}
    )
    other = _TrainLock(folder)  # "another process" holds the first network
    assert other.acquire(wait=False)
    skipped = train_cached(
        store, first.name, first.spec, first.config, first.train, first.val, wait=False
    )
    assert skipped is None and not (folder / "done.json").exists()

    order: list[str] = []
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(train_all(store, jobs, on_trained=order.append))
    )
    worker.start()
    deadline = time.monotonic() + 120
    while order != ["second"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert order == ["second"]  # the free network first, while "first" is held
    time.sleep(0.3)
    assert worker.is_alive() and not (folder / "done.json").exists()  # waiting for the lock
    other.release()
    worker.join(timeout=120)
    assert order == ["second", "first"]
    assert list(result) == ["first", "second"]  # in the order of the jobs
    assert all(not info["cached"] for _, info in result.values())
    again = train_all(store, jobs)
    assert all(info["cached"] for _, info in again.values())


def test_train_all_only_trains_the_named_networks(tmp_path):
    """``only``: the named networks are trained, finished others loaded, the rest left."""
    from wsdet.experiments import Store, train_all

    store = Store(tmp_path)
    jobs = _tiny_jobs()
    got = train_all(store, jobs, only=["second"])
    assert list(got) == ["second"] and got["second"][1]["cached"] is False
    assert not list((tmp_path / "models").glob("first-*"))  # not even a folder
    got = train_all(store, jobs, only=["first"])
    assert list(got) == ["first", "second"]
    assert got["first"][1]["cached"] is False and got["second"][1]["cached"] is True
    with pytest.raises(ValueError, match=r"only: unknown network\(s\) \['third'\]"):
        train_all(store, jobs, only=["first", "third"])
    with pytest.raises(TypeError, match="only must be a collection"):
        train_all(store, jobs, only="first")


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not __import__("torch").cuda.is_available(), reason="no CUDA device"
            ),
        ),
    ],
)
def test_train_cached_on_a_device_starts_from_the_cpu_weights(tmp_path, device):
    """Training elsewhere: same initial weights as on the CPU, model back on the CPU, the
    device recorded in the summary, and a second call loads it."""
    import dataclasses

    import torch

    from wsdet.experiments import Store, train_cached

    job = _tiny_jobs()[0]
    # lr must be > 0; 1e-12 moves no weight beyond assert_close's tolerance
    cfg = dataclasses.replace(job.config, init="kaiming_conv", max_epochs=1, lr=1e-12)
    ref = train_cached(Store(tmp_path / "ref"), job.name, job.spec, cfg, job.train, job.val)
    got = train_cached(
        Store(tmp_path / "dev"), job.name, job.spec, cfg, job.train, job.val, device=device
    )
    assert ref is not None and got is not None
    assert ref[1]["device"] == "cpu" and got[1]["device"].startswith(device)
    for (k, a), b in zip(ref[0].state_dict().items(), got[0].state_dict().values(), strict=True):
        assert b.device.type == "cpu", k
        torch.testing.assert_close(a, b, msg=k)  # lr ~0: the initial weights
    again = train_cached(Store(tmp_path / "dev"), job.name, job.spec, cfg, job.train, job.val)
    assert again is not None and again[1]["cached"] is True


def test_constant_val_loss_by_hand():
    import math

    import torch

    from wsdet.experiments.common import constant_val_loss

    y = torch.tensor([0.0, 1.0, 2.0, 5.0])  # mean 2: squares 4, 1, 0, 9
    assert constant_val_loss("regression", y) == pytest.approx(14 / 4)
    p = 3 / 4  # three of four images hold the target
    expected = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert constant_val_loss("classification", y) == pytest.approx(expected)
    assert constant_val_loss("classification", torch.zeros(3)) == 0.0


def test_train_all_restarts_a_run_stuck_on_the_plateau(tmp_path, monkeypatch):
    """A run no better than 0.9x the constant prediction is trained again with the next
    seed, up to max_restarts; a run that learned is kept."""
    import dataclasses

    import torch

    import wsdet.experiments.common as common
    from wsdet.experiments import Store, train_all

    jobs = [dataclasses.replace(j, max_restarts=2) for j in _tiny_jobs()]
    plateau = common.constant_val_loss("regression", jobs[0].val[1])
    losses = {("first", 0): plateau, ("first", 1): 0.95 * plateau, ("first", 2): 0.1}
    losses[("second", 0)] = 0.5 * plateau
    seen: list[tuple[str, int]] = []

    def fake(store, name, spec, config, *args, **kwargs):
        seen.append((name, config.seed))
        info = {"best_val_loss": losses[(name, config.seed)], "folder": f"{name}-{config.seed}"}
        return torch.nn.Linear(1, 1), info

    monkeypatch.setattr(common, "train_cached", fake)
    got = train_all(Store(tmp_path), jobs)
    assert seen == [("first", 0), ("first", 1), ("first", 2), ("second", 0)]
    first, second = got["first"][1], got["second"][1]
    assert [a["seed"] for a in first["attempts"]] == [0, 1, 2] and first["stuck"] is False
    assert first["constant_val_loss"] == pytest.approx(plateau)
    assert [a["seed"] for a in second["attempts"]] == [0] and second["stuck"] is False
    # out of restarts: the last run is kept, marked stuck
    losses[("first", 2)] = plateau
    seen.clear()
    got = train_all(Store(tmp_path), jobs, only=["first"])
    assert got["first"][1]["stuck"] is True and len(got["first"][1]["attempts"]) == 3
    from wsdet.experiments.report import _training_table

    rows = _training_table(
        {
            "first": {
                **got["first"][1],
                "epochs": 3,
                "best_epoch": 1,
                "stop_reason": "patience",
                "train_seconds": 60.0,
            }
        }
    )
    assert "stuck" in rows[2] and "| 2 |" in rows[2]
    assert sum(r.startswith("- first, seed ") for r in rows) == 2


def test_train_cached_builds_reproducible_networks(tmp_path):
    """Parameters an init scheme keeps come from the config's seed, not the global RNG."""
    import dataclasses

    import torch

    from wsdet.experiments import Store, train_cached

    job = _tiny_jobs()[0]
    cfg = dataclasses.replace(job.config, init="kaiming_conv", max_epochs=1)
    models = []
    for i in range(2):
        torch.manual_seed(100 + i)  # different global state each time
        got = train_cached(Store(tmp_path / str(i)), job.name, job.spec, cfg, job.train, job.val)
        assert got is not None
        models.append(got[0])
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_chance_detections_are_random_peaks_inside_the_region():
    import torch

    from wsdet.data.synthetic import make_lesion_volumes
    from wsdet.detection import find_peaks
    from wsdet.experiments.lesions import LesionStudyConfig, _chance_detections

    test = make_lesion_volumes(3, (16, 32, 32), mean_count=2.0, seed=5)
    cfg = LesionStudyConfig.smoke()
    dets = _chance_detections(test, cfg, "midbrain", 2.5)
    again = _chance_detections(test, cfg, "midbrain", 2.5)
    for i, d in enumerate(dets):
        assert d.count == 2.5 and len(d) > 0
        np.testing.assert_array_equal(d.points, again[i].points)  # seeded
        inside = test.mask[i][tuple(torch.as_tensor(d.points).T)]
        assert bool(inside.all())  # every candidate lies in the region
        # the same peaks as NMS on the noise itself: many well-spread candidates
        assert np.all(np.diff(d.scores) <= 0)
        pts, _ = find_peaks(torch.rand(16, 32, 32), size=cfg.nms_size)
        assert len(d) < len(pts)  # masked: fewer than on a full volume of noise
    assert not np.array_equal(dets[0].points, dets[1].points)


def test_train_all_starts_a_finetuned_network_after_its_source(tmp_path):
    """A job fine-tuned from another network is deferred until that network has finished,
    also when another process holds the source; then it starts from the source's weights."""
    import dataclasses
    import threading
    import time

    from wsdet.experiments import Store, TrainJob, train_all
    from wsdet.experiments.common import _TrainLock, model_folder

    store = Store(tmp_path)
    first, second = _tiny_jobs()
    source = model_folder(store, first.name, first.spec, first.config)
    ft = TrainJob(
        "finetuned",
        first.spec,
        dataclasses.replace(first.config, max_epochs=1),
        first.train,
        first.val,
        init_from=source / "best.pt",
    )
    other = _TrainLock(source)
    assert other.acquire(wait=False)
    order: list[str] = []
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(train_all(store, [first, ft, second], on_trained=order.append))
    )
    worker.start()
    deadline = time.monotonic() + 120
    while order != ["second"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert order == ["second"]  # "finetuned" did not start before its source
    other.release()
    worker.join(timeout=120)
    assert order == ["second", "first", "finetuned"]
    folder = model_folder(store, ft.name, ft.spec, ft.config, ft.init_from)
    assert json.loads((folder / "config.json").read_text())["init_from"] == source.name
    # fine-tuning started from the source: after 2 Adam steps of lr 1e-3 every convolution
    # weight is within a few 1e-3 of the source's (a fresh network differs by ~0.1)
    src = result["first"][0].state_dict()
    tuned = result["finetuned"][0].state_dict()
    convs = [k for k, v in src.items() if v.ndim >= 4]
    assert convs
    assert max(float((tuned[k] - src[k]).abs().max()) for k in convs) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["midbrain", "hippocampi", "basal_ganglia"])
def test_default_lesion_study_data_can_be_generated(setting):
    """The full study's phantoms exist for every setting (lesions and distractors must fit
    in the volumes: a crowded setting fails to generate rather than miscounting)."""
    from wsdet.experiments.lesions import SETTINGS, LesionStudyConfig, _data

    cfg = LesionStudyConfig()
    train, val, test = _data(cfg, setting)
    assert (len(train), len(val), len(test)) == (cfg.n_train, cfg.n_val, cfg.n_test)
    assert tuple(train.images.shape[2:]) == cfg.shape_of(setting)
    if SETTINGS[setting]["annotation"] == "slice":
        assert test.slice_counts is not None and float(train.counts.sum()) > 0
    else:
        assert abs(float(train.counts.float().mean()) - cfg.mean_count) < 0.5


def test_seed_table_from_hand_made_results():
    from wsdet.experiments.report import _seed_table

    results = {
        "config": {"methods": ["gp_unet", "grad"]},
        "fauc_by_seed": {
            "gp_unet-regression": {"0": 0.9, "100": 0.8, "200": 0.7},
            "gp_unet-classification": {"0": 0.95, "100": 0.5, "200": 0.6},
            "grad-regression": {"0": 0.3},
        },
    }
    rows = _seed_table(results)
    gp = next(r for r in rows if r.startswith("| GP-Unet |"))
    # mean 80.0, sample sd 10.0; classification mean 68.3, sd sqrt(((26.7)^2+...)/2)
    assert "| 90.0 / 80.0 / 70.0 | 80.0 ± 10.0 | 95.0 / 50.0 / 60.0 | 68.3 ± 23.6 |" in gp
    # regression - classification: -5, +30, +10: mean +11.7, sd 17.6, t(0.975, 2) = 4.303,
    # half-width 43.6; sign flips reaching |sum| >= 35: (35, 45) and their negations: p 4/8
    assert gp.endswith("| 2 of 3 | +11.7 (-32.0 to +55.3), p 0.5 (≥ 0.25) |")
    grad = next(r for r in rows if r.startswith("| Grad |"))
    assert grad == "| Grad | 30.0 / — / — | — | — / — / — | — | — | — |"
    assert (
        _seed_table(
            {"config": {"methods": ["grad"]}, "fauc_by_seed": {"grad-regression": {"0": 0.3}}}
        )
        == []
    )


def test_lesions_markdown_rows_from_hand_made_results():
    from wsdet.experiments.report import lesions_markdown

    b = {"estimate": 0.9461, "sd": 0.012}
    op = {"fp_avg": {"estimate": 0.05}, "sensitivity": {"estimate": 0.929}}
    ev = {"fauc": b, "operating_point": op, "n_detections": 391, "n_images": 100}
    ev |= {"n_tp": 386, "n_targets": 408}
    results = {
        "config": {"methods": ["gp_unet", "grad_cam"]},
        "evaluations": {"midbrain": {"gp_unet": ev}},
        "networks": {},
        "missing": ["midbrain-basecnn"],
    }
    md = lesions_markdown(results)
    assert "**Interim report**: 1 network(s) still to train (midbrain-basecnn)" in md
    assert "| midbrain FAUC | 94.6 ± 1.2 | — |" in md
    assert "| midbrain FP/volume | 0.05 | — |" in md
    assert "| midbrain sensitivity | 0.929 | — |" in md
    assert "| midbrain candidates/volume | 3.9 | — |" in md  # 391 / 100
    assert "| midbrain sensitivity, all candidates | 0.946 | — |" in md  # 386 / 408
