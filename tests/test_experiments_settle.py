"""The MNIST study on training digits, and the settled regression-vs-classification
protocol (``MNISTStudyConfig.settle``, ``mnist --settle``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("WSDET_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
needs_mnist = pytest.mark.skipif(
    not (MNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="MNIST test set not found"
)


@needs_mnist
def test_mnist_study_trains_on_training_digits_with_source_train5k(tmp_path):
    import wsdet.experiments.mnist as mn
    from wsdet.data.mnist import load_mnist
    from wsdet.experiments.common import Store

    if not (MNIST / "train5k-images-idx3-ubyte.gz").exists():
        pytest.skip("no train5k files")
    cfg = mn.MNISTStudyConfig.smoke(root=str(MNIST), source="train5k", methods=("gp_unet",))
    study = mn.MNISTStudy(cfg)
    plan = study.plan(Store(tmp_path))
    train_digits = {bytes(x) for x in load_mnist(MNIST, "train5k")[0]}
    sampler = plan.jobs[0].train
    assert {bytes(x) for x in sampler._digits} == train_digits  # the training pool
    # keyed by the training digits' content (md5 of images and labels), not the file name
    images, labels = load_mnist(MNIST, "train5k")
    digest = hashlib.md5(images.tobytes() + labels.tobytes()).hexdigest()
    assert study.data_key["root_files"] == f"mnist-test-10k+train5k-{digest[:12]}"
    with pytest.raises(ValueError, match="source"):
        mn.MNISTStudy(mn.MNISTStudyConfig.smoke(root=str(MNIST), source="train"))


@needs_mnist
def test_settle_plans_32_gp_unet_networks_in_two_regimes(tmp_path):
    import wsdet.experiments.mnist as mn
    from wsdet.experiments.common import Store

    if not (MNIST / "train5k-images-idx3-ubyte.gz").exists():
        pytest.skip("no train5k files")
    cfg = mn.MNISTStudyConfig.settle(root=str(MNIST), n_test=20, n_val=10)
    assert (cfg.max_epochs, cfg.patience, cfg.source) == (2000, 100, "train5k")
    plan = mn.MNISTStudy(cfg).plan(Store(tmp_path))
    names = [job.name for job in plan.jobs]
    assert len(names) == len(set(names)) == 32
    seeds = {job.config.seed for job in plan.jobs}
    assert seeds == {0, 100, 200, 300, 400, 500, 600, 700}
    paper = [job for job in plan.jobs if "paper400" in job.name]
    assert len(paper) == 16 and all(job.augment is not None for job in paper)
    assert all(job.spec["data"] == "fixed+augment" for job in paper)
    fresh = [job for job in plan.jobs if "paper400" not in job.name]
    assert all(job.augment is None and job.spec["data"] == "fresh" for job in fresh)
    # restarts move a seed by one: no two networks of a kind can meet on a seed
    assert all(job.max_restarts <= 2 for job in plan.jobs)
    labels = {run.label for run in plan.runs}
    assert "gp_unet-classification-paper400-seed700" in labels and len(labels) == 32


@pytest.mark.slow
@needs_mnist
def test_settle_smoke_reports_both_regimes_and_duplicates_ignored(tmp_path):
    import wsdet.experiments.mnist as mn

    if not (MNIST / "train5k-images-idx3-ubyte.gz").exists():
        pytest.skip("no train5k files")
    tiny = mn.MNISTStudyConfig.smoke().__dict__
    sizes = {k: tiny[k] for k in ("n_train", "n_val", "n_test", "max_epochs", "n_bootstrap")}
    cfg = mn.MNISTStudyConfig.settle(
        root=str(MNIST), replicate_seeds=(100,), patience=None, max_restarts=0, **sizes
    )
    results = mn.run_mnist(cfg, tmp_path)
    assert len(results["networks"]) == 8
    assert set(results["fauc_by_seed_dups_ignored"]) == set(results["fauc_by_seed"])
    assert "gp_unet-regression-paper400" in results["fauc_by_seed"]
    for key, by_seed in results["fauc_by_seed"].items():  # ignoring duplicates only helps
        for seed, value in by_seed.items():
            assert results["fauc_by_seed_dups_ignored"][key][seed] >= value - 1e-12
    report = (tmp_path / "report.md").read_text()
    assert "GP-Unet, the paper's 400 fixed grids + augmentation |" in report
    assert "duplicate hits ignored" in report
    assert "Training grids from the 5,000 MNIST training digits (train5k)" in report


def test_settle_and_source_arguments_are_checked(tmp_path):
    import wsdet.experiments.mnist as mn
    from wsdet.experiments.__main__ import main

    with pytest.raises(ValueError, match="replicate_paper400 needs faithful_gpunet"):
        mn.MNISTStudy(mn.MNISTStudyConfig(replicate_paper400=True, faithful_gpunet=False))
    for argv in (["--settle", "--smoke"], ["--settle", "--source", "test"]):
        with pytest.raises(SystemExit):
            main(["mnist", "--out", str(tmp_path), *argv])


def test_train_only_all_stands_alone(tmp_path):
    from wsdet.experiments.runner import run_study

    class _NoStudy:  # never reached: the argument is refused first
        config = None

    with pytest.raises(ValueError, match="'all' names every network"):
        run_study(_NoStudy(), tmp_path, train_only=["all", "gpunet-regression"])  # type: ignore[arg-type]


def test_missing_train5k_files_name_the_folder_and_no_download(tmp_path):
    from wsdet.data.mnist import find_mnist_files

    with pytest.raises(FileNotFoundError, match="on no download mirror") as err:
        find_mnist_files(tmp_path, "train5k")
    assert str(tmp_path) in str(err.value)
