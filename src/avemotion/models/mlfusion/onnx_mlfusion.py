"""ONNX export of the multi-level fusion model: the export wrapper `FusionGraph` and `fusion_onnx_export_spec`,
which `MultiLevelFusionForEmotionRecognition.onnx_export_spec` returns (see `avemotion.models.onnx_export`).

The wrapper runs the model's own forward with every input present (an absent modality is an all-zero mask row); head
masks and late fusion are tensor operations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from avemotion.models.onnx_export import (
    ABSENT_AUDIO_SAMPLES,
    OnnxExportSpec,
    exportable_copy,
    input_spec,
    warn_group_norm,
)
from avemotion.utils.masking import feature_frames_mask

from .segments import SEGMENT_GRANULARITIES


def fusion_inputs(config, parts: str) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    if config.uses_audio:
        if parts == "heads":
            width = config.audio_config.hidden_size
            if config.audio_layer == "weighted_sum":
                layers = config.audio_config.num_hidden_layers + 1
                specs["audio_features"] = input_spec(
                    "float32", ["batch", layers, "audio_frames", width], [layers, 1, width]
                )
            else:
                specs["audio_features"] = input_spec("float32", ["batch", "audio_frames", width], [1, width])
            specs["audio_features_mask"] = input_spec("int64", ["batch", "audio_frames"], [1])
        else:
            specs["input_values"] = input_spec("float32", ["batch", "samples"], [ABSENT_AUDIO_SAMPLES])
            specs["attention_mask"] = input_spec("int64", ["batch", "samples"], [ABSENT_AUDIO_SAMPLES])
    if config.uses_text:
        specs["input_ids"] = input_spec("int64", ["batch", "tokens"], [1])
        specs["text_attention_mask"] = input_spec("int64", ["batch", "tokens"], [1])
    if config.uses_audio:
        for granularity in config.member_granularities:
            if granularity != "frame":
                specs[f"{granularity}_segments"] = input_spec(
                    "float32", ["batch", f"{granularity}_segments", 2], [1, 2]
                )
                specs[f"{granularity}_segments_mask"] = input_spec("int64", ["batch", f"{granularity}_segments"], [1])
    return specs


def fusion_onnx_export_spec(model: nn.Module, parts: str, exporter: str) -> OnnxExportSpec:
    """The `OnnxExportSpec` of a `MultiLevelFusionForEmotionRecognition`; a clear error for what cannot be
    exported."""
    if exporter == "dynamo":
        raise ValueError(
            "the fusion model's forward checks its segments with data-dependent conditions, which torch.export "
            "(the dynamo exporter) cannot trace: use --exporter torchscript"
        )
    config = model.config
    specs = fusion_inputs(config, parts)

    def build_graph() -> nn.Module:
        warn_group_norm(config.audio_config if parts == "full" and config.uses_audio else None)
        return FusionGraph(model, parts, list(specs))

    return OnnxExportSpec(
        inputs=specs,
        outputs=["logits"],
        build_graph=build_graph,
        # inputs the PyTorch model accepts and does not read (the pipeline gives every segment granularity)
        ignored_inputs=[
            f"{g}{suffix}"
            for g in SEGMENT_GRANULARITIES
            for suffix in ("_segments", "_segments_mask")
            if f"{g}_segments" not in specs
        ],
    )


class FusionGraph(nn.Module):
    """The multi-level fusion model with every input given: `logits` (the late-fused log posteriors).

    heads inputs: audio_features, audio_features_mask, input_ids, text_attention_mask and, per segment granularity
    the model uses, `<g>_segments` and `<g>_segments_mask`. full: input_values and attention_mask instead of the
    audio features; the speech encoder is wrapped in [`FramelessRowsEncoder`]."""

    def __init__(self, model: nn.Module, parts: str, input_names: list[str]):
        super().__init__()
        self.model = exportable_copy(model)
        self.parts = parts
        self.input_names = list(input_names)
        base = self.model.mlfusion
        if base.audio_encoder is not None:
            base.audio_encoder = FramelessRowsEncoder(base.audio_encoder)

    def forward(self, *tensors: torch.Tensor):
        inputs = dict(zip(self.input_names, tensors))
        for name in list(inputs):
            if name.endswith("_segments_mask"):
                inputs[name] = inputs[name].bool()
        if self.parts == "full":
            # a row without audio (all-zero attention mask) gets no frame, as in the model's own row selection
            inputs["attention_mask"] = inputs["attention_mask"].long()
        return self.model(**inputs, return_dict=True).logits


class FramelessRowsEncoder(nn.Module):
    """The speech encoder in the exported graph. The graph runs every row, also those without audio (an all-zero
    attention mask), which eager PyTorch leaves out: for a row whose samples give no frame, wav2vec2's own frame-mask
    computation indexes frame -1 or below, which PyTorch wraps around and ONNX rejects. Such a row runs here as if its
    whole padded waveform were real; the model still reads none of its frames, since its frame mask comes from the
    true attention mask (`feature_frames_mask`)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped encoder's dtype (the model casts its waveforms to it)."""
        return self.encoder.dtype

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        if attention_mask is not None:
            has_frame = feature_frames_mask(self.config, 1, attention_mask)  # (B, 1): at least one frame
            attention_mask = torch.where(has_frame, attention_mask, torch.ones_like(attention_mask))
        return self.encoder(input_values, attention_mask=attention_mask, **kwargs)
