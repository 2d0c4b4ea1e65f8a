"""Shared fixtures: small models with non-trivial BN statistics, calibrated on random data."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


def randomize_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters (eval mode then matters)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def zoo_models():
    """Small models covering every op the converter supports (built lazily: torch is imported here)."""
    import torch
    from torch import nn

    from hwq.models import ResCNN

    class OpsNet(nn.Module):
        """conv with bias, strided, dilated, depthwise and grouped convs, ReLU6, max-pool, a standalone
        ReLU, a residual add without ReLU, mean pooling and two linear layers."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, 1, 1)
            self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 2, dilation=2, bias=False), nn.BatchNorm2d(16))
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
            self.gc = nn.Sequential(nn.Conv2d(16, 24, 1, groups=4, bias=False), nn.BatchNorm2d(24))
            self.c3 = nn.Conv2d(24, 24, 3, 1, 1)
            self.fc1 = nn.Linear(24, 32)
            self.fc2 = nn.Linear(32, 5)

        def forward(self, x):
            x = torch.relu(self.c1(x))
            x = nn.functional.max_pool2d(x, 3, 2, 1)
            x = torch.relu(self.c2(x))
            x = self.gc(self.dw(x))
            x = self.c3(x) + x
            x = torch.relu(x)
            x = x.mean(dim=(2, 3), keepdim=True)
            return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

    class ReluOut(nn.Module):
        """Ends in a ReLU: the graph's output is a uint8 tensor rather than an int32 accumulator."""

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c(x))

    torch.manual_seed(0)
    return {"rescnn": (randomize_bn(ResCNN(width=8)), (1, 28, 28), False),
            "opsnet": (randomize_bn(OpsNet()), (3, 20, 20), True),
            "reluout": (ReluOut().eval(), (2, 9, 9), True)}


def calibrated_graph(model, shape, signed, n=64, seed=0, plan=None):
    """PTQ of ``model`` on random inputs: uniform [0, 1] (unsigned) or normal (signed)."""
    import torch

    from hwq.plan import BitPlan
    from hwq.qat import quantize_ptq

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g) if signed else torch.rand(n, *shape, generator=g)
    return quantize_ptq(model, x, plan or BitPlan()), x


@pytest.fixture(scope="session")
def rescnn_graph():
    """A small ResCNN (width 8) quantized W8A8 on random data."""
    model, shape, signed = zoo_models()["rescnn"]
    return calibrated_graph(model, shape, signed)[0]


def check_borders(graph, target, x_int) -> bool:
    """Each float -> integer border (``Quantize``) of ``graph`` alone, built for ``target``: equal to
    the reference, or 1 LSB away on at most 1 % of its elements. Returns whether all were equal."""
    from hwq.lower import compile_model
    from hwq.qat.reference import run_reference

    agree = True
    for node in graph.nodes:
        if node.op != "quantize":
            continue
        sub = graph.up_to(node.output)
        ref = run_reference(sub, x_int).numpy()
        out = compile_model(sub, target).run_int(x_int.numpy().astype(sub.input.dtype))
        diff = np.abs(out.astype(np.int64) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (node.name, diff.max(), (diff > 0).mean())
        agree &= not diff.any()
    return agree


def aarch64_userland():
    """``(qemu binary, cache directory with root/ and site/)`` for running aarch64 builds, or skip
    saying what is missing (built once by ``scripts/aarch64_sysroot.sh``)."""
    import shutil
    import subprocess
    from pathlib import Path

    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.skip("qemu-aarch64 not found (Debian package qemu-user or qemu-user-static)")
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not found (Debian package g++-aarch64-linux-gnu)")
    script = Path(__file__).resolve().parents[1] / "scripts" / "aarch64_sysroot.sh"
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/aarch64_sysroot.sh took over 30 minutes (slow or no network?)")
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        pytest.skip(f"the aarch64 user space could not be built (scripts/aarch64_sysroot.sh exited "
                    f"{proc.returncode}; no network or no apt-get?): {tail}")
    return qemu, Path(proc.stdout.strip().splitlines()[-1])
