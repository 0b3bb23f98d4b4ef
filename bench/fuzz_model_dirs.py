"""Fuzz harness: crafted model, export and run directories through every loader of the package.

"No code and no unbounded work from any file the package reads." Valid tiny directories are built first (a VAVL with
backbones and its processor, a multi-level fusion model with its tokenizer, an ONNX export of the VAVL, a training
run with one checkpoint); then seeded copies of them are crafted:

- config values (huge, negative, zero, float, bool, str, null, nested) in our configs and in backbone sub-configs,
  and config files that are not JSON, are deeply nested, or name another or no model type;
- `model.safetensors` whose header lies (huge header length, not JSON, offsets, dtypes, shapes, truncated);
- weight indexes whose `weight_map` names files outside the directory (or a symlink leading out);
- processor configs naming classes or paths (`processor_class`, `feature_extractor_type`, `image_processor_type`,
  `face_detector`), with absurd sizes;
- `auto_map` / `custom_pipelines` entries and copied model code pointing at a planted python file that writes a
  marker file if it is ever imported;
- pickles with a `__reduce__` payload planted in model directories (`pytorch_model.bin`, `training_args.bin`, ...);
- ONNX exports whose `onnx_config.json` names `../x.onnx`, absolute paths, `/etc/passwd`, wrong types or lacks
  keys, and graphs that are corrupt or keep their external data outside the directory;
- run directories for `--resume`: pickles with a payload (`custom_checkpoint_0.pkl`, `random_states_0.pkl`,
  `optimizer.bin`, `sampler.bin`, `scaler.pt`, ...) and lying `trainer_state.json` and state files (whatever JSON and
  safetensors files the trainer's checkpoints hold when the harness runs).

Every directory goes through the targets that read it: `from_pretrained` (AutoConfig, AutoModelForEmotionRecognition,
AutoModel, AutoProcessor; for an export `OnnxRuntimeEmotionModel`), `pipeline` (`pipeline("audio-visual-emotion",
model=DIR)` and one call on a short clip), `predict`, `evaluate`, `export-onnx` and `train --resume` (the `avemotion`
commands, in-process). Each (directory, target) runs in a forked process with a hard 10 s timeout and a memory cap.

Pass: no payload ran (its marker file never appears), no hang, and either success (only where the mutation is
harmless, or where the target does not read what was changed) or a clean error: a `ValueError` or `OSError`
(subclasses included: `json.JSONDecodeError`, `FileNotFoundError`, ...) whose message names the directory, the file
or the field that was changed (a planted pickle in a run directory: the file itself). Anything else is a FAIL: code
executed, a hang, a process that died, an error of another type (`KeyError`, `TypeError`, `RuntimeError`,
`SafetensorError`, `MemoryError`, ...) or one that names none of them, or a harmful directory accepted.
Prints a table (ok / clean error / FAIL per category and target) and writes JSON to
bench/results/fuzz_model_dirs.json.

    python bench/fuzz_model_dirs.py [--seed 0] [--count 0 (every kind once)] [--fast] [--jobs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import math
import os
import pickle
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("from_pretrained", "pipeline", "predict", "evaluate", "export-onnx", "train --resume")
BASE_TARGETS = {
    "vavl": ("from_pretrained", "pipeline", "predict", "evaluate", "export-onnx"),
    "mlfusion": ("from_pretrained", "pipeline", "predict"),
    "onnx": ("from_pretrained", "pipeline", "predict"),
    "run": ("train --resume",),
}
LOADING_TARGETS = ("from_pretrained", "pipeline", "predict")  # what reads a processor
TIMEOUT = 10.0
MEMORY_CAP = 4 << 30  # bytes of address space a target may add to what the forked process starts with
MARKER_TEXT = "avemotion-fuzz: a payload ran"
TEXT = "i am so happy today"
# the training run: 12 rows, batches of 4 -> 3 updates; one checkpoint (update 2), so --resume trains update 3
RUN_OPTIONS = ["--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
               "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1", "--disable_tqdm",
               "--test_split", "none", "--seed", "0"]  # fmt: skip
RUN_CONFIG = {"projection_dim": 8, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 16,
              "conv_kernel_size": 3, "num_modality_layers": 1, "num_shared_layers": 1, "head_hidden_sizes": [8, 8],
              "max_position_embeddings": 16}  # fmt: skip
PICKLE_LIKE = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Spec:
    """One kind of crafted directory: `apply(directory, rng, ctx)` changes a copy of the base (returns a detail)."""

    category: str
    base: str
    label: str
    apply: Callable[..., str | None]
    # "error": must be refused cleanly; "any": success is fine too; "use": from_pretrained may accept it (a setting
    # the package itself saves and checks where it is used), the other targets must refuse it
    expect: str = "error"
    names: tuple[str, ...] = ()  # what a clear error may name besides the directory (files, fields)
    strict: bool = False  # only `names` count (e.g. a planted pickle must be named itself)
    targets: tuple[str, ...] | None = None  # default: every target of the base


@dataclass
class Case:
    name: str
    category: str
    base: str
    mutation: str
    expect: str
    names: tuple[str, ...]
    strict: bool
    targets: tuple[str, ...]
    path: Path
    marker: Path
    results: dict[str, tuple[str, str]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- JSON helpers

DELETE = object()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2))


def _set(path: Path, keys: tuple, value: Any) -> None:
    """Set (or with DELETE remove) `keys` (a path of dict keys / list indexes) in the JSON file `path`."""
    document = _read_json(path)
    node = document
    for key in keys[:-1]:
        node = node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    _write_json(path, document)


def _deep(depth: int = 100_000) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# ------------------------------------------------------------------------------------------------------ payloads


class _Exec:
    """Unpickling it runs `builtins.exec(code)`."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class _System:
    """Unpickling it runs `os.system(command)`."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def payload_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write({MARKER_TEXT!r})"


def write_pickle(path: Path, marker: Path, how: str) -> None:
    """A pickle whose loading writes `marker`: `exec` (protocol 2 / 4), `os.system`, or torch's zip format."""
    if how == "torch-zip":
        import torch

        torch.save({"state": _Exec(payload_code(marker))}, path)
    elif how == "os.system":
        path.write_bytes(pickle.dumps(_System(f"touch '{marker}'"), protocol=2))
    else:
        path.write_bytes(pickle.dumps(_Exec(payload_code(marker)), protocol=4 if how == "exec-p4" else 2))


def write_python_payload(path: Path, marker: Path, classes: tuple[str, ...] = ()) -> None:
    body = [payload_code(marker)] + [f"class {name}:\n    pass\n" for name in classes]
    path.write_text("\n".join(body) + "\n")


EVIL_CLASSES = ("EvilConfig", "EvilModel", "EvilPipeline", "EvilProcessor", "EvilFeatureExtractor", "EvilTokenizer")


def plant_module(directory: Path, marker: Path, name: str = "evil") -> None:
    write_python_payload(directory / f"{name}.py", marker, EVIL_CLASSES)


# -------------------------------------------------------------------------------------------------- safetensors


def st_read(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def st_write(path: Path, header: dict | bytes, body: bytes, length: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8) if not isinstance(header, bytes) else b""
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)


def _tensors(header: dict) -> list[str]:
    return sorted(key for key in header if key != "__metadata__")


def _pick(header: dict, rng: np.random.Generator, ndim: int | None = None) -> str:
    """A tensor of the header (of `ndim` axes, not square, when there is one)."""
    names = [n for n in _tensors(header) if ndim is None or len(header[n]["shape"]) == ndim]
    if ndim == 2:
        names = [n for n in names if header[n]["shape"][0] != header[n]["shape"][1]]
    names = names or _tensors(header)
    return names[int(rng.integers(len(names)))]


def st_mutation(how: str) -> Callable[[Path, np.random.Generator], str]:
    """A mutation of the safetensors file at `path` (lying header, truncation, ...)."""

    def apply(path: Path, rng: np.random.Generator) -> str:
        header, body = st_read(path)
        raw = path.read_bytes()
        length = struct.unpack("<Q", raw[:8])[0]
        if how == "huge header length":
            path.write_bytes(struct.pack("<Q", 1 << 62) + raw[8:])
        elif how == "header length beyond the file":
            path.write_bytes(struct.pack("<Q", len(raw) + 4096) + raw[8:])
        elif how == "header length 0":
            path.write_bytes(struct.pack("<Q", 0) + raw[8:])
        elif how == "header not JSON":
            garbage = bytes(rng.integers(0, 256, size=length, dtype=np.uint8))
            path.write_bytes(raw[:8] + garbage + body)
        elif how == "header a JSON list":
            st_write(path, b"[1, 2, 3]     ", body)
        elif how == "header not UTF-8":
            st_write(path, b'{"\xff\xfe": 1}' + b" " * 2, body)
        elif how == "truncated in the data":
            cut = 8 + length + int(rng.integers(1, max(2, len(body))))
            path.write_bytes(raw[:cut])
        elif how == "truncated in the header":
            path.write_bytes(raw[: 8 + int(rng.integers(1, length))])
        elif how == "empty file":
            path.write_bytes(b"")
        elif how == "8 bytes only":
            path.write_bytes(raw[:8])
        elif how in ("offset beyond the data", "offsets reversed", "offsets overlap", "offsets negative",
                     "offsets strings", "dtype F64 (byte count lies)", "dtype unknown", "shape one longer",
                     "shape huge", "shape negative", "shape transposed", "dtype I32 (bytes reinterpreted)",
                     "dtype F16 (byte count lies)"):  # fmt: skip
            name = _pick(header, rng, 2 if how == "shape transposed" else None)
            entry = header[name]
            begin, end = entry["data_offsets"]
            if how == "offset beyond the data":
                entry["data_offsets"] = [begin, len(body) + 4096]
            elif how == "offsets reversed":
                entry["data_offsets"] = [end, begin]
            elif how == "offsets overlap":  # a tensor starting inside the one before it (or, alone: a hole)
                later = [n for n in _tensors(header) if header[n]["data_offsets"][0] > 0]
                if later:
                    name = later[int(rng.integers(len(later)))]
                    begin, end = header[name]["data_offsets"]
                    header[name]["data_offsets"] = [max(0, begin - 8), end]
                else:
                    entry["data_offsets"] = [begin, max(begin, end - 8)]
            elif how == "offsets negative":
                entry["data_offsets"] = [-8, end]
            elif how == "offsets strings":
                entry["data_offsets"] = [str(begin), str(end)]
            elif how == "dtype F64 (byte count lies)":
                entry["dtype"] = "F64"
            elif how == "dtype F16 (byte count lies)":
                entry["dtype"] = "F16"
            elif how == "dtype unknown":
                entry["dtype"] = "Q7"
            elif how == "dtype I32 (bytes reinterpreted)":
                entry["dtype"] = "I32"
            elif how == "shape one longer":
                entry["shape"] = [*entry["shape"][:-1], entry["shape"][-1] + 1] if entry["shape"] else [2]
            elif how == "shape huge":
                entry["shape"] = [1 << 31, 1 << 31]
            elif how == "shape negative":
                entry["shape"] = [-1, *entry["shape"][1:]]
            elif len(entry["shape"]) == 2 and entry["shape"][0] != entry["shape"][1]:
                entry["shape"] = entry["shape"][::-1]
            else:  # the same bytes under another shape
                entry["shape"] = [1, *entry["shape"]]
            st_write(path, header, body)
            return f"{how} ({name})"
        elif how == "__metadata__ format tf":
            header["__metadata__"] = {"format": "tf"}
            st_write(path, header, body)
        elif how == "__metadata__ not strings":
            header["__metadata__"] = {"format": 5, "x": [1, 2]}
            st_write(path, header, body)
        elif how in ("tensor missing", "extra tensor"):
            from safetensors.torch import load_file, save_file

            tensors = load_file(str(path))
            name = sorted(tensors)[int(rng.integers(len(tensors)))]
            if how == "tensor missing":
                del tensors[name]
            else:
                import torch

                tensors["evil.extra_weight"] = torch.zeros(3)
                name = "evil.extra_weight"
            save_file(tensors, str(path), metadata={"format": "pt"})
            return f"{how} ({name})"
        else:
            raise AssertionError(how)
        return how

    return apply


ST_HARMFUL = ("huge header length", "header length beyond the file", "header length 0", "header not JSON",
              "header a JSON list", "header not UTF-8", "truncated in the data", "truncated in the header",
              "empty file", "8 bytes only", "offset beyond the data", "offsets reversed", "offsets overlap",
              "offsets negative", "offsets strings", "dtype F64 (byte count lies)", "dtype F16 (byte count lies)",
              "dtype unknown", "shape one longer", "shape huge", "shape negative", "shape transposed",
              "__metadata__ not strings")  # fmt: skip
ST_HARMLESS = ("dtype I32 (bytes reinterpreted)", "__metadata__ format tf", "tensor missing", "extra tensor")


# ------------------------------------------------------------------------------------------------------ context


@dataclass
class Context:
    """What the targets and mutations need: the base directories and the inputs."""

    root: Path
    bases: dict[str, Path]
    clip: Path  # a short video with a sound track (pipeline / predict input)
    eval_data: Path  # features DatasetDict for `evaluate`
    run_data: Path  # features DatasetDict of the training run
    run_checkpoint: str  # checkpoints/<name> of the run's only checkpoint
    run_files: tuple[str, ...]  # the files of that checkpoint


def _checkpoint(directory: Path, ctx: Context) -> Path:
    return directory / "checkpoints" / ctx.run_checkpoint


# --------------------------------------------------------------------------------------------------- mutations

INT_VALUES = [("huge", 10**12, "error"), ("2**63", 2**63, "error"), ("negative", -4, "error"), ("zero", 0, "error"),
              ("float", 2.5, "error"), ("bool", True, "error"), ("str", "16", "error"), ("null", None, "error"),
              ("nested list", [16], "error"), ("nested dict", {"value": 16}, "error")]  # fmt: skip
PROBABILITY_VALUES = [("1.5", 1.5, "error"), ("negative", -0.1, "error"), ("str", "0.1", "error"),
                      ("null", None, "error"), ("NaN", math.nan, "error"), ("1e308", 1e308, "error")]  # fmt: skip
SECONDS_VALUES = [("zero", 0.0, "error"), ("negative", -1.0, "error"), ("huge", 1e12, "error"),
                  ("str", "12", "error"), ("null", None, "error"), ("NaN", math.nan, "error")]  # fmt: skip


def config_spec(category: str, base: str, keys: tuple, value: Any, expect: str, label: str, file: str = "config.json",
                targets: tuple[str, ...] | None = None) -> Spec:  # fmt: skip
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        _set(directory / file, keys, value)

    shown = "DELETED" if value is DELETE else json.dumps(value)[:40]
    names = tuple(str(k) for k in keys if isinstance(k, str)) + (file,)
    return Spec(category, base, f"{file}: {'.'.join(map(str, keys))} = {shown} ({label})", apply, expect, names,
                targets=targets)  # fmt: skip


def vavl_config_specs() -> list[Spec]:
    category = "config: VAVL fields"
    specs = []
    ints = ["hidden_size", "num_attention_heads", "intermediate_size", "conv_kernel_size", "num_modality_layers",
            "num_shared_layers", "projection_dim", "audio_feature_dim", "visual_feature_dim",
            "max_position_embeddings", "visual_backbone_chunk_size", "sampling_rate"]  # fmt: skip
    for name in ints:
        for label, value, expect in INT_VALUES:
            if label == "zero" and name in ("num_shared_layers",):
                expect = "any"
            specs.append(config_spec(category, "vavl", (name,), value, expect, label))
    for name in ("conformer_dropout", "head_dropout"):
        specs += [config_spec(category, "vavl", (name,), v, e, lab) for lab, v, e in PROBABILITY_VALUES]
    specs += [config_spec(category, "vavl", ("window_seconds",), v, e, lab) for lab, v, e in SECONDS_VALUES]
    others = [
        ("head_hidden_sizes", [], "empty"), ("head_hidden_sizes", [0, 16], "zero"),
        ("head_hidden_sizes", [-1], "negative"),
        ("head_hidden_sizes", [10**12], "huge"), ("head_hidden_sizes", "24", "str"),
        ("head_hidden_sizes", [24.5], "float"),
        ("head_hidden_sizes", [[24]], "nested"), ("head_hidden_sizes", None, "null"),
        ("position_encoding", "evil", "unknown"), ("position_encoding", 5, "int"),
        ("legacy_batch_axis_attention", "yes", "str"), ("legacy_batch_axis_attention", 2, "int"),
        ("freeze_audio_backbone", "no", "str"), ("normalize_visual_features", "yes", "str"),
        ("problem_type", "multi_label_classification", "unsupported"), ("problem_type", 5, "int"),
        ("label_scale", [5, 1], "reversed"), ("label_scale", [1], "one value"), ("label_scale", "x", "str"),
        ("id2label", {"x": "angry"}, "non-int key"), ("id2label", ["angry"], "list"),
        ("id2label", {"0": 5}, "int label"),
        ("id2label", {}, "empty"), ("id2label", {str(10**12): "angry"}, "huge index"),
        ("reconstruction_loss_weight", "x", "str"), ("reconstruction_loss_weight", None, "null"),
        ("max_position_embeddings", 10**7, "10**7 table"),
    ]  # fmt: skip
    specs += [config_spec(category, "vavl", (name,), value, "error", label) for name, value, label in others]
    for spec in specs:
        if spec.label.startswith("config.json: id2label"):
            spec.names += ("num_labels",)  # the number of labels is id2label's length
    specs.append(config_spec(category, "vavl", ("audio_backbone_name",), "../../etc/passwd", "any", "outside path"))
    specs.append(config_spec(category, "vavl", ("hidden_size",), 32.0, "any", "integral float"))
    return specs


def backbone_config_specs() -> list[Spec]:
    category = "config: backbone sub-configs"
    audio, visual = "audio_backbone_config", "visual_backbone_config"
    edits = [
        (audio, "num_hidden_layers", 10**6, "huge"), (audio, "num_hidden_layers", -1, "negative"),
        (audio, "num_hidden_layers", "2", "str"), (audio, "num_attention_heads", 0, "zero"),
        (audio, "num_attention_heads", 3, "not a divisor"), (audio, "intermediate_size", 10**9, "huge"),
        (audio, "intermediate_size", -1, "negative"), (audio, "conv_dim", [16], "length mismatch"),
        (audio, "conv_dim", [0, 0], "zero"), (audio, "conv_dim", [10**9, 16], "huge"),
        (audio, "conv_kernel", [0, 8], "zero"), (audio, "conv_kernel", [10**6, 8], "huge"),
        (audio, "conv_stride", [0, 4], "zero"), (audio, "conv_stride", [5], "length mismatch"),
        (audio, "num_conv_pos_embeddings", 0, "zero"), (audio, "num_conv_pos_embeddings", 10**7, "huge"),
        (audio, "num_conv_pos_embedding_groups", 0, "zero"),
        (audio, "num_conv_pos_embedding_groups", 3, "not a divisor"),
        (audio, "hidden_act", "evil", "unknown"), (audio, "feat_extract_norm", "evil", "unknown"),
        (audio, "layer_norm_eps", "x", "str"), (audio, "hidden_size", 17, "width mismatch"),
        (audio, "hidden_size", 10**9, "huge"), (audio, "hidden_dropout", 5.0, "probability > 1"),
        (audio, "model_type", "bert", "other model type"), (audio, "model_type", "evil", "unknown model type"),
        (visual, "width_coefficient", 0, "zero"), (visual, "width_coefficient", -1, "negative"),
        (visual, "width_coefficient", 10**4, "huge"), (visual, "depth_coefficient", 10**4, "huge"),
        (visual, "depth_coefficient", 0, "zero"), (visual, "image_size", 0, "zero"),
        (visual, "image_size", 10**9, "huge"),
        (visual, "hidden_dim", 10**9, "huge"), (visual, "hidden_dim", 127, "width mismatch"),
        (visual, "kernel_sizes", [], "empty"), (visual, "in_channels", [32], "length mismatch"),
        (visual, "num_channels", 0, "zero"), (visual, "strides", [0, 2, 2, 2, 1, 2, 1], "zero stride"),
        (visual, "expand_ratios", [0] * 7, "zero"), (visual, "dropout_rate", 5.0, "probability > 1"),
        (visual, "hidden_act", "evil", "unknown"), (visual, "num_block_repeats", [10**6] * 7, "huge"),
        (visual, "depthwise_padding", [99], "out of range"), (visual, "model_type", "bert", "other model type"),
    ]  # fmt: skip
    # a backbone sub-config's class is fixed by VavlConfig (Wav2Vec2Config, EfficientNetConfig): a model_type in it
    # names nothing that is loaded
    specs = [
        config_spec(category, "vavl", (outer, inner), value, "any" if inner == "model_type" else "error", label)
        for outer, inner, value, label in edits
    ]
    for outer in (audio, visual):
        for value, label in (("x", "str"), ([1, 2], "list"), (5, "int"), ({}, "empty: the default size")):
            specs.append(config_spec(category, "vavl", (outer,), value, "error", label))
    specs.append(config_spec(category, "vavl", (audio, "vocab_size"), 10**9, "any", "unused field"))
    return specs


def fusion_config_specs() -> list[Spec]:
    category = "config: fusion fields + sub-configs"
    edits = [
        (("fusion_hidden_size",), 10**12, "huge"), (("fusion_hidden_size",), 0, "zero"),
        (("fusion_hidden_size",), -24, "negative"),
        (("fusion_hidden_size",), "24", "str"), (("num_coattention_heads",), 0, "zero"),
        (("num_coattention_heads",), -2, "negative"),
        (("coattention_ffn_size",), 10**12, "huge"), (("coattention_ffn_size",), 0, "zero"),
        (("classifier_hidden_size",), 10**12, "huge"), (("classifier_hidden_size",), -1, "negative"),
        (("num_coattention_layers",), 10**6, "huge"), (("num_self_attention_layers",), 10**6, "huge"),
        (("max_text_length",), 0, "zero"), (("max_text_length",), -1, "negative"),
        (("max_text_length",), 10**12, "huge"),
        (("granularities",), ["evil"], "unknown"), (("granularities",), "frame", "str"),
        (("granularities",), [], "empty"),
        (("fusion_members",), ["evil"], "unknown"), (("late_fusion_mode",), "evil", "unknown"),
        (("audio_layer",), 99, "index out of range"), (("text_layer",), -99, "index out of range"),
        (("class_weights",), ["x"], "str"), (("sampling_rate",), 0, "zero"),
        (("attention_dropout",), 5.0, "probability > 1"),
        (("text_config", "vocab_size"), 0, "zero"), (("text_config", "vocab_size"), 10**12, "huge"),
        (("text_config", "hidden_size"), 33, "not divisible by heads"),
        (("text_config", "num_hidden_layers"), 10**6, "huge"),
        (("text_config", "max_position_embeddings"), 10**12, "huge"),
        (("text_config", "max_position_embeddings"), 2, "too short"),
        (("text_config", "type_vocab_size"), 0, "zero"), (("text_config", "hidden_act"), "evil", "unknown"),
        (("text_config", "model_type"), "evil", "unknown model type"),
        (("audio_config", "conv_stride"), [0, 20], "zero"),
        (("audio_config", "num_hidden_layers"), 10**6, "huge"),
        (("audio_config", "model_type"), "bert", "other model type"),
        (("audio_config",), "x", "str"), (("text_config",), [1], "list"),
    ]  # fmt: skip
    specs = [config_spec(category, "mlfusion", keys, value, "error", label) for keys, value, label in edits]
    specs.append(config_spec(category, "mlfusion", ("classifier_dropout",), 0.3, "any", "harmless dropout"))
    return specs


def _structure(how: str) -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        path = directory / "config.json"
        text = path.read_text()
        if how == "not JSON":
            path.write_text("{hidden_size: 32,")
        elif how == "empty":
            path.write_text("")
        elif how == "a JSON list":
            path.write_text("[1, 2]")
        elif how == "null":
            path.write_text("null")
        elif how == "truncated":
            path.write_text(text[: int(rng.integers(1, len(text)))])
        elif how == "100000 levels deep":
            path.write_text(_deep())
        elif how == "not UTF-8":
            path.write_bytes(b'{"model_type": "\xff\xfe"}')
        elif how == "binary garbage":
            path.write_bytes(bytes(rng.integers(0, 256, size=512, dtype=np.uint8)))
        elif how == "a directory":
            path.unlink()
            path.mkdir()
        elif how == "missing":
            path.unlink()
        elif how == "symlink to /etc/passwd":
            path.unlink()
            path.symlink_to("/etc/passwd")
        elif how == "UTF-8 BOM":
            path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        elif how.startswith("model_type"):
            other = "mlfusion" if json.loads(text).get("model_type") == "vavl" else "vavl"
            value = {"model_type missing": DELETE, "model_type unknown": "evil", "model_type int": 5,
                     "model_type of the other model": other}[how]  # fmt: skip
            _set(path, ("model_type",), value)
        else:
            raise AssertionError(how)

    return apply


def structure_specs() -> list[Spec]:
    category = "config.json: structure"
    hows = ["not JSON", "empty", "a JSON list", "null", "truncated", "100000 levels deep", "not UTF-8",
            "binary garbage", "a directory", "missing", "symlink to /etc/passwd", "model_type missing",
            "model_type unknown", "model_type int", "model_type of the other model"]  # fmt: skip
    names = ("config.json", "model_type")
    specs = [Spec(category, "vavl", f"config.json {how}", _structure(how), "error", names) for how in hows]
    specs.append(Spec(category, "vavl", "config.json UTF-8 BOM", _structure("UTF-8 BOM"), "any", ("config.json",)))
    for how in ("not JSON", "model_type missing", "100000 levels deep", "model_type of the other model"):
        specs.append(Spec(category, "mlfusion", f"config.json {how}", _structure(how), "error", names))
    for how in ("not JSON", "model_type unknown", "missing"):
        specs.append(Spec(category, "onnx", f"config.json {how}", _structure(how), "error", names))
    return specs


def _st_spec(
    category: str,
    base: str,
    how: str,
    expect: str,
    file: str = "model.safetensors",
    targets: tuple[str, ...] | None = None,
    where: Callable[[Path, Context], Path] | None = None,
) -> Spec:
    mutate = st_mutation(how)

    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> str:
        folder = where(directory, ctx) if where else directory
        return mutate(folder / file, rng)

    return Spec(category, base, f"{file}: {how}", apply, expect, (file,), targets=targets)


def safetensors_specs() -> list[Spec]:
    category = "safetensors: lying headers"
    specs = [_st_spec(category, "vavl", how, "error") for how in ST_HARMFUL]
    specs += [_st_spec(category, "vavl", how, "any") for how in ST_HARMLESS]
    specs += [
        _st_spec(category, "mlfusion", how, "error")
        for how in ("huge header length", "truncated in the data", "shape transposed", "offsets overlap")
    ]

    def replace(kind: str) -> Callable:
        def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
            path = directory / "model.safetensors"
            path.unlink()
            if kind == "directory":
                path.mkdir()
            else:
                path.symlink_to("/dev/zero")

        return apply

    specs.append(Spec(category, "vavl", "model.safetensors is a directory", replace("directory"), "error",
                      ("model.safetensors",)))  # fmt: skip
    specs.append(Spec(category, "vavl", "model.safetensors -> /dev/zero", replace("zero"), "error",
                      ("model.safetensors",)))  # fmt: skip
    return specs


SHARD = "model-00001-of-00001.safetensors"
INDEX = "model.safetensors.index.json"


def _shard(directory: Path) -> dict:
    """Turn the directory's single weight file into a one-shard checkpoint with an index; returns the index."""
    header, _ = st_read(directory / "model.safetensors")
    (directory / "model.safetensors").rename(directory / SHARD)
    index = {"metadata": {"total_size": (directory / SHARD).stat().st_size},
             "weight_map": {name: SHARD for name in _tensors(header)}}  # fmt: skip
    _write_json(directory / INDEX, index)
    return index


def _index(how: str) -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> str | None:
        index = _shard(directory)
        names = sorted(index["weight_map"])
        victim = names[int(rng.integers(len(names)))]
        outside = directory.parent / f"{directory.name}-outside.safetensors"
        if how == "valid one-shard index":
            return None
        if how == "weight_map names ../ (a valid file outside)":
            (directory / SHARD).rename(outside)
            index["weight_map"] = {name: f"../{outside.name}" for name in names}
        elif how == "weight_map names an absolute path (a valid file outside)":
            (directory / SHARD).rename(outside)
            index["weight_map"] = {name: str(outside) for name in names}
        elif how == "weight_map names /etc/passwd":
            index["weight_map"][victim] = "/etc/passwd"
        elif how == "weight_map names a missing shard":
            index["weight_map"][victim] = "model-00002-of-00002.safetensors"
        elif how == "weight_map names a subfolder":
            (directory / "sub").mkdir()
            (directory / SHARD).rename(directory / "sub" / SHARD)
            index["weight_map"] = {name: f"sub/{SHARD}" for name in names}
        elif how == "shard is a symlink leading out":
            (directory / SHARD).rename(outside)
            (directory / SHARD).symlink_to(outside)
        elif how == "weight_map a list":
            index["weight_map"] = [SHARD]
        elif how == "weight_map a string":
            index["weight_map"] = SHARD
        elif how == "weight_map null":
            index["weight_map"] = None
        elif how == "weight_map missing":
            del index["weight_map"]
        elif how == "weight_map values ints":
            index["weight_map"] = {name: 1 for name in names}
        elif how == "index not JSON":
            (directory / INDEX).write_text('{"weight_map": ')
            return how
        elif how == "index 100000 levels deep":
            (directory / INDEX).write_text(_deep())
            return how
        elif how == "weight_map names a pickle payload":
            write_pickle(directory / "pytorch_model-00001-of-00001.bin", ctx_marker(directory), "exec")
            index["weight_map"][victim] = "pytorch_model-00001-of-00001.bin"
        else:
            raise AssertionError(how)
        _write_json(directory / INDEX, index)
        return None

    return apply


def index_specs() -> list[Spec]:
    category = "weight index"
    harmful = [
        "weight_map names ../ (a valid file outside)",
        "weight_map names an absolute path (a valid file outside)",
        "weight_map names /etc/passwd",
        "weight_map names a missing shard",
        "shard is a symlink leading out",
        "weight_map a list",
        "weight_map a string",
        "weight_map null",
        "weight_map missing",
        "weight_map values ints",
        "index not JSON",
        "index 100000 levels deep",
        "weight_map names a pickle payload",
    ]
    specs = [Spec(category, "vavl", how, _index(how), "error", (INDEX, "weight_map")) for how in harmful]
    specs += [Spec(category, "vavl", how, _index(how), "any", (INDEX, "weight_map"))
              for how in ("valid one-shard index", "weight_map names a subfolder")]  # fmt: skip
    return specs


def processor_specs() -> list[Spec]:
    category = "processor configs"
    file = "processor_config.json"
    fe, ip = "feature_extractor", "image_processor"
    edits = [
        ((fe, "sampling_rate"), 0, "error", "zero"), ((fe, "sampling_rate"), -16000, "error", "negative"),
        ((fe, "sampling_rate"), 10**12, "error", "huge"), ((fe, "sampling_rate"), "16000", "error", "str"),
        ((fe, "normalization"), "evil", "error", "unknown"), ((fe, "global_std"), 0.0, "error", "zero std"),
        ((fe, "max_duration_seconds"), 0, "error", "zero"), ((fe, "max_duration_seconds"), -1, "error", "negative"),
        ((fe, "max_duration_seconds"), "x", "error", "str"), ((fe, "max_duration_seconds"), 1e12, "any", "huge"),
        ((fe, "padding_value"), "x", "error", "str"), ((fe, "feature_size"), 10**9, "error", "huge"),
        ((fe, "feature_extractor_type"), "Wav2Vec2FeatureExtractor", "any", "another class"),
        ((fe, "feature_extractor_type"), "evil.EvilFeatureExtractor", "any", "dotted name"),
        ((fe, "feature_extractor_type"), 5, "any", "int"),
        ((ip, "image_processor_type"), "EvilImageProcessor", "any", "unknown class"),
        ((ip, "image_processor_type"), "os.system", "any", "dotted name"),
        ((ip, "face_detector"), "/etc/passwd", "error", "outside path"),
        ((ip, "face_detector"), "../../evil_cascade.xml", "error", "relative path out"),
        ((ip, "face_detector"), "custom:os.system", "use", "custom class name"),
        ((ip, "face_detector"), {"cascade": "/etc/passwd"}, "error", "dict"),
        ((ip, "face_detector"), 5, "error", "int"),
        ((ip, "size"), {"height": 10**9, "width": 10**9}, "error", "huge"),
        ((ip, "size"), {"height": 0, "width": 32}, "error", "zero"),
        ((ip, "size"), {"height": -1, "width": 32}, "error", "negative"), ((ip, "size"), "32", "error", "str"),
        ((ip, "size"), None, "error", "null"), ((ip, "max_frames"), 0, "error", "zero"),
        ((ip, "max_frames"), -1, "error", "negative"), ((ip, "max_frames"), "x", "error", "str"),
        ((ip, "max_frames"), 10**12, "any", "huge (bounded by the clip)"),
        ((ip, "crop_scale"), -1.0, "error", "negative"), ((ip, "crop_scale"), 1e12, "error", "huge"),
        ((ip, "face_box_scale"), 0, "error", "zero"), ((ip, "detect_every"), 0, "error", "zero"),
        ((ip, "detect_every"), -1, "error", "negative"), ((ip, "detection_max_side"), 0, "error", "zero"),
        ((ip, "image_mean"), [], "error", "empty"), ((ip, "image_mean"), "x", "error", "str"),
        ((ip, "image_std"), [0, 0, 0], "error", "zero std"), ((ip, "rescale_factor"), "x", "error", "str"),
        ((ip, "resample"), 99, "error", "unknown filter"), ((ip, "do_resize"), "yes", "error", "str"),
        ((ip, "face_selection"), "evil", "error", "unknown"),
        (("processor_class",), "os.system", "any", "dotted name"),
        (("processor_class",), "EvilProcessor", "any", "unknown"),
        (("processor_class",), "../evil", "any", "path"), (("processor_class",), 5, "any", "int"),
        ((fe,), "x", "error", "str"), ((ip,), [1], "error", "list"),
        (("evil",), {"__class__": "os.system"}, "any", "extra key"),
    ]  # fmt: skip
    specs = [config_spec(category, "vavl", keys, value, expect, label, file, LOADING_TARGETS)
             for keys, value, expect, label in edits]  # fmt: skip

    def whole(how: str) -> Callable:
        def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
            path = directory / file
            if how == "not JSON":
                path.write_text('{"feature_extractor": ')
            elif how == "a JSON list":
                path.write_text("[]")
            elif how == "100000 levels deep":
                path.write_text(_deep())
            elif how == "empty":
                path.write_text("")

        return apply

    for how in ("not JSON", "a JSON list", "100000 levels deep", "empty"):
        specs.append(Spec(category, "vavl", f"{file} {how}", whole(how), "error", (file,), targets=LOADING_TARGETS))

    def tokenizer(how: str) -> Callable:
        def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
            config = directory / "tokenizer_config.json"
            if how == "tokenizer_class unknown":
                _set(config, ("tokenizer_class",), "EvilTokenizer")
            elif how == "tokenizer_class dotted":
                _set(config, ("tokenizer_class",), "os.system")
            elif how == "model_max_length huge":
                _set(config, ("model_max_length",), 10**30)
            elif how == "tokenizer_config.json not JSON":
                config.write_text("{")
            elif how == "tokenizer.json not JSON":
                (directory / "tokenizer.json").write_text("{")
            elif how == "tokenizer.json 100000 levels deep":
                (directory / "tokenizer.json").write_text(_deep())
            elif how == "vocab.txt empty":
                (directory / "vocab.txt").write_text("")
                (directory / "tokenizer.json").unlink(missing_ok=True)
            elif how == "vocab.txt binary":
                (directory / "vocab.txt").write_bytes(bytes(rng.integers(0, 256, size=300, dtype=np.uint8)))
                (directory / "tokenizer.json").unlink(missing_ok=True)

        return apply

    # a class name that is not there falls back to tokenizer.json (no import): harmless
    tokenizer_cases = [("tokenizer_class unknown", "any"), ("tokenizer_class dotted", "any"),
                       ("model_max_length huge", "any"), ("tokenizer_config.json not JSON", "error"),
                       ("tokenizer.json not JSON", "error"), ("tokenizer.json 100000 levels deep", "error"),
                       ("vocab.txt empty", "error"), ("vocab.txt binary", "any")]  # fmt: skip
    for how, expect in tokenizer_cases:
        names = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "tokenizer_class", "tokenizer")
        specs.append(Spec(category, "mlfusion", how, tokenizer(how), expect, names))
    return specs


def _remote(how: str) -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        marker = ctx_marker(directory)
        plant_module(directory, marker)
        config = directory / "config.json"
        evil_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                    "AutoModelForAudioClassification": "evil.EvilModel"}  # fmt: skip
        if how == "auto_map -> planted module":
            _set(config, ("auto_map",), evil_map)
        elif how == "auto_map -> planted module, model_type unknown":
            _set(config, ("auto_map",), evil_map)
            _set(config, ("model_type",), "evil")
        elif how == "auto_map -> planted module, model_type missing":
            _set(config, ("auto_map",), evil_map)
            _set(config, ("model_type",), DELETE)
        elif how == "auto_map -> ../ module":
            write_python_payload(directory.parent / f"{directory.name}_evil.py", marker, EVIL_CLASSES)
            _set(
                config, ("auto_map",), {k: f"../{directory.name}_evil.{v.split('.')[1]}" for k, v in evil_map.items()}
            )
            _set(config, ("model_type",), "evil")
        elif how == "auto_map -> another repo":
            _set(config, ("auto_map",), {k: f"evil-org/evil--{v}" for k, v in evil_map.items()})
        elif how == "custom_pipelines -> planted module":
            _set(
                config,
                ("custom_pipelines",),
                {
                    "audio-visual-emotion": {
                        "impl": "evil.EvilPipeline",
                        "pt": ["AutoModelForAudioClassification"],
                        "tf": [],
                        "type": "multimodal",
                    }
                },
            )
        elif how == "custom_pipelines -> planted module, task unknown":
            _set(config, ("custom_pipelines",), {"evil-task": {"impl": "evil.EvilPipeline", "pt": ["AutoModel"]}})
        elif how == "copied model code replaced by the payload":
            for path in directory.glob("*.py"):
                write_python_payload(path, marker)
        elif how == "__init__.py planted":
            write_python_payload(directory / "__init__.py", marker)
        elif how == "processor auto_map -> planted module":
            _set(directory / "processor_config.json", ("auto_map",), {"AutoProcessor": "evil.EvilProcessor"})
            _set(directory / "processor_config.json", ("processor_class",), "EvilProcessor")
        elif how == "preprocessor_config.json auto_map -> planted module":
            _write_json(
                directory / "preprocessor_config.json",
                {
                    "feature_extractor_type": "EvilFeatureExtractor",
                    "processor_class": "EvilProcessor",
                    "auto_map": {
                        "AutoFeatureExtractor": "evil.EvilFeatureExtractor",
                        "AutoProcessor": "evil.EvilProcessor",
                    },
                },
            )
        elif how == "tokenizer auto_map -> planted module":
            _set(directory / "tokenizer_config.json", ("auto_map",), {"AutoTokenizer": ["evil.EvilTokenizer", None]})
            _set(directory / "tokenizer_config.json", ("tokenizer_class",), "EvilTokenizer")
        else:
            raise AssertionError(how)

    return apply


def remote_specs() -> list[Spec]:
    category = "remote code: auto_map, custom_pipelines"
    names = ("auto_map", "model_type", "trust_remote_code", "custom_pipelines", "config.json", "processor_class")
    cases = [("vavl", "auto_map -> planted module", "any"),
    ("vavl", "auto_map -> planted module, model_type unknown", "error"),
             ("vavl", "auto_map -> planted module, model_type missing", "error"),
             ("vavl", "auto_map -> ../ module", "error"),
             ("vavl", "auto_map -> another repo", "any"), ("vavl", "custom_pipelines -> planted module", "any"),
             ("vavl", "custom_pipelines -> planted module, task unknown", "any"),
             ("vavl", "copied model code replaced by the payload", "any"), ("vavl", "__init__.py planted", "any"),
             ("vavl", "processor auto_map -> planted module", "any"),
             ("vavl", "preprocessor_config.json auto_map -> planted module", "any"),
             ("mlfusion", "auto_map -> planted module", "any"),
             ("mlfusion", "tokenizer auto_map -> planted module", "any"),
             ("mlfusion", "copied model code replaced by the payload", "any"),
             ("onnx", "auto_map -> planted module, model_type unknown", "error")]  # fmt: skip
    return [Spec(category, base, how, _remote(how), expect, names) for base, how, expect in cases]


def _plant(how: str, file: str, remove_weights: bool = False, variant: str = "exec") -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        if remove_weights:
            (directory / "model.safetensors").unlink()
        write_pickle(directory / file, ctx_marker(directory), variant)

    return apply


def model_pickle_specs() -> list[Spec]:
    category = "pickles in model dirs"
    specs = []
    for file, remove, variant, expect in [
        ("pytorch_model.bin", False, "torch-zip", "any"), ("pytorch_model.bin", True, "torch-zip", "error"),
        ("pytorch_model.bin", True, "exec", "error"), ("pytorch_model.bin", True, "os.system", "error"),
        ("pytorch_model.bin", True, "exec-p4", "error"), ("training_args.bin", False, "torch-zip", "any"),
        ("optimizer.pt", False, "exec", "any"), ("rng_state.pth", False, "torch-zip", "any"),
        ("model.safetensors", False, "torch-zip", "error"), ("preprocessor.pkl", False, "exec", "any"),
    ]:  # fmt: skip
        label = f"{file} ({variant} payload){', no model.safetensors' if remove else ''}"
        specs.append(Spec(category, "vavl", label, _plant(label, file, remove, variant), expect,
                          (file, "model.safetensors", "weights")))  # fmt: skip
    specs.append(Spec(category, "mlfusion", "pytorch_model.bin (torch-zip payload), no model.safetensors",
                      _plant("", "pytorch_model.bin", True, "torch-zip"), "error",
                      ("pytorch_model.bin", "model.safetensors", "weights")))  # fmt: skip
    return specs


ONNX_FILE = "model.onnx"


def _onnx_meta(how: str) -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        meta_path = directory / "onnx_config.json"
        meta = _read_json(meta_path)
        graph = meta["graphs"]["full"]
        first_input = sorted(graph["inputs"])[0]
        outside = directory.parent / f"{directory.name}-x.onnx"
        if how == "file = ../x.onnx (a valid graph outside)":
            (directory / ONNX_FILE).rename(outside)
            graph["file"] = f"../{outside.name}"
        elif how == "file = absolute path (a valid graph outside)":
            (directory / ONNX_FILE).rename(outside)
            graph["file"] = str(outside)
        elif how == "file = /etc/passwd":
            graph["file"] = "/etc/passwd"
        elif how == "file = sub/../model.onnx":
            graph["file"] = f"sub/../{ONNX_FILE}"
        elif how == "file = a missing graph":
            graph["file"] = "missing.onnx"
        elif how == "file with a NUL":
            graph["file"] = "model\x00.onnx"
        elif how.startswith("file = "):
            graph["file"] = {"file = 5": 5, "file = null": None, "file = ''": "", "file = [..]": [ONNX_FILE]}[how]
        elif how == "graph is a symlink leading out":
            (directory / ONNX_FILE).rename(outside)
            (directory / ONNX_FILE).symlink_to(outside)
        elif how.startswith("graphs = "):
            meta["graphs"] = {"graphs = []": [], "graphs = 'x'": "x", "graphs = {}": {}, "graphs = null": None}[how]
        elif how == "graphs missing":
            del meta["graphs"]
        elif how.startswith("missing "):
            del graph[how.split()[1]]
        elif how == "inputs = 'x'":
            graph["inputs"] = "x"
        elif how == "input dtype float128":
            graph["inputs"][first_input]["dtype"] = "float128"
        elif how == "input axes = 'x'":
            graph["inputs"][first_input]["axes"] = "x"
        elif how == "absent_shape huge":
            for spec in graph["inputs"].values():
                spec["absent_shape"] = [10**12] * max(1, len(spec.get("absent_shape", [1])))
        elif how == "absent_shape negative":
            for spec in graph["inputs"].values():
                spec["absent_shape"] = [-5] * max(1, len(spec.get("absent_shape", [1])))
        elif how == "outputs name a missing output":
            graph["outputs"] = ["evil"]
        elif how == "outputs = []":
            graph["outputs"] = []
        elif how == "ignored_inputs = 5":
            meta["ignored_inputs"] = 5
        elif how.startswith("input_spec"):
            if how == "input_spec = 'x'":
                meta["input_spec"] = "x"
            elif how == "input_spec missing":
                del meta["input_spec"]
            else:
                key, value = {"input_spec window_seconds huge": ("window_seconds", 1e12),
                              "input_spec window_seconds 0": ("window_seconds", 0),
                              "input_spec window_seconds str": ("window_seconds", "x")}[how]  # fmt: skip
                meta["input_spec"][key] = value
        elif how == "model_type of the other model":
            meta["model_type"] = "mlfusion"
        elif how == "format other":
            meta["format"] = "other"
        elif how == "not JSON":
            meta_path.write_text('{"graphs": ')
            return
        elif how == "a JSON list":
            meta_path.write_text("[]")
            return
        elif how == "100000 levels deep":
            meta_path.write_text(_deep())
            return
        elif how == "export_seconds str":
            graph["export_seconds"] = "x"
        else:
            raise AssertionError(how)
        _write_json(meta_path, meta)

    return apply


def onnx_meta_specs() -> list[Spec]:
    category = "onnx: onnx_config.json"
    harmful = ["file = ../x.onnx (a valid graph outside)", "file = absolute path (a valid graph outside)",
               "file = /etc/passwd", "file = a missing graph", "file with a NUL", "file = 5", "file = null",
               "file = ''", "file = [..]", "graph is a symlink leading out", "graphs = []", "graphs = 'x'",
               "graphs = {}", "graphs = null", "graphs missing", "missing file", "missing inputs", "missing outputs",
               "inputs = 'x'", "input dtype float128", "input axes = 'x'", "absent_shape huge",
               "absent_shape negative", "outputs name a missing output", "outputs = []", "ignored_inputs = 5",
               "input_spec = 'x'", "input_spec window_seconds huge", "input_spec window_seconds 0",
               "input_spec window_seconds str", "not JSON", "a JSON list", "100000 levels deep",
               "model_type of the other model"]  # fmt: skip
    names = ("onnx_config.json", "graphs", "file", "inputs", "outputs", "input_spec", "window_seconds", "dtype",
             "axes", "absent_shape", "ignored_inputs", "model_type")  # fmt: skip
    specs = [Spec(category, "onnx", how, _onnx_meta(how), "error", names) for how in harmful]
    specs += [
        Spec(category, "onnx", how, _onnx_meta(how), "any", names)
        for how in ("file = sub/../model.onnx", "input_spec missing", "format other", "export_seconds str")
    ]
    return specs


def _onnx_graph(how: str) -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        path = directory / ONNX_FILE
        data = path.read_bytes()
        if how == "truncated":
            path.write_bytes(data[: int(rng.integers(1, len(data)))])
        elif how == "garbage":
            path.write_bytes(bytes(rng.integers(0, 256, size=2048, dtype=np.uint8)))
        elif how == "empty":
            path.write_bytes(b"")
        elif how == "a pickle payload":
            write_pickle(path, ctx_marker(directory), "exec")
        elif how == "a directory":
            path.unlink()
            path.mkdir()
        elif how.startswith("external data"):
            import onnx
            from onnx.external_data_helper import set_external_data

            model = onnx.load_model_from_string(data)
            tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
            raw = tensor.raw_data
            if how == "external data at ../ (a valid file outside)":
                outside = directory.parent / f"{directory.name}-weights.bin"
                outside.write_bytes(raw)
                location = f"../{outside.name}"
            elif how == "external data at an absolute path (a valid file outside)":
                outside = directory.parent / f"{directory.name}-weights.bin"
                outside.write_bytes(raw)
                location = str(outside)
            elif how == "external data at /etc/passwd":
                location = "/etc/passwd"
            elif how == "external data beyond its file":
                (directory / "weights.bin").write_bytes(raw[: len(raw) // 2])
                location = "weights.bin"
            else:
                raise AssertionError(how)
            set_external_data(tensor, location=location, offset=0, length=len(raw))
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.ClearField("raw_data")
            path.write_bytes(model.SerializeToString())
        elif how == "opset 99":
            import onnx

            model = onnx.load_model_from_string(data)
            model.opset_import[0].version = 99
            path.write_bytes(model.SerializeToString())
        elif how == "graph input renamed":
            import onnx

            model = onnx.load_model_from_string(data)
            model.graph.input[0].name = "evil_input"
            for node in model.graph.node:
                node.input[:] = ["evil_input" if n == model.graph.input[0].name else n for n in node.input]
            path.write_bytes(model.SerializeToString())
        else:
            raise AssertionError(how)

    return apply


def onnx_graph_specs() -> list[Spec]:
    category = "onnx: graph files"
    hows = [
        "truncated",
        "garbage",
        "empty",
        "a pickle payload",
        "a directory",
        "external data at ../ (a valid file outside)",
        "external data at an absolute path (a valid file outside)",
        "external data at /etc/passwd",
        "external data beyond its file",
        "opset 99",
        "graph input renamed",
    ]
    return [Spec(category, "onnx", f"{ONNX_FILE}: {how}", _onnx_graph(how), "error",
                 (ONNX_FILE, "onnx_config.json", "weights.bin", "external")) for how in hows]  # fmt: skip


def run_pickle_specs() -> list[Spec]:
    category = "run: planted pickles"
    specs = []
    plants = [("custom_checkpoint_0.pkl", "exec"), ("random_states_0.pkl", "exec"),
    ("random_states_0.pkl", "os.system"),
              ("optimizer.bin", "torch-zip"), ("sampler.bin", "torch-zip"), ("scaler.pt", "torch-zip"),
              ("scheduler.bin", "exec"), ("dl_state_dict.bin", "torch-zip"), ("pytorch_model.bin", "torch-zip"),
              ("custom_checkpoint_1.pkl", "exec-p4"), ("state.pickle", "exec"),
              ("extra/state.pkl", "exec")]  # fmt: skip

    def plant(file: str, variant: str) -> Callable:
        def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
            path = _checkpoint(directory, ctx) / file
            path.parent.mkdir(exist_ok=True)
            write_pickle(path, ctx_marker(directory), variant)

        return apply

    for file, variant in plants:
        specs.append(Spec(category, "run", f"checkpoint/{file} ({variant} payload)", plant(file, variant), "error",
                          (Path(file).name,), strict=True))  # fmt: skip

    def disguised(file: str) -> Callable:
        def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
            write_pickle(_checkpoint(directory, ctx) / file, ctx_marker(directory), "exec")

        return apply

    for file in ("rng_state_0.json", "optimizer.safetensors", "trainer_state.json", "model.safetensors", "notes.dat"):
        specs.append(Spec(category, "run", f"checkpoint/{file} holds a pickle payload", disguised(file), "error",
                          (file,), strict=True))  # fmt: skip

    def outside_checkpoint(relative: str) -> Callable:
        def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
            path = directory / relative
            path.parent.mkdir(exist_ok=True)
            write_pickle(path, ctx_marker(directory), "exec")

        return apply

    for relative in ("random_states_0.pkl", "best_model/pytorch_model.bin"):
        specs.append(Spec(category, "run", f"output_dir/{relative} (exec payload, not in a checkpoint)",
                          outside_checkpoint(relative), "any", (Path(relative).name,)))  # fmt: skip
    return specs


def _json_lie(file: str, how: str) -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> str | None:
        path = _checkpoint(directory, ctx) / file
        if how == "not JSON":
            path.write_text("{")
            return None
        if how == "100000 levels deep":
            path.write_text(_deep())
            return None
        if how == "a JSON list":
            path.write_text("[]")
            return None
        document = _read_json(path)
        if how == "{}":
            _write_json(path, {})
            return None
        if how == "format 2":
            document["format"] = 2
        elif how == "state null":
            document["state"] = None
        else:  # change one leaf of the state: a number, a string or a tensor reference
            leaves = _leaves(document)
            if not leaves:
                return "no leaf to change"
            keys, leaf = leaves[int(rng.integers(len(leaves)))]
            value = {"leaf huge": 10**30, "leaf str": "x", "leaf NaN": math.nan, "leaf negative": -(10**9),
                     "leaf nested": {"__tensor__": "t999"}, "leaf object array": {"__ndarray__": "|O", "values": [1]},
                     "leaf malformed items": {"__items__": [[1]]}}[how]  # fmt: skip
            node = document
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = value
            _write_json(path, document)
            return f"{how} at {'.'.join(map(str, keys))[:60]} (was {json.dumps(leaf)[:30]})"
        _write_json(path, document)
        return None

    return apply


def _leaves(value: Any, keys: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return [(keys, value)]
        return [leaf for k, v in value.items() if k != "format" for leaf in _leaves(v, (*keys, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*keys, i))]
    return [(keys, value)]


TRAINER_STATE_EDITS = [("global_step", -1), ("global_step", 10**18), ("global_step", "2"), ("global_step", None),
                       ("global_step", 2.5), ("global_step", True), ("epoch", -1), ("epoch", 10**9), ("epoch", "0"),
                       ("step_in_epoch", 10**12), ("step_in_epoch", -1), ("step_in_epoch", "x"),
                       ("log_history", "x"), ("log_history", [5]), ("log_history", [{"epoch": "x", "eval": 5}]),
                       ("best_metric", "x"), ("best_epoch", "x"), ("nonfinite_skipped_batches", "x"),
                       ("consecutive_nonfinite_batches", 10**12), ("best_report", "x")]  # fmt: skip


def run_state_specs(run_files: tuple[str, ...]) -> list[Spec]:
    category = "run: state files"
    specs = []
    state = "trainer_state.json"

    def edit(key: str, value: Any) -> Callable:
        def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
            _set(_checkpoint(directory, ctx) / state, (key,), value)

        return apply

    for key, value in TRAINER_STATE_EDITS:
        specs.append(Spec(category, "run", f"{state}: {key} = {json.dumps(value)[:30]}", edit(key, value), "error",
                          (state, key)))  # fmt: skip
    for how in ("not JSON", "100000 levels deep", "a JSON list", "{}"):
        specs.append(Spec(category, "run", f"{state}: {how}", _json_lie(state, how), "error", (state,)))
    specs.append(Spec(category, "run", f"{state}: extra key", edit("__class__", "os.system"), "any", (state,)))
    # the state files the trainer's checkpoints hold now (JSON and safetensors besides the model directory's files)
    model_files = {"config.json", "model.safetensors", "README.md", "processor_config.json", state}
    for file in run_files:
        if file in model_files or "/" in file:
            continue
        if file.endswith(".json"):
            for how in ("not JSON", "100000 levels deep", "a JSON list", "{}", "format 2", "state null", "leaf huge",
                        "leaf str", "leaf NaN", "leaf negative", "leaf nested", "leaf object array",
                        "leaf malformed items"):  # fmt: skip
                specs.append(Spec(category, "run", f"{file}: {how}", _json_lie(file, how), "error", (file,)))
        elif file.endswith(".safetensors"):
            for how in (
                "huge header length",
                "header not JSON",
                "truncated in the data",
                "offsets overlap",
                "dtype F64 (byte count lies)",
                "shape one longer",
                "shape transposed",
                "tensor missing",
            ):
                specs.append(_st_spec(category, "run", how, "error", file, where=_checkpoint))
            specs.append(_st_spec(category, "run", "extra tensor", "any", file, where=_checkpoint))  # unreferenced
        elif file.endswith(PICKLE_LIKE):  # accelerate's own pickles (an older checkpoint format): payload in place
            specs.append(Spec(category, "run", f"{file} replaced by an exec payload",
                              _replace_in_checkpoint(file), "error", (file,), strict=True))  # fmt: skip
    for how in ("huge header length", "truncated in the data", "shape transposed", "offsets overlap"):
        specs.append(_st_spec(category, "run", how, "error", "model.safetensors", where=_checkpoint))
    specs.append(config_spec(category, "run", ("hidden_size",), 10**12, "any", "huge, in the checkpoint's model",
                             "config.json"))  # fmt: skip
    specs[-1].apply = _in_checkpoint(specs[-1].apply)

    def symlinked(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        checkpoints = directory / "checkpoints"
        outside = directory.parent / f"{directory.name}-outside-checkpoint"
        shutil.copytree(checkpoints / ctx.run_checkpoint, outside)
        (checkpoints / "checkpoint-9999999").symlink_to(outside, target_is_directory=True)

    # refused, or skipped for the checkpoint before it (with a warning): either way not resumed from (checked)
    specs.append(Spec(category, "run", "checkpoints/checkpoint-9999999 -> a valid checkpoint outside", symlinked,
                      "any", ("checkpoint-9999999",)))  # fmt: skip
    return specs


def _replace_in_checkpoint(file: str) -> Callable:
    def apply(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        write_pickle(_checkpoint(directory, ctx) / file, ctx_marker(directory), "torch-zip")

    return apply


def _in_checkpoint(apply: Callable) -> Callable:
    def wrapped(directory: Path, rng: np.random.Generator, ctx: Context) -> Any:
        return apply(_checkpoint(directory, ctx), rng, ctx)

    return wrapped


def harmless_specs() -> list[Spec]:
    category = "harmless edits"
    specs = [
        config_spec(category, "vavl", ("conformer_dropout",), 0.3, "any", "another dropout"),
        config_spec(category, "vavl", ("head_dropout",), 0.0, "any", "no dropout"),
        config_spec(category, "vavl", ("id2label",), {"0": "a", "1": "b", "2": "c"}, "any", "renamed labels"),
        config_spec(category, "vavl", ("initializer_range",), 0.5, "any", "another init"),
        config_spec(category, "vavl", ("evil_extra_field",), {"__class__": "os.system"}, "any", "unknown key"),
        config_spec(category, "vavl", ("transformers_version",), "99.0.0", "any", "newer version"),
        config_spec(category, "vavl", ("window_seconds",), 2.0, "any", "another window"),
        config_spec(
            category,
            "vavl",
            ("feature_extractor", "max_duration_seconds"),
            1000.0,
            "any",
            "a limit",
            "processor_config.json",
            LOADING_TARGETS,
        ),
        config_spec(category, "mlfusion", ("hidden_dropout",), 0.2, "any", "another dropout"),
        config_spec(category, "onnx", ("conformer_dropout",), 0.3, "any", "another dropout"),
    ]

    def readme(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        (directory / "README.md").write_bytes(b"---\nlicense: [\n---\n\xff\xfe" + bytes(200))
        (directory / "notes.txt").write_text("nothing to see")

    specs.append(Spec(category, "vavl", "README.md garbage, extra notes.txt", readme, "any", ()))

    def log(directory: Path, rng: np.random.Generator, ctx: Context) -> None:
        (directory / "training_log.jsonl").write_text("{not json\n")

    specs.append(Spec(category, "run", "training_log.jsonl garbage", log, "any", ("training_log.jsonl",)))
    return specs


def all_specs(ctx: Context) -> list[Spec]:
    return [*vavl_config_specs(), *backbone_config_specs(), *fusion_config_specs(), *structure_specs(),
            *safetensors_specs(), *index_specs(), *processor_specs(), *remote_specs(), *model_pickle_specs(),
            *onnx_meta_specs(), *onnx_graph_specs(), *run_pickle_specs(), *run_state_specs(ctx.run_files),
            *harmless_specs()]  # fmt: skip


def ctx_marker(directory: Path) -> Path:
    """The marker file of the case directory `directory` (outside it)."""
    return directory.parent.parent / "markers" / f"{directory.name}.marker"


def select(specs: list[Spec], count: int, rng: np.random.Generator) -> list[Spec]:
    """`count` specs, round-robin over the categories (each shuffled), so that a small count covers every category;
    past the end of the list it starts again (the rng gives each pass other details)."""
    by_category: dict[str, list[Spec]] = defaultdict(list)
    for spec in specs:
        by_category[spec.category].append(spec)
    for group in by_category.values():
        rng.shuffle(group)
    order = []
    depth = max(len(group) for group in by_category.values())
    for index in range(depth):
        for category in sorted(by_category):
            if index < len(by_category[category]):
                order.append(by_category[category][index])
    return [order[i % len(order)] for i in range(count)]


def generate(ctx: Context, count: int, seed: int, only: str | None = None) -> list[Case]:
    rng = np.random.default_rng(seed)
    (ctx.root / "cases").mkdir(exist_ok=True)
    (ctx.root / "markers").mkdir(exist_ok=True)
    cases = []
    specs = [spec for spec in all_specs(ctx) if only is None or only in f"{spec.category}: {spec.base}: {spec.label}"]
    for index, spec in enumerate(select(specs, count or len(specs), rng)):
        name = f"d{index:04d}"
        path = ctx.root / "cases" / name
        shutil.copytree(ctx.bases[spec.base], path, symlinks=True)
        detail = spec.apply(path, rng, ctx)
        mutation = spec.label if not detail or detail in spec.label else f"{spec.label} [{detail}]"
        targets = tuple(t for t in (spec.targets or BASE_TARGETS[spec.base]) if t in BASE_TARGETS[spec.base])
        cases.append(Case(name, spec.category, spec.base, mutation, spec.expect, spec.names, spec.strict, targets,
                          path, ctx_marker(path)))  # fmt: skip
    return cases


# ------------------------------------------------------------------------------------------------------ the bases


def _cli(argv: list[str]) -> Any:
    """`avemotion ARGV` in-process, as `avemotion_cli.main` runs it, but the command's exception comes back."""
    from avemotion_cli import _command_of, build_parser

    args = build_parser(_command_of(argv)).parse_args(argv)
    return importlib.import_module(args._module).run(args)


def _features_dataset(path: Path, rows: int, audio_dim: int, visual_dim: int, splits: tuple[str, ...]) -> None:
    import datasets

    features = datasets.Features({
        "audio_features": datasets.List(datasets.List(datasets.Value("float32"))),
        "visual_features": datasets.List(datasets.List(datasets.Value("float32"))),
        "label": datasets.ClassLabel(names=["angry", "happy", "neutral"]),
    })  # fmt: skip
    rng = np.random.default_rng(0)
    parts = {}
    for split in splits:
        data = {"audio_features": [], "visual_features": [], "label": []}
        for index in range(rows):
            audio = rng.normal(0, 1, (int(rng.integers(4, 7)), audio_dim)).astype("float32")
            visual = rng.normal(0, 1, (int(rng.integers(3, 5)), visual_dim)).astype("float32")
            audio[:, index % 3] += 2
            visual[:, index % 3] += 2
            data["audio_features"].append(audio)
            data["visual_features"].append(visual)
            data["label"].append(index % 3)
        parts[split] = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(path))


def build_bases(root: Path) -> Context:
    """The valid tiny directories every case is copied from, and the targets' inputs."""
    import torch
    from media_testing import face_frames, tone, write_video
    from mlfusion_testing import tiny_config, tiny_tokenizer
    from torch import nn
    from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

    from avemotion import (
        AvEmotionFeatureExtractor,
        AvEmotionImageProcessor,
        AvEmotionProcessor,
        MultiLevelFusionForEmotionRecognition,
        VavlForEmotionRecognition,
    )
    from avemotion.models.onnx_export import export_onnx

    bases = root / "bases"
    bases.mkdir(parents=True)
    torch.manual_seed(0)
    config = tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config(),
                              visual_backbone_config=tiny_efficientnet_config(), visual_feature_dim=128,
                              window_seconds=1.0)  # fmt: skip
    model = VavlForEmotionRecognition(config).eval()
    for module in model.vavl.visual_backbone.modules():  # a tiny random EfficientNet passes ~0 otherwise
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)

    def processor(tokenizer=None) -> AvEmotionProcessor:
        return AvEmotionProcessor(
            AvEmotionFeatureExtractor(sampling_rate=16000, normalization="utterance"),
            AvEmotionImageProcessor(face_detector=None, size={"height": 32, "width": 32}, max_frames=8),
            tokenizer,
        )

    vavl = bases / "vavl"
    model.save_pretrained(vavl)
    processor().save_pretrained(vavl)

    fusion = bases / "mlfusion"
    fusion.mkdir()
    (root / "tokenizer").mkdir()
    tokenizer = tiny_tokenizer(root / "tokenizer")
    fusion_model = MultiLevelFusionForEmotionRecognition(
        tiny_config(granularities=["frame"], fusion_members=["audio_frame", "early_frame", "text"])
    ).eval()
    fusion_model.save_pretrained(fusion)
    processor(tokenizer).save_pretrained(fusion)

    onnx_dir = bases / "onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        export_onnx(str(vavl), onnx_dir, parts="full")

    frames, _ = face_frames(6, height=48, width=48, face_size=24)
    clip = write_video(root / "clip.mp4", frames, fps=10, audio=tone(0.6, 16000), audio_rate=16000)
    _features_dataset(root / "eval-data", 6, 16, 128, ("test",))
    _features_dataset(root / "run-data", 12, 16, 12, ("train", "validation"))

    run = bases / "run"
    argv = ["train", "--dataset", str(root / "run-data"), "--output_dir", str(run), *RUN_OPTIONS,
            "--config_overrides", json.dumps(RUN_CONFIG)]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        _cli(argv)
    (checkpoint,) = sorted(path.name for path in (run / "checkpoints").iterdir() if path.is_dir())
    files = tuple(sorted(str(p.relative_to(run / "checkpoints" / checkpoint))
                         for p in (run / "checkpoints" / checkpoint).rglob("*") if p.is_file()))  # fmt: skip
    return Context(root, {"vavl": vavl, "mlfusion": fusion, "onnx": onnx_dir, "run": run}, Path(clip),
                   root / "eval-data", root / "run-data", checkpoint, files)  # fmt: skip


# ------------------------------------------------------------------------------------------------------- targets


class LineError(ValueError):
    """`avemotion predict` reported the input on an error line (exit status 1) instead of raising."""


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def target_from_pretrained(case: Case, ctx: Context, scratch: Path) -> None:
    from transformers import AutoConfig, AutoModel, AutoProcessor

    from avemotion import AutoModelForEmotionRecognition

    directory = str(case.path)
    AutoConfig.from_pretrained(directory)
    if case.base == "onnx":
        from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

        OnnxRuntimeEmotionModel.from_pretrained(directory)
    else:
        AutoModelForEmotionRecognition.from_pretrained(directory)
        AutoModel.from_pretrained(directory)
    AutoProcessor.from_pretrained(directory)


def target_pipeline(case: Case, ctx: Context, scratch: Path) -> None:
    from transformers import pipeline

    pipe = pipeline("audio-visual-emotion", model=str(case.path))
    result = pipe({"audio": str(ctx.clip), "text": TEXT} if case.base == "mlfusion" else str(ctx.clip))
    if not _finite(result):
        raise AssertionError(f"non-finite scores: {str(result)[:120]}")


def target_predict(case: Case, ctx: Context, scratch: Path) -> None:
    argv = ["predict", "--model", str(case.path), "--json", str(ctx.clip)]
    if case.base == "mlfusion":
        argv += ["--text", TEXT]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = _cli(argv)
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    errors = [line["error"] for line in lines if "error" in line]
    if status or errors:
        raise LineError(errors[0] if errors else f"exit status {status}, no error line")
    if not lines or not _finite(lines[0]["result"]):
        raise AssertionError(f"no or non-finite result: {out.getvalue()[:120]}")


def target_evaluate(case: Case, ctx: Context, scratch: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        _cli(["evaluate", "--model", str(case.path), "--dataset", str(ctx.eval_data), "--split", "test",
              "--output", str(scratch / "eval.json")])  # fmt: skip


def target_export_onnx(case: Case, ctx: Context, scratch: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        _cli(["export-onnx", "--model", str(case.path), "--output_dir", str(scratch / "onnx"), "--parts", "heads",
              "--no_check"])  # fmt: skip


def target_train_resume(case: Case, ctx: Context, scratch: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _cli(["train", "--dataset", str(ctx.run_data), "--output_dir", str(case.path), *RUN_OPTIONS, "--resume",
              "--config_overrides", json.dumps(RUN_CONFIG)])  # fmt: skip
    # the checkpoint it resumed from (the trainer prints "resumed from DIR: ...") is one of this run's, not a
    # folder outside it that a symlink in checkpoints/ leads to
    for line in out.getvalue().splitlines():
        if line.startswith("resumed from "):
            resumed = Path(line.removeprefix("resumed from ").split(": epoch")[0])
            if not resumed.resolve().is_relative_to(case.path.resolve()):
                raise AssertionError(f"resumed from {resumed}, which leads out of the run directory")


# target name -> function(case, ctx, scratch): returns on success, raises what the package raises
TARGET_FUNCTIONS: dict[str, Callable[[Case, Context, Path], None]] = {
    "from_pretrained": target_from_pretrained,
    "pipeline": target_pipeline,
    "predict": target_predict,
    "evaluate": target_evaluate,
    "export-onnx": target_export_onnx,
    "train --resume": target_train_resume,
}


def _location(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"


def _child(case: Case, target: str, ctx: Context, scratch: Path, result_file: Path) -> None:
    """The forked process of one (case, target): runs it and writes what happened to `result_file`."""
    outcome: dict[str, Any]
    try:
        os.setpgid(0, 0)
        log = open(scratch / "log.txt", "w")  # noqa: SIM115 - the process ends with os._exit
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_CAP, size + MEMORY_CAP))
        import torch
        import transformers.dynamic_module_utils as dynamic

        torch.set_num_threads(1)
        dynamic.HF_MODULES_CACHE = str(scratch / "modules")
        started = time.perf_counter()
        TARGET_FUNCTIONS[target](case, ctx, scratch)
        outcome = {"status": "ok", "seconds": time.perf_counter() - started}
    except BaseException as error:  # noqa: BLE001 - classified by the parent
        outcome = {
            "status": "error",
            "type": type(error).__name__,
            "clean_type": isinstance(error, (ValueError, OSError)) and not isinstance(error, LineError),
            "line": isinstance(error, LineError),
            "message": str(error)[:2000],
            "where": _location(error),
        }
    try:
        result_file.write_text(json.dumps(outcome))
    finally:
        os._exit(0)


def classify(case: Case, target: str, outcome: dict[str, Any] | None, marker: bool, hang: bool) -> tuple[str, str]:
    """(outcome, detail): ok, clean error, or FAIL (code executed, hang, died, unclear error, accepted)."""
    if marker:
        return "FAIL", "code executed: the payload wrote its marker file"
    if hang:
        return "FAIL", f"hang: no result within {TIMEOUT:.0f} s"
    if outcome is None:
        return "FAIL", "the process died without a result (killed for memory, or crashed)"
    if outcome["status"] == "ok":
        if case.expect == "error" or (case.expect == "use" and target != "from_pretrained"):
            return "FAIL", "accepted: no error for a directory that must be refused"
        return "ok", ""
    message = outcome["message"]
    first = message.strip().splitlines()[0][:240] if message.strip() else ""
    kind = "error line" if outcome["line"] else outcome["type"]
    if not (outcome["clean_type"] or outcome["line"]):
        return "FAIL", f"{kind}: {first} [{outcome['where']}]"
    directories = {str(case.path), str(case.path.resolve())}
    named = [n for n in case.names if n in message]
    if not case.strict:
        named += [d for d in directories if d in message]
    if not named:
        return "FAIL", f"{kind} naming none of {list(case.names) or 'the directory'}: {first} [{outcome['where']}]"
    return "clean error", f"{kind}: {first}"


def run_cases(cases: list[Case], ctx: Context, jobs: int) -> Counter:
    """Every (case, target) in a forked process, `jobs` at a time; the targets of one case one after the other."""
    timings: Counter = Counter()
    ready = deque((case, deque(case.targets)) for case in cases)
    active: dict[int, tuple[Case, deque, str, float, Path]] = {}
    scratch_root = ctx.root / "scratch"
    scratch_root.mkdir(exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        _run_queue(ready, active, ctx, jobs, scratch_root, timings)
    finally:  # interrupted: no forked process outlives the harness
        for pid in active:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return timings


def _run_queue(ready: deque, active: dict, ctx: Context, jobs: int, scratch_root: Path, timings: Counter) -> None:
    while ready or active:
        while ready and len(active) < jobs:
            case, targets = ready.popleft()
            target = targets.popleft()
            scratch = scratch_root / f"{case.name}-{target.replace(' ', '').replace('-', '')}"
            scratch.mkdir()
            result_file = scratch / "result.json"
            pid = os.fork()
            if pid == 0:
                _child(case, target, ctx, scratch, result_file)
            active[pid] = (case, targets, target, time.perf_counter(), result_file)
        time.sleep(0.01)
        for pid in list(active):
            case, targets, target, started, result_file = active[pid]
            finished, _ = os.waitpid(pid, os.WNOHANG)
            hang = False
            if not finished:
                if time.perf_counter() - started < TIMEOUT:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hang = True
            del active[pid]
            timings[target] += time.perf_counter() - started
            outcome = json.loads(result_file.read_text()) if result_file.is_file() and not hang else None
            marker = case.marker.exists()
            case.marker.unlink(missing_ok=True)
            case.results[target] = classify(case, target, outcome, marker, hang)
            if targets:
                ready.appendleft((case, targets))


# --------------------------------------------------------------------------------------------------------- run


@contextlib.contextmanager
def _quiet():
    """No progress bars and only errors from the libraries and the package (bad directories warn a lot)."""
    import datasets
    from transformers.utils import logging as hf_logging

    bars = (hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    verbosity, package = hf_logging.get_verbosity(), logging.getLogger("avemotion")
    level = package.level
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    package.setLevel(logging.ERROR)
    try:
        yield
    finally:
        package.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        if bars[0]:
            hf_logging.enable_progress_bar()
        if bars[1]:
            datasets.enable_progress_bars()


def fuzz(
    count: int = 0, seed: int = 0, fast: bool = False, jobs: int = 2, keep: Path | None = None, only: str | None = None
) -> dict:
    """Build the bases, craft `count` directories (`fast`: 20; 0: one of each kind, all of them), run them through
    their targets; returns the counts and the failures.

    The unchanged bases go first: a target that fails on its valid base (the package cannot do it at all) is left
    out for that base's directories and reported in `skipped_targets`."""
    count = 20 if fast else count
    folder = tempfile.mkdtemp(prefix="avemotion-fuzz-dirs-") if keep is None else str(keep)
    try:
        with _quiet():
            return _fuzz(Path(folder), count, seed, fast, jobs, only)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _warm_up() -> None:
    """Import what the targets use before forking, so that each forked process does not import it again."""
    for name in (
        "onnxruntime",
        "avemotion.models.onnx_runtime",
        "avemotion.pipelines.cli_predict",
        "avemotion.pipelines.cli_export_onnx",
        "avemotion.training.cli_train",
        "avemotion.training.cli_evaluate",
        "avemotion.training.trainer",
        "transformers.pipelines",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _fuzz(root: Path, count: int, seed: int, fast: bool, jobs: int, only: str | None) -> dict:
    started = time.perf_counter()
    _warm_up()
    ctx = build_bases(root)
    built = time.perf_counter() - started
    (root / "cases").mkdir(exist_ok=True)
    (root / "markers").mkdir(exist_ok=True)
    baseline = []
    for name, path in ctx.bases.items():
        case_path = root / "cases" / f"base-{name}"
        shutil.copytree(path, case_path, symlinks=True)  # a copy: resuming writes into the run directory
        baseline.append(Case(f"base-{name}", "valid bases (unchanged)", name, "none", "any", (), False,
                             BASE_TARGETS[name], case_path, ctx_marker(case_path)))  # fmt: skip
    timings = run_cases(baseline, ctx, jobs)
    skipped = {case.base: {t: r[1] for t, r in case.results.items() if r[0] != "ok"} for case in baseline}
    checked = time.perf_counter() - started - built
    cases = generate(ctx, count, seed, only)
    for case in cases:
        case.targets = tuple(t for t in case.targets if t not in skipped[case.base])
    generated = time.perf_counter() - started - built - checked
    timings.update(run_cases(cases, ctx, jobs))
    elapsed = time.perf_counter() - started
    result = summarise(baseline + cases, count, seed, fast, jobs)
    result["skipped_targets"] = {base: targets for base, targets in skipped.items() if targets}
    result["seconds"] = {"bases": round(built, 2), "baseline": round(checked, 2), "generate": round(generated, 2),
                         "total": round(elapsed, 2),
                         **{target: round(value, 2) for target, value in timings.items()}}  # fmt: skip
    result["checkpoint_files"] = list(ctx.run_files)
    return result


def summarise(cases: list[Case], count: int, seed: int, fast: bool, jobs: int) -> dict[str, Any]:
    table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    failures, cleans = [], Counter()
    for case in cases:
        for target, (outcome, detail) in case.results.items():
            table[case.category][target][outcome] += 1
            table["all"][target][outcome] += 1
            if outcome == "FAIL":
                failures.append({"directory": case.name, "category": case.category, "base": case.base,
                                 "mutation": case.mutation, "target": target, "detail": detail})  # fmt: skip
            elif outcome == "clean error":
                cleans[detail.split(":")[0]] += 1
    return {
        "directories": len(cases),
        "requested": count,
        "seed": seed,
        "fast": fast,
        "jobs": jobs,
        "targets": list(TARGETS),
        "counts": {group: {t: dict(c) for t, c in by_target.items()} for group, by_target in table.items()},
        "clean_error_types": dict(cleans),
        "failures": failures,
        "cases": [
            {
                "directory": c.name,
                "category": c.category,
                "mutation": c.mutation,
                "expect": c.expect,
                "results": {t: list(r) for t, r in c.results.items()},
            }
            for c in cases
        ],  # fmt: skip
    }


def print_table(result: dict[str, Any]) -> None:
    targets = result["targets"]
    header = f"{'category':<42}" + "".join(f"{t:>16}" for t in targets)
    print(header)
    print(" " * 42 + "".join(f"{'ok/clean/FAIL':>16}" for _ in targets))
    for group in sorted(result["counts"], key=lambda g: (g == "all", g)):
        row = result["counts"][group]
        cells = []
        for target in targets:
            c = row.get(target)
            cells.append(f"{c.get('ok', 0)}/{c.get('clean error', 0)}/{c.get('FAIL', 0)}" if c else "-")
        print(f"{group:<42}" + "".join(f"{cell:>16}" for cell in cells))
    for base, targets in result["skipped_targets"].items():
        for target, detail in targets.items():
            print(f"skipped: {target} on every {base} directory (fails on the valid base: {detail})")
    print(f"\nclean errors by type: {result['clean_error_types']}")
    print(f"seconds: {result['seconds']}")
    print(f"{result['directories']} directories in {result['seconds']['total']:.1f} s; {len(result['failures'])} FAIL")
    for failure in result["failures"]:
        print(
            f"  FAIL {failure['target']:<15} {failure['directory']} {failure['base']} [{failure['mutation']}]: "
            f"{failure['detail']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=0, help="directories to craft (0: every kind once, ~590)")
    parser.add_argument("--fast", action="store_true", help="20 directories, every category")
    parser.add_argument("--jobs", type=int, default=2, help="targets run at once (forked processes)")
    parser.add_argument("--keep", type=Path, default=None, help="build in this (new) folder and keep it")
    parser.add_argument("--only", default=None, help="only the kinds whose 'category: base: mutation' has this text")
    parser.add_argument("--output", type=Path, default=RESULTS / "fuzz_model_dirs.json")
    args = parser.parse_args()
    result = fuzz(args.count, args.seed, args.fast, args.jobs, args.keep, args.only)
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
