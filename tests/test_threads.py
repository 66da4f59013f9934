"""A Detector shared by threads gives the serial results, bit for bit, and leaves the model
as it was (training flags, BatchNorm statistics, no hooks) — also on concurrent first calls
and with two Detectors sharing one model."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import wsdet

N_THREADS = 8
N_CALLS = 20


class BNNet(nn.Module):
    """Conv-BN-ReLU twice, then GAP + Linear; left in training mode by the user."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.bn1(self.conv1(x)))
        f = torch.relu(self.bn2(self.conv2(f)))
        return self.head(self.drop(f.mean((2, 3)))).squeeze(1)


def make_model() -> BNNet:
    torch.manual_seed(0)
    m = BNNet()
    with torch.no_grad():  # non-trivial running statistics
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return m.train()


def inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(2, 1, 8, 10, generator=g) for _ in range(N_THREADS * N_CALLS)]


def state(m: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], int]:
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    flags = [mod.training for mod in m.modules()]
    hooks = sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules())
    return sd, flags, hooks


def run_threads(dets: list[wsdet.Detector], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    out: list[torch.Tensor | None] = [None] * len(xs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)

    def work(t: int) -> None:
        try:
            barrier.wait()  # start together: the first calls are concurrent
            for i in range(t, len(xs), N_THREADS):
                out[i] = dets[i % len(dets)].attention(xs[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert all(o is not None for o in out)
    return [o for o in out if o is not None]


METHODS = [
    "gp_unet",
    "gp_unet_no_residual",
    "gated_attention",
    "grad_cam",
    "grad",
    "guided_backprop",
    "intensity",
]


def test_every_built_in_method_is_covered() -> None:
    assert set(METHODS) <= set(wsdet.available_methods())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shared", ["one_detector", "two_detectors"])
def test_concurrent_calls_equal_serial_calls(method: str, shared: str) -> None:
    model = make_model()
    xs = inputs()
    before = state(model)
    serial_det = wsdet.Detector(model, method=method)
    serial = [serial_det.attention(x) for x in xs]
    n = 1 if shared == "one_detector" else 2
    dets = [wsdet.Detector(model, method=method) for _ in range(n)]  # fresh: no warm-up
    got = run_threads(dets, xs)
    for a, b in zip(got, serial, strict=True):
        assert torch.equal(a, b)
    after = state(model)
    assert after[1] == before[1]  # training flags: the user's train mode kept
    assert after[2] == before[2] == 0
    for k, v in before[0].items():
        assert torch.equal(after[0][k], v), k  # BatchNorm statistics untouched
