"""Convert a checkpoint written by the original VAVL training code into a `VavlForEmotionRecognition` directory.

The original code (github.com/ilucasgoncalves/VAVL) saves one state dict per module:

    final_acoustic_head.pt  final_visual_head.pt  final_shared_head.pt
    MLP_a_head.pt  MLP_v_head.pt  MLP_av_head.pt (unused by the model)  final_weights_head.pt
    MLP_rec_a_head.pt  MLP_rec_v_head.pt
    final_wav2vec.pt        (optional: the 12-layer wav2vec2-large-robust front-end)
    train_norm_stat.pkl     (optional: (wav_mean, wav_std, vid_mean[1408], vid_std[1408]))

No code from the checkpoint runs: the `.pt` files are read with `torch.load(..., weights_only=True)` (torch's own
restricted unpickler: tensors and plain containers, globals looked up in an allow-list of objects, never by attribute
access), and `train_norm_stat.pkl` with `avemotion.utils.safe_pickle.restricted_load`, which resolves only an explicit
list of (module, name) pairs for numpy arrays, scalars and dtypes and refuses dotted names and persistent ids.

The converted model runs in the legacy layout (`legacy_batch_axis_attention=True`,
`position_encoding="legacy_shifted"`) and scores each clip as the original code scores it alone, whatever else is in
the batch. The original attends across the clips of a batch; `from_pretrained(OUT, legacy_batch_mixing=True)`
restores that mixing, which reproduces the original outputs for the same batches in the same order.

Usage:
    avemotion convert-vavl --checkpoint_dir DIR --output_dir OUT --preset crema-d
    python -m avemotion.models.vavl.convert_vavl_original_checkpoint --checkpoint_dir DIR --output_dir OUT \
        --task classification --labels angry,sad,disgust,fear,neutral,happy
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Wav2Vec2Config

from avemotion.processing.audio import AvEmotionFeatureExtractor
from avemotion.utils.json_files import read_json_object
from avemotion.utils.safe_pickle import NUMPY_GLOBALS, PickleReadError, restricted_load

from .configuration_vavl import VavlConfig, wav2vec2_large_robust_config
from .conformer import sinusoidal_embeddings
from .modeling_vavl import VavlForEmotionRecognition

logger = logging.getLogger(__name__)

# original file -> (prefix in the original state dict, prefix in VavlForEmotionRecognition)
CONFORMER_FILES = {
    "final_acoustic_head.pt": ("x_acoustic.encoder.", "vavl.audio_encoder.conformer."),
    "final_visual_head.pt": ("x_visual.encoder.", "vavl.visual_encoder.conformer."),
    "final_shared_head.pt": ("x_shared.encoder.", "vavl.shared_encoder.conformer."),
}
HEAD_FILES = {
    "MLP_a_head.pt": "audio_head.",
    "MLP_v_head.pt": "visual_head.",
    "final_weights_head.pt": "fusion_head.",
    "MLP_rec_a_head.pt": "audio_reconstruction_head.",
    "MLP_rec_v_head.pt": "visual_reconstruction_head.",
}
UNUSED_FILES = ("MLP_av_head.pt",)  # built and saved by the original code, never used in a forward pass
REQUIRED_FILES = (*CONFORMER_FILES, *HEAD_FILES)
WAV2VEC2_FILE = "final_wav2vec.pt"
NORM_STATS_FILE = "train_norm_stat.pkl"

# Module-level keys outside the Conformers.
MODULE_KEYS = {
    "final_acoustic_head.pt": {"conv_1d_a.weight": "vavl.audio_encoder.projection.weight"},
    "final_visual_head.pt": {"conv_1d_v.weight": "vavl.visual_encoder.projection.weight"},
    "final_shared_head.pt": {
        "layer_norm.weight": "vavl.shared_encoder.layer_norm.weight",
        "layer_norm.bias": "vavl.shared_encoder.layer_norm.bias",
    },
}
# Conformer block internals (sooftware/conformer's nn.Sequential indices) -> our names.
_FFN = {
    "sequential.0": "layer_norm",
    "sequential.1.linear": "intermediate_dense",
    "sequential.4.linear": "output_dense",
}
_ATTENTION = {
    "query_proj.linear": "linear_q",
    "key_proj.linear": "linear_k",
    "value_proj.linear": "linear_v",
    "pos_proj.linear": "linear_pos",
    "out_proj.linear": "linear_out",
}
_CONV = {
    "sequential.0": "layer_norm",
    "sequential.2.conv": "pointwise_conv1",
    "sequential.4.conv": "depthwise_conv",
    "sequential.5": "batch_norm",
    "sequential.7.conv": "pointwise_conv2",
}
_BLOCK_RULES: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^sequential\.0\.module\.(.+)\.(\w+)$"), lambda m: f"ffn1.{_FFN[m[1]]}.{m[2]}"),
    (re.compile(r"^sequential\.3\.module\.(.+)\.(\w+)$"), lambda m: f"ffn2.{_FFN[m[1]]}.{m[2]}"),
    (re.compile(r"^sequential\.1\.module\.layer_norm\.(\w+)$"), lambda m: f"self_attn_layer_norm.{m[1]}"),
    (re.compile(r"^sequential\.1\.module\.attention\.u_bias$"), lambda m: "self_attn.pos_bias_u"),
    (re.compile(r"^sequential\.1\.module\.attention\.v_bias$"), lambda m: "self_attn.pos_bias_v"),
    (
        re.compile(r"^sequential\.1\.module\.attention\.(\w+\.linear)\.(\w+)$"),
        lambda m: f"self_attn.{_ATTENTION[m[1]]}.{m[2]}",
    ),
    (re.compile(r"^sequential\.2\.module\.(.+)\.(\w+)$"), lambda m: f"conv_module.{_CONV[m[1]]}.{m[2]}"),
    (re.compile(r"^sequential\.4\.(\w+)$"), lambda m: f"final_layer_norm.{m[1]}"),
]
_HEAD_NAMES = {"projav1": "projections.0", "projav2": "projections.1", "out_layer": "out_proj"}


class ConversionError(ValueError):
    """A key or tensor of the original checkpoint does not fit the model."""


def _torch_load_reason(error: Exception) -> str:
    """The informative line of a `torch.load` error (torch wraps refusals in advice to retry unsafely)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return (useful or lines or [type(error).__name__])[0]


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only=True: torch's restricted unpickler (tensors and plain containers only)
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, or a pickle that needs arbitrary code (refused: nothing ran)
        raise ConversionError(
            f"{path}: cannot be read as a tensor state dict ({_torch_load_reason(error)})"
        ) from error
    if not isinstance(state_dict, dict):
        raise ConversionError(f"{path.name}: expected a state dict, found {type(state_dict).__name__}")
    return state_dict


def _check_positional_table(name: str, key: str, table: torch.Tensor) -> None:
    """The original stores its sinusoid table; ours is regenerated, so check that they are the same table."""
    if table.dim() != 3 or table.shape[0] != 1:
        raise ConversionError(f"{name}: {key} has shape {tuple(table.shape)}, expected (1, length, dim)")
    rows = min(table.shape[1], 64)
    expected = sinusoidal_embeddings(torch.arange(rows), table.shape[2])
    if not torch.allclose(table[0, :rows].float(), expected, atol=1e-4):
        raise ConversionError(f"{name}: {key} is not the standard sinusoidal table; it cannot be regenerated")


def _rename_conformer_key(name: str, key: str, source_prefix: str, target_prefix: str) -> str | None:
    """Map one key of a Conformer encoder; None for parameters the new model omits on purpose."""
    if not key.startswith(source_prefix):
        raise ConversionError(f"{name}: unexpected key {key!r}")
    rest = key[len(source_prefix) :]
    if rest.startswith("conv_subsample."):
        return None  # built by the original Conformer but never used in its forward pass
    match = re.fullmatch(r"input_projection\.0\.linear\.(weight|bias)", rest)
    if match:
        return f"{target_prefix}input_projection.{match[1]}"
    match = re.fullmatch(r"layers\.(\d+)\.(.+)", rest)
    if match:
        layer, inner = match[1], match[2]
        for pattern, rename in _BLOCK_RULES:
            found = pattern.fullmatch(inner)
            if found:
                try:
                    return f"{target_prefix}layers.{layer}.{rename(found)}"
                except KeyError:
                    break
    raise ConversionError(f"{name}: unexpected key {key!r}")


def _check_required_files(checkpoint_dir: Path) -> None:
    if not checkpoint_dir.is_dir():
        raise ConversionError(f"{checkpoint_dir} is not a directory")
    missing = [name for name in REQUIRED_FILES if not (checkpoint_dir / name).is_file()]
    if missing:
        raise ConversionError(f"{checkpoint_dir}: missing original checkpoint file(s): {', '.join(missing)}")


def convert_head_state_dicts(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Read the original head files and return a state dict in `VavlForEmotionRecognition` names.

    Raises `ConversionError` naming the file and key for missing files and unknown keys.
    """
    checkpoint_dir = Path(checkpoint_dir)
    _check_required_files(checkpoint_dir)
    converted: dict[str, torch.Tensor] = {}
    for name, (source_prefix, target_prefix) in CONFORMER_FILES.items():
        module_keys = MODULE_KEYS[name]
        for key, tensor in _load_state_dict(checkpoint_dir / name).items():
            if key in module_keys:
                target = module_keys[key]
                # Conv1d(k=1, bias=False) weight (out, in, 1) -> Linear weight (out, in)
                converted[target] = tensor.squeeze(-1) if key.startswith("conv_1d_") else tensor
                continue
            if key.endswith("positional_encoding.pe"):
                _check_positional_table(name, key, tensor)
                continue
            target = _rename_conformer_key(name, key, source_prefix, target_prefix)
            if target is not None:
                converted[target] = tensor
    for name, target_prefix in HEAD_FILES.items():
        for key, tensor in _load_state_dict(checkpoint_dir / name).items():
            layer, _, param = key.partition(".")
            if layer not in _HEAD_NAMES or param not in ("weight", "bias"):
                raise ConversionError(f"{name}: unexpected key {key!r}")
            converted[f"{target_prefix}{_HEAD_NAMES[layer]}.{param}"] = tensor
    return converted


def convert_wav2vec2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read `final_wav2vec.pt` (a `Wav2Vec2Model` state dict) into `vavl.audio_backbone.*` names, renaming the
    weight-norm parameters of old transformers/torch versions (`weight_g`/`weight_v`)."""
    path = Path(path)
    converted = {}
    for key, tensor in _load_state_dict(path).items():
        key = key.removeprefix("wav2vec2.")
        key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        converted[f"vavl.audio_backbone.{key}"] = tensor
    return converted


def load_normalization_stats(path: str | Path, visual_feature_dim: int = 1408) -> dict[str, Any]:
    """Read `train_norm_stat.pkl`: `(wav_mean, wav_std, vid_mean, vid_std)`, resolving only numpy's array, scalar and
    dtype constructors (`avemotion.utils.safe_pickle.NUMPY_GLOBALS`): a crafted file is refused before any of its code
    runs."""
    path = Path(path)
    try:
        stats = restricted_load(path, NUMPY_GLOBALS)
    except PickleReadError as error:  # its message names the file and, if refused, the global
        raise ConversionError(str(error)) from error
    if not isinstance(stats, (tuple, list)) or len(stats) != 4:
        raise ConversionError(f"{path.name}: expected a tuple (wav_mean, wav_std, vid_mean, vid_std)")

    def numeric(value: Any, what: str, expected: str) -> np.ndarray:
        # a list of strings, a dict, a ragged list: ConversionErrors naming the file and the expected content,
        # not the TypeError/ValueError of float() or np.asarray
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise ConversionError(
                f"{path.name}: {what} must be {expected}, got {type(value).__name__} ({error})"
            ) from error
        if array.dtype.kind not in "iuf" or (expected == "a number" and array.size != 1):
            raise ConversionError(
                f"{path.name}: {what} must be {expected}, got {type(value).__name__} of shape {array.shape} and "
                f"dtype {array.dtype}"
            )
        return array

    vector = f"{visual_feature_dim} numbers"
    wav_mean = float(numeric(stats[0], "wav_mean", "a number").reshape(()))
    wav_std = float(numeric(stats[1], "wav_std", "a number").reshape(()))
    vid_mean = numeric(stats[2], "vid_mean", vector).astype(np.float32).reshape(-1)
    vid_std = numeric(stats[3], "vid_std", vector).astype(np.float32).reshape(-1)
    if vid_mean.shape != (visual_feature_dim,) or vid_std.shape != (visual_feature_dim,):
        raise ConversionError(
            f"{path.name}: vid_mean/vid_std must have {visual_feature_dim} values, got {vid_mean.shape}, {vid_std.shape}"
        )
    return {"wav_mean": wav_mean, "wav_std": wav_std, "vid_mean": vid_mean, "vid_std": vid_std}


def _source_file(model_key: str) -> str:
    """The original file a model key comes from, for error messages."""
    if model_key.startswith("vavl.audio_backbone."):
        return WAV2VEC2_FILE
    for name, (_, target_prefix) in CONFORMER_FILES.items():
        if model_key.startswith(target_prefix) or model_key in MODULE_KEYS[name].values():
            return name
    for name, target_prefix in HEAD_FILES.items():
        if model_key.startswith(target_prefix):
            return name
    return "checkpoint"


def _infer_num_outputs(checkpoint_dir: Path) -> int:
    state_dict = _load_state_dict(checkpoint_dir / "MLP_a_head.pt")
    if "out_layer.weight" not in state_dict:
        raise ConversionError("MLP_a_head.pt: missing key 'out_layer.weight'")
    return int(state_dict["out_layer.weight"].shape[0])


def build_config(
    checkpoint_dir: Path,
    preset: str | None = None,
    task: str | None = None,
    labels: list[str] | None = None,
    has_wav2vec2: bool = False,
    has_norm_stats: bool = False,
    audio_backbone_config: Wav2Vec2Config | None = None,
) -> VavlConfig:
    """The config of a converted model: legacy layout, backbones only where their weights exist."""
    num_outputs = _infer_num_outputs(checkpoint_dir)
    if has_wav2vec2 and audio_backbone_config is None:
        audio_backbone_config = wav2vec2_large_robust_config()
    legacy = dict(
        legacy_batch_axis_attention=True,
        position_encoding="legacy_shifted",
        normalize_visual_features=has_norm_stats,
        audio_backbone_config=audio_backbone_config if has_wav2vec2 else None,
        audio_feature_dim=audio_backbone_config.hidden_size if has_wav2vec2 else 1024,
        visual_backbone_config=None,  # HSEmotion's EfficientNet is a pickled timm object: pass its features
    )
    if preset is not None:
        config = VavlConfig.from_preset(preset, **legacy)
    else:
        if task not in ("classification", "regression") or not labels:
            raise ConversionError("Without --preset, give --task {classification,regression} and --labels a,b,...")
        config = VavlConfig(
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type="single_label_classification" if task == "classification" else "regression",
            reconstruction_loss_weight=2.0 if task == "classification" else 1.0,
            **legacy,
        )
    if config.num_labels != num_outputs:
        raise ConversionError(
            f"MLP_a_head.pt: the checkpoint has {num_outputs} outputs but the chosen labels have {config.num_labels}"
        )
    return config


def convert_vavl_checkpoint(
    checkpoint_dir: str | Path,
    output_dir: str | Path | None = None,
    preset: str | None = None,
    task: str | None = None,
    labels: list[str] | None = None,
    audio_backbone_config: Wav2Vec2Config | None = None,
) -> VavlForEmotionRecognition:
    """Convert an original VAVL checkpoint directory; save it (model + feature extractor) when `output_dir` is set.

    Args:
        checkpoint_dir: the original files (see the module docstring).
        output_dir: where to save; nothing is written when None.
        preset: `"crema-d"` or `"msp-improv"`; otherwise give `task` and `labels`.
        task: `"classification"` or `"regression"`.
        labels: label names in the order of the original output layer.
        audio_backbone_config: the layout of `final_wav2vec.pt` when it is not the 12-layer wav2vec2-large-robust.

    Every key must be used and every model tensor filled, with matching shapes: anything else is a
    `ConversionError` naming the key and file.
    """
    checkpoint_dir = Path(checkpoint_dir)
    _check_required_files(checkpoint_dir)
    wav2vec2_path = checkpoint_dir / WAV2VEC2_FILE
    stats_path = checkpoint_dir / NORM_STATS_FILE
    has_wav2vec2, has_stats = wav2vec2_path.is_file(), stats_path.is_file()
    config = build_config(checkpoint_dir, preset, task, labels, has_wav2vec2, has_stats, audio_backbone_config)
    # the statistics first: a crafted or corrupt pickle is refused before the long conversion
    stats = load_normalization_stats(stats_path, config.visual_feature_dim) if has_stats else None

    converted = convert_head_state_dicts(checkpoint_dir)
    for name in UNUSED_FILES:
        if (checkpoint_dir / name).is_file():
            logger.info("%s: skipped (the original model never uses it)", name)
    if has_wav2vec2:
        converted.update(convert_wav2vec2_state_dict(wav2vec2_path))

    model = VavlForEmotionRecognition(config)
    expected = model.state_dict()
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        raise ConversionError(f"{_source_file(unexpected[0])}: key {unexpected[0]!r} has no place in the model")
    for key, tensor in converted.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{_source_file(key)}: {key!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    statistics_buffers = ("visual_features_mean", "visual_features_std")  # from train_norm_stat.pkl, or identity
    missing = sorted(k for k in set(expected) - set(converted) if not k.endswith(statistics_buffers))
    if missing:
        raise ConversionError(
            f"{_source_file(missing[0])}: no tensor for model key {missing[0]!r} ({len(missing)} missing in all)"
        )
    if stats is not None:
        converted["vavl.visual_features_mean"] = torch.from_numpy(stats["vid_mean"])
        converted["vavl.visual_features_std"] = torch.from_numpy(stats["vid_std"])
    model.load_state_dict(converted, strict=False)
    model.eval()

    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        feature_extractor = AvEmotionFeatureExtractor(
            sampling_rate=config.sampling_rate,
            normalization="global" if stats is not None else "none",
            global_mean=stats["wav_mean"] if stats is not None else 0.0,
            global_std=stats["wav_std"] if stats is not None else 1.0,
            max_duration_seconds=config.window_seconds,
        )
        feature_extractor.save_pretrained(output_dir)
        if stats is None and has_wav2vec2:
            logger.warning(
                "%s not found: the converted feature extractor does not apply VAVL's global waveform normalisation",
                NORM_STATS_FILE,
            )
    return model


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--checkpoint_dir", "--checkpoint-dir", required=True, help="directory with the original VAVL .pt files"
    )
    parser.add_argument(
        "--output_dir", "--output-dir", required=True, help="where to write the transformers checkpoint"
    )
    parser.add_argument(
        "--preset", choices=["crema-d", "msp-improv"], help="label set and loss of the paper's set-ups"
    )
    parser.add_argument("--task", choices=["classification", "regression"], help="without --preset")
    parser.add_argument("--labels", help="comma-separated label names in output order, without --preset")
    parser.add_argument(
        "--audio-backbone-config",
        help="config.json of the wav2vec2 layout in final_wav2vec.pt (default: 12-layer wav2vec2-large-robust)",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    if args.preset is None and (args.task is None or args.labels is None):
        raise ConversionError("give --preset, or both --task and --labels")
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    audio_config = None
    if args.audio_backbone_config:
        try:
            audio_config = Wav2Vec2Config(**read_json_object(args.audio_backbone_config))
        except TypeError as error:  # a field of the wrong type (transformers' strict config fields)
            raise ValueError(f"{args.audio_backbone_config}: not a wav2vec2 config ({error})") from error
    convert_vavl_checkpoint(args.checkpoint_dir, args.output_dir, args.preset, args.task, labels, audio_config)
    print(f"Converted {args.checkpoint_dir} -> {args.output_dir}")


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
