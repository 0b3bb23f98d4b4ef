"""Multi-level fusion (wav2vec 2.0 + BERT) model configuration, and the one parser of fusion member (head) names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .segments import GRANULARITIES

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


# The mainstream 4-class IEMOCAP set-up (excited merged into happy).
IEMOCAP_LABELS = ["neutral", "happy", "angry", "sad"]
LATE_FUSION_MODES = ("mean_prob", "mean_logprob", "weighted")


@dataclass(frozen=True)
class FusionMember:
    """A fusion member (head) name, parsed: `audio_<g>` (speech at granularity g), `text`, `early_<g>` (co-attention
    of speech at g with the text) or `early` (co-attention at every granularity, concatenated).

    Attributes:
        name: the head name as in `config.fusion_members`.
        kind: `"audio"`, `"text"` or `"early"`.
        granularities: the speech granularities the head reads: `()` for `text`, `(g,)` for `audio_<g>` and
            `early_<g>`, all configured granularities for `early`.
    """

    name: str
    kind: Literal["audio", "text", "early"]
    granularities: tuple[str, ...]

    @classmethod
    def parse(cls, name: str, granularities: list[str] | tuple[str, ...]) -> FusionMember:
        """Parse `name`; `granularities` (the config's) are those of the `early` head. Raises a `ValueError` for a
        name that is no head."""
        if name == "text":
            return cls(name, "text", ())
        if name == "early":
            return cls(name, "early", tuple(granularities))
        kind, _, granularity = name.partition("_")
        if kind not in ("audio", "early") or not granularity:
            raise ValueError(f"fusion member must be 'text', 'early', 'audio_<g>' or 'early_<g>', got {name!r}")
        return cls(name, kind, (granularity,))

    @property
    def uses_audio(self) -> bool:
        return self.kind != "text"

    @property
    def uses_text(self) -> bool:
        return self.kind != "audio"


def head_names(granularities: list[str], granularity_fusion: str) -> list[str]:
    """Every head a config can build: `audio_<g>` and early fusion (`early_<g>` per granularity, or one `early`
    over all of them with `granularity_fusion="concat"`) for each granularity, and `text`."""
    names = [f"audio_{g}" for g in granularities] + ["text"]
    names += [f"early_{g}" for g in granularities] if granularity_fusion == "late" else ["early"]
    return names


class MultiLevelFusionConfig(ConfigLimitsMixin, PreTrainedConfig):
    r"""
    Configuration of the multi-level fusion model of wav2vec 2.0 and BERT (Zhao, Wang, Wang, Interspeech 2022,
    arXiv 2207.04697). Only the paper's abstract is public; every choice that it does not fix is a field here (see the
    specification `reference/mlfusion.md` and the model card for which defaults differ from the reference and why).

    Heads: `audio_<g>` (masked mean of the speech sequence at granularity g, then a classifier), `text` (pooled BERT
    vector, then a classifier), `early_<g>` (co-attention between the speech sequence at g and the BERT tokens, both
    streams mean-pooled and concatenated, then a classifier) or `early` (`granularity_fusion="concat"`). The final
    prediction late-fuses the posteriors of `fusion_members`; only member heads are built and trained.

    Paper variants as configs (`G` = `granularities`):
    audio-only `["audio_frame"]`; text-only `["text"]`; early fusion `["early_frame"]`; late fusion
    `["audio_frame", "text"]`; early + late `["early_frame", "audio_frame", "text"]`; final: `None` with
    `G = ["frame", "phone", "syllable", "word"]` (every head).

    Args:
        audio_config (`dict` or `PreTrainedConfig`, *optional*): the speech encoder, any wav2vec2-style model
            (wav2vec2, HuBERT, WavLM, data2vec-audio); defaults to the wav2vec2-base layout.
        text_config (`dict` or `PreTrainedConfig`, *optional*): the text encoder, any BERT-style model; defaults to
            the bert-base-uncased layout.
        audio_model_name_or_path (`str`, *optional*): pretrained speech encoder, recorded by `from_backbones`
            (reference: `facebook/wav2vec2-base`). Nothing is downloaded at `__init__`.
        text_model_name_or_path (`str`, *optional*): pretrained text encoder (reference: `bert-base-uncased`).
        granularities (`list[str]`, defaults to all four): subset of `frame`, `phone`, `syllable`, `word`.
        granularity_fusion (`str`, defaults to `"late"`): `"late"`: one co-attention block and head per granularity,
            late-fused; `"concat"`: the pooled pairs of all granularities concatenated into one `early` head.
        fusion_members (`list[str]`, *optional*): the heads that are built, trained and late-fused; `None` = all heads
            of `granularities` (the final system).
        late_fusion_mode (`str`, defaults to `"mean_prob"`): `"mean_prob"` (average of the posteriors),
            `"mean_logprob"` (average of the log-posteriors, renormalised) or `"weighted"` (posteriors averaged with
            `late_fusion_weights`).
        late_fusion_weights (`dict[str, float]`, *optional*): member -> weight for `"weighted"`; must sum to 1.
        audio_layer (`str` or `int`, *optional*): `"last"`, `"weighted_sum"` (softmax-weighted sum of all hidden
            states, CNN projection included) or a hidden-state index (0 = CNN projection output). `None` resolves to
            `"weighted_sum"` when the speech encoder is frozen, else `"last"`.
        text_layer (`str` or `int`, defaults to `"last"`): the same choice for the text encoder.
        text_pooling (`str`, defaults to `"mean"`): `"mean"` (masked mean over tokens) or `"cls"` (first token) for
            the text head.
        freeze_audio_encoder (`bool`, defaults to `True`): no gradients through the speech encoder (kept in eval mode).
        freeze_feature_encoder (`bool`, defaults to `True`): freeze the CNN feature encoder when the rest of the speech
            encoder is fine-tuned.
        freeze_text_encoder (`bool`, defaults to `True`): no gradients through the text encoder (kept in eval mode).
        fusion_hidden_size (`int`, defaults to 768): width of the co-attention streams; encoder outputs of another
            width pass through Linear + LayerNorm + dropout first.
        num_coattention_layers (`int`, defaults to 1): co-attention layers per block.
        num_coattention_heads (`int`, defaults to 12): attention heads.
        coattention_ffn_size (`int`, defaults to 3072): feed-forward width of the co-attention layers.
        num_self_attention_layers (`int`, defaults to 0): intra-modal Transformer layers before the co-attention.
        attention_dropout (`float`, defaults to 0.1): dropout on the co-attention weights.
        hidden_dropout (`float`, defaults to 0.1): dropout in the co-attention residual branches and projections.
        classifier_hidden_size (`int`, defaults to 256): hidden width of every head
            (Dropout, Linear, ReLU, Dropout, Linear).
        classifier_dropout (`float`, defaults to 0.1): dropout of the heads.
        training_scheme (`str`, defaults to `"joint"`): `"joint"`: the loss sums the cross-entropy of every member
            head; `"separate"`: one member per model (checked), combined after training with `late_fuse_logits`.
        head_loss_weights (`dict[str, float]`, *optional*): member -> loss weight (default 1 each).
        class_weights (`list[float]`, *optional*): cross-entropy class weights (`num_labels` values).
        segment_pooling (`str`, defaults to `"matrix"`): `"matrix"` or `"cumsum"`; the same result.
        max_segment_overrun (`float`, defaults to 0.05): seconds a segment may end beyond the audio (clipped); a
            larger overrun, or a segment starting at or after the end, is an error.
        keep_silence_segments (`bool`, defaults to `False`): for the alignment reader: keep silence and sentence
            marker segments.
        sampling_rate (`int`, defaults to 16000): audio sampling rate of the speech encoder.
        max_text_length (`int`, defaults to 128): WordPiece tokens kept by the processor.
        initializer_range (`float`, defaults to 0.02): std of the normal init of the fusion and head linears.
        max_parameters (`float`, *optional*, defaults to 2e9): the largest model (estimated parameter count of
            `MultiLevelFusionForEmotionRecognition`, encoders included) this config may describe. Only an explicit
            argument sets it (`MultiLevelFusionConfig(..., max_parameters=5e9)`, `from_pretrained(dir,
            max_parameters=5e9)`): a config file that sets it is refused, and it is never saved.

    Limits (checked when the config is built, before any module; a `ValueError` names the field and its range, see
    `avemotion.models.config_limits`): whole numbers (not bools, not floats such as `3.0`): `fusion_hidden_size`
    1-16384, `num_coattention_layers` 1-256, `num_self_attention_layers` 0-256, `num_coattention_heads` 1-1024
    dividing `fusion_hidden_size`, `coattention_ffn_size` and `classifier_hidden_size` 1-65536, `max_text_length`
    1-65536, `sampling_rate` 1000-384000, 1-1024 labels, an integer `audio_layer`/`text_layer` a hidden-state index of
    its encoder; numbers: dropouts in [0, 1], `max_segment_overrun` in [0, 60] s, weights finite and in [0, 1e6].
    The encoder configs' size fields are bounded too (wav2vec2-style: layers 1-256, widths 1-16384, CNN lists of 1-32
    values; BERT-style: layers 1-256, widths 1-16384, vocabulary 1-1,000,000, positions 1-65536; heads dividing the
    width), and the estimated parameter count must not exceed `max_parameters`.
    """

    model_type: ClassVar[str] = "mlfusion"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "audio_config": SubConfigSpec(AutoConfig, model_type="wav2vec2"),
        "text_config": SubConfigSpec(AutoConfig, model_type="bert"),
    }

    audio_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    audio_model_name_or_path: str | None = None
    text_model_name_or_path: str | None = None
    granularities: list[str] | tuple[str, ...] = GRANULARITIES
    granularity_fusion: Literal["late", "concat"] = "late"
    fusion_members: list[str] | tuple[str, ...] | None = None
    late_fusion_mode: Literal["mean_prob", "mean_logprob", "weighted"] = "mean_prob"
    late_fusion_weights: dict[str, float] | None = None
    audio_layer: str | int | None = None
    text_layer: str | int = "last"
    text_pooling: Literal["mean", "cls"] = "mean"
    freeze_audio_encoder: bool = True
    freeze_feature_encoder: bool = True
    freeze_text_encoder: bool = True
    fusion_hidden_size: int = 768
    num_coattention_layers: int = 1
    num_coattention_heads: int = 12
    coattention_ffn_size: int = 3072
    num_self_attention_layers: int = 0
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.1
    classifier_hidden_size: int = 256
    classifier_dropout: float = 0.1
    training_scheme: Literal["joint", "separate"] = "joint"
    head_loss_weights: dict[str, float] | None = None
    class_weights: list[float] | None = None
    segment_pooling: Literal["matrix", "cumsum"] = "matrix"
    max_segment_overrun: float = 0.05
    keep_silence_segments: bool = False
    sampling_rate: int = 16000
    max_text_length: int = 128
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if type(self).__module__.startswith("avemotion."):
            # With `custom_pipelines`, transformers' pipeline() demands trust_remote_code even for the task that
            # `import avemotion` registers; the package's own class drops it (remote copies keep it).
            kwargs.pop("custom_pipelines", None)
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(IEMOCAP_LABELS))
            self.label2id = {label: i for i, label in enumerate(IEMOCAP_LABELS)}
        super().__post_init__(**kwargs)
        self.granularities = list(self.granularities)
        if self.fusion_members is None:
            self.fusion_members = head_names(self.granularities, self.granularity_fusion)
        self.fusion_members = list(self.fusion_members)
        if self.audio_layer is None:
            self.audio_layer = "weighted_sum" if self.freeze_audio_encoder else "last"
        if self.class_weights is not None:
            self.class_weights = [float(w) for w in self.class_weights]
        if self.problem_type is None:
            self.problem_type = "single_label_classification"
        self.validate_architecture()

    def validate_architecture(self):
        """Checks the sizes and choices that the model cannot work with (the field bounds first: a crafted size fails
        here, before any module is built)."""
        self.check_field_limits()
        super().validate_architecture()
        unknown = [g for g in self.granularities if g not in GRANULARITIES]
        if unknown or not self.granularities or len(set(self.granularities)) != len(self.granularities):
            raise ValueError(f"granularities must be distinct values of {GRANULARITIES}, got {self.granularities}")
        if self.granularity_fusion not in ("late", "concat"):
            raise ValueError(f"granularity_fusion must be 'late' or 'concat', got {self.granularity_fusion!r}")
        available = head_names(self.granularities, self.granularity_fusion)
        bad = [m for m in self.fusion_members if m not in available]
        if bad or not self.fusion_members or len(set(self.fusion_members)) != len(self.fusion_members):
            raise ValueError(
                f"fusion_members must be distinct heads of {available} (from granularities={self.granularities} and "
                f"granularity_fusion={self.granularity_fusion!r}), got {self.fusion_members}"
            )
        if self.late_fusion_mode not in LATE_FUSION_MODES:
            raise ValueError(f"late_fusion_mode must be one of {LATE_FUSION_MODES}, got {self.late_fusion_mode!r}")
        if self.late_fusion_mode == "weighted":
            weights = self.late_fusion_weights or {}
            if set(weights) != set(self.fusion_members) or any(w < 0 for w in weights.values()):
                raise ValueError(
                    "late_fusion_mode='weighted' needs late_fusion_weights with one non-negative weight per member "
                    f"of {self.fusion_members}, got {self.late_fusion_weights}"
                )
            if abs(sum(weights.values()) - 1.0) > 1e-6:
                raise ValueError(f"late_fusion_weights must sum to 1, got {sum(weights.values())}")
        elif self.late_fusion_weights is not None:
            raise ValueError(
                f"late_fusion_weights is only used with late_fusion_mode='weighted' (got {self.late_fusion_mode!r})"
            )
        if self.head_loss_weights is not None and set(self.head_loss_weights) - set(self.fusion_members):
            raise ValueError(
                f"head_loss_weights names heads that are not fusion members: "
                f"{sorted(set(self.head_loss_weights) - set(self.fusion_members))}"
            )
        if self.training_scheme not in ("joint", "separate"):
            raise ValueError(f"training_scheme must be 'joint' or 'separate', got {self.training_scheme!r}")
        if self.training_scheme == "separate" and len(self.fusion_members) != 1:
            raise ValueError(
                "training_scheme='separate' trains one member per model: give exactly one fusion member, got "
                f"{self.fusion_members}"
            )
        for name, value in (("audio_layer", self.audio_layer), ("text_layer", self.text_layer)):
            if not (isinstance(value, int) and not isinstance(value, bool)) and value not in ("last", "weighted_sum"):
                raise ValueError(f"{name} must be 'last', 'weighted_sum' or an int hidden-state index, got {value!r}")
        if self.text_pooling not in ("mean", "cls"):
            raise ValueError(f"text_pooling must be 'mean' or 'cls', got {self.text_pooling!r}")
        if self.segment_pooling not in ("matrix", "cumsum"):
            raise ValueError(f"segment_pooling must be 'matrix' or 'cumsum', got {self.segment_pooling!r}")
        if self.fusion_hidden_size % self.num_coattention_heads:
            raise ValueError(
                f"fusion_hidden_size ({self.fusion_hidden_size}) must be divisible by num_coattention_heads "
                f"({self.num_coattention_heads})"
            )
        if self.class_weights is not None and len(self.class_weights) != self.num_labels:
            raise ValueError(f"class_weights needs {self.num_labels} values, got {len(self.class_weights)}")
        for attribute in ("conv_kernel", "conv_stride", "hidden_size"):
            if not hasattr(self.audio_config, attribute):
                raise ValueError(
                    f"audio_config ({type(self.audio_config).__name__}) has no `{attribute}`: a wav2vec2-style speech "
                    "encoder (wav2vec2, HuBERT, WavLM, data2vec-audio) is required"
                )
        if not self.freeze_audio_encoder and self.audio_layer != "last" and getattr(self.audio_config, "layerdrop", 0):
            # transformers' layerdrop leaves skipped layers out of `hidden_states`, so indices and weights would shift
            raise ValueError(
                f"audio_layer={self.audio_layer!r} with a fine-tuned speech encoder needs audio_config.layerdrop=0 "
                f"(got {self.audio_config.layerdrop})"
            )
        if getattr(self.audio_config, "add_adapter", False):
            raise ValueError("audio_config.add_adapter=True changes the frame rate; segment pooling needs it False")
        if self.problem_type != "single_label_classification":
            raise ValueError(f"problem_type must be 'single_label_classification', got {self.problem_type!r}")
        self.check_model_size()
        self._check_layer_indices()

    def _check_layer_indices(self) -> None:
        """An integer `audio_layer`/`text_layer` is a hidden-state index of its encoder (layers + 1 states)."""
        for name, encoder in (("audio_layer", self.audio_config), ("text_layer", self.text_config)):
            value, layers = getattr(self, name), encoder.num_hidden_layers
            if isinstance(value, int) and not -(layers + 1) <= value <= layers:
                raise ValueError(
                    f"MultiLevelFusionConfig.{name} = {value}: expected a hidden-state index from {-(layers + 1)} to "
                    f"{layers} (the encoder has {layers} layers; 0 is the output before the first one)"
                )

    def limit_fields(self) -> dict[str, Any]:
        """The bounds of the own fields (see the class docstring), for `ConfigLimitsMixin`."""
        whole, number, probability, flag = limits.whole, limits.number, limits.probability, limits.flag
        bounds: dict[str, Any] = {
            "granularities": limits.string_list(1, len(GRANULARITIES)),
            "fusion_members": limits.optional(limits.string_list(1, 64)),
            "late_fusion_weights": limits.optional(limits.number_dict(0.0, 1e6)),
            "fusion_hidden_size": whole(1, limits.MAX_WIDTH),
            "num_coattention_layers": whole(1, limits.MAX_LAYERS),
            "num_coattention_heads": whole(1, limits.MAX_HEADS),
            "coattention_ffn_size": whole(1, limits.MAX_FEED_FORWARD),
            "num_self_attention_layers": whole(0, limits.MAX_LAYERS),
            "classifier_hidden_size": whole(1, limits.MAX_FEED_FORWARD),
            "head_loss_weights": limits.optional(limits.number_dict(0.0, 1e6)),
            "class_weights": limits.optional(limits.number_list(0.0, 1e6, 1, limits.MAX_LABELS)),
            "max_segment_overrun": number(0.0, 60.0),
            "sampling_rate": whole(1000, 384000),
            "max_text_length": whole(1, limits.MAX_POSITIONS),
            "initializer_range": number(0.0, 10.0),
        }
        for name in ("attention_dropout", "hidden_dropout", "classifier_dropout"):
            bounds[name] = probability()
        for name in ("freeze_audio_encoder", "freeze_feature_encoder", "freeze_text_encoder", "keep_silence_segments"):
            bounds[name] = flag()
        return bounds

    def limit_backbones(self) -> dict[str, str]:
        """The encoder sub-configs and their architectures, for `ConfigLimitsMixin`."""
        return {"audio_config": "wav2vec2", "text_config": "bert"}

    def estimated_parameters(self) -> dict[str, int]:
        """The parameters of `MultiLevelFusionForEmotionRecognition(self)` by part (computed from the sizes, no module
        is built; exact for the encoders `config_limits` counts exactly; needs avemotion, not only a remote copy of
        this file). Only what the fusion members use is counted, as only that is built."""
        linear, width = limits.linear_parameters, self.fusion_hidden_size
        audio_width, text_width = self.audio_config.hidden_size, self.text_config.hidden_size
        parts = {"audio_config": 0, "text_config": 0}
        if self.uses_audio:
            weights = self.audio_config.num_hidden_layers + 1 if self.audio_layer == "weighted_sum" else 0
            parts["audio_config"] = limits.backbone_parameters(self.audio_config, "wav2vec2") + weights
        if self.uses_text:
            weights = self.text_config.num_hidden_layers + 1 if self.text_layer == "weighted_sum" else 0
            parts["text_config"] = limits.backbone_parameters(self.text_config, "bert") + weights

        def projection(input_size: int) -> int:  # Linear + LayerNorm to fusion_hidden_size, unless already that wide
            return 0 if input_size == width else linear(input_size, width) + 2 * width

        layers = 2 * (self.num_self_attention_layers + self.num_coattention_layers)  # speech and text streams
        block = projection(audio_width) + projection(text_width)
        block += layers * limits.transformer_layer_parameters(width, self.coattention_ffn_size)
        early = {g for member in self.members if member.kind == "early" for g in member.granularities}
        parts["co-attention"] = len(early) * block
        inputs = {"audio": audio_width, "text": text_width}
        heads = 0
        for member in self.members:
            size = inputs.get(member.kind, 2 * width * len(member.granularities))
            heads += linear(size, self.classifier_hidden_size) + linear(self.classifier_hidden_size, self.num_labels)
        parts["heads"] = heads
        return parts

    @property
    def members(self) -> list[FusionMember]:
        """`fusion_members`, parsed ([`FusionMember`]), in order."""
        return [FusionMember.parse(name, self.granularities) for name in self.fusion_members]

    @property
    def member_granularities(self) -> list[str]:
        """Granularities that some fusion member uses, in `granularities` order."""
        used = {granularity for member in self.members for granularity in member.granularities}
        return [g for g in self.granularities if g in used]

    @property
    def uses_text(self) -> bool:
        return any(member.uses_text for member in self.members)

    @property
    def uses_audio(self) -> bool:
        return any(member.uses_audio for member in self.members)


__all__ = ["IEMOCAP_LABELS", "LATE_FUSION_MODES", "FusionMember", "MultiLevelFusionConfig", "head_names"]
