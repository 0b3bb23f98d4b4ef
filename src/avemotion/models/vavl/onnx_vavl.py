"""ONNX export of VAVL: the export wrapper `VavlGraph` and `vavl_onnx_export_spec`, which
`VavlForEmotionRecognition.onnx_export_spec` returns (see `avemotion.models.onnx_export`).

ONNX graphs have fixed input names, so an absent modality is an all-zero mask row here, never a missing input. The
model skips such rows by selecting the present rows (data-dependent shapes); the wrapper computes the same per-row
results with masking formulations that the exporters can trace:

- default layout: every row runs, key-padding masks keep a row's real frames independent of its padding and of the
  other rows (the model's batch-independence contract), and a row without the modality gets NaN from that
  modality's head and its `logits` from the head of the modality it has;
- legacy layout (`legacy_batch_axis_attention`): each clip on its own, i.e. its frames as a batch of length-1
  sequences through the Conformers, pooled over its real frames.
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
from avemotion.utils.masking import masked_mean

NAN = float("nan")
OUTPUTS = ["logits", "audio_logits", "visual_logits"]


def vavl_inputs(config, parts: str) -> dict[str, dict[str, Any]]:
    if parts == "heads":
        return {
            "audio_features": input_spec("float32", ["batch", "audio_frames", config.audio_feature_dim],
                                         [1, config.audio_feature_dim]),
            "audio_features_mask": input_spec("int64", ["batch", "audio_frames"], [1]),
            "visual_features": input_spec("float32", ["batch", "video_frames", config.visual_feature_dim],
                                          [1, config.visual_feature_dim]),
            "visual_features_mask": input_spec("int64", ["batch", "video_frames"], [1]),
        }  # fmt: skip
    return {
        "input_values": input_spec("float32", ["batch", "samples"], [ABSENT_AUDIO_SAMPLES]),
        "attention_mask": input_spec("int64", ["batch", "samples"], [ABSENT_AUDIO_SAMPLES]),
        "pixel_values_videos": input_spec("float32", ["batch", "video_frames", 3, "height", "width"], [1, 3, 32, 32]),
        "visual_features_mask": input_spec("int64", ["batch", "video_frames"], [1]),
    }


def vavl_onnx_export_spec(model: nn.Module, parts: str, exporter: str) -> OnnxExportSpec:
    """The `OnnxExportSpec` of a `VavlForEmotionRecognition`; a clear error for what cannot be exported."""
    config = model.config
    if getattr(config, "legacy_batch_mixing", False):
        raise ValueError(
            "legacy_batch_mixing=True makes each clip's output depend on the other clips of its batch (the "
            "original code's batch-axis attention); an exported graph is batch-independent. Export the model "
            "with legacy_batch_mixing=False (each clip on its own, the original's outputs at batch size 1)."
        )
    if parts == "full" and (config.audio_backbone_config is None or config.visual_backbone_config is None):
        missing = [m for m, c in (("audio", config.audio_backbone_config),
                                  ("visual", config.visual_backbone_config)) if c is None]  # fmt: skip
        raise ValueError(
            f"--parts full needs the audio and visual backbones; this model has no {' and no '.join(missing)} "
            "backbone (it takes pre-extracted features): export --parts heads"
        )

    def build_graph() -> nn.Module:
        warn_group_norm(config.audio_backbone_config if parts == "full" else None)
        return VavlGraph(model, parts)

    return OnnxExportSpec(
        inputs=vavl_inputs(config, parts),
        outputs=list(OUTPUTS),
        build_graph=build_graph,
        # the legacy layout is exported batch-independent (each clip on its own, the original's outputs at batch 1)
        reference_per_clip=bool(getattr(config, "legacy_batch_axis_attention", False)),
    )


class VavlGraph(nn.Module):
    """VAVL on features (`parts="heads"`) or on raw 16 kHz audio and face crops (`parts="full"`).

    heads inputs: audio_features (B, Ta, Da), audio_features_mask (B, Ta), visual_features (B, Tv, Dv),
    visual_features_mask (B, Tv). full inputs: input_values (B, N), attention_mask (B, N), pixel_values_videos
    (B, Tv, 3, H, W), visual_features_mask (B, Tv). Outputs: logits, audio_logits, visual_logits (NaN on the rows
    without that modality)."""

    def __init__(self, model: nn.Module, parts: str):
        super().__init__()
        model = exportable_copy(model)
        self.config = model.config
        self.parts = parts
        self.base = model.vavl
        self.audio_head, self.visual_head, self.fusion_head = model.audio_head, model.visual_head, model.fusion_head

    def _encode(self, features: torch.Tensor, mask: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        if self.config.legacy_batch_axis_attention:
            # each clip on its own: the original layout attends across the batch axis, which for one clip is a
            # batch of its frames, each a length-1 sequence
            batch, frames = features.shape[:2]
            flat = features.reshape(batch * frames, 1, features.shape[-1])
            hidden = encoder(flat, None, False)
            hidden = self.base.shared_encoder(hidden, None, False)
            hidden = hidden.reshape(batch, frames, hidden.shape[-1])
        else:
            hidden = encoder(features, mask, False)
            hidden = self.base.shared_encoder(hidden, mask, False)
        return masked_mean(hidden, mask)

    def _audio_from_waveform(self, input_values, attention_mask):
        backbone = self.base.audio_backbone
        features = backbone(input_values, attention_mask=attention_mask).last_hidden_state
        cfg = backbone.config
        lengths = conv_output_lengths(attention_mask.sum(dim=-1), cfg.conv_kernel, cfg.conv_stride)
        steps = torch.arange(features.shape[1], device=features.device)
        return features, steps.unsqueeze(0) < lengths.unsqueeze(-1)

    def _visual_from_pixels(self, pixel_values_videos, mask):
        batch, frames = pixel_values_videos.shape[:2]
        flat = pixel_values_videos.reshape(batch * frames, *pixel_values_videos.shape[2:])
        pooled = self.base.visual_backbone(flat).pooler_output.reshape(batch, frames, -1)
        return pooled.masked_fill(~mask.unsqueeze(-1), 0.0)

    def _heads(self, audio_features, audio_mask, visual_features, visual_mask):
        if self.config.normalize_visual_features:
            visual_features = (visual_features - self.base.visual_features_mean) / (
                self.base.visual_features_std + 1e-6
            )
            visual_features = visual_features.masked_fill(~visual_mask.unsqueeze(-1), 0.0)
        audio_pooled = self._encode(audio_features, audio_mask, self.base.audio_encoder)
        visual_pooled = self._encode(visual_features, visual_mask, self.base.visual_encoder)
        audio_present = audio_mask.any(dim=-1).unsqueeze(-1)
        visual_present = visual_mask.any(dim=-1).unsqueeze(-1)
        audio_logits = self.audio_head(audio_pooled)
        visual_logits = self.visual_head(visual_pooled)
        fusion_logits = self.fusion_head(torch.cat([audio_pooled, visual_pooled], dim=-1))
        logits = torch.where(
            audio_present & visual_present, fusion_logits, torch.where(audio_present, audio_logits, visual_logits)
        )
        nan = torch.full_like(logits, NAN)
        return (
            torch.where(audio_present | visual_present, logits, nan),
            torch.where(audio_present, audio_logits, nan),
            torch.where(visual_present, visual_logits, nan),
        )

    def forward(self, a, a_mask, v, v_mask):
        a_mask, v_mask = a_mask.bool(), v_mask.bool()
        if self.parts == "full":
            a, a_mask = self._audio_from_waveform(a, a_mask.long())
            v = self._visual_from_pixels(v, v_mask)
        return self._heads(a, a_mask, v, v_mask)
