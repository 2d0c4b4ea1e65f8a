"""Measured latency tables: what ``hwq profile`` timed on a device, with where and when.

One JSON file per target and device::

    {"format": "hwq-latency-table", "version": 1, "target": "x86-avx2",
     "device": {"name": "AMD EPYC", "family": "26", "model": "2", "features": [...], "machine": "x86_64"},
     "remote": null | "rpc 192.0.2.7:9090",          # measured over TVM RPC on a board
     "hwq_version": ..., "tvm_version": ..., "created": ..., "updated": ...,
     "peaks": {"int8_gops": ..., "bandwidth_gbs": ..., "how": "..."},      # measured on the device
     "kernels": {"<workload key>|<kernel>|b<batch>": {"median_ms", "q1_ms", "q3_ms", "repeats", "tile"}},
     "models": {"<model>|<plan>|b<batch>": {"median_ms", "kernels_ms", "glue_ops", "glue_mb"}}}

Shipped tables live in the package (``hwq/cost/measured/<target>/<device>.json``); what a user
measures goes to ``$HWQ_CACHE/measured/<target>/<device>.json`` and wins over a shipped one. A
target that runs on this machine only uses a table measured on a CPU with the same features:
another CPU's numbers are refused, and the reason is kept for the user to see (``find_table``).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path

from hwq.cost.machine import CpuId, runs_on_this_machine, this_cpu
from hwq.cost.workload import Workload
from hwq.errors import DataError
from hwq.fileio import atomic_write_json, cache_dir, read_json
from hwq.target import Target

FORMAT, VERSION = "hwq-latency-table", 1
SHIPPED_DIR = Path(__file__).resolve().parent / "measured"
WHAT = "measured latency table"


@dataclass(frozen=True)
class Measurement:
    """One timed workload: the median and quartiles of the repeats, in ms, and the tile used."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    tile: str = ""

    def to_json(self) -> dict:
        return {"median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms,
                "repeats": self.repeats, "tile": self.tile}


def kernel_key(workload: Workload, kernel: str, batch: int) -> str:
    return f"{workload.key}|{kernel}|b{batch}"


def parse_kernel_key(key: str) -> tuple[Workload, str, int]:
    """Inverse of :func:`kernel_key`."""
    try:
        wl, kernel, b = key.split("|")
        return Workload.from_key(wl), kernel, int(b[1:])
    except ValueError:
        raise DataError(f"not a kernel entry key: {key!r} (form '<workload>|<kernel>|b<batch>')") from None


def device_slug(device: CpuId, remote: str | None = None) -> str:
    """A file name for a device: ``amd-epyc-f26-m2-avx2-avx512-avx512vnni`` (or ``remote``)."""
    if remote:
        return "remote"
    text = f"{device.name}-f{device.family}-m{device.model}-{'-'.join(device.features) or 'nofeatures'}"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass
class LatencyTable:
    """A measured table (mutable while ``hwq profile`` fills it; saved atomically after each step)."""

    target: str
    device: CpuId
    remote: str | None = None
    hwq_version: str = ""
    tvm_version: str = ""
    created: str = ""
    peaks: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    path: Path | None = None

    def get(self, workload: Workload, kernel: str, batch: int) -> Measurement | None:
        return self.kernels.get(kernel_key(workload, kernel, batch))

    def add(self, workload: Workload, kernel: str, batch: int, m: Measurement) -> None:
        self.kernels[kernel_key(workload, kernel, batch)] = m

    def describe(self) -> str:
        where = self.remote or self.device.describe()
        return f"table {str(self.path) if self.path else '<unsaved>'} measured on {where}"

    def to_json(self) -> dict:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return {"format": FORMAT, "version": VERSION, "target": self.target, "device": self.device.to_json(),
                "remote": self.remote, "hwq_version": self.hwq_version, "tvm_version": self.tvm_version,
                "created": self.created or now, "updated": now, "peaks": self.peaks,
                "kernels": {k: v.to_json() for k, v in sorted(self.kernels.items())},
                "models": dict(sorted(self.models.items()))}

    def save(self, path=None) -> Path:
        """Write the table atomically (a reader or a killed profile never sees half of it)."""
        path = Path(path or self.path or user_path(self.target, self.device, self.remote))
        atomic_write_json(path, self.to_json())
        self.path = path
        return path

    @classmethod
    def load(cls, path) -> "LatencyTable":
        """Read and validate a table; a corrupt, truncated or foreign file is a ``DataError`` naming it."""
        d = read_json(path, WHAT)
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise DataError(f"{WHAT} {str(path)!r} has format {d.get('format')!r} version {d.get('version')!r}; "
                            f"this hwq reads {FORMAT!r} version {VERSION}")
        try:
            kernels = {}
            for k, v in d["kernels"].items():
                parse_kernel_key(k)
                m = Measurement(float(v["median_ms"]), float(v["q1_ms"]), float(v["q3_ms"]), int(v["repeats"]),
                                str(v.get("tile", "")))
                if not m.median_ms > 0:
                    raise ValueError(f"median_ms of {k!r} is {m.median_ms!r}")
                kernels[k] = m
            return cls(str(d["target"]), CpuId.from_json(d["device"]), d.get("remote"), str(d.get("hwq_version", "")),
                       str(d.get("tvm_version", "")), str(d.get("created", "")), dict(d.get("peaks", {})), kernels,
                       dict(d.get("models", {})), Path(path))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{WHAT} {str(path)!r} is malformed ({type(e).__name__}: {e}); delete it and run "
                            f"'hwq profile' again") from None


def user_path(target: str, device: CpuId, remote: str | None = None) -> Path:
    """Where ``hwq profile`` writes the table of ``target`` measured on ``device``."""
    return cache_dir() / "measured" / target / f"{device_slug(device, remote)}.json"


def _candidates(target: str) -> list[Path]:
    paths = []
    for root in (cache_dir() / "measured", SHIPPED_DIR):      # the user's first
        d = root / target
        if d.is_dir():
            paths += sorted(d.glob("*.json"))
    return paths


def find_table(target: Target) -> tuple[LatencyTable | None, str]:
    """The measured table to use for ``target`` here, and a note for the user (``""`` if none).

    For a target that runs on this machine, only a table measured on a CPU with this CPU's
    features is used (the same family and model preferred); a table from another CPU is refused
    and the note says so. A target that runs elsewhere (a board, a GPU) takes its table as is.
    """
    paths = _candidates(target.name)
    if not paths:
        return None, ""
    tables = [LatencyTable.load(p) for p in paths]
    if not runs_on_this_machine(target):
        return tables[0], ""
    me = this_cpu()
    same = [t for t in tables if t.remote is None and t.device.features == me.features
            and t.device.machine == me.machine]
    if same:
        exact = [t for t in same if (t.device.family, t.device.model) == (me.family, me.model)]
        if exact:
            return exact[0], ""
        return same[0], (f"the measured table of {target.name!r} comes from another CPU model with the same "
                         f"features ({same[0].device.describe()}); this is {me.describe()}")
    seen = "; ".join(t.device.describe() for t in tables)
    return None, (f"measured tables of {target.name!r} exist for other CPUs ({seen}) and are not used on this "
                  f"{me.describe()}: run 'hwq profile --target {target.name}' here")
