import pytest

from hwq.errors import ConfigError
from hwq.plan import BitPlan, LayerSpec
from hwq.spec import QuantSpec


def test_quant_spec_ranges_and_json():
    s = QuantSpec(4, signed=True, granularity="per_channel")
    assert (s.qmin, s.qmax, s.storage_dtype) == (-7, 7, "int8")
    u = QuantSpec(8, signed=False)
    assert (u.qmin, u.qmax, u.storage_dtype) == (0, 255, "uint8")
    assert QuantSpec.from_json(s.to_json()) == s


@pytest.mark.parametrize("kwargs, word", [({"bits": 1}, "bits"), ({"bits": 16}, "bits"),
                                          ({"granularity": "per_row"}, "per_channel")])
def test_quant_spec_rejects_bad_values(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        QuantSpec(**kwargs)


def test_bit_plan_round_trip_and_name_check():
    plan = BitPlan(layers={"block1.0": LayerSpec(4, 8), "fc": LayerSpec(8, 8)})
    assert BitPlan.from_json(plan.to_json()) == plan
    assert plan.spec_for("block1.0").weight_bits == 4 and plan.spec_for("stem.0") == plan.default
    with pytest.raises(ConfigError, match="blok1.0"):
        BitPlan(layers={"blok1.0": LayerSpec()}).check_names(["block1.0", "fc"])


def test_bit_plan_rejects_bad_json():
    with pytest.raises(ConfigError):
        BitPlan.from_json("{not json")
    with pytest.raises(ConfigError, match="weight_bits"):
        LayerSpec(weight_bits=9)
