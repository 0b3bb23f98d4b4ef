"""Optimisation schedules: the steps of a batch, read from the model's declaration, and the rows each step takes.

A task model declares what the trainer needs as plain data (see `VavlForEmotionRecognition.training_steps` for an
example), so that this module names no model:

- `model.training_steps()`: per batch, a tuple of steps, each `{"name", "modules", "loss", "rows"}`. `modules` are
  the `nn.Module`s whose parameters the step updates (an empty tuple: every parameter; `None` entries are skipped),
  mapped here to parameter names by identity against the model's `named_parameters()`, so a renamed module cannot
  silently stop being trained. `loss` is a field of the forward output (`"visual_loss"`, `"loss"`) computed on the
  step's sub-batch through the (possibly DDP-wrapped) model, or a bound method of the model called as
  `loss(**sub_batch)` whose gradient the trainer takes outside DDP. `rows` are the modalities a row must have to
  join the step (empty: every row).
- `model.input_spec()["modalities"]`: which batch keys belong to which modality (raw inputs, pre-extracted features
  and their masks) and the features' width, for row selection, sub-batches and placeholders.

Schedules: `"auto"`, the declared steps (a model that declares none is trained jointly), and `"joint"`, one step on
the model's `loss` that updates every parameter. Rows that lack a step's modality join only the steps they can take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .arguments import SCHEDULE_ALIASES, SCHEDULES

JOINT_STEP: dict[str, Any] = {"name": "joint", "modules": (), "loss": "loss", "rows": ()}


@dataclass(frozen=True)
class TrainingStep:
    """One optimisation step of a batch.

    Args:
        name: used in logs, the per-step training losses and the gradient stashes.
        parameter_names: names (in the unwrapped model's `named_parameters()`) this step updates; empty: all.
        loss: the model output field used as the step's loss, or a callable (a bound method of the unwrapped
            model) computing it from the sub-batch, whose gradient is taken outside DDP.
        rows: modalities a row must have to join the step; empty: every row, on the batch as it is.
    """

    name: str
    parameter_names: frozenset[str]
    loss: str | Callable[..., torch.Tensor]
    rows: tuple[str, ...] = ()

    def owns(self, parameter_name: str) -> bool:
        return not self.parameter_names or parameter_name in self.parameter_names

    @property
    def outside_ddp(self) -> bool:
        """Whether the step's loss is a callable of the unwrapped model (its gradient is taken outside DDP)."""
        return callable(self.loss)


@dataclass(frozen=True)
class ModalityInputs:
    """The batch keys of one modality, from `model.input_spec()["modalities"][name]`.

    Args:
        inputs: (raw-input key, its mask key or None), e.g. `("input_values", "attention_mask")`.
        features: (pre-extracted features key, its mask key or None), or None when the model takes none.
        extra: other keys of the modality (e.g. `token_type_ids`).
        feature_dim: width D of the features (placeholders).
    """

    name: str
    inputs: tuple[str, str | None] | None
    features: tuple[str, str | None] | None
    extra: tuple[str, ...] = ()
    feature_dim: int | None = None

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> ModalityInputs:
        return cls(name, spec.get("inputs"), spec.get("features"), tuple(spec.get("extra_inputs", ())),
                   spec.get("feature_dim"))  # fmt: skip

    @property
    def keys(self) -> tuple[str, ...]:
        keys = [key for pair in (self.inputs, self.features) if pair for key in pair]
        return tuple(dict.fromkeys(key for key in (*keys, *self.extra) if key))

    @property
    def mask_keys(self) -> tuple[str, ...]:
        return tuple(pair[1] for pair in (self.inputs, self.features) if pair and pair[1])

    def present(self, batch: dict, size: int, device: torch.device) -> torch.Tensor:
        """(B,) bool: rows that have this modality: the mask of its features (else of its raw input) has a frame;
        all rows when the values come without a mask, none when the batch holds neither."""
        for pair in (self.features, self.inputs):
            if pair and batch.get(pair[0]) is not None:
                mask = batch.get(pair[1]) if pair[1] else None
                return (
                    mask.bool().any(dim=-1) if mask is not None else torch.ones(size, dtype=torch.bool, device=device)
                )
        return torch.zeros(size, dtype=torch.bool, device=device)


def modality_inputs(model: torch.nn.Module) -> dict[str, ModalityInputs]:
    """The modalities of `model.input_spec()` (empty when the model declares none)."""
    declare = getattr(model, "input_spec", None)
    spec = declare() if callable(declare) else {}
    return {name: ModalityInputs.from_spec(name, entry) for name, entry in spec.get("modalities", {}).items()}


def audio_sampling_rate(model: torch.nn.Module, default: int = 16000) -> int:
    """The waveform rate the model's audio input expects (`input_spec`), `default` when it declares none."""
    declare = getattr(model, "input_spec", None)
    spec = declare() if callable(declare) else {}
    return int(spec.get("modalities", {}).get("audio", {}).get("sampling_rate") or default)


def declared_steps(model: torch.nn.Module) -> tuple[dict[str, Any], ...]:
    """`model.training_steps()`, or one joint step for a model that declares none."""
    declare = getattr(model, "training_steps", None)
    return tuple(declare()) if callable(declare) else (JOINT_STEP,)


SCHEDULE_STEPS: dict[str, Callable[[torch.nn.Module], tuple[dict[str, Any], ...]]] = {
    "auto": declared_steps,
    "joint": lambda model: (JOINT_STEP,),
}


def resolve_schedule(name: str, model: torch.nn.Module) -> tuple[TrainingStep, ...]:
    """The steps of schedule `name` (`"auto"`: the model's declared steps; `"joint"`: one step on `loss`) for the
    unwrapped `model`; a `ValueError` for an unknown name or a declaration the model does not satisfy."""
    name = SCHEDULE_ALIASES.get(name, name)
    if name not in SCHEDULE_STEPS:
        raise ValueError(f"Unknown schedule {name!r}; expected one of {SCHEDULES}")
    names_by_id = {id(parameter): key for key, parameter in model.named_parameters()}
    trainable = {key for key, parameter in model.named_parameters() if parameter.requires_grad}
    modalities = modality_inputs(model)
    steps = tuple(_build_step(model, declared, names_by_id, modalities) for declared in SCHEDULE_STEPS[name](model))
    for step in steps:
        if not any(step.owns(key) for key in trainable):
            raise ValueError(f"training step {step.name!r} of {type(model).__name__} owns no trainable parameter")
    return steps


def _build_step(model: torch.nn.Module, declared: dict[str, Any], names_by_id: dict[int, str],
                modalities: dict[str, ModalityInputs]) -> TrainingStep:  # fmt: skip
    """A `TrainingStep` from one declared step: its modules mapped to parameter names by identity."""
    name, owner = declared.get("name"), type(model).__name__
    if not isinstance(name, str) or not name:
        raise ValueError(f"{owner}.training_steps(): a step has no name: {declared!r}")
    loss = declared.get("loss")
    if not (isinstance(loss, str) or callable(loss)):
        raise ValueError(f"training step {name!r} of {owner}: loss must be an output field name or a callable, got "
                         f"{loss!r}")  # fmt: skip
    rows = tuple(declared.get("rows", ()))
    unknown = [modality for modality in rows if modality not in modalities]
    if unknown:
        raise ValueError(f"training step {name!r} of {owner}: rows {unknown} are not modalities of its input_spec() "
                         f"({sorted(modalities)})")  # fmt: skip
    declared_modules = tuple(declared.get("modules", ()))
    modules = [module for module in declared_modules if module is not None]
    if declared_modules and not modules:
        raise ValueError(f"training step {name!r} of {owner} owns nothing (every declared module is None)")
    parameter_names: set[str] = set()
    for module in modules:
        owned = [names_by_id[id(p)] for p in module.parameters() if id(p) in names_by_id]
        if not owned:
            raise ValueError(f"training step {name!r}: the declared module {type(module).__name__} owns no parameter "
                             f"of {owner} (not one of its submodules, or without parameters)")  # fmt: skip
        parameter_names.update(owned)
    return TrainingStep(name, frozenset(parameter_names), loss, rows)


def rows_with(batch: dict, step: TrainingStep, modalities: dict[str, ModalityInputs]) -> torch.Tensor | None:
    """(B,) bool: rows of `batch` that have every modality of `step.rows`; None when the step takes every row."""
    if not step.rows:
        return None
    labels = batch["labels"]
    size, device = labels.shape[0], labels.device
    rows = torch.ones(size, dtype=torch.bool, device=device)
    for modality in step.rows:
        rows &= modalities[modality].present(batch, size, device)
    return rows


def select_rows(batch: dict, rows: torch.Tensor, keys: set[str]) -> dict:
    """The sub-batch of `rows` with the tensors of `keys` and the labels."""
    wanted = set(keys) | {"labels"}
    return {key: value[rows] for key, value in batch.items() if key in wanted and isinstance(value, torch.Tensor)}


def step_keys(step: TrainingStep, modalities: dict[str, ModalityInputs]) -> set[str]:
    """The batch keys of the step's modalities."""
    return {key for modality in step.rows for key in modalities[modality].keys}


def placeholder_batch(batch: dict, step: TrainingStep, modalities: dict[str, ModalityInputs]) -> dict:
    """A one-row batch for a process with no row for `step`, whose loss the trainer multiplies by 0: it still runs the
    step's forward and backward, so that every process joins the same gradient all-reduces. Row 0 with one valid
    frame per modality, or a one-frame zero feature of `feature_dim` for a modality the batch does not hold."""
    labels = batch["labels"]
    row = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
    row[0] = True
    sub = select_rows(batch, row, step_keys(step, modalities))
    for modality in (modalities[name] for name in step.rows):
        for key in modality.mask_keys:
            if key in sub:
                sub[key] = sub[key].clone()
                sub[key][0, 0] = 1
        if not any(pair and pair[0] in sub for pair in (modality.inputs, modality.features)):
            if not modality.features or modality.feature_dim is None:
                raise ValueError(f"input_spec(): modality {modality.name!r} declares no features and feature_dim, "
                                 "which a placeholder row needs")  # fmt: skip
            sub[modality.features[0]] = torch.zeros(1, 1, modality.feature_dim, device=labels.device)
    return sub
