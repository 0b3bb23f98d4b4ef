"""The Accelerate trainer: the training steps the model declares (VAVL's visual, acoustic and fusion steps) or joint
training, evaluation per output branch, checkpoints with exact mid-epoch resumption, early stopping and model
selection. It names no model: everything model-specific comes from the model's declaration (`training_steps()`,
`input_spec()`, `evaluation_branches()`, see `avemotion.training.schedules`).

Runs unchanged on one CPU, several CPU processes (`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
--num_processes 2 ...`), GPUs and several machines.

Why not `transformers.Trainer`: its step is one loss, one backward and one optimizer step over every parameter. A
declared schedule needs several steps per batch, each on its own loss, on the rows that have its modalities (a row
without video joins only the audio step; a process with no such row runs a zero-weighted placeholder so that DDP's
all-reduces stay in step), each updating only the parameters it owns with its own gradient accumulation, and one of
them (VAVL's fusion step) computing its loss on the unwrapped model with the gradient taken and averaged outside
DDP. Evaluation reports every output branch with NaN on the rows a branch did not score. The joint schedule alone is
what `transformers.Trainer` does, but training it here keeps one behaviour for every model: the same checkpoints
(model directories with the processor and a card), resumption, non-finite-loss handling, selection and reports.

Why the checkpoint rotation is not accelerate's `ProjectConfiguration(automatic_checkpoint_naming=True,
total_limit=...)` (`avemotion.training.checkpointing` writes it): accelerate deletes the oldest checkpoints *before*
writing the new one, straight into its final folder, so a run killed while saving with `total_limit=1` keeps no
complete checkpoint (here a checkpoint is written under a temporary name and renamed when complete, and only then are
old ones deleted); it names checkpoints by a save counter (`checkpoint_<n>`, restarting at 0 in a resumed run unless
set by hand; an existing name is an error) instead of by the update they hold (`checkpoint-0000004`); it ignores the
`output_dir` given to `save_state` (no staging folder is possible) and counts every entry of `checkpoints/` as a
checkpoint; and `load_state()` resumes from the newest folder without falling back to the one before it when that one
is unreadable. Nor does the trainer use accelerate's `save_state`/`load_state` at all: they pickle, and read pickles
back with `weights_only=False` (see `avemotion.training.resume_state`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import find_executable_batch_size, send_to_device, set_seed
from torch.utils.data import DataLoader

from avemotion.metrics import branch_metrics
from avemotion.models.declaration import read_declaration, read_freeze_flags
from avemotion.utils.inference import compile_model, set_tf32

from .arguments import TrainingArguments
from .batches import RowIndexedCollator, RowIndexedDataset, check_labels, default_collator
from .checkpointing import CheckpointingMixin
from .files import atomic_write_text, file_problem, load_weights
from .resume_state import TrainerState
from .run_files import ARGS_FILE, LOG_FILE
from .schedules import (
    TrainingStep,
    audio_sampling_rate,
    modality_inputs,
    placeholder_batch,
    resolve_schedule,
    rows_with,
    step_keys,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EmotionTrainer", "NonFiniteLossError", "RowIndexedCollator", "RowIndexedDataset", "TrainerState",
    "atomic_write_text",
    "branch_tensors", "check_labels", "default_collator", "evaluation_branches", "file_problem", "load_weights",
    "set_backbones_trainable", "train_and_evaluate",
]  # fmt: skip


class NonFiniteLossError(ValueError):
    """Training stopped: `max_consecutive_nonfinite_batches` batches in a row had a NaN or infinite loss."""


def set_backbones_trainable(model: torch.nn.Module, freeze: bool | None) -> None:
    """`TrainingArguments.freeze_backbones`: set every backbone freeze flag that the model declares
    (`model.backbone_freeze_flags`, e.g. `{"freeze_audio_backbone": ("freeze_audio_feature_encoder",)}`: each flag and
    the flags that refine it) to `freeze`, and apply them with the model's hook `model.apply_backbone_freezing()`. The
    refining flags keep the config's values (a frozen CNN feature encoder stays frozen under `freeze=False`), so the
    model's trainable parameters are those of a model built from the changed config. The changed config is validated
    first (`validate_architecture()`); on an error it is restored and the model is left alone. None: keep the config's
    flags (no declaration needed)."""
    if freeze is None:
        return
    name = type(model).__name__
    declared = read_freeze_flags(model, name)  # checked against the config's fields
    if not declared:
        raise ValueError(
            f"freeze_backbones={freeze} needs a model that declares its backbone freeze flags (`backbone_freeze_flags`)"
            f" and applies them (`apply_backbone_freezing()`); {name} does not: leave freeze_backbones at None"
        )
    config = model.config
    before = {flag: getattr(config, flag) for flag in declared}
    for flag in declared:
        setattr(config, flag, bool(freeze))
    try:
        if callable(getattr(config, "validate_architecture", None)):
            config.validate_architecture()
    except ValueError as error:
        for flag, value in before.items():
            setattr(config, flag, value)
        raise ValueError(f"freeze_backbones={freeze} makes an invalid {type(config).__name__}: {error}") from error
    model.apply_backbone_freezing()


def evaluation_branches(model: torch.nn.Module) -> dict[str, str]:
    """The output branches the evaluation reports, output field -> report name (the model's declared
    `evaluation_branches()`, else `{"logits": "logits"}`)."""
    return dict(read_declaration(model, required=False).branches)


def branch_tensors(outputs: Any, branches: list[str], batch_size: int, num_labels: int) -> dict[str, torch.Tensor]:
    """Per-branch (B, K) float tensors: a field of `outputs` or an entry of `outputs.head_logits`, as the model gives
    it (NaN on the rows the branch did not score, e.g. no video); all NaN for a branch the batch did not produce."""
    head_logits = outputs.get("head_logits") or {}
    reference = outputs["logits"]
    result = {}
    for name in branches:
        value = head_logits.get(name) if name in head_logits else outputs.get(name)
        if value is None:
            value = reference.new_full((batch_size, num_labels), math.nan)
        result[name] = value.detach().float()
    return result


def smaller_batch_size(batch_size: int, rows_per_update: int) -> int:
    """The batch size `auto_find_batch_size` tries after an out-of-memory error at `batch_size`: the largest divisor
    of `rows_per_update` (the first attempt's batch size times its gradient accumulation) that is at most half of
    `batch_size`, so that the gradient accumulation makes up exactly the same rows per update (16 -> 8 -> 4 ...,
    6 -> 3 -> 1, an odd prime such as 5 -> 1). 0 (accelerate then stops) after batch size 1."""
    return max((d for d in range(1, batch_size // 2 + 1) if rows_per_update % d == 0), default=0)


def optimizer_implementation(name: str, device: torch.device, optimizer: str = "adam") -> dict[str, bool]:
    """The `torch.optim` keyword arguments of `TrainingArguments.optimizer_implementation` for `optimizer` on
    `device`: `"fused"` (Adam/AdamW: one kernel per update over all its parameters), `"foreach"` (a few batched
    kernels per update), `"for_loop"` (a few kernels per parameter: PyTorch's reference). `"auto"`: fused Adam/AdamW
    where this torch has the kernels for the device (CUDA, CPU, XPU, MPS, ...), else foreach. Foreach results are
    bitwise the for-loop's; fused ones differ by float rounding (losses within 1e-6 on the tests' models)."""
    try:  # private, but the only list of where fused kernels exist
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # a later torch moved it: "auto" falls back to foreach

        def _get_fused_kernels_supported_devices() -> list[str]:
            return []

    if name == "fused" and optimizer == "sgd":
        # torch's fused SGD takes momentum buffers all at once: a step over parameters some of which have one (the
        # shared encoder, updated by an earlier step) and some not fails
        raise ValueError("optimizer_implementation='fused' is for adam/adamw; use 'foreach' with sgd")
    if name == "auto":
        supported = device.type in _get_fused_kernels_supported_devices()
        name = "fused" if supported and optimizer in ("adam", "adamw") else "foreach"
    if name == "fused":
        return {"fused": True}
    return {"foreach": name == "foreach"}


# the keyword arguments that choose how a torch optimizer computes its update (not what it computes)
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def keep_implementation_on_load(optimizer: torch.optim.Optimizer) -> None:
    """Make `optimizer.load_state_dict` keep this optimizer's implementation: torch takes each group's
    `fused`/`foreach`/... from the saved state, so a checkpoint of another implementation (the previous release's
    plain Adam, `optimizer_implementation="for_loop"`) would switch it (and a fused step given `found_inf` on a
    non-fused group fails). The saved groups get the current values before torch reads them, so that it also places
    each `state["step"]` as the current implementation needs (float32 on the parameter's device when fused)."""
    current = {key: optimizer.defaults[key] for key in _IMPLEMENTATION_KEYS if key in optimizer.defaults}

    def pre_hook(_, state_dict: dict[str, Any]) -> dict[str, Any]:
        groups = [{**group, **current} for group in state_dict["param_groups"]]
        return {**state_dict, "param_groups": groups}

    optimizer.register_load_state_dict_pre_hook(pre_hook)


class EmotionTrainer(CheckpointingMixin):
    """Train and evaluate an avemotion task model with `accelerate`.

    Args:
        model: a task model whose forward takes `labels` and returns `loss` and `logits`. What the trainer needs
            beyond that, the model declares: `training_steps()` (the steps of `schedule="auto"`: which parameters
            each step updates, on which loss and which rows; none: joint training), `input_spec()` (its inputs per
            modality, for the steps' rows) and `evaluation_branches()` (the outputs evaluated; default `logits`).
            A declared step that owns no parameter of the model is a `ValueError` here.
        args: [`TrainingArguments`].
        train_dataset / eval_dataset: map-style datasets (e.g. `datasets.Dataset`) whose rows the collator takes:
            `audio_features` (T, D_a) / `visual_features` (T, D_v) arrays or raw inputs, and the label column(s).
            A row may lack a modality (None): it joins only the steps of the modality it has.
        data_collator: default `AvEmotionCollator(label_column=args.label_column)`.
        processor: saved next to the model in every model directory the trainer writes (the output, `best_model`,
            each checkpoint), which `pipeline("audio-visual-emotion", model=DIR)` needs. Without one (e.g. a model
            trained on pre-extracted features), the directories hold the model alone: it takes `audio_features` /
            `visual_features` as inputs, and its model card says so.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: TrainingArguments,
        train_dataset=None,
        eval_dataset=None,
        data_collator: Callable | None = None,
        processor: Any = None,
    ):
        self.args = args
        self.processor = processor
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        declared = read_declaration(model, required=False).inputs
        self.data_collator = data_collator or default_collator(
            args.label_column, audio_sampling_rate(model), args.pad_to_multiple_of,
            declared if declared.modalities else None,
        )  # fmt: skip
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            log_with=None if args.report_to == "none" else args.report_to,
            project_dir=args.output_dir,
            # a step of one modality leaves the other modalities' parameters unused
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        )
        if args.auto_find_batch_size and self.accelerator.num_processes > 1:
            # an out-of-memory error on one process would leave the others waiting in a collective operation
            raise ValueError(
                f"auto_find_batch_size needs a single process (got {self.accelerator.num_processes}); set "
                "per_device_train_batch_size by hand for a distributed run"
            )
        set_tf32(args.tf32)
        set_seed(args.seed)
        set_backbones_trainable(model, args.freeze_backbones)
        self.steps: tuple[TrainingStep, ...] = resolve_schedule(args.schedule, model)
        self.modalities = modality_inputs(model)
        self.is_regression = getattr(model.config, "problem_type", None) == "regression"
        self.branches = evaluation_branches(model)
        self.num_labels = model.config.num_labels
        self.metric_name = args.metric_for_best_model or (
            "combined/ccc_mean" if self.is_regression else "combined/unweighted_accuracy"
        )
        self.greater_is_better = (
            args.greater_is_better if args.greater_is_better is not None else "loss" not in self.metric_name
        )
        self.output_dir = Path(args.output_dir)
        self.model = model
        self._config = model.config
        self.state = TrainerState()
        self._nonfinite_steps: list[tuple[str, torch.Tensor | None]] = []
        self._batch_rows: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ setup

    def _create_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        args = self.args
        groups: dict[float, list[torch.nn.Parameter]] = {}
        self._parameter_names: dict[int, str] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            matches = [p for p in args.parameter_group_lr if name.startswith(p)]
            lr = args.parameter_group_lr[max(matches, key=len)] if matches else args.learning_rate
            if lr == 0:  # a group at lr 0 is frozen, not stepped
                parameter.requires_grad_(False)
                continue
            groups.setdefault(lr, []).append(parameter)
            self._parameter_names[id(parameter)] = name
        unused = [p for p in args.parameter_group_lr if not any(n.startswith(p) for n, _ in model.named_parameters())]
        if unused:
            raise ValueError(f"parameter_group_lr prefixes {unused} match no parameter of {type(model).__name__}")
        if not groups:
            raise ValueError("The model has no trainable parameter (everything frozen?)")
        param_groups = [{"params": params, "lr": lr} for lr, params in groups.items()]
        implementation = optimizer_implementation(args.optimizer_implementation, self.accelerator.device,
                                                  args.optimizer)  # fmt: skip
        if args.optimizer in ("adam", "adamw"):
            optimizer_class = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
            optimizer = optimizer_class(
                param_groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                weight_decay=args.weight_decay, **implementation,
            )  # fmt: skip
        else:
            optimizer = torch.optim.SGD(
                param_groups, momentum=args.sgd_momentum, weight_decay=args.weight_decay, **implementation
            )
        keep_implementation_on_load(optimizer)  # a checkpoint of another implementation resumes with this one
        return optimizer

    def _dataloader(self, dataset, train: bool) -> DataLoader:
        batch_size = self.args.per_device_train_batch_size if train else self.args.per_device_eval_batch_size
        return DataLoader(
            RowIndexedDataset(dataset),
            batch_size=batch_size,
            shuffle=train and self.args.shuffle,
            collate_fn=RowIndexedCollator(self.data_collator, self.num_labels, self.is_regression),
            num_workers=self.args.dataloader_num_workers,
            # page-locked batches: the trainer's host-to-device copies are asynchronous (non_blocking)
            pin_memory=self.args.dataloader_pin_memory and self.accelerator.device.type == "cuda",
            # own generator: torch draws each iterator's base seed from it, not from the global RNG, whose state a
            # checkpoint restores (a resumed run creates its iterator after restoring, the original one before)
            generator=torch.Generator().manual_seed(self.args.seed),
        )

    def _prepare(self) -> None:
        if getattr(self, "_prepared", False):
            return
        from transformers import get_scheduler

        if self.train_dataset is None:
            raise ValueError("EmotionTrainer.train needs a train_dataset")
        if len(self.train_dataset) == 0:
            raise ValueError("train_dataset is empty")
        if self.eval_dataset is not None and len(self.eval_dataset) == 0:
            raise ValueError(
                "eval_dataset is empty (0 rows): give rows to evaluate on, or none (eval_dataset=None, "
                "--eval_split none) to train without evaluation (the last epoch's model is kept)"
            )
        acc, args = self.accelerator, self.args
        if args.torch_compile:  # in place: the model keeps its class, config and save_pretrained
            compile_model(self.model, args.torch_compile_mode or True)
        self.optimizer = self._create_optimizer(self.model)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        # the trainer places the training batches itself: each step's rows are chosen on the host copy (no device
        # sync), then the batch is copied asynchronously (non_blocking, from pinned memory on CUDA)
        loader = self._dataloader(self.train_dataset, train=True)
        self.train_loader = acc.prepare_data_loader(loader, device_placement=False)
        self.eval_loader = None
        if self.eval_dataset is not None:
            self.eval_loader = acc.prepare(self._dataloader(self.eval_dataset, train=False))
        self.updates_per_epoch = math.ceil(len(self.train_loader) / args.gradient_accumulation_steps)
        total = self.updates_per_epoch * args.num_train_epochs
        warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total)
        # stepped by the trainer once per update (not through accelerate, which would step it once per process);
        # on the torch optimizer, whose step the trainer calls (see _prepare_step_tables)
        self.lr_scheduler = get_scheduler(
            args.lr_scheduler_type, getattr(self.optimizer, "optimizer", self.optimizer), num_warmup_steps=warmup,
            num_training_steps=total,
        )  # fmt: skip
        self._prepare_step_tables()
        if acc.trackers == [] and args.report_to != "none":
            acc.init_trackers("avemotion", config={k: str(v) for k, v in args.to_dict().items()})
        self._prepared = True

    def _prepare_step_tables(self) -> None:
        """What each step touches, computed once (not per step): its parameters and the others (whose gradients an
        update drops), its batch keys; the running buffers and their saved copies; the per-step loss sums."""
        self._named = [(self._parameter_names[id(p)], p) for g in self.optimizer.param_groups for p in g["params"]]
        self._parameters = [p for _, p in self._named]
        self._owned = {step.name: [p for n, p in self._named if step.owns(n)] for step in self.steps}
        self._others = {step.name: [p for n, p in self._named if not step.owns(n)] for step in self.steps}
        owned_ids = {name: {id(p) for p in params} for name, params in self._owned.items()}
        self._group_params = {
            name: [[p for p in group["params"] if id(p) in ids] for group in self.optimizer.param_groups]
            for name, ids in owned_ids.items()
        }
        self._keys = {step.name: step_keys(step, self.modalities) | {"labels"} for step in self.steps}
        # running statistics (BatchNorm) that a forward updates: restored when a step's loss is not finite
        self._running_buffers = [
            b for m in self.model.modules() if getattr(m, "track_running_stats", False) for b in m.buffers(False)
        ]
        self._running_saved = [b.clone() for b in self._running_buffers]
        self._stash: dict[str, list[torch.Tensor | None]] = {}
        # (steps, 2) float64 on the device: per step, the sum of its finite losses and their count since the last
        # read (`_read_loss_sums`), so that a step's loss is not read on the host
        self._step_index = {step.name: index for index, step in enumerate(self.steps)}
        self._loss_totals = torch.zeros(len(self.steps), 2, dtype=torch.float64, device=self.accelerator.device)
        # accelerate's optimizer wrapper adds loss scaling (fp16) and XLA's gradient all-reduce; without them its
        # step is the torch optimizer's, plus a package look-up per call: step the torch optimizer directly then
        self._plain_optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        plain = getattr(self.accelerator, "scaler", None) is None and self.accelerator.distributed_type != "XLA"
        self._step_optimizer = self._plain_optimizer if plain else self.optimizer
        self._device_checks = self._use_device_checks()
        for parameter in self._parameters:  # later, every update or skip leaves them None (see _restore_gradients)
            parameter.grad = None

    def _step_groups(self, step: TrainingStep) -> list[dict[str, Any]]:
        """The optimizer's parameter groups restricted to the step's parameters (current learning rates): its
        update visits these only, not every parameter of the model. Its state (keyed by parameter) and its
        checkpoints stay those of the whole optimizer."""
        groups = self._plain_optimizer.param_groups
        return [{**group, "params": params} for group, params in zip(groups, self._group_params[step.name]) if params]

    def _use_device_checks(self) -> bool:
        """Whether a non-finite loss is handled on the device (read once per batch), not read after each step: with
        one process, no fp16 loss scaling, no gradient accumulation and a fused optimizer, whose step skips the
        update when given `found_inf` (as GradScaler does), which is what the host check would decide."""
        optimizer = self._plain_optimizer
        return (
            self.accelerator.num_processes == 1
            and getattr(self.accelerator, "scaler", None) is None
            and self.args.gradient_accumulation_steps == 1
            # the groups the step runs on (a loaded state replaces them), not the constructor's defaults
            and all(group.get("fused") for group in optimizer.param_groups)
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        )

    # ------------------------------------------------------------------------------------------ training

    def train(self) -> dict[str, Any]:
        """Train; returns the evaluation report of the selected (best) model, or of the last epoch without an
        eval set. The selected model is saved to `output_dir` (with the processor, if any).

        With `args.auto_find_batch_size`, a run that runs out of memory starts again from the initial weights with
        a smaller batch and more gradient accumulation, the same rows per update (`smaller_batch_size`), until it
        fits."""
        if not self.args.auto_find_batch_size:
            return self._train_run()
        args = self.args
        start, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
        rows_per_update = start * accumulation
        model = self.accelerator.unwrap_model(self.model)
        initial = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}

        def attempt(batch_size: int) -> dict[str, Any]:
            if batch_size != args.per_device_train_batch_size:
                accumulation_now = rows_per_update // batch_size  # exact: batch_size divides it
                logger.warning("out of memory at per_device_train_batch_size=%d: retrying with %d and "
                               "gradient_accumulation_steps=%d", args.per_device_train_batch_size, batch_size,
                               accumulation_now)  # fmt: skip
                self._reset_for_retry(initial, batch_size, accumulation_now)
            return self._train_run()

        current = start

        def reduce() -> int:  # (accelerate's default takes 10 % off, which changes the rows per update)
            nonlocal current
            current = smaller_batch_size(current, rows_per_update)
            return current

        return find_executable_batch_size(attempt, starting_batch_size=start, reduce_batch_size_fn=reduce)()

    def _reset_for_retry(self, initial: dict[str, torch.Tensor], batch_size: int, accumulation: int) -> None:
        """Back to the state before `train()` after an out-of-memory error: initial weights, no optimizer or loaders
        (built again for `batch_size`), a fresh trainer state; the failed attempt's files in output_dir deleted."""
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        for name in ("optimizer", "lr_scheduler", "train_loader", "eval_loader"):
            setattr(self, name, None)
        acc.free_memory()
        model.load_state_dict(initial)
        self.model, self._prepared, self._model_prepared = model, False, False
        self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps = batch_size, accumulation
        self.state = TrainerState()
        self._clear_run_files()
        set_seed(self.args.seed)

    def _train_run(self) -> dict[str, Any]:
        acc, args = self.accelerator, self.args
        self._prepare()
        self._claim_output_dir()
        if self.processor is None:
            logger.warning(
                "no processor: the model directories in %s hold the model alone, which takes pre-extracted "
                "features; pipeline('audio-visual-emotion') needs a processor saved next to it (pass processor= or "
                "--processor_name_or_path)", self.output_dir,
            )  # fmt: skip
        if args.resume_from_checkpoint:
            self._load_checkpoint(args.resume_from_checkpoint)
            self._device_checks = self._use_device_checks()  # on the loaded groups
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / ARGS_FILE, json.dumps(args.to_dict(), indent=2, sort_keys=True) + "\n")
            if args.resume_from_checkpoint:  # the log: the checkpoint's epochs, not the interrupted run's later ones
                lines = "".join(json.dumps(record) + "\n" for record in self.state.log_history)
                atomic_write_text(self.output_dir / LOG_FILE, lines)
        report: dict[str, Any] = {}
        start_epoch = self.state.epoch
        for epoch in range(start_epoch, args.num_train_epochs):
            if self._stopped_early():
                break
            self.state.epoch = epoch
            train_loss = self._train_epoch(epoch)
            record = {"epoch": epoch + 1, "global_step": self.state.global_step, "train_loss": train_loss,
                      "nonfinite_skipped_batches": self.state.epoch_nonfinite_skipped_batches}  # fmt: skip
            if self.eval_loader is not None:
                report = self.evaluate()
                record["eval"] = report
                self._update_best(report, epoch)
            self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
            self.state.log_history.append(record)
            self._log_epoch(record)
            if args.save_strategy == "epoch":
                self._save_checkpoint()
        self._finish(report)
        # the trackers' end only: `end_training` would also destroy the process group, which the test split's
        # evaluation after `train` and the rest of a script under `accelerate launch` still need
        for tracker in acc.trackers:
            tracker.finish()
        return self.state.best_report or report

    def _stopped_early(self) -> bool:
        patience = self.args.early_stopping_patience
        if patience is not None and self.state.evaluations_without_improvement >= patience:
            self.accelerator.print(
                f"early stopping: no improvement of {self.metric_name} in {patience} evaluations "
                f"(best {self.state.best_metric} at epoch {self.state.best_epoch})"
            )
            return True
        return False

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        acc, args = self.accelerator, self.args
        self.train_loader.set_epoch(epoch)
        skip = self.state.step_in_epoch
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        num_batches = len(self.train_loader)
        progress = tqdm(
            total=num_batches, initial=skip, desc=f"epoch {epoch + 1}/{args.num_train_epochs}",
            disable=args.disable_tqdm or not acc.is_local_main_process,
        )  # fmt: skip
        # running sums live in the state so that a resumed epoch reports the same mean loss
        if not skip:
            self.state.loss_sums = {step.name: [0.0, 0] for step in self.steps}
            self.state.epoch_nonfinite_skipped_batches = 0
        self._loss_totals.zero_()
        self.model.train()
        for index, batch in enumerate(loader, start=skip):
            self._batch_rows = batch.pop("row_indices", None)
            batch = self._prepare_labels(batch)
            boundary = (index + 1) % args.gradient_accumulation_steps == 0 or index + 1 == num_batches
            self._nonfinite_steps = []
            losses = self._training_batch(batch, boundary)
            self._count_nonfinite(epoch, index, num_batches)
            self.state.step_in_epoch = index + 1
            progress.update(1)
            if boundary:
                self.lr_scheduler.step()
                self.state.global_step += 1
                step = self.state.global_step
                if args.logging_steps and step % args.logging_steps == 0:  # the losses are read here only
                    values = {k: float(v) for k, v in losses.items()}
                    acc.log({f"train/{k}_loss": v for k, v in values.items()}, step=step)
                    progress.set_postfix({k: f"{v:.3f}" for k, v in values.items()}, refresh=False)
                if args.save_strategy == "steps" and step % args.save_steps == 0 and index + 1 < num_batches:
                    self._read_loss_sums()
                    self._save_checkpoint()
        progress.close()
        self._read_loss_sums()
        sums = self.state.loss_sums
        # mean over the batches each step ran on, averaged over processes
        totals = torch.tensor([sums[k] for k in sums], dtype=torch.float64, device=acc.device)
        totals = acc.reduce(totals, reduction="sum")
        return {k: float(totals[i, 0] / totals[i, 1]) for i, k in enumerate(sums) if totals[i, 1] > 0}

    def _read_loss_sums(self) -> None:
        """Move the device's per-step loss sums into `state.loss_sums` (one host read; before a checkpoint is
        written and at the end of the epoch)."""
        sums = self.state.loss_sums
        for step, (total, count) in zip(self.steps, self._loss_totals.tolist()):
            sums[step.name][0] += total
            sums[step.name][1] += int(count)
        self._loss_totals.zero_()

    def _prepare_labels(self, batch: dict) -> dict:
        """Regression targets on the model's output scale: `(y - min) / (max - min)` when `label_scale` is set."""
        scale = getattr(self._config, "label_scale", None)
        if self.is_regression and scale is not None:
            low, high = scale
            batch["labels"] = (batch["labels"].float() - low) / (high - low)
        return batch

    def _plan_steps(self, batch: dict) -> list[tuple[TrainingStep, torch.Tensor | None, torch.Tensor | None, bool]]:
        """The steps that run on `batch` (on any process: all processes must run a step together), each with its
        rows (B,) bool (None: every row), their indices (None: every row of the batch has the step's modalities)
        and whether this process has any. Computed on the host copy of the batch: no device sync."""
        host = batch
        if batch["labels"].device.type != "cpu":  # a batch given on the device: its labels and masks copied back
            host = dict(batch)
            for key in ("labels", *(k for m in self.modalities.values() for k in m.mask_keys)):
                if isinstance(host.get(key), torch.Tensor):
                    host[key] = host[key].cpu()
        plan = []
        for step in self.steps:
            rows = rows_with(host, step, self.modalities)
            if rows is None:
                plan.append((step, None, None, True))
                continue
            present = rows.nonzero().flatten()
            every = present.numel() == rows.numel()
            plan.append((step, rows, None if every else present, present.numel() > 0))
        if self.accelerator.num_processes > 1:  # one all-reduce for every step of the batch
            flags = torch.tensor([float(has) for *_, has in plan], device=self.accelerator.device)
            active = (self.accelerator.reduce(flags, reduction="sum") > 0).tolist()
            return [entry for entry, on in zip(plan, active) if on]
        return [entry for entry in plan if entry[3]]

    def _to_device(self, batch: dict) -> dict:
        """The batch on the device, nested dicts/lists/tuples too (as accelerate's device placement does); copied
        asynchronously (non_blocking: from pinned memory on CUDA)."""
        return send_to_device(batch, self.accelerator.device, non_blocking=True)

    def _training_batch(self, batch: dict, boundary: bool) -> dict[str, torch.Tensor]:
        """Run every step of the schedule on `batch` (each on its rows); apply the updates at an accumulation
        `boundary`, else stash each step's gradients. Returns the finite loss (a 0-d device tensor) of each step that
        had rows here; `_loss_totals` gets them too."""
        if "row_indices" in batch:  # a batch of `_dataloader` given directly (not through `_train_epoch`)
            self._batch_rows = batch.pop("row_indices")
        plan = self._plan_steps(batch)
        batch = self._to_device(batch)
        losses, checks = {}, []
        for step, rows, index, has_rows in plan:
            self._restore_gradients(step)
            if self._running_buffers:
                torch._foreach_copy_(self._running_saved, self._running_buffers)
            loss, has_rows = self._step_backward(batch, step, index, has_rows, boundary)
            loss = loss.detach()
            finite = torch.isfinite(loss) if has_rows else None
            if has_rows:
                self._add_loss(step, loss, finite)
            if self._device_checks:  # the update is skipped on the device; read once at the end of the batch
                self._device_step_end(step, finite, boundary)
                if has_rows:
                    checks.append((step, rows, finite, loss))
                continue
            # the host check (one read per step): every process runs the backward even on a non-finite loss, so
            # that DDP's gradient all-reduce stays in step; the gradients are then dropped
            ok = bool(finite) if has_rows else True
            if ok and has_rows:
                losses[step.name] = loss
            self._host_step_end(step, rows, ok, boundary)
        for step, _, _, loss in self._read_checks(checks):
            losses[step.name] = loss
        return losses

    def _add_loss(self, step: TrainingStep, loss: torch.Tensor, finite: torch.Tensor) -> None:
        """Add a finite loss to the step's device sum and count (a non-finite one adds nothing)."""
        value = torch.stack([torch.where(finite, loss.double(), 0.0), finite.double()])
        self._loss_totals[self._step_index[step.name]].add_(value)

    def _host_step_end(self, step: TrainingStep, rows: torch.Tensor | None, finite: bool, boundary: bool) -> None:
        """After the backward, with the loss's finiteness read on the host: skip, update or stash."""
        acc = self.accelerator
        if step.outside_ddp and boundary and acc.num_processes > 1:
            self._all_reduce_step_gradients(step)
        if acc.num_processes > 1:  # skip on every process when any had a non-finite loss
            flag = torch.tensor([float(not finite)], device=acc.device)
            finite = bool(acc.reduce(flag, reduction="sum").item() == 0)
        if not finite:
            self._skip_step(step, rows)
        elif boundary:
            self._apply_update(step)
        else:
            self._stash[step.name] = [p.grad for p in self._parameters]

    def _device_step_end(self, step: TrainingStep, finite: torch.Tensor | None, boundary: bool) -> None:
        """After the backward, without reading the loss: the fused optimizer skips the update when `found_inf` is
        set (parameters and its state untouched, as for GradScaler), and the running buffers the forward changed
        are restored on the device. `boundary` is always true here (no gradient accumulation)."""
        found_inf = None if finite is None else (~finite).float()
        if found_inf is not None and self._running_buffers:
            for buffer, saved in zip(self._running_buffers, self._running_saved):
                buffer.copy_(torch.where(finite, buffer, saved))
        self._apply_update(step, found_inf)

    def _read_checks(self, checks: list) -> list:
        """The one host read of a batch on the device path: which steps had a finite loss; the others are recorded
        for `_count_nonfinite` (their updates were already skipped)."""
        if not checks:
            return []
        flags = torch.stack([finite for _, _, finite, _ in checks]).tolist()
        for (step, rows, _, _), ok in zip(checks, flags):
            if not ok:
                self._nonfinite_steps.append((step.name, rows))
        return [check for check, ok in zip(checks, flags) if ok]

    def _sub_batch(self, batch: dict, step: TrainingStep, index: torch.Tensor | None) -> dict:
        """The step's keys and labels of its rows (`index`: their positions, None: every row)."""
        keys = self._keys[step.name]
        if index is None:
            return {k: v for k, v in batch.items() if k in keys and isinstance(v, torch.Tensor)}
        index = index.to(self.accelerator.device, non_blocking=True)
        return {k: v.index_select(0, index) for k, v in batch.items() if k in keys and isinstance(v, torch.Tensor)}

    def _step_backward(
        self, batch: dict, step: TrainingStep, index: torch.Tensor | None, has_rows: bool, boundary: bool
    ) -> tuple[torch.Tensor, bool]:
        """Forward and backward of `step` on its rows of `batch` (`index`, see `_plan_steps`), or on a zero-weighted
        placeholder row when this process has none (every process must join the step's all-reduces). Returns the
        loss and whether it had rows."""
        acc, model = self.accelerator, self.model
        scale = 1.0 / self.args.gradient_accumulation_steps
        if step.outside_ddp:
            loss = self._outside_ddp_loss(batch, step, index, has_rows)
            self._backward_outside_ddp(loss if scale == 1.0 else loss * scale, step)
            return loss, has_rows
        with contextlib.nullcontext() if boundary else acc.no_sync(model):
            if has_rows:
                sub = batch if not step.rows else self._sub_batch(batch, step, index)
                loss = model(**sub)[step.loss]
            else:
                loss = model(**placeholder_batch(batch, step, self.modalities))[step.loss] * 0.0
            acc.backward(loss if scale == 1.0 else loss * scale)
        return loss, has_rows

    def _skip_step(self, step: TrainingStep, rows: torch.Tensor | None) -> None:
        """A non-finite loss: drop the step's gradients accumulated so far (later batches of an accumulation window
        still add theirs; the schedule advances) and restore the running statistics its forward changed;
        `_count_nonfinite` counts the batch and stops when it keeps happening."""
        for parameter in self._parameters:
            parameter.grad = None
        for buffer, saved in zip(self._running_buffers, self._running_saved):
            buffer.copy_(saved)
        self._nonfinite_steps.append((step.name, rows))

    def _count_nonfinite(self, epoch: int, index: int, num_batches: int) -> None:
        state = self.state
        if not self._nonfinite_steps:
            state.consecutive_nonfinite_batches = 0
            return
        state.nonfinite_skipped_batches += 1
        state.epoch_nonfinite_skipped_batches += 1
        state.consecutive_nonfinite_batches += 1
        names = [name for name, _ in self._nonfinite_steps]
        where = (
            f"epoch {epoch + 1}, update {state.global_step + 1}, batch {index + 1}/{num_batches}, step(s) "
            f"{names}, {self._describe_rows(self._nonfinite_steps[0][1])}"
        )
        limit = self.args.max_consecutive_nonfinite_batches
        if state.consecutive_nonfinite_batches >= limit:
            raise NonFiniteLossError(
                f"non-finite (NaN/inf) loss in {limit} batch(es) in a row (max_consecutive_nonfinite_batches="
                f"{limit}), the last at {where}. Check these rows' features and labels for NaN/inf, or lower the "
                f"learning rate ({self.args.learning_rate})"
            )
        logger.warning(
            "non-finite loss at %s: update skipped (%d skipped so far, %d this epoch)",
            where, state.nonfinite_skipped_batches, state.epoch_nonfinite_skipped_batches,
        )  # fmt: skip

    def _describe_rows(self, rows: torch.Tensor | None) -> str:
        """`dataset rows [i, ...]` of the current batch (those of the step's modality), with their ids if any."""
        if self._batch_rows is None:
            return "dataset rows unknown"
        indices = self._batch_rows if rows is None else self._batch_rows[rows.to(self._batch_rows.device)]
        indices = [int(i) for i in indices.tolist()]
        text = f"dataset rows {indices}"
        if "id" in (getattr(self.train_dataset, "column_names", None) or []):
            text += f" (ids {[self.train_dataset[i]['id'] for i in indices]})"
        return text

    def _outside_ddp_loss(
        self, batch: dict, step: TrainingStep, index: torch.Tensor | None, has_rows: bool
    ) -> torch.Tensor:
        """The loss of a step declared as a callable of the unwrapped model (e.g. VAVL's fusion step: the fusion head
        on detached representations of encoders run in eval mode), called on the step's rows as
        `step.loss(**sub_batch)`. With no row on this process: a zero loss that still gives every parameter of the
        step a gradient."""
        if not has_rows:
            zero = torch.zeros((), device=self.accelerator.device)
            return sum((p.sum() for p in self._owned[step.name]), zero) * 0.0
        sub = batch if not step.rows else self._sub_batch(batch, step, index)
        with self.accelerator.autocast():
            return step.loss(**sub)

    def _backward_outside_ddp(self, loss: torch.Tensor, step: TrainingStep) -> None:
        """Accumulate the gradients of a loss computed without the DDP-wrapped forward (a callable loss) into the
        step's parameters. `autograd.grad` does not fire DDP's reducer hooks, which expect a DDP forward; the
        gradients are averaged over processes by `_all_reduce_step_gradients` instead."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:  # fp16: scaled like accelerator.backward, unscaled by the optimizer step
            loss = scaler.scale(loss)
        params = self._owned[step.name]
        if not params or not loss.requires_grad:  # every parameter of the step frozen (e.g. its group at lr 0)
            return
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for parameter, grad in zip(params, grads):
            if grad is not None:
                parameter.grad = grad if parameter.grad is None else parameter.grad + grad

    def _all_reduce_step_gradients(self, step: TrainingStep) -> None:
        """Average the gradients of a step computed outside the DDP forward (a callable loss) over processes."""
        for parameter in self._owned[step.name]:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            parameter.grad = self.accelerator.reduce(parameter.grad, reduction="mean")

    def _restore_gradients(self, step: TrainingStep) -> None:
        """Gradients accumulated by this step over the previous batches of the update (None after an update)."""
        stash = self._stash.pop(step.name, None)
        if stash is None:
            if self._stash or self.args.gradient_accumulation_steps > 1:  # another step's stash may be on them
                for parameter in self._parameters:
                    parameter.grad = None
            return  # else every gradient is None already (dropped by the last update or skip)
        for parameter, grad in zip(self._parameters, stash):
            parameter.grad = grad

    def _apply_update(self, step: TrainingStep, found_inf: torch.Tensor | None = None) -> None:
        """Clip and apply the gradients of the parameters this step owns; drop every other gradient (DDP may have
        filled unused parameters' gradients with zeros, which Adam would otherwise apply). `found_inf` (0-d float,
        fused optimizers): 1 skips the update on the device."""
        for parameter in self._others[step.name]:
            parameter.grad = None
        owned = [p for p in self._owned[step.name] if p.grad is not None]
        if owned:
            if self.args.max_grad_norm is not None:
                self.accelerator.clip_grad_norm_(owned, self.args.max_grad_norm)
            if found_inf is not None:
                self._plain_optimizer.found_inf = found_inf
            groups, self._plain_optimizer.param_groups = self._plain_optimizer.param_groups, self._step_groups(step)
            try:
                self._step_optimizer.step()
            finally:
                self._plain_optimizer.param_groups = groups
                if found_inf is not None:
                    del self._plain_optimizer.found_inf
        for parameter in self._owned[step.name]:  # the others' are None already
            parameter.grad = None

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict(self, dataset=None) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
        """Per-branch outputs (NaN where a branch did not score a row), the references and the mean loss, gathered
        over processes (duplicates from even batching removed)."""
        acc = self.accelerator
        if dataset is not None or self.eval_dataset is not None:
            size = len(dataset if dataset is not None else self.eval_dataset)
            if size == 0:
                raise ValueError("the dataset to evaluate is empty (0 rows); nothing to compute metrics on")
        if dataset is not None:
            loader = acc.prepare(self._dataloader(dataset, train=False))
        elif getattr(self, "eval_loader", None) is not None:
            loader = self.eval_loader
        elif self.eval_dataset is not None:
            loader = self.eval_loader = acc.prepare(self._dataloader(self.eval_dataset, train=False))
        else:
            raise ValueError("predict/evaluate needs a dataset (none given and no eval_dataset)")
        if not getattr(self, "_prepared", False) and not getattr(self, "_model_prepared", False):
            self.model = acc.prepare(self.model)
            self._model_prepared = True
        self.model.eval()
        outputs_per_branch: dict[str, list[np.ndarray]] = {name: [] for name in self.branches}
        # the loss is summed on the device, read once at the end
        references, loss_sum, loss_rows = [], torch.zeros((), dtype=torch.float64, device=acc.device), 0
        for batch in loader:
            batch.pop("row_indices", None)
            batch = self._prepare_labels(batch)
            outputs = self.model(**batch)
            size = batch["labels"].shape[0]
            tensors = branch_tensors(outputs, self.branches, size, self.num_labels)
            gathered, labels = acc.gather_for_metrics((tensors, batch["labels"]))
            for name in self.branches:
                outputs_per_branch[name].append(gathered[name].cpu().numpy())
            references.append(labels.cpu().numpy())
            if outputs.get("loss") is not None:
                loss_sum = loss_sum + outputs["loss"].detach().double() * size
                loss_rows += size
        self.model.train()
        totals = torch.stack([loss_sum, loss_sum.new_tensor(float(loss_rows))])
        totals = acc.reduce(totals, "sum")
        loss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
        return {k: np.concatenate(v) for k, v in outputs_per_branch.items()}, np.concatenate(references), loss

    def evaluate(self, dataset=None) -> dict[str, Any]:
        """Metrics per output branch (`combined`, `audio_visual`, `audio`, `visual`, or the fusion model's heads):
        WA, UA, macro/micro-F1 and confusion matrix, or CCC per attribute; plus `loss` and `num_samples`."""
        return self.evaluation_report(*self.predict(dataset))

    def evaluation_report(
        self, branches: dict[str, np.ndarray], references: np.ndarray, loss: float
    ) -> dict[str, Any]:
        """The report of `evaluate` from the outputs of `predict` (per-branch (N, K) outputs, references, loss)."""
        config = self.accelerator.unwrap_model(self.model).config
        problem_type = "regression" if self.is_regression else "single_label_classification"
        id2label = {int(k): v for k, v in (config.id2label or {}).items()}
        report: dict[str, Any] = branch_metrics(branches, references, problem_type, id2label, self.branches)
        report["loss"] = loss
        report["num_samples"] = int(references.shape[0])
        return report

    def metric_value(self, report: dict[str, Any]) -> float:
        value: Any = report
        for part in self.metric_name.split("/"):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(
                    f"metric_for_best_model {self.metric_name!r} is not in the evaluation report; available "
                    f"branches/metrics: { {k: sorted(v) if isinstance(v, dict) else None for k, v in report.items()} }"
                )
            value = value[part]
        return float(value)

    def _update_best(self, report: dict[str, Any], epoch: int) -> None:
        value = self.metric_value(report)
        best = self.state.best_metric
        improved = math.isfinite(value) and (
            best is None or (value > best if self.greater_is_better else value < best)
        )
        if not math.isfinite(value):
            logger.warning("epoch %d: %s is %s (non-finite outputs?); not an improvement", epoch + 1, self.metric_name,
                           value)  # fmt: skip
        if improved:
            self.state.best_metric, self.state.best_epoch = value, epoch + 1
            self.state.evaluations_without_improvement, self.state.best_report = 0, report
            self._save_best_model(report)
        else:
            self.state.evaluations_without_improvement += 1

    def _log_epoch(self, record: dict[str, Any]) -> None:
        acc = self.accelerator
        flat = {f"train/{k}_loss": v for k, v in record["train_loss"].items()}
        line = [f"epoch {record['epoch']}", *(f"{k}={v:.4f}" for k, v in flat.items())]
        report = record.get("eval", {})
        for branch, metrics in report.items():
            if isinstance(metrics, dict):
                for name, value in metrics.items():
                    if isinstance(value, float):
                        flat[f"eval/{branch}/{name}"] = value
        if "loss" in report:
            flat["eval/loss"] = report["loss"]
        if report:
            line.append(f"eval {self.metric_name}={self.metric_value(report):.4f}")
        acc.print(" ".join(line))
        acc.log(flat, step=self.state.global_step)
        if acc.is_main_process:  # rewritten whole (atomically): the run's epochs, never a truncated line
            lines = "".join(json.dumps(entry) + "\n" for entry in self.state.log_history)
            atomic_write_text(self.output_dir / LOG_FILE, lines)


def train_and_evaluate(
    model: torch.nn.Module,
    train_dataset,
    eval_dataset,
    args: TrainingArguments,
    test_dataset=None,
    data_collator: Callable | None = None,
    processor: Any = None,
) -> dict[str, Any]:
    """Train `model` (selected on `eval_dataset`), then report per-branch metrics.

    Returns:
        `{"eval": <report of the selected model on eval_dataset>, "test": <report on test_dataset, if given>,
        "best_epoch": int, "history": [per-epoch records]}`; each report maps a branch (`combined`, `audio_visual`,
        `audio`, `visual`, ...) to its metrics (see `avemotion.metrics.branch_metrics`).
    """
    trainer = EmotionTrainer(model, args, train_dataset, eval_dataset, data_collator, processor)
    result: dict[str, Any] = {"eval": trainer.train()}
    if test_dataset is not None:
        result["test"] = trainer.evaluate(test_dataset)
    result["best_epoch"] = trainer.state.best_epoch
    result["history"] = trainer.state.log_history
    return result
