"""Calibration streams: its memory is one batch's live activations, whatever the number of images."""

import subprocess
import sys
import textwrap
import weakref

import torch
from torch import nn

from hwq.qat import quantize_ptq
from hwq.qat.convert import CALIBRATION_BATCH, calibrate
from hwq.qat.exported import export_model
from hwq.qat.exported import run_graph as exported_run_graph

PEAK = textwrap.dedent('''
    import resource
    import torch
    from torch import nn
    from hwq.qat import quantize_ptq

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 10)).eval()
    few, many = torch.rand(32, 3, 32, 32), torch.rand(512, 3, 32, 32)   # 0.8 MB of activations per image
    quantize_ptq(model, few)
    before = peak_mib()
    quantize_ptq(model, many)
    print(peak_mib() - before)
''')


def test_peak_memory_does_not_grow_with_the_calibration_set():
    done = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, timeout=300, check=True)
    growth = float(done.stdout.split()[-1])
    # holding every activation of 512 images would add about 400 MB
    assert growth < 60, f"calibrating on 16x more images raised the peak by {growth:.0f} MiB"


def test_calibration_keeps_only_the_live_values_of_one_batch(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())]).eval()
    ep = export_model(model, torch.rand(1, 4, 8, 8))
    seen, batches = [], []

    class Probe:
        """Batches that record their sizes, and the values still alive at each record."""

        def __iter__(self):
            for i in range(0, 100, CALIBRATION_BATCH):
                batches.append(min(CALIBRATION_BATCH, 100 - i))
                yield torch.rand(batches[-1], 4, 8, 8)

    def run_graph(ep, x, record):
        refs = []

        def spy(node, value):
            refs.append(weakref.ref(value))
            seen.append(sum(r() is not None for r in refs))
            record(node, value)
        return exported_run_graph(ep, x, spy)

    # the module itself: the package's name `convert` is the function
    monkeypatch.setattr(sys.modules["hwq.qat.convert"], "run_graph", run_graph)
    ranges = calibrate(ep, Probe())
    assert batches == [32, 32, 32, 4] and len(ranges) == 13       # 12 values and the input
    assert max(seen) <= 2, seen                                    # an op's input and its output


class _ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_quantize_ptq_result_does_not_depend_on_the_batch_size():
    model = _ConvLinear().eval()
    x = torch.randn(70, 3, 8, 8)
    a, b = quantize_ptq(model, x, batch_size=7), quantize_ptq(model, x, batch_size=70)
    assert {n: t.scale for n, t in a.tensors.items()} == {n: t.scale for n, t in b.tensors.items()}
    assert all((na.weight == nb.weight).all() and (na.bias == nb.bias).all()
               for na, nb in zip(a.nodes, b.nodes) if hasattr(na, "weight"))


def test_learned_scales_start_the_same_whatever_the_batch_size():
    from hwq.plan import BitPlan, LayerSpec
    from hwq.qat import quantize_
    from hwq.qat.api import act_quantizers

    model = _ConvLinear().eval()
    x = torch.randn(70, 3, 8, 8)
    scales = [[float(q.current_scale().detach()) for q in act_quantizers(
        quantize_(model, BitPlan(default=LayerSpec(4, 4)), calibration=x, range_mode="learned", batch_size=bs))]
        for bs in (7, 70)]
    assert scales[0] == scales[1]
