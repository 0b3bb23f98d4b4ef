"""Parity of an exported directory with its PyTorch model, on random inputs shaped by the export's input specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import ONNX_CONFIG_NAME
from .export import _example, _load_model


def check_parity(model: Any, onnx_dir: str | Path, parts: str = "heads", seed: int = 1) -> dict[str, float]:
    """Max |logits difference| between ONNX Runtime and PyTorch on a random two-row batch (rows of different
    lengths, every modality present)."""
    from .runtime import OnnxRuntimeEmotionModel

    torch_model, _ = _load_model(model)
    torch_model.eval()
    meta = json.loads((Path(onnx_dir) / ONNX_CONFIG_NAME).read_text())
    specs = meta["graphs"][parts]["inputs"]
    generator = torch.Generator().manual_seed(seed)
    inputs = {name: _example(name, spec, torch_model.config, generator) for name, spec in specs.items()}
    reference_inputs = {
        name: value.bool() if name.endswith("_segments_mask") else value for name, value in inputs.items()
    }
    with torch.no_grad():
        if getattr(torch_model.config, "legacy_batch_axis_attention", False):
            # the legacy layout is exported batch-independent (each clip on its own): compare clip by clip, unpadded
            for name in inputs:
                if name.endswith("mask"):
                    inputs[name] = torch.ones_like(inputs[name])
            reference_inputs = dict(inputs)
            expected = torch.cat([
                torch_model(**{n: v[row : row + 1] for n, v in reference_inputs.items()}).logits
                for row in range(next(iter(inputs.values())).shape[0])
            ])  # fmt: skip
        else:
            expected = torch_model(**reference_inputs).logits
    actual = OnnxRuntimeEmotionModel.from_pretrained(onnx_dir)(**inputs).logits
    return {"max_abs_diff": float((actual - expected).abs().max())}
