"""Which instruction-set extensions a build may use, and whether this machine's CPU has them.

An artifact compiled with ``-mcpu=znver4`` (or a Pi 5 build with ``sdot``) holds AVX-512 / dot
product instructions; loaded on a CPU without them it dies with an illegal instruction, long after
the load. The manifest records the extensions of the CPU the code was built for, and loading
compares them with this machine's before running anything.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import tvm
from tvm.target import codegen

from hwq.errors import ArtifactError

# LLVM feature -> its /proc/cpuinfo flag: the extensions LLVM may emit in hwq's kernels or when it
# vectorizes generic code (not LLVM's tuning flags, which say nothing about what a CPU can run).
ISA = {
    "x86_64": {"sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi2": "bmi2",
               "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
               "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni"},
    "aarch64": {"neon": "asimd", "dotprod": "asimddp", "i8mm": "i8mm", "fullfp16": "asimdhp", "sve": "sve"},
}
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
CPUINFO = Path("/proc/cpuinfo")


def _arch(triple: str) -> str:
    head = triple.split("-")[0].lower()
    return _ARCH.get(head, head)


@functools.lru_cache(maxsize=None)
def _llvm_features(triple: str, mcpu: str, mattr: tuple) -> frozenset:
    spec = {"kind": "llvm", "mtriple": triple, **({"mcpu": mcpu} if mcpu else {}), **({"mattr": list(mattr)} if mattr else {})}
    return frozenset(str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(spec)))


def build_cpu(llvm_target: tvm.target.Target) -> dict:
    """What the manifest records of the CPU an LLVM target compiles for: triple, mcpu, mattr and
    the extensions of :data:`ISA` its code may use (``mcpu = 'host'`` already resolved)."""
    attrs = llvm_target.attrs
    triple = str(attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    mcpu = str(attrs.get("mcpu", "") or "")
    mattr = tuple(str(a) for a in attrs.get("mattr", []) or [])
    have = _llvm_features(triple, mcpu, mattr)
    return {"triple": triple, "mcpu": mcpu, "mattr": list(mattr),
            "isa_features": sorted(f for f in ISA.get(_arch(triple), {}) if f in have)}


def host_features(arch: str) -> frozenset:
    """The extensions of :data:`ISA` this machine's CPU has: its ``/proc/cpuinfo`` flags (what the
    kernel lets programs use: a virtual machine may hide some of what the CPU model has), else the
    features LLVM knows for the CPU model it detects."""
    table = ISA.get(arch, {})
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags = set(value.split())
                return frozenset(f for f, flag in table.items() if flag in flags)
    except OSError:
        pass
    have = _llvm_features(codegen.llvm_get_system_triple(), codegen.llvm_get_system_cpu(), ())
    return frozenset(f for f in table if f in have)


def check_runs_on_this_cpu(cpu: dict, where: str) -> None:
    """Raise ``ArtifactError`` if code built for ``cpu`` (a manifest's record) uses extensions this
    machine's CPU lacks. A build for another architecture is not checked here: it does not load."""
    arch = _arch(cpu["triple"])
    if arch != _ARCH.get(platform.machine().lower(), platform.machine()):
        return
    missing = sorted(set(cpu["isa_features"]) - host_features(arch))
    if missing:
        raise ArtifactError(
            f"artifact {where!r} was built for CPU {cpu['mcpu'] or 'generic'!r} and uses {missing!r}, which this "
            f"machine's CPU ({codegen.llvm_get_system_cpu()!r}) lacks: it would stop with an illegal instruction. "
            f"Compile and save it again on this machine, or run it on a CPU with those features")
