"""CUDA paths: the same answers on a GPU as on the CPU. Skipped where no GPU is present."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from wsdet import Detector
from wsdet.experiments.common import METHOD_ARCHITECTURE, build_model
from wsdet.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def _exact_float32():
    """No TF32 in the GPU convolutions and products, so CPU and GPU agree to ~1e-5."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("method", sorted(METHOD_ARCHITECTURE))
def test_attention_and_detections_on_cuda_match_the_cpu(method, dim):
    torch.manual_seed(0)
    arch = METHOD_ARCHITECTURE[method]
    model = build_model(arch, dim, 4).eval()
    shape = (2, 1, 56, 56) if dim == 2 else (2, 1, 16, 24, 24)
    x = torch.rand(shape)
    cpu = Detector(model, method)
    ref = cpu.attention(x)
    gpu_model = copy.deepcopy(model).cuda()
    state = {k: v.clone() for k, v in gpu_model.state_dict().items()}
    gpu = Detector(gpu_model, method)
    maps = gpu.attention(x.cuda())
    assert maps.device.type == "cuda" and maps.shape == ref.shape
    scale = ref.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(maps.cpu() / scale, ref / scale, atol=1e-4, rtol=1e-4)
    # the model comes back as it was: no hooks, same weights, same mode, same device
    assert not gpu_model.training
    for k, v in gpu_model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for m in gpu_model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    dets_cpu = cpu.detect(x, n=3)
    dets_gpu = gpu.detect(x.cuda(), n=3)
    for a, b in zip(dets_cpu, dets_gpu, strict=True):
        assert len(a.points) == len(b.points)


def test_trainer_on_cuda_trains_resumes_and_predicts(tmp_path):
    """A short fit with augmentation on the GPU, interrupted and resumed, ends where an
    uninterrupted GPU run ends, and its weights load on the CPU."""
    from wsdet.data.augment import augment

    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    y = (x > 0.97).sum(dim=(1, 2, 3)).float()
    cfg = TrainConfig(optimizer="adam", lr=1e-3, max_epochs=4, batch_size=8, progress="none")

    def fit(out, epochs_first=None):
        torch.manual_seed(1)
        model = build_model("gpunet", 2, 4)
        if epochs_first is not None:
            first = dataclasses.replace(cfg, max_epochs=epochs_first)
            Trainer(model.cuda(), first, augment=augment, out_dir=out).fit((x, y), (x, y))
            torch.manual_seed(1)
            model = build_model("gpunet", 2, 4)
        trainer = Trainer(model.cuda(), cfg, augment=augment, out_dir=out)
        result = trainer.fit((x, y), (x, y), resume=True)
        return trainer, result

    straight, r1 = fit(tmp_path / "a")
    _, r2 = fit(tmp_path / "b", epochs_first=2)
    assert r1.epochs == r2.epochs == 4
    assert r1.history["val_loss"] == pytest.approx(r2.history["val_loss"], rel=1e-4)
    pred = straight.predict(x[:5].cuda())
    assert pred.device.type == "cuda"
    cpu_model = build_model("gpunet", 2, 4)
    Trainer(cpu_model).finetune_from(tmp_path / "a" / "best.pt")
    torch.testing.assert_close(Trainer(cpu_model).predict(x[:5]), pred.cpu(), atol=1e-4, rtol=1e-4)
