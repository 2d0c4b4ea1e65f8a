"""The torch frontend: from a trained float model to hwq's integer program (``QGraph``).

Post-training quantization (``quantize_ptq``) and constrained quantization-aware training:
``quantize_(model, plan, step="prepare")`` -> ``train_constrained(prepared, data, QATConfig())``
-> ``quantize_(prepared, step="convert")``.
"""

from hwq.qat.api import float_mode, quant_layers, quantize_
from hwq.qat.config import QATConfig
from hwq.qat.convert import calibrate, convert, export_model, quantize_ptq
from hwq.qat.reference import run_reference
from hwq.qat.report import LayerSensitivity, SensitivityReport
from hwq.qat.train import evaluate_quantized, is_main_process, train_constrained

__all__ = ["LayerSensitivity", "QATConfig", "SensitivityReport", "calibrate", "convert", "evaluate_quantized",
           "export_model", "float_mode", "is_main_process", "quant_layers", "quantize_", "quantize_ptq",
           "run_reference", "train_constrained"]
