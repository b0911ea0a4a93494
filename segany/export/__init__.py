"""Export to ONNX and run the exported graphs without PyTorch.

``OnnxPredictor`` needs only onnxruntime, numpy and pillow; ``export_onnx`` (which needs
torch and onnx) is imported on first use so that importing this package never pulls torch in.
"""

from __future__ import annotations

from typing import Any

from segany.export.onnx_predictor import OnnxPredictor

__all__ = ["OnnxPredictor", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from segany.export.onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
