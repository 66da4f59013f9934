"""The 3D study on the v2 phantoms: separate data and initialisation seeds, per-setting
geometry, failed networks marked, FAUC at several budgets, the seed-level table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsdet.experiments.lesions import LesionStudy, LesionStudyConfig, _data, run_lesions
from wsdet.experiments.report import lesions_markdown


def test_v1_data_keys_are_unchanged() -> None:
    """The cache keys of the v1 study, written out: caches of earlier runs stay valid."""
    study = LesionStudy(LesionStudyConfig())
    assert study._data_key("hippocampi") == {
        "study": "lesions3d",
        "setting": "hippocampi",
        "shape": [24, 48, 48],
        "mean_count": 4.0,
        "n_train": 240,
        "n_val": 48,
        "seed": 0,
        "distractors": "csf+blobs",
        "annotation": "volume",
    }


def test_v2_geometry_matching_and_nms() -> None:
    cfg = LesionStudyConfig.v2()
    assert cfg.shape_of("midbrain") == (11, 88, 88)
    assert cfg.spacing_of("midbrain") == (3.0, 0.5, 0.5)
    # the paper's 6 voxels in-plane = 3 mm, over all axes; NMS 3 slices x 6 x 6
    assert cfg.match_of("midbrain") == {"radius_mm": 3.0, "spacing": (3.0, 0.5, 0.5)}
    assert cfg.nms_size_of("midbrain") == (3, 6, 6)
    # one annotated slice: matched in-plane
    assert cfg.slice_mode("basal_ganglia") and not cfg.slice_mode("hippocampi")
    assert cfg.match_of("basal_ganglia") == {"radius_mm": 3.0, "spacing": (0.5, 0.5)}
    assert cfg.init_seeds == (100, 200) and cfg.log_baseline and cfg.zscore
    assert cfg.finetune and cfg.scratch == ("basal_ganglia",)
    assert (cfg.max_epochs, cfg.patience, cfg.finetune_epochs) == (20, 10, 20)
    with pytest.raises(ValueError, match="unknown setting"):
        LesionStudyConfig.v2(settings=("thalamus",))
    with pytest.raises(ValueError, match="phantoms"):
        LesionStudyConfig(phantoms="v3")  # type: ignore[arg-type]


def test_v2_fine_tunes_the_hippocampi_networks_and_not_the_basal_ganglia(tmp_path: Path) -> None:
    from wsdet.experiments.common import Store

    cfg = LesionStudyConfig.v2(n_train=2, n_val=1, n_test=1, init_seeds=(100,))
    jobs = {job.name: job for job in LesionStudy(cfg).plan(Store(tmp_path)).jobs}
    assert len(jobs) == 3 * 4 * 2
    for name, job in jobs.items():
        setting = name.split("-")[0]
        if setting == "hippocampi":  # from the midbrain network of the same arch and seed
            assert job.source == name.replace("hippocampi", "midbrain", 1)
            assert job.config.init is None and job.config.max_epochs == cfg.finetune_epochs
            assert job.max_restarts == 0  # a restart would start from the same source
        else:
            assert job.source is None and job.config.init == cfg.init
            assert job.max_restarts == cfg.max_restarts == 1
        assert job.init_from is None  # resolved by train_all once the source has finished
    with pytest.raises(ValueError, match="scratch: unknown setting"):
        LesionStudyConfig.v2(scratch=("thalamus",))
    with pytest.raises(TypeError, match="scratch must be a tuple"):
        LesionStudyConfig.v2(scratch="basal_ganglia")  # type: ignore[arg-type]


def test_scratch_epochs_and_patience_apply_to_the_scratch_setting_only(tmp_path: Path) -> None:
    from wsdet.experiments.common import Store, config_key

    # the first v2 runs' caps, which the basal-ganglia-like networks outgrew
    small = {"n_train": 2, "n_val": 1, "n_test": 1, "init_seeds": ()}
    small |= {"max_epochs": 10, "patience": 5, "finetune_epochs": 6}
    plain = {
        j.name: j for j in LesionStudy(LesionStudyConfig.v2(**small)).plan(Store(tmp_path)).jobs
    }
    cfg = LesionStudyConfig.v2(scratch_epochs=20, scratch_patience=10, **small)
    longer = {j.name: j for j in LesionStudy(cfg).plan(Store(tmp_path)).jobs}
    assert plain.keys() == longer.keys()
    for name, job in longer.items():
        before = plain[name]
        if name.startswith("basal_ganglia"):
            assert (job.config.max_epochs, job.config.patience) == (20, 10)
            assert (before.config.max_epochs, before.config.patience) == (10, 5)
            assert config_key(job.config) != config_key(before.config)  # new networks
        else:  # the midbrain-like (first) and the fine-tuned hippocampi-like: as before
            assert job.config == before.config
    with pytest.raises(ValueError, match="scratch_epochs must be >= 1"):
        LesionStudyConfig.v2(scratch_epochs=0)
    with pytest.raises(TypeError, match="scratch_patience must be an int"):
        LesionStudyConfig.v2(scratch_patience=2.5)


def test_zscore_standardises_every_volume_inside_its_region() -> None:
    small = {"n_train": 2, "n_val": 1, "n_test": 2, "settings": ("midbrain",)}
    raw = _data(LesionStudyConfig.v2(zscore=False, **small), "midbrain")
    z = _data(LesionStudyConfig.v2(zscore_stats="volume", **small), "midbrain")
    for a, b in zip(raw, z, strict=True):
        assert torch.equal(b.images, a.zscored().images)
        inside = b.images[:, 0][b.mask]
        assert abs(float(inside.mean())) < 0.05 and abs(float(inside.std()) - 1.0) < 0.05
    key = LesionStudy(LesionStudyConfig.v2(zscore_stats="volume", **small))._data_key("midbrain")
    assert key["zscore"] is True and "zscore_stats" not in key  # the first v2 runs' keys
    assert "zscore" not in LesionStudy(LesionStudyConfig.v2(zscore=False, **small))._data_key(
        "midbrain"
    )


def test_v2_zscores_every_split_with_the_training_volumes_statistics() -> None:
    small = {"n_train": 3, "n_val": 2, "n_test": 2, "settings": ("midbrain",)}
    cfg = LesionStudyConfig.v2(**small)
    assert cfg.zscore and cfg.zscore_stats == "train"
    raw = _data(LesionStudyConfig.v2(zscore=False, **small), "midbrain")
    z = _data(cfg, "midbrain")
    stats = raw[0].region_stats()  # the training volumes', for validation and test too
    for a, b in zip(raw, z, strict=True):
        assert torch.equal(b.images, a.zscored(stats).images)
    key = LesionStudy(cfg)._data_key("midbrain")
    assert key["zscore"] is True and key["zscore_stats"] == "train"
    with pytest.raises(ValueError, match="zscore_stats"):
        LesionStudyConfig.v2(zscore_stats="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zscore_stats='train' needs zscore=True"):
        LesionStudyConfig(zscore_stats="train")  # v1: no z-scoring
    assert LesionStudyConfig.v2(zscore=False).zscore_stats == "volume"  # nothing to choose


def test_data_seed_is_separate_from_the_initialisation_seed() -> None:
    small = {"n_train": 2, "n_val": 1, "n_test": 1, "settings": ("midbrain",)}
    a = _data(LesionStudyConfig.v2(seed=0, data_seed=7, **small), "midbrain")
    b = _data(LesionStudyConfig.v2(seed=5, data_seed=7, **small), "midbrain")
    c = _data(LesionStudyConfig.v2(seed=0, data_seed=8, **small), "midbrain")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images)
    assert not torch.equal(a[0].images, c[0].images)
    # training, validation and test volumes differ (three data seeds)
    assert not torch.equal(a[0].images[:1], a[2].images)


def _ev(fauc: float, **extra: Any) -> dict[str, Any]:
    counts = {"n_images": 10, "n_detections": 50, "n_tp": 8, "n_targets": 10}
    return {"fauc": {"estimate": fauc, "sd": 0.01}, **counts, **extra}


def _net(stuck: bool) -> dict[str, Any]:
    loss = {"best_val_loss": 1.9 if stuck else 1.0, "constant_val_loss": 2.0, "stuck": stuck}
    return {"epochs": 3, "best_epoch": 2, "stop_reason": "patience", **loss}


def test_report_marks_failed_networks_and_tests_across_seeds() -> None:
    results = {
        "config": {"methods": ["gp_unet", "grad_cam"], "seed": 0, "max_fp": 15.0},
        "evaluations": {
            "midbrain": {
                "gp_unet": _ev(0.8, fauc_at={"1": {"estimate": 0.5, "sd": 0.02}}, count_mae=1.25),
                "grad_cam": _ev(0.6, count_mae=2.0),
                "log": _ev(0.7, log_sigma_mm=1.25),
            }
        },
        "networks": {
            "midbrain-gpunet": _net(False),
            "midbrain-basecnn": _net(False),
            "midbrain-gpunet-seed100": _net(False),
            "midbrain-basecnn-seed100": _net(True),  # failed: left out
            "midbrain-gpunet-seed200": _net(False),
            "midbrain-basecnn-seed200": _net(False),
        },
        "fauc_by_seed": {
            "gp_unet-regression-midbrain": {"0": 0.8, "100": 0.7, "200": 0.9},
            "grad_cam-regression-midbrain": {"0": 0.6, "100": 0.1, "200": 0.5},
        },
        "missing": [],
    }
    md = lesions_markdown(results)
    assert "| midbrain FAUC | 80.0 ± 1.0 | 60.0 ± 1.0 | 70.0 ± 1.0 |" in md
    assert "| midbrain FAUC 0–1 | 50.0 ± 2.0 | — | — |" in md
    assert "| midbrain count MAE | 1.25 | 2.00 | — |" in md
    assert "LoG (training-free)" in md and "σ chosen by FAUC on the validation volumes" in md
    # grad_cam's seed-100 network failed: excluded; seeds 0 and 200 remain:
    # differences 0.8 - 0.6 = 20.0 and 0.9 - 0.5 = 40.0 (x100): mean +30.0, both signs
    # flipped or not: |mean| in {30, 10, 10, 30}: p = 2/4 (its floor with 2 seeds)
    row = next(r for r in md.splitlines() if r.startswith("| midbrain | Grad-CAM |"))
    assert row.startswith("| midbrain | Grad-CAM | 60.0 / 10.0 † / 50.0 | 55.0 ± 7.1 | +30.0 (")
    assert row.endswith("p 0.5 (≥ 0.5) |")
    assert "trained again" not in md  # no restarts yet
    # a restarted network's column names the seed its reported network was trained from
    results["networks"]["midbrain-gpunet-seed200"]["attempts"] = [
        {"seed": 200, "best_val_loss": 1.95},
        {"seed": 201, "best_val_loss": 1.0},
    ]
    md = lesions_markdown(results)
    row = next(r for r in md.splitlines() if r.startswith("| midbrain | GP-Unet |"))
    assert "| 80.0 / 70.0 / 90.0 (seed 201) | 80.0 ± 10.0 |" in row
    assert "the column reports the network trained from seed k" in md
    # the main table marks failed networks with a dagger only for the study's own seed
    results["networks"]["midbrain-basecnn"]["stuck"] = True
    results["config"]["methods"].append("intensity")
    results["evaluations"]["midbrain"]["intensity"] = _ev(0.5)
    md = lesions_markdown(results)
    # the intensity map needs no network: its FAUC stays ranked when the base CNN failed
    assert "| midbrain FAUC | 80.0 ± 1.0 | 60.0 ± 1.0 † | 50.0 ± 1.0 | 70.0 ± 1.0 |" in md
    # ... and a restarted base CNN does not relabel the intensity's seeds
    results["networks"]["midbrain-basecnn-seed100"]["attempts"] = [
        {"seed": 100, "best_val_loss": 1.95},
        {"seed": 101, "best_val_loss": 1.9},
    ]
    results["fauc_by_seed"]["intensity-regression-midbrain"] = {"0": 0.5, "100": 0.5, "200": 0.5}
    md = lesions_markdown(results)
    intensity = next(r for r in md.splitlines() if r.startswith("| midbrain | Intensities |"))
    assert "| 50.0 / 50.0 / 50.0 | 50.0 ± 0.0 |" in intensity
    grad_cam = next(r for r in md.splitlines() if r.startswith("| midbrain | Grad-CAM |"))
    assert "10.0 (seed 101) †" in grad_cam
    assert "left out of any ranking" in md


def test_report_states_normalisation_and_training_caps() -> None:
    cfg = dataclasses.asdict(LesionStudyConfig.v2())
    results: dict[str, Any] = {
        "config": cfg,
        "evaluations": {"midbrain": {"gp_unet": _ev(0.8)}},
        "networks": {},
        "missing": [],
    }
    first = lesions_markdown(results).splitlines()[0]
    assert first.startswith("Protocol: phantoms v2, data seed 1000, ")
    assert "training volumes' pooled mean and sd (0 outside)" in first
    assert "at most 20 epochs, patience 10, up to 1 restart(s)" in first
    assert "trained from scratch instead: basal_ganglia (at most 20 epochs, patience 10)" in first
    cfg.update(zscore_stats="volume", max_epochs=10, patience=5, finetune_epochs=6)
    first = lesions_markdown(results).splitlines()[0]
    assert "each volume z-scored inside the region with its own mean and sd" in first
    assert "at most 10 epochs, patience 5" in first and "at most 6 epochs, no restart" in first
    cfg.update(zscore=False)
    assert "inputs raw intensities;" in lesions_markdown(results).splitlines()[0]


@pytest.mark.slow
def test_v2_smoke_study_end_to_end(tmp_path: Path) -> None:
    cfg = LesionStudyConfig.v2(smoke=True, settings=("midbrain", "basal_ganglia"))
    results = run_lesions(cfg, tmp_path)
    ev = results["evaluations"]
    for setting in ("midbrain", "basal_ganglia"):
        assert {"log", "chance", "gp_unet"} <= set(ev[setting])
        assert set(ev[setting]["gp_unet"]["fauc_at"]) == {"1", "2"}
        assert ev[setting]["log"]["log_sigma_mm"] in cfg.log_sigmas_mm
        assert np.isfinite(ev[setting]["gp_unet"]["count_mae"])
    assert ev["basal_ganglia"]["gp_unet"]["evaluated_ndim"] == 2
    # every network of both seeds, and the replicate FAUCs per seed
    assert "midbrain-gpunet-seed100" in results["networks"]
    assert set(results["fauc_by_seed"]["gp_unet-regression-midbrain"]) == {"0", "100"}
    report = (tmp_path / "report.md").read_text()
    assert "initialisation seeds (0, 100; same data)" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["phantoms"] == "v2" and saved["config"]["data_seed"] == 1000


def test_detect_all_keeps_candidates_inside_the_region_masks() -> None:
    from scipy import ndimage

    from wsdet.detector import Detector
    from wsdet.experiments.detections import detect_all
    from wsdet.models import GPUnet

    torch.manual_seed(0)
    model = GPUnet(dim=3, width=2).eval()
    x = torch.randn(3, 1, 6, 12, 12)
    full = torch.ones(3, 6, 12, 12, dtype=torch.bool)
    plain = detect_all(model, "gp_unet", x, batch_size=2, size=3)
    same = detect_all(model, "gp_unet", x, batch_size=2, size=3, masks=full)
    for a, b in zip(plain, same, strict=True):  # an all-true mask changes nothing
        assert np.array_equal(a.points, b.points) and np.allclose(a.scores, b.scores)
        assert a.count == pytest.approx(b.count)
    region = full.clone()
    region[:, :, :, 6:] = False  # the right half is outside
    inside = detect_all(model, "gp_unet", x, batch_size=2, size=3, masks=region)
    assert all(len(d.points) and (d.points[:, 2] < 6).all() for d in inside)
    # independent: the masked map's maxima, brute force over 3x3x3 windows (clipped)
    model_maps, _ = Detector(model, method="gp_unet").attention_and_count(x)
    maps = (model_maps.clamp_min(0) * region).numpy()
    for k, d in enumerate(inside):
        peak = (ndimage.maximum_filter(maps[k], size=3, mode="constant") == maps[k]) & (maps[k] > 0)
        assert {tuple(p) for p in d.points} == {tuple(p) for p in np.argwhere(peak)}
    assert LesionStudyConfig.v2().mask_maps and not LesionStudyConfig().mask_maps


def test_cli_passes_scratch_epochs_and_patience(tmp_path: Path, monkeypatch: Any) -> None:
    import wsdet.experiments.lesions as les
    from wsdet.experiments.__main__ import main

    seen: list[LesionStudyConfig] = []

    def fake_run(cfg: LesionStudyConfig, out: str, **kw: Any) -> dict[str, Any]:
        seen.append(cfg)
        return {"networks": [], "missing": []}

    monkeypatch.setattr(les, "run_lesions", fake_run)
    argv = ["lesions3d", "--out", str(tmp_path), "--v2", "--train-only", "all"]
    assert main([*argv, "--scratch-epochs", "30", "--scratch-patience", "12"]) == 0
    assert main(argv) == 0
    assert (seen[0].scratch_epochs, seen[0].scratch_patience) == (30, 12)
    assert (seen[1].scratch_epochs, seen[1].scratch_patience) == (None, None)
    assert seen[0].max_epochs == seen[1].max_epochs == 20  # the others' cap is unchanged
    first = ["--max-epochs", "10", "--patience", "5", "--finetune-epochs", "6"]
    assert main([*argv, *first]) == 0
    assert (seen[2].max_epochs, seen[2].patience, seen[2].finetune_epochs) == (10, 5, 6)
    assert (seen[1].max_epochs, seen[1].patience, seen[1].finetune_epochs) == (20, 10, 20)
    assert main([*argv, "--zscore-stats", "volume"]) == 0
    assert seen[3].zscore_stats == "volume" and seen[1].zscore_stats == "train"


FIRST_V2 = {"zscore_stats": "volume", "max_epochs": 10, "patience": 5, "finetune_epochs": 6}


def test_uniform_epochs_give_every_network_the_cap_and_reuse_the_scratch_ones(
    tmp_path: Path,
) -> None:
    from wsdet.experiments.common import Store, model_folder

    small = {"n_train": 2, "n_val": 1, "n_test": 1, "init_seeds": ()}
    store = Store(tmp_path)

    def folders(**kw: Any) -> dict[str, tuple[Any, str]]:
        plan = LesionStudy(LesionStudyConfig.v2(**small, **kw)).plan(store)
        return {
            j.name: (j.config, model_folder(store, j.name, j.spec, j.config, j.init_from).name)
            for j in plan.jobs
        }

    # the first v2 protocol with the scratch flags (how the 20-epoch basal run was made)
    scratch_only = folders(**FIRST_V2, scratch_epochs=20, scratch_patience=10)
    uniform = folders(zscore_stats="volume", max_epochs=20, patience=10, finetune_epochs=20)
    for name, (config, folder) in uniform.items():
        assert (config.max_epochs, config.patience) == (20, 10), name
        if name.startswith("basal_ganglia"):  # the same cache folders
            assert folder == scratch_only[name][1]
        else:  # the first protocol's midbrain- and hippocampi-like networks are others
            assert folder != scratch_only[name][1]
    today = folders()  # the v2 defaults: these caps, but shared z-score statistics
    assert {n: c for n, (c, _) in today.items()} == {n: c for n, (c, _) in uniform.items()}
    assert not {f for _, f in today.values()} & {f for _, f in uniform.values()}
    for field_name, bad in (("max_epochs", 0), ("finetune_epochs", -1), ("patience", 0)):
        with pytest.raises(ValueError, match=f"{field_name} must be >= 1"):
            LesionStudyConfig.v2(**{field_name: bad})


def test_first_v2_cache_keys_are_pinned(tmp_path: Path, monkeypatch: Any) -> None:
    """The folders of the first v2 runs (docs/results.md) stay reachable with the flags
    the docs give: the keys below are those the runs wrote. The plan is made at full
    size (the sizes are part of the keys) with a few small volumes standing in."""
    import wsdet.experiments.lesions as les
    from wsdet.data.phantoms.v2 import make_phantoms_v2
    from wsdet.experiments.common import Store, model_folder

    def few(cfg: LesionStudyConfig, setting: str) -> tuple[Any, Any, Any]:
        return tuple(make_phantoms_v2(1, setting, seed=k) for k in range(3))

    monkeypatch.setattr(les, "_data", few)
    store = Store(tmp_path)
    want = {
        (): "basal_ganglia-basecnn-d3440e53e242",  # runs/lesions3d_v2
        (("scratch_epochs", 20), ("scratch_patience", 10)): "basal_ganglia-basecnn-cb6f7d206d5a",
    }
    for extra, folder in want.items():
        cfg = LesionStudyConfig.v2(**FIRST_V2, **dict(extra), settings=("basal_ganglia",))
        plan = LesionStudy(cfg).plan(store)
        job = next(j for j in plan.jobs if j.name == "basal_ganglia-basecnn")
        assert model_folder(store, job.name, job.spec, job.config, job.init_from).name == folder


def test_decoder_key_marks_the_networks_whose_upsampling_changed() -> None:
    from wsdet.experiments.common import decoder_key

    aligned = {"upsample": "aligned"}
    assert decoder_key("gpunet", 3, (11, 88, 88)) == aligned  # midbrain-like: 11 slices
    assert decoder_key("gated_attention", 3, (11, 88, 88)) == aligned
    assert decoder_key("gpunet", 3, (10, 96, 96)) == {}  # 10 = 2 x 5: unchanged
    assert decoder_key("gpunet_no_residual", 3, (10, 96, 96)) == aligned  # 10 = 4 x 2 + 2
    assert decoder_key("gpunet_no_residual", 3, (12, 96, 96)) == {}
    assert decoder_key("basecnn", 3, (11, 88, 88)) == {}  # no decoder
    assert decoder_key("gpunet_no_residual", 2, (140, 196)) == {}  # MNIST grids: keys kept
    from wsdet.experiments.detections import coarse_upsample_key

    # detections whose coarse maps are now upsampled in place get their own cache entries
    assert coarse_upsample_key("grad_cam", (11, 88, 88)) == {"coarse_upsample": "in place"}
    assert coarse_upsample_key("gated_attention", (11, 88, 88)) == {"coarse_upsample": "in place"}
    assert coarse_upsample_key("grad_cam", (10, 96, 96)) == {}  # a multiple of 2: unchanged
    assert coarse_upsample_key("guided_backprop", (11, 88, 88)) == {}  # full resolution
