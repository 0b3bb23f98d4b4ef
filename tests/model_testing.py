"""`ModelTesterMixin`: the tests every avemotion model passes, written once (as transformers' `ModelTesterMixin`).

A test class per model sets the class attributes below and inherits the tests:

- `model_class`, `base_model_class`, `config_class`: the task model (`AutoModelForAudioClassification`), the base model
  (`AutoModel`) and the config;
- `remote_code_files`: the files a saved checkpoint must carry for `trust_remote_code=True`;
- `prepare_config_and_inputs()`: a tiny config and a batch of model inputs (no labels), as a `staticmethod`.

The tests: the save/load round trip through every Auto class, the base model loaded from the task checkpoint, remote
code loading in a subprocess where `import avemotion` is impossible, and the model's declaration (`input_spec`,
`training_steps`, `evaluation_branches`) against its `forward`.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForAudioClassification
from transformers.utils import ModelOutput

from avemotion import AutoModelForEmotionRecognition
from avemotion.models.declaration import read_declaration

SRC = Path(__file__).resolve().parents[1] / "src"

# Run in a fresh interpreter: avemotion cannot be imported (a meta-path finder refuses it before any other finder,
# editable-install finders included, and the source folder is off sys.path), then the saved checkpoint is loaded
# with trust_remote_code and run on the saved inputs.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoAvemotion(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "avemotion" or name.startswith("avemotion."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, NoAvemotion())
    sys.path[:] = [p for p in sys.path if not p.startswith(sys.argv[3])]
    try:
        import avemotion  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("avemotion is still importable")

    import torch
    from transformers import AutoModel, AutoModelForAudioClassification

    directory, io_path = sys.argv[1], sys.argv[2]
    inputs = torch.load(io_path)["inputs"]
    results = {}
    for name, auto_class in (("task", AutoModelForAudioClassification), ("base", AutoModel)):
        model = auto_class.from_pretrained(directory, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            results[name] = {key: value for key, value in model(**inputs).items() if isinstance(value, torch.Tensor)}
    leaked = sorted(name for name in sys.modules if name.split(".")[0] == "avemotion")
    assert not leaked, leaked
    torch.save(results, io_path + ".out")
    print("OK")
    """
)


def flatten_outputs(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a model output (nested `ModelOutput`s, dicts, tuples), keyed by its path."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, (ModelOutput, dict)):
        items = value.items()
    elif isinstance(value, (tuple, list)):
        items = enumerate(value)
    else:
        return {}
    found = {}
    for key, item in items:
        found.update(flatten_outputs(item, f"{prefix}.{key}" if prefix else str(key)))
    return found


def assert_same_outputs(actual: Any, expected: Any, what: str, exact: bool = True) -> None:
    """The two outputs have the same tensor fields with the same values (NaN equal to NaN)."""
    actual, expected = flatten_outputs(actual), flatten_outputs(expected)
    assert sorted(actual) == sorted(expected), f"{what}: output fields differ"
    tolerance = {"rtol": 0.0, "atol": 0.0} if exact else {}
    for key in expected:
        torch.testing.assert_close(
            actual[key], expected[key], equal_nan=True, msg=f"{what}: {key} differs", **tolerance
        )


class ModelTesterMixin:
    model_class: ClassVar[type[nn.Module]]
    base_model_class: ClassVar[type[nn.Module]]
    config_class: ClassVar[type]
    remote_code_files: ClassVar[frozenset[str]]

    @staticmethod
    def prepare_config_and_inputs() -> tuple[Any, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @staticmethod
    def labels_for(config: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class indices for the batch (the tiny configs are classifiers)."""
        batch_size = next(iter(inputs.values())).shape[0]
        return torch.arange(batch_size) % config.num_labels

    def _model_and_inputs(self) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        config, inputs = self.prepare_config_and_inputs()
        return self.model_class(config).eval(), inputs

    def test_save_load_round_trip_and_auto_classes(self, tmp_path):
        model, inputs = self._model_and_inputs()
        with torch.no_grad():
            expected = model(**inputs)
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
        saved = json.loads((tmp_path / "config.json").read_text())
        assert saved["auto_map"]["AutoModel"].endswith(f".{self.base_model_class.__name__}")
        assert saved["auto_map"]["AutoModelForAudioClassification"].endswith(f".{self.model_class.__name__}")
        assert self.remote_code_files <= set(os.listdir(tmp_path))

        config = AutoConfig.from_pretrained(tmp_path)
        assert type(config) is self.config_class
        # the same fields, but for where it was loaded from and the save-time extras (the package drops the
        # pipeline's `custom_pipelines` on load; remote copies keep it)
        unchecked = {"_name_or_path", "auto_map", "custom_pipelines", "transformers_version"}
        loaded_fields = {k: v for k, v in config.to_dict().items() if k not in unchecked}
        assert loaded_fields == {k: v for k, v in model.config.to_dict().items() if k not in unchecked}
        for loader in (self.model_class, AutoModelForEmotionRecognition, AutoModelForAudioClassification):
            loaded = loader.from_pretrained(tmp_path).eval()
            assert type(loaded) is self.model_class, loader
            with torch.no_grad():
                assert_same_outputs(loaded(**inputs), expected, f"{loader.__name__}.from_pretrained")

    def test_base_model_loads_from_the_task_checkpoint(self, tmp_path):
        model, inputs = self._model_and_inputs()
        model.save_pretrained(tmp_path)
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is self.base_model_class
        with torch.no_grad():
            assert_same_outputs(base(**inputs), model.base_model(**inputs), "AutoModel.from_pretrained")

    def test_trust_remote_code_loads_without_avemotion(self, tmp_path):
        model, inputs = self._model_and_inputs()
        with torch.no_grad():
            expected = {"task": model(**inputs), "base": model.base_model(**inputs)}
        model.save_pretrained(tmp_path / "model")
        torch.save({"inputs": inputs}, tmp_path / "io.pt")
        script = tmp_path / "load_remote.py"
        script.write_text(REMOTE_SCRIPT)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "model"), str(tmp_path / "io.pt"), str(SRC)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-4000:]
        remote = torch.load(tmp_path / "io.pt.out")
        for name in ("task", "base"):
            # the remote module is the same code: its outputs equal the package's up to float noise of a new process
            local = {key: value for key, value in expected[name].items() if isinstance(value, torch.Tensor)}
            assert_same_outputs(remote[name], local, f"remote {name} model", exact=False)

    def test_declaration_matches_forward(self):
        model, inputs = self._model_and_inputs()
        accepted = set(inspect.signature(model.forward).parameters)
        declaration = read_declaration(model)  # checks the plain dicts once
        for modality, spec in declaration.inputs.modalities.items():
            assert {key for key in spec.keys if key is not None} <= accepted, modality
        for granularity, keys in declaration.inputs.segments.items():
            assert set(keys) <= accepted, granularity

        parameters = {id(parameter) for parameter in model.parameters()}
        labels = self.labels_for(model.config, inputs)
        with torch.no_grad():
            output = model(**inputs, labels=labels)
        for step in declaration.steps:
            for module in step.modules:
                assert all(id(p) in parameters for p in module.parameters()), step.name
            if isinstance(step.loss, str):
                loss = output[step.loss]
            else:  # a bound method of the model, called on the inputs of the step's modalities and the labels
                wanted = set()
                for modality in step.rows or declaration.inputs.modalities:
                    wanted |= set(declaration.inputs.modalities[modality].keys)
                with torch.no_grad():
                    loss = step.loss(labels=labels, **{k: v for k, v in inputs.items() if k in wanted})
            assert loss.dim() == 0 and bool(torch.isfinite(loss)), step.name

        head_logits = output.get("head_logits") or {}
        for branch in declaration.branches:
            value = head_logits.get(branch, output.get(branch))
            assert value is not None and value.shape == output.logits.shape, branch
