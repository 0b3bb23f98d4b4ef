"""Convert an HSEmotion / EmotiEffLib face-emotion checkpoint (a whole pickled timm EfficientNet) into transformers.

HSEmotion publishes its AffectNet models (`enet_b2_8.pt`, `enet_b2_8_best.pt`, `enet_b2_7.pt`, ...) as
`torch.save(model)` of a timm `EfficientNet`. This module writes a transformers `EfficientNetModel` directory
(safetensors, `config.json`, and an `EfficientNetImageProcessor` config: resize to `image_size` square, rescale to
[0, 1], ImageNet mean/std, no centre crop) whose `pooler_output` equals the timm model's pre-logits features
(what HSEmotion's `extract_features` returns, and VAVL's 1408-d visual features for B2). With `with_classifier`, it
writes `EfficientNetForImageClassification` with the AffectNet classifier and HSEmotion's label order instead.

The file is read by `timm_pickle.load_pickled_module` (no timm import, no class from the file constructed, any timm
release's module paths). The architecture is inferred from the tensors and the pickled module attributes, never
from a list of known variants:

- widths from the weight shapes; the width coefficient and divisor from the stem (`round(32 w)`) and head
  (`round(1280 w)`) widths; each stage's base widths so that transformers' rounding gives the file's widths;
- depth: timm's blocks flattened in order and regrouped into transformers stages (a stage starts at each block
  without a residual connection: transformers gives every stage's first block none and every other block one);
- kernel sizes and expansion ratios from the weights, strides and padding from the pickled convolutions
  (`Conv2dSame` = TensorFlow "same" padding, which transformers reproduces at even feature-map sizes with
  `adjust_padding`; `depthwise_padding` is computed for `image_size`: at 224 px it is `[]`), BatchNorm eps and the
  activation from the pickled norm/activation modules, the SE width ratio from the SE weights.

Anything transformers' EfficientNet cannot express (another block type, PyTorch-style symmetric stem padding, an
activation or gate it does not have, a tensor without a place) is a `ValueError` naming the file and the part.

Usage:
    avemotion convert-hsemotion --checkpoint enet_b2_8_best.pt --output_dir enet_b2_8_best-hf [--image_size 224]
    python -m avemotion.models.hsemotion.convert_hsemotion_checkpoint --checkpoint FILE --output_dir DIR \
        --with_classifier
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    EfficientNetConfig,
    EfficientNetForImageClassification,
    EfficientNetImageProcessorPil,
    EfficientNetModel,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .timm_pickle import ModuleRecord, load_pickled_module, pickled_name

logger = logging.getLogger(__name__)

__all__ = [
    "AFFECTNET_7_LABELS",
    "AFFECTNET_8_LABELS",
    "add_arguments",
    "build_efficientnet_config",
    "convert_hsemotion_checkpoint",
    "image_processor_for",
    "run",
]

# HSEmotion's class orders (hsemotion/facial_emotions.py, `idx_to_class`): 8 classes, and 7 for the `_7` models.
AFFECTNET_8_LABELS = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
AFFECTNET_7_LABELS = ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
_LABELS_BY_COUNT = {8: AFFECTNET_8_LABELS, 7: AFFECTNET_7_LABELS}

# activation classes (any timm release's, by name) -> transformers' `hidden_act`; None = no activation
_ACTIVATIONS: dict[str, str | None] = {
    "SiLU": "swish",
    "Swish": "swish",
    "SwishMe": "swish",
    "SwishAuto": "swish",
    "ReLU": "relu",
    "ReLU6": "relu6",
    "GELU": "gelu",
    "Identity": None,
}
_CONV_CLASSES = ("Conv2d", "Conv2dSame", "Conv2dSameExport")
_NORM_CLASSES = ("BatchNorm2d", "BatchNormAct2d")
_POOLING = {"avg": "mean", "max": "max", "AdaptiveAvgPool2d": "mean", "AdaptiveMaxPool2d": "max"}
# transformers builds the stem and head widths from these base widths (EfficientNet-B0's)
_STEM_BASE, _HEAD_BASE = 32, 1280
_B0_IN_CHANNELS = (32, 16, 24, 40, 80, 112, 192)
_B0_OUT_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
_B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# EfficientNet-B0 ... B7: width coefficient -> depth coefficient (B0 and B1 share width 1.0)
_DEPTH_BY_WIDTH = {1.0: 1.0, 1.1: 1.2, 1.2: 1.4, 1.4: 1.8, 1.6: 2.2, 1.8: 2.6, 2.0: 3.1}
_DEPTH_COEFFICIENTS = (1.0, 1.1, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1)


class _Checkpoint:
    """The file being converted: every error names it."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def child(self, module: ModuleRecord, name: str, where: str) -> ModuleRecord:
        child = module.children.get(name)
        if child is None:
            raise self.error(f"{where} has no sub-module {name!r} (found {sorted(module.children)})")
        return child


@dataclass
class _Conv:
    key: str  # timm prefix, e.g. "blocks.1.0.conv_dw"
    weight: torch.Tensor
    stride: int
    padding: str  # "same" (TF, dynamic), "symmetric" (k // 2 on every side) or "none" (1x1)
    has_bias: bool

    @property
    def kernel(self) -> int:
        return self.weight.shape[-1]


@dataclass
class _Block:
    key: str
    kind: str  # "ds" (DepthwiseSeparableConv) or "ir" (InvertedResidual)
    in_dim: int
    mid_dim: int
    out_dim: int
    kernel: int
    stride: int
    padding: str
    se_dim: int
    has_skip: bool
    names: dict[str, str] = field(default_factory=dict)  # transformers suffix -> timm prefix


def _as_int_pair(value: Any, what: str, check: _Checkpoint, where: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise check.error(f"{where}: {what} {value!r} is not an int pair")


def _read_conv(check: _Checkpoint, module: ModuleRecord, key: str, depthwise: bool = False) -> _Conv:
    if module.class_name not in _CONV_CLASSES:
        raise check.error(f"{key} is a {module.qualified_name}, expected a Conv2d")
    weight = module.parameters.get("weight")
    if weight is None or weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise check.error(f"{key} has no square 4-d convolution weight")
    attributes = module.attributes
    stride = _as_int_pair(attributes.get("stride", 1), "stride", check, key)
    dilation = _as_int_pair(attributes.get("dilation", 1), "dilation", check, key)
    if stride[0] != stride[1] or dilation != (1, 1) or attributes.get("padding_mode", "zeros") != "zeros":
        raise check.error(f"{key}: stride {stride}, dilation {dilation}: not expressible in transformers")
    groups = attributes.get("groups", 1)
    kernel = weight.shape[-1]
    if depthwise:
        if weight.shape[1] != 1 or groups != weight.shape[0]:
            raise check.error(f"{key} is not a depthwise convolution (weight {tuple(weight.shape)}, groups {groups})")
        if kernel % 2 != 1:
            raise check.error(f"{key}: even kernel size {kernel} is not expressible in transformers")
    elif groups != 1:
        raise check.error(f"{key}: grouped convolution (groups={groups}) is not expressible in transformers")
    if kernel == 1:
        if stride[0] != 1 or module.class_name == "Conv2d" and attributes.get("padding") not in (0, (0, 0), "valid"):
            raise check.error(f"{key}: a strided or padded 1x1 convolution is not expressible")
        padding = "none"
    elif module.class_name != "Conv2d":  # timm's Conv2dSame: pads for TF "same" in forward, then convolves unpadded
        if attributes.get("padding", 0) not in (0, (0, 0)):
            raise check.error(f"{key}: a {module.class_name} with extra padding {attributes['padding']!r}")
        padding = "same"
    else:
        pad = attributes.get("padding")
        if pad == "same" and stride[0] == 1:
            padding = "same"
        elif _as_int_pair(pad, "padding", check, key) == (kernel // 2, kernel // 2):
            padding = "symmetric"
        else:
            raise check.error(f"{key}: padding {pad!r} for a {kernel}x{kernel} kernel is not expressible")
    return _Conv(key, weight, stride[0], padding, "bias" in module.parameters)


def _activation(check: _Checkpoint, module: ModuleRecord | None, where: str) -> str | None:
    if module is None:
        return None
    if module.class_name not in _ACTIVATIONS:
        raise check.error(f"{where}: activation {module.qualified_name} is not expressible in transformers")
    return _ACTIVATIONS[module.class_name]


def _read_norm(
    check: _Checkpoint, parent: ModuleRecord, norm_name: str, act_name: str | None, prefix: str
) -> tuple[float, str | None]:
    """(eps, activation after it): timm >= 0.9 fuses the activation into BatchNormAct2d (`act`), older releases keep
    a separate module (`act1`, `act2`) next to a plain BatchNorm2d."""
    where = f"{prefix}{norm_name}"
    norm = check.child(parent, norm_name, prefix.rstrip(".") or "the model")
    if norm.class_name not in _NORM_CLASSES:
        raise check.error(f"{where} is a {norm.qualified_name}, expected a BatchNorm2d")
    if not {"weight", "bias"} <= set(norm.parameters) or not {"running_mean", "running_var"} <= set(norm.buffers):
        raise check.error(f"{where}: a BatchNorm without affine weights or running statistics is not expressible")
    eps = norm.attributes.get("eps")
    if not isinstance(eps, float) or not eps > 0:
        raise check.error(f"{where}: BatchNorm eps {eps!r} is not a positive float")
    activation = _activation(check, norm.children.get("act"), f"{where}.act")
    separate = _activation(check, parent.children.get(act_name), f"{prefix}{act_name}") if act_name else None
    if activation is not None and separate is not None:
        raise check.error(f"{where} is followed by two activations")
    return eps, activation or separate


def _gate_name(se: ModuleRecord) -> str | None:
    gate = se.children.get("gate")
    if gate is not None:
        return gate.class_name
    for attribute in ("gate_fn", "gate"):  # timm < 0.4.9 stores the gate function itself
        name = pickled_name(se.attributes.get(attribute))
        if name is not None:
            return name
    return None


def _read_block(check: _Checkpoint, block: ModuleRecord, key: str, acts: set, eps: set) -> _Block:
    prefix = f"{key}."

    def norm(norm_name: str, act_name: str, activated: bool) -> None:
        norm_eps, activation = _read_norm(check, block, norm_name, act_name, prefix)
        eps.add(norm_eps)
        if activated:
            acts.add((activation, f"{prefix}{norm_name}"))
        elif activation is not None:
            raise check.error(f"{prefix}{norm_name} is followed by an activation transformers does not apply")

    if block.class_name == "DepthwiseSeparableConv":
        dw = _read_conv(check, check.child(block, "conv_dw", key), prefix + "conv_dw", depthwise=True)
        pw = _read_conv(check, check.child(block, "conv_pw", key), prefix + "conv_pw")
        norm("bn1", "act1", True)
        norm("bn2", "act2", False)
        in_dim = mid_dim = dw.weight.shape[0]
        names = {
            "depthwise_conv.depthwise_conv": "conv_dw",
            "depthwise_conv.depthwise_norm": "bn1",
            "projection.project_conv": "conv_pw",
            "projection.project_bn": "bn2",
        }
        kind = "ds"
    elif block.class_name == "InvertedResidual":
        exp = _read_conv(check, check.child(block, "conv_pw", key), prefix + "conv_pw")
        dw = _read_conv(check, check.child(block, "conv_dw", key), prefix + "conv_dw", depthwise=True)
        pw = _read_conv(check, check.child(block, "conv_pwl", key), prefix + "conv_pwl")
        norm("bn1", "act1", True)
        norm("bn2", "act2", True)
        norm("bn3", None, False)
        in_dim, mid_dim = exp.weight.shape[1], exp.weight.shape[0]
        if exp.kernel != 1 or dw.weight.shape[0] != mid_dim:
            raise check.error(f"{key}: expansion {tuple(exp.weight.shape)} does not feed the depthwise convolution")
        names = {
            "expansion.expand_conv": "conv_pw",
            "expansion.expand_bn": "bn1",
            "depthwise_conv.depthwise_conv": "conv_dw",
            "depthwise_conv.depthwise_norm": "bn2",
            "projection.project_conv": "conv_pwl",
            "projection.project_bn": "bn3",
        }
        kind = "ir"
    else:
        raise check.error(
            f"{key} is a {block.qualified_name}; transformers' EfficientNet has only depthwise-separable and "
            "inverted-residual blocks"
        )
    if pw.kernel != 1 or pw.weight.shape[1] != mid_dim:
        raise check.error(f"{key}: projection {tuple(pw.weight.shape)} does not follow the depthwise convolution")
    if dw.has_bias or pw.has_bias or (kind == "ir" and exp.has_bias):
        raise check.error(f"{key}: convolutions with a bias before a BatchNorm are not expressible")

    se = block.children.get("se")
    if se is None or se.class_name == "Identity":
        raise check.error(f"{key} has no squeeze-excitation; transformers' EfficientNet has one in every block")
    if se.class_name != "SqueezeExcite":
        raise check.error(f"{prefix}se is a {se.qualified_name}, expected timm's SqueezeExcite")
    reduce = _read_conv(check, check.child(se, "conv_reduce", prefix + "se"), prefix + "se.conv_reduce")
    expand = _read_conv(check, check.child(se, "conv_expand", prefix + "se"), prefix + "se.conv_expand")
    se_dim = reduce.weight.shape[0]
    if (
        reduce.weight.shape[1] != mid_dim
        or tuple(expand.weight.shape[:2]) != (mid_dim, se_dim)
        or not (reduce.has_bias and expand.has_bias)
    ):
        raise check.error(f"{prefix}se: reduce {tuple(reduce.weight.shape)} / expand {tuple(expand.weight.shape)}")
    acts.add((_activation(check, se.children.get("act1") or se.children.get("act"), f"{prefix}se.act1"), key))
    gate = _gate_name(se)
    if gate is None or gate.lower() != "sigmoid":
        raise check.error(f"{prefix}se: gate {gate!r} is not expressible (transformers uses a sigmoid)")
    names.update({"squeeze_excite.reduce": "se.conv_reduce", "squeeze_excite.expand": "se.conv_expand"})

    out_dim = pw.weight.shape[0]
    has_skip = block.attributes.get("has_skip", block.attributes.get("has_residual"))
    if not isinstance(has_skip, bool):  # neither attribute: timm's rule
        has_skip = in_dim == out_dim and dw.stride == 1 and not block.attributes.get("noskip", False)
    if has_skip and (in_dim != out_dim or dw.stride != 1):
        raise check.error(f"{key}: a residual connection around a block that changes shape")
    return _Block(key, kind, in_dim, mid_dim, out_dim, dw.kernel, dw.stride, dw.padding, se_dim, has_skip, names)


def _round_filters(channels: float, width: float, divisor: int) -> int:
    """transformers' `round_filters` (= timm's `round_channels`)."""
    channels *= width
    new_dim = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if new_dim < 0.9 * channels:
        new_dim += divisor
    return int(new_dim)


def _base_width(width_dim: int, width: float, divisor: int, preferred: int | None = None) -> int | None:
    """An integer base width that transformers rounds to `width_dim` (`preferred` first, then the nearest)."""
    guess = width_dim / width
    nearest = sorted(
        range(max(1, int(guess) - 2 * divisor), int(guess) + 2 * divisor + 2), key=lambda b: abs(b - guess)
    )
    for base in ([preferred] if preferred else []) + nearest:
        if _round_filters(base, width, divisor) == width_dim:
            return base
    return None


def _fit_widths(
    check: _Checkpoint, stem: int, head: int, stage_dims: list[tuple[int, int]]
) -> tuple[float, int, list[int], list[int]]:
    """(width_coefficient, depth_divisor, base in_channels, base out_channels) that reproduce the stem, head and
    stage widths through transformers' rounding; EfficientNet-B0's base widths where they fit (7 stages)."""
    guesses: list[float] = []
    for ratio in (head / _HEAD_BASE, stem / _STEM_BASE):
        for value in (round(ratio, 1), round(ratio, 2), round(ratio, 3), ratio):
            if value > 0 and value not in guesses:
                guesses.append(value)
    b0 = len(stage_dims) == len(_B0_OUT_CHANNELS)
    for divisor in (8, 4, 2, 1):
        for width in guesses:
            if (
                _round_filters(_STEM_BASE, width, divisor) != stem
                or _round_filters(_HEAD_BASE, width, divisor) != head
            ):
                continue
            ins = [
                _base_width(d, width, divisor, _B0_IN_CHANNELS[i] if b0 else None)
                for i, (d, _) in enumerate(stage_dims)
            ]
            outs = [
                _base_width(d, width, divisor, _B0_OUT_CHANNELS[i] if b0 else None)
                for i, (_, d) in enumerate(stage_dims)
            ]
            if None not in ins and None not in outs:
                return width, divisor, ins, outs  # type: ignore[return-value]
    raise check.error(
        f"no width coefficient reproduces its widths (stem {stem}, head {head}, stages {stage_dims}) with "
        "transformers' channel rounding; not expressible as an EfficientNetConfig"
    )


def _fit_depth(repeats: list[int], width: float) -> tuple[float, list[int]]:
    """(depth_coefficient, base repeats): EfficientNet-B0's repeats scaled by a B0-B7 coefficient (the one paired
    with `width` first) where one gives exactly these counts, else the counts themselves with coefficient 1."""
    if len(repeats) == len(_B0_REPEATS):
        paired = _DEPTH_BY_WIDTH.get(round(width, 3))
        for coefficient in ([paired] if paired else []) + list(_DEPTH_COEFFICIENTS):
            if [int(math.ceil(coefficient * n)) for n in _B0_REPEATS] == repeats:
                return coefficient, list(_B0_REPEATS)
    return 1.0, list(repeats)


def _se_ratio(check: _Checkpoint, blocks: list[_Block]) -> float:
    first = blocks[0]
    for ratio in (0.25, first.se_dim / first.in_dim, (first.se_dim + 0.5) / first.in_dim):
        if all(max(1, int(block.in_dim * ratio)) == block.se_dim for block in blocks):
            return ratio
    raise check.error(
        "its squeeze-excitation widths are not one fixed fraction of each block's input width "
        f"({[(b.in_dim, b.se_dim) for b in blocks]}); not expressible in transformers"
    )


def _read_classifier(check: _Checkpoint, model: ModuleRecord, hidden_dim: int) -> tuple[str, int]:
    """(timm prefix of the Linear classifier, number of classes): `classifier` is a Linear, or a Sequential holding
    one Linear (and dropout), as HSEmotion's files have it."""
    classifier = model.children.get("classifier")
    if classifier is None or classifier.class_name == "Identity":
        raise check.error("has no classifier (it is Identity or missing); convert without with_classifier")
    candidates = [(name, module) for name, module in classifier.named_modules("classifier") if module.parameters]
    if (
        len(candidates) != 1
        or candidates[0][1].class_name != "Linear"
        or any(
            m.class_name not in ("Linear", "Sequential", "Dropout", "Identity") for _, m in classifier.named_modules()
        )
    ):
        found = [m.qualified_name for _, m in classifier.named_modules()]
        raise check.error(f"its classifier is not a single Linear layer ({found})")
    name, linear = candidates[0]
    weight = linear.parameters.get("weight")
    if weight is None or weight.dim() != 2 or weight.shape[1] != hidden_dim or "bias" not in linear.parameters:
        raise check.error(f"{name} is not a Linear({hidden_dim}, n) layer with a bias")
    return name, weight.shape[0]


def _find_efficientnet(check: _Checkpoint, root: ModuleRecord) -> ModuleRecord:
    required = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    if root.class_name != "EfficientNet" or not all(name in root.children for name in required):
        raise check.error(
            f"holds a {root.qualified_name}, not a timm EfficientNet (expected an HSEmotion checkpoint: the whole "
            "model saved with torch.save(model), with conv_stem, blocks and conv_head)"
        )
    return root


@dataclass
class _Parts:
    """What the timm model is made of, read and checked part by part."""

    stem: _Conv
    blocks: list[_Block]
    hidden_dim: int
    activation: str
    eps: float
    pooling: str


def _read_stem(check: _Checkpoint, model: ModuleRecord, image_size: int) -> _Conv:
    stem = _read_conv(check, model.children["conv_stem"], "conv_stem")
    if stem.kernel != 3 or stem.stride != 2:
        raise check.error(f"conv_stem is {stem.kernel}x{stem.kernel} stride {stem.stride}; transformers' is 3x3/2")
    if stem.padding != "same":
        raise check.error(
            "conv_stem pads symmetrically (PyTorch-style timm `efficientnet_*`); transformers' stem pads (0, 1, 0, 1) "
            "like TensorFlow 'same' (timm `tf_efficientnet_*`, Conv2dSame): not expressible"
        )
    if image_size % 2:
        raise check.error(
            f"image_size {image_size} is odd: transformers' stem matches TF 'same' padding at even sizes"
        )
    return stem


def _read_blocks(check: _Checkpoint, model: ModuleRecord, acts: set, eps: set) -> list[_Block]:
    """timm's blocks (`blocks.<stage>.<index>`), flattened in order."""
    blocks: list[_Block] = []
    stages = check.child(model, "blocks", "the model")
    for stage_name, stage in stages.children.items():
        if stage is None:
            continue
        for block_name, block in stage.children.items() if stage.class_name == "Sequential" else [("", stage)]:
            if block is not None:
                key = f"blocks.{stage_name}.{block_name}" if block_name else f"blocks.{stage_name}"
                blocks.append(_read_block(check, block, key, acts, eps))
    if not blocks:
        raise check.error("has no blocks")
    return blocks


def _read_pooling(check: _Checkpoint, model: ModuleRecord) -> str:
    pool = model.children.get("global_pool")
    pool_type = pool.attributes.get("pool_type") if pool is not None else None
    if pool_type is None and pool is not None and pool.children.get("pool") is not None:
        pool_type = pool.children["pool"].class_name
    if pool_type not in _POOLING:
        raise check.error(f"global pooling {pool_type!r} is not expressible (transformers: mean or max)")
    return _POOLING[pool_type]


def _read_parts(check: _Checkpoint, model: ModuleRecord, image_size: int) -> _Parts:
    acts: set[tuple[str | None, str]] = set()
    eps: set[float] = set()
    stem = _read_stem(check, model, image_size)
    for norm, act in (("bn1", "act1"), ("bn2", "act2")):  # after the stem, after the head
        norm_eps, activation = _read_norm(check, model, norm, act, "")
        eps.add(norm_eps)
        acts.add((activation, norm))
    blocks = _read_blocks(check, model, acts, eps)
    if blocks[0].in_dim != stem.weight.shape[0]:
        raise check.error(f"the first block takes {blocks[0].in_dim} channels, the stem gives {stem.weight.shape[0]}")
    head = _read_conv(check, model.children["conv_head"], "conv_head")
    if head.kernel != 1 or head.has_bias or head.weight.shape[1] != blocks[-1].out_dim:
        raise check.error(f"conv_head {tuple(head.weight.shape)} is not a 1x1 convolution of the last block")
    activations = {act for act, _ in acts}
    if len(activations) != 1 or None in activations:
        raise check.error(f"uses activations {sorted(map(str, activations))}; transformers needs one everywhere")
    if len(eps) != 1:
        raise check.error(f"uses BatchNorm eps {sorted(eps)}; transformers has one batch_norm_eps")
    return _Parts(stem, blocks, head.weight.shape[0], activations.pop(), eps.pop(), _read_pooling(check, model))


def _group_stages(check: _Checkpoint, blocks: list[_Block]) -> list[list[_Block]]:
    """Regroup the flattened blocks into transformers stages: a stage starts at each block without a residual
    connection (transformers gives a stage's first block none and every other block one, same kernel/expansion)."""
    stages: list[list[_Block]] = []
    for block in blocks:
        if not block.has_skip:
            stages.append([block])
            continue
        first = stages[-1][0] if stages else None
        if first is None or (block.kernel, block.mid_dim // block.in_dim, block.out_dim) != (
            first.kernel,
            first.mid_dim // first.in_dim,
            first.out_dim,
        ):
            raise check.error(f"{block.key} has a residual connection where transformers starts a new stage")
        stages[-1].append(block)
    for stage in stages:
        first = stage[0]
        if first.mid_dim % first.in_dim or (first.kind == "ir") != (first.mid_dim != first.in_dim):
            raise check.error(f"{first.key}: expansion {first.in_dim} -> {first.mid_dim} is not expressible")
        ratio = first.mid_dim // first.in_dim
        for block in stage:
            if block.mid_dim != block.in_dim * ratio or block.kind != first.kind:
                raise check.error(f"{block.key}: expansion differs from its stage's ({ratio})")
    return stages


def _depthwise_padding(check: _Checkpoint, blocks: list[_Block], image_size: int, hidden_dim: int) -> list[int]:
    """Blocks whose stride-2 depthwise convolution pads symmetrically in transformers (`depthwise_padding`).

    TF "same" at stride 2 pads (k - 2) // 2 before and the rest after on an even size (transformers' adjusted
    padding) and k // 2 on both sides on an odd size; PyTorch-style padding is k // 2 on both sides at any size.
    """
    size, padded = image_size // 2, []
    for index, block in enumerate(blocks):
        if block.stride == 2:
            if block.padding == "symmetric" or size % 2:
                padded.append(index)
            size = (size + 1) // 2
        elif block.stride != 1:
            raise check.error(f"{block.key}: stride {block.stride} is not expressible")
    if size > hidden_dim:
        raise check.error(f"image_size {image_size}: a {size}x{size} final map exceeds transformers' pooling window")
    return padded


def build_efficientnet_config(
    model: ModuleRecord, image_size: int = 224, path: str | Path = "<checkpoint>"
) -> tuple[EfficientNetConfig, dict[str, str]]:
    """Infer the `EfficientNetConfig` that reproduces a pickled timm EfficientNet at `image_size` (square) pixels.

    Returns (config, names): `names` maps each `EfficientNetModel` module prefix to the timm module prefix whose
    tensors it takes. Raises `ValueError` (naming `path`) for anything transformers' EfficientNet cannot express.
    """
    check = _Checkpoint(Path(path))
    model = _find_efficientnet(check, model)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 32:
        raise ValueError(f"image_size must be an int of at least 32 pixels, got {image_size!r}")
    parts = _read_parts(check, model, image_size)
    stages = _group_stages(check, parts.blocks)
    stage_dims = [(stage[0].in_dim, stage[0].out_dim) for stage in stages]
    width, divisor, in_channels, out_channels = _fit_widths(
        check, parts.stem.weight.shape[0], parts.hidden_dim, stage_dims
    )
    depth, repeats = _fit_depth([len(stage) for stage in stages], width)
    config = EfficientNetConfig(
        num_channels=parts.stem.weight.shape[1],
        image_size=image_size,
        width_coefficient=width,
        depth_coefficient=depth,
        depth_divisor=divisor,
        kernel_sizes=[stage[0].kernel for stage in stages],
        in_channels=in_channels,
        out_channels=out_channels,
        depthwise_padding=_depthwise_padding(check, parts.blocks, image_size, parts.hidden_dim),
        strides=[stage[0].stride for stage in stages],
        num_block_repeats=repeats,
        expand_ratios=[stage[0].mid_dim // stage[0].in_dim for stage in stages],
        squeeze_expansion_ratio=_se_ratio(check, parts.blocks),
        hidden_act=parts.activation,
        hidden_dim=parts.hidden_dim,
        pooling_type=parts.pooling,
        batch_norm_eps=parts.eps,
        dropout_rate=float(model.attributes.get("drop_rate", 0.0) or 0.0),
    )
    names = {"embeddings.convolution": "conv_stem", "embeddings.batchnorm": "bn1"}
    for index, block in enumerate(parts.blocks):
        for target, source in block.names.items():
            names[f"encoder.blocks.{index}.{target}"] = f"{block.key}.{source}"
    names.update({"encoder.top_conv": "conv_head", "encoder.top_bn": "bn2"})
    return config, names


def _map_state_dict(
    check: _Checkpoint, timm_state: dict[str, torch.Tensor], names: dict[str, str]
) -> dict[str, torch.Tensor]:
    """EfficientNetModel keys -> tensors; every timm tensor outside the classifier must find a place."""
    by_prefix = {source: target for target, source in names.items()}
    converted, unused = {}, []
    for key, tensor in timm_state.items():
        module, _, leaf = key.rpartition(".")
        if module in by_prefix:
            converted[f"{by_prefix[module]}.{leaf}"] = tensor
        elif not key.startswith("classifier."):
            unused.append(key)
    if unused:
        raise check.error(f"tensor {unused[0]!r} has no place in transformers' EfficientNet ({len(unused)} in all)")
    return converted


def _load_checked(check: _Checkpoint, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    for key, tensor in state.items():
        if key not in expected:
            raise check.error(f"converted key {key!r} has no place in the model")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise check.error(
                f"{key!r} has shape {tuple(tensor.shape)}, the inferred config gives {tuple(expected[key].shape)}: "
                "the architecture is not expressible"
            )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise check.error(f"no tensor for {missing[0]!r} ({len(missing)} missing in all)")
    model.load_state_dict({key: tensor.to(expected[key].dtype) for key, tensor in state.items()}, strict=True)


def image_processor_for(image_size: int) -> EfficientNetImageProcessorPil:
    """HSEmotion's test transform: resize to `image_size` square (bilinear), rescale to [0, 1], ImageNet mean/std."""
    return EfficientNetImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BILINEAR,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        rescale_offset=False,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        include_top=False,
    )


def convert_hsemotion_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    image_size: int = 224,
    with_classifier: bool = False,
    labels: list[str] | None = None,
) -> EfficientNetModel | EfficientNetForImageClassification:
    """Convert a pickled timm EfficientNet (HSEmotion's `enet_b2_8_best.pt` & co.) without running code from it.

    Args:
        checkpoint: the `torch.save(model)` file (zip format).
        output_dir: where to save the model and its image processor; nothing is written when None.
        image_size: the square input size the model will see (224 for VAVL's face crops; HSEmotion's own B2 demo
            uses 260). The padding of the stride-2 convolutions is set to reproduce timm's at this size.
        with_classifier: keep the AffectNet classifier (`EfficientNetForImageClassification`, HSEmotion's labels);
            otherwise the backbone alone (`EfficientNetModel`, `pooler_output` = the pre-logits features).
        labels: class names in output order (default: HSEmotion's order for 8 or 7 classes).

    Returns the converted model in eval mode. Raises `ValueError` naming the file when it cannot be read safely
    (`avemotion.utils.safe_pickle.UnsafePickleError` for a pickle that would run code: nothing it names ran), holds
    no EfficientNet, or uses something transformers' EfficientNet cannot express.
    """
    path = Path(checkpoint)
    check = _Checkpoint(path)
    root = load_pickled_module(path)
    config, names = build_efficientnet_config(root, image_size, path)
    timm_state = root.state_dict()
    converted = _map_state_dict(check, timm_state, names)

    if with_classifier:
        classifier, num_classes = _read_classifier(check, root, config.hidden_dim)
        labels = list(labels) if labels is not None else list(_LABELS_BY_COUNT.get(num_classes, ()))
        if len(labels) != num_classes:
            raise ValueError(
                f"{path}: the classifier has {num_classes} outputs; give that many labels (got {len(labels)})"
            )
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: index for index, label in enumerate(labels)}
        state = {f"efficientnet.{key}": tensor for key, tensor in converted.items()}
        state["classifier.weight"] = timm_state[f"{classifier}.weight"]
        state["classifier.bias"] = timm_state[f"{classifier}.bias"]
        model: EfficientNetModel | EfficientNetForImageClassification = EfficientNetForImageClassification(config)
    else:
        model = EfficientNetModel(config)
        state = converted
    _load_checked(check, model, state)
    model.eval()

    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        image_processor_for(image_size).save_pretrained(output_dir)
        logger.info("Converted %s -> %s (%s)", path, output_dir, type(model).__name__)
    return model


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="HSEmotion .pt file (a whole pickled timm EfficientNet)")
    parser.add_argument(
        "--output_dir", "--output-dir", dest="output_dir", required=True, help="where to write the transformers model"
    )
    parser.add_argument(
        "--image_size",
        "--image-size",
        dest="image_size",
        type=int,
        default=224,
        help="square input size in pixels (default 224, VAVL's face crops)",
    )
    parser.add_argument(
        "--with_classifier",
        "--with-classifier",
        dest="with_classifier",
        action="store_true",
        help="keep the AffectNet classifier (EfficientNetForImageClassification with HSEmotion's labels)",
    )
    parser.add_argument("--labels", help="comma-separated class names in output order (default: HSEmotion's)")
    return parser


def run(args: argparse.Namespace) -> None:
    labels = [label.strip() for label in args.labels.split(",")] if getattr(args, "labels", None) else None
    model = convert_hsemotion_checkpoint(
        args.checkpoint, args.output_dir, args.image_size, getattr(args, "with_classifier", False), labels
    )
    print(f"Converted {args.checkpoint} -> {args.output_dir} ({type(model).__name__}, {model.config.hidden_dim}-d)")


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
