"""Every bad input a user can give hwq, tried through the CLI (one line on stderr, exit status 2, the
bad value and the valid choices in it, nothing written) or the Python API (an ``HwqError`` saying
the same). The README's reliability table lists these cases and their messages."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from hwq.cli import main
from hwq.errors import ArtifactError, DataError, TargetError, UnsupportedOpError
from hwq.models import ResCNN
from hwq.qat import quantize_ptq, run_reference
from hwq.lower import compile_model


def _cli_error(capsys, args) -> str:
    """Run ``hwq ARGS``: it must fail with exit status 2 and exactly one line on stderr."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hwq: error: "), err
    return err


def _no_files(directory):
    return [p.name for p in directory.iterdir() if p.is_file()]


# ------------------------------------------------------------------------------ targets and plans
def test_unknown_target_suggests_the_close_one(capsys):
    err = _cli_error(capsys, ["cost", "rescnn", "--target", "x86-hots"])
    assert "'x86-hots'" in err and "did you mean 'x86-host'" in err and "'raspberry-pi-5'" in err


def test_target_file_with_a_bad_field_names_it(tmp_path, capsys):
    from hwq.target import SHIPPED_DIR

    text = (SHIPPED_DIR / "x86-avx2.toml").read_text()
    bad = tmp_path / "x86-avx2.toml"
    bad.write_text(text.replace("clock_ghz = ", 'clock_ghz = "fast" #', 1))
    err = _cli_error(capsys, ["cost", "rescnn", "--target", str(bad)])
    assert "'compute.clock_ghz' must be a number, got 'fast'" in err


def test_plan_naming_a_missing_layer_lists_close_matches(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": {"stem.O": {"weight_bits": 4, "act_bits": 8}}}))
    out = tmp_path / "cost.json"
    err = _cli_error(capsys, ["cost", "rescnn", "--plan", str(plan), "--json", str(out)])
    assert "'stem.O' (did you mean 'stem.0'?)" in err and "'block1.0'" in err
    assert not out.exists()


@pytest.mark.parametrize("text, words", [
    ('{"layers": {"stem.0": {"weight_bits": 4, "act_', "corrupt or truncated"),
    ("[1, 2]", "is an object with fields 'default', 'layers', 'version'"),
    ('{"default": {"weight_bits": 9}}', "field default: LayerSpec.weight_bits must be an int in 2..8, got 9"),
    ('{"default": {"wbits": 4}}', "unknown BitPlan field 'wbits' in default; valid: 'act_bits', 'weight_bits'"),
])
def test_bad_plan_files_name_the_file_and_the_field(tmp_path, capsys, text, words):
    plan = tmp_path / "plan.json"
    plan.write_text(text)
    err = _cli_error(capsys, ["cost", "rescnn", "--plan", str(plan)])
    assert repr(str(plan)) in err and words in err


# ------------------------------------------------------------------------------ models and data
class _Cumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=3)


class _Unlowerable(nn.Module):
    """``cumsum`` has no integer form (a float island) and no float lowering in hwq either."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Sequential(_Cumsum())

    def forward(self, x):
        return self.head(self.conv(x))


class _Branchy(nn.Module):
    """Data-dependent control flow inside a submodule: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_unsupported_operator_names_its_module():
    graph = quantize_ptq(_Unlowerable().eval(), torch.rand(4, 1, 8, 8))     # a float island in the graph
    with pytest.raises(UnsupportedOpError, match=r"'aten.cumsum.default'.*module 'head.0'.*float islands run: .*sigmoid"):
        compile_model(graph, "x86-host")


def test_untraceable_model_names_the_module_export_failed_in():
    model = nn.Sequential(nn.Identity(), _Branchy()).eval()
    with pytest.raises(UnsupportedOpError, match=r"torch.export cannot trace the model in module '1'"):
        quantize_ptq(model, torch.rand(4, 1, 8, 8))


@pytest.mark.parametrize("x, words", [
    (torch.rand(4, 3, 28, 28), r"cannot run on an input of shape \(1, 3, 28, 28\).*module 'stem.0'.*3 channels"),
    ((torch.rand(4, 1, 28, 28) * 255).to(torch.uint8), "must be float .* got dtype torch.uint8"),
    (torch.rand(4, 1, 28, 28).index_put_((torch.tensor([2]),), torch.tensor(float("nan"))),
     r"holds 784 NaN or Inf values \(the first at index \(2, 0, 0, 0\)\)"),
    (torch.rand(4, 1, 28, 28).index_put_((torch.tensor([0]),), torch.tensor(float("inf"))), "NaN or Inf"),
])
def test_bad_calibration_data_says_what_is_wrong(x, words):
    with pytest.raises(DataError, match=words):
        quantize_ptq(ResCNN(width=8).eval(), x)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_name_the_parameter(value):
    model = ResCNN(width=8).eval()
    with torch.no_grad():
        model.block1[0].weight[0, 0, 0, 0] = value
    with pytest.raises(DataError, match=r"NaN or Inf in \['block1.0.weight'\]"):
        quantize_ptq(model, torch.rand(4, 1, 28, 28))


def test_wrong_input_shape_or_dtype(rescnn_graph):
    with pytest.raises(DataError, match=r"shape \(2, 3, 28, 28\); this graph takes \(N, 1, 28, 28\)"):
        run_reference(rescnn_graph, torch.zeros(2, 3, 28, 28, dtype=torch.int64))
    from hwq.lower import compile_model

    compiled = compile_model(rescnn_graph, "x86-avx2")
    with pytest.raises(DataError, match=r"shape \(2, 28, 28\) and dtype float32; this model takes \(N, 1, 28, 28\)"):
        compiled(torch.zeros(2, 28, 28).numpy())
    with pytest.raises(DataError, match=r"dtype int64; this model takes \(N, 1, 28, 28\) uint8"):
        compiled.run_int(torch.zeros(2, 1, 28, 28, dtype=torch.int64).numpy())


def test_missing_data_set_says_how_to_get_it(tmp_path, capsys):
    err = _cli_error(capsys, ["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert "'train-images-idx3-ubyte.gz'" in err and "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()


def test_missing_cross_compiler_names_the_debian_package():
    from hwq.lower.tvm_target import cross_fcompile
    from hwq.target import load_target

    pi = dataclasses.replace(load_target("raspberry-pi-5"), cross_compiler="aarch64-nowhere-linux-gnu-g++")
    with pytest.raises(TargetError, match=r"'aarch64-nowhere-linux-gnu-g\+\+'.*apt-get install g\+\+-aarch64-nowhere-linux-gnu"):
        cross_fcompile(pi)


# ------------------------------------------------------------------------------ corrupt files
def test_corrupt_or_truncated_checkpoints(tmp_path):
    from hwq.models.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint({"w": torch.arange(1000)}, tmp_path / "c.pt")
    assert _no_files(tmp_path) == ["c.pt"]
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"QAT checkpoint '.*c.pt' is truncated or not a torch checkpoint"):
        load_checkpoint(path, "QAT checkpoint")
    path.write_text("garbage")
    with pytest.raises(DataError, match="truncated or not a torch checkpoint"):
        load_checkpoint(path, "QAT checkpoint")
    with pytest.raises(DataError, match="no QAT checkpoint at"):
        load_checkpoint(tmp_path / "none.pt", "QAT checkpoint")


def test_corrupt_tuning_file(tmp_path, monkeypatch):
    from hwq.lower.kernels import tuning

    monkeypatch.setenv("HWQ_TUNED_DIR", str(tmp_path))
    (tmp_path / "x86-avx2.json").write_text('{"version": 1, "workl')
    with pytest.raises(DataError, match=r"tuned tile file '.*x86-avx2.json' is corrupt or truncated"):
        tuning.load_configs("x86-avx2")


def test_corrupt_or_truncated_artifact(tmp_path, rescnn_graph):
    from hwq.lower import compile_model, load_model

    path = compile_model(rescnn_graph, "x86-avx2").save(tmp_path / "art")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]           # no temporary sibling left
    lib = path / "model.so"
    lib.write_bytes(lib.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"model.so' is corrupt: sha256"):
        load_model(path)
    (path / "manifest.json").write_text('{"format": "hwq-artifact", "vers')
    with pytest.raises(ArtifactError, match=r"manifest.json' is corrupt"):
        load_model(path)
