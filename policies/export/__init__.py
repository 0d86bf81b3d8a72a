"""Exported policies: a trained policy as one ONNX file, and a runner for it with the torch policy's interface.

onnx_export.py (export_onnx, onnx_bytes), onnx_policy.py (OnnxPolicy), graph.py (what is traced, which heads can
be), metadata.py (the configs and provenance stored in the file), parity.py (max_action_difference: the exported
policy against its torch source).
"""

from .graph import ExportError
from .onnx_export import export_onnx, onnx_bytes
from .onnx_policy import OnnxPolicy
from .parity import max_action_difference

__all__ = ["export_onnx", "onnx_bytes", "OnnxPolicy", "ExportError", "max_action_difference"]
