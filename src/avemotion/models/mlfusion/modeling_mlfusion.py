"""PyTorch multi-level fusion model of wav2vec 2.0 and BERT (Zhao, Wang, Wang, Interspeech 2022, arXiv 2207.04697).

Speech: a wav2vec2-style encoder gives frame vectors; they are mean-pooled inside phone, syllable and word segments
(given in seconds), giving one speech sequence per granularity (`frame` is the frames themselves). Text: a BERT-style
encoder gives token vectors. Heads: per-granularity speech heads, a text head, and co-attention early-fusion heads
(speech queries text and text queries speech). The prediction late-fuses the posteriors of the configured members.

Rows without segments at a granularity (no alignment) and rows without a modality leave the affected heads out of
their late fusion; those heads' logits are NaN on such rows and `head_mask` says which rows each head covers.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging

try:  # save-time extras of the package (auto_map for both Auto classes, the pipeline); a remote copy
    # (trust_remote_code) runs without avemotion and does not need them
    if not __name__.startswith("avemotion."):
        raise ImportError
    from avemotion.models.auto import EmotionModelHubMixin
except ImportError:

    class EmotionModelHubMixin:  # noqa: D101
        pass


from .configuration_mlfusion import MultiLevelFusionConfig
from .segments import check_segments, frame_centers, frame_geometry, pool_segments

logger = logging.get_logger(__name__)


@dataclass
class MultiLevelFusionModelOutput(ModelOutput):
    """
    Outputs of [`MultiLevelFusionModel`]: the classifier inputs of every member head and the sequences behind them.

    Args:
        pooled_outputs (`dict[str, torch.FloatTensor]`): head name -> `(batch_size, head_input_size)` classifier input.
        head_mask (`dict[str, torch.BoolTensor]`): head name -> `(batch_size,)`, True where the head has its inputs
            (the modality is present and, for segment granularities, the row has at least one segment).
        audio_hidden_states (`torch.FloatTensor` of shape `(batch_size, frames, audio_hidden_size)`): the selected
            speech-encoder layer (None when the model uses no audio or none was given).
        audio_frames_mask (`torch.BoolTensor` of shape `(batch_size, frames)`): True on real frames.
        text_hidden_states (`torch.FloatTensor` of shape `(batch_size, tokens, text_hidden_size)`): the selected
            text-encoder layer.
        text_attention_mask (`torch.BoolTensor` of shape `(batch_size, tokens)`): True on real tokens.
        segment_embeddings (`dict[str, torch.FloatTensor]`): granularity -> `(batch_size, segments, audio_hidden_size)`.
        segment_masks (`dict[str, torch.BoolTensor]`): granularity -> `(batch_size, segments)`.
        coattention_weights (`dict[str, tuple]`, returned with `output_attentions=True`): early head -> per layer a
            pair `(speech_to_text (batch, heads, segments, tokens), text_to_speech (batch, heads, tokens, segments))`;
            for the `concat` head the keys are `early_<g>`.
    """

    pooled_outputs: dict[str, torch.FloatTensor] | None = None
    head_mask: dict[str, torch.BoolTensor] | None = None
    audio_hidden_states: torch.FloatTensor | None = None
    audio_frames_mask: torch.BoolTensor | None = None
    text_hidden_states: torch.FloatTensor | None = None
    text_attention_mask: torch.BoolTensor | None = None
    segment_embeddings: dict[str, torch.FloatTensor] | None = None
    segment_masks: dict[str, torch.BoolTensor] | None = None
    coattention_weights: dict[str, tuple] | None = None


@dataclass
class MultiLevelFusionEmotionRecognitionOutput(ModelOutput):
    """
    Outputs of [`MultiLevelFusionForEmotionRecognition`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given): sum over member heads of
            `head_loss_weights[head] * cross_entropy` on the rows the head covers.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): the late-fused prediction, as log-posteriors
            (so softmax, argmax and cross-entropy work unchanged); with one member, that head's logits.
        head_logits (`dict[str, torch.FloatTensor]`): head name (`audio_<g>`, `text`, `early_<g>` or `early`) ->
            `(batch_size, num_labels)` logits; NaN on rows the head does not cover.
        head_mask (`dict[str, torch.BoolTensor]`): head name -> `(batch_size,)` rows the head covers.
        head_losses (`dict[str, torch.FloatTensor]`, returned with `labels`): head name -> unweighted cross-entropy
            (heads covering no row of the batch are absent).
        coattention_weights (`dict[str, tuple]`, returned with `output_attentions=True`): see
            [`MultiLevelFusionModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    head_logits: dict[str, torch.FloatTensor] | None = None
    head_mask: dict[str, torch.BoolTensor] | None = None
    head_losses: dict[str, torch.FloatTensor] | None = None
    coattention_weights: dict[str, tuple] | None = None


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over axis 1 of `(B, T, D)` using the `(B, T)` bool mask; rows with no real position give zeros."""
    if mask is None:
        return hidden_states.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def late_fuse_logits(
    logits: list[torch.Tensor],
    mode: str = "mean_prob",
    weights: list[float] | None = None,
    masks: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Combine the posteriors of several classifiers (the model's late fusion; also for ensembling separately
    trained models).

    Args:
        logits: K tensors `(batch_size, num_labels)`.
        mode: `"mean_prob"` / `"weighted"` (weighted mean of softmax posteriors) or `"mean_logprob"` (weighted mean of
            log-softmax values, renormalised).
        weights: K non-negative weights (default equal).
        masks: K `(batch_size,)` bool tensors; a member is left out of the rows where its mask is False and the
            remaining weights are renormalised per row.

    Returns:
        `(batch_size, num_labels)` log of the combined posteriors.
    """
    if not logits:
        raise ValueError("late_fuse_logits needs at least one member")
    stacked = torch.stack(logits)  # (K, B, C)
    weight = torch.ones(len(logits), dtype=stacked.dtype, device=stacked.device)
    if weights is not None:
        if len(weights) != len(logits):
            raise ValueError(f"late fusion got {len(logits)} members but {len(weights)} weights")
        weight = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    weight = weight.unsqueeze(-1).expand(-1, stacked.shape[1])  # (K, B)
    if masks is not None:
        weight = weight * torch.stack(masks).to(stacked.dtype)
    total = weight.sum(dim=0)
    if bool((total <= 0).any()):
        rows = (total <= 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no late-fusion member with inputs (missing modality or segments)")
    weight = (weight / total).unsqueeze(-1)
    # zero-weight members may hold NaN logits; take them out before the weighted sum
    log_probs = torch.log_softmax(stacked, dim=-1).masked_fill(weight == 0, 0.0)
    if mode in ("mean_prob", "weighted"):
        return torch.logsumexp(log_probs + torch.log(weight), dim=0)
    if mode == "mean_logprob":
        return torch.log_softmax((weight * log_probs).sum(dim=0), dim=-1)
    raise ValueError(f"late fusion mode must be 'mean_prob', 'mean_logprob' or 'weighted', got {mode!r}")


class MultiLevelFusionAttention(nn.Module):
    """Multi-head attention from `queries` to `context` with a key padding mask (scaled dot-product; eager when
    attention weights are requested or `config._attn_implementation == "eager"`)."""

    def __init__(self, config: MultiLevelFusionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_coattention_heads
        self.head_size = config.fusion_hidden_size // config.num_coattention_heads
        size = config.fusion_hidden_size
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        self.output = nn.Linear(size, size)
        self.dropout = config.attention_dropout

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries (B, Q, F), context (B, K, F), context_mask (B, K) bool -> ((B, Q, F), weights (B, H, Q, K))."""
        query, key, value = (
            self._split(self.query(queries)),
            self._split(self.key(context)),
            self._split(self.value(context)),
        )
        # A row without any real key (no segments, no text) attends to all positions so that the output stays finite;
        # the heads that use such rows are masked out downstream.
        keep = context_mask | ~context_mask.any(dim=-1, keepdim=True)
        keep = keep[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions or self.config._attn_implementation == "eager":
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size)
            weights = torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1)
            attended = torch.matmul(nn.functional.dropout(weights, dropout, self.training), value)
        else:
            attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=keep, dropout_p=dropout)
        batch, _, length, _ = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)
        return self.output(attended), weights


class MultiLevelFusionTransformerLayer(GradientCheckpointingLayer):
    """Post-LN Transformer layer whose attention reads `context` (co-attention) or the input itself (self-attention):
    `h = LN(x + Drop(Attn(x, context)))`, `out = LN(h + Drop(FFN(h)))`."""

    def __init__(self, config: MultiLevelFusionConfig):
        super().__init__()
        size = config.fusion_hidden_size
        self.attention = MultiLevelFusionAttention(config)
        self.attention_norm = nn.LayerNorm(size)
        self.intermediate = nn.Linear(size, config.coattention_ffn_size)
        self.activation = nn.GELU()
        self.output = nn.Linear(config.coattention_ffn_size, size)
        self.output_norm = nn.LayerNorm(size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(hidden_states, context, context_mask, output_attentions)
        hidden_states = self.attention_norm(hidden_states + self.dropout(attended))
        transformed = self.output(self.activation(self.intermediate(hidden_states)))
        return self.output_norm(hidden_states + self.dropout(transformed)), weights


class MultiLevelFusionProjection(nn.Module):
    """Linear + LayerNorm + dropout to `fusion_hidden_size`; the identity when the encoder already has that width."""

    def __init__(self, input_size: int, config: MultiLevelFusionConfig):
        super().__init__()
        self.needed = input_size != config.fusion_hidden_size
        if self.needed:
            self.dense = nn.Linear(input_size, config.fusion_hidden_size)
            self.norm = nn.LayerNorm(config.fusion_hidden_size)
            self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.needed:
            return hidden_states
        return self.dropout(self.norm(self.dense(hidden_states)))


class MultiLevelFusionCoAttentionBlock(nn.Module):
    """ViLBERT-style co-attention for one granularity: optional intra-modal layers, then `num_coattention_layers`
    layers in which the speech stream attends to the text and the text stream to the speech (both read the previous
    layer's streams). Output: the masked means of both final streams, concatenated."""

    def __init__(self, config: MultiLevelFusionConfig):
        super().__init__()
        self.speech_projection = MultiLevelFusionProjection(config.audio_config.hidden_size, config)
        self.text_projection = MultiLevelFusionProjection(config.text_config.hidden_size, config)
        layers = range(config.num_self_attention_layers)
        self.speech_self_layers = nn.ModuleList(MultiLevelFusionTransformerLayer(config) for _ in layers)
        self.text_self_layers = nn.ModuleList(MultiLevelFusionTransformerLayer(config) for _ in layers)
        layers = range(config.num_coattention_layers)
        self.speech_layers = nn.ModuleList(MultiLevelFusionTransformerLayer(config) for _ in layers)
        self.text_layers = nn.ModuleList(MultiLevelFusionTransformerLayer(config) for _ in layers)

    def forward(
        self,
        speech: torch.Tensor,
        speech_mask: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple]:
        """speech (B, N, Da), speech_mask (B, N), text (B, M, Dt), text_mask (B, M) -> ((B, 2 * F), weights)."""
        speech, text = self.speech_projection(speech), self.text_projection(text)
        for speech_layer, text_layer in zip(self.speech_self_layers, self.text_self_layers):
            speech = speech_layer(speech, speech, speech_mask)[0]
            text = text_layer(text, text, text_mask)[0]
        all_weights = []
        for speech_layer, text_layer in zip(self.speech_layers, self.text_layers):
            new_speech, speech_to_text = speech_layer(speech, text, text_mask, output_attentions)
            new_text, text_to_speech = text_layer(text, speech, speech_mask, output_attentions)
            speech, text = new_speech, new_text
            all_weights.append((speech_to_text, text_to_speech))
        pooled = torch.cat([masked_mean(speech, speech_mask), masked_mean(text, text_mask)], dim=-1)
        return pooled, tuple(all_weights)


class MultiLevelFusionClassifier(nn.Module):
    """Dropout -> Linear(in, classifier_hidden_size) -> ReLU -> Dropout -> Linear(num_labels)."""

    def __init__(self, input_size: int, config: MultiLevelFusionConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.dense = nn.Linear(input_size, config.classifier_hidden_size)
        self.activation = nn.ReLU()
        self.out_proj = nn.Linear(config.classifier_hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.activation(self.dense(self.dropout(pooled)))))


def _encoder_kwargs(config) -> dict[str, Any]:
    """BERT-style encoders are built without their pooler: the model pools itself, and an unused pooler would break
    DDP (unused parameters)."""
    model_class = AutoModel._model_mapping[type(config)]
    return (
        {"add_pooling_layer": False}
        if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
        else {}
    )


def _select_layer(
    last_hidden_state: torch.Tensor, hidden_states: tuple | None, layer: str | int, weights: nn.Parameter | None
) -> torch.Tensor:
    if layer == "last":
        return last_hidden_state
    if layer == "weighted_sum":
        stacked = torch.stack(hidden_states) if isinstance(hidden_states, tuple) else hidden_states
        return torch.einsum("l,l...->...", torch.softmax(weights, dim=0).to(stacked.dtype), stacked)
    return hidden_states[layer]


def _has_real_segments(segments: torch.Tensor | None, segments_mask: torch.Tensor | None) -> bool:
    """Whether segment inputs hold any real segment (a missing mask means every segment is real)."""
    if segments is None:
        return False
    if segments_mask is None:
        return segments.dim() >= 2 and segments.shape[0] * segments.shape[1] > 0
    return bool(segments_mask.bool().any())


def _run_present_rows(
    encode, inputs: torch.Tensor, mask: torch.Tensor, per_row: bool, length: int | None, pass_index: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `encode(inputs, mask)` on the rows of `inputs` whose mask has a real position, cut after their last real
    position (or each row alone, cut after its own, when `per_row`), and scatter the `(features, mask)` results back
    into the batch, `length` positions long (None: the longest result). Rows without the modality get zero features
    and an all-False mask, and no row's output depends on the rows it is batched with. With `pass_index`, `encode`
    also gets the row indices (None when it runs on the whole batch)."""
    positions = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    extents = (mask.bool() * positions).amax(dim=-1)  # last real position + 1; 0 for a row without the modality
    rows = (extents > 0).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError("the attention mask has no real position in any row")
    longest = int(extents.max())
    if per_row and bool((extents[rows] != longest).any()):
        groups = [(row.view(1), int(extents[row])) for row in rows]
    else:
        groups = [(rows, longest)]
    results = []
    for index, size in groups:
        if index.numel() == inputs.shape[0] and size == inputs.shape[1]:
            sub = (inputs, mask, None) if pass_index else (inputs, mask)  # nothing to cut: no copy
        else:
            sub = (inputs[index, :size], mask[index, :size]) + ((index,) if pass_index else ())
        results.append((index, *encode(*sub)))
    if len(results) == 1 and rows.numel() == inputs.shape[0] and length in (None, results[0][1].shape[1]):
        return results[0][1], results[0][2]
    length = length or max(features.shape[1] for _, features, _ in results)
    reference = results[0][1]
    features = reference.new_zeros(inputs.shape[0], length, reference.shape[-1])
    frames_mask = torch.zeros(inputs.shape[0], length, dtype=torch.bool, device=reference.device)
    for index, sub_features, sub_mask in results:
        features[index, : sub_features.shape[1]] = sub_features
        frames_mask[index, : sub_mask.shape[1]] = sub_mask
    return features, frames_mask


class MultiLevelFusionPreTrainedModel(EmotionModelHubMixin, PreTrainedModel):
    config_class = MultiLevelFusionConfig
    config: MultiLevelFusionConfig
    base_model_prefix = "mlfusion"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["MultiLevelFusionTransformerLayer"]
    # Forward takes no **kwargs; the Trainer must not rescale the loss by num_items_in_batch.
    accepts_loss_kwargs = False
    _auto_map_classes = ("MultiLevelFusionModel", "MultiLevelFusionForEmotionRecognition")

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) linears with zero biases, unit LayerNorms, uniform layer weights. The encoders
        are initialised by their own classes."""
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MultiLevelFusionModel):
            for weights in (module.audio_layer_weights, module.text_layer_weights):
                if weights is not None:
                    init.zeros_(weights)

    @classmethod
    def from_backbones(
        cls,
        audio: str | None = None,
        text: str | None = None,
        config: MultiLevelFusionConfig | None = None,
        **config_kwargs: Any,
    ) -> MultiLevelFusionPreTrainedModel:
        """Build a model whose encoders are loaded from pretrained names or local directories; the fusion layers and
        heads are freshly initialised.

        Args:
            audio: a wav2vec2-style checkpoint, e.g. `"facebook/wav2vec2-base"` or a local directory.
            text: a BERT-style checkpoint, e.g. `"bert-base-uncased"` or a local directory.
            config: a base config; otherwise `MultiLevelFusionConfig(**config_kwargs)`. The encoder configs are
                replaced by those of the loaded checkpoints.
        """
        if config is not None and config_kwargs:
            raise ValueError("Pass either `config` or config keyword arguments to from_backbones, not both.")
        audio_encoder = AutoModel.from_pretrained(audio) if audio is not None else None
        text_encoder = None
        if text is not None:
            text_encoder = AutoModel.from_pretrained(text, **_encoder_kwargs(AutoConfig.from_pretrained(text)))
        if config is None:
            if audio_encoder is not None:
                config_kwargs["audio_config"] = audio_encoder.config
                config_kwargs["audio_model_name_or_path"] = str(audio)
            if text_encoder is not None:
                config_kwargs["text_config"] = text_encoder.config
                config_kwargs["text_model_name_or_path"] = str(text)
            config = MultiLevelFusionConfig(**config_kwargs)
        else:
            if audio_encoder is not None:
                config.audio_config, config.audio_model_name_or_path = audio_encoder.config, str(audio)
            if text_encoder is not None:
                config.text_config, config.text_model_name_or_path = text_encoder.config, str(text)
            config.validate_architecture()
        model = cls(config)
        base = model.base_model
        for name, encoder, target in (
            ("audio", audio_encoder, base.audio_encoder),
            ("text", text_encoder, base.text_encoder),
        ):
            if encoder is None:
                continue
            if target is None:
                raise ValueError(f"from_backbones got a checkpoint for {name}, but no fusion member uses {name}")
            target.load_state_dict(encoder.state_dict())
        base.apply_encoder_freezing()
        return model


class MultiLevelFusionModel(MultiLevelFusionPreTrainedModel):
    """The encoders, segment pooling and co-attention blocks; outputs the classifier input of every member head.
    Only the parts that some fusion member needs are built."""

    def __init__(self, config: MultiLevelFusionConfig):
        super().__init__(config)
        self.audio_encoder = AutoModel.from_config(config.audio_config) if config.uses_audio else None
        self.text_encoder = (
            AutoModel.from_config(config.text_config, **_encoder_kwargs(config.text_config))
            if config.uses_text
            else None
        )
        self.audio_layer_weights = self.text_layer_weights = None
        if self.audio_encoder is not None and config.audio_layer == "weighted_sum":
            self.audio_layer_weights = nn.Parameter(torch.zeros(config.audio_config.num_hidden_layers + 1))
        if self.text_encoder is not None and config.text_layer == "weighted_sum":
            self.text_layer_weights = nn.Parameter(torch.zeros(config.text_config.num_hidden_layers + 1))
        early = [m for m in config.fusion_members if m.startswith("early")]
        early_granularities = config.granularities if "early" in early else [m.split("_", 1)[1] for m in early]
        self.coattention = nn.ModuleDict({g: MultiLevelFusionCoAttentionBlock(config) for g in early_granularities})
        self.frame_stride, self.frame_receptive_field = frame_geometry(
            config.audio_config.conv_kernel, config.audio_config.conv_stride
        )
        self.post_init()
        self.apply_encoder_freezing()

    def apply_encoder_freezing(self) -> None:
        """Set `requires_grad` of the encoders from the config's freeze flags."""
        if self.audio_encoder is not None:
            self.audio_encoder.requires_grad_(not self.config.freeze_audio_encoder)
            if self.config.freeze_audio_encoder:
                self.audio_encoder.eval()
            feature_encoder = getattr(self.audio_encoder, "feature_extractor", None)
            if self.config.freeze_feature_encoder and feature_encoder is not None:
                if hasattr(feature_encoder, "_freeze_parameters"):
                    feature_encoder._freeze_parameters()
                else:
                    feature_encoder.requires_grad_(False)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(not self.config.freeze_text_encoder)
            if self.config.freeze_text_encoder:
                self.text_encoder.eval()

    def train(self, mode: bool = True) -> MultiLevelFusionModel:
        super().train(mode)
        # Frozen encoders stay in eval mode: no dropout or SpecAugment on features that get no gradient.
        if self.audio_encoder is not None and self.config.freeze_audio_encoder:
            self.audio_encoder.eval()
        if self.text_encoder is not None and self.config.freeze_text_encoder:
            self.text_encoder.eval()
        return self

    def get_audio_features(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the speech encoder and select `config.audio_layer`.

        Args:
            input_values: `(batch_size, samples)` 16 kHz waveforms, normalised as the feature extractor does.
            attention_mask: `(batch_size, samples)`, 1 on real samples (right padding).

        Returns:
            `(features (batch_size, frames, audio_hidden_size), frames_mask (batch_size, frames) bool)`. Rows with
            an all-zero attention mask (no audio) are not run: zero features, all-False frames mask.
        """
        if self.audio_encoder is None:
            raise ValueError("This model's fusion members use no audio; it has no speech encoder.")
        if input_values.dim() != 2:
            raise ValueError(f"`input_values` must be (batch, samples), got shape {tuple(input_values.shape)}")
        layer = self.config.audio_layer

        def encode(values: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad() if self.config.freeze_audio_encoder else contextlib.nullcontext():
                encoded = self.audio_encoder(
                    values, attention_mask=mask, output_hidden_states=layer != "last", return_dict=True
                )
            features = _select_layer(encoded.last_hidden_state, encoded.hidden_states, layer, self.audio_layer_weights)
            if mask is None:
                return features, torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
            return features, self.audio_encoder._get_feature_vector_attention_mask(features.shape[1], mask).bool()

        if attention_mask is None:
            return encode(input_values, None)
        # a group-norm feature encoder (wav2vec2-base) normalises each waveform over time, padding included
        per_row = getattr(self.audio_encoder.config, "feat_extract_norm", "layer") == "group"
        return _run_present_rows(encode, input_values, attention_mask, per_row, None)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        text_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the text encoder and select `config.text_layer`: `(features (B, M, text_hidden_size), mask (B, M))`.
        Rows with an all-zero mask (no text) are not run: they get zero features."""
        if self.text_encoder is None:
            raise ValueError("This model's fusion members use no text; it has no text encoder.")
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be (batch, tokens), got shape {tuple(input_ids.shape)}")
        if text_attention_mask is None:
            text_attention_mask = torch.ones_like(input_ids)
        layer = self.config.text_layer

        def encode(ids: torch.Tensor, mask: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
            types = None if token_type_ids is None else token_type_ids if index is None else token_type_ids[index]
            if index is not None and types is not None:
                types = types[:, : ids.shape[1]]
            with torch.no_grad() if self.config.freeze_text_encoder else contextlib.nullcontext():
                encoded = self.text_encoder(
                    input_ids=ids,
                    attention_mask=mask,
                    token_type_ids=types,
                    output_hidden_states=layer != "last",
                    return_dict=True,
                )
            features = _select_layer(encoded.last_hidden_state, encoded.hidden_states, layer, self.text_layer_weights)
            return features, mask.bool()

        return _run_present_rows(encode, input_ids, text_attention_mask, False, input_ids.shape[1], pass_index=True)

    def _cached_features(
        self, name: str, features: torch.Tensor, mask: torch.Tensor | None, layer, weights, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        expected_dim = 4 if layer == "weighted_sum" else 3
        if features.dim() != expected_dim or features.shape[-1] != width:
            shape = "(batch, layers, length, dim)" if expected_dim == 4 else "(batch, length, dim)"
            raise ValueError(
                f"`{name}` must be {shape} with dim {width} for layer choice {layer!r}, got {tuple(features.shape)}"
            )
        if expected_dim == 4:
            if features.shape[1] != weights.shape[0]:
                raise ValueError(f"`{name}` must stack {weights.shape[0]} hidden states, got {features.shape[1]}")
            features = _select_layer(None, features.transpose(0, 1), layer, weights)
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if tuple(mask.shape) != tuple(features.shape[:2]):
            raise ValueError(f"mask of `{name}` must be {tuple(features.shape[:2])}, got {tuple(mask.shape)}")
        return features, mask.bool()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        phone_segments: torch.Tensor | None = None,
        phone_segments_mask: torch.Tensor | None = None,
        syllable_segments: torch.Tensor | None = None,
        syllable_segments_mask: torch.Tensor | None = None,
        word_segments: torch.Tensor | None = None,
        word_segments_mask: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_features_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> MultiLevelFusionModelOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, samples)`): 16 kHz waveforms.
            attention_mask (`torch.Tensor` of shape `(batch_size, samples)`): 1 on real samples, 0 on (right) padding.
            input_ids (`torch.LongTensor` of shape `(batch_size, tokens)`): transcript tokens.
            text_attention_mask (`torch.Tensor` of shape `(batch_size, tokens)`): 1 on real tokens.
            token_type_ids (`torch.LongTensor` of shape `(batch_size, tokens)`, *optional*).
            {phone,syllable,word}_segments (`torch.FloatTensor` of shape `(batch_size, segments, 2)`): start and end
                seconds of each segment, from the start of the audio. Not given = no alignment for any row.
            {phone,syllable,word}_segments_mask (`torch.Tensor` of shape `(batch_size, segments)`): 1 on real segments;
                an all-zero row = no alignment for that utterance (documented fall-back). The segments of a row
                without audio are not read (they locate speech frames; its audio heads are absent anyway); real
                segments with no audio input at all (neither `input_values` nor `audio_features`) raise.
            audio_features (`torch.FloatTensor`): cached speech-encoder output instead of `input_values`:
                `(batch_size, frames, audio_hidden_size)` of the configured layer, or
                `(batch_size, layers + 1, frames, audio_hidden_size)` (all hidden states) for `"weighted_sum"`.
            audio_features_mask (`torch.Tensor` of shape `(batch_size, frames)`): 1 on real frames.
            text_features (`torch.FloatTensor`): cached text-encoder output instead of `input_ids`, shaped like
                `audio_features`; `text_attention_mask` is its mask.
            output_attentions (`bool`, *optional*): return the co-attention weights.

        Either modality may be left out; the heads that need it are then masked for every row.
        """
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        output_attentions = bool(output_attentions)
        if input_values is not None and audio_features is not None:
            raise ValueError("Pass either `input_values` or `audio_features`, not both.")
        if input_ids is not None and text_features is not None:
            raise ValueError("Pass either `input_ids` or `text_features`, not both.")
        if input_values is None and audio_features is None:
            # Segments locate speech frames. Real segments with no audio input at all are a caller's mistake (the
            # audio was forgotten), not a text-only batch: fail instead of silently predicting from text alone.
            # Silent: all-zero segment masks (what the pipeline and the collator send for rows without an
            # alignment), and audio that was passed with all-zero masks (rows without audio; their segments are
            # not read, see below).
            segment_inputs = {
                "phone": (phone_segments, phone_segments_mask),
                "syllable": (syllable_segments, syllable_segments_mask),
                "word": (word_segments, word_segments_mask),
            }
            with_segments = [
                f"{granularity}_segments"
                for granularity, (segments, segments_mask) in segment_inputs.items()
                if granularity in config.member_granularities and _has_real_segments(segments, segments_mask)
            ]
            if with_segments:
                raise ValueError(
                    f"Segments were given ({', '.join(with_segments)} with real entries) without audio: pass "
                    "`input_values` or `audio_features` with them, or all-zero segment masks for rows without audio."
                )

        # Speech frames
        # a modality that no row has (all-zero masks) is absent for the batch: its encoder does not run
        if attention_mask is not None and not bool(attention_mask.any()):
            input_values = attention_mask = None
        if audio_features_mask is not None and not bool(audio_features_mask.any()):
            audio_features = audio_features_mask = None
        if text_attention_mask is not None and not bool(text_attention_mask.any()):
            input_ids = text_features = text_attention_mask = token_type_ids = None
        audio, frames_mask, durations = None, None, None
        if self.audio_encoder is not None and input_values is not None:
            audio, frames_mask = self.get_audio_features(input_values, attention_mask)
            samples = (
                attention_mask.sum(dim=-1)
                if attention_mask is not None
                else torch.full((input_values.shape[0],), input_values.shape[1], device=input_values.device)
            )
            durations = samples.double() / config.sampling_rate
        elif self.audio_encoder is not None and audio_features is not None:
            audio, frames_mask = self._cached_features(
                "audio_features",
                audio_features,
                audio_features_mask,
                config.audio_layer,
                self.audio_layer_weights,
                config.audio_config.hidden_size,
            )
            # the longest audio that gives this many frames
            frames = frames_mask.sum(dim=-1).double()
            durations = (frames * self.frame_stride + self.frame_receptive_field - 1) / config.sampling_rate

        # Text tokens
        text, text_mask = None, None
        if self.text_encoder is not None and input_ids is not None:
            text, text_mask = self.get_text_features(input_ids, text_attention_mask, token_type_ids)
        elif self.text_encoder is not None and text_features is not None:
            text, text_mask = self._cached_features(
                "text_features",
                text_features,
                text_attention_mask,
                config.text_layer,
                self.text_layer_weights,
                config.text_config.hidden_size,
            )
        if audio is None and text is None:
            raise ValueError(
                f"No input for fusion members {config.fusion_members}: pass audio (`input_values` or "
                "`audio_features`) and/or text (`input_ids` or `text_features`)."
            )
        reference = audio if audio is not None else text
        batch_size, device = reference.shape[0], reference.device
        if audio is not None and text is not None and audio.shape[0] != text.shape[0]:
            raise ValueError(f"Audio and text batch sizes differ: {audio.shape[0]} vs {text.shape[0]}")
        no_rows = torch.zeros(batch_size, dtype=torch.bool, device=device)
        text_present = text_mask.any(dim=-1) if text is not None else no_rows

        # Speech sequences per granularity
        given = {
            "phone": (phone_segments, phone_segments_mask),
            "syllable": (syllable_segments, syllable_segments_mask),
            "word": (word_segments, word_segments_mask),
        }
        unused = [
            g for g, (segments, _) in given.items() if segments is not None and g not in config.member_granularities
        ]
        if unused:
            # a processor may emit every granularity; ablation models simply do not read the ones they lack
            logger.warning_once(
                f"Segments were given for {unused}, which no fusion member of {config.fusion_members} uses; "
                "they are not read."
            )
        sequences, sequence_masks = {}, {}
        if audio is not None:
            centers = None
            for granularity in config.member_granularities:
                if granularity == "frame":
                    sequences["frame"], sequence_masks["frame"] = audio, frames_mask
                    continue
                segments, segments_mask = given[granularity]
                if segments is None:  # no alignment for the batch: this granularity is masked for every row
                    sequences[granularity] = audio.new_zeros(batch_size, 1, audio.shape[-1])
                    sequence_masks[granularity] = torch.zeros(batch_size, 1, dtype=torch.bool, device=device)
                    continue
                name = f"{granularity}_segments"
                if segments_mask is None:
                    segments_mask = torch.ones(segments.shape[:2], dtype=torch.bool, device=segments.device)
                if segments.dim() != 3 or segments.shape[0] != batch_size:
                    raise ValueError(f"`{name}` must be ({batch_size}, segments, 2), got {tuple(segments.shape)}")
                segments, segments_mask = segments.to(device), segments_mask.bool().to(device)
                if segments_mask.shape == segments.shape[:2]:
                    # segments locate speech frames: a row without audio has none, so its segments are not read
                    segments_mask = segments_mask & frames_mask.any(dim=-1, keepdim=True)
                check_segments(segments, segments_mask, durations, name, config.max_segment_overrun)
                if centers is None:
                    centers = frame_centers(
                        audio.shape[1], self.frame_stride, self.frame_receptive_field, config.sampling_rate, device
                    )
                sequences[granularity] = pool_segments(
                    audio, segments.to(device), segments_mask.to(device), frames_mask, centers, config.segment_pooling
                )
                sequence_masks[granularity] = segments_mask.to(device)
        present = {g: mask.any(dim=-1) for g, mask in sequence_masks.items()}

        # Classifier inputs of the member heads
        pooled, head_mask, weights = {}, {}, {}

        def early(granularity: str) -> torch.Tensor:
            output, layer_weights = self.coattention[granularity](
                sequences[granularity], sequence_masks[granularity], text, text_mask, output_attentions
            )
            if output_attentions:
                weights[f"early_{granularity}"] = layer_weights
            return output

        for member in config.fusion_members:
            if member == "text":
                if text is not None:
                    vector = text[:, 0] if config.text_pooling == "cls" else masked_mean(text, text_mask)
                    pooled[member], head_mask[member] = vector, text_present
                else:
                    head_mask[member] = no_rows
            elif member.startswith("audio_"):
                granularity = member.split("_", 1)[1]
                if audio is not None:
                    pooled[member] = masked_mean(sequences[granularity], sequence_masks[granularity])
                    head_mask[member] = present[granularity]
                else:
                    head_mask[member] = no_rows
            elif audio is None or text is None:
                head_mask[member] = no_rows
            elif member == "early":
                pooled[member] = torch.cat([early(g) for g in config.granularities], dim=-1)
                head_mask[member] = text_present & torch.stack([present[g] for g in config.granularities]).all(0)
            else:
                granularity = member.split("_", 1)[1]
                pooled[member] = early(granularity)
                head_mask[member] = text_present & present[granularity]

        output = MultiLevelFusionModelOutput(
            pooled_outputs=pooled,
            head_mask=head_mask,
            audio_hidden_states=audio,
            audio_frames_mask=frames_mask,
            text_hidden_states=text,
            text_attention_mask=text_mask,
            segment_embeddings=sequences,
            segment_masks=sequence_masks,
            coattention_weights=weights if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


class MultiLevelFusionForEmotionRecognition(MultiLevelFusionPreTrainedModel):
    """[`MultiLevelFusionModel`] with one classifier per fusion member and their late fusion."""

    def __init__(self, config: MultiLevelFusionConfig):
        super().__init__(config)
        self.mlfusion = MultiLevelFusionModel(config)
        early_size = 2 * config.fusion_hidden_size
        sizes = {"text": config.text_config.hidden_size, "early": early_size * len(config.granularities)}
        self.heads = nn.ModuleDict()
        for member in config.fusion_members:
            if member.startswith("audio_"):
                size = config.audio_config.hidden_size
            elif member.startswith("early_"):
                size = early_size
            else:
                size = sizes[member]
            self.heads[member] = MultiLevelFusionClassifier(size, config)
        self.post_init()

    def onnx_export_spec(self, parts: str, exporter: str) -> Any:
        """How `avemotion export-onnx` exports this model (the hook `avemotion.models.onnx_export` calls): an
        `OnnxExportSpec` with the graph's inputs and outputs and its export wrapper, for `parts` (`"heads"` or
        `"full"`) and `exporter`. Raises a `ValueError` for what cannot be exported (the dynamo exporter). The export
        code is imported here, not with the model; a remote copy (trust_remote_code) has no export code."""
        try:  # (in a try block, so that a remote copy does not list avemotion among the packages it needs)
            from avemotion.models.mlfusion.onnx_mlfusion import fusion_onnx_export_spec
        except ImportError as error:
            raise ValueError("ONNX export needs the avemotion package (pip install 'avemotion[onnx]')") from error
        return fusion_onnx_export_spec(self, parts, exporter)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        phone_segments: torch.Tensor | None = None,
        phone_segments_mask: torch.Tensor | None = None,
        syllable_segments: torch.Tensor | None = None,
        syllable_segments_mask: torch.Tensor | None = None,
        word_segments: torch.Tensor | None = None,
        word_segments_mask: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_features_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> MultiLevelFusionEmotionRecognitionOutput | tuple:
        r"""
        Inputs as in [`MultiLevelFusionModel.forward`], plus:

        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices.
        """
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        encoded = self.mlfusion(
            input_values=input_values,
            attention_mask=attention_mask,
            input_ids=input_ids,
            text_attention_mask=text_attention_mask,
            token_type_ids=token_type_ids,
            phone_segments=phone_segments,
            phone_segments_mask=phone_segments_mask,
            syllable_segments=syllable_segments,
            syllable_segments_mask=syllable_segments_mask,
            word_segments=word_segments,
            word_segments_mask=word_segments_mask,
            audio_features=audio_features,
            audio_features_mask=audio_features_mask,
            text_features=text_features,
            output_attentions=output_attentions,
            return_dict=True,
        )
        masks = encoded.head_mask
        batch_size, device = next(iter(masks.values())).shape[0], next(iter(masks.values())).device
        raw = {}
        for member in config.fusion_members:
            if member in encoded.pooled_outputs:
                raw[member] = self.heads[member](encoded.pooled_outputs[member])
            else:  # a modality the head needs is absent for the whole batch
                raw[member] = torch.full((batch_size, config.num_labels), math.nan, dtype=self.dtype, device=device)

        members = config.fusion_members
        if len(members) == 1:
            # a single member is a plain classifier: its own logits, no renormalisation
            if not bool(masks[members[0]].all()):
                rows = (~masks[members[0]]).nonzero().flatten().tolist()
                raise ValueError(f"rows {rows} lack the inputs of the only fusion member {members[0]!r}")
            logits = raw[members[0]]
        else:
            weights = None
            if config.late_fusion_mode == "weighted":
                weights = [config.late_fusion_weights[m] for m in members]
            logits = late_fuse_logits(
                [raw[m] for m in members], config.late_fusion_mode, weights, [masks[m] for m in members]
            )

        loss, head_losses = None, None
        if labels is not None:
            if labels.dim() != 1 or labels.shape[0] != batch_size:
                raise ValueError(f"`labels` must be ({batch_size},) class indices, got {tuple(labels.shape)}")
            labels = labels.to(logits.device).long()
            class_weights = None
            if config.class_weights is not None:
                class_weights = torch.tensor(config.class_weights, dtype=logits.dtype, device=logits.device)
            loss_weights = config.head_loss_weights or {}
            head_losses, terms = {}, []
            for member in members:
                rows = masks[member]
                if not bool(rows.any()):
                    continue
                head_losses[member] = nn.functional.cross_entropy(
                    raw[member][rows], labels[rows], weight=class_weights
                )
                terms.append(loss_weights.get(member, 1.0) * head_losses[member])
            loss = torch.stack(terms).sum()

        head_logits = {m: raw[m].masked_fill(~masks[m].unsqueeze(-1), math.nan) for m in members}
        output = MultiLevelFusionEmotionRecognitionOutput(
            loss=loss,
            logits=logits,
            head_logits=head_logits,
            head_mask=masks,
            head_losses=head_losses,
            coattention_weights=encoded.coattention_weights,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "MultiLevelFusionEmotionRecognitionOutput",
    "MultiLevelFusionForEmotionRecognition",
    "MultiLevelFusionModel",
    "MultiLevelFusionModelOutput",
    "MultiLevelFusionPreTrainedModel",
    "late_fuse_logits",
    "masked_mean",
]
