"""What a task model declares to generic code, typed, and the one reader of it.

A task model describes itself with three methods returning plain data (its remote copy cannot import avemotion):

- `input_spec()`: `{"modalities": {name: {...}}, "segments": {granularity: (key, mask key)}, "window_seconds"}`,
  each modality with its `"inputs"` pair `(values key, mask key)` and optionally `"features"` (the pre-extracted
  features' pair), `"feature_dim"`, `"feature_layers"`, `"feature_rate"` (feature frames per second; None: the media's
  own frame rate), `"layout"` (`"waveform"`, `"frames"` or `"tokens"`), `"sampling_rate"`, `"min_samples"` (the
  shortest waveform one feature frame needs), `"max_length"` (tokens kept) and `"extra_inputs"` (other keys);
- `training_steps()`: the optimisation steps of a batch, each `{"name", "modules", "loss", "rows"}`;
- `evaluation_branches()`: `{output field: report name}` (a list: each name is its own report name).

The class attribute `backbone_freeze_flags` (`{config flag: (refining flags, ...)}`) with the method
`apply_backbone_freezing()` is the one freezing hook (see `avemotion.training.trainer.set_backbones_trainable`).

`read_declaration(model)` reads all of it into the dataclasses below and checks it once, with an error naming the
model and the field; the collator, the trainer, the pipeline, the metrics and the tests take what they need from it and
read nothing else of the plain dicts. Layer 1: this module names no model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

LAYOUTS = ("waveform", "frames", "tokens")
# Declarations written before a field existed: a modality's layout follows its name (the task's vocabulary, not a
# model's), and a waveform's features come at wav2vec2's 20 ms hop.
_LEGACY_LAYOUTS = {"audio": "waveform", "video": "frames", "text": "tokens"}
_LEGACY_FEATURE_RATES = {"waveform": 50.0}
_LEGACY_MIN_SAMPLES = {"waveform": 400}
_MODALITY_FIELDS = frozenset(
    {"inputs", "features", "feature_dim", "feature_layers", "feature_rate", "layout", "sampling_rate", "min_samples",
     "max_length", "extra_inputs"}
)  # fmt: skip
_STEP_FIELDS = frozenset({"name", "modules", "loss", "rows"})


class DeclarationError(ValueError):
    """A model's declaration (`input_spec()`, `training_steps()`, `evaluation_branches()`) is malformed."""


@dataclass(frozen=True)
class ModalitySpec:
    """The batch keys and geometry of one modality.

    Args:
        name: `"audio"`, `"video"` or `"text"`.
        inputs: `(values key, mask key or None)` of the raw inputs, e.g. `("input_values", "attention_mask")`.
        features: `(features key, mask key or None)` of pre-extracted features, or None when the model takes none.
        layout: how a row's value is padded: `"waveform"` (N,), `"frames"` (T, ...), `"tokens"` (L,) of token ids.
        feature_dim: width D of the features (placeholder rows), None when not declared.
        feature_layers: stacked layers of cached features `(layers, frames, D)`; None: one layer `(frames, D)`.
        feature_rate: feature frames per second; None: the media's own frame rate (video).
        sampling_rate: samples per second of a waveform input.
        min_samples: the shortest waveform that gives one feature frame.
        max_length: tokens kept of a text input.
        extra_inputs: other keys of the modality (e.g. `token_type_ids`).
    """

    name: str
    inputs: tuple[str, str | None]
    features: tuple[str, str | None] | None = None
    layout: str = "frames"
    feature_dim: int | None = None
    feature_layers: int | None = None
    feature_rate: float | None = None
    sampling_rate: int | None = None
    min_samples: int | None = None
    max_length: int | None = None
    extra_inputs: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every batch key of the modality, inputs first."""
        keys = [key for pair in (self.inputs, self.features) if pair for key in pair]
        return tuple(dict.fromkeys(key for key in (*keys, *self.extra_inputs) if key))

    @property
    def mask_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(pair[1] for pair in (self.inputs, self.features) if pair and pair[1]))

    @property
    def padded_pairs(self) -> tuple[tuple[str, str | None], ...]:
        """`(values key, mask key)` pairs that the collator pads with zeros (inputs and features; a token input is
        padded with the tokenizer's pad id instead, so only its features are here)."""
        pairs = (self.features,) if self.layout == "tokens" else (self.inputs, self.features)
        return tuple(pair for pair in pairs if pair)

    def present(self, batch: Mapping[str, Any], size: int, device: torch.device) -> torch.Tensor:
        """(B,) bool: rows that have this modality: the mask of its features (else of its raw input) has a frame;
        all rows when the values come without a mask, none when the batch holds neither."""
        for pair in (self.features, self.inputs):
            if pair and batch.get(pair[0]) is not None:
                mask = batch.get(pair[1]) if pair[1] else None
                return (
                    mask.bool().any(dim=-1) if mask is not None else torch.ones(size, dtype=torch.bool, device=device)
                )
        return torch.zeros(size, dtype=torch.bool, device=device)


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: its modalities, the speech segments a granularity reads, the analysis window.

    Args:
        modalities: name -> `ModalitySpec`, in the model's order.
        segments: granularity -> `(segments key, mask key)`.
        window_seconds: the analysis window for long media; None: the caller's default.
    """

    modalities: Mapping[str, ModalitySpec] = field(default_factory=dict)
    segments: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    window_seconds: float | None = None

    def with_layout(self, layout: str) -> tuple[ModalitySpec, ...]:
        return tuple(spec for spec in self.modalities.values() if spec.layout == layout)

    @property
    def padded_keys(self) -> dict[str, str | None]:
        """values key -> mask key of every zero-padded batch input (raw inputs and features), for the collator."""
        return {pair[0]: pair[1] for spec in self.modalities.values() for pair in spec.padded_pairs}


@dataclass(frozen=True)
class StepSpec:
    """One declared optimisation step (see `avemotion.training.schedules` for how the trainer runs it).

    Args:
        name: the step's name (logs, per-step losses).
        modules: the `nn.Module`s whose parameters the step updates; empty: every parameter (None entries dropped).
        loss: an output field name, or a bound method of the model computing the loss from the sub-batch.
        rows: the modalities a row must have to join the step; empty: every row.
    """

    name: str
    modules: tuple[torch.nn.Module, ...] = ()
    loss: str | Callable[..., torch.Tensor] = "loss"
    rows: tuple[str, ...] = ()


JOINT_STEP = StepSpec("joint")


@dataclass(frozen=True)
class ModelDeclaration:
    """Everything a task model declares, read and checked once by `read_declaration`.

    Args:
        inputs: its `InputSpec`.
        steps: its training steps (one joint step when it declares none).
        branches: output field -> report name of the branches evaluation reports (`{"logits": "logits"}` by default).
        freeze_flags: config flag -> the flags that refine it, of the freezing hook (empty: no hook).
    """

    inputs: InputSpec
    steps: tuple[StepSpec, ...] = (JOINT_STEP,)
    branches: Mapping[str, str] = field(default_factory=lambda: {"logits": "logits"})
    freeze_flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _fail(owner: str, where: str, message: str) -> DeclarationError:
    return DeclarationError(f"{owner}.{where}: {message}")


def _check_fields(entry: Any, allowed: frozenset[str], owner: str, where: str) -> None:
    """`entry` is a dict of `allowed` fields only."""
    if not isinstance(entry, Mapping):
        raise _fail(owner, where, f"must be a dict, got {type(entry).__name__}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise _fail(owner, where, f"unknown fields {unknown}; expected some of {sorted(allowed)}")


def _key_pair(value: Any, owner: str, where: str, optional_mask: bool = True) -> tuple[str, str | None]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str) and value[0]):
        raise _fail(owner, where, f"must be a (values key, mask key) pair, got {value!r}")
    if not (isinstance(value[1], str) and value[1]) and not (optional_mask and value[1] is None):
        raise _fail(owner, where, f"the mask key must be a string, got {value[1]!r}")
    return value[0], value[1]


def _positive(value: Any, owner: str, where: str, kind: type = int) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(owner, where, f"must be a positive number or None, got {value!r}")
    if kind is int and value != int(value):
        raise _fail(owner, where, f"must be a whole number, got {value!r}")
    return kind(value)


def read_modality(name: str, entry: Any, owner: str = "model") -> ModalitySpec:
    """One `input_spec()["modalities"][name]` entry as a `ModalitySpec`, checked."""
    where = f"input_spec()['modalities'][{name!r}]"
    _check_fields(entry, _MODALITY_FIELDS, owner, where)
    if "inputs" not in entry:
        raise _fail(owner, where, "needs its `inputs` (values key, mask key) pair")
    layout = entry.get("layout") or _LEGACY_LAYOUTS.get(name, "frames")
    if layout not in LAYOUTS:
        raise _fail(owner, f"{where}['layout']", f"must be one of {LAYOUTS}, got {layout!r}")
    features = entry.get("features")
    extra = entry.get("extra_inputs", ())
    if isinstance(extra, str) or not all(isinstance(key, str) and key for key in extra):
        raise _fail(owner, f"{where}['extra_inputs']", f"must be a tuple of keys, got {extra!r}")
    rate = entry.get("feature_rate", _LEGACY_FEATURE_RATES.get(layout) if features else None)
    return ModalitySpec(
        name=name,
        inputs=_key_pair(entry["inputs"], owner, f"{where}['inputs']"),
        features=None if features is None else _key_pair(features, owner, f"{where}['features']"),
        layout=layout,
        feature_dim=_positive(entry.get("feature_dim"), owner, f"{where}['feature_dim']"),
        feature_layers=_positive(entry.get("feature_layers"), owner, f"{where}['feature_layers']"),
        feature_rate=_positive(rate, owner, f"{where}['feature_rate']", float),
        sampling_rate=_positive(entry.get("sampling_rate"), owner, f"{where}['sampling_rate']"),
        min_samples=_positive(
            entry.get("min_samples", _LEGACY_MIN_SAMPLES.get(layout)), owner, f"{where}['min_samples']"
        ),  # fmt: skip
        max_length=_positive(entry.get("max_length"), owner, f"{where}['max_length']"),
        extra_inputs=tuple(extra),
    )


def read_input_spec(spec: Any, owner: str = "model") -> InputSpec:
    """A plain `input_spec()` dict as an `InputSpec`, checked (keys shared by two modalities are an error unless they
    are the same mask)."""
    if not isinstance(spec, Mapping):
        raise _fail(owner, "input_spec()", f"must return a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"modalities", "segments", "window_seconds"})
    if unknown:
        raise _fail(owner, "input_spec()", f"unknown fields {unknown}")
    entries = spec.get("modalities") or {}
    if not isinstance(entries, Mapping) or not entries:
        raise _fail(owner, "input_spec()['modalities']", "must name at least one modality")
    modalities = {name: read_modality(name, entry, owner) for name, entry in entries.items()}
    owners: dict[str, str] = {}
    for modality in modalities.values():
        for key in (pair[0] for pair in (modality.inputs, modality.features) if pair):
            if owners.setdefault(key, modality.name) != modality.name:
                raise _fail(
                    owner, "input_spec()", f"key {key!r} belongs to both {owners[key]!r} and {modality.name!r}"
                )
    segments = {}
    for granularity, pair in (spec.get("segments") or {}).items():
        segments[granularity] = _key_pair(pair, owner, f"input_spec()['segments'][{granularity!r}]", False)
    window = _positive(spec.get("window_seconds"), owner, "input_spec()['window_seconds']", float)
    return InputSpec(modalities, segments, window)


def read_steps(declared: Any, modalities: Mapping[str, ModalitySpec], owner: str = "model") -> tuple[StepSpec, ...]:
    """`training_steps()` as `StepSpec`s, checked against the declared modalities."""
    if isinstance(declared, (str, Mapping)) or not hasattr(declared, "__iter__"):
        raise _fail(owner, "training_steps()", f"must return a tuple of steps, got {type(declared).__name__}")
    steps = []
    for position, step in enumerate(declared):
        where = f"training_steps()[{position}]"
        _check_fields(step, _STEP_FIELDS, owner, where)
        name = step.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(owner, where, f"a step has no name: {step!r}")
        loss = step.get("loss", "loss")
        if not (isinstance(loss, str) or callable(loss)):
            raise _fail(owner, f"training step {name!r}", f"loss must be an output field name or a callable, got "
                        f"{loss!r}")  # fmt: skip
        rows = tuple(step.get("rows", ()))
        missing = [modality for modality in rows if modality not in modalities]
        if missing:
            raise _fail(owner, f"training step {name!r}", f"rows {missing} are not modalities of its input_spec() "
                        f"({sorted(modalities)})")  # fmt: skip
        declared_modules = tuple(step.get("modules", ()))
        modules = tuple(module for module in declared_modules if module is not None)
        if declared_modules and not modules:
            raise _fail(owner, f"training step {name!r}", "owns nothing (every declared module is None)")
        steps.append(StepSpec(name, modules, loss, rows))
    if not steps:
        raise _fail(owner, "training_steps()", "declares no step")
    return tuple(steps)


def read_branches(declared: Any, owner: str = "model") -> dict[str, str]:
    """`evaluation_branches()` as `{output field: report name}` (a list: each field is its own report name)."""
    branches = dict(declared) if isinstance(declared, Mapping) else {name: name for name in declared}
    for output, report in branches.items():
        if not (isinstance(output, str) and output and isinstance(report, str) and report):
            raise _fail(owner, "evaluation_branches()", f"needs output and report names, got {output!r}: {report!r}")
    if not branches:
        raise _fail(owner, "evaluation_branches()", "declares no branch")
    if len(set(branches.values())) != len(branches):
        raise _fail(owner, "evaluation_branches()", f"two branches share a report name: {branches}")
    return branches


def read_freeze_flags(model: Any, owner: str = "model") -> dict[str, tuple[str, ...]]:
    """`backbone_freeze_flags` with its hook `apply_backbone_freezing()`, checked against the config's fields."""
    declared = getattr(model, "backbone_freeze_flags", None) or {}
    if not declared:
        return {}
    if not callable(getattr(model, "apply_backbone_freezing", None)):
        raise _fail(owner, "backbone_freeze_flags", "is declared without the hook `apply_backbone_freezing()`")
    flags = {flag: tuple(refining) for flag, refining in dict(declared).items()}
    config = getattr(model, "config", None)
    if config is not None:
        missing = [name for flag, refining in flags.items() for name in (flag, *refining) if not hasattr(config, name)]
        if missing:
            raise _fail(owner, "backbone_freeze_flags", f"names {missing}: no fields of its {type(config).__name__}")
    return flags


def _declared(model: Any, method: str) -> Any:
    declare = getattr(model, method, None)
    return declare() if callable(declare) else None


def read_declaration(model: Any, required: bool = True) -> ModelDeclaration:
    """Read and check everything `model` declares (see the module docstring); a `DeclarationError` (a `ValueError`)
    naming the model and the field when something is malformed, or when the model declares no `input_spec()` and
    the declaration is `required` (else: no modalities, the rest as declared)."""
    owner = type(model).__name__
    spec = _declared(model, "input_spec")
    if spec is None and required:
        raise _fail(owner, "input_spec()", "is missing: a task model declares its inputs with `input_spec()`")
    inputs = InputSpec() if spec is None else read_input_spec(spec, owner)
    steps = _declared(model, "training_steps")
    branches = _declared(model, "evaluation_branches")
    return ModelDeclaration(
        inputs=inputs,
        steps=(JOINT_STEP,) if steps is None else read_steps(steps, inputs.modalities, owner),
        branches={"logits": "logits"} if branches is None else read_branches(branches, owner),
        freeze_flags=read_freeze_flags(model, owner),
    )


__all__ = [
    "DeclarationError", "InputSpec", "JOINT_STEP", "LAYOUTS", "ModalitySpec", "ModelDeclaration", "StepSpec",
    "read_branches", "read_declaration", "read_freeze_flags", "read_input_spec", "read_modality", "read_steps",
]  # fmt: skip
