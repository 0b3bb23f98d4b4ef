"""PyTorch VAVL model (Versatile Audio-Visual Learning, Goncalves et al., arXiv 2305.07216).

Audio and video are each projected per frame (bias-free linear to ``projection_dim``), encoded by a modality
Conformer, then by a Conformer shared by both modalities with a residual connection and a LayerNorm, and mean-pooled
to one vector per utterance. Heads: audio-only, video-only, audio-visual fusion (on the concatenated vectors) and two
reconstruction heads that predict the time-average of the input features (an auxiliary task).

Either modality may be missing, for the whole batch (pass nothing for it) or for some rows (an all-zero mask row).
Each modality's backbone and encoders run only on the rows that have it (scattered back into the batch), so a row's
outputs and gradients are those of the rows that share its modalities, whatever else is in the batch.

The task model also declares what generic code needs (`input_spec`, `training_steps`, `evaluation_branches`).

Remote code: this file imports only torch, transformers and its folder (`configuration_vavl`, `conformer`), so a
saved checkpoint loads with `trust_remote_code=True` where avemotion is not installed. Helpers shared with the rest
of the package are `# Copied from` copies (kept equal by `tests/test_copies.py`); avemotion-only extras are imported
in `try` blocks.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import EfficientNetModel, PreTrainedModel, Wav2Vec2Config, Wav2Vec2Model
from transformers import initialization as init
from transformers.utils import ModelOutput

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


from .configuration_vavl import VavlConfig, audio_backbone_width, visual_backbone_width
from .conformer import (
    ConformerEncoder,
    ConformerFeedForward,
    ConformerRelativeSelfAttention,
    SinusoidalPositionalEmbedding,
    sinusoidal_embeddings,
    true_positions,
)


@dataclass
class _MaskLayout:
    """Host copy of what a modality's (B, T) frame mask says about each row, read back in one transfer per forward
    (`_mask_layouts`), so that choosing rows and frames needs no further device-to-host synchronisation.

    `counts`: real frames per row; `extents`: last real frame + 1 per row (0: the row lacks the modality)."""

    counts: list[int]
    extents: list[int]
    frames: int

    @property
    def present(self) -> list[bool]:
        return [count > 0 for count in self.counts]

    @property
    def num_rows(self) -> int:
        return sum(self.present)

    @property
    def all_rows(self) -> bool:
        return all(self.present)

    @property
    def longest(self) -> int:
        """Frames up to the end of the longest clip among the rows that have the modality."""
        return max(self.extents, default=0)

    @property
    def num_real(self) -> int:
        return sum(self.counts)


def _mask_layouts(*masks: tuple[torch.Tensor | None, int, int]) -> list[_MaskLayout]:
    """`_MaskLayout` of each `(mask, batch, frames)` (mask None: every frame real), with one device-to-host copy."""
    stats = []
    for mask, _, frames in masks:
        if mask is not None and frames:
            positions = torch.arange(1, frames + 1, device=mask.device)
            stats += [mask.sum(dim=-1), (mask * positions).amax(dim=-1)]
    host = torch.cat(stats).tolist() if stats else []
    layouts = []
    for mask, batch, frames in masks:
        if mask is None or not frames:
            value = frames if mask is None else 0
            layouts.append(_MaskLayout([value] * batch, [value] * batch, frames))
        else:
            layouts.append(_MaskLayout(host[:batch], host[batch : 2 * batch], frames))
            host = host[2 * batch :]
    return layouts


@dataclass
class VavlModelOutput(ModelOutput):
    """
    Outputs of [`VavlModel`]. Tensors of a modality that no row has are `None`; rows without a modality get zeros
    (pooled vectors, hidden states, features) and an all-False mask for it.

    Args:
        audio_pooled_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Utterance representation from the audio path (shared encoder output, mean-pooled over real frames).
        visual_pooled_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Utterance representation from the visual path.
        audio_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, audio_frames, hidden_size)`):
            Shared-encoder output for the audio frames.
        visual_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, video_frames, hidden_size)`):
            Shared-encoder output for the video frames.
        audio_features (`torch.FloatTensor` of shape `(batch_size, audio_frames, audio_feature_dim)`):
            The features the audio encoder consumed (backbone output or the given `audio_features`).
        visual_features (`torch.FloatTensor` of shape `(batch_size, video_frames, visual_feature_dim)`):
            The features the visual encoder consumed (normalised when `config.normalize_visual_features`).
        audio_features_mask (`torch.BoolTensor` of shape `(batch_size, audio_frames)`): True on real frames.
        visual_features_mask (`torch.BoolTensor` of shape `(batch_size, video_frames)`): True on real frames.
    """

    audio_pooled_output: torch.FloatTensor | None = None
    visual_pooled_output: torch.FloatTensor | None = None
    audio_last_hidden_state: torch.FloatTensor | None = None
    visual_last_hidden_state: torch.FloatTensor | None = None
    audio_features: torch.FloatTensor | None = None
    visual_features: torch.FloatTensor | None = None
    audio_features_mask: torch.BoolTensor | None = None
    visual_features_mask: torch.BoolTensor | None = None


@dataclass
class VavlEmotionRecognitionOutput(ModelOutput):
    """
    Outputs of [`VavlForEmotionRecognition`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given):
            `audio_loss + visual_loss + fusion_loss` over the terms that apply.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Per row: the fusion head when the row has both modalities, else the head of the one it has. For
            regression these are the raw head outputs (on `(y - min) / (max - min)` when `config.label_scale` is set).
        audio_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): audio head (None when no row has
            audio; NaN on the rows without audio).
        visual_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): visual head (None when no row has
            video; NaN on the rows without video).
        fusion_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): fusion head (None unless both
            modalities are given; NaN on the rows that lack one).
        audio_loss (`torch.FloatTensor` of shape `()`): task loss of the audio head plus the weighted audio
            reconstruction MSE, over rows with audio (VAVL's acoustic step).
        visual_loss (`torch.FloatTensor` of shape `()`): the same for video (VAVL's visual step).
        fusion_loss (`torch.FloatTensor` of shape `()`): task loss of the fusion head over rows with both
            modalities (VAVL's fusion step).
        audio_reconstruction_loss, visual_reconstruction_loss (`torch.FloatTensor` of shape `()`): the unweighted
            reconstruction MSEs included in `audio_loss`/`visual_loss`.
        audio_present, visual_present (`torch.BoolTensor` of shape `(batch_size,)`): which rows had each modality.
        audio_pooled_output, visual_pooled_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    audio_logits: torch.FloatTensor | None = None
    visual_logits: torch.FloatTensor | None = None
    fusion_logits: torch.FloatTensor | None = None
    audio_loss: torch.FloatTensor | None = None
    visual_loss: torch.FloatTensor | None = None
    fusion_loss: torch.FloatTensor | None = None
    audio_reconstruction_loss: torch.FloatTensor | None = None
    visual_reconstruction_loss: torch.FloatTensor | None = None
    audio_present: torch.BoolTensor | None = None
    visual_present: torch.BoolTensor | None = None
    audio_pooled_output: torch.FloatTensor | None = None
    visual_pooled_output: torch.FloatTensor | None = None


# Copied from avemotion.models.mlfusion.segments.frame_geometry
def frame_geometry(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """`(stride, receptive_field)` in samples of a wav2vec2-style CNN feature encoder.

    Frame `i` covers samples `[stride * i, stride * i + receptive_field)`; for wav2vec2-base this is (320, 400).
    """
    if len(conv_kernel) != len(conv_stride):
        raise ValueError(f"conv_kernel and conv_stride differ in length: {len(conv_kernel)} vs {len(conv_stride)}")
    receptive_field, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        receptive_field += (kernel - 1) * jump
        jump *= stride
    return jump, receptive_field


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


# Copied from avemotion.utils.losses.concordance_correlation_coefficient
def concordance_correlation_coefficient(
    predictions: torch.Tensor, targets: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Lin's concordance correlation coefficient per column, with population (biased) variances.

    ``CCC = 2 cov(p, y) / (var(p) + var(y) + (mean(p) - mean(y))^2)``, as in VAVL's training code.

    Args:
        predictions: (N,) or (N, K).
        targets: same shape as ``predictions``.
        eps: added to the denominator so that constant inputs give 0 instead of NaN.

    Returns:
        (K,) tensor (a scalar tensor for 1-D inputs).
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    predictions = predictions.float()
    targets = targets.float()
    mean_p, mean_y = predictions.mean(0), targets.mean(0)
    var_p = predictions.var(0, unbiased=False)
    var_y = targets.var(0, unbiased=False)
    covariance = ((predictions - mean_p) * (targets - mean_y)).mean(0)
    return 2 * covariance / (var_p + var_y + (mean_p - mean_y) ** 2 + eps)


# Copied from avemotion.utils.losses.concordance_loss
def concordance_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over attributes of ``1 - CCC`` (VAVL's dimensional loss). predictions, targets: (N, K)."""
    return (1.0 - concordance_correlation_coefficient(predictions, targets)).sum()


class VavlModalityEncoder(nn.Module):
    """Bias-free per-frame projection to `projection_dim`, then a Conformer (`num_modality_layers` blocks)."""

    def __init__(self, config: VavlConfig, feature_dim: int):
        super().__init__()
        self.projection = nn.Linear(feature_dim, config.projection_dim, bias=False)
        self.conformer = _build_conformer(config, config.projection_dim, config.num_modality_layers)

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None, legacy_layout: bool, num_real: int | None = None
    ) -> torch.Tensor:
        """features: (B, T, feature_dim) -> (B, T, hidden_size). `num_real`: the True count of `mask` when known
        (see `ConformerEncoder.forward`)."""
        hidden_states = self.projection(features)
        if legacy_layout:
            # The original code hands (T, B, D) to a (batch, time, dim) Conformer: attention runs across the batch.
            return self.conformer(hidden_states.transpose(0, 1)).transpose(0, 1)
        return self.conformer(hidden_states, mask, num_real)


class VavlSharedEncoder(nn.Module):
    """The layers shared by both modalities: `LayerNorm(Conformer(h) + h)`."""

    def __init__(self, config: VavlConfig):
        super().__init__()
        self.conformer = _build_conformer(config, config.hidden_size, config.num_shared_layers)
        self.layer_norm = nn.LayerNorm(config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, mask: torch.Tensor | None, legacy_layout: bool, num_real: int | None = None
    ) -> torch.Tensor:
        """hidden_states: (B, T, hidden_size) -> (B, T, hidden_size). `num_real`: as in `VavlModalityEncoder`."""
        if legacy_layout:
            encoded = self.conformer(hidden_states.transpose(0, 1)).transpose(0, 1)
        else:
            encoded = self.conformer(hidden_states, mask, num_real)
        return self.layer_norm(encoded + hidden_states)


class VavlHead(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear ... -> Linear(out). As in the original, only the first layer has an
    activation."""

    def __init__(self, input_size: int, hidden_sizes: list[int], output_size: int, dropout: float):
        super().__init__()
        sizes = [input_size, *hidden_sizes]
        self.projections = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(sizes[-1], output_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation(self.projections[0](hidden_states)))
        for projection in self.projections[1:]:
            hidden_states = projection(hidden_states)
        return self.out_proj(hidden_states)


def _build_conformer(config: VavlConfig, input_size: int, num_layers: int) -> ConformerEncoder:
    return ConformerEncoder(
        input_size=input_size,
        hidden_size=config.hidden_size,
        num_layers=num_layers,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        conv_kernel_size=config.conv_kernel_size,
        dropout=config.conformer_dropout,
        position_encoding=config.position_encoding,
        max_position_embeddings=config.max_position_embeddings,
    )


class VavlPreTrainedModel(EmotionModelHubMixin, PreTrainedModel):
    config_class = VavlConfig
    config: VavlConfig
    base_model_prefix = "vavl"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ConformerBlock"]
    # Forward takes no **kwargs; the Trainer must not rescale the loss by num_items_in_batch.
    accepts_loss_kwargs = False
    _auto_map_classes = ("VavlModel", "VavlForEmotionRecognition")
    # The declaration of the backbone freezing (plain data, read by the trainer's `freeze_backbones`): each config flag
    # that freezes a backbone, with the flags that refine how it is frozen; `apply_backbone_freezing()` applies them.
    backbone_freeze_flags = {
        "freeze_audio_backbone": ("freeze_audio_feature_encoder",),
        "freeze_visual_backbone": (),
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
        """The original code's initialisation: xavier-uniform weights and zero biases for the Conformer linears and
        the u/v biases, PyTorch defaults everywhere else."""
        if isinstance(module, ConformerRelativeSelfAttention):
            for linear in (module.linear_q, module.linear_k, module.linear_v, module.linear_pos, module.linear_out):
                init.xavier_uniform_(linear.weight)
                if linear.bias is not None:
                    init.zeros_(linear.bias)
            init.xavier_uniform_(module.pos_bias_u)
            init.xavier_uniform_(module.pos_bias_v)
        elif isinstance(module, ConformerFeedForward):
            for linear in (module.intermediate_dense, module.output_dense):
                init.xavier_uniform_(linear.weight)
                init.zeros_(linear.bias)
        elif isinstance(module, ConformerEncoder):
            init.xavier_uniform_(module.input_projection.weight)
            init.zeros_(module.input_projection.bias)
        elif isinstance(module, SinusoidalPositionalEmbedding):
            init.copy_(module.table, sinusoidal_embeddings(torch.arange(module.table.shape[0]), module.dim))
        elif isinstance(module, VavlModel):
            init.zeros_(module.visual_features_mean)
            init.ones_(module.visual_features_std)
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            # torch's default reset; Conformer linears are re-initialised by their parent module (visited after them)
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / fan_in**0.5
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm1d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    @classmethod
    def from_backbones(
        cls,
        audio: str | os.PathLike | None = None,
        visual: str | os.PathLike | None = None,
        audio_num_layers: int | None = None,
        config: VavlConfig | None = None,
        **config_kwargs: Any,
    ) -> VavlPreTrainedModel:
        """Build a model whose backbones are loaded from pretrained names or local directories; the VAVL layers and
        heads are freshly initialised.

        Args:
            audio: a `Wav2Vec2Model` checkpoint (name or directory), e.g. `"facebook/wav2vec2-large-robust"`.
            visual: an `EfficientNetModel` checkpoint (name or directory), e.g. the directory written by
                `avemotion convert-hsemotion --checkpoint enet_b2_8_best.pt` (HSEmotion's face model, 1408-d).
            audio_num_layers: keep only the first N transformer layers of the audio backbone (VAVL keeps 12 of
                wav2vec2-large-robust's 24).
            config: a base config (e.g. `VavlConfig.from_preset("crema-d")`), updated in place; otherwise
                `VavlConfig(**config_kwargs)`. The backbone configs become those of the loaded backbones,
                `audio_feature_dim`/`visual_feature_dim` their widths, and `audio_backbone_name`/`visual_backbone_name`
                the names given here.
        """
        if config is not None and config_kwargs:
            raise ValueError("Pass either `config` or config keyword arguments to from_backbones, not both.")
        if audio_num_layers is not None and (audio is None or int(audio_num_layers) < 1):
            raise ValueError(f"audio_num_layers={audio_num_layers} needs an audio backbone and a value >= 1")
        backbones: dict[str, Any] = {}
        if audio is not None:
            extra = {"num_hidden_layers": int(audio_num_layers)} if audio_num_layers else {}
            with pretrained_backbone_errors(audio):
                audio_backbone = Wav2Vec2Model.from_pretrained(audio, **extra)
            backbones.update(audio_backbone_config=audio_backbone.config, audio_backbone_name=str(audio))
            backbones["audio_feature_dim"] = audio_backbone_width(audio_backbone.config)
            backbones["_audio"] = audio_backbone
        if visual is not None:
            with pretrained_backbone_errors(visual):
                visual_backbone = EfficientNetModel.from_pretrained(visual)
            backbones.update(visual_backbone_config=visual_backbone.config, visual_backbone_name=str(visual))
            backbones["visual_feature_dim"] = visual_backbone_width(visual_backbone.config)
            backbones["_visual"] = visual_backbone
        loaded = {key: backbones.pop(key) for key in ("_audio", "_visual") if key in backbones}
        if config is None:
            config = VavlConfig(**{**config_kwargs, **backbones})
        else:
            for key, value in backbones.items():
                setattr(config, key, value)
            config.validate_architecture()
        model = cls(config)
        base = model.base_model
        if "_audio" in loaded:
            base.audio_backbone.load_state_dict(loaded["_audio"].state_dict())
        if "_visual" in loaded:
            base.visual_backbone.load_state_dict(loaded["_visual"].state_dict())
        base.apply_backbone_freezing()
        return model


class VavlModel(VavlPreTrainedModel):
    """The VAVL encoders: optional backbones, modality encoders, shared encoder, pooled representations."""

    # loading the encoders from a task checkpoint: its heads are expected leftovers, not a problem worth a report
    _keys_to_ignore_on_load_unexpected = [r"(audio|visual|fusion)(_reconstruction)?_head\."]

    def __init__(self, config: VavlConfig):
        super().__init__(config)
        config.check_backbone_widths()  # also for a config changed after it was built
        self.audio_backbone = Wav2Vec2Model(config.audio_backbone_config) if config.audio_backbone_config else None
        self.visual_backbone = (
            EfficientNetModel(config.visual_backbone_config) if config.visual_backbone_config else None
        )
        self.audio_encoder = VavlModalityEncoder(config, config.audio_feature_dim)
        self.visual_encoder = VavlModalityEncoder(config, config.visual_feature_dim)
        self.shared_encoder = VavlSharedEncoder(config)
        # Training-set statistics of the visual features (the original's vid_mean / vid_std).
        self.register_buffer("visual_features_mean", torch.zeros(config.visual_feature_dim))
        self.register_buffer("visual_features_std", torch.ones(config.visual_feature_dim))
        self.post_init()
        self.apply_backbone_freezing()

    def apply_backbone_freezing(self) -> None:
        """Apply the config's freeze flags (`backbone_freeze_flags`) to the backbones: `requires_grad` and the mode
        (a frozen backbone is kept in eval mode, a trainable one follows the model), as a model built from the same
        config has them; call it again after changing the flags."""
        config = self.config
        if self.audio_backbone is not None:
            self.audio_backbone.requires_grad_(not config.freeze_audio_backbone)
            self.audio_backbone.train(self.training and not config.freeze_audio_backbone)
            if config.freeze_audio_feature_encoder:
                self.audio_backbone.freeze_feature_encoder()
        if self.visual_backbone is not None:
            self.visual_backbone.requires_grad_(not config.freeze_visual_backbone)
            self.visual_backbone.train(self.training and not config.freeze_visual_backbone)

    def train(self, mode: bool = True) -> VavlModel:
        super().train(mode)
        # Frozen backbones stay in eval mode (no dropout, SpecAugment or BatchNorm updates), as in the original.
        if self.audio_backbone is not None and self.config.freeze_audio_backbone:
            self.audio_backbone.eval()
        if self.visual_backbone is not None and self.config.freeze_visual_backbone:
            self.visual_backbone.eval()
        return self

    def get_audio_features(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the audio backbone.

        Args:
            input_values: (B, N) 16 kHz waveforms, normalised as the processor does.
            attention_mask: (B, N), 1 on real samples.

        Returns:
            `(features, mask)`: (B, T_a, audio_feature_dim) `last_hidden_state` and its (B, T_a) bool mask (None
            when no attention_mask was given). Rows with an all-zero attention mask (no audio) are not run: they get
            zero features and an all-False mask.
        """
        if self.audio_backbone is None:
            raise ValueError(
                "This VAVL model has no audio backbone (config.audio_backbone_config is None): pass pre-extracted "
                "`audio_features` instead of `input_values`."
            )
        if input_values.dim() != 2:
            raise ValueError(f"`input_values` must be (batch, samples), got shape {tuple(input_values.shape)}")
        frozen = self.config.freeze_audio_backbone
        # a bfloat16/float16 model takes the processor's float32 waveforms (autocast: the backbone stays float32)
        input_values = input_values.to(self.audio_backbone.dtype)
        with torch.no_grad() if frozen else contextlib.nullcontext():
            return run_audio_backbone(self.audio_backbone, input_values, attention_mask)

    def get_visual_features(
        self, pixel_values_videos: torch.Tensor, frames_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the visual backbone on every real frame, `config.visual_backbone_chunk_size` frames at a time.

        Args:
            pixel_values_videos: (B, T, 3, H, W) face crops, ImageNet-normalised.
            frames_mask: (B, T), 1 on real frames; padded frames are skipped and get zero features.

        Returns:
            (B, T, visual_feature_dim) raw (not standardised) pooled features.
        """
        if self.visual_backbone is None:
            raise ValueError(
                "This VAVL model has no visual backbone (config.visual_backbone_config is None): pass pre-extracted "
                "`visual_features` instead of `pixel_values_videos`."
            )
        if pixel_values_videos.dim() != 5 or pixel_values_videos.shape[2] != 3:
            raise ValueError(
                "`pixel_values_videos` must be (batch, frames, 3, height, width), got shape "
                f"{tuple(pixel_values_videos.shape)}"
            )
        batch, frames = pixel_values_videos.shape[:2]
        real = None if frames_mask is None or bool(frames_mask.all()) else frames_mask.bool()
        # every frame real: a view, not a copy of the (possibly GB-sized) video batch
        real_frames = pixel_values_videos.flatten(0, 1) if real is None else pixel_values_videos[real]
        chunk = max(1, self.config.visual_backbone_chunk_size)
        frozen = self.config.freeze_visual_backbone
        dtype = self.visual_backbone.dtype  # a bfloat16/float16 model takes float32 crops, cast chunk by chunk
        with torch.no_grad() if frozen else contextlib.nullcontext():
            pooled = [
                self.visual_backbone(real_frames[i : i + chunk].to(dtype)).pooler_output.flatten(1)
                for i in range(0, real_frames.shape[0], chunk)
            ]
        values = torch.cat(pooled).to(dtype) if pooled else None
        if real is None and values is not None:
            return values.view(batch, frames, -1)
        features = pixel_values_videos.new_zeros(batch, frames, self.config.visual_feature_dim, dtype=dtype)
        if values is not None:
            features[real] = values
        return features

    def _normalize_visual_features(self, features: torch.Tensor) -> torch.Tensor:
        """`(x - mean) / (std + 1e-6)` of (B, T, visual_feature_dim) features with the stored statistics, returned
        in the features' dtype. Computed in float32: a bfloat16/float16 model then rounds once, at the end, not after
        the subtraction, the sum and the division (identical for a float32 model)."""
        dtype = features.dtype
        mean, std = self.visual_features_mean.float(), self.visual_features_std.float()
        return ((features.float() - mean) / (std + 1e-6)).to(dtype)

    def _encode(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        encoder: VavlModalityEncoder,
        layout: _MaskLayout | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality encoder + shared encoder + pooling on the rows that have the modality; other rows get zeros.

        The rows with the modality run as one sub-batch cut to their longest clip (key-padding masks make it
        independent of the rest), chosen from `layout` (the host copy of `mask`) without reading the device. The
        legacy layout runs each clip alone on its own frames (its attention would otherwise cross the batch), or,
        with `legacy_batch_mixing`, the present rows together with the padding of their longest clip, as the original
        code does."""
        if self.config.legacy_batch_axis_attention:
            return self._encode_legacy(features, mask, encoder)
        batch, frames = features.shape[:2]
        if mask is None:
            mask = torch.ones(batch, frames, dtype=torch.bool, device=features.device)
        if layout is None:
            layout = _mask_layouts((mask, batch, frames))[0]
        longest = layout.longest
        index = None if layout.all_rows else true_positions(mask.any(dim=-1), layout.num_rows)
        sub_features, sub_mask = features, mask
        if index is not None:
            sub_features, sub_mask = features.index_select(0, index), mask.index_select(0, index)
        if longest != frames:
            sub_features, sub_mask = sub_features[:, :longest], sub_mask[:, :longest]
        sub_hidden = encoder(sub_features, sub_mask, False, layout.num_real)
        sub_hidden = self.shared_encoder(sub_hidden, sub_mask, False, layout.num_real)
        sub_pooled = masked_mean(sub_hidden, sub_mask)
        if sub_features is features:  # every row, every frame: no copy
            return sub_hidden, sub_pooled
        hidden_states = sub_hidden.new_zeros(batch, frames, sub_hidden.shape[-1])
        if index is None:
            hidden_states[:, :longest] = sub_hidden
            return hidden_states, sub_pooled
        hidden_states[index, :longest] = sub_hidden
        pooled = sub_hidden.new_zeros(batch, sub_hidden.shape[-1]).index_put((index,), sub_pooled)
        return hidden_states, pooled

    def _encode_legacy(
        self, features: torch.Tensor, mask: torch.Tensor | None, encoder: VavlModalityEncoder
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_encode` for the legacy layout (converted checkpoints; see there)."""
        batch, frames = features.shape[:2]
        if mask is None:
            mask = torch.ones(batch, frames, dtype=torch.bool, device=features.device)
        rows = mask.any(dim=-1)
        if not self.config.legacy_batch_mixing:
            groups = [(row.view(1), mask[row]) for row in rows.nonzero().flatten()]  # one clip, its own frames
        else:
            used = mask[rows].any(dim=0)
            columns = torch.zeros_like(used)
            columns[: int(used.nonzero().max()) + 1] = True  # up to the longest present clip
            groups = [(rows.nonzero().flatten(), columns)]
        hidden_states = pooled = None
        for index, columns in groups:
            if len(groups) == 1 and index.numel() == batch and bool(columns.all()):
                sub_features = features  # every row, every frame: no copy
            else:
                sub_features = features[index][:, columns]
            sub_hidden = encoder(sub_features, None, True)
            sub_hidden = self.shared_encoder(sub_hidden, None, True)
            # pooled over every frame, padding included, like the original's AdaptiveAvgPool1d
            sub_pooled = masked_mean(sub_hidden, None)
            if sub_features is features:
                return sub_hidden, sub_pooled
            if hidden_states is None:
                hidden_states = sub_hidden.new_zeros(batch, frames, sub_hidden.shape[-1])
                pooled = sub_hidden.new_zeros(batch, sub_hidden.shape[-1])
            hidden_states[index.view(-1, 1), columns.nonzero().view(1, -1)] = sub_hidden
            pooled[index] = sub_pooled
        return hidden_states, pooled

    def pooling_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The (B, T) frames each row's pooled vector (and reconstruction target) averages over: the real frames,
        or with `legacy_batch_mixing` every frame up to the longest clip among the rows that have the modality
        (padding included, as in the original code). None: every frame."""
        if mask is None or not (self.config.legacy_batch_axis_attention and self.config.legacy_batch_mixing):
            return mask
        rows = mask.any(dim=-1)
        used = mask[rows].any(dim=0)
        columns = torch.zeros_like(used)
        if bool(used.any()):
            columns[: int(used.nonzero().max()) + 1] = True
        return rows.unsqueeze(-1) & columns

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_features_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_features_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> VavlModelOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, samples)`): 16 kHz waveforms (needs an audio
                backbone).
            attention_mask (`torch.Tensor` of shape `(batch_size, samples)`): 1 on real samples, 0 on padding.
            audio_features (`torch.FloatTensor` of shape `(batch_size, audio_frames, audio_feature_dim)`):
                pre-extracted audio features, instead of `input_values`.
            audio_features_mask (`torch.Tensor` of shape `(batch_size, audio_frames)`): 1 on real frames. A row of
                zeros marks a row without audio.
            pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, video_frames, 3, height, width)`):
                face crops (needs a visual backbone).
            visual_features (`torch.FloatTensor` of shape `(batch_size, video_frames, visual_feature_dim)`):
                pre-extracted per-frame visual features, instead of `pixel_values_videos`.
            visual_features_mask (`torch.Tensor` of shape `(batch_size, video_frames)`): 1 on real frames, for
                either `pixel_values_videos` or `visual_features`. A row of zeros marks a row without video.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        (audio_features, audio_mask, audio_layout), (visual_features, visual_mask, visual_layout) = (
            self._prepare_inputs(
                input_values,
                attention_mask,
                audio_features,
                audio_features_mask,
                pixel_values_videos,
                visual_features,
                visual_features_mask,
            )
        )
        audio_hidden = audio_pooled = visual_hidden = visual_pooled = None
        if audio_features is not None:
            audio_hidden, audio_pooled = self._encode(audio_features, audio_mask, self.audio_encoder, audio_layout)
        if visual_features is not None:
            visual_hidden, visual_pooled = self._encode(
                visual_features, visual_mask, self.visual_encoder, visual_layout
            )

        output = VavlModelOutput(
            audio_pooled_output=audio_pooled,
            visual_pooled_output=visual_pooled,
            audio_last_hidden_state=audio_hidden,
            visual_last_hidden_state=visual_hidden,
            audio_features=audio_features,
            visual_features=visual_features,
            audio_features_mask=audio_mask,
            visual_features_mask=visual_mask,
        )
        # host copies of the masks for the task model (not an output field: to_tuple and outputs stay as they were)
        object.__setattr__(output, "_layouts", (audio_layout, visual_layout))
        return output if return_dict else output.to_tuple()

    def _prepare_inputs(
        self,
        input_values,
        attention_mask,
        audio_features,
        audio_features_mask,
        pixel_values_videos,
        visual_features,
        visual_features_mask,
    ):
        """Validate the inputs and turn raw media into features. Masks come back as bool (B, T) tensors."""
        if input_values is not None and audio_features is not None:
            raise ValueError("Pass either `input_values` or `audio_features`, not both.")
        if pixel_values_videos is not None and visual_features is not None:
            raise ValueError("Pass either `pixel_values_videos` or `visual_features`, not both.")
        if input_values is None and audio_features is None and pixel_values_videos is None and visual_features is None:
            raise ValueError(
                "VAVL needs at least one modality: `input_values` or `audio_features` (audio), "
                "`pixel_values_videos` or `visual_features` (video)."
            )

        audio_mask = None
        if input_values is not None and (attention_mask is None or bool(attention_mask.any())):
            audio_features, audio_mask = self.get_audio_features(input_values, attention_mask)
        elif audio_features is not None:
            _check_features("audio_features", audio_features, self.config.audio_feature_dim)
            audio_mask = _check_mask("audio_features_mask", audio_features_mask, audio_features)
            audio_features = audio_features.to(self.audio_encoder.projection.weight.dtype)

        visual_mask = None
        if pixel_values_videos is not None:
            visual_mask = _check_mask("visual_features_mask", visual_features_mask, pixel_values_videos)
            visual_features = self.get_visual_features(pixel_values_videos, visual_mask)
        elif visual_features is not None:
            _check_features("visual_features", visual_features, self.config.visual_feature_dim)
            visual_mask = _check_mask("visual_features_mask", visual_features_mask, visual_features)
            visual_features = visual_features.to(self.visual_encoder.projection.weight.dtype)
        if visual_features is not None and self.config.normalize_visual_features:
            visual_features = self._normalize_visual_features(visual_features)
            if visual_mask is not None:
                # standardised padding would no longer be zero; keep it zero as the original's pad_sequence does
                visual_features = visual_features.masked_fill(~visual_mask.unsqueeze(-1), 0.0)

        # one device-to-host read of both masks: which rows have each modality and how long their clips are
        audio_layout, visual_layout = _mask_layouts(
            *[(mask, *features.shape[:2]) if features is not None else (None, 0, 0)
              for features, mask in ((audio_features, audio_mask), (visual_features, visual_mask))]
        )  # fmt: skip
        # a modality that no row has (all-zero masks) is absent for the batch: nothing of it runs
        if audio_mask is not None and audio_layout.num_rows == 0:
            audio_features = audio_mask = None
        if visual_mask is not None and visual_layout.num_rows == 0:
            visual_features = visual_mask = None
        if audio_features is None and visual_features is None:
            raise ValueError("Every row has all-zero masks: no row has audio or video frames.")
        if audio_features is not None and visual_features is not None:
            if audio_features.shape[0] != visual_features.shape[0]:
                raise ValueError(
                    f"Audio and video batch sizes differ: {audio_features.shape[0]} vs {visual_features.shape[0]}"
                )
        return (audio_features, audio_mask, audio_layout), (visual_features, visual_mask, visual_layout)


def _check_features(name: str, features: torch.Tensor, feature_dim: int) -> None:
    if features.dim() != 3 or features.shape[-1] != feature_dim:
        raise ValueError(f"`{name}` must be (batch, frames, {feature_dim}), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {features.dtype}")


def _check_mask(name: str, mask: torch.Tensor | None, reference: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(reference.shape[:2]):
        raise ValueError(f"`{name}` must be (batch, frames) = {tuple(reference.shape[:2])}, got {tuple(mask.shape)}")
    return mask.bool()


def _rows_present(mask: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    return mask.any(dim=-1)


def run_audio_backbone(
    backbone: Wav2Vec2Model, input_values: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`last_hidden_state` and frame mask of a wav2vec2-style backbone, run on the rows that have audio only.

    Rows with an all-zero `attention_mask` get zero features and an all-False mask (wav2vec2's frame-mask
    computation would turn a length-0 row into a mostly-true mask). Frame masks come from the backbone config's
    convolution geometry (`feature_frames_mask`). The present rows run as one batch cut to their
    longest waveform; with a group-norm feature encoder (wav2vec2-base), which normalises each waveform over time
    padding included, each waveform runs alone at its own length."""
    if attention_mask is None:
        return backbone(input_values).last_hidden_state, None
    positions = torch.arange(1, attention_mask.shape[-1] + 1, device=attention_mask.device)
    extents = (attention_mask.bool() * positions).amax(dim=-1)  # last real sample + 1; 0 for a row without audio
    rows = (extents > 0).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError("`attention_mask` has no real sample in any row")
    longest = int(extents.max())
    if getattr(backbone.config, "feat_extract_norm", "layer") == "group" and bool((extents[rows] != longest).any()):
        groups = [(row.view(1), int(extents[row])) for row in rows]
    else:
        groups = [(rows, longest)]
    results = []
    for index, length in groups:
        values, sub_mask = input_values[index, :length], attention_mask[index, :length]
        if index.numel() == input_values.shape[0] and length == input_values.shape[1]:
            values, sub_mask = input_values, attention_mask  # every row, no padding to cut: no copy
        sub_features = backbone(values, attention_mask=sub_mask).last_hidden_state
        sub_frames = feature_frames_mask(backbone.config, sub_features.shape[1], sub_mask)
        results.append((index, sub_features, sub_frames))
    if len(results) == 1 and rows.numel() == input_values.shape[0]:
        return results[0][1], results[0][2]
    frames = max(sub_features.shape[1] for _, sub_features, _ in results)
    reference = results[0][1]
    features = reference.new_zeros(input_values.shape[0], frames, reference.shape[-1])
    mask = torch.zeros(input_values.shape[0], frames, dtype=torch.bool, device=reference.device)
    for index, sub_features, sub_frames in results:
        features[index, : sub_features.shape[1]] = sub_features
        mask[index, : sub_frames.shape[1]] = sub_frames
    return features, mask


@contextlib.contextmanager
def _eval_mode(modules: tuple[nn.Module, ...]):
    """Eval mode for `modules` (their `training` flags set to False), each flag restored on exit: what `eval()` then
    `train(was_training)` of their root does (frozen backbones kept in eval included), without the recursive calls."""
    flags = [module.training for module in modules]
    try:
        for module in modules:
            module.training = False
        yield
    finally:
        for module, flag in zip(modules, flags):
            module.training = flag


def _head_on_rows(head: VavlHead, inputs: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """`head` on the rows of `inputs` at `index` (None: every row); NaN on the others (the head has no input there)."""
    if index is None:
        return head(inputs)
    out = head(inputs.index_select(0, index))
    return out.new_full((inputs.shape[0], out.shape[-1]), math.nan).index_put((index,), out)


def _select_rows(tensor: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor | None:
    """The rows of `tensor` at `index`; None (every row): `tensor` itself (the same values as selecting them all)."""
    if tensor is None or index is None:
        return tensor
    return tensor.index_select(0, index)


def _layouts_of(encoded: VavlModelOutput) -> tuple[_MaskLayout | None, _MaskLayout | None]:
    """The host copies of the masks `VavlModel.forward` attached to its output (read again if absent, e.g. an
    output built elsewhere: one device read)."""
    layouts = getattr(encoded, "_layouts", None)
    if layouts is not None:
        return layouts
    pairs = []
    for features, mask in ((encoded.audio_features, encoded.audio_features_mask),
                           (encoded.visual_features, encoded.visual_features_mask)):  # fmt: skip
        pairs.append((mask, *features.shape[:2]) if features is not None else (None, 0, 0))
    layouts = tuple(_mask_layouts(*pairs))
    object.__setattr__(encoded, "_layouts", layouts)
    return layouts


class _RowSelection:
    """Which rows each head and loss covers: `present` (B,) bool device tensors for "audio", "video" and "both";
    `count`, their True counts from the host copies of the masks; `index(name)`, the positions of those rows on the
    device (None when every row is covered: no selection, no copy), computed without a device read."""

    def __init__(self, encoded: VavlModelOutput, audio_present: torch.Tensor, visual_present: torch.Tensor):
        batch = audio_present.shape[0]
        audio_layout, visual_layout = _layouts_of(encoded)
        audio = audio_layout.present if encoded.audio_pooled_output is not None else [False] * batch
        video = visual_layout.present if encoded.visual_pooled_output is not None else [False] * batch
        self.batch = batch
        self.present = {"audio": audio_present, "video": visual_present, "both": audio_present & visual_present}
        self.count = {"audio": sum(audio), "video": sum(video), "both": sum(a and v for a, v in zip(audio, video))}
        self._indices: dict[str, torch.Tensor | None] = {}

    def index(self, name: str) -> torch.Tensor | None:
        if name not in self._indices:
            every = self.count[name] == self.batch
            self._indices[name] = None if every else true_positions(self.present[name], self.count[name])
        return self._indices[name]


class VavlForEmotionRecognition(VavlPreTrainedModel):
    """VAVL with its audio, visual and fusion prediction heads and the two reconstruction heads."""

    def __init__(self, config: VavlConfig):
        super().__init__(config)
        self.vavl = VavlModel(config)
        hidden, sizes, dropout = config.hidden_size, config.head_hidden_sizes, config.head_dropout
        self.audio_head = VavlHead(hidden, sizes, config.num_labels, dropout)
        self.visual_head = VavlHead(hidden, sizes, config.num_labels, dropout)
        self.fusion_head = VavlHead(2 * hidden, sizes, config.num_labels, dropout)
        self.audio_reconstruction_head = VavlHead(hidden, sizes, config.audio_feature_dim, dropout)
        self.visual_reconstruction_head = VavlHead(hidden, sizes, config.visual_feature_dim, dropout)
        self.post_init()

    def apply_backbone_freezing(self) -> None:
        """Apply the config's freeze flags to the backbones (see [`VavlModel.apply_backbone_freezing`])."""
        self.vavl.apply_backbone_freezing()

    def onnx_export_spec(self, parts: str, exporter: str) -> Any:
        """How `avemotion export-onnx` exports this model (the hook `avemotion.models.onnx_export` calls): an
        `OnnxExportSpec` with the graph's inputs and outputs and its export wrapper, for `parts` (`"heads"` or
        `"full"`) and `exporter` (`"torchscript"` or `"dynamo"`). Raises a `ValueError` for what cannot be exported
        (`legacy_batch_mixing`, `"full"` without both backbones). The export code is imported here, not with the
        model; a remote copy (trust_remote_code) has no export code."""
        try:  # (in a try block, so that a remote copy does not list avemotion among the packages it needs)
            from avemotion.models.vavl.onnx_vavl import vavl_onnx_export_spec
        except ImportError as error:
            raise ValueError("ONNX export needs the avemotion package (pip install 'avemotion[onnx]')") from error
        return vavl_onnx_export_spec(self, parts, exporter)

    def input_spec(self) -> dict[str, Any]:
        """What the model takes, for the collator, the trainer and the pipeline (plain data).

        Returns:
            `{"modalities": {"audio": {...}, "video": {...}}, "segments": {}, "window_seconds": float}`. Each modality
            names its raw-input key and mask key (`"inputs"`) and `"layout"`, its pre-extracted feature key and mask
            key (`"features"`) and the feature width (`"feature_dim"`); audio also its `"sampling_rate"`, the feature
            frame rate and the shortest waveform of one frame (`"feature_rate"`, `"min_samples"`; video features come
            at the video's frame rate). Read by `avemotion.models.declaration.read_declaration`.
        """
        config = self.config
        audio = config.audio_backbone_config or Wav2Vec2Config()  # cached features come from a wav2vec2 encoder too
        stride, receptive_field = frame_geometry(audio.conv_kernel, audio.conv_stride)
        return {
            "modalities": {
                "audio": {
                    "inputs": ("input_values", "attention_mask"),
                    "layout": "waveform",
                    "features": ("audio_features", "audio_features_mask"),
                    "feature_dim": config.audio_feature_dim,
                    "feature_rate": config.sampling_rate / stride,
                    "sampling_rate": config.sampling_rate,
                    "min_samples": receptive_field,
                },
                "video": {
                    "inputs": ("pixel_values_videos", "visual_features_mask"),
                    "layout": "frames",
                    "features": ("visual_features", "visual_features_mask"),
                    "feature_dim": config.visual_feature_dim,
                },
            },
            "segments": {},
            "window_seconds": config.window_seconds,
        }

    def training_steps(self) -> tuple[dict[str, Any], ...]:
        """VAVL's three optimisation steps per batch (reference/vavl.md §4.2).

        A visual step (visual task loss + weighted reconstruction, on the rows with video), an acoustic step (the same
        for audio, on the rows with audio) and a fusion step (`fusion_step_loss`, on the rows with both). Each step
        updates the parameters of its `"modules"` only: the shared encoder is updated by both unimodal steps, the
        fusion step updates the fusion head only. A backbone that the model does not have is None (skipped).
        """
        base = self.vavl
        return (
            {
                "name": "visual",
                "modules": (
                    base.visual_backbone,
                    base.visual_encoder,
                    base.shared_encoder,
                    self.visual_head,
                    self.visual_reconstruction_head,
                ),
                "loss": "visual_loss",
                "rows": ("video",),
            },
            {
                "name": "acoustic",
                "modules": (
                    base.audio_backbone,
                    base.audio_encoder,
                    base.shared_encoder,
                    self.audio_head,
                    self.audio_reconstruction_head,
                ),
                "loss": "audio_loss",
                "rows": ("audio",),
            },
            {
                "name": "fusion",
                "modules": (self.fusion_head,),
                "loss": self.fusion_step_loss,
                "rows": ("audio", "video"),
            },
        )

    def fusion_step_loss(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """VAVL's fusion step: the fusion head's task loss on the concatenated pooled representations.

        As in the original (run after the two unimodal updates), the encoders run in eval mode without gradients
        (their train mode is restored after) and the representations are detached; the fusion head runs in the
        model's current mode (train mode during training). The caller applies autocast.

        Args:
            labels: `(batch_size,)` class indices, `(batch_size, num_labels)` class probabilities or regression
                targets, as in `forward`.
            inputs: the audio and video inputs of [`VavlModel.forward`] (rows with both modalities).

        Returns:
            The scalar loss. An empty batch gives a zero loss that still reaches every fusion head parameter.
        """
        if labels.shape[0] == 0:
            return sum(parameter.sum() for parameter in self.fusion_head.parameters()) * 0.0
        with _eval_mode(self._encoder_modules()), torch.no_grad():
            encoded = self.vavl(**inputs, return_dict=True)
        if encoded.audio_pooled_output is None or encoded.visual_pooled_output is None:
            raise ValueError("fusion_step_loss needs audio and video inputs (rows with both modalities)")
        pooled = torch.cat([encoded.audio_pooled_output, encoded.visual_pooled_output], dim=-1).detach()
        return self.task_loss(self.fusion_head(pooled), labels)

    def _encoder_modules(self) -> tuple[nn.Module, ...]:
        """Every module of the encoders (`self.vavl` and below), listed once and cached: `fusion_step_loss` flips their
        `training` flags directly, not through the recursive `train()`/`eval()` of each step. Listed again when a
        direct child of the encoders was replaced (e.g. a backbone swapped)."""
        key = tuple(map(id, self.vavl._modules.values()))
        cached = self.__dict__.get("_encoder_modules_cache")
        if cached is None or cached[0] != key or cached[1][0] is not self.vavl:
            cached = (key, tuple(self.vavl.modules()))
            self.__dict__["_encoder_modules_cache"] = cached
        return cached[1]

    def evaluation_branches(self) -> dict[str, str]:
        """The output fields evaluation reports (NaN on rows a head did not score), with their report names."""
        return {"logits": "combined", "fusion_logits": "audio_visual", "audio_logits": "audio",
                "visual_logits": "visual"}  # fmt: skip

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (class indices, or class probabilities for soft labels) or the sum of 1 - CCC."""
        if self.config.is_regression:
            if labels.shape != logits.shape:
                raise ValueError(
                    f"Regression labels must be (batch, {self.config.num_labels}), got {tuple(labels.shape)}"
                )
            return concordance_loss(logits, labels)
        if labels.dim() == 2 and labels.is_floating_point():
            return nn.functional.cross_entropy(logits, labels)
        if labels.dim() != 1:
            raise ValueError(f"Classification labels must be (batch,) class indices, got {tuple(labels.shape)}")
        return nn.functional.cross_entropy(logits, labels.long())

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_features_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_features_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> VavlEmotionRecognitionOutput | tuple:
        r"""
        Inputs as in [`VavlModel.forward`], plus:

        labels (`torch.Tensor`, *optional*): `(batch_size,)` class indices or `(batch_size, num_labels)` class
            probabilities for classification; `(batch_size, num_labels)` targets on the model's output scale for
            regression.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.vavl(
            input_values=input_values,
            attention_mask=attention_mask,
            audio_features=audio_features,
            audio_features_mask=audio_features_mask,
            pixel_values_videos=pixel_values_videos,
            visual_features=visual_features,
            visual_features_mask=visual_features_mask,
            return_dict=True,
        )
        audio_present, visual_present = self._present_rows(encoded)
        rows = _RowSelection(encoded, audio_present, visual_present)
        head_logits = self._head_logits(encoded, rows)
        losses = {}
        if labels is not None:
            losses = self._losses(encoded, head_logits, rows, labels)
        output = VavlEmotionRecognitionOutput(
            **head_logits,
            **losses,
            audio_present=audio_present,
            visual_present=visual_present,
            audio_pooled_output=encoded.audio_pooled_output,
            visual_pooled_output=encoded.visual_pooled_output,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _present_rows(encoded: VavlModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """`(audio_present, visual_present)`: (B,) bool, which rows have each modality. Raises a `ValueError` for
        rows with neither."""
        audio_pooled, visual_pooled = encoded.audio_pooled_output, encoded.visual_pooled_output
        reference = audio_pooled if audio_pooled is not None else visual_pooled
        batch_size, device = reference.shape[0], reference.device
        absent = torch.zeros(batch_size, dtype=torch.bool, device=device)
        audio_present = (
            _rows_present(encoded.audio_features_mask, batch_size, device) if audio_pooled is not None else absent
        )
        visual_present = (
            _rows_present(encoded.visual_features_mask, batch_size, device) if visual_pooled is not None else absent
        )
        audio_layout, visual_layout = _layouts_of(encoded)
        audio_rows = audio_layout.present if audio_pooled is not None else [False] * batch_size
        visual_rows = visual_layout.present if visual_pooled is not None else [False] * batch_size
        empty = [row for row, (audio, video) in enumerate(zip(audio_rows, visual_rows)) if not (audio or video)]
        if empty:  # (decided on the host copies of the masks: no device read)
            raise ValueError(f"Rows {empty} have neither audio nor video frames (all-zero masks).")
        return audio_present, visual_present

    def _head_logits(self, encoded: VavlModelOutput, rows: _RowSelection) -> dict[str, torch.Tensor | None]:
        """`logits`, `audio_logits`, `visual_logits`, `fusion_logits`, each (B, num_labels) or None. Each head runs on
        the rows it covers only (NaN on the other rows); `logits` takes per row the fusion head when the row has both
        modalities, else the head of the one it has."""
        audio_pooled, visual_pooled = encoded.audio_pooled_output, encoded.visual_pooled_output
        has_audio, has_video = audio_pooled is not None, visual_pooled is not None
        audio_logits = _head_on_rows(self.audio_head, audio_pooled, rows.index("audio")) if has_audio else None
        visual_logits = _head_on_rows(self.visual_head, visual_pooled, rows.index("video")) if has_video else None
        fusion_logits = None
        logits = audio_logits if has_audio else visual_logits
        if has_audio and has_video:
            fusion_inputs = torch.cat([audio_pooled, visual_pooled], dim=-1)
            fusion_logits = _head_on_rows(self.fusion_head, fusion_inputs, rows.index("both"))
            audio_present, visual_present = rows.present["audio"], rows.present["video"]
            both = (audio_present & visual_present).unsqueeze(-1)
            logits = torch.where(
                both, fusion_logits, torch.where(audio_present.unsqueeze(-1), audio_logits, visual_logits)
            )
        return {
            "logits": logits,
            "audio_logits": audio_logits,
            "visual_logits": visual_logits,
            "fusion_logits": fusion_logits,
        }

    def _losses(
        self,
        encoded: VavlModelOutput,
        head_logits: dict[str, torch.Tensor | None],
        rows: _RowSelection,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor | None]:
        """The loss fields of the output: each step's loss over the rows it covers and their sum (`loss`). Whether a
        step has rows is known on the host (`rows`): no device read."""
        labels = labels.to(rows.present["audio"].device)
        audio_loss = visual_loss = fusion_loss = audio_rec = visual_rec = None
        if encoded.audio_pooled_output is not None and rows.count["audio"]:
            audio_loss, audio_rec = self._unimodal_loss(
                head_logits["audio_logits"], encoded.audio_pooled_output, encoded.audio_features,
                encoded.audio_features_mask, rows.index("audio"), labels, self.audio_reconstruction_head,
            )  # fmt: skip
        if encoded.visual_pooled_output is not None and rows.count["video"]:
            visual_loss, visual_rec = self._unimodal_loss(
                head_logits["visual_logits"], encoded.visual_pooled_output, encoded.visual_features,
                encoded.visual_features_mask, rows.index("video"), labels, self.visual_reconstruction_head,
            )  # fmt: skip
        fusion_logits = head_logits["fusion_logits"]
        if fusion_logits is not None and rows.count["both"]:
            index = rows.index("both")
            fusion_loss = self.task_loss(_select_rows(fusion_logits, index), _select_rows(labels, index))
        return {
            "loss": sum(term for term in (audio_loss, visual_loss, fusion_loss) if term is not None),
            "audio_loss": audio_loss,
            "visual_loss": visual_loss,
            "fusion_loss": fusion_loss,
            "audio_reconstruction_loss": audio_rec,
            "visual_reconstruction_loss": visual_rec,
        }

    def _unimodal_loss(
        self,
        logits: torch.Tensor,
        pooled: torch.Tensor,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        index: torch.Tensor | None,
        labels: torch.Tensor,
        reconstruction_head: VavlHead,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One of VAVL's unimodal steps over the rows that have the modality (`index`: their positions, None: every
        row): task loss + weighted reconstruction MSE. Returns `(step_loss, reconstruction_mse)`.

        The reconstruction target is the time-average of the input features over the frames the pooling uses
        (the row's real frames; with `legacy_batch_mixing`, padding included as in the original). It is detached so
        that a fine-tuned backbone is not pulled towards easily reconstructed features."""
        pool_mask = self.vavl.pooling_mask(mask)
        target = masked_mean(_select_rows(features, index), _select_rows(pool_mask, index)).detach()
        reconstruction = nn.functional.mse_loss(reconstruction_head(_select_rows(pooled, index)), target)
        task = self.task_loss(_select_rows(logits, index), _select_rows(labels, index))
        step_loss = task + self.config.reconstruction_loss_weight * reconstruction
        return step_loss, reconstruction


__all__ = [
    "VavlModel",
    "VavlForEmotionRecognition",
    "VavlPreTrainedModel",
    "VavlModelOutput",
    "VavlEmotionRecognitionOutput",
]
