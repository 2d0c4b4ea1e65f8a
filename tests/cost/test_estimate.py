"""Measured beats calibrated beats roofline; provenance; tables from another CPU; whole plans."""

import dataclasses
import json

import pytest

from hwq.cost import CostModel, LatencyTable, Measurement, Workload, estimate_plan
from hwq.cost.machine import this_cpu
from hwq.cost.options import Option, family
from hwq.cost.table import user_path
from hwq.errors import ConfigError, DataError
from hwq.plan import BitPlan, LayerSpec
from hwq.target import load_target

AVX2 = "x86-avx2"
SHAPES = [Workload("conv2d", (c, s, s), 2 * c, (3, 3), (1, 1), (1, 1)) for c, s in ((16, 28), (32, 14), (64, 7), (8, 56))]


def _table(device=None, path=None):
    t = LatencyTable(AVX2, device or this_cpu(), path=path)
    target = load_target(AVX2)
    for i, wl in enumerate(SHAPES):
        for b in (1, 16):
            # 40 % of the roofline's compute time, plus 5 us: what a fit should recover
            roof = CostModel(target, table=None).kernel(wl, family("x86-avx2"), b)
            t.add(wl, "x86-avx2", b, Measurement(0.005 + roof.compute_ms / 0.4, 0, 0, 5, "ConvTile(tw=4, ob=2)"))
    return t


def test_measured_beats_calibrated_beats_roofline(tmp_path):
    table = _table(path=tmp_path / "t.json")
    model = CostModel(AVX2, table)
    w8 = model.estimate(SHAPES[0], Option(8, 8), batch=16)
    assert w8.source == "measured" and w8.ms == table.get(SHAPES[0], "x86-avx2", 16).median_ms
    assert "median of 5" in w8.provenance and str(tmp_path / "t.json") in w8.provenance
    new = Workload("conv2d", (48, 20, 20), 96, (3, 3), (1, 1), (1, 1))
    cal = model.estimate(new, Option(8, 8), batch=4)
    assert cal.source == "calibrated" and "x86-avx2 efficiency fitted to 8 entries" in cal.provenance
    assert cal.ms == pytest.approx(0.005 + cal.compute_ms / 0.4, rel=1e-3)     # the fit recovers the law
    roof = model.estimate(new, Option(7, 8), batch=4)          # vpmaddubsw: nothing measured
    assert roof.source == "roofline" and roof.kernel == "x86-avx2-maddubs" and roof.ms == max(roof.compute_ms, roof.memory_ms)
    assert "roofline of target file 'x86-avx2'" in roof.provenance


def test_table_from_a_cpu_with_other_features_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HWQ_CACHE", str(tmp_path))
    monkeypatch.setattr("hwq.cost.table.SHIPPED_DIR", tmp_path / "shipped")     # only the tables made here
    me = this_cpu()
    other = dataclasses.replace(me, name="Other CPU", features=("avx2",) if me.features != ("avx2",) else ("avx2", "avx512"))
    _table(other).save(user_path(AVX2, other))
    model = CostModel(AVX2)
    assert model.table is None and "Other CPU" in model.note and "not used" in model.note
    assert model.estimate(SHAPES[0], Option(8, 8)).source == "roofline"
    # a table from this CPU is taken, and wins
    _table(me).save(user_path(AVX2, me))
    model = CostModel(AVX2)
    assert model.table is not None and model.table.device == me and model.note == ""
    assert model.estimate(SHAPES[0], Option(8, 8)).source == "measured"
    # same features, another model: used, and said
    twin = dataclasses.replace(me, model="999")
    (tmp_path / "measured" / AVX2 / user_path(AVX2, me).name).unlink()
    _table(twin).save(user_path(AVX2, twin))
    model = CostModel(AVX2)
    assert model.table is not None and "another CPU model" in model.note


def test_corrupt_and_foreign_tables_name_the_file(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"format": "hwq-latency-table", "version": 1, "kern')
    with pytest.raises(DataError, match="corrupt or truncated"):
        LatencyTable.load(bad)
    bad.write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(DataError, match="'something-else'"):
        LatencyTable.load(bad)
    doc = _table().to_json()
    doc["kernels"][next(iter(doc["kernels"]))]["median_ms"] = -1
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="malformed.*median_ms"):
        LatencyTable.load(bad)


def test_table_round_trip_records_provenance(tmp_path):
    t = _table(path=tmp_path / "t.json")
    t.peaks["bandwidth_gbs"] = 12.5
    t.save()
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.kernels == t.kernels and back.device == this_cpu() and back.peaks["bandwidth_gbs"] == 12.5
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["device"]["features"] == list(this_cpu().features) and doc["created"] and doc["updated"]


def test_plan_estimate(rescnn_graph):
    est = estimate_plan(rescnn_graph, BitPlan(), AVX2, batch=16, table=None)
    assert [r.name for r in est.rows] == ["stem.0", "down.0", "block1.0", "block2.0", "fc"]
    assert est.total_ms == pytest.approx(est.layers_ms + est.glue_ms) and est.glue_ops > 0
    assert {r.estimate.source for r in est.rows} == {"roofline"}
    fast = estimate_plan(rescnn_graph, BitPlan(default=LayerSpec(4, 4)), AVX2, batch=16, table=None)
    assert [r.estimate.kernel for r in fast.rows][1:4] == ["x86-avx2-s4"] * 3
    assert "total" in est.table() and json.loads(est.dumps())["layers"][0]["name"] == "stem.0"
    with pytest.raises(ConfigError, match="'block9'"):
        estimate_plan(rescnn_graph, BitPlan(layers={"block9": LayerSpec(4, 8)}), AVX2, table=None)
    with pytest.raises(ConfigError, match="LatencyTable, None or 'auto'"):
        CostModel(AVX2, table="measured")


def test_measured_bandwidth_replaces_the_files(tmp_path):
    table = _table(path=tmp_path / "t.json")
    assert CostModel(AVX2, table).target.memory.bandwidth_gbs == load_target(AVX2).memory.bandwidth_gbs
    table.peaks["bandwidth_gbs"] = 33.0
    model = CostModel(AVX2, table)
    assert model.target.memory.bandwidth_gbs == 33.0
    roof = model.estimate(SHAPES[0], Option(7, 8), batch=1)       # nothing measured for vpmaddubsw
    assert roof.memory_ms == pytest.approx(roof.bytes / 33e9 * 1e3)
