"""VAVL model configuration."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from transformers import EfficientNetConfig, PreTrainedConfig, Wav2Vec2Config
from transformers.configuration_utils import SubConfigSpec

try:  # the package's config bounds; a remote copy (trust_remote_code: the user trusts the checkpoint's own code and
    # files) runs without avemotion and skips them
    if not __name__.startswith("avemotion."):
        raise ImportError
    from avemotion.models import config_limits as limits
    from avemotion.models.config_limits import ConfigLimitsMixin
except ImportError:
    limits = None

    class ConfigLimitsMixin:  # noqa: D101
        def check_field_limits(self, kwargs=None):
            pass

        def check_model_size(self):
            pass


# Class order of VAVL's CREMA-D label files (config/config_files/crema-d/six.json in the original code).
CREMA_D_LABELS = ["angry", "sad", "disgust", "fear", "neutral", "happy"]
# Output order of VAVL's MSP-IMPROV regression head: [EmoAct, EmoDom, EmoVal].
MSP_IMPROV_ATTRIBUTES = ["arousal", "dominance", "valence"]


def wav2vec2_large_robust_config(num_hidden_layers: int = 12, **overrides: Any) -> Wav2Vec2Config:
    """The layout of facebook/wav2vec2-large-robust, cut to ``num_hidden_layers`` (VAVL keeps 12 of 24)."""
    kwargs: dict[str, Any] = dict(
        hidden_size=1024,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act="gelu",
        hidden_dropout=0.1,
        activation_dropout=0.1,
        attention_dropout=0.1,
        feat_proj_dropout=0.1,
        final_dropout=0.1,
        layerdrop=0.1,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        conv_dim=(512,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        mask_time_prob=0.05,
    )
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)


def efficientnet_b2_config(**overrides: Any) -> EfficientNetConfig:
    """EfficientNet-B2 (HSEmotion's enet_b2 layout): 1408-d pooled features per face crop."""
    kwargs: dict[str, Any] = dict(
        width_coefficient=1.1, depth_coefficient=1.2, image_size=260, dropout_rate=0.3, hidden_dim=1408
    )
    kwargs.update(overrides)
    return EfficientNetConfig(**kwargs)


def _field(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def audio_backbone_width(config: Wav2Vec2Config | dict | None) -> int | None:
    """Width of a wav2vec2-style backbone's `last_hidden_state` (`output_hidden_size` after an adapter); None
    without a config."""
    if config is None:
        return None
    if _field(config, "add_adapter", False):
        return _field(config, "output_hidden_size") or _field(config, "hidden_size")
    return _field(config, "hidden_size")


def visual_backbone_width(config: EfficientNetConfig | dict | None) -> int | None:
    """Width of an EfficientNet backbone's `pooler_output` (`hidden_dim`, the top convolution's width); None without
    a config."""
    return None if config is None else _field(config, "hidden_dim")


class VavlConfig(ConfigLimitsMixin, PreTrainedConfig):
    r"""
    Configuration of a VAVL model (Goncalves et al., "Versatile Audio-Visual Learning for Emotion Recognition",
    arXiv 2305.07216). Every architecture choice of the original code is a field; the defaults reproduce its sizes.

    Args:
        audio_feature_dim (`int`, defaults to 1024): width of the audio features (wav2vec2 ``last_hidden_state``);
            with an `audio_backbone_config` it must equal the backbone's width (a `ValueError` otherwise).
        visual_feature_dim (`int`, defaults to 1408): width of the per-frame visual features (EfficientNet-B2);
            with a `visual_backbone_config` it must equal the backbone's `hidden_dim`.
        projection_dim (`int`, defaults to 50): width of the bias-free per-frame projection before each modality
            encoder.
        hidden_size (`int`, defaults to 512): Conformer width, also the width of the pooled representations.
        num_attention_heads (`int`, defaults to 8): Conformer attention heads.
        intermediate_size (`int`, defaults to 2048): Conformer feed-forward width.
        conv_kernel_size (`int`, defaults to 31): depthwise convolution kernel of the Conformer.
        num_modality_layers (`int`, defaults to 3): Conformer blocks of each modality encoder.
        num_shared_layers (`int`, defaults to 2): Conformer blocks of the shared encoder.
        conformer_dropout (`float`, defaults to 0.1): every dropout inside the Conformers.
        head_hidden_sizes (`list[int]`, defaults to `[512, 256]`): hidden widths of the prediction and
            reconstruction heads (Linear, ReLU, Dropout, Linear, Linear: no activation before the output layer,
            as in the original).
        head_dropout (`float`, defaults to 0.2): dropout after the first head layer.
        reconstruction_loss_weight (`float`, defaults to 2.0): weight of the unimodal reconstruction MSE (the
            original uses 2 for classification and 1 for regression).
        max_position_embeddings (`int`, defaults to 1024): size of the cached sinusoid table (longer inputs are
            computed on the fly, so this is not a length limit).
        legacy_batch_axis_attention (`bool`, defaults to `False`): reproduce the original code's layout, in which
            every Conformer attends and convolves across the utterances of the mini-batch at each frame index, and
            pooling and reconstruction targets include padded frames. Only for converted original checkpoints: the
            outputs depend on the batch. The default runs the Conformers over time with key-padding masks.
        legacy_batch_mixing (`bool`, defaults to `False`): with `legacy_batch_axis_attention`, let the clips of a
            batch attend to each other as the original code does (its outputs then depend on which clips share the
            batch, their order and their padding); only for reproducing the original's numbers on the original's
            batches. By default a legacy-layout model runs each clip alone (one clip per Conformer forward, its own
            frames only), so every entry point (model call, pipeline, evaluation, training) is batch-independent.
            Requires `legacy_batch_axis_attention=True`.
        position_encoding (`str`, defaults to `"relative"`): `"relative"` (scores depend on i - j only) or
            `"legacy_shifted"` (the original code's absolute rows with the Transformer-XL shift, which depends on the
            padded length).
        audio_backbone_config (`Wav2Vec2Config` or `dict`, *optional*): the audio front-end run on 16 kHz
            waveforms (`input_values`); `None` when the model takes pre-extracted `audio_features`.
        visual_backbone_config (`EfficientNetConfig` or `dict`, *optional*): the per-frame face encoder run on
            `pixel_values_videos`; `None` when the model takes pre-extracted `visual_features`.
        audio_backbone_name (`str`, *optional*): pretrained name or path the audio backbone was loaded from
            (recorded by `from_backbones`, e.g. `"facebook/wav2vec2-large-robust"`; nothing is downloaded from it).
        visual_backbone_name (`str`, *optional*): pretrained name or path the visual backbone was loaded from
            (recorded by `from_backbones`, e.g. the directory written by `avemotion convert-hsemotion`).
        freeze_audio_backbone (`bool`, defaults to `True`): keep the audio backbone frozen (no gradients, eval mode).
        freeze_audio_feature_encoder (`bool`, defaults to `True`): freeze the wav2vec2 CNN when the rest of the
            audio backbone is fine-tuned.
        freeze_visual_backbone (`bool`, defaults to `True`): keep the visual backbone frozen.
        visual_backbone_chunk_size (`int`, defaults to 64): frames per visual-backbone forward, bounding memory on
            long videos.
        normalize_visual_features (`bool`, defaults to `False`): standardise visual features with the stored
            training-set statistics (buffers `visual_features_mean`/`visual_features_std`, set by the converter
            from `train_norm_stat.pkl`), as the original code does: `(x - mean) / (std + 1e-6)`.
        label_scale (`list[float]`, *optional*): for regression, the corpus scale `[min, max]` that the raw outputs
            (trained on `(y - min) / (max - min)`) map back to. MSP-IMPROV: `[1, 5]`.
        sampling_rate (`int`, defaults to 16000): audio sampling rate expected by the audio backbone.
        window_seconds (`float`, defaults to 12.0): the longest input the model was trained on (the original cuts
            audio at 12 s); longer media are cut into windows by the pipeline.
        initializer_range (`float`, defaults to 0.02): unused by the VAVL layers (they use the original code's
            initialisation) but kept for backbone compatibility.
        max_parameters (`float`, *optional*, defaults to 2e9): the largest model (estimated parameter count of
            `VavlForEmotionRecognition`, backbones included) this config may describe. Only an explicit argument sets
            it (`VavlConfig(..., max_parameters=5e9)`, `from_pretrained(dir, max_parameters=5e9)`): a config file that
            sets it is refused, and it is never saved (load a larger model with the argument again).

    Limits (checked when the config is built, before any module; a `ValueError` names the field and its range, see
    `avemotion.models.config_limits`): whole numbers (not bools, not floats such as `3.0`): `num_modality_layers`
    and `num_shared_layers` 1-256, `hidden_size` 2-16384 and even (sinusoid table), `projection_dim` 1-16384,
    `num_attention_heads` 1-1024 dividing `hidden_size`, `intermediate_size` 1-65536, `conv_kernel_size` odd 1-1023,
    `audio_feature_dim`/`visual_feature_dim` 1-65536, `head_hidden_sizes` 1-16 values of 1-65536,
    `max_position_embeddings` 1-65536, `visual_backbone_chunk_size` 1-65536, `sampling_rate` 1000-384000,
    1-1024 labels; numbers: dropouts in [0, 1], `window_seconds` in (0, 3600], `reconstruction_loss_weight` in
    [0, 1e6]. The backbone configs' size fields are bounded too (wav2vec2: layers 1-256, widths 1-16384, CNN lists of
    1-32 values; EfficientNet: coefficients in (0, 16], strides 1 or 2, 1-1024 blocks, `hidden_dim` equal to the top
    convolution's width), and the estimated parameter count must not exceed `max_parameters`.
    """

    model_type: ClassVar[str] = "vavl"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "audio_backbone_config": SubConfigSpec(Wav2Vec2Config, optional=True),
        "visual_backbone_config": SubConfigSpec(EfficientNetConfig, optional=True),
    }

    audio_feature_dim: int = 1024
    visual_feature_dim: int = 1408
    projection_dim: int = 50
    hidden_size: int = 512
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    conv_kernel_size: int = 31
    num_modality_layers: int = 3
    num_shared_layers: int = 2
    conformer_dropout: float = 0.1
    head_hidden_sizes: list[int] | tuple[int, ...] = (512, 256)
    head_dropout: float = 0.2
    reconstruction_loss_weight: float = 2.0
    max_position_embeddings: int = 1024
    legacy_batch_axis_attention: bool = False
    legacy_batch_mixing: bool = False
    position_encoding: Literal["relative", "legacy_shifted"] = "relative"
    audio_backbone_config: Wav2Vec2Config | dict | None = None
    visual_backbone_config: EfficientNetConfig | dict | None = None
    audio_backbone_name: str | None = None
    visual_backbone_name: str | None = None
    freeze_audio_backbone: bool = True
    freeze_audio_feature_encoder: bool = True
    freeze_visual_backbone: bool = True
    visual_backbone_chunk_size: int = 64
    normalize_visual_features: bool = False
    label_scale: list[float] | tuple[float, float] | None = None
    sampling_rate: int = 16000
    window_seconds: float = 12.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if type(self).__module__.startswith("avemotion."):
            # With `custom_pipelines`, transformers' pipeline() demands trust_remote_code even for the task that
            # `import avemotion` registers; the package's own class drops it (remote copies keep it).
            kwargs.pop("custom_pipelines", None)
        if self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = len(CREMA_D_LABELS)
        super().__post_init__(**kwargs)
        self.head_hidden_sizes = list(self.head_hidden_sizes)
        if self.label_scale is not None:
            self.label_scale = [float(v) for v in self.label_scale]
        if self.problem_type is None:
            self.problem_type = "single_label_classification"
        self.validate_architecture()

    def validate_architecture(self):
        """Checks the sizes and choices that the model cannot work with (the field bounds first: a crafted size fails
        here, before any module is built)."""
        self.check_field_limits()
        super().validate_architecture()
        if self.hidden_size % 2:
            raise ValueError(
                f"VavlConfig.hidden_size = {self.hidden_size}: must be even (the sinusoid position table)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd, got {self.conv_kernel_size}")
        if self.legacy_batch_mixing and not self.legacy_batch_axis_attention:
            raise ValueError(
                "legacy_batch_mixing=True reproduces the original code's batch-axis attention and needs "
                "legacy_batch_axis_attention=True"
            )
        if self.problem_type not in (None, "single_label_classification", "regression"):
            raise ValueError(
                f"problem_type must be 'single_label_classification' or 'regression', got {self.problem_type!r}"
            )
        if self.label_scale is not None and (len(self.label_scale) != 2 or self.label_scale[0] >= self.label_scale[1]):
            raise ValueError(f"label_scale must be [min, max] with min < max, got {self.label_scale}")
        self.check_model_size()  # the backbone configs first: the widths below are read from them
        self.check_backbone_widths()

    def limit_fields(self) -> dict[str, Any]:
        """The bounds of the own fields (see the class docstring), for `ConfigLimitsMixin`."""
        whole, number, probability, flag = limits.whole, limits.number, limits.probability, limits.flag
        bounds: dict[str, Any] = {
            "audio_feature_dim": whole(1, limits.MAX_FEATURE_DIM),
            "visual_feature_dim": whole(1, limits.MAX_FEATURE_DIM),
            "projection_dim": whole(1, limits.MAX_WIDTH),
            "hidden_size": whole(2, limits.MAX_WIDTH),
            "num_attention_heads": whole(1, limits.MAX_HEADS),
            "intermediate_size": whole(1, limits.MAX_FEED_FORWARD),
            "conv_kernel_size": whole(1, 1023),
            "num_modality_layers": whole(1, limits.MAX_LAYERS),
            "num_shared_layers": whole(1, limits.MAX_LAYERS),
            "conformer_dropout": probability(),
            "head_hidden_sizes": limits.whole_list(1, limits.MAX_FEED_FORWARD, 1, 16),
            "head_dropout": probability(),
            "reconstruction_loss_weight": number(0.0, 1e6),
            "max_position_embeddings": whole(1, limits.MAX_POSITIONS),
            "position_encoding": limits.choice(("relative", "legacy_shifted")),
            "visual_backbone_chunk_size": whole(1, 65536),
            "label_scale": limits.optional(limits.number_list(-1e9, 1e9, 2, 2)),
            "sampling_rate": whole(1000, 384000),
            "window_seconds": number(0.0, 3600.0, low_open=True),
            "initializer_range": number(0.0, 10.0),
        }
        for name in ("legacy_batch_axis_attention", "legacy_batch_mixing", "normalize_visual_features"):
            bounds[name] = flag()
        for name in ("freeze_audio_backbone", "freeze_audio_feature_encoder", "freeze_visual_backbone"):
            bounds[name] = flag()
        return bounds

    def limit_backbones(self) -> dict[str, str]:
        """The backbone sub-configs and their architectures, for `ConfigLimitsMixin`."""
        return {"audio_backbone_config": "wav2vec2", "visual_backbone_config": "efficientnet"}

    def estimated_parameters(self) -> dict[str, int]:
        """The parameters of `VavlForEmotionRecognition(self)` by part (exact; computed from the sizes, no module is
        built; needs avemotion, not only a remote copy of this file)."""
        width, inner, linear = self.hidden_size, self.intermediate_size, limits.linear_parameters
        # ConformerBlock: two feed-forwards, relative attention (q, k, v, out, bias-free pos, u/v biases), the
        # convolution module (pointwise x2 out, depthwise, BatchNorm, pointwise) and four LayerNorms
        block = (
            2 * (2 * width + linear(width, inner) + linear(inner, width))
            + 4 * linear(width, width) + width * width + 2 * width
            + linear(width, 2 * width) + width * self.conv_kernel_size + 2 * width + linear(width, width)
            + 3 * 2 * width
        )  # fmt: skip

        def encoder(input_size: int, layers: int) -> int:
            return linear(input_size, width) + layers * block

        def head(input_size: int, output_size: int) -> int:
            sizes = [input_size, *self.head_hidden_sizes]
            return sum(linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])) + linear(sizes[-1], output_size)

        labels, projection = self.num_labels, self.projection_dim
        features = self.audio_feature_dim + self.visual_feature_dim
        return {
            "audio_backbone_config": limits.backbone_parameters(self.audio_backbone_config, "wav2vec2"),
            "visual_backbone_config": limits.backbone_parameters(self.visual_backbone_config, "efficientnet"),
            "modality encoders": features * projection + 2 * encoder(projection, self.num_modality_layers),
            "shared encoder": encoder(width, self.num_shared_layers) + 2 * width,
            "heads": 2 * head(width, labels) + head(2 * width, labels)
            + head(width, self.audio_feature_dim) + head(width, self.visual_feature_dim),
        }  # fmt: skip

    def check_backbone_widths(self) -> None:
        """Raise a `ValueError` when `audio_feature_dim`/`visual_feature_dim` differ from the width of the features
        the backbone configs produce (wav2vec2: `hidden_size`, or `output_hidden_size` with an adapter;
        EfficientNet: `hidden_dim`, the pooled width). A modality without a backbone config is not checked."""
        for field, backbone_field, width in (
            ("audio_feature_dim", "audio_backbone_config", audio_backbone_width(self.audio_backbone_config)),
            ("visual_feature_dim", "visual_backbone_config", visual_backbone_width(self.visual_backbone_config)),
        ):
            if width is not None and getattr(self, field) != width:
                raise ValueError(
                    f"{field}={getattr(self, field)} disagrees with {backbone_field}, whose features are {width}-d: "
                    f"set {field}={width} (from_backbones does) or drop the backbone config to train on features"
                )

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression"

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> VavlConfig:
        """The paper's two set-ups with the paper's backbone layouts.

        Args:
            preset: `"crema-d"` (6 categorical emotions in VAVL's order, cross-entropy, reconstruction weight 2) or
                `"msp-improv"` (arousal, dominance, valence on a 1-5 scale, 1 - CCC, reconstruction weight 1).
            overrides: any config field, e.g. `audio_backbone_config=None` for a model on pre-extracted features.
        """
        name = preset.lower().replace("_", "-")
        if name == "crema-d":
            labels, problem_type, extra = CREMA_D_LABELS, "single_label_classification", {}
            extra["reconstruction_loss_weight"] = 2.0
        elif name == "msp-improv":
            labels, problem_type = MSP_IMPROV_ATTRIBUTES, "regression"
            extra = {"reconstruction_loss_weight": 1.0, "label_scale": [1.0, 5.0]}
        else:
            raise ValueError(f"Unknown VAVL preset {preset!r}; expected 'crema-d' or 'msp-improv'")
        kwargs: dict[str, Any] = dict(
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type=problem_type,
            audio_backbone_config=wav2vec2_large_robust_config(),
            visual_backbone_config=efficientnet_b2_config(),
            audio_backbone_name="facebook/wav2vec2-large-robust",
            **extra,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = [
    "VavlConfig",
    "CREMA_D_LABELS",
    "MSP_IMPROV_ATTRIBUTES",
    "audio_backbone_width",
    "visual_backbone_width",
]
