"""Targets as data: one TOML file per board in ``hwq/targets/`` (shipped in the package), validated on load.

A target file says what a board can do (compute units, clock, peak operations per cycle per data
type, cache sizes, memory bandwidth, native integer widths, instruction features) and how TVM
compiles for it: the ``[tvm]`` table, which ``hwq.lower.tvm_target.to_tvm_target`` hands to
``tvm.target.Target``. This module is plain data: it imports neither torch nor tvm.

Example::

    >>> t = load_target("raspberry-pi-5")
    >>> t.peak_ops_per_s("int8") / 1e9   # 4 cores x 2.4 GHz x 64 ops per cycle
    614.4
    >>> t.has_feature("dotprod"), t.is_cross
    (True, True)
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwq.errors import TargetError, choices

SCHEMA_VERSION = 1
KINDS = {"cpu": "llvm", "cuda": "cuda"}  # target kind -> the TVM target kind it compiles with
DTYPES = ("fp32", "fp16", "int8", "int4")
REQUIRED_DTYPES = ("fp32", "int8")
WIDTHS = (4, 8)  # integer widths a target may call native: those with an "intN" peak rate
FEATURES = frozenset({"avx2", "avx512", "avx512vnni", "neon", "dotprod", "i8mm", "dp4a",
                      "tensorcore_int8", "tensorcore_int4"})
ENV_DIR = "HWQ_TARGETS_DIR"  # overrides the directory that target names are looked up in
# the target files ship inside the package (package data), so an installed hwq finds them too
SHIPPED_DIR = Path(__file__).resolve().parent / "targets"

# The file's schema: section -> field -> expected type (in words, as the error messages say it).
_INT, _NUM, _STR, _TABLE = "an integer", "a number", "a string", "a table"
_INTS, _STRS = "a list of integers", "a list of strings"
_SCHEMA = {
    "": {"schema_version": _INT, "name": _STR, "vendor": _STR, "board": _STR, "description": _STR,
         "kind": _STR, "tvm": _TABLE, "compute": _TABLE, "memory": _TABLE, "integer": _TABLE,
         "toolchain": _TABLE},
    "compute": {"units": _INT, "clock_ghz": _NUM, "peak_ops_per_cycle": _TABLE, "instruction": _TABLE},
    "memory": {"bandwidth_gbs": _NUM, "l1d_kib": _INT, "l2_kib": _INT, "l3_kib": _INT},
    "integer": {"native_widths": _INTS, "features": _STRS},
    "toolchain": {"cross_compiler": _STR},
}
_OPTIONAL = {"memory.l3_kib"}


@dataclass(frozen=True)
class Compute:
    """Compute of a target: ``units`` CPU cores or GPU SMs at ``clock_ghz``.

    ``peak_ops_per_cycle`` maps a dtype (``'fp32'``, ``'fp16'``, ``'int8'``, ``'int4'``) to the
    peak operations per cycle of one unit (1 MAC = 2 ops); ``instruction`` names, per dtype, the
    instruction that reaches it. Both dicts are shared, not copies: do not mutate them.
    """

    units: int
    clock_ghz: float
    peak_ops_per_cycle: dict[str, float] = field(hash=False)
    instruction: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Memory:
    """Memory of a target. ``l1d_kib`` is per unit (per core, or a GPU SM's L1/shared memory);
    ``l2_kib`` is what one unit can use (its private L2, or the whole L2 where it is shared);
    ``l3_kib`` is the last-level cache shared by all units, 0 where there is none."""

    bandwidth_gbs: float
    l1d_kib: int
    l2_kib: int
    l3_kib: int = 0


@dataclass(frozen=True)
class Target:
    """One board, as described by its ``hwq/targets/<name>.toml`` file. Build it with
    :func:`load_target` (or :meth:`from_dict`), which validate it.

    Attributes:
        name: the file stem, e.g. ``'raspberry-pi-5'``.
        kind: ``'cpu'`` (built with LLVM) or ``'cuda'``.
        tvm: the ``[tvm]`` table, verbatim (``mcpu = 'host'`` still unresolved); do not mutate it,
            use :meth:`tvm_dict` for a copy.
        native_widths: integer widths with native compute, e.g. ``(8,)`` or ``(4, 8)``.
        features: instruction features that kernel rules key on, e.g. ``('neon', 'dotprod')``.
        cross_compiler: the C++ compiler that links for the board, ``''`` for the host's.
        source: the file it was loaded from (``None`` when built from a dict).
    """

    name: str
    vendor: str
    board: str
    description: str
    kind: str
    compute: Compute
    memory: Memory
    native_widths: tuple[int, ...]
    features: tuple[str, ...]
    cross_compiler: str
    tvm: dict[str, Any] = field(hash=False, repr=False)
    source: Path | None = field(default=None, compare=False)
    schema_version: int = SCHEMA_VERSION

    @property
    def is_cross(self) -> bool:
        """True when code for this target is linked by a cross compiler (it runs elsewhere)."""
        return self.cross_compiler != ""

    @property
    def host_triple(self) -> str:
        """LLVM triple of the CPU that runs the model's host code: the target's own for a CPU
        target, its ``[tvm.host]`` one for a GPU target; ``''`` means the build machine's."""
        spec = self.tvm if self.kind == "cpu" else self.tvm.get("host", {})
        return spec.get("mtriple", "")

    def tvm_dict(self) -> dict[str, Any]:
        """A deep copy of the ``[tvm]`` table, safe to edit before handing it to TVM."""
        return copy.deepcopy(self.tvm)

    def peak_ops_per_s(self, dtype: str) -> float:
        """Peak operations per second for ``dtype``: units x clock x ops per cycle per unit.

        Raises:
            TargetError: the target has no peak rate for ``dtype`` (e.g. ``'int4'`` on a CPU).
        """
        per_cycle = self.compute.peak_ops_per_cycle
        if dtype not in per_cycle:
            raise TargetError(f"target {self.name!r} has no peak rate for dtype {dtype!r}; "
                              f"it has: {choices(per_cycle)}")
        return self.compute.units * self.compute.clock_ghz * 1e9 * per_cycle[dtype]

    def has_feature(self, name: str) -> bool:
        """Whether the target has instruction feature ``name`` (one of :data:`FEATURES`)."""
        if name not in FEATURES:  # a typo would otherwise read as "no" forever
            raise TargetError(f"unknown feature {name!r}{_hint(name, FEATURES)}; valid: {choices(FEATURES)}")
        return name in self.features

    @classmethod
    def from_dict(cls, data: dict, source: str | os.PathLike | None = None) -> Target:
        """Validate a parsed target file and build the :class:`Target`.

        Args:
            data: the file's contents as ``tomllib`` returns them.
            source: the file they came from: named in every error, and ``name`` must equal its stem.

        Raises:
            TargetError: naming the file, the field (dotted, e.g. ``compute.clock_ghz``), the bad
                value and what would be valid.
        """
        src = Path(source) if source is not None else None
        where = str(src) if src is not None else "<target dict>"
        _check_table(data, "", where)
        for section in ("compute", "memory", "integer", "toolchain"):
            _check_table(data[section], section, where)
        if data["schema_version"] != SCHEMA_VERSION:
            raise TargetError(f"{where}: field 'schema_version' is {data['schema_version']!r}; "
                              f"this hwq reads schema version {SCHEMA_VERSION}")
        for key in ("name", "vendor", "board", "description"):
            if not data[key].strip():
                raise TargetError(f"{where}: field {key!r} must not be empty, got {data[key]!r}")
        if src is not None and data["name"] != src.stem:
            raise TargetError(f"{where}: field 'name' is {data['name']!r} but must equal the file "
                              f"name without '.toml', {src.stem!r}")
        kind = data["kind"]
        if kind not in KINDS:
            raise TargetError(f"{where}: field 'kind' is {kind!r}{_hint(kind, KINDS)}; valid: {choices(KINDS)}")
        compute, memory = _compute(data["compute"], where), _memory(data["memory"], where)
        widths, features = _integer(data["integer"], compute, where)
        _check_tvm(data["tvm"], kind, compute.units, where)
        return cls(name=data["name"], vendor=data["vendor"], board=data["board"],
                   description=data["description"], kind=kind, compute=compute, memory=memory,
                   native_widths=widths, features=features,
                   cross_compiler=data["toolchain"]["cross_compiler"], tvm=copy.deepcopy(data["tvm"]),
                   source=src, schema_version=data["schema_version"])


def load_target(name_or_path: str | os.PathLike) -> Target:
    """Load and validate a target: a name from ``hwq/targets/`` or a path to a ``.toml`` file.

    Names are looked up among the target files shipped in the package, or in ``$HWQ_TARGETS_DIR``
    where that is set.

    Example::

        >>> load_target("x86-cascadelake").peak_ops_per_s("int8")
        1280000000000.0

    Raises:
        TargetError: unknown name (the message lists the valid ones), unreadable file, TOML syntax
            error, or a file that does not match the schema.
    """
    path = _find(name_or_path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetError(f"{path}: not a valid TOML file: {e}") from e
    except OSError as e:
        raise TargetError(f"{path}: cannot read target file: {e}") from e
    return Target.from_dict(data, source=path)


def list_targets() -> list[Target]:
    """Every target in the targets directory, loaded and validated, sorted by name."""
    return [load_target(p) for p in sorted(_targets_dir().glob("*.toml"), key=lambda p: p.stem)]


def _targets_dir() -> Path:
    # Resolved per call, not at import, so HWQ_TARGETS_DIR set by a test or a shell takes effect.
    directory = Path(os.environ.get(ENV_DIR) or SHIPPED_DIR)
    if not directory.is_dir():
        raise TargetError(f"targets directory {str(directory)!r} does not exist (set ${ENV_DIR} to "
                          f"a directory of <name>.toml files)")
    return directory


def _find(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith(".toml") or "/" in text or os.sep in text:
        if not Path(text).is_file():
            raise TargetError(f"no target file at {text!r}")
        return Path(text)
    directory = _targets_dir()
    path = directory / f"{text}.toml"
    if not path.is_file():
        names = [p.stem for p in directory.glob("*.toml")]
        raise TargetError(f"unknown target {text!r}{_hint(text, names)}; valid targets: {choices(names)} "
                          f"(files in {str(directory)!r}), or a path to a .toml file")
    return path


def _hint(value: str, valid) -> str:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _is(value, kind: str) -> bool:
    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)  # TOML true is not a number

    return {_INT: integer(value),
            _NUM: integer(value) or isinstance(value, float),
            _STR: isinstance(value, str),
            _TABLE: isinstance(value, dict),
            _INTS: isinstance(value, list) and all(integer(v) for v in value),
            _STRS: isinstance(value, list) and all(isinstance(v, str) for v in value)}[kind]


def _check_table(table: dict, section: str, where: str) -> None:
    """Unknown, missing and wrongly typed fields of one section of the schema."""
    spec = _SCHEMA[section]
    name = f"[{section}]" if section else "the top level"
    for key in table:
        if key not in spec:
            raise TargetError(f"{where}: unknown field {_dotted(section, key)!r}{_hint(key, spec)}; "
                              f"valid fields of {name}: {choices(spec)}")
    for key, kind in spec.items():
        dotted = _dotted(section, key)
        if key not in table:
            if dotted in _OPTIONAL:
                continue
            raise TargetError(f"{where}: missing field {dotted!r} ({kind}); fields of {name}: {choices(spec)}")
        if not _is(table[key], kind):
            raise TargetError(f"{where}: field {dotted!r} must be {kind}, got {table[key]!r}")


def _positive(where: str, dotted: str, value, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):  # TOML allows nan, inf
        raise TargetError(f"{where}: field {dotted!r} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _dtype_table(table: dict, dotted: str, kind: str, where: str) -> dict:
    for dtype, value in table.items():
        if dtype not in DTYPES:
            raise TargetError(f"{where}: unknown dtype key {dotted + '.' + dtype!r}{_hint(dtype, DTYPES)}; "
                              f"valid dtypes: {choices(DTYPES)}")
        if not _is(value, kind):
            raise TargetError(f"{where}: field {dotted + '.' + dtype!r} must be {kind}, got {value!r}")
    return dict(table)


def _compute(table: dict, where: str) -> Compute:
    _positive(where, "compute.units", table["units"])
    _positive(where, "compute.clock_ghz", table["clock_ghz"])
    peaks = _dtype_table(table["peak_ops_per_cycle"], "compute.peak_ops_per_cycle", _NUM, where)
    for dtype in REQUIRED_DTYPES:
        if dtype not in peaks:
            raise TargetError(f"{where}: missing field 'compute.peak_ops_per_cycle.{dtype}' (a number); "
                              f"required dtypes: {choices(REQUIRED_DTYPES)}")
    for dtype, value in peaks.items():
        _positive(where, f"compute.peak_ops_per_cycle.{dtype}", value)
    instruction = _dtype_table(table["instruction"], "compute.instruction", _STR, where)
    if set(instruction) != set(peaks):
        raise TargetError(f"{where}: field 'compute.instruction' has dtypes {choices(instruction)} but must "
                          f"name one instruction per dtype of compute.peak_ops_per_cycle: {choices(peaks)}")
    return Compute(table["units"], float(table["clock_ghz"]), peaks, instruction)


def _memory(table: dict, where: str) -> Memory:
    for key in ("bandwidth_gbs", "l1d_kib", "l2_kib"):
        _positive(where, f"memory.{key}", table[key])
    _positive(where, "memory.l3_kib", table.get("l3_kib", 0), allow_zero=True)
    return Memory(float(table["bandwidth_gbs"]), table["l1d_kib"], table["l2_kib"], table.get("l3_kib", 0))


def _integer(table: dict, compute: Compute, where: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    for width in table["native_widths"]:
        if width not in WIDTHS:
            raise TargetError(f"{where}: field 'integer.native_widths' has {width!r}; valid widths: {choices(WIDTHS)}")
        if f"int{width}" not in compute.peak_ops_per_cycle:
            raise TargetError(f"{where}: field 'integer.native_widths' has {width} but "
                              f"'compute.peak_ops_per_cycle.int{width}' is missing")
    for feature in table["features"]:
        if feature not in FEATURES:
            raise TargetError(f"{where}: field 'integer.features' has unknown feature {feature!r}"
                              f"{_hint(feature, FEATURES)}; valid features: {choices(FEATURES)}")
    return tuple(sorted(set(table["native_widths"]))), tuple(table["features"])


def _check_tvm(tvm: dict, kind: str, units: int, where: str) -> None:
    """The few ``[tvm]`` fields hwq relies on; TVM itself checks the rest in ``to_tvm_target``."""
    want = KINDS[kind]
    if tvm.get("kind") != want:
        raise TargetError(f"{where}: field 'tvm.kind' must be {want!r} for a {kind!r} target, "
                          f"got {tvm.get('kind', '<missing>')!r}")
    if kind == "cpu":
        cores = tvm.get("num-cores", units)
        if cores != units:  # two numbers for one fact would drift apart
            raise TargetError(f"{where}: field 'tvm.num-cores' is {cores!r} but compute.units is {units}; "
                              f"they must agree")
        return
    arch = tvm.get("arch")
    if not isinstance(arch, str) or not re.fullmatch(r"sm_\d+a?", arch):
        raise TargetError(f"{where}: a cuda target needs field 'tvm.arch' as 'sm_XY' (e.g. 'sm_87'), "
                          f"got {arch!r}")
    host = tvm.get("host")
    if not isinstance(host, dict) or host.get("kind") != "llvm":
        raise TargetError(f"{where}: a cuda target needs a [tvm.host] table with kind = 'llvm' (the host "
                          f"CPU), got 'tvm.host' = {host!r}")
