"""Speed settings shared by the pipeline, the trainer and the benchmarks: channels-last convolution weights, TF32
matrix products where the user asks for them, and an opt-in `torch.compile`. Each is generic (no model is named) and
leaves the model's class, config and outputs as they are."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["compile_model", "has_conv2d", "prepare_for_inference", "set_tf32", "use_channels_last"]


def set_tf32(allow: bool | None) -> None:
    """Let float32 matrix products and convolutions on CUDA run in TF32 (`True`), force full float32 (`False`), or
    leave PyTorch's setting alone (`None`, the default everywhere: TF32 changes results at about 1e-3 relative)."""
    if allow is None:
        return
    precision = "tf32" if allow else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = precision
        conv.fp32_precision = precision
    else:  # pragma: no cover - older torch
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


def has_conv2d(model: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.Conv2d) for module in model.modules())


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store the model's 4-D weights channels-last (NHWC), in place. Convolutions then run in NHWC (an NCHW input is
    converted by the first convolution), which cuDNN and oneDNN run faster; a model without 2-D convolutions is left
    alone. Outputs equal the NCHW ones up to float rounding."""
    if has_conv2d(model):
        model.to(memory_format=torch.channels_last)
    return model


def compile_model(model: torch.nn.Module, options: bool | str | dict[str, Any] | None) -> torch.nn.Module:
    """`torch.compile` the model's forward in place (`nn.Module.compile`, so the object keeps its class, config and
    `save_pretrained`). `options`: falsy (off), True (defaults), a mode name (`"reduce-overhead"`,
    `"max-autotune"`), or keyword arguments of `torch.compile`."""
    if not options:
        return model
    if options is True:
        kwargs: dict[str, Any] = {}
    elif isinstance(options, str):
        kwargs = {"mode": options}
    elif isinstance(options, dict):
        kwargs = dict(options)
    else:
        raise ValueError(f"compile must be a bool, a torch.compile mode name or a dict of options, got {options!r}")
    model.compile(**kwargs)
    return model


def prepare_for_inference(
    model: torch.nn.Module,
    *,
    channels_last: bool = True,
    compile: bool | str | dict[str, Any] | None = False,
    allow_tf32: bool | None = None,
) -> torch.nn.Module:
    """Apply the inference settings above to `model` (in place) and return it."""
    set_tf32(allow_tf32)
    if channels_last:
        use_channels_last(model)
    return compile_model(model, compile)
