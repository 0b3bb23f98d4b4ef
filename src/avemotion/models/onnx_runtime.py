"""`OnnxRuntimeEmotionModel`: an exported avemotion model run with ONNX Runtime, behind the interface the pipeline
uses on a PyTorch model (`config`, `device`, `dtype`, `eval()`, `model(**inputs).logits`).

`pipeline("audio-visual-emotion", model=OUT)` loads it for a directory written by `avemotion export-onnx`
(`avemotion.models.onnx_export`). Generic: it runs whatever graphs `onnx_config.json` describes and names no model.
Module import is light: onnxruntime is imported when a model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

# written next to the graphs by the export: which graph takes which inputs, how an absent input is filled
ONNX_CONFIG_NAME = "onnx_config.json"
_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64}


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
        if not cls.is_exported_directory(directory):
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

        meta = json.loads((directory / ONNX_CONFIG_NAME).read_text())
        config = AutoConfig.from_pretrained(directory)
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            if num_threads:
                session_options.intra_op_num_threads = int(num_threads)
        providers = providers or ["CPUExecutionProvider"]
        sessions = {
            part: onnxruntime.InferenceSession(str(directory / graph["file"]), session_options, providers=providers)
            for part, graph in meta["graphs"].items()
        }
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


__all__ = ["ONNX_CONFIG_NAME", "OnnxRuntimeEmotionModel", "OnnxRuntimeOutput"]
