"""hwq's own integer kernels: schedule rules per target, chained, a plain Relax lowering last.

A rule is an object with ``apply(node, in_info, out_info, target) -> Kernel | None``; the first
rule that returns a kernel wins (``select_kernel``). ``None`` from every rule means the op is lowered with
Relax's generic operators, which are correct everywhere and fast nowhere.
"""

from hwq.lower.kernels.rules import RULES, Kernel, layout_for, select_kernel

__all__ = ["RULES", "Kernel", "layout_for", "select_kernel"]
