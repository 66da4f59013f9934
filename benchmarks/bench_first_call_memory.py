"""Peak memory of a Detector's first call (layer discovery + the map) vs a bare forward.

Each configuration runs in a fresh Python process, which builds the model and the input,
records its peak resident set size (``ru_maxrss``), runs the measured call once, and
reports the growth of the peak. The ratio divides a method's first call by the bare
forward pass under ``torch.inference_mode`` on the same model and input (target for the
CAM family: <= 1.2; the gradient family also holds a backward pass, so its reference is
printed as well).

The model is GPUnet(dim=3) (a 3D U-Net with skips and a GAP + Linear head), default width
32, on one 48×96×96 volume, wrapped in ``nn.Sequential`` so that its ``wsdet_layers()``
declaration is hidden and automatic discovery runs as on a user's model.

Run ``python benchmarks/bench_first_call_memory.py`` (``--size D H W`` to change the
volume, ``--methods ...`` to choose).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch, wsdet
from wsdet.models import GPUnet
torch.manual_seed(0)
torch.set_num_threads(2)
size, what, declared = json.loads(sys.argv[1])
model = GPUnet(dim=3).eval()
if not declared:
    model = torch.nn.Sequential(model)
x = torch.rand(1, 1, *size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if what == "forward":
    with torch.inference_mode():
        model(x)
elif what == "forward_backward":
    leaf = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(leaf).sum(), leaf)
else:
    wsdet.Detector(model, method=what).attention(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mib": (after - before) / 1024}))
"""


def measure(size: list[int], what: str, declared: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([size, what, declared])],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["mib"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=3, default=[48, 96, 96])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["gp_unet", "gated_attention", "grad_cam", "grad", "guided_backprop"],
    )
    args = p.parse_args()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
    fwd = measure(args.size, "forward", False)
    fwd_bwd = measure(args.size, "forward_backward", False)
    print(f"GPUnet(dim=3) on 1x1x{'x'.join(map(str, args.size))}, fresh process per row")
    print(f"bare forward (inference_mode): +{fwd:.0f} MiB; forward + backward: +{fwd_bwd:.0f}")
    print()
    print("| first call | declared layers | peak growth MiB | / forward | / fwd+bwd |")
    print("| --- | --- | ---: | ---: | ---: |")
    for method in args.methods:
        for declared in (False, True):
            mib = measure(args.size, method, declared)
            print(
                f"| {method} | {'yes' if declared else 'no (auto)'} | {mib:.0f} | "
                f"{mib / fwd:.2f} | {mib / fwd_bwd:.2f} |"
            )


if __name__ == "__main__":
    main()
