"""Optimisation schedules: the steps of a batch, read from the model's declaration, and the rows each step takes.

The model's declaration (`training_steps()`, `input_spec()`) is read by `avemotion.models.declaration`, so that this
module names no model and reads none of the plain dicts:

- `StepSpec` (one declared step): `modules` are the `nn.Module`s whose parameters the step updates (none: every
  parameter), mapped here to parameter names by identity against the model's `named_parameters()`, so a renamed
  module cannot silently stop being trained. `loss` is a field of the forward output (`"visual_loss"`, `"loss"`)
  computed on the step's sub-batch through the (possibly DDP-wrapped) model, or a bound method of the model called as
  `loss(**sub_batch)` whose gradient the trainer takes outside DDP. `rows` are the modalities a row must have to
  join the step (empty: every row).
- `ModalitySpec` (one declared modality): which batch keys belong to it (raw inputs, pre-extracted features and
  their masks) and the features' width, for row selection, sub-batches and placeholders.

Schedules: `"auto"`, the declared steps (a model that declares none is trained jointly), and `"joint"`, one step on
the model's `loss` that updates every parameter. Rows that lack a step's modality join only the steps they can take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from avemotion.models.declaration import JOINT_STEP, ModalitySpec, StepSpec, read_declaration

from .arguments import SCHEDULE_ALIASES, SCHEDULES


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


def modality_inputs(model: torch.nn.Module) -> dict[str, ModalitySpec]:
    """The declared modalities of `model` (empty when it declares no `input_spec()`)."""
    return dict(read_declaration(model, required=False).inputs.modalities)


def audio_sampling_rate(model: torch.nn.Module, default: int = 16000) -> int:
    """The waveform rate the model's waveform input expects, `default` when it declares none."""
    waveforms = read_declaration(model, required=False).inputs.with_layout("waveform")
    return int(next((spec.sampling_rate for spec in waveforms if spec.sampling_rate), default))


def declared_steps(model: torch.nn.Module) -> tuple[StepSpec, ...]:
    """The model's declared training steps, or one joint step for a model that declares none."""
    return read_declaration(model, required=False).steps


SCHEDULE_STEPS: dict[str, Callable[[torch.nn.Module], tuple[StepSpec, ...]]] = {
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


def _build_step(model: torch.nn.Module, declared: StepSpec, names_by_id: dict[int, str],
                modalities: dict[str, ModalitySpec]) -> TrainingStep:  # fmt: skip
    """A `TrainingStep` from one declared step: its modules mapped to parameter names by identity."""
    name, owner = declared.name, type(model).__name__
    parameter_names: set[str] = set()
    for module in declared.modules:
        owned = [names_by_id[id(p)] for p in module.parameters() if id(p) in names_by_id]
        if not owned:
            raise ValueError(f"training step {name!r}: the declared module {type(module).__name__} owns no parameter "
                             f"of {owner} (not one of its submodules, or without parameters)")  # fmt: skip
        parameter_names.update(owned)
    return TrainingStep(name, frozenset(parameter_names), declared.loss, declared.rows)


def rows_with(batch: dict, step: TrainingStep, modalities: dict[str, ModalitySpec]) -> torch.Tensor | None:
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


def step_keys(step: TrainingStep, modalities: dict[str, ModalitySpec]) -> set[str]:
    """The batch keys of the step's modalities."""
    return {key for modality in step.rows for key in modalities[modality].keys}


def placeholder_batch(batch: dict, step: TrainingStep, modalities: dict[str, ModalitySpec]) -> dict:
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
