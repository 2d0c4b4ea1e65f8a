"""The one place a :class:`hwq.target.Target` becomes a ``tvm.target.Target``."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import shutil

import tvm
from tvm.target import codegen

from hwq.errors import TargetError, choices
from hwq.target import Target

DETECT_CPU = "host"  # mcpu value in a target file meaning "the CPU of the machine that builds"


def to_tvm_target(target: Target) -> tvm.target.Target:
    """Build the TVM target of ``target`` from its ``[tvm]`` table.

    ``mcpu = "host"`` (in ``[tvm]`` or a cuda target's ``[tvm.host]``) is replaced by LLVM's name
    for this machine's CPU, e.g. ``'cascadelake'``: TVM 0.27 rejects option strings and turns
    ``-mcpu=native`` into ``'generic'``, which would compile without AVX-512 or NEON dot products.

    Example::

        >>> to_tvm_target(load_target("raspberry-pi-5")).attrs["mcpu"]
        'cortex-a76'

    Raises:
        TargetError: an ``mcpu`` LLVM does not know for the triple, ``'host'`` on a cross target,
            or an option TVM rejects; each names the target file.
    """
    spec = target.tvm_dict()
    _resolve_cpu(spec, "tvm", target)
    if isinstance(spec.get("host"), dict):
        _resolve_cpu(spec["host"], "tvm.host", target)
    try:
        return tvm.target.Target(spec)
    except ValueError as e:  # TVM's message lists the options it knows
        raise TargetError(f"{target.source or target.name}: TVM rejected the [tvm] table: {e}") from e


def _resolve_cpu(spec: dict, field: str, target: Target) -> None:
    """Replace ``mcpu = 'host'`` by the detected CPU; check any other mcpu against LLVM's list."""
    if spec.get("kind") != "llvm" or "mcpu" not in spec:
        return
    where = target.source or target.name
    if spec["mcpu"] == DETECT_CPU:
        if target.is_cross:  # the build machine's CPU says nothing about the board's
            raise TargetError(f"{where}: field '{field}.mcpu' is {DETECT_CPU!r} (detect the build machine's CPU), "
                              f"but {target.name!r} is cross-compiled with {target.cross_compiler!r}; name its CPU")
        spec["mcpu"] = codegen.llvm_get_system_cpu()
        return
    # TVM passes an unknown mcpu on to LLVM, which silently compiles for a generic CPU.
    triple = spec.get("mtriple") or codegen.llvm_get_system_triple()
    if not codegen.llvm_is_valid_cpu(spec["mcpu"], triple):
        known = codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple}))
        close = difflib.get_close_matches(spec["mcpu"], known, n=3)
        raise TargetError(f"{where}: field '{field}.mcpu' is {spec['mcpu']!r}, which LLVM does not know for "
                          f"triple {triple!r}; closest: {choices(close) or 'none'} "
                          f"(or {DETECT_CPU!r} to detect this machine's CPU)")


# hwq feature name -> the LLVM CPU feature that provides it
_LLVM_FEATURE = {"avx2": "avx2", "avx512": "avx512f", "avx512vnni": "avx512vnni", "neon": "neon",
                 "dotprod": "dotprod", "i8mm": "i8mm"}


@functools.lru_cache(maxsize=None)
def _cpu_features(mtriple: str, mcpu: str) -> frozenset:
    t = tvm.target.Target({"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu})
    return frozenset(str(k) for k in codegen.llvm_get_cpu_features(t))


def resolve_features(target: Target) -> Target:
    """``target`` with the instruction features its CPU really has, for kernel selection.

    A target with ``mcpu = "host"`` builds for whatever CPU the build machine has, which need
    not be the CPU its file describes (``x86-host`` describes the Zen 4 it was measured on; the
    same file on a Zen 3 or a Haswell has no AVX-512). Its declared features are intersected
    with those LLVM reports for the detected CPU, so a kernel needing ``vpdpbusd`` is never
    chosen for a CPU without it (LLVM would abort the build). Other targets are returned as is.
    """
    spec = target.tvm
    if target.kind != "cpu" or spec.get("kind") != "llvm" or spec.get("mcpu") != DETECT_CPU:
        return target
    triple = spec.get("mtriple") or codegen.llvm_get_system_triple()
    have = _cpu_features(triple, codegen.llvm_get_system_cpu())
    kept = tuple(f for f in target.features if _LLVM_FEATURE.get(f, f) in have)
    return target if kept == target.features else dataclasses.replace(target, features=kept)


def cross_fcompile(target: Target):
    """TVM's ``fcompile`` that links a library for a cross-compiled target with its
    ``toolchain.cross_compiler``, checked on ``PATH`` first: without it TVM fails deep in
    ``export_library`` with a message that names neither the compiler nor how to get it.

    Raises:
        TargetError: the compiler is not installed; the message names the Debian package.
    """
    from tvm.support import cc

    compiler = target.cross_compiler
    if shutil.which(compiler) is None:
        triple, _, tool = compiler.rpartition("-")      # 'aarch64-linux-gnu-g++' -> ('aarch64-linux-gnu', 'g++')
        package = f"{tool}-{triple}" if triple else compiler
        raise TargetError(f"target {target.name!r} links with the cross compiler {compiler!r}, which is not on "
                          f"PATH; install it (Debian/Ubuntu: 'apt-get install {package}') or set "
                          f"toolchain.cross_compiler in the target file")
    return cc.cross_compiler(compiler)
