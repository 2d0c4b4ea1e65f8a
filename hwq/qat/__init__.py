"""The torch frontend: from a trained float model to hwq's integer program (``QGraph``)."""

from hwq.qat.convert import calibrate, convert, export_model, quantize_ptq
from hwq.qat.reference import run_reference

__all__ = ["calibrate", "convert", "export_model", "quantize_ptq", "run_reference"]
