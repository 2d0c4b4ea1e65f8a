"""Which CPU this is, in the terms a measured table must match (pure: reads ``/proc/cpuinfo``).

Build machines change from one day to the next (an AVX2-only Zen 3, AVX-512 VNNI Zen 4 / Zen 5 and
Xeons have all been seen), and a hidden SKU says only "AMD EPYC": the family, the model and the
vector features tell them apart. A table measured on one CPU is only used on a CPU with the same
features (``hwq.cost.table``).
"""

from __future__ import annotations

import dataclasses
import functools
import platform

from hwq.target import Target
from hwq.timing import read_cpuinfo

DETECT_CPU = "host"   # mcpu value in a target file meaning "the CPU of the machine that builds"
# hwq feature name -> the /proc/cpuinfo flag that provides it (x86 "flags", aarch64 "Features")
CPUINFO_FLAG = {"avx2": "avx2", "avx512": "avx512f", "avx512vnni": "avx512_vnni", "neon": "asimd",
                "dotprod": "asimddp", "i8mm": "i8mm"}


@dataclasses.dataclass(frozen=True)
class CpuId:
    """A CPU as a measured table records it.

    Attributes:
        name: the model name (``"AMD EPYC"`` where the SKU is hidden).
        family, model: the vendor's family and model numbers, as text (``"25"``, ``"17"``).
        features: the hwq features it has (``hwq.target.FEATURES`` names), sorted.
        machine: ``"x86_64"`` or ``"aarch64"``.
    """

    name: str
    family: str
    model: str
    features: tuple
    machine: str

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "features": list(self.features)}

    @classmethod
    def from_json(cls, d: dict) -> "CpuId":
        return cls(str(d.get("name", "")), str(d.get("family", "")), str(d.get("model", "")),
                   tuple(sorted(d.get("features", ()))), str(d.get("machine", "")))

    def describe(self) -> str:
        return (f"{self.name} (family {self.family or '?'}, model {self.model or '?'}, "
                f"features {', '.join(self.features) or 'none'})")


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuId:
    """The CPU of this machine."""
    info = read_cpuinfo()
    flags = info.get("flags", set())
    features = tuple(sorted(f for f, flag in CPUINFO_FLAG.items() if flag in flags))
    return CpuId(info.get("name") or platform.processor() or "unknown", info.get("family", ""), info.get("model", ""),
                 features, platform.machine())


def runs_on_this_machine(target: Target) -> bool:
    """Whether code built for ``target`` runs here (a CPU target, not cross-compiled, of this architecture)."""
    if target.kind != "cpu" or target.is_cross:
        return False
    triple = target.host_triple
    arch = {"AMD64": "x86_64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())
    return not triple or triple.startswith(arch)


def resolve_host(target: Target) -> Target:
    """``target`` with only the features this machine's CPU has, where its file says ``mcpu =
    "host"`` (the same answer ``hwq.lower.tvm_target.resolve_features`` gets from LLVM): the
    ``x86-host`` file describes one CPU but builds for whichever one runs it."""
    if target.kind != "cpu" or target.tvm.get("mcpu") != DETECT_CPU:
        return target
    have = set(this_cpu().features)
    kept = tuple(f for f in target.features if f in have)
    return target if kept == target.features else dataclasses.replace(target, features=kept)
