"""Bounds on model configs, checked before any module is built.

A `config.json` is data: a crafted or mistyped one must fail at once with an error naming the field, not hang while
modules are built (`num_hidden_layers: 10000000`), silently build another model (`num_layers: -3` gives no layers),
or fail deep inside PyTorch when a huge allocation fails (`hidden_size: 10000000`). This module gives configs:

- field checks (`whole`, `number`, `probability`, `whole_list`, ...): a `ValueError` such as
  ``VavlConfig.num_shared_layers = 10000000: expected a whole number from 1 to 256``;
- the same checks for the backbone sub-configs, by architecture (`BACKBONE_LIMITS`): wav2vec2-style speech encoders,
  BERT-style text encoders and transformers' EfficientNet (sizes, probabilities, activation names, and the
  combinations their modules need: heads dividing the width, CNN lists of one length, ...);
- the label map: 1 to `MAX_LABELS` labels whose `id2label` keys are the indices 0 .. n-1;
- analytic parameter counts of those backbones (`backbone_parameters`), milliseconds and no module built, and
  `check_parameter_budget` (default bound `DEFAULT_MAX_PARAMETERS`);
- `ConfigLimitsMixin`, which a `PreTrainedConfig` subclass puts first among its bases: it runs the field checks
  before the config is built further, takes the parameter bound only from an explicit `max_parameters=` argument
  (never from the file) and never serialises it.

Choices, for every check here:

- A whole number is a Python `int` (or another integral number type), never a `bool`, and never a float: JSON
  `3.0` is rejected with a hint to write `3` (a float would otherwise be carried into `range()` or a layer size
  later; accepting only exact integers keeps the file and the built model the same).
- A real number (dropout, weight, seconds) is an `int` or `float` that is finite (no NaN or infinity), not a bool.
- The size bounds are fixed (they do not move with `max_parameters`): they are far above the published models but
  low enough that no single field can make module construction take more than seconds.

The field bounds document themselves in the error messages; the constants below are the defaults the configs use.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

# The largest model a config may describe unless the caller passes `max_parameters=` explicitly. The paper-sized
# models are ~0.2-0.4 B parameters; 2 B leaves room for larger backbones (wav2vec2/XLS-R 1B-sized) while a 10x
# mistake in a width, or a crafted file, fails before allocating anything.
DEFAULT_MAX_PARAMETERS = 2_000_000_000
MAX_LAYERS = 256  # layers of one stack (wav2vec2-large has 24, BERT-large 24)
MAX_WIDTH = 16384  # hidden widths (wav2vec2/BERT-large: 1024)
MAX_FEATURE_DIM = 65536  # feature widths, e.g. an EfficientNet's pooled width
MAX_FEED_FORWARD = 65536  # feed-forward widths (large models: 4096)
MAX_HEADS = 1024
MAX_LABELS = 1024  # classes or regression outputs
MAX_VOCAB = 1_000_000  # token vocabularies (BERT: 30522, XLM-R: 250002)
MAX_POSITIONS = 65536  # position tables (BERT: 512)
MAX_CONV_LAYERS = 32  # wav2vec2's CNN has 7
MAX_CONV_CHANNELS = 8192  # wav2vec2's CNN: 512
MAX_KERNEL = 1024  # convolution kernels and strides (wav2vec2's positional conv: 128)
MAX_EFFICIENTNET_BLOCKS = 1024  # EfficientNet-B7 has 55 blocks after its depth coefficient

Check = Callable[[str, Any], None]
_MISSING = object()


def _show(value: Any) -> str:
    """`repr(value)`, cut to a readable length (a crafted file may hold a megabyte string)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _a(value: Any) -> str:
    """'a str', 'an int': the type of `value` with its article."""
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _got(value: Any, whole_number: bool = False) -> str:
    """Why a value of the wrong type was refused, or '' when the type was right."""
    if isinstance(value, bool):
        return ", got a bool"
    if whole_number and isinstance(value, float) and value.is_integer():
        return f", got the float {value!r} (write {int(value)} without a decimal point)"
    accepted = numbers.Integral if whole_number else numbers.Real
    return "" if isinstance(value, accepted) else f", got {_a(value)}"


def is_whole(value: Any) -> bool:
    """An integral number that is not a bool (JSON `3`, not `3.0` or `true`)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def whole(low: int, high: int) -> Check:
    """A whole number from `low` to `high` (both included)."""
    expected = f"a whole number from {low} to {high}"

    def check(where: str, value: Any) -> None:
        if not is_whole(value) or not low <= value <= high:
            raise ValueError(f"{where} = {_show(value)}: expected {expected}{_got(value, whole_number=True)}")

    return check


def number(low: float, high: float, low_open: bool = False) -> Check:
    """A finite real number from `low` (excluded when `low_open`) to `high`."""
    expected = f"a number above {low:g} and at most {high:g}" if low_open else f"a number from {low:g} to {high:g}"

    def check(where: str, value: Any) -> None:
        inside = is_real(value) and (low < value if low_open else low <= value) and value <= high
        if not inside:
            raise ValueError(f"{where} = {_show(value)}: expected {expected}{_got(value)}")

    return check


def probability() -> Check:
    """A probability (a dropout rate, a masking rate): a number from 0 to 1."""
    return number(0.0, 1.0)


def flag() -> Check:
    """A bool (JSON `true`/`false`; the string `"false"` would be truthy)."""

    def check(where: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{where} = {_show(value)}: expected true or false, got {_a(value)}")

    return check


def choice(options: tuple[Any, ...]) -> Check:
    """One of `options`."""

    def check(where: str, value: Any) -> None:
        if isinstance(value, bool) or value not in options:
            raise ValueError(f"{where} = {_show(value)}: expected one of {list(options)}")

    return check


def activation() -> Check:
    """The name of an activation function that transformers knows (`transformers.activations.ACT2FN`); a model would
    fail with a `KeyError` deep in its construction otherwise."""

    def check(where: str, value: Any) -> None:
        from transformers.activations import ACT2FN  # here: the table imports torch

        if isinstance(value, str) and value not in ACT2FN:
            raise ValueError(
                f"{where} = {_show(value)}: expected an activation name that transformers knows (e.g. gelu, relu, swish)"
            )
        if not isinstance(value, str) and not callable(value):
            raise ValueError(f"{where} = {_show(value)}: expected an activation name, got {_a(value)}")

    return check


def optional(inner: Check) -> Check:
    """None, or a value that passes `inner`."""

    def check(where: str, value: Any) -> None:
        if value is not None:
            inner(where, value)

    return check


def _sequence(where: str, value: Any, min_length: int, max_length: int, what: str) -> None:
    if not isinstance(value, (list, tuple)) or not min_length <= len(value) <= max_length:
        size = f"{min_length}" if min_length == max_length else f"{min_length} to {max_length}"
        got = f", got {_a(value)}" if not isinstance(value, (list, tuple)) else f" (got {len(value)})"
        raise ValueError(f"{where} = {_show(value)}: expected a list of {size} {what}{got}")


def _list_of(element: Check, min_length: int, max_length: int, what: str) -> Check:
    """A list of `min_length` to `max_length` items, each passing `element` (named `where[index]`)."""

    def check(where: str, value: Any) -> None:
        _sequence(where, value, min_length, max_length, what)
        for index, item in enumerate(value):
            element(f"{where}[{index}]", item)

    return check


def whole_list(low: int, high: int, min_length: int = 1, max_length: int = MAX_CONV_LAYERS) -> Check:
    """A list of `min_length` to `max_length` whole numbers, each from `low` to `high`."""
    return _list_of(whole(low, high), min_length, max_length, f"whole numbers from {low} to {high}")


def number_list(low: float, high: float, min_length: int = 1, max_length: int = MAX_LABELS) -> Check:
    """A list of `min_length` to `max_length` finite numbers, each from `low` to `high`."""
    return _list_of(number(low, high), min_length, max_length, f"numbers from {low:g} to {high:g}")


def string_list(min_length: int = 1, max_length: int = 64) -> Check:
    """A list of `min_length` to `max_length` strings."""

    def check(where: str, value: Any) -> None:
        _sequence(where, value, min_length, max_length, "strings")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"{where}[{index}] = {_show(item)}: expected a string, got {_a(item)}")

    return check


def number_dict(low: float, high: float, max_length: int = 64) -> Check:
    """A mapping of at most `max_length` string keys to finite numbers from `low` to `high`."""
    element = number(low, high)

    def check(where: str, value: Any) -> None:
        if not isinstance(value, Mapping) or len(value) > max_length:
            raise ValueError(f"{where} = {_show(value)}: expected a mapping of at most {max_length} names to numbers")
        for key, item in value.items():
            element(f"{where}[{key!r}]", item)

    return check


def whole_or_pair(low: int, high: int) -> Check:
    """A whole number, or a list of two (height, width), each from `low` to `high` (e.g. an image size)."""
    single, pair = whole(low, high), whole_list(low, high, 2, 2)

    def check(where: str, value: Any) -> None:
        (pair if isinstance(value, (list, tuple)) else single)(where, value)

    return check


def field_value(config: Any, name: str, default: Any = _MISSING) -> Any:
    """`config[name]` for a dict, `config.name` for a config object; `default` (or a sentinel) when it has none."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def check_fields(where: str, config: Any, checks: Mapping[str, Check]) -> None:
    """Run `checks` (field -> check) on the fields `config` (a dict or a config object) has; `where` prefixes the
    field names in the errors (e.g. `"VavlConfig"` or `"VavlConfig.audio_backbone_config"`)."""
    for name, check in checks.items():
        value = field_value(config, name)
        if value is not _MISSING:
            check(f"{where}.{name}", value)


# -- backbones ----------------------------------------------------------------------------------------------------

_CONV_LIST = whole_list(1, MAX_CONV_CHANNELS)
_KERNEL_LIST = whole_list(1, MAX_KERNEL)
_EFFICIENTNET_STAGES = 32

# Per architecture: the size fields of its sub-config (those a config of that architecture has are checked).
BACKBONE_LIMITS: dict[str, dict[str, Check]] = {
    # wav2vec2, HuBERT, WavLM, data2vec-audio and other speech encoders with wav2vec2's CNN + Transformer layout
    "wav2vec2": {
        "hidden_size": whole(1, MAX_WIDTH),
        "num_hidden_layers": whole(1, MAX_LAYERS),
        "num_attention_heads": whole(1, MAX_HEADS),
        "intermediate_size": whole(1, MAX_FEED_FORWARD),
        "conv_dim": _CONV_LIST,
        "conv_kernel": _KERNEL_LIST,
        "conv_stride": _KERNEL_LIST,
        "conv_bias": flag(),
        "num_conv_pos_embeddings": whole(1, MAX_KERNEL),  # kernel (wav2vec2) or layer count (data2vec-audio)
        "num_conv_pos_embedding_groups": whole(1, MAX_WIDTH),
        "conv_pos_kernel_size": whole(1, MAX_KERNEL),
        "do_stable_layer_norm": flag(),
        "hidden_act": activation(),
        "feat_extract_activation": activation(),
        "feat_extract_norm": choice(("group", "layer")),
        "add_adapter": flag(),
        "num_adapter_layers": whole(0, MAX_LAYERS),
        "adapter_kernel_size": whole(1, MAX_KERNEL),
        "adapter_stride": whole(1, MAX_KERNEL),
        "output_hidden_size": optional(whole(1, MAX_WIDTH)),
        "adapter_attn_dim": optional(whole(1, MAX_WIDTH)),
        "num_buckets": whole(1, MAX_POSITIONS),
        "max_bucket_distance": whole(1, 10**9),
        **{
            name: probability()
            for name in (
                "hidden_dropout",
                "activation_dropout",
                "attention_dropout",
                "feat_proj_dropout",
                "final_dropout",
                "layerdrop",
                "mask_time_prob",
                "mask_feature_prob",
            )
        },  # fmt: skip
    },
    # BERT, RoBERTa, DistilBERT (whose own names are dim/n_layers/n_heads/hidden_dim) and similar text encoders
    "bert": {
        "hidden_size": whole(1, MAX_WIDTH),
        "dim": whole(1, MAX_WIDTH),
        "num_hidden_layers": whole(1, MAX_LAYERS),
        "n_layers": whole(1, MAX_LAYERS),
        "num_attention_heads": whole(1, MAX_HEADS),
        "n_heads": whole(1, MAX_HEADS),
        "intermediate_size": whole(1, MAX_FEED_FORWARD),
        "hidden_dim": whole(1, MAX_FEED_FORWARD),
        "embedding_size": whole(1, MAX_WIDTH),
        "vocab_size": whole(1, MAX_VOCAB),
        "max_position_embeddings": whole(1, MAX_POSITIONS),
        "type_vocab_size": whole(1, 1024),  # BERT-style encoders embed token types 0.. always
        "hidden_act": activation(),
        "activation": activation(),  # DistilBERT's name
        **{
            name: probability()
            for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")
        },
    },
    # transformers' EfficientNet (EfficientNetConfig)
    "efficientnet": {
        "num_channels": whole(1, 64),
        "image_size": whole_or_pair(1, 8192),
        "width_coefficient": number(0.0, 16.0, low_open=True),
        "depth_coefficient": number(0.0, 16.0, low_open=True),
        "depth_divisor": whole(1, 1024),
        "kernel_sizes": whole_list(1, 31, 1, _EFFICIENTNET_STAGES),
        "in_channels": whole_list(1, MAX_CONV_CHANNELS, 1, _EFFICIENTNET_STAGES),
        "out_channels": whole_list(1, MAX_CONV_CHANNELS, 1, _EFFICIENTNET_STAGES),
        "strides": whole_list(1, 2, 1, _EFFICIENTNET_STAGES),  # the depthwise layer pads for stride 1 or 2 only
        "num_block_repeats": whole_list(0, 64, 1, _EFFICIENTNET_STAGES),
        "expand_ratios": whole_list(1, 64, 1, _EFFICIENTNET_STAGES),
        "depthwise_padding": whole_list(0, MAX_EFFICIENTNET_BLOCKS, 0, MAX_EFFICIENTNET_BLOCKS),
        "squeeze_expansion_ratio": number(0.0, 4.0),
        "hidden_dim": whole(1, MAX_FEATURE_DIM),
        "hidden_act": activation(),
        "pooling_type": choice(("mean", "max")),
        "dropout_rate": probability(),
        "drop_connect_rate": probability(),
        "batch_norm_momentum": probability(),
    },
}
_REQUIRED = {
    "wav2vec2": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                 "conv_kernel", "conv_stride", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups"),
    "bert": ("hidden_size", "num_hidden_layers"),
    "efficientnet": ("width_coefficient", "depth_coefficient", "depth_divisor", "kernel_sizes", "in_channels",
                     "out_channels", "strides", "num_block_repeats", "expand_ratios", "hidden_dim"),
}  # fmt: skip
_DESCRIPTION = {
    "wav2vec2": "a wav2vec2-style speech encoder",
    "bert": "a BERT-style text encoder",
    "efficientnet": "an EfficientNet",
}


def check_backbone(where: str, config: Any, architecture: str) -> None:
    """Check a backbone sub-config of `architecture` (a key of `BACKBONE_LIMITS`): its size fields, and for a config
    object also the fields it must have and the combinations its modules need (heads dividing the width, CNN lists
    of one length, ...). A dict (before transformers builds the config object from it) is checked on the fields it
    sets; `None` (no backbone) passes."""
    if config is None:
        return
    if not isinstance(config, Mapping) and not hasattr(config, "to_dict"):
        raise ValueError(f"{where} = {_show(config)}: expected a config object or a dict, got {_a(config)}")
    check_fields(where, config, BACKBONE_LIMITS[architecture])
    if isinstance(config, Mapping):
        return
    for name in _REQUIRED[architecture]:
        if not _declares(config, name):
            raise ValueError(
                f"{where} ({type(config).__name__}) has no `{name}`: {_DESCRIPTION[architecture]} is expected"
            )
    {"wav2vec2": _check_wav2vec2, "bert": _check_bert, "efficientnet": _check_efficientnet}[architecture](
        where, config
    )


def _declares(config: Any, name: str) -> bool:
    """The config's class has the field `name` (directly or through its `attribute_map`). An attribute that is only
    set on the instance does not count: transformers keeps unknown keys of a dict as attributes, so a BERT config
    built from a wav2vec2 dict still "has" `conv_kernel` but builds a BERT model."""
    cls = type(config)
    target = getattr(cls, "attribute_map", {}).get(name, name)
    return target in getattr(cls, "__dataclass_fields__", {}) or hasattr(cls, target)


def check_divisible(where: str, value: int, name: str, divisor: int) -> None:
    """`value` (the field `where`) must be a multiple of `divisor` (the field `name`)."""
    if value % divisor:
        raise ValueError(f"{where} = {value} must be divisible by {name} = {divisor}")


def _check_wav2vec2(where: str, config: Any) -> None:
    check_divisible(f"{where}.hidden_size", config.hidden_size, "num_attention_heads", config.num_attention_heads)
    groups = config.num_conv_pos_embedding_groups
    check_divisible(f"{where}.hidden_size", config.hidden_size, "num_conv_pos_embedding_groups", groups)
    lengths = {name: len(field_value(config, name)) for name in ("conv_dim", "conv_kernel", "conv_stride")}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: conv_dim, conv_kernel and conv_stride must have one length, got {lengths}")


def _check_bert(where: str, config: Any) -> None:
    heads = field_value(config, "num_attention_heads", None)
    if is_whole(heads) and heads > 0:
        check_divisible(f"{where}.hidden_size", config.hidden_size, "num_attention_heads", heads)


def efficientnet_round_filters(config: Any, num_channels: int) -> int:
    """Channels of an EfficientNet stage after the width coefficient: transformers' `round_filters`
    (`models/efficientnet/modeling_efficientnet.py`), mirrored so that no modeling module is imported."""
    divisor = config.depth_divisor
    num_channels *= config.width_coefficient
    new_dim = max(divisor, int(num_channels + divisor / 2) // divisor * divisor)
    # Make sure that round down does not go down by more than 10%.
    if new_dim < 0.9 * num_channels:
        new_dim += divisor
    return int(new_dim)


def efficientnet_round_repeats(config: Any, repeats: int) -> int:
    """Blocks of an EfficientNet stage after the depth coefficient (transformers' `round_repeats`)."""
    return int(math.ceil(config.depth_coefficient * repeats))


def _check_efficientnet(where: str, config: Any) -> None:
    stage_fields = ("in_channels", "out_channels", "strides", "kernel_sizes", "expand_ratios", "num_block_repeats")
    lengths = {name: len(getattr(config, name)) for name in stage_fields}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: {', '.join(stage_fields)} must have one length (one per stage), got {lengths}")
    blocks = sum(efficientnet_round_repeats(config, n) for n in config.num_block_repeats)
    if not 1 <= blocks <= MAX_EFFICIENTNET_BLOCKS:
        raise ValueError(
            f"{where}: num_block_repeats {list(config.num_block_repeats)} with depth_coefficient "
            f"{config.depth_coefficient} give {blocks} blocks: expected 1 to {MAX_EFFICIENTNET_BLOCKS}"
        )
    padded = [index for index in config.depthwise_padding if index >= blocks]
    if padded:
        raise ValueError(
            f"{where}.depthwise_padding = {_show(list(config.depthwise_padding))}: block indices must be below the "
            f"number of blocks ({blocks}), got {padded}"
        )
    top = efficientnet_round_filters(config, 1280)
    if config.hidden_dim != top:
        # EfficientNetModel's top convolution has round_filters(1280) channels and its BatchNorm hidden_dim ones
        raise ValueError(
            f"{where}.hidden_dim = {config.hidden_dim}: the top convolution of this EfficientNet has {top} channels "
            f"(round_filters(1280) with width_coefficient={config.width_coefficient}); set hidden_dim={top}"
        )


# -- parameter counts ---------------------------------------------------------------------------------------------


def linear_parameters(in_features: int, out_features: int, bias: bool = True) -> int:
    """Parameters of `nn.Linear(in_features, out_features, bias)`."""
    return in_features * out_features + (out_features if bias else 0)


def transformer_layer_parameters(hidden: int, feed_forward: int) -> int:
    """A post- or pre-LN Transformer encoder layer with biases: q, k, v, out projections, two LayerNorms and a
    two-layer feed-forward (wav2vec2, BERT and co-attention layers alike)."""
    attention = 4 * linear_parameters(hidden, hidden)
    return attention + 4 * hidden + linear_parameters(hidden, feed_forward) + linear_parameters(feed_forward, hidden)


def wav2vec2_style_parameters(config: Any) -> int:
    """Parameters of the base model (`AutoModel.from_config`) of a wav2vec2-style speech encoder: the CNN feature
    encoder, the feature projection, the positional convolution, the Transformer layers and, where configured, the
    masking vector and adapters. Exact for wav2vec2, HuBERT, WavLM and data2vec-audio (their variants are told apart
    by the fields they have); an estimate for other members of the family."""
    hidden, pos_kernel = config.hidden_size, field_value(config, "conv_pos_kernel_size", None)
    # data2vec-audio (the one with conv_pos_kernel_size) has a LayerNorm in every CNN layer, whatever the config says
    norm = "layer" if pos_kernel is not None else field_value(config, "feat_extract_norm", "layer")
    total, in_dim, bias = 0, 1, field_value(config, "conv_bias", False)
    for index, (out_dim, kernel) in enumerate(zip(config.conv_dim, config.conv_kernel)):
        normed = norm == "layer" or index == 0  # "group": a GroupNorm on the first layer only
        total += in_dim * out_dim * kernel + (out_dim if bias else 0) + (2 * out_dim if normed else 0)
        in_dim = out_dim
    projection_norm = field_value(config, "feat_proj_layer_norm", True)
    total += (2 * in_dim if projection_norm else 0) + linear_parameters(in_dim, hidden)
    if field_value(config, "mask_time_prob", 0) > 0 or field_value(config, "mask_feature_prob", 0) > 0:
        total += hidden  # masked_spec_embed
    groups = config.num_conv_pos_embedding_groups
    if pos_kernel is not None:  # data2vec-audio: num_conv_pos_embeddings plain convolutions
        total += config.num_conv_pos_embeddings * (hidden * (hidden // groups) * pos_kernel + hidden)
    else:  # one weight-normed convolution (weight_g: one value per tap), or with a BatchNorm instead
        kernel = config.num_conv_pos_embeddings
        extra = 2 * hidden if field_value(config, "conv_pos_batch_norm", False) else kernel
        total += hidden * (hidden // groups) * kernel + hidden + extra
    total += 2 * hidden + config.num_hidden_layers * transformer_layer_parameters(hidden, config.intermediate_size)
    heads = config.num_attention_heads
    if field_value(config, "num_buckets", None) is not None:  # WavLM: gated relative position bias
        total += config.num_hidden_layers * (heads + linear_parameters(hidden // heads, 8))
        total += config.num_buckets * heads  # the first layer's bucket embedding
    adapter = field_value(config, "adapter_attn_dim", None)
    if adapter and field_value(config, "do_stable_layer_norm", False):
        total += config.num_hidden_layers * (
            2 * hidden + linear_parameters(hidden, adapter) + adapter * hidden + hidden
        )
    return total + _wav2vec2_adapter_parameters(config)


def _wav2vec2_adapter_parameters(config: Any) -> int:
    if not field_value(config, "add_adapter", False):
        return 0
    hidden = config.hidden_size
    out = field_value(config, "output_hidden_size", None) or hidden
    total = 0 if out == hidden else linear_parameters(hidden, out) + 2 * out
    return total + config.num_adapter_layers * (out * 2 * out * config.adapter_kernel_size + 2 * out)


def _feed_forward_size(config: Any) -> int:
    for name in ("intermediate_size", "hidden_dim", "n_inner"):
        value = field_value(config, name, None)
        if is_whole(value):
            return value
    return 4 * config.hidden_size


def bert_style_parameters(config: Any, pooler: bool = False) -> int:
    """Parameters of a BERT-style text encoder (`AutoModel.from_config`, with its pooler only when `pooler`): word,
    position and token-type embeddings with their LayerNorm (and a projection where `embedding_size` differs from
    `hidden_size`), then the Transformer layers. Exact for BERT, RoBERTa and DistilBERT; an estimate (an upper
    bound for ALBERT's shared layers) for other encoders."""
    hidden = config.hidden_size
    embedding = field_value(config, "embedding_size", None) or hidden
    rows = sum(
        field_value(config, name, None) or 0 for name in ("vocab_size", "max_position_embeddings", "type_vocab_size")
    )
    total = rows * embedding + 2 * embedding + (linear_parameters(embedding, hidden) if embedding != hidden else 0)
    total += config.num_hidden_layers * transformer_layer_parameters(hidden, _feed_forward_size(config))
    return total + (linear_parameters(hidden, hidden) if pooler else 0)


def efficientnet_parameters(config: Any) -> int:
    """Parameters of transformers' `EfficientNetModel`: the stem, every MBConv block (expansion, depthwise
    convolution, squeeze-excitation, projection, with their BatchNorms) after the width and depth coefficients, and
    the top convolution. Exact (it follows `EfficientNetEncoder.__init__`)."""
    stem = efficientnet_round_filters(config, 32)
    total = field_value(config, "num_channels", 3) * stem * 9 + 2 * stem
    out_dim = stem
    for index, repeats in enumerate(config.num_block_repeats):
        in_dim = efficientnet_round_filters(config, config.in_channels[index])
        out_dim = efficientnet_round_filters(config, config.out_channels[index])
        ratio, kernel = config.expand_ratios[index], config.kernel_sizes[index]
        for block in range(efficientnet_round_repeats(config, repeats)):
            block_in = in_dim if block == 0 else out_dim
            dim = block_in * ratio
            total += (block_in * dim + 2 * dim) if ratio != 1 else 0  # expansion
            total += dim * kernel * kernel + 2 * dim  # depthwise convolution
            squeezed = max(1, int(block_in * config.squeeze_expansion_ratio))
            total += linear_parameters(dim, squeezed) + linear_parameters(squeezed, dim)
            total += dim * out_dim + 2 * out_dim  # projection
    return total + out_dim * efficientnet_round_filters(config, 1280) + 2 * config.hidden_dim


_PARAMETER_COUNTS: dict[str, Callable[..., int]] = {
    "wav2vec2": wav2vec2_style_parameters,
    "bert": bert_style_parameters,
    "efficientnet": efficientnet_parameters,
}


def backbone_parameters(config: Any, architecture: str, **options: Any) -> int:
    """Parameters of a backbone sub-config (already checked with `check_backbone`) of `architecture`; 0 for None.
    `options`: e.g. `pooler=True` for a BERT-style encoder."""
    return 0 if config is None else _PARAMETER_COUNTS[architecture](config, **options)


def check_label_ids(where: str, id2label: Mapping | None) -> None:
    """The keys of `id2label` (JSON makes them strings) are the class indices 0 .. n-1, each once."""
    if id2label is None:
        return
    indices = []
    for key in id2label:
        text = key if isinstance(key, str) else None
        if is_whole(key):
            indices.append(int(key))
        elif text is not None and text.isascii() and text.isdigit() and len(text) <= 6:
            indices.append(int(text))
        else:
            raise ValueError(f"{where}: key {_show(key)} is not a class index (expected 0 to {len(id2label) - 1})")
    if sorted(indices) != list(range(len(id2label))):
        shown = _show(sorted(indices))
        raise ValueError(f"{where}: the keys {shown} must be the class indices 0 to {len(id2label) - 1}, each once")


def check_max_parameters(where: str, value: Any) -> float:
    """The bound given as `max_parameters=`: a positive number (`math.inf` removes the bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value <= 0:
        raise ValueError(f"{where} = {_show(value)}: expected a positive number of parameters{_got(value)}")
    return float(value)


def check_parameter_budget(where: str, parts: Mapping[str, int], max_parameters: float) -> int:
    """The total of `parts` (part name -> parameters); a `ValueError` naming the largest parts when it is above
    `max_parameters`."""
    total = sum(parts.values())
    if total > max_parameters:
        largest = sorted(parts.items(), key=lambda item: -item[1])[:4]
        detail = ", ".join(f"{name} {count:.3g}" for name, count in largest if count)
        raise ValueError(
            f"{where}: the model would have about {total:.3g} parameters ({detail}), more than max_parameters="
            f"{max_parameters:.3g}; check the sizes in the config, or pass max_parameters=N explicitly (to the config "
            "or to from_pretrained) to allow a larger model"
        )
    return total


# -- the mixin ----------------------------------------------------------------------------------------------------


class ConfigLimitsMixin:
    """Bounds for a `PreTrainedConfig` subclass (put the mixin first among its bases).

    The config declares `limit_fields()` (own field -> check), `limit_backbones()` (sub-config field ->
    architecture) and `estimated_parameters()` (part -> parameters), and calls `check_field_limits()` at the start of
    its `validate_architecture()` and `check_model_size()` later in it (before anything reads sizes from the backbone
    configs). The mixin:

    - checks the fields and the backbone dicts in `__post_init__`, before transformers builds the sub-configs and
      before the config's own `__post_init__` converts them (a `num_labels` argument is checked before the label map
      is built from it);
    - takes `max_parameters` (default `DEFAULT_MAX_PARAMETERS`) only from an explicit argument: `Config(...,
      max_parameters=N)`, `Config.from_pretrained(dir, max_parameters=N)`, `AutoConfig`/`AutoModel...from_pretrained
      (dir, max_parameters=N)`; a config file that sets it is refused, and `to_dict` (so `save_pretrained`) never
      writes it;
    - turns the type errors that transformers' strict dataclasses raise for bad sub-config values into `ValueError`s
      naming the config.
    """

    def __post_init__(self, **kwargs: Any) -> None:
        owner = type(self).__name__
        bound = kwargs.pop("max_parameters", None)
        if bound is not None:
            bound = check_max_parameters(f"{owner}.max_parameters", bound)
        self._max_parameters = DEFAULT_MAX_PARAMETERS if bound is None else bound
        self.check_field_limits(kwargs)
        self._build_backbone_configs()
        try:
            super().__post_init__(**kwargs)
        except _strict_errors() as error:
            raise ValueError(f"{owner}: {error}") from error

    def _build_backbone_configs(self) -> None:
        """Build the backbone sub-configs given as dicts (checked above) as transformers would, so that an error names
        the sub-config it comes from (e.g. a value of the wrong type for a field that no bound here covers)."""
        owner, specs = type(self).__name__, getattr(self, "sub_configs_defaults", None) or {}
        for field in self.limit_backbones():
            value, spec = self.__dict__.get(field), specs.get(field)
            if not isinstance(value, Mapping) or spec is None:
                continue
            try:
                built, _ = spec.create_subconfig(field, dict(value))
            except (ValueError, TypeError, *_strict_errors()) as error:
                message = " ".join(str(error).split())  # one line, cut: transformers may list every model type
                raise ValueError(
                    f"{owner}.{field}: {message if len(message) <= 300 else message[:297] + '...'}"
                ) from error
            setattr(self, field, built)

    @property
    def max_parameters(self) -> float:
        """The parameter bound this config was built with (never serialised)."""
        return self.__dict__.get("_max_parameters", DEFAULT_MAX_PARAMETERS)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """`PreTrainedConfig.from_dict` with `max_parameters` taken from `kwargs` only (a file's is refused), and the
        fields that `kwargs` override checked again once they are set."""
        if "max_parameters" in config_dict:
            raise ValueError(
                f"{cls.__name__}: the config file sets max_parameters; the parameter bound is never read from a file "
                "(pass max_parameters=N to from_pretrained to allow a larger model)"
            )
        config_dict = dict(config_dict)
        if kwargs.get("max_parameters") is not None:
            config_dict["max_parameters"] = kwargs.pop("max_parameters")
        kwargs.pop("max_parameters", None)
        try:
            result = super().from_dict(config_dict, **kwargs)
        except _strict_errors() as error:
            raise ValueError(f"{cls.__name__}: {error}") from error
        config = result[0] if isinstance(result, tuple) else result
        config.validate_architecture()  # from_dict sets the kwargs after building the config: check them too
        return result

    @classmethod
    def from_json_file(cls, json_file: Any) -> Any:
        """`from_dict` of the file's contents (transformers builds `cls(**file)`, which would read a `max_parameters`
        from the file)."""
        return cls.from_dict(cls._dict_from_json_file(json_file))

    def to_dict(self) -> dict[str, Any]:
        """`PreTrainedConfig.to_dict` without the parameter bound (a file never carries it)."""
        output = super().to_dict()
        output.pop("_max_parameters", None)
        return output

    def limit_fields(self) -> dict[str, Check]:
        """Own field -> check (`whole(1, 256)`, `probability()`, ...)."""
        return {}

    def limit_backbones(self) -> dict[str, str]:
        """Sub-config field -> architecture (a key of `BACKBONE_LIMITS`)."""
        return {}

    def estimated_parameters(self) -> dict[str, int]:
        """Part name -> parameters of the model the config describes (no module built)."""
        return {}

    def check_field_limits(self, kwargs: Mapping[str, Any] | None = None) -> None:
        """Check the own fields, the label count (`kwargs["num_labels"]` while the config is built) and the backbone
        sub-configs that are still dicts. Cheap: run it before anything reads the fields."""
        owner = type(self).__name__
        if kwargs and kwargs.get("num_labels") is not None:
            whole(1, MAX_LABELS)(f"{owner}.num_labels", kwargs["num_labels"])
        for name in ("id2label", "label2id"):
            labels = self.__dict__.get(name)
            if labels is not None and not isinstance(labels, Mapping):
                raise ValueError(f"{owner}.{name} = {_show(labels)}: expected a mapping, got {_a(labels)}")
            if labels is not None and not 1 <= len(labels) <= MAX_LABELS:
                raise ValueError(f"{owner}.{name} has {len(labels)} labels: expected 1 to {MAX_LABELS}")
        check_label_ids(f"{owner}.id2label", self.__dict__.get("id2label"))
        check_fields(owner, self, self.limit_fields())
        for field, architecture in self.limit_backbones().items():
            value = self.__dict__.get(field)
            if not hasattr(value, "to_dict"):  # a dict (a file's) or something else; objects: `check_model_size`
                check_backbone(f"{owner}.{field}", value, architecture)

    def check_model_size(self) -> int:
        """Check the backbone sub-configs, then the estimated parameter count against `max_parameters`; returns the
        estimate."""
        owner = type(self).__name__
        for field, architecture in self.limit_backbones().items():
            check_backbone(f"{owner}.{field}", getattr(self, field), architecture)
        return check_parameter_budget(owner, self.estimated_parameters(), self.max_parameters)


def _strict_errors() -> tuple[type[Exception], ...]:
    """huggingface_hub's strict-dataclass errors (raised for values of the wrong type in transformers' configs)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: nothing to translate
        return ()
    return (StrictDataclassError,)


__all__ = [
    "BACKBONE_LIMITS",
    "DEFAULT_MAX_PARAMETERS",
    "MAX_CONV_CHANNELS",
    "MAX_CONV_LAYERS",
    "MAX_FEATURE_DIM",
    "MAX_FEED_FORWARD",
    "MAX_HEADS",
    "MAX_KERNEL",
    "MAX_LABELS",
    "MAX_LAYERS",
    "MAX_POSITIONS",
    "MAX_VOCAB",
    "MAX_WIDTH",
    "ConfigLimitsMixin",
    "backbone_parameters",
    "bert_style_parameters",
    "check_backbone",
    "check_divisible",
    "check_fields",
    "check_label_ids",
    "check_max_parameters",
    "check_parameter_budget",
    "choice",
    "efficientnet_parameters",
    "efficientnet_round_filters",
    "efficientnet_round_repeats",
    "field_value",
    "flag",
    "activation",
    "is_real",
    "is_whole",
    "linear_parameters",
    "number",
    "number_dict",
    "number_list",
    "optional",
    "probability",
    "string_list",
    "transformer_layer_parameters",
    "wav2vec2_style_parameters",
    "whole",
    "whole_list",
    "whole_or_pair",
]
