"""Deployment: ONNX export of the avemotion models and ONNX Runtime inference through the same pipeline.

`avemotion export-onnx --model DIR --output-dir OUT --parts heads|full` writes OUT as a model directory (ONNX
graphs, `onnx_config.json`, config.json, the processor files); `pipeline("audio-visual-emotion", model=OUT)` runs it
with ONNX Runtime (`OnnxRuntimeEmotionModel`). Needs the `onnx` extra (onnx, onnxruntime, onnxscript). Nothing here
is imported by the models; importing this package imports neither torch.onnx nor onnxruntime.
"""

from __future__ import annotations

ONNX_CONFIG_NAME = "onnx_config.json"

__all__ = ["ONNX_CONFIG_NAME", "OnnxRuntimeEmotionModel", "export_onnx"]


def __getattr__(name: str):
    if name == "OnnxRuntimeEmotionModel":
        from .runtime import OnnxRuntimeEmotionModel

        return OnnxRuntimeEmotionModel
    if name == "export_onnx":
        from .export import export_onnx

        return export_onnx
    raise AttributeError(name)
