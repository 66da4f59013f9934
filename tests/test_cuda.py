"""CUDA paths: the same answers on a GPU as on the CPU. Skipped where no GPU is present."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
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


# --------------------------------------------------------------------------- DDP, AMP


def test_ddp_world_size_one_on_a_gpu_trains_and_detects_as_one_process(tmp_path):
    """torchrun --nproc-per-node 1 on the GPU: the trainer and run_detection join an NCCL
    group themselves; DistributedDataParallel of one process trains as no DDP, and the
    sharded detections equal the single-process ones exactly."""
    import dist_worker as worker

    from wsdet import run_detection
    from wsdet._io import load_checkpoint
    from wsdet.inference import read_detections

    worker.launch("cuda", tmp_path / "ddp", nproc=1, timeout=400)
    got = load_checkpoint(tmp_path / "ddp" / "adam" / "rank0.pt")
    assert got["backend"] == "nccl"
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    worker.deterministic()  # as in the worker
    try:
        trainer, train, val, kwargs = worker.make_case("adam", 1, 0, tmp_path / "ref", "cuda")
        result = trainer.fit(train, val, **kwargs)
        model = worker.detector().model.cuda()
        expected = run_detection(
            worker.Volumes(), Detector(model, "gp_unet"), tmp_path / "one", **worker.DETECT_OPTIONS
        )
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    for key, value in trainer.model.state_dict().items():
        scale = float(value.abs().max().clamp_min(1e-30))
        assert float((got["state"][key] - value.cpu()).abs().max()) / scale <= 1e-6, key
    assert got["result"]["epochs"] == result.epochs
    assert got["result"]["history"]["val_loss"] == pytest.approx(
        result.history["val_loss"], rel=1e-6
    )
    assert load_checkpoint(tmp_path / "ddp" / "adam" / "ckpt" / "last.pt")["world_size"] == 1
    for a, b in zip(read_detections(tmp_path / "ddp" / "detect"), expected, strict=True):
        assert np.array_equal(a.points, b.points) and np.array_equal(a.scores, b.scores)
        assert a.count == b.count


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_trains_and_resumes(tmp_path, precision):
    """Autocast in bf16 / fp16 (with a GradScaler for fp16; off by default): the forward
    pass runs in half precision, the weights stay float32, the loss falls, and a resumed
    run ends where the uninterrupted one ends (the scaler's state is in last.pt)."""
    assert TrainConfig().precision == "fp32"
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    y = (x > 0.97).sum(dim=(1, 2, 3)).float()
    cfg = TrainConfig(
        optimizer="adam", lr=1e-3, max_epochs=6, batch_size=8, precision=precision,
        progress="none",
    )  # fmt: skip

    def fit(out, epochs):
        torch.manual_seed(1)
        model = build_model("gpunet", 2, 4).cuda()
        seen = []
        model.conv1.register_forward_hook(
            lambda m, a, o: seen.append(o.dtype) if m.training else None
        )
        trainer = Trainer(model, dataclasses.replace(cfg, max_epochs=epochs), out_dir=out)
        return trainer.fit((x, y), (x, y), resume=True), seen, trainer

    straight, seen, trainer = fit(tmp_path / "a", 6)
    assert set(seen) == {half}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    history = straight.history["val_loss"]
    assert all(np.isfinite(history)) and min(history) < history[0]
    fit(tmp_path / "b", 3)
    resumed, _, _ = fit(tmp_path / "b", 6)
    assert resumed.history["val_loss"] == pytest.approx(history, rel=1e-4)
    from wsdet._io import load_checkpoint

    scaler = load_checkpoint(tmp_path / "a" / "last.pt")["scaler"]
    assert (scaler["scale"] > 0) if precision == "fp16" else scaler == {}
