"""`OnnxRuntimeEmotionModel`: an exported avemotion model run with ONNX Runtime, behind the interface the pipeline
uses on a PyTorch model (`config`, `device`, `dtype`, `eval()`, `model(**inputs).logits`).

`pipeline("audio-visual-emotion", model=OUT)` loads it for a directory written by `avemotion export-onnx`
(`avemotion.models.onnx_export`). Generic: it runs whatever graphs `onnx_config.json` describes and names no model.
Module import is light: onnxruntime is imported when a model is loaded.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avemotion.utils.paths import contained_file

# written next to the graphs by the export: which graph takes which inputs, how an absent input is filled
ONNX_CONFIG_NAME = "onnx_config.json"
ONNX_FORMAT = "avemotion-onnx"
_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64}
# the zeros that stand for an absent input are one wav2vec2 frame or a tiny image per row: a crafted shape must not
# allocate gigabytes at the first call
MAX_ABSENT_ELEMENTS = 1 << 20
# the analysis window an export may declare (`input_spec.window_seconds`): the pipeline's shortest window (one model
# frame, `pipelines.audio_visual_emotion.MIN_WINDOW_SECONDS`) to the longest a config allows (`window_seconds` in
# (0, 3600])
MIN_WINDOW_SECONDS = 0.025
MAX_WINDOW_SECONDS = 3600.0
# ONNX Runtime's type of a graph input, by the dtype onnx_config.json declares
_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}


class OnnxRuntimeOutput(dict):
    """The graph's outputs by name as torch tensors, readable as attributes (`out.logits`) like a ModelOutput."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OnnxRuntimeEmotionModel:
    """An exported avemotion model (one or two ONNX graphs) run with ONNX Runtime.

    `forward(**inputs)` takes the inputs of the PyTorch model (tensors or arrays) and picks the graph whose inputs
    cover them: features for the `heads` graph, raw audio / face crops / token ids for the `full` graph. An input
    the graph has but the call lacks (a modality absent for the whole batch) is filled with zeros and an all-zero
    mask, which the graphs treat as an absent modality, as the PyTorch model does.
    """

    main_input_name = "input_values"
    backend = "onnxruntime"

    def __init__(self, config, directory: Path, meta: dict[str, Any], sessions: dict[str, Any]):
        self.config = config
        self.name_or_path = str(directory)
        self.meta = meta
        self.sessions = sessions

    # -- loading --------------------------------------------------------------------------------------------------

    @classmethod
    def is_exported_directory(cls, path: str | Path) -> bool:
        return (Path(path) / ONNX_CONFIG_NAME).is_file()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        providers: list[str] | None = None,
        session_options: Any = None,
        num_threads: int | None = None,
        **kwargs: Any,
    ) -> OnnxRuntimeEmotionModel:
        """Load a directory written by `avemotion export-onnx`.

        Args:
            providers: ONNX Runtime execution providers (default: CPU).
            session_options: an `onnxruntime.SessionOptions`.
            num_threads: intra-op threads (default: ONNX Runtime's choice).
            kwargs: pipeline loading options; a `dtype` other than float32 and a non-CPU `device_map` are errors.
        """
        directory = Path(path)
        if not directory.is_dir():
            what = "is not a directory" if directory.exists() else "does not exist"
            raise OSError(f"{directory} {what}: an ONNX export is loaded from a local directory")
        if not os.path.lexists(directory / ONNX_CONFIG_NAME):
            raise OSError(f"{directory} has no {ONNX_CONFIG_NAME}: not a directory written by `avemotion export-onnx`")
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if dtype not in (None, "auto", torch.float32, "float32"):
            raise ValueError(f"the ONNX Runtime model runs in float32; got dtype={dtype}")
        device_map = kwargs.get("device_map")
        if device_map not in (None, "cpu", "auto"):
            raise ValueError(f"the ONNX Runtime model runs on the CPU execution provider; got device_map={device_map}")
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("ONNX Runtime inference needs the onnx extra: pip install 'avemotion[onnx]'") from error
        # the avemotion configs are registered with AutoConfig: importing this module ran `avemotion/__init__.py`
        from transformers import AutoConfig

        meta = read_onnx_config(directory)
        graph_files = checked_graph_files(directory, meta)  # every graph, before any is opened by ONNX Runtime
        # the caller's explicit size bound reaches the config (a file never sets it)
        limits = {"max_parameters": kwargs["max_parameters"]} if "max_parameters" in kwargs else {}
        try:
            config = AutoConfig.from_pretrained(directory, **limits)
        except (OSError, ValueError, KeyError, TypeError) as error:
            message = " ".join(str(error).split())[:500]
            if str(directory) in message:
                raise
            raise ValueError(f"{directory / 'config.json'}: cannot load the config ({message})") from error
        if "model_type" in meta and meta["model_type"] != config.model_type:
            raise ValueError(
                f"{directory / ONNX_CONFIG_NAME}: model_type {meta['model_type']!r} differs from config.json's "
                f"{config.model_type!r}: the graphs were not exported from the model config.json describes"
            )
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            if num_threads:
                session_options.intra_op_num_threads = int(num_threads)
        providers = providers or ["CPUExecutionProvider"]
        sessions = {}
        for part, file in graph_files.items():
            if not file.is_file():
                what = "is not a file" if os.path.lexists(file) else "does not exist"
                raise ValueError(f"{file} {what}: the graph graphs.{part}.file of {directory / ONNX_CONFIG_NAME}")
            try:
                sessions[part] = onnxruntime.InferenceSession(str(file), session_options, providers=providers)
            except Exception as error:  # noqa: BLE001 - ONNX Runtime's InvalidProtobuf, Fail, ...: name the file
                reason = " ".join(str(error).split())[:500]
                raise ValueError(
                    f"{file}: ONNX Runtime cannot load the graph ({type(error).__name__}: {reason})"
                ) from error
            check_session_signature(sessions[part], meta["graphs"][part], file, f"graphs.{part}")
        return cls(config, directory, meta, sessions)

    # -- the PyTorch-model interface the pipeline uses ------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def eval(self) -> OnnxRuntimeEmotionModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxRuntimeEmotionModel:
        target = kwargs.get("device", args[0] if args else None)
        if target is not None and not isinstance(target, torch.dtype) and torch.device(target).type != "cpu":
            raise ValueError(f"the ONNX Runtime model runs on the CPU; cannot move it to {target}")
        return self

    def can_generate(self) -> bool:
        return False

    def input_spec(self) -> dict[str, Any]:
        """The exported model's input declaration (see the PyTorch model's `input_spec`), as recorded at export; a
        directory exported before it was recorded gets it from its config (the model built on the meta device)."""
        if "input_spec" not in self.meta:
            from avemotion.models.auto import AutoModelForEmotionRecognition

            with torch.device("meta"):
                self.meta["input_spec"] = AutoModelForEmotionRecognition.from_config(self.config).input_spec()
        return self.meta["input_spec"]

    def __call__(self, **inputs: Any) -> OnnxRuntimeOutput:
        return self.forward(**inputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name_or_path!r}, graphs={sorted(self.sessions)})"

    # -- inference ------------------------------------------------------------------------------------------------

    def forward(self, **inputs: Any) -> OnnxRuntimeOutput:
        for name in ("labels", "output_attentions", "output_hidden_states"):
            if inputs.get(name):
                raise ValueError(f"`{name}` is not supported by the exported (inference-only) model")
        given = {name: value for name, value in inputs.items() if value is not None and name not in ("return_dict",
                 "labels", "output_attentions", "output_hidden_states", "token_type_ids")}  # fmt: skip
        for name in self.meta.get("ignored_inputs", []):
            given.pop(name, None)
        part = self._select_graph(given)
        graph = self.meta["graphs"][part]
        batch = next(iter(given.values())).shape[0]
        feed = {}
        for name, spec in graph["inputs"].items():
            value = given.get(name)
            dtype = _NUMPY_DTYPES[spec["dtype"]]
            if value is None:
                feed[name] = np.zeros((batch, *spec["absent_shape"]), dtype=dtype)
                continue
            array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
            if array.ndim != len(spec["axes"]) or array.shape[0] != batch:
                raise ValueError(
                    f"`{name}` must have {len(spec['axes'])} axes {spec['axes']} and batch size {batch}, got shape "
                    f"{tuple(array.shape)}"
                )
            fixed = [(i, a) for i, a in enumerate(spec["axes"]) if isinstance(a, int) and array.shape[i] != a]
            if fixed:
                raise ValueError(f"`{name}` must be {spec['axes']}, got shape {tuple(array.shape)}")
            feed[name] = np.ascontiguousarray(array, dtype=dtype)
        outputs = self.sessions[part].run(graph["outputs"], feed)
        result = OnnxRuntimeOutput((name, torch.from_numpy(out)) for name, out in zip(graph["outputs"], outputs))
        empty = torch.isnan(result["logits"]).all(dim=-1)
        if bool(empty.any()):
            raise ValueError(
                f"Rows {empty.nonzero().flatten().tolist()} have no input for any head (all-zero masks: no modality)."
            )
        return result

    def _select_graph(self, given: dict[str, Any]) -> str:
        graphs = self.meta["graphs"]
        names = set(given)
        covering = [part for part, graph in graphs.items() if names <= set(graph["inputs"])]
        if not covering:
            available = {part: sorted(graph["inputs"]) for part, graph in graphs.items()}
            raise ValueError(
                f"No exported graph takes the inputs {sorted(names)}; this export has {available}"
                + (" (export --parts full for raw audio/video/text)" if "full" not in graphs else "")
                + (" (export --parts heads for pre-extracted features)" if "heads" not in graphs else "")
            )
        # the graph whose own inputs are most covered (features vs raw media)
        return max(covering, key=lambda part: len(names & set(graphs[part]["inputs"])))


# -- onnx_config.json: data, checked before use -----------------------------------------------------------------------


def _fail(source: Path, field: str, expected: str, value: Any) -> ValueError:
    shown = repr(value) if len(repr(value)) <= 200 else repr(value)[:200] + "..."
    return ValueError(f"{source}: {field}: expected {expected}, got {shown}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_names(value: Any, source: Path, field: str, non_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (non_empty and not value):
        raise _fail(source, field, "a list of names" + (" (at least one)" if non_empty else ""), value)
    return value


def _check_input(spec: Any, source: Path, field: str) -> None:
    """One graph input: `{"dtype", "axes", "absent_shape"}` as `onnx_export.input_spec` writes it."""
    if not isinstance(spec, dict):
        raise _fail(source, field, "an object with dtype, axes and absent_shape", spec)
    if spec.get("dtype") not in _NUMPY_DTYPES:
        raise _fail(source, f"{field}.dtype", f"one of {sorted(_NUMPY_DTYPES)}", spec.get("dtype"))
    axes, absent = spec.get("axes"), spec.get("absent_shape")
    if not isinstance(axes, list) or not axes or not all((isinstance(a, str) and a) or _is_int(a) for a in axes):
        raise _fail(source, f"{field}.axes", "a non-empty list of axis names and sizes", axes)
    if (
        not isinstance(absent, list)
        or len(absent) != len(axes) - 1
        or not all(_is_int(n) and n >= 0 for n in absent)
        or math.prod(absent) > MAX_ABSENT_ELEMENTS
    ):
        raise _fail(
            source, f"{field}.absent_shape",
            f"{len(axes) - 1} sizes >= 0 (the shape of one row, axes after the batch; at most "
            f"{MAX_ABSENT_ELEMENTS} elements)", absent,
        )  # fmt: skip


_GRAPH_INFO = {
    "opset": (int, "an integer"),
    "exporter": (str, "a string"),
    "torch_version": (str, "a string"),
    "export_seconds": ((int, float), "a number"),
}


def _check_graph(graph: Any, source: Path, field: str) -> None:
    if not isinstance(graph, dict):
        raise _fail(source, field, "an object with file, inputs and outputs", graph)
    inputs = graph.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise _fail(source, f"{field}.inputs", "an object: input name -> {dtype, axes, absent_shape}", inputs)
    for name, spec in inputs.items():
        _check_input(spec, source, f"{field}.inputs.{name}")
    outputs = _check_names(graph.get("outputs"), source, f"{field}.outputs", non_empty=True)
    if "logits" not in outputs:
        raise _fail(source, f"{field}.outputs", "a list of output names with 'logits'", outputs)
    for key, (kinds, expected) in _GRAPH_INFO.items():  # information about the export; checked when present
        if key in graph and not isinstance(graph[key], kinds):
            raise _fail(source, f"{field}.{key}", expected, graph[key])


def check_onnx_config(meta: Any, source: str | os.PathLike) -> dict[str, Any]:
    """`meta` (the parsed `onnx_config.json`) if it has the shape the export writes, else a `ValueError` naming
    `source` and the field: `format` `"avemotion-onnx"`, `graphs` a non-empty object of graph objects (`file`,
    `inputs`, `outputs`), `ignored_inputs` a list of names, `input_spec` an object. The graph file names are checked
    against the directory by `checked_graph_files`."""
    source = Path(source)
    if not isinstance(meta, dict):
        raise _fail(source, "the file", "a JSON object", type(meta).__name__)
    if meta.get("format") != ONNX_FORMAT:
        raise _fail(source, "format", repr(ONNX_FORMAT), meta.get("format"))
    graphs = meta.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise _fail(source, "graphs", "a non-empty object: part name -> graph", graphs)
    for part, graph in graphs.items():
        _check_graph(graph, source, f"graphs.{part}")
    if "ignored_inputs" in meta:
        _check_names(meta["ignored_inputs"], source, "ignored_inputs")
    for key in ("input_spec",):
        if key in meta and not isinstance(meta[key], dict):
            raise _fail(source, key, "an object", meta[key])
    window = meta.get("input_spec", {}).get("window_seconds")
    if window is not None and not (
        isinstance(window, (int, float))
        and not isinstance(window, bool)
        and math.isfinite(window)
        and MIN_WINDOW_SECONDS <= window <= MAX_WINDOW_SECONDS
    ):
        raise _fail(
            source, "input_spec.window_seconds",
            f"a number of seconds in [{MIN_WINDOW_SECONDS}, {MAX_WINDOW_SECONDS}] (or null)", window,
        )  # fmt: skip
    if "model_type" in meta and not isinstance(meta["model_type"], str):
        raise _fail(source, "model_type", "a string", meta["model_type"])
    return meta


def read_onnx_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked `onnx_config.json` of an exported directory (`check_onnx_config`); a `ValueError` naming the file
    when it cannot be read as JSON, is a symlink leading out of the directory, or has the wrong shape."""
    path = contained_file(directory, ONNX_CONFIG_NAME, "the export's description", source=directory)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as error:  # valid JSON nested deeper than Python's parser goes
        raise ValueError(f"{path}: cannot be read as JSON (nested too deeply)") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as JSON ({error})") from error
    return check_onnx_config(meta, path)


def check_session_signature(session: Any, graph: dict[str, Any], file: Path, field: str) -> None:
    """The graph ONNX Runtime loaded from `file` has the inputs (names, dtypes, ranks) and outputs that
    `onnx_config.json` declares for it (`field`); else a `ValueError` naming the file."""
    declared = graph["inputs"]
    actual = {node.name: node for node in session.get_inputs()}
    if set(actual) != set(declared):
        raise ValueError(
            f"{file}: the graph's inputs {sorted(actual)} are not the ones {ONNX_CONFIG_NAME} declares in "
            f"{field}.inputs {sorted(declared)}"
        )
    for name, spec in declared.items():
        node = actual[name]
        if node.type != _ORT_TYPES[spec["dtype"]] or len(node.shape) != len(spec["axes"]):
            raise ValueError(
                f"{file}: input {name!r} is {node.type} of {len(node.shape)} axes; {ONNX_CONFIG_NAME} declares "
                f"{field}.inputs.{name} as {spec['dtype']} {spec['axes']}"
            )
    outputs = [node.name for node in session.get_outputs()]
    missing = [name for name in graph["outputs"] if name not in outputs]
    if missing:
        raise ValueError(
            f"{file}: the graph has no outputs {missing} ({ONNX_CONFIG_NAME} {field}.outputs); it has {outputs}"
        )


def checked_graph_files(directory: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Path]:
    """part -> graph file, each a plain file name inside `directory` (`contained_file`) whose external data (tensors
    stored in other files) names files of the directory too. Nothing outside the directory is opened."""
    source = Path(directory) / ONNX_CONFIG_NAME
    files = {}
    for part, graph in meta["graphs"].items():
        files[part] = contained_file(directory, graph.get("file"), f"graphs.{part}.file", source=source)
    for file in files.values():
        if file.is_file():  # a missing graph (or a folder): `from_pretrained` refuses it, naming the file
            check_external_data(file)
    return files


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor stored in an ONNX graph: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("sparse_tensor"):
            yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
        for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            yield from _tensors(subgraph)


def check_external_data(file: str | os.PathLike) -> None:
    """Refuse an ONNX graph whose external data (a tensor stored in another file, `external_data.location`) names
    a file outside the graph's folder. ONNX Runtime checks this itself only from about 1.24, and avemotion supports
    older releases; without the `onnx` package installed, ONNX Runtime's own check is what there is."""
    try:
        import onnx
    except ImportError:
        return
    file = Path(file)
    try:  # the graph only: its external data files are not read
        model = onnx.load(str(file), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends: name the file
        raise ValueError(f"{file}: not an ONNX graph ({type(error).__name__}: {error})") from error
    tensors = [*_tensors(model.graph), *(t for f in model.functions for n in f.node for t in _node_tensors(n))]
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
        contained_file(file.parent, location, f"tensor {tensor.name!r} external_data.location", source=file)


__all__ = [
    "ONNX_CONFIG_NAME",
    "ONNX_FORMAT",
    "OnnxRuntimeEmotionModel",
    "OnnxRuntimeOutput",
    "check_external_data",
    "check_onnx_config",
    "check_session_signature",
    "checked_graph_files",
    "read_onnx_config",
]
