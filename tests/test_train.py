"""Tests of wsdet.train: learning, target scaling, early stopping, checkpoints, options.

The networks and data come from ``tests/_train_helpers.py`` (shared with
``tests/dist_worker.py``); ``wsdet._io`` itself is tested in ``tests/test_io_atomic.py``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import LOSSES, Scripted, TinyNet, flip_augment, quiet, spot_data
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from wsdet import _io
from wsdet._io import load_checkpoint
from wsdet.train import (
    TrainConfig,
    Trainer,
    find_head,
    fold_target_scaling,
    unfold_target_scaling,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- learning


def test_loss_decreases_on_learnable_problem() -> None:
    train, val = spot_data(64, 0), spot_data(48, 1)
    model = TinyNet()
    cfg = quiet(optimizer="adam", lr=0.05, init="kaiming", batch_size=32, max_epochs=40, seed=1)
    trainer = Trainer(model, cfg)
    result = trainer.fit(train, val)
    baseline = float(((val[1] - train[1].mean()) ** 2).mean())  # predicting the mean count
    final = trainer.evaluate(*val)
    assert result.history["val_loss"][result.best_epoch] < 0.5 * result.history["val_loss"][0]
    assert final["mse"] < 0.25 * baseline
    assert result.history["train_loss"][-1] < 0.5 * result.history["train_loss"][0]


# --------------------------------------------------------------------------- target scaling


def test_fold_target_scaling_by_hand() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 1))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 2.0]]))
        net[1].bias.fill_(0.5)
    x = torch.tensor([[3.0, 4.0]])
    assert net(x).item() == pytest.approx(11.5)  # 3 + 8 + 0.5
    fold_target_scaling(net, mean=2.0, std=3.0)
    assert net[1].weight.tolist() == [[3.0, 6.0]]
    assert net[1].bias.item() == pytest.approx(3.5)  # 3 * 0.5 + 2
    assert net(x).item() == pytest.approx(2.0 + 3.0 * 11.5)
    unfold_target_scaling(net, mean=2.0, std=3.0)
    assert net(x).item() == pytest.approx(11.5)


@settings(max_examples=25, deadline=None)
@given(
    mean=st.floats(-50, 50),
    std=st.floats(0.01, 100),
    seed=st.integers(0, 2**31 - 1),
)
def test_fold_is_affine_on_output_and_unfold_inverts(mean: float, std: float, seed: int) -> None:
    torch.manual_seed(seed)
    net = TinyNet().double()
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    raw = net(x)
    fold_target_scaling(net, mean, std)
    torch.testing.assert_close(net(x), mean + std * raw)
    unfold_target_scaling(net, mean, std)
    torch.testing.assert_close(net(x), raw)


def test_find_head_prefers_declared_head_then_last_linear() -> None:
    class Declared(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.aux = nn.Linear(4, 1)  # registered after head: the fallback would pick it

        def wsdet_layers(self) -> dict[str, str]:
            return {"head": "head"}

    assert find_head(Declared())[0] == "head"
    plain = nn.Sequential(nn.Linear(3, 1), nn.Linear(1, 4), nn.Linear(4, 1))
    assert find_head(plain) == ("2", plain[2])
    with pytest.raises(ValueError, match=r"nn.Linear\(K, 1\)"):
        find_head(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(0)))

    class BadDeclared(TinyNet):
        def wsdet_layers(self) -> dict[str, str]:
            return {"head": "conv"}

    with pytest.raises(ValueError, match="head"):
        find_head(BadDeclared())
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(2, 1, bias=False))
    with pytest.raises(ValueError, match="no bias"):
        fold_target_scaling(no_bias, mean=1.0, std=2.0)
    fold_target_scaling(no_bias, mean=0.0, std=2.0)  # a zero mean needs no bias


def test_folding_scales_the_gp_unet_cam_by_std() -> None:
    """The fold acts on the head the CAM uses: maps scale by std, peaks do not move."""
    from wsdet import Detector
    from wsdet.models import GPUnet

    torch.manual_seed(0)
    model = GPUnet(dim=2, init="kaiming")
    x = torch.rand(2, 1, 16, 20)
    before = Detector(model, method="gp_unet").attention(x)
    fold_target_scaling(model, mean=1.3, std=2.5)
    after = Detector(model, method="gp_unet").attention(x)
    torch.testing.assert_close(after, 2.5 * before)


def test_fit_returns_model_in_counts(tmp_path: Path) -> None:
    train, val = spot_data(40, 0), spot_data(20, 1)
    trainer = Trainer(TinyNet(), quiet(optimizer="adam", lr=0.01, max_epochs=3), out_dir=tmp_path)
    result = trainer.fit(train, val)
    y = train[1].numpy().astype(np.float64)
    assert result.target_mean == pytest.approx(y.mean())
    assert result.target_std == pytest.approx(y.std())  # population std of training counts
    # The standardised-space best weights, as saved in the training state.
    raw_model = TinyNet()
    raw_model.load_state_dict(load_checkpoint(tmp_path / "last.pt")["best_model"])
    with torch.no_grad():
        raw = raw_model(val[0]).double()
    expected = y.mean() + y.std() * raw
    torch.testing.assert_close(trainer.predict(val[0]).double(), expected, rtol=1e-5, atol=1e-5)
    # best.pt holds the folded weights: the returned model exactly.
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(best[key], value), key
    assert all(p.is_contiguous() for p in trainer.model.parameters())


def test_classification_uses_logits() -> None:
    """A constant-logit model: losses must be BCE-with-logits on count > 0.

    (lr 1e-30: the weights move by ~1e-30, far below what changes a float32 logit of 0.7.)
    """
    net = nn.Sequential(nn.Flatten(), nn.Linear(100, 1), nn.Flatten(0))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.fill_(0.7)
    train, val = spot_data(20, 0), spot_data(12, 1)
    cfg = quiet(objective="classification", optimizer="adam", lr=1e-30, max_epochs=1)
    trainer = Trainer(net, cfg)
    result = trainer.fit(train, val)

    def bce(counts: torch.Tensor) -> float:
        p = (counts > 0).double().mean().item()  # counts 2, 3, 4 are "present", not 2, 3, 4
        s = 1.0 / (1.0 + math.exp(-0.7))
        return -(p * math.log(s) + (1 - p) * math.log(1 - s))

    assert result.history["train_loss"][0] == pytest.approx(bce(train[1]), rel=1e-6)
    assert result.history["val_loss"][0] == pytest.approx(bce(val[1]), rel=1e-6)
    accuracy = (val[1] > 0).double().mean().item()  # logit 0.7 > 0 predicts "present"
    assert result.history["val_accuracy"][0] == pytest.approx(accuracy)
    assert trainer.evaluate(*val) == pytest.approx({"bce": bce(val[1]), "accuracy": accuracy})
    torch.testing.assert_close(trainer.predict(val[0]), torch.full((12,), 0.7))  # a logit


# --------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize(
    ("patience", "min_delta", "best", "epochs"),
    [(3, 0.0, 5, 9), (2, 0.0, 2, 5), (3, 0.15, 2, 6), (None, 0.0, 11, 12)],
)
def test_early_stopping_on_scripted_val_losses(
    patience: int | None, min_delta: float, best: int, epochs: int
) -> None:
    model = Scripted(LOSSES)
    images = torch.rand(4, 1, 4, 4)
    cfg = quiet(
        standardize_targets=False, patience=patience, min_delta=min_delta, max_epochs=12,
        batch_size=4, optimizer="adam",
    )  # fmt: skip
    result = Trainer(model, cfg).fit((images, torch.ones(4)), (images, torch.zeros(4)))
    assert result.history["val_loss"] == pytest.approx(LOSSES[:epochs])
    assert result.best_epoch == best
    assert result.best_val_loss == pytest.approx(LOSSES[best])
    assert result.epochs == epochs
    assert result.stop_reason == ("max_epochs" if patience is None else "patience")
    assert int(model.calls) == best + 1  # the best epoch's weights (and buffers) are back


def test_time_budget_stops_between_epochs() -> None:
    images = torch.rand(4, 1, 4, 4)
    cfg = quiet(standardize_targets=False, time_budget=1e-9, max_epochs=50, batch_size=4)
    result = Trainer(Scripted(LOSSES), cfg).fit((images, torch.ones(4)), (images, torch.zeros(4)))
    assert (result.epochs, result.stop_reason) == (1, "time_budget")


# --------------------------------------------------------------------------- checkpoints


def test_trainer_crash_mid_checkpoint_leaves_loadable_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def flaky(obj: object, f: object) -> None:
        if ".last.pt." in f.name:  # type: ignore[attr-defined]
            calls["n"] += 1
            if calls["n"] == 3:  # the state of epoch 2 fails to write
                f.write(b"\x80garbage")  # type: ignore[attr-defined]
                raise OSError("disk full")
        real_save(obj, f)  # type: ignore[arg-type]

    monkeypatch.setattr(_io.torch, "save", flaky)
    trainer = Trainer(TinyNet(), quiet(optimizer="adam", lr=0.05, max_epochs=5), out_dir=tmp_path)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(spot_data(16, 0), spot_data(8, 1))
    monkeypatch.undo()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2  # the previous state, intact
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 1 + 3
    assert all(p.is_contiguous() for p in trainer.model.parameters())


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    Trainer(TinyNet(), quiet(max_epochs=2), out_dir=tmp_path).fit(spot_data(16, 0), spot_data(8, 1))
    for name in ("last.pt", "best.pt"):
        obj = torch.load(tmp_path / name, weights_only=True)  # plain torch, no allow-listing
        assert isinstance(obj["model"], dict)

    torch.save({"obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        Trainer(TinyNet()).finetune_from(tmp_path / "evil.pt")


class Evil:
    """An arbitrary class: a weights-only load must refuse to unpickle it."""


def _sampler_with_global_numpy(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, counts = spot_data(24, 100 + epoch % 3)
    noise = torch.from_numpy(np.random.rand(*images.shape).astype(np.float32))  # noqa: NPY002
    return images + 0.05 * noise, counts


@pytest.mark.parametrize("optimizer", ["adam", "adadelta"])
def test_resume_is_bit_exact(tmp_path: Path, optimizer: str) -> None:
    def run(out: Path, max_epochs: int, resume: bool, seed_model: int) -> Trainer:
        torch.manual_seed(seed_model)
        cfg = quiet(
            optimizer=optimizer, lr=0.02 if optimizer == "adam" else 1.0, init="kaiming",
            batch_size=10, max_epochs=max_epochs, patience=50, seed=7,
        )  # fmt: skip
        trainer = Trainer(TinyNet(dropout=0.3), cfg, augment=flip_augment, out_dir=out)
        trainer.fit(_sampler_with_global_numpy, spot_data(12, 1), resume=resume)
        return trainer

    np.random.seed(0)  # noqa: NPY002
    full = run(tmp_path / "full", 6, False, seed_model=0)
    np.random.seed(0)  # noqa: NPY002
    run(tmp_path / "part", 3, False, seed_model=0)
    np.random.seed(123)  # noqa: NPY002  (the caller's state differs: resume must restore it)
    resumed = run(tmp_path / "part", 6, True, seed_model=99)  # other init: overwritten

    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "part"))
    assert a["epoch"] == b["epoch"] == 6
    for key in ("train_loss", "val_loss", "val_mae"):
        assert a["history"][key] == b["history"][key]
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
    for pid, st_a in a["optimizer"]["state"].items():
        for name, value in st_a.items():
            assert torch.equal(b["optimizer"]["state"][pid][name], value), (pid, name)


def test_a_run_saved_on_a_gpu_resumes_on_the_cpu(tmp_path: Path) -> None:
    """last.pt written on a GPU holds CUDA RNG states: a CPU-only resume skips them and
    goes on exactly as a CPU run would (the CPU-side randomness is restored)."""
    cfg = quiet(optimizer="adam", lr=0.02, max_epochs=4, seed=3)
    torch.manual_seed(0)
    full = Trainer(TinyNet(dropout=0.3), cfg, augment=flip_augment, out_dir=tmp_path / "full")
    full.fit(spot_data(16, 0), spot_data(8, 1))
    torch.manual_seed(0)
    part = Trainer(
        TinyNet(dropout=0.3),
        quiet(optimizer="adam", lr=0.02, max_epochs=2, seed=3),
        augment=flip_augment,
        out_dir=tmp_path / "part",
    )
    part.fit(spot_data(16, 0), spot_data(8, 1))
    state = load_checkpoint(tmp_path / "part" / "last.pt")
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # as if saved on a GPU
    torch.save(state, tmp_path / "part" / "last.pt")
    resumed = Trainer(TinyNet(dropout=0.3), cfg, augment=flip_augment, out_dir=tmp_path / "part")
    resumed.fit(spot_data(16, 0), spot_data(8, 1), resume=True)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_fit_leaves_caller_rng_untouched() -> None:
    trainer = Trainer(TinyNet(dropout=0.5), quiet(max_epochs=1))
    data = spot_data(8, 0), spot_data(4, 1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    trainer.fit(*data)
    assert torch.equal(torch.rand(3), expected)


def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    Trainer(TinyNet(), quiet(max_epochs=1), out_dir=tmp_path).fit(spot_data(8, 0), spot_data(4, 1))
    trainer = Trainer(TinyNet(), quiet(max_epochs=3, lr=0.5), out_dir=tmp_path)
    with pytest.raises(ValueError, match="lr"):
        trainer.fit(spot_data(8, 0), spot_data(4, 1), resume=True)
    with pytest.raises(FileNotFoundError):
        trainer.fit(spot_data(8, 0), spot_data(4, 1), resume=tmp_path / "missing.pt")


def test_finetune_loads_weights_and_keeps_counts(tmp_path: Path) -> None:
    train, val = spot_data(40, 0), spot_data(20, 1)
    cfg = quiet(optimizer="adam", lr=0.02, max_epochs=4)
    first = Trainer(TinyNet(), cfg, out_dir=tmp_path / "a")
    first.fit(train, val)
    expected = first.predict(val[0])
    for name in ("best.pt", "last.pt"):
        other = Trainer(TinyNet(), cfg, init_from=tmp_path / "a" / name)
        torch.testing.assert_close(other.predict(val[0]), expected, rtol=1e-5, atol=1e-5)
    # Fine-tuning on data with other statistics (lr 1e-30: the weights do not move in
    # float32): the count predictions survive the unfold (new statistics) / fold round trip,
    # so training starts where the source ended.
    shifted = (train[0], train[1] * 3.0 + 2.0)
    tuner = Trainer(TinyNet(), quiet(optimizer="adam", lr=1e-30, max_epochs=1))
    tuner.finetune_from(tmp_path / "a" / "best.pt")
    result = tuner.fit(shifted, val)
    assert result.target_mean == pytest.approx(float(shifted[1].mean()))
    torch.testing.assert_close(tuner.predict(val[0]), expected, rtol=1e-5, atol=1e-5)
    # A plain state_dict works too.
    torch.save(first.model.state_dict(), tmp_path / "sd.pt")
    plain = Trainer(TinyNet(), cfg, init_from=tmp_path / "sd.pt")
    torch.testing.assert_close(plain.predict(val[0]), expected)


def test_history_file(tmp_path: Path) -> None:
    train, val = spot_data(32, 0), spot_data(16, 1)
    trainer = Trainer(TinyNet(), quiet(optimizer="adam", lr=0.02, max_epochs=4), out_dir=tmp_path)
    result = trainer.fit(train, val)
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = ["epoch", "train_loss", "val_loss", "val_mae", "lr", "seconds", "elapsed"]
    assert list(rows[0]) == columns
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    for col in columns[1:]:
        assert [float(r[col]) for r in rows] == result.history[col]
    assert all(float(r["lr"]) == 0.02 for r in rows)
    assert all(float(r["seconds"]) > 0 for r in rows)
    elapsed = np.cumsum([float(r["seconds"]) for r in rows])
    np.testing.assert_allclose([float(r["elapsed"]) for r in rows], elapsed)
    # The best row's validation figures are those of the returned model.
    best = rows[result.best_epoch]
    scores = trainer.evaluate(*val)
    assert float(best["val_loss"]) == pytest.approx(scores["mse"], rel=1e-5)
    assert float(best["val_mae"]) == pytest.approx(scores["mae"], rel=1e-5)
    assert result.best_checkpoint == tmp_path / "best.pt"


# --------------------------------------------------------------------------- batching, options


@pytest.mark.parametrize(("dim", "n", "expected"), [(2, 130, [64, 64, 2]), (3, 3, [1, 1, 1])])
def test_default_batch_size(dim: int, n: int, expected: list[int]) -> None:
    model = TinyNet(dim=dim)
    shape = (n, 1, 6, 6) if dim == 2 else (n, 1, 4, 4, 4)
    seen: list[int] = []
    model.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].shape[0]) if m.training else None
    )
    Trainer(model, quiet(max_epochs=1)).fit(
        (torch.rand(shape), torch.arange(n) % 3), (torch.rand(shape[:1] + shape[1:]), torch.ones(n))
    )
    assert seen == expected


def test_augment_gets_seeded_generator_and_data_per_epoch() -> None:
    calls: list[tuple[int, float]] = []

    def augment(images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        calls.append((images.shape[0], float(torch.rand(1, generator=generator))))
        return images

    epochs: list[int] = []

    def sampler(epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epochs.append(epoch)
        images, counts = spot_data(6, epoch)
        return images, counts, counts > 0  # extra items (labels) are ignored

    cfg = quiet(max_epochs=3, batch_size=4, seed=1)
    Trainer(TinyNet(), cfg, augment=augment).fit(sampler, spot_data(4, 9))
    assert epochs == [0, 1, 2]
    assert [c[0] for c in calls] == [4, 2] * 3
    first = list(calls)
    calls.clear()
    epochs.clear()
    Trainer(TinyNet(), cfg, augment=augment).fit(sampler, spot_data(4, 9))
    assert calls == first  # same seed, same draws
    assert len({c[1] for c in first}) == 6  # but different draws per batch and epoch


def test_bf16_autocast_and_channels_last_are_applied() -> None:
    model = TinyNet()
    seen: list[tuple[torch.dtype, bool]] = []

    def channels_last(x: torch.Tensor) -> bool:  # unambiguous even for one channel
        return x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1

    model.conv.register_forward_hook(
        lambda m, a, out: seen.append((out.dtype, channels_last(a[0]))) if m.training else None
    )
    cfg = quiet(precision="bf16", memory_format="channels_last", max_epochs=1, batch_size=8)
    result = Trainer(model, cfg).fit(spot_data(8, 0, size=6), spot_data(4, 1, size=6))
    assert seen == [(torch.bfloat16, True)]
    assert math.isfinite(result.best_val_loss)
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in model.parameters())


def test_progress_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    cfg = TrainConfig(max_epochs=5, progress="log", log_every=2)
    with caplog.at_level(logging.INFO, logger="wsdet.train"):
        Trainer(TinyNet(), cfg).fit(spot_data(8, 0), spot_data(4, 1))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == [
        "epoch 1",
        "epoch 3",
    ]
    assert "val_loss=" in lines[0] and "val_mae=" in lines[0]
    assert lines[-1].startswith("stopped (max_epochs) after 5 epochs")


def test_init_option_is_seeded() -> None:
    a, b = TinyNet(), TinyNet()
    Trainer(a, TrainConfig(init="keras", seed=3))
    Trainer(b, TrainConfig(init="keras", seed=3))
    assert torch.equal(a.conv.weight, b.conv.weight)
    assert float(a.conv.bias.detach().abs().sum()) == 0.0
    assert float(a.conv.weight.detach().std()) == pytest.approx(0.05, rel=0.5)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "poisson"}, "objective"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"rho": 1.0}, "rho"),
        ({"lr": -1.0}, "lr"),
        ({"patience": 0}, "patience"),
        ({"time_budget": 0.0}, "time_budget"),
        ({"target_stats": (1.0, 0.0)}, "target_stats std"),
        ({"memory_format": "nhwc"}, "memory_format"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_fit_accepts_datasets_with_images_and_counts() -> None:
    from types import SimpleNamespace

    train, val = spot_data(16, 0), spot_data(8, 1)
    as_tensors = Trainer(TinyNet(), quiet(max_epochs=2, seed=4))
    as_tensors.model.load_state_dict(TinyNet().state_dict())
    as_objects = Trainer(TinyNet(), quiet(max_epochs=2, seed=4))
    as_objects.model.load_state_dict(as_tensors.model.state_dict())
    a = as_tensors.fit(train, val)
    b = as_objects.fit(
        SimpleNamespace(images=train[0], counts=train[1]),
        SimpleNamespace(images=val[0], counts=val[1]),
    )
    assert a.history["val_loss"] == b.history["val_loss"]


def test_fit_rejects_bad_data() -> None:
    trainer = Trainer(TinyNet(), quiet(max_epochs=1))
    images = torch.rand(4, 1, 6, 6)
    with pytest.raises(ValueError, match=r"counts must have shape \(4,\)"):
        trainer.fit((images, torch.ones(3)), (images, torch.ones(4)))
    with pytest.raises(ValueError, match="floating-point"):
        trainer.fit((images.long(), torch.ones(4)), (images, torch.ones(4)))
    with pytest.raises(ValueError, match="same layout"):
        trainer.fit((images, torch.ones(4)), (torch.rand(4, 1, 3, 3, 3), torch.ones(4)))
    with pytest.raises(TypeError, match="sampler output"):
        trainer.fit(lambda epoch: images, (images, torch.ones(4)))  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="cannot be standardised"):
        trainer.fit((images, torch.ones(4)), (images, torch.ones(4)))
    bad = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    with pytest.raises(ValueError, match="one value per sample"):
        Trainer(bad, quiet(max_epochs=1, standardize_targets=False)).fit(
            (images, torch.ones(4)), (images, torch.ones(4))
        )


# --------------------------------------------------------------------------- MNIST (slow)


@pytest.mark.slow
def test_gpunet_learns_to_count_mnist_digits() -> None:
    """GP-Unet 2D on fresh MNIST grids: the count error drops well below the mean predictor.

    Kept to a few minutes on two CPU cores: 2 x 3 grids (56 x 84 pixels) drawn from the digits
    1 and 4 only. With all ten classes the validation error stays flat at that of the mean
    for the first few hundred steps (docs/training.md), too long for a test.
    """
    from wsdet.data.augment import augment
    from wsdet.data.mnist import GridSampler, MNISTGrid, mnist_grid_splits
    from wsdet.models import GPUnet

    root = Path(os.environ.get("WSDET_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
    if not (root / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST test digits (t10k-images-idx3-ubyte.gz) not found in {root}")
    splits = mnist_grid_splits(root, target=4, n_train=8, n_val=8, n_test=8, seed=0)

    def pool(split: str) -> tuple[np.ndarray, np.ndarray]:
        p = getattr(splits, f"{split}_pool")
        keep = np.isin(p.labels, [1, 4])
        return p.images[keep], p.labels[keep]

    grid = {"target": 4, "rows": 2, "cols": 3}
    sampler = GridSampler(*pool("train"), n_images=64, seed=1, **grid)  # type: ignore[arg-type]
    val_grid = MNISTGrid(*pool("val"), n_images=100, seed=2, **grid)  # type: ignore[arg-type]
    val = (val_grid.images, val_grid.counts)
    cfg = TrainConfig(
        optimizer="adam", lr=3e-3, init="kaiming", batch_size=32, max_epochs=30, progress="none"
    )
    torch.manual_seed(0)
    trainer = Trainer(GPUnet(dim=2), cfg, augment=augment)
    result = trainer.fit(sampler, val)
    y = val[1].double()
    baseline_mae = float((y - result.target_mean).abs().mean())  # predicting the mean count
    mae = trainer.evaluate(*val)["mae"]
    assert mae < 0.5 * baseline_mae, (mae, baseline_mae)
