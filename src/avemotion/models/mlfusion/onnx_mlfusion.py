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
    conv_output_lengths,
    exportable_copy,
    input_spec,
    warn_group_norm,
)

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
    audio features."""

    def __init__(self, model: nn.Module, parts: str, input_names: list[str]):
        super().__init__()
        self.model = exportable_copy(model)
        self.parts = parts
        self.input_names = list(input_names)
        encoder = getattr(self.model.mlfusion, "audio_encoder", None)
        if encoder is not None and hasattr(encoder, "_get_feature_vector_attention_mask"):
            kernels, strides = encoder.config.conv_kernel, encoder.config.conv_stride

            def frames_mask(feature_length, attention_mask, *args, **kwargs):
                # wav2vec2's own computation marks every frame real on a row with no sample; here such a row
                # (absent audio) has no frame, as when the model leaves the row out
                lengths = conv_output_lengths(attention_mask.sum(dim=-1), kernels, strides)
                steps = torch.arange(feature_length, device=attention_mask.device)
                return steps.unsqueeze(0) < lengths.unsqueeze(-1)

            encoder._get_feature_vector_attention_mask = frames_mask

    def forward(self, *tensors: torch.Tensor):
        inputs = dict(zip(self.input_names, tensors))
        for name in list(inputs):
            if name.endswith("_segments_mask"):
                inputs[name] = inputs[name].bool()
        if self.parts == "full":
            # a row without audio (all-zero attention mask) gets no frame, as in the model's own row selection
            inputs["attention_mask"] = inputs["attention_mask"].long()
        return self.model(**inputs, return_dict=True).logits
