"""wsdet.train refusing what cannot be right, and handing the model back as documented.

A learning rate of zero or below, negative counts, a progress bar without tqdm; after
:meth:`Trainer.fit`, parameters with standard strides and a model equal to its ``best.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import TinyNet, quiet, spot_data
from torch.utils.data import DataLoader, TensorDataset

from wsdet._io import load_checkpoint
from wsdet.train import TrainConfig, Trainer


def row_major(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a freshly allocated tensor of ``shape`` (independent of wsdet)."""
    return torch.empty(shape).stride()


# --------------------------------------------------------------------------- learning rate


@pytest.mark.parametrize("optimizer", ["adadelta", "adam"])
@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan")])
def test_a_learning_rate_of_zero_or_below_is_refused(optimizer: str, lr: float) -> None:
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0; got "):
        TrainConfig(optimizer=optimizer, lr=lr)  # type: ignore[arg-type]


def test_numpy_settings_are_stored_as_plain_numbers(tmp_path: Path) -> None:
    """Checkpoints hold the config and load weights-only: NumPy scalars would be refused."""
    cfg = quiet(optimizer="adam", lr=np.float32(0.01), batch_size=np.int64(8), max_epochs=1)
    assert type(cfg.lr) is float and type(cfg.batch_size) is int
    Trainer(TinyNet(), cfg, out_dir=tmp_path).fit(spot_data(8, 0), spot_data(4, 1))
    saved = load_checkpoint(tmp_path / "last.pt")["config"]
    assert saved["lr"] == pytest.approx(0.01) and saved["batch_size"] == 8


# --------------------------------------------------------------------------- counts


def with_negative(data: tuple[torch.Tensor, torch.Tensor], index: int = 2) -> tuple:
    images, counts = data
    counts = counts.clone()
    counts[index] = -1.0
    return images, counts


@pytest.mark.parametrize("form", ["tensors", "sampler", "dataset", "loader"])
def test_negative_training_counts_are_refused(form: str) -> None:
    images, counts = with_negative(spot_data(8, 0))
    train: object = {
        "tensors": (images, counts),
        "sampler": lambda epoch: (images, counts),
        "dataset": TensorDataset(images, counts),
        "loader": DataLoader(TensorDataset(images, counts), batch_size=4),
    }[form]
    trainer = Trainer(TinyNet(), quiet(max_epochs=1, standardize_targets=False))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"train.* counts.* must be >= 0 \(a count\); got -1"):
        trainer.fit(train, spot_data(4, 1))  # type: ignore[arg-type]
    if form in ("tensors", "sampler"):  # refused before any step
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("form", ["tensors", "dataset"])
def test_negative_validation_counts_are_refused(form: str) -> None:
    images, counts = with_negative(spot_data(4, 1), index=3)
    val = (images, counts) if form == "tensors" else TensorDataset(images, counts)
    trainer = Trainer(TinyNet(), quiet(max_epochs=1))
    with pytest.raises(ValueError, match=r"val counts must be >= 0 \(a count\); got -1"):
        trainer.fit(spot_data(8, 0), val)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got -1 at index 3"):
        trainer.evaluate(images, counts)


def test_the_command_line_refuses_a_negative_count(tmp_path: Path) -> None:
    from wsdet.cli._common import UserError
    from wsdet.cli._train import _read_counts

    table = tmp_path / "counts.csv"
    table.write_text("image,count\ncase00,2\ncase01,-1\n")
    with pytest.raises(UserError, match=r"counts\.csv line 3: count '-1' must be a number >= 0"):
        _read_counts(table)
    table.write_text("image,count\ncase00,2\ncase01,0\n")
    assert _read_counts(table) == {"case00": 2.0, "case01": 0.0}


def test_zero_counts_are_fine() -> None:
    images, _ = spot_data(6, 0)
    counts = torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0, 0.0])
    result = Trainer(TinyNet(), quiet(max_epochs=1)).fit((images, counts), (images, counts))
    assert result.epochs == 1


# --------------------------------------------------------------------------- progress bar


def test_a_progress_bar_without_tqdm_names_the_extra_before_anything_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    trainer = Trainer(TinyNet(), TrainConfig(progress="bar", max_epochs=1), out_dir=tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ImportError) as info:
        trainer.fit(spot_data(8, 0), spot_data(4, 1))
    assert str(info.value) == "progress='bar' needs tqdm: pip install 'wsdet[progress]'"
    assert list(tmp_path.iterdir()) == []  # no epoch ran, no file written
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_auto_progress_without_tqdm_falls_back_to_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setitem(sys.modules, "ipykernel", type(sys)("ipykernel"))  # would want a bar
    result = Trainer(TinyNet(), TrainConfig(max_epochs=1)).fit(spot_data(8, 0), spot_data(4, 1))
    assert result.epochs == 1


# --------------------------------------------------------------------------- the model handed back


@pytest.mark.parametrize("memory_format", ["auto", "channels_last", "contiguous"])
def test_the_fitted_model_equals_its_best_checkpoint_bit_for_bit(
    tmp_path: Path, memory_format: str
) -> None:
    """A one-channel first convolution trained channels-last: every tensor comes back with
    row-major strides, and the model reloaded from best.pt computes the very same bits."""
    torch.manual_seed(0)
    cfg = quiet(optimizer="adam", lr=0.02, max_epochs=3, memory_format=memory_format)
    trainer = Trainer(TinyNet(), cfg, out_dir=tmp_path)
    trainer.fit(spot_data(16, 0), spot_data(8, 1))
    fitted = trainer.model
    for name, t in [*fitted.named_parameters(), *fitted.named_buffers()]:
        assert t.is_contiguous() and t.stride() == row_major(t.shape), (name, t.stride())
    reloaded = TinyNet()
    reloaded.load_state_dict(load_checkpoint(tmp_path / "best.pt")["model"])
    state = reloaded.state_dict()
    for key, value in fitted.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = spot_data(5, 7)[0]
    with torch.no_grad():
        assert torch.equal(fitted.eval()(x), reloaded.eval()(x))
