"""`export_onnx`: an avemotion model (directory or instance) -> a directory with ONNX graphs that ONNX Runtime runs.

The output directory is a model directory a user can ship: the graphs (`model_heads.onnx` and/or `model.onnx`),
`onnx_config.json` (which graph takes which inputs, how an absent input is filled), config.json (labels, scale;
without the `auto_map` that points at PyTorch code) and the processor files of the source directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import ONNX_CONFIG_NAME
from .graphs import FusionGraph, VavlGraph

logger = logging.getLogger(__name__)

PARTS = ("heads", "full")
EXPORTERS = ("torchscript", "dynamo")
# The TorchScript exporter is fast (seconds) and traces the masked graphs as they are; the dynamo exporter
# (torch.export + onnxscript) is the one torch develops further, slower to run.
DEFAULT_EXPORTER = "torchscript"
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
MIN_OPSET = {"torchscript": 14, "dynamo": 18}
GRAPH_FILES = {"heads": "model_heads.onnx", "full": "model.onnx"}
# weights and PyTorch code of the source directory are not copied
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx_data", ".py", ".lock")
_ABSENT_AUDIO_SAMPLES = 400  # one wav2vec2 frame, as the pipeline pads


def _spec(dtype: str, axes: list[str | int], absent: list[int]) -> dict[str, Any]:
    """An input: dtype, axes (names are dynamic, ints fixed; axis 0 is the batch) and the per-row shape of the
    zeros that stand for it when it is not given (with an all-zero mask, that is an absent modality)."""
    return {"dtype": dtype, "axes": axes, "absent_shape": absent}


def vavl_inputs(config, parts: str) -> dict[str, dict[str, Any]]:
    if parts == "heads":
        return {
            "audio_features": _spec("float32", ["batch", "audio_frames", config.audio_feature_dim],
                                    [1, config.audio_feature_dim]),
            "audio_features_mask": _spec("int64", ["batch", "audio_frames"], [1]),
            "visual_features": _spec("float32", ["batch", "video_frames", config.visual_feature_dim],
                                     [1, config.visual_feature_dim]),
            "visual_features_mask": _spec("int64", ["batch", "video_frames"], [1]),
        }  # fmt: skip
    return {
        "input_values": _spec("float32", ["batch", "samples"], [_ABSENT_AUDIO_SAMPLES]),
        "attention_mask": _spec("int64", ["batch", "samples"], [_ABSENT_AUDIO_SAMPLES]),
        "pixel_values_videos": _spec("float32", ["batch", "video_frames", 3, "height", "width"], [1, 3, 32, 32]),
        "visual_features_mask": _spec("int64", ["batch", "video_frames"], [1]),
    }


def fusion_inputs(config, parts: str) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    if config.uses_audio:
        if parts == "heads":
            width = config.audio_config.hidden_size
            if config.audio_layer == "weighted_sum":
                layers = config.audio_config.num_hidden_layers + 1
                specs["audio_features"] = _spec(
                    "float32", ["batch", layers, "audio_frames", width], [layers, 1, width]
                )
            else:
                specs["audio_features"] = _spec("float32", ["batch", "audio_frames", width], [1, width])
            specs["audio_features_mask"] = _spec("int64", ["batch", "audio_frames"], [1])
        else:
            specs["input_values"] = _spec("float32", ["batch", "samples"], [_ABSENT_AUDIO_SAMPLES])
            specs["attention_mask"] = _spec("int64", ["batch", "samples"], [_ABSENT_AUDIO_SAMPLES])
    if config.uses_text:
        specs["input_ids"] = _spec("int64", ["batch", "tokens"], [1])
        specs["text_attention_mask"] = _spec("int64", ["batch", "tokens"], [1])
    if config.uses_audio:
        for granularity in config.member_granularities:
            if granularity != "frame":
                specs[f"{granularity}_segments"] = _spec("float32", ["batch", f"{granularity}_segments", 2], [1, 2])
                specs[f"{granularity}_segments_mask"] = _spec("int64", ["batch", f"{granularity}_segments"], [1])
    return specs


def _example(name: str, spec: dict[str, Any], config, generator: torch.Generator) -> torch.Tensor:
    """Two rows of example data with different lengths (no axis of size 0 or 1, so that none is specialised)."""
    sizes = {"batch": 2, "audio_frames": 20, "video_frames": 3, "samples": 6400, "height": 32, "width": 32,
             "tokens": 6, "phone_segments": 5, "syllable_segments": 4, "word_segments": 3}  # fmt: skip
    shape = [sizes[a] if isinstance(a, str) else a for a in spec["axes"]]
    if name.endswith("_segments"):
        count = shape[1]
        seconds = 0.3  # inside the example audio of every kind
        edges = torch.linspace(0.0, seconds, count + 1)
        return torch.stack([edges[:-1], edges[1:]], dim=-1).expand(shape[0], count, 2).contiguous()
    if spec["dtype"] == "int64" and name == "input_ids":
        vocab = getattr(getattr(config, "text_config", None), "vocab_size", 100)
        return torch.randint(1, max(2, vocab), shape, generator=generator)
    if spec["dtype"] == "int64":  # masks: row 1 shorter than row 0
        mask = torch.ones(shape, dtype=torch.long)
        mask[1, max(1, shape[1] * 2 // 3) :] = 0
        return mask
    return torch.randn(shape, generator=generator)


def _load_model(model: str | Path | nn.Module) -> tuple[nn.Module, Path | None]:
    if isinstance(model, nn.Module):
        return model, None
    import avemotion  # noqa: F401 - registers the Auto classes
    from avemotion import AutoModelForEmotionRecognition

    directory = Path(model)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"--model {directory}: no config.json; expected a saved avemotion model directory")
    return AutoModelForEmotionRecognition.from_pretrained(directory), directory


def _warn_group_norm(audio_config) -> None:
    if audio_config is not None and getattr(audio_config, "feat_extract_norm", "layer") == "group":
        logger.warning(
            "The audio backbone normalises each waveform over time, padding included (feat_extract_norm='group'): "
            "in the exported graph, as in a padded PyTorch batch, a padded row differs from the clip alone. Run "
            "padded batches only with equal-length clips (the pipeline's default batch size 1 has no padding)."
        )


def build_graph(model: nn.Module, parts: str) -> tuple[nn.Module, dict[str, dict[str, Any]], list[str]]:
    """The export wrapper, its input specs and output names for `model` and `parts`; a clear error for what
    cannot be exported."""
    config = model.config
    if config.model_type == "vavl":
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
        _warn_group_norm(config.audio_backbone_config if parts == "full" else None)
        return VavlGraph(model, parts), vavl_inputs(config, parts), ["logits", "audio_logits", "visual_logits"]
    if config.model_type == "mlfusion":
        _warn_group_norm(config.audio_config if parts == "full" and config.uses_audio else None)
        specs = fusion_inputs(config, parts)
        return FusionGraph(model, parts, list(specs)), specs, ["logits"]
    raise ValueError(f"ONNX export supports 'vavl' and 'mlfusion' models, got model_type {config.model_type!r}")


def export_onnx(
    model: str | Path | nn.Module,
    output_dir: str | Path,
    parts: str = "heads",
    opset: int | None = None,
    exporter: str = DEFAULT_EXPORTER,
    source_dir: str | Path | None = None,
) -> Path:
    """Export `model` (a directory or a loaded avemotion task model) to `output_dir`; returns the graph's path.

    Args:
        parts: `"heads"` (the model on pre-extracted features) or `"full"` (raw 16 kHz audio and face crops / token
            ids in). Exporting both parts into one directory keeps both graphs; the runtime picks by the inputs.
        opset: ONNX opset (default 17 with the TorchScript exporter, 18 with dynamo).
        exporter: `"torchscript"` or `"dynamo"` (torch.export + onnxscript).
        source_dir: where the processor files are copied from, when `model` is an instance.
    """
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    opset = DEFAULT_OPSET[exporter] if opset is None else int(opset)
    if opset < MIN_OPSET[exporter]:
        raise ValueError(
            f"opset {opset} is not supported by the {exporter} exporter; use {MIN_OPSET[exporter]} or newer"
        )
    model, loaded_from = _load_model(model)
    if exporter == "dynamo" and model.config.model_type == "mlfusion":
        raise ValueError(
            "the fusion model's forward checks its segments with data-dependent conditions, which torch.export "
            "(the dynamo exporter) cannot trace: use --exporter torchscript"
        )
    source = Path(source_dir) if source_dir is not None else loaded_from
    output = Path(output_dir)
    if source is not None and output.resolve() == source.resolve():
        raise ValueError(f"--output-dir must differ from the model directory {source}")
    graph, specs, output_names = build_graph(model, parts)
    output.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator().manual_seed(0)
    examples = tuple(_example(name, spec, model.config, generator) for name, spec in specs.items())
    path = output / GRAPH_FILES[parts]
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {
                name: {i: a for i, a in enumerate(spec["axes"]) if isinstance(a, str)} for name, spec in specs.items()
            }
            torch.onnx.export(graph, examples, str(path), input_names=list(specs), output_names=output_names,
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)  # fmt: skip
        else:
            dims = {
                name: {i: a for i, a in enumerate(spec["axes"]) if isinstance(a, str)} for name, spec in specs.items()
            }
            dynamic = tuple(dims.values())
            program = torch.onnx.export(graph, examples, input_names=list(specs), output_names=output_names,
                                        dynamic_shapes=dynamic, opset_version=opset, dynamo=True, verbose=False)  # fmt: skip
            program.save(str(path))
    seconds = time.perf_counter() - started

    _write_directory(model, source, output, parts, path.name, specs, output_names, opset, exporter, seconds)
    return path


def _write_directory(model, source, output, parts, file_name, specs, output_names, opset, exporter, seconds):
    if source is not None:
        for item in source.iterdir():
            if (
                item.is_file()
                and item.name not in ("config.json", ONNX_CONFIG_NAME)
                and not item.name.endswith(_SKIPPED_SUFFIXES)
            ):
                shutil.copy2(item, output / item.name)
    config = model.config.to_dict()
    for key in ("auto_map", "custom_pipelines"):  # they point at PyTorch code that is not shipped
        config.pop(key, None)
    (output / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    meta_path = output / ONNX_CONFIG_NAME
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"format": "avemotion-onnx", "graphs": {}}
    meta["model_type"] = model.config.model_type
    # inputs the PyTorch model accepts and does not read (the pipeline gives every segment granularity)
    meta["ignored_inputs"] = [
        f"{g}{suffix}"
        for g in ("phone", "syllable", "word")
        for suffix in ("_segments", "_segments_mask")
        if model.config.model_type == "mlfusion" and f"{g}_segments" not in specs
    ]
    meta["graphs"][parts] = {
        "file": file_name,
        "inputs": specs,
        "outputs": output_names,
        "opset": opset,
        "exporter": exporter,
        "torch_version": torch.__version__.split("+")[0],
        "export_seconds": round(seconds, 2),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
