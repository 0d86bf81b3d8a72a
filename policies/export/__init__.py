"""Exported policies: a trained policy as one ONNX file, and a runner for it with the torch policy's interface.

onnx_export.py (export_onnx), onnx_policy.py (OnnxPolicy), graph.py (what is traced, which heads can be),
metadata.py (the configs and provenance stored in the file).
"""

from .graph import EXPORTABLE_HEADS, ExportError
from .onnx_export import export_onnx
from .onnx_policy import OnnxPolicy

__all__ = ["export_onnx", "OnnxPolicy", "ExportError", "EXPORTABLE_HEADS"]
