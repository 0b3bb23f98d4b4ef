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
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging

try:  # save-time extras of the package (auto_map for both Auto classes, the pipeline); a remote copy
    # (trust_remote_code) runs without avemotion and does not need them
    if not __name__.startswith("avemotion."):
        raise ImportError
    from avemotion.models.auto import EmotionModelHubMixin
    from avemotion.models.loading_checks import pretrained_backbone_errors
except ImportError:

    class EmotionModelHubMixin:  # noqa: D101
        pass

    def pretrained_backbone_errors(path: Any) -> contextlib.AbstractContextManager:  # noqa: D103
        return contextlib.nullcontext()


from .configuration_mlfusion import FusionMember, MultiLevelFusionConfig
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


# Copied from avemotion.utils.masking.masked_mean
def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over axis 1 of `(B, T, D)` using the `(B, T)` bool mask; rows with no real position give zeros."""
    if mask is None:
        return hidden_states.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# Copied from avemotion.utils.masking.feature_frames_mask
def feature_frames_mask(audio_config: Any, num_frames: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, num_frames)` bool: the frames of a wav2vec2-style backbone that cover real samples of the right-padded
    `(B, N)` `attention_mask`.

    The frame count of each row follows from its sample count through the convolutional feature encoder
    (`audio_config.conv_kernel`, `audio_config.conv_stride`) and, when `audio_config.add_adapter`, the adapter's
    strided layers (wav2vec2's own length formula). A row with fewer samples than one frame gets no frame.
    """
    lengths = attention_mask.long().sum(dim=-1)
    for kernel, stride in zip(audio_config.conv_kernel, audio_config.conv_stride):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    if getattr(audio_config, "add_adapter", False):
        for _ in range(audio_config.num_adapter_layers):
            lengths = torch.div(lengths - 1, audio_config.adapter_stride, rounding_mode="floor") + 1
    steps = torch.arange(num_frames, device=attention_mask.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(-1)


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
    dtype = logits[0].dtype
    # in float32 at least: bfloat16 log-posteriors would round the small differences between members away
    stacked = torch.stack(logits).to(torch.promote_types(dtype, torch.float32))  # (K, B, C)
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
        return torch.logsumexp(log_probs + torch.log(weight), dim=0).to(dtype)
    if mode == "mean_logprob":
        return torch.log_softmax((weight * log_probs).sum(dim=0), dim=-1).to(dtype)
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
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            # softmax in float32 (a no-op for a float32 model): half-precision probabilities lose the small ones
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
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


def _without_pooler(build: Callable[..., PreTrainedModel], *args: Any) -> PreTrainedModel:
    """`build(*args, add_pooling_layer=False)` (`AutoModel.from_config` or `AutoModel.from_pretrained`), or
    `build(*args)` for an encoder class that has no pooler to leave out. BERT-style encoders are built without their
    pooler: the model pools itself, and an unused pooler would break DDP (unused parameters)."""
    try:
        return build(*args, add_pooling_layer=False)
    except TypeError as error:
        if "add_pooling_layer" not in str(error):
            raise
    return build(*args)


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
    # The declaration of the encoder freezing (plain data, read by the trainer's `freeze_backbones`): each config flag
    # that freezes an encoder, with the flags that refine how it is frozen; `apply_backbone_freezing()` applies them.
    backbone_freeze_flags = {
        "freeze_audio_encoder": ("freeze_feature_encoder",),
        "freeze_text_encoder": (),
    }

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' `from_pretrained`, then `apply_backbone_freezing()`: loading replaces every parameter by a
        trainable one (transformers 5), which would leave the backbones that the config freezes trainable."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_backbone_freezing()  # output_loading_info=True
        return loaded

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
        # a backbone directory's auto_map runs nothing (no prompt to trust it either)
        audio_encoder = None
        if audio is not None:
            with pretrained_backbone_errors(audio):
                audio_encoder = AutoModel.from_pretrained(audio, trust_remote_code=False)
        text_encoder = None
        if text is not None:
            with pretrained_backbone_errors(text):
                text_encoder = _without_pooler(
                    functools.partial(AutoModel.from_pretrained, trust_remote_code=False), text
                )
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
        base.apply_backbone_freezing()
        return model


class MultiLevelFusionModel(MultiLevelFusionPreTrainedModel):
    """The encoders, segment pooling and co-attention blocks; outputs the classifier input of every member head.
    Only the parts that some fusion member needs are built."""

    def __init__(self, config: MultiLevelFusionConfig):
        super().__init__(config)
        self.audio_encoder = AutoModel.from_config(config.audio_config) if config.uses_audio else None
        self.text_encoder = _without_pooler(AutoModel.from_config, config.text_config) if config.uses_text else None
        self.audio_layer_weights = self.text_layer_weights = None
        if self.audio_encoder is not None and config.audio_layer == "weighted_sum":
            self.audio_layer_weights = nn.Parameter(torch.zeros(config.audio_config.num_hidden_layers + 1))
        if self.text_encoder is not None and config.text_layer == "weighted_sum":
            self.text_layer_weights = nn.Parameter(torch.zeros(config.text_config.num_hidden_layers + 1))
        early = [g for member in config.members if member.kind == "early" for g in member.granularities]
        self.coattention = nn.ModuleDict({g: MultiLevelFusionCoAttentionBlock(config) for g in early})
        self.frame_stride, self.frame_receptive_field = frame_geometry(
            config.audio_config.conv_kernel, config.audio_config.conv_stride
        )
        self.post_init()
        self.apply_backbone_freezing()

    def apply_backbone_freezing(self) -> None:
        """Apply the config's freeze flags (`backbone_freeze_flags`) to the encoders: `requires_grad` and the mode
        (a frozen encoder is kept in eval mode, a trainable one follows the model), as a model built from the same
        config has them; call it again after changing the flags."""
        config = self.config
        if self.audio_encoder is not None:
            self.audio_encoder.requires_grad_(not config.freeze_audio_encoder)
            self.audio_encoder.train(self.training and not config.freeze_audio_encoder)
            feature_encoder = getattr(self.audio_encoder, "feature_extractor", None)
            if config.freeze_feature_encoder and feature_encoder is not None:
                if hasattr(self.audio_encoder, "freeze_feature_encoder"):  # wav2vec2, WavLM, data2vec-audio
                    self.audio_encoder.freeze_feature_encoder()
                else:  # HuBERT has no such method
                    feature_encoder.requires_grad_(False)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(not config.freeze_text_encoder)
            self.text_encoder.train(self.training and not config.freeze_text_encoder)

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
        # a bfloat16/float16 model takes the feature extractor's float32 waveforms (autocast: the encoder stays
        # float32)
        input_values = input_values.to(self.audio_encoder.dtype)

        def encode(values: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad() if self.config.freeze_audio_encoder else contextlib.nullcontext():
                encoded = self.audio_encoder(
                    values, attention_mask=mask, output_hidden_states=layer != "last", return_dict=True
                )
            features = _select_layer(encoded.last_hidden_state, encoded.hidden_states, layer, self.audio_layer_weights)
            if mask is None:
                return features, torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
            return features, feature_frames_mask(self.audio_encoder.config, features.shape[1], mask)

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
        features = features.to(self.dtype)  # float32 cached features into a bfloat16/float16 model
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
        segment_inputs = {
            "phone": (phone_segments, phone_segments_mask),
            "syllable": (syllable_segments, syllable_segments_mask),
            "word": (word_segments, word_segments_mask),
        }
        self._check_input_choice(input_values, audio_features, input_ids, text_features, segment_inputs)
        audio, frames_mask, durations = self._speech_frames(
            input_values, attention_mask, audio_features, audio_features_mask
        )
        text, text_mask = self._text_tokens(input_ids, text_attention_mask, token_type_ids, text_features)
        self._check_batch(audio, text)
        sequences, sequence_masks = self._speech_sequences(audio, frames_mask, durations, segment_inputs)
        pooled, head_mask, weights = self._member_inputs(
            audio, text, text_mask, sequences, sequence_masks, output_attentions
        )
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

    def _check_input_choice(
        self,
        input_values: torch.Tensor | None,
        audio_features: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        text_features: torch.Tensor | None,
        segment_inputs: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    ) -> None:
        """One input per modality, and no real segments without an audio input."""
        if input_values is not None and audio_features is not None:
            raise ValueError("Pass either `input_values` or `audio_features`, not both.")
        if input_ids is not None and text_features is not None:
            raise ValueError("Pass either `input_ids` or `text_features`, not both.")
        if input_values is not None or audio_features is not None:
            return
        # Segments locate speech frames. Real segments with no audio input at all are a caller's mistake (the audio
        # was forgotten), not a text-only batch: fail instead of silently predicting from text alone. Silent: all-zero
        # segment masks (what the pipeline and the collator send for rows without an alignment), and audio that was
        # passed with all-zero masks (rows without audio; their segments are not read, see `_segment_sequence`).
        with_segments = [
            f"{granularity}_segments"
            for granularity, (segments, segments_mask) in segment_inputs.items()
            if granularity in self.config.member_granularities and _has_real_segments(segments, segments_mask)
        ]
        if with_segments:
            raise ValueError(
                f"Segments were given ({', '.join(with_segments)} with real entries) without audio: pass "
                "`input_values` or `audio_features` with them, or all-zero segment masks for rows without audio."
            )

    def _speech_frames(
        self,
        input_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        audio_features: torch.Tensor | None,
        audio_features_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Speech frames from waveforms or cached features: `(features (B, T, D), frames_mask (B, T) bool,
        durations (B,) float64 seconds of real audio)`, or three Nones without audio (input or encoder)."""
        config = self.config
        # audio that no row has (all-zero masks) is absent for the batch: the encoder does not run
        if attention_mask is not None and not bool(attention_mask.any()):
            input_values = attention_mask = None
        if audio_features_mask is not None and not bool(audio_features_mask.any()):
            audio_features = audio_features_mask = None
        if self.audio_encoder is None or (input_values is None and audio_features is None):
            return None, None, None
        if input_values is not None:
            audio, frames_mask = self.get_audio_features(input_values, attention_mask)
            samples = (
                attention_mask.sum(dim=-1)
                if attention_mask is not None
                else torch.full((input_values.shape[0],), input_values.shape[1], device=input_values.device)
            )
            return audio, frames_mask, samples.double() / config.sampling_rate
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
        return audio, frames_mask, (frames * self.frame_stride + self.frame_receptive_field - 1) / config.sampling_rate

    def _text_tokens(
        self,
        input_ids: torch.Tensor | None,
        text_attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        text_features: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Token vectors from token ids or cached features: `(features (B, M, D), mask (B, M) bool)`, or Nones
        without text (input, a row with text, or encoder)."""
        if self.text_encoder is None or (text_attention_mask is not None and not bool(text_attention_mask.any())):
            return None, None
        if input_ids is not None:
            return self.get_text_features(input_ids, text_attention_mask, token_type_ids)
        if text_features is not None:
            config = self.config
            return self._cached_features(
                "text_features",
                text_features,
                text_attention_mask,
                config.text_layer,
                self.text_layer_weights,
                config.text_config.hidden_size,
            )
        return None, None

    def _check_batch(self, audio: torch.Tensor | None, text: torch.Tensor | None) -> None:
        """At least one modality, and the same batch size for both."""
        if audio is None and text is None:
            raise ValueError(
                f"No input for fusion members {self.config.fusion_members}: pass audio (`input_values` or "
                "`audio_features`) and/or text (`input_ids` or `text_features`)."
            )
        if audio is not None and text is not None and audio.shape[0] != text.shape[0]:
            raise ValueError(f"Audio and text batch sizes differ: {audio.shape[0]} vs {text.shape[0]}")

    def _speech_sequences(
        self,
        audio: torch.Tensor | None,
        frames_mask: torch.Tensor | None,
        durations: torch.Tensor | None,
        segment_inputs: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The speech sequence of every granularity a member uses: granularity -> `(B, N, D)` and its `(B, N)`
        mask (`frame`: the frames themselves). Empty without audio."""
        config = self.config
        unused = [
            g
            for g, (segments, _) in segment_inputs.items()
            if segments is not None and g not in config.member_granularities
        ]
        if unused:
            # a processor may emit every granularity; ablation models simply do not read the ones they lack
            logger.warning_once(
                f"Segments were given for {unused}, which no fusion member of {config.fusion_members} uses; "
                "they are not read."
            )
        sequences, sequence_masks = {}, {}
        if audio is None:
            return sequences, sequence_masks
        centers = None
        for granularity in config.member_granularities:
            if granularity == "frame":
                sequences["frame"], sequence_masks["frame"] = audio, frames_mask
                continue
            if centers is None:
                centers = frame_centers(
                    audio.shape[1], self.frame_stride, self.frame_receptive_field, config.sampling_rate, audio.device
                )
            sequences[granularity], sequence_masks[granularity] = self._segment_sequence(
                granularity, *segment_inputs[granularity], audio, frames_mask, durations, centers
            )
        return sequences, sequence_masks

    def _segment_sequence(
        self,
        granularity: str,
        segments: torch.Tensor | None,
        segments_mask: torch.Tensor | None,
        audio: torch.Tensor,
        frames_mask: torch.Tensor,
        durations: torch.Tensor,
        centers: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment means `(B, N, D)` of the frames `audio` (B, T, D) and the `(B, N)` bool mask of the segments
        read. Not given: one masked segment per row (no alignment for the batch)."""
        batch_size, device = audio.shape[0], audio.device
        if segments is None:
            return (
                audio.new_zeros(batch_size, 1, audio.shape[-1]),
                torch.zeros(batch_size, 1, dtype=torch.bool, device=device),
            )
        name = f"{granularity}_segments"
        if segments_mask is None:
            segments_mask = torch.ones(segments.shape[:2], dtype=torch.bool, device=segments.device)
        if segments.dim() != 3 or segments.shape[0] != batch_size:
            raise ValueError(f"`{name}` must be ({batch_size}, segments, 2), got {tuple(segments.shape)}")
        segments, segments_mask = segments.to(device), segments_mask.bool().to(device)
        if segments_mask.shape == segments.shape[:2]:
            # segments locate speech frames: a row without audio has none, so its segments are not read
            segments_mask = segments_mask & frames_mask.any(dim=-1, keepdim=True)
        check_segments(segments, segments_mask, durations, name, self.config.max_segment_overrun)
        pooled = pool_segments(audio, segments, segments_mask, frames_mask, centers, self.config.segment_pooling)
        return pooled, segments_mask

    def _member_inputs(
        self,
        audio: torch.Tensor | None,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        sequences: dict[str, torch.Tensor],
        sequence_masks: dict[str, torch.Tensor],
        output_attentions: bool,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, tuple]]:
        """`(pooled, head_mask, coattention_weights)`: per member head its `(B, head_input_size)` classifier input
        and the `(B,)` rows it covers. A head whose modality is absent for the batch has no input and covers no row."""
        reference = audio if audio is not None else text
        no_rows = torch.zeros(reference.shape[0], dtype=torch.bool, device=reference.device)
        text_present = text_mask.any(dim=-1) if text is not None else no_rows
        present = {g: mask.any(dim=-1) for g, mask in sequence_masks.items()}
        pooled, head_mask, weights = {}, {}, {}
        for member in self.config.members:
            if (member.uses_audio and audio is None) or (member.uses_text and text is None):
                head_mask[member.name] = no_rows
            elif member.kind == "text":
                pooled[member.name] = text[:, 0] if self.config.text_pooling == "cls" else masked_mean(text, text_mask)
                head_mask[member.name] = text_present
            elif member.kind == "audio":
                (granularity,) = member.granularities
                pooled[member.name] = masked_mean(sequences[granularity], sequence_masks[granularity])
                head_mask[member.name] = present[granularity]
            else:
                pooled[member.name] = self._early_fusion(
                    member, text, text_mask, sequences, sequence_masks, output_attentions, weights
                )
                head_mask[member.name] = text_present & torch.stack([present[g] for g in member.granularities]).all(0)
        return pooled, head_mask, weights

    def _early_fusion(
        self,
        member: FusionMember,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        sequences: dict[str, torch.Tensor],
        sequence_masks: dict[str, torch.Tensor],
        output_attentions: bool,
        weights: dict[str, tuple],
    ) -> torch.Tensor:
        """The co-attention output `(B, 2 * fusion_hidden_size * len(member.granularities))` of an early-fusion
        member; with `output_attentions`, each block's weights go to `weights["early_<g>"]`."""
        outputs = []
        for granularity in member.granularities:
            output, layer_weights = self.coattention[granularity](
                sequences[granularity], sequence_masks[granularity], text, text_mask, output_attentions
            )
            if output_attentions:
                weights[f"early_{granularity}"] = layer_weights
            outputs.append(output)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)


class MultiLevelFusionForEmotionRecognition(MultiLevelFusionPreTrainedModel):
    """[`MultiLevelFusionModel`] with one classifier per fusion member and their late fusion."""

    def __init__(self, config: MultiLevelFusionConfig):
        super().__init__(config)
        self.mlfusion = MultiLevelFusionModel(config)
        self.heads = nn.ModuleDict(
            {
                member.name: MultiLevelFusionClassifier(self._head_input_size(member), config)
                for member in config.members
            }
        )
        self.post_init()

    def apply_backbone_freezing(self) -> None:
        """Apply the config's freeze flags to the encoders (see [`MultiLevelFusionModel.apply_backbone_freezing`])."""
        self.mlfusion.apply_backbone_freezing()

    def _head_input_size(self, member: FusionMember) -> int:
        config = self.config
        if member.kind == "audio":
            return config.audio_config.hidden_size
        if member.kind == "text":
            return config.text_config.hidden_size
        return 2 * config.fusion_hidden_size * len(member.granularities)

    def input_spec(self) -> dict[str, Any]:
        """What generic code (collator, trainer, pipeline) needs to feed the model, as plain data: per modality its
        input and mask keys and layout, its cached-feature keys, width, stacked layers (None: one layer) and frame
        rate; audio its sampling rate and the shortest waveform (one frame of the CNN encoder); the segment inputs
        `(segments key, mask key)` of the granularities that a fusion member reads; the analysis window for long media
        (None: the caller's default). Cached text features share `text_attention_mask` with the token ids. Read by
        `avemotion.models.declaration.read_declaration`."""
        config, base = self.config, self.mlfusion
        return {
            "modalities": {
                "audio": {
                    "inputs": ("input_values", "attention_mask"),
                    "layout": "waveform",
                    "features": ("audio_features", "audio_features_mask"),
                    "feature_dim": config.audio_config.hidden_size,
                    "feature_rate": config.sampling_rate / base.frame_stride,
                    "min_samples": base.frame_receptive_field,
                    # cached features of `audio_layer="weighted_sum"` stack every hidden state: (layers, frames, dim)
                    "feature_layers": (
                        config.audio_config.num_hidden_layers + 1 if config.audio_layer == "weighted_sum" else None
                    ),
                    "sampling_rate": config.sampling_rate,
                },
                "text": {
                    "inputs": ("input_ids", "text_attention_mask"),
                    "layout": "tokens",
                    "extra_inputs": ("token_type_ids",),
                    "max_length": config.max_text_length,
                    "features": ("text_features", "text_attention_mask"),
                    "feature_dim": config.text_config.hidden_size,
                },
            },
            "segments": {
                g: (f"{g}_segments", f"{g}_segments_mask") for g in config.member_granularities if g != "frame"
            },
            "window_seconds": getattr(config, "window_seconds", None),
        }

    def training_steps(self) -> tuple[dict[str, Any], ...]:
        """One joint step: every parameter, the summed loss of the member heads (`loss`), every row."""
        return ({"name": "joint", "modules": (), "loss": "loss", "rows": ()},)

    def evaluation_branches(self) -> dict[str, str]:
        """The output branches evaluation reports, with their report names: the late-fused `logits` (`"combined"`)
        and each member head (its name)."""
        return {"logits": "combined", **{member: member for member in self.config.fusion_members}}

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
        return_dict = return_dict if return_dict is not None else self.config.return_dict
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
        raw = self._member_logits(encoded.pooled_outputs, masks)
        logits = self._late_fusion(raw, masks)
        loss, head_losses = None, None
        if labels is not None:
            loss, head_losses = self._joint_loss(raw, masks, labels, logits)
        members = self.config.fusion_members
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

    def _member_logits(
        self, pooled: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Member -> `(B, num_labels)` head logits; NaN for a head whose modality is absent for the whole batch."""
        reference = next(iter(masks.values()))
        raw = {}
        for member in self.config.fusion_members:
            if member in pooled:
                raw[member] = self.heads[member](pooled[member])
            else:
                raw[member] = torch.full(
                    (reference.shape[0], self.config.num_labels), math.nan, dtype=self.dtype, device=reference.device
                )
        return raw

    def _late_fusion(self, raw: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prediction `(B, num_labels)`: the late fusion of the members' posteriors over the rows each covers; a
        single member is a plain classifier (its own logits, no renormalisation)."""
        config = self.config
        members = config.fusion_members
        if len(members) == 1:
            if not bool(masks[members[0]].all()):
                rows = (~masks[members[0]]).nonzero().flatten().tolist()
                raise ValueError(f"rows {rows} lack the inputs of the only fusion member {members[0]!r}")
            return raw[members[0]]
        weights = None
        if config.late_fusion_mode == "weighted":
            weights = [config.late_fusion_weights[m] for m in members]
        return late_fuse_logits(
            [raw[m] for m in members], config.late_fusion_mode, weights, [masks[m] for m in members]
        )

    def _joint_loss(
        self,
        raw: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        labels: torch.Tensor,
        logits: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`(loss, head_losses)`: the `head_loss_weights`-weighted sum over member heads of their (class-weighted)
        cross-entropy on the rows each covers; heads covering no row are left out."""
        config = self.config
        batch_size = logits.shape[0]
        if labels.dim() != 1 or labels.shape[0] != batch_size:
            raise ValueError(f"`labels` must be ({batch_size},) class indices, got {tuple(labels.shape)}")
        labels = labels.to(logits.device).long()
        class_weights = None
        if config.class_weights is not None:
            class_weights = torch.tensor(config.class_weights, dtype=logits.dtype, device=logits.device)
        loss_weights = config.head_loss_weights or {}
        head_losses, terms = {}, []
        for member in config.fusion_members:
            rows = masks[member]
            if not bool(rows.any()):
                continue
            head_losses[member] = nn.functional.cross_entropy(raw[member][rows], labels[rows], weight=class_weights)
            terms.append(loss_weights.get(member, 1.0) * head_losses[member])
        return torch.stack(terms).sum(), head_losses


__all__ = [
    "MultiLevelFusionEmotionRecognitionOutput",
    "MultiLevelFusionForEmotionRecognition",
    "MultiLevelFusionModel",
    "MultiLevelFusionModelOutput",
    "MultiLevelFusionPreTrainedModel",
    "late_fuse_logits",
    "masked_mean",
]
