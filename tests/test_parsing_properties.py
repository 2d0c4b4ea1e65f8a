"""Property tests of the two documents users write: target files and bit plans. Random, mutated and
truncated documents either parse or raise hwq's own error (``TargetError`` / ``ConfigError``) with
a message; never another exception, never a traceback from deep inside. Pure: no torch, no tvm."""

import copy
import json
import math
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.errors import ConfigError, TargetError
from hwq.plan import BitPlan, LayerSpec
from hwq.target import SHIPPED_DIR, Target, load_target

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)
TARGET_TEXT = (SHIPPED_DIR / "x86-avx2.toml").read_text()
TARGET_DATA = tomllib.loads(TARGET_TEXT)

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=True),
                     st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                     max_leaves=12)
_toml_values = st.recursive(
    st.one_of(st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=True), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)),
    max_leaves=6)


def _paths(d, prefix=()):
    """Every key path of a nested dict, tables included."""
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


PATHS = sorted(_paths(TARGET_DATA))


def _parses_or_says_why(fn, error):
    try:
        fn()
    except error as e:
        assert str(e).strip() and "\n" not in str(e)
        return e
    return None


@SETTINGS
@given(st.integers(0, len(TARGET_TEXT) - 1))
def test_truncated_target_files_give_a_target_error_or_the_whole_target(tmp_path_factory, cut):
    path = tmp_path_factory.mktemp("t") / "x86-avx2.toml"
    path.write_text(TARGET_TEXT[:cut])
    if _parses_or_says_why(lambda: load_target(path), TargetError) is None:   # cut in a trailing comment
        assert load_target(path) == load_target("x86-avx2")


@SETTINGS
@given(st.sampled_from(PATHS), _toml_values, st.booleans())
def test_mutated_target_documents_parse_or_name_the_field(key, value, delete):
    data = copy.deepcopy(TARGET_DATA)
    table = data
    for k in key[:-1]:
        table = table[k]
    if delete:
        del table[key[-1]]
    else:
        table[key[-1]] = value
    err = _parses_or_says_why(lambda: Target.from_dict(data, source="x86-avx2.toml"), TargetError)
    if err is not None and key[0] not in ("tvm",):
        # a bad field is named (the top-level key, or the nested one that is wrong)
        assert any(part in str(err) for part in key) or "must" in str(err)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_are_not_a_target_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("t") / "x86-avx2.toml"
    path.write_bytes(data)
    assert _parses_or_says_why(lambda: load_target(path), TargetError) is not None


@SETTINGS
@given(_json)
def test_random_json_is_a_plan_or_a_config_error(doc):
    text = json.dumps(doc)
    plan = None
    try:
        plan = BitPlan.from_json(text)
    except ConfigError as e:
        assert str(e).strip() and "\n" not in str(e)
    if plan is not None:
        assert BitPlan.from_json(plan.to_json()) == plan


_specs = st.builds(LayerSpec, st.integers(2, 8), st.integers(2, 8))


@SETTINGS
@given(st.dictionaries(st.text(min_size=1, max_size=10), _specs, max_size=5), _specs, st.data())
def test_truncated_plans_give_a_config_error(layers, default, data):
    text = BitPlan(default=default, layers=layers).to_json()
    cut = data.draw(st.integers(0, len(text) - 1))
    if not text[:cut].strip().endswith("}") or text[:cut].count("{") != text[:cut].count("}"):
        assert _parses_or_says_why(lambda: BitPlan.from_json(text[:cut]), ConfigError) is not None
    assert BitPlan.from_json(text) == BitPlan(default=default, layers=layers)


@SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_non_finite_and_negative_rates_are_refused(value):
    data = copy.deepcopy(TARGET_DATA)
    data["compute"]["clock_ghz"] = value
    err = _parses_or_says_why(lambda: Target.from_dict(data), TargetError)
    assert (err is None) == (math.isfinite(value) and value > 0)
