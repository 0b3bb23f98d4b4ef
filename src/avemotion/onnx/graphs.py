"""Export wrappers: `nn.Module`s with fixed tensor inputs and outputs around the avemotion models.

ONNX graphs have fixed input names, so an absent modality is an all-zero mask row here, never a missing input. The
models skip such rows by selecting the present rows (data-dependent shapes); the wrappers below compute the same
per-row results with masking formulations that the exporters can trace:

- VAVL (default layout): every row runs, key-padding masks keep a row's real frames independent of its padding and
  of the other rows (the models' batch-independence contract), and a row without the modality gets NaN from that
  modality's head and its `logits` from the head of the modality it has;
- VAVL legacy layout (`legacy_batch_axis_attention`): each clip on its own, i.e. its frames as a batch of length-1
  sequences through the Conformers, pooled over its real frames;
- the fusion model: its own forward with every input present; head masks and late fusion are tensor operations.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from avemotion.models.conformer import ConformerEncoder

NAN = float("nan")


class _ComputedPositionTable(nn.Module):
    """Sinusoid embeddings computed for the requested positions (the model's cached table has a data-dependent
    fall-back for positions past its end, which exporters cannot trace). Same values as `sinusoidal_embeddings`."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


def exportable_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode whose Conformer position tables are computed (traceable) and whose attention layers
    use the eager implementation."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ConformerEncoder):
            module.position_table = _ComputedPositionTable(module.position_table.dim)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            try:
                config._attn_implementation = "eager"
            except Exception:  # noqa: BLE001 - a config that refuses it keeps its own
                pass
    return model


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def conv_output_lengths(lengths: torch.Tensor, kernels, strides) -> torch.Tensor:
    """Frames of a wav2vec2-style convolutional feature encoder for `lengths` samples (negative -> no frame)."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


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
