"""`export_onnx`: an avemotion model (directory or instance) -> a directory with ONNX graphs that ONNX Runtime runs.

The output directory is a model directory a user can ship: the graphs (`model_heads.onnx` and/or `model.onnx`),
`onnx_config.json` (which graph takes which inputs, how an absent input is filled), config.json (labels, scale;
without the `auto_map` that points at PyTorch code) and the processor files of the source directory.

Generic code: it names no model. A model declares how it is exported with the hook

    def onnx_export_spec(self, parts: str, exporter: str) -> OnnxExportSpec

on its task-model class, which raises a `ValueError` for what it cannot export and returns an `OnnxExportSpec`: the
graph's inputs and outputs and a builder of its export wrapper (an `nn.Module` with fixed tensor inputs). The
wrappers live next to their models (`models/<model>/onnx_<model>.py`, imported by the hook, not with the model) and
use the helpers below. `avemotion export-onnx` (`avemotion.pipelines.cli_export_onnx`) runs `export_onnx` and then
`check_parity`; `OnnxRuntimeEmotionModel` (`avemotion.models.onnx_runtime`) runs the result.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avemotion.models.auto import AutoModelForEmotionRecognition
from avemotion.models.conformer import ConformerEncoder
from avemotion.models.onnx_runtime import ONNX_CONFIG_NAME, ONNX_FORMAT, read_onnx_config
from avemotion.utils.paths import contained_file

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
# the processor's face detector weights (processing.video.FACE_DETECTOR_WEIGHTS_NAME) ship with the export
_SHIPPED_WEIGHTS = ("face_detector.safetensors",)
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx_data", ".py", ".lock")
ABSENT_AUDIO_SAMPLES = 400  # one wav2vec2 frame, as the pipeline pads


@dataclass
class OnnxExportSpec:
    """What `export_onnx` needs from a model, returned by its `onnx_export_spec(parts, exporter)` hook.

    Attributes:
        inputs: the graph's inputs in the order the wrapper's `forward` takes them, name -> `input_spec(...)`.
        outputs: the graph's output names, in the order the wrapper returns them.
        build_graph: returns the export wrapper (called once, by the export; not by the parity check).
        ignored_inputs: inputs the PyTorch model accepts and does not read; the runtime drops them.
        reference_per_clip: the parity check computes the PyTorch reference one unpadded clip at a time (for a
            model whose batched outputs are not those of the batch-independent graph).
    """

    inputs: dict[str, dict[str, Any]]
    outputs: list[str]
    build_graph: Callable[[], nn.Module]
    ignored_inputs: list[str] = field(default_factory=list)
    reference_per_clip: bool = False


def input_spec(dtype: str, axes: list[str | int], absent: list[int]) -> dict[str, Any]:
    """An input: dtype, axes (names are dynamic, ints fixed; axis 0 is the batch) and the per-row shape of the
    zeros that stand for it when it is not given (with an all-zero mask, that is an absent modality)."""
    return {"dtype": dtype, "axes": axes, "absent_shape": absent}


def example_input(name: str, spec: dict[str, Any], config, generator: torch.Generator) -> torch.Tensor:
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


# -- helpers for the models' export wrappers ----------------------------------------------------------------------


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


def conv_output_lengths(lengths: torch.Tensor, kernels, strides) -> torch.Tensor:
    """Frames of a wav2vec2-style convolutional feature encoder for `lengths` samples (negative -> no frame)."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def warn_group_norm(audio_config) -> None:
    """Warn when an exported wav2vec2-style audio backbone normalises over time, padding included."""
    if audio_config is not None and getattr(audio_config, "feat_extract_norm", "layer") == "group":
        logger.warning(
            "The audio backbone normalises each waveform over time, padding included (feat_extract_norm='group'): "
            "in the exported graph, as in a padded PyTorch batch, a padded row differs from the clip alone. Run "
            "padded batches only with equal-length clips (the pipeline's default batch size 1 has no padding)."
        )


# -- export ---------------------------------------------------------------------------------------------------------


def _load_model(model: str | Path | nn.Module) -> tuple[nn.Module, Path | None]:
    if isinstance(model, nn.Module):
        return model, None
    directory = Path(model)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"--model {directory}: no config.json; expected a saved avemotion model directory")
    # the Auto class is filled by `avemotion/__init__.py`, which importing this module has run
    return AutoModelForEmotionRecognition.from_pretrained(directory), directory


def export_spec(model: nn.Module, parts: str, exporter: str = DEFAULT_EXPORTER) -> OnnxExportSpec:
    """The model's `OnnxExportSpec` for `parts` and `exporter`; a clear error for a model without the hook and,
    from the hook, for what the model cannot export."""
    hook = getattr(model, "onnx_export_spec", None)
    if hook is None:
        raise ValueError(
            f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', None)!r}) does not define "
            "`onnx_export_spec`: it cannot be exported to ONNX"
        )
    return hook(parts, exporter)


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
    spec = export_spec(model, parts, exporter)
    source = Path(source_dir) if source_dir is not None else loaded_from
    output = Path(output_dir)
    if source is not None and output.resolve() == source.resolve():
        raise ValueError(f"--output_dir must differ from the model directory {source}")
    meta = _existing_onnx_config(output, parts)  # before anything is written into the directory
    graph, specs, output_names = spec.build_graph(), spec.inputs, spec.outputs
    output.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator().manual_seed(0)
    examples = tuple(example_input(name, entry, model.config, generator) for name, entry in specs.items())
    path = output / GRAPH_FILES[parts]
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {
            name: {i: a for i, a in enumerate(entry["axes"]) if isinstance(a, str)} for name, entry in specs.items()
        }
        if exporter == "torchscript":
            torch.onnx.export(graph, examples, str(path), input_names=list(specs), output_names=output_names,
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)  # fmt: skip
        else:
            program = torch.onnx.export(graph, examples, input_names=list(specs), output_names=output_names,
                                        dynamic_shapes=tuple(axes.values()), opset_version=opset, dynamo=True,
                                        verbose=False)  # fmt: skip
            program.save(str(path))
    seconds = time.perf_counter() - started

    _write_directory(model, source, output, meta, parts, path.name, spec, opset, exporter, seconds)
    return path


def _copy_processor_files(source: Path, output: Path) -> None:
    """Copy the source directory's files that the export ships (processor files, ...), refusing a symlink that
    leads out of it: what is copied into a directory meant to be shipped must have been the directory's own."""
    for item in sorted(source.iterdir()):
        skipped = item.name.endswith(_SKIPPED_SUFFIXES) and item.name not in _SHIPPED_WEIGHTS
        if item.name in ("config.json", ONNX_CONFIG_NAME) or skipped:
            continue
        if item.is_symlink():
            contained_file(source, item.name, "a file to copy into the export")
        if item.is_file():
            shutil.copy2(item, output / item.name)


def _existing_onnx_config(output: Path, parts: str) -> dict[str, Any]:
    """The output directory's `onnx_config.json`, read back as data like any export (the other part's graph is
    kept, so its file name must be one of the directory's), or a new one."""
    meta_path = output / ONNX_CONFIG_NAME
    if not os.path.lexists(meta_path):
        return {"format": ONNX_FORMAT, "graphs": {}}
    meta = read_onnx_config(output)
    for part, kept in meta["graphs"].items():
        if part != parts:  # the part exported now is replaced
            contained_file(output, kept.get("file"), f"graphs.{part}.file", source=meta_path)
    return meta


def _write_directory(model, source, output, meta, parts, file_name, spec: OnnxExportSpec, opset, exporter, seconds):
    if source is not None:
        _copy_processor_files(source, output)
    config = model.config.to_dict()
    for key in ("auto_map", "custom_pipelines"):  # they point at PyTorch code that is not shipped
        config.pop(key, None)
    (output / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    meta_path = output / ONNX_CONFIG_NAME
    meta["model_type"] = model.config.model_type
    meta["ignored_inputs"] = list(spec.ignored_inputs)
    meta["input_spec"] = model.input_spec()  # what the pipeline reads from the ONNX model (tuples become lists)
    meta["graphs"][parts] = {
        "file": file_name,
        "inputs": spec.inputs,
        "outputs": spec.outputs,
        "opset": opset,
        "exporter": exporter,
        "torch_version": torch.__version__.split("+")[0],
        "export_seconds": round(seconds, 2),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")


# -- parity -----------------------------------------------------------------------------------------------------------


def check_parity(model: Any, onnx_dir: str | Path, parts: str = "heads", seed: int = 1) -> dict[str, float]:
    """Max |logits difference| between ONNX Runtime and PyTorch on a random two-row batch (rows of different
    lengths, every modality present), with inputs shaped by the export's input specs."""
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    torch_model, _ = _load_model(model)
    torch_model.eval()
    graphs = read_onnx_config(onnx_dir)["graphs"]
    if parts not in graphs:
        raise ValueError(f"{Path(onnx_dir) / ONNX_CONFIG_NAME} has no {parts!r} graph; it has {sorted(graphs)}")
    graph_meta = graphs[parts]
    specs = graph_meta["inputs"]
    generator = torch.Generator().manual_seed(seed)
    inputs = {name: example_input(name, spec, torch_model.config, generator) for name, spec in specs.items()}
    reference_inputs = {
        name: value.bool() if name.endswith("_segments_mask") else value for name, value in inputs.items()
    }
    with torch.no_grad():
        if export_spec(torch_model, parts, graph_meta.get("exporter", DEFAULT_EXPORTER)).reference_per_clip:
            # the graph is batch-independent (each clip on its own): compare clip by clip, unpadded
            for name in inputs:
                if name.endswith("mask"):
                    inputs[name] = torch.ones_like(inputs[name])
            reference_inputs = dict(inputs)
            expected = torch.cat([
                torch_model(**{n: v[row : row + 1] for n, v in reference_inputs.items()}).logits
                for row in range(next(iter(inputs.values())).shape[0])
            ])  # fmt: skip
        else:
            expected = torch_model(**reference_inputs).logits
    actual = OnnxRuntimeEmotionModel.from_pretrained(onnx_dir)(**inputs).logits
    return {"max_abs_diff": float((actual - expected).abs().max())}


__all__ = [
    "ABSENT_AUDIO_SAMPLES",
    "OnnxExportSpec",
    "check_parity",
    "conv_output_lengths",
    "example_input",
    "export_onnx",
    "export_spec",
    "exportable_copy",
    "input_spec",
    "warn_group_norm",
]
