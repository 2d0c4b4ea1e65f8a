"""hwq: a hardware-aware deployment compiler for integer accelerators.

One verb per stage, importable from the top level (each loads torch or tvm only when first used,
so ``import hwq`` stays light):

    >>> import hwq
    >>> prepared = hwq.quantize_(model, hwq.BitPlan(), step="prepare", calibration=images)
    >>> graph = hwq.quantize_(prepared, step="convert")          # or hwq.quantize_ptq(model, images)
    >>> compiled = hwq.compile_model(graph, "x86-host")
"""

__version__ = "0.1.0"

# name -> module that defines it
_LAZY = {
    "quantize_": "hwq.qat", "quantize_ptq": "hwq.qat", "run_reference": "hwq.qat",
    "compile_model": "hwq.lower", "load_model": "hwq.lower",
    "BitPlan": "hwq.plan", "LayerSpec": "hwq.plan", "load_target": "hwq.target", "CostModel": "hwq.cost",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hwq' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
