"""The Accelerate trainer: VAVL's three-step schedule or joint training, evaluation per output branch, checkpoints
with exact mid-epoch resumption, early stopping and model selection.

Runs unchanged on one CPU, several CPU processes (`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
--num_processes 2 ...`), GPUs and several machines.

Files are written to a temporary name in the same directory and renamed into place (`os.replace`), so that an
interrupted run leaves either the previous or the new version of a file, checkpoint or `best_model`, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from avemotion.metrics import branch_metrics

from .arguments import TrainingArguments
from .schedules import TrainingStep, placeholder_batch, resolve_schedule, rows_with, select_rows

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
RESULTS_FILE = "eval_results.json"
LOG_FILE = "training_log.jsonl"
BEST_DIR = "best_model"
CHECKPOINTS_DIR = "checkpoints"
ARGS_FILE = "training_args.json"
TEST_RESULTS_FILE = "test_results.json"
SAVING_DIR = ".saving.tmp"  # save_model's staging folder inside the directory it saves to
# the staging folders of an interrupted save: save_model's, and best_model's (written aside, then swapped in by
# replace_directory, which renames the previous one to .best_model.old meanwhile)
STAGING_DIRS = (SAVING_DIR, f".{BEST_DIR}.tmp", f".{BEST_DIR}.old")
# what a previous run leaves in output_dir (refused without overwrite_output_dir; deleted with it)
RUN_ARTIFACTS = (CHECKPOINTS_DIR, BEST_DIR, LOG_FILE, RESULTS_FILE, TEST_RESULTS_FILE, ARGS_FILE, "config.json",
                 "model.safetensors", "model.safetensors.index.json", *STAGING_DIRS)  # fmt: skip
WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")


class NonFiniteLossError(ValueError):
    """Training stopped: `max_consecutive_nonfinite_batches` batches in a row had a NaN or infinite loss."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `path` through a temporary file in the same directory and `os.replace` (never a truncated file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:  # a failed write (disk full, unencodable text, interrupt) leaves no temporary file
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            temporary.unlink()
        raise


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete directory `source` to `target`, replacing it. A directory cannot be renamed over a
    non-empty one: the old one is renamed aside first (`recover_directory` puts it back if we stop in between)."""
    aside = target.with_name(f".{target.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        os.replace(target, aside)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)


def recover_directory(target: Path) -> None:
    """Undo a `replace_directory` interrupted between its two renames."""
    aside = target.with_name(f".{target.name}.old")
    if not target.exists() and aside.is_dir():
        os.replace(aside, target)


def file_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot be read (truncated, not what its suffix says), or None. Cheap: safetensors
    headers (which must cover the file) and the end-of-archive record of torch's zip files; no tensor is loaded."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                pass
        elif path.suffix in (".bin", ".pkl", ".pt", ".pth") and not zipfile.is_zipfile(path):
            return f"{path}: truncated or not a torch archive"
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except Exception as error:  # SafetensorError, JSONDecodeError, OSError, UnicodeDecodeError
        return f"{path}: {type(error).__name__}: {error}"
    return None


def load_weights(model: torch.nn.Module, directory: Path, allow_missing: str | None = None) -> None:
    """Load the `*.safetensors` files of a `save_pretrained` directory into `model` (strict, except missing keys
    containing `allow_missing`); a `ValueError` naming the file when one cannot be read or does not match."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory} holds no *.safetensors weights")
    state_dict = {}
    for file in files:
        try:
            state_dict.update(load_file(file))
        except Exception as error:  # SafetensorError names no file
            raise ValueError(f"{file}: cannot be read ({type(error).__name__}: {error})") from error
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not (allow_missing and allow_missing in k)]
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match the model: missing {missing}, unexpected {unexpected}")


class RowIndexedDataset(torch.utils.data.Dataset):
    """`(index, row)` pairs of a map-style dataset, so that a batch knows its dataset rows (error messages)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return int(index), self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        getitems = getattr(self.dataset, "__getitems__", None)
        rows = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return list(zip((int(i) for i in indices), rows))


def check_labels(labels: torch.Tensor, num_labels: int, is_regression: bool, rows: list[int]) -> None:
    """A `ValueError` naming the dataset row of the first label the loss cannot take: a class index outside
    `0..num_labels-1`, or a NaN/infinite target (regression, soft labels)."""
    if labels.is_floating_point():
        bad = ~torch.isfinite(labels)
        bad = bad.reshape(bad.shape[0], -1).any(dim=-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"dataset row {rows[i]}: label {labels[i].tolist()} is not finite; expected finite targets"
            )
    elif not is_regression:
        bad = (labels < 0) | (labels >= num_labels)
        bad = bad.reshape(bad.shape[0], -1).any(dim=-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"dataset row {rows[i]}: label {labels[i].tolist()} is out of range; expected a class index in "
                f"0..{num_labels - 1} (the model has {num_labels} labels)"
            )


class RowIndexedCollator:
    """Collate `RowIndexedDataset` items with `collator`, check the labels (before any loss sees them) and add
    `row_indices` (B,) to the batch."""

    def __init__(self, collator: Callable, num_labels: int, is_regression: bool):
        self.collator, self.num_labels, self.is_regression = collator, num_labels, is_regression

    def __call__(self, items: list[tuple[int, Any]]) -> dict:
        indices = [index for index, _ in items]
        try:
            batch = self.collator([row for _, row in items])
        except ValueError as error:  # its "row k" counts within the batch: name the dataset rows too
            raise ValueError(f"batch of dataset rows {indices}: {error}") from error
        if isinstance(batch.get("labels"), torch.Tensor):
            check_labels(batch["labels"], self.num_labels, self.is_regression, indices)
        batch["row_indices"] = torch.tensor(indices)
        return batch


def default_collator(label_column: str | list[str] = "label") -> Callable:
    """The data package's padding collator (`avemotion.data.collators.AvEmotionCollator`)."""
    from avemotion.data.collators import AvEmotionCollator

    return AvEmotionCollator(label_column=label_column)


def set_backbones_trainable(model: torch.nn.Module, freeze: bool | None) -> None:
    """Apply one freeze flag to every backbone the model's config knows (VAVL: `freeze_audio_backbone`,
    `freeze_visual_backbone`; multi-level fusion: `freeze_audio_encoder`, `freeze_text_encoder`). None: keep."""
    if freeze is None:
        return
    config = model.config
    flags = [f for f in ("freeze_audio_backbone", "freeze_visual_backbone", "freeze_audio_encoder",
                         "freeze_text_encoder") if hasattr(config, f)]  # fmt: skip
    if not flags:
        raise ValueError(f"{type(model).__name__} has no backbone freeze flags; leave freeze_backbones at None")
    for flag in flags:
        setattr(config, flag, freeze)
    base = getattr(model, "base_model", model)
    if hasattr(base, "apply_backbone_freezing"):
        base.apply_backbone_freezing()
    else:  # no helper: set requires_grad on the backbone modules named after the flags
        for name in ("audio_backbone", "visual_backbone", "audio_encoder", "text_encoder"):
            module = getattr(base, name, None)
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(not freeze)


def expected_branches(model: torch.nn.Module) -> list[str]:
    """Output branches the evaluation reports for this model (missing ones are NaN-filled per batch)."""
    config = model.config
    if config.model_type == "vavl":
        return ["logits", "fusion_logits", "audio_logits", "visual_logits"]
    return ["logits", *getattr(config, "fusion_members", [])]


def branch_tensors(outputs: Any, branches: list[str], batch_size: int, num_labels: int) -> dict[str, torch.Tensor]:
    """Per-branch (B, K) float tensors, NaN on rows the branch did not score (e.g. no video)."""
    head_logits = outputs.get("head_logits") or {}
    reference = outputs["logits"]
    result = {}
    for name in branches:
        value = head_logits.get(name) if name in head_logits else outputs.get(name)
        if value is None:
            value = reference.new_full((batch_size, num_labels), math.nan)
        else:
            value = value.float()
            audio, visual = outputs.get("audio_present"), outputs.get("visual_present")
            rows = {"audio_logits": audio, "visual_logits": visual}.get(name)
            if name == "fusion_logits" and audio is not None and visual is not None:
                rows = audio & visual
            if rows is not None:
                value = value.masked_fill(~rows.unsqueeze(-1), math.nan)
        result[name] = value.detach().float()
    return result


class EmotionTrainer:
    """Train and evaluate an avemotion task model with `accelerate`.

    Args:
        model: a `VavlForEmotionRecognition`, `MultiLevelFusionForEmotionRecognition` or any model whose forward
            takes `labels` and returns `loss` and `logits`.
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
        self.data_collator = data_collator or default_collator(args.label_column)
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            log_with=None if args.report_to == "none" else args.report_to,
            project_dir=args.output_dir,
            # one VAVL step leaves the other modality's parameters unused
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        )
        set_seed(args.seed)
        set_backbones_trainable(model, args.freeze_backbones)
        self.steps: tuple[TrainingStep, ...] = resolve_schedule(args.schedule, model)
        self.is_regression = getattr(model.config, "problem_type", None) == "regression"
        self.branches = expected_branches(model)
        self.num_labels = model.config.num_labels
        self.metric_name = args.metric_for_best_model or (
            "combined/ccc_mean" if self.is_regression else "combined/unweighted_accuracy"
        )
        self.greater_is_better = (
            args.greater_is_better if args.greater_is_better is not None else "loss" not in self.metric_name
        )
        self.output_dir = Path(args.output_dir)
        self.model = model
        self.state: dict[str, Any] = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best_metric": None,
            "best_epoch": None,
            "evaluations_without_improvement": 0,
            "nonfinite_skipped_batches": 0,
            "consecutive_nonfinite_batches": 0,
            "log_history": [],
        }
        # checkpoints hold the model as a `save_pretrained` directory (config, weights, processor, card), not as
        # accelerate's wrapped state dict
        self.accelerator.register_save_state_pre_hook(self._save_model_hook)
        self.accelerator.register_load_state_pre_hook(self._load_model_hook)
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
        if args.optimizer == "adam":
            return torch.optim.Adam(
                param_groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                weight_decay=args.weight_decay,
            )  # fmt: skip
        if args.optimizer == "adamw":
            return torch.optim.AdamW(
                param_groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                weight_decay=args.weight_decay,
            )  # fmt: skip
        return torch.optim.SGD(param_groups, momentum=args.sgd_momentum, weight_decay=args.weight_decay)

    def _dataloader(self, dataset, train: bool) -> DataLoader:
        batch_size = self.args.per_device_train_batch_size if train else self.args.per_device_eval_batch_size
        return DataLoader(
            RowIndexedDataset(dataset),
            batch_size=batch_size,
            shuffle=train and self.args.shuffle,
            collate_fn=RowIndexedCollator(self.data_collator, self.num_labels, self.is_regression),
            num_workers=self.args.dataloader_num_workers,
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
        acc = self.accelerator
        self.optimizer = self._create_optimizer(self.model)
        train_loader = self._dataloader(self.train_dataset, train=True)
        self.model, self.optimizer, self.train_loader = acc.prepare(self.model, self.optimizer, train_loader)
        self.eval_loader = None
        if self.eval_dataset is not None:
            self.eval_loader = acc.prepare(self._dataloader(self.eval_dataset, train=False))
        self.updates_per_epoch = math.ceil(len(self.train_loader) / self.args.gradient_accumulation_steps)
        total = self.updates_per_epoch * self.args.num_train_epochs
        warmup = self.args.warmup_steps or math.ceil(self.args.warmup_ratio * total)
        # stepped by the trainer once per update (not through accelerate, which would step it once per process)
        self.lr_scheduler = get_scheduler(
            self.args.lr_scheduler_type, self.optimizer, num_warmup_steps=warmup, num_training_steps=total
        )
        acc.register_for_checkpointing(self.lr_scheduler)
        self._named = [(self._parameter_names[id(p)], p) for g in self.optimizer.param_groups for p in g["params"]]
        # running statistics (BatchNorm) that a forward updates: restored when a step's loss is not finite
        self._running_buffers = [
            b for m in self.model.modules() if getattr(m, "track_running_stats", False) for b in m.buffers(False)
        ]
        self._stash: dict[str, list[torch.Tensor | None]] = {}
        if acc.trackers == [] and self.args.report_to != "none":
            acc.init_trackers("avemotion", config={k: str(v) for k, v in self.args.to_dict().items()})
        self._prepared = True

    # ------------------------------------------------------------------------------------------ training

    def train(self) -> dict[str, Any]:
        """Train; returns the evaluation report of the selected (best) model, or of the last epoch without an
        eval set. The selected model is saved to `output_dir` (with the processor, if any)."""
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
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / ARGS_FILE, json.dumps(args.to_dict(), indent=2, sort_keys=True) + "\n")
            if args.resume_from_checkpoint:  # the log: the checkpoint's epochs, not the interrupted run's later ones
                lines = "".join(json.dumps(record) + "\n" for record in self.state["log_history"])
                atomic_write_text(self.output_dir / LOG_FILE, lines)
        report: dict[str, Any] = {}
        start_epoch = self.state["epoch"]
        for epoch in range(start_epoch, args.num_train_epochs):
            if self._stopped_early():
                break
            self.state["epoch"] = epoch
            train_loss = self._train_epoch(epoch)
            record = {"epoch": epoch + 1, "global_step": self.state["global_step"], "train_loss": train_loss,
                      "nonfinite_skipped_batches": self.state["epoch_nonfinite_skipped_batches"]}  # fmt: skip
            if self.eval_loader is not None:
                report = self.evaluate()
                record["eval"] = report
                self._update_best(report, epoch)
            self.state["epoch"], self.state["step_in_epoch"] = epoch + 1, 0
            self.state["log_history"].append(record)
            self._log_epoch(record)
            if args.save_strategy == "epoch":
                self._save_checkpoint()
        self._finish(report)
        acc.end_training()
        return self.state.get("best_report") or report

    def _previous_run(self) -> list[str]:
        return [name for name in RUN_ARTIFACTS if (self.output_dir / name).exists()]

    def _claim_output_dir(self) -> None:
        """Refuse an output_dir that holds another run (mixed checkpoints and logs), unless resuming it or told to
        overwrite it (then its run files are deleted first), as `transformers.Trainer` does."""
        acc, args = self.accelerator, self.args
        found = self._previous_run()
        # every process looks before any of them writes (training_args.json) or deletes: else a later process
        # would take the main process's new files for a previous run
        acc.wait_for_everyone()
        if not found or args.resume_from_checkpoint:
            return
        if not args.overwrite_output_dir:
            raise ValueError(
                f"output_dir {self.output_dir} already holds a training run ({', '.join(found)}); pass "
                "--overwrite_output_dir (overwrite_output_dir=True) to delete it and train anew, --resume "
                "(resume_from_checkpoint='last') to continue it, or another --output_dir"
            )
        if acc.is_main_process:
            for name in found:
                path = self.output_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            for pattern in WEIGHT_PATTERNS:
                for path in self.output_dir.glob(pattern):
                    path.unlink()
            logger.warning(
                "overwrite_output_dir: deleted the previous run's %s in %s", ", ".join(found), self.output_dir
            )
        acc.wait_for_everyone()

    def _stopped_early(self) -> bool:
        patience = self.args.early_stopping_patience
        if patience is not None and self.state["evaluations_without_improvement"] >= patience:
            self.accelerator.print(
                f"early stopping: no improvement of {self.metric_name} in {patience} evaluations "
                f"(best {self.state['best_metric']} at epoch {self.state['best_epoch']})"
            )
            return True
        return False

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        acc, args = self.accelerator, self.args
        self.train_loader.set_epoch(epoch)
        skip = self.state["step_in_epoch"]
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        num_batches = len(self.train_loader)
        progress = tqdm(
            total=num_batches, initial=skip, desc=f"epoch {epoch + 1}/{args.num_train_epochs}",
            disable=args.disable_tqdm or not acc.is_local_main_process,
        )  # fmt: skip
        # running sums live in the state so that a resumed epoch reports the same mean loss
        if not skip:
            self.state["loss_sums"] = {step.name: [0.0, 0] for step in self.steps}
            self.state["epoch_nonfinite_skipped_batches"] = 0
        sums = self.state["loss_sums"]
        self.model.train()
        for index, batch in enumerate(loader, start=skip):
            self._batch_rows = batch.pop("row_indices", None)
            batch = self._prepare_labels(batch)
            boundary = (index + 1) % args.gradient_accumulation_steps == 0 or index + 1 == num_batches
            self._nonfinite_steps = []
            losses = self._training_batch(batch, boundary)
            self._count_nonfinite(epoch, index, num_batches)
            for name, value in losses.items():
                sums[name][0] += value
                sums[name][1] += 1
            self.state["step_in_epoch"] = index + 1
            progress.update(1)
            progress.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
            if boundary:
                self.lr_scheduler.step()
                self.state["global_step"] += 1
                step = self.state["global_step"]
                if args.logging_steps and step % args.logging_steps == 0:
                    acc.log({f"train/{k}_loss": v for k, v in losses.items()}, step=step)
                if args.save_strategy == "steps" and step % args.save_steps == 0 and index + 1 < num_batches:
                    self._save_checkpoint()
        progress.close()
        # mean over the batches each step ran on, averaged over processes
        totals = torch.tensor([sums[k] for k in sums], dtype=torch.float64, device=acc.device)
        totals = acc.reduce(totals, reduction="sum")
        return {k: float(totals[i, 0] / totals[i, 1]) for i, k in enumerate(sums) if totals[i, 1] > 0}

    def _prepare_labels(self, batch: dict) -> dict:
        """Regression targets on the model's output scale: `(y - min) / (max - min)` when `label_scale` is set."""
        scale = getattr(self.accelerator.unwrap_model(self.model).config, "label_scale", None)
        if self.is_regression and scale is not None:
            low, high = scale
            batch["labels"] = (batch["labels"].float() - low) / (high - low)
        return batch

    def _step_active(self, batch: dict, step: TrainingStep) -> tuple[bool, torch.Tensor | None]:
        """Whether `step` runs on this batch (on any process: all processes must run it together), and the rows."""
        rows = rows_with(batch, step.modality)
        local = True if rows is None else bool(rows.any())
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(local)], device=self.accelerator.device)
            return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0), rows
        return local, rows

    def _training_batch(self, batch: dict, boundary: bool) -> dict[str, float]:
        acc, model = self.accelerator, self.model
        if "row_indices" in batch:  # a batch of `_dataloader` given directly (not through `_train_epoch`)
            self._batch_rows = batch.pop("row_indices")
        scale = 1.0 / self.args.gradient_accumulation_steps
        losses = {}
        for step in self.steps:
            active, rows = self._step_active(batch, step)
            if not active:
                continue
            self._restore_gradients(step)
            running = [b.clone() for b in self._running_buffers]
            if step.output_loss is None:
                loss, has_rows = self._fusion_loss(batch, rows)
                self._backward_outside_ddp(loss * scale, step)
            else:
                with contextlib.nullcontext() if boundary else acc.no_sync(model):
                    has_rows = rows is None or bool(rows.any())
                    if has_rows:
                        sub = batch if rows is None else select_rows(batch, rows, step.modality)
                        loss = model(**sub)[step.output_loss]
                    else:
                        loss = model(**self._placeholder(batch, step.modality))[step.output_loss] * 0.0
                    acc.backward(loss * scale)
            # the one host sync of a step (the loss value); every process runs the backward even on a non-finite
            # loss, so that DDP's gradient all-reduce stays in step; the gradients are then dropped
            value = float(loss.detach()) if has_rows else 0.0
            finite = math.isfinite(value)
            if finite and has_rows:
                losses[step.name] = value
            if step.output_loss is None and boundary and acc.num_processes > 1:
                self._all_reduce_step_gradients(step)
            if acc.num_processes > 1:  # skip on every process when any had a non-finite loss
                flag = torch.tensor([float(not finite)], device=acc.device)
                finite = bool(acc.reduce(flag, reduction="sum").item() == 0)
            if not finite:
                self._skip_step(step, rows, running)
                continue
            if boundary:
                self._apply_update(step)
            else:
                self._stash[step.name] = [p.grad for _, p in self._named]
        return losses

    def _skip_step(self, step: TrainingStep, rows: torch.Tensor | None, running: list[torch.Tensor]) -> None:
        """A non-finite loss: drop the step's gradients accumulated so far (later batches of an accumulation window
        still add theirs; the schedule advances) and restore the running statistics its forward changed; `_count_nonfinite` counts the batch and stops when it keeps happening."""
        for _, parameter in self._named:
            parameter.grad = None
        for buffer, saved in zip(self._running_buffers, running):
            buffer.copy_(saved)
        self._nonfinite_steps.append((step.name, rows))

    def _count_nonfinite(self, epoch: int, index: int, num_batches: int) -> None:
        state = self.state
        if not self._nonfinite_steps:
            state["consecutive_nonfinite_batches"] = 0
            return
        state["nonfinite_skipped_batches"] += 1
        state["epoch_nonfinite_skipped_batches"] += 1
        state["consecutive_nonfinite_batches"] += 1
        names = [name for name, _ in self._nonfinite_steps]
        where = (
            f"epoch {epoch + 1}, update {state['global_step'] + 1}, batch {index + 1}/{num_batches}, step(s) "
            f"{names}, {self._describe_rows(self._nonfinite_steps[0][1])}"
        )
        limit = self.args.max_consecutive_nonfinite_batches
        if state["consecutive_nonfinite_batches"] >= limit:
            raise NonFiniteLossError(
                f"non-finite (NaN/inf) loss in {limit} batch(es) in a row (max_consecutive_nonfinite_batches="
                f"{limit}), the last at {where}. Check these rows' features and labels for NaN/inf, or lower the "
                f"learning rate ({self.args.learning_rate})"
            )
        logger.warning(
            "non-finite loss at %s: update skipped (%d skipped so far, %d this epoch)",
            where, state["nonfinite_skipped_batches"], state["epoch_nonfinite_skipped_batches"],
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

    def _placeholder(self, batch: dict, modality: str) -> dict:
        sub = placeholder_batch(batch, modality)
        config = self.accelerator.unwrap_model(self.model).config
        ref = batch["labels"]
        if modality == "audio" and "audio_features" not in sub and "input_values" not in sub:
            sub["audio_features"] = torch.zeros(1, 1, config.audio_feature_dim, device=ref.device)
        if modality == "visual" and "visual_features" not in sub and "pixel_values_videos" not in sub:
            sub["visual_features"] = torch.zeros(1, 1, config.visual_feature_dim, device=ref.device)
        return sub

    def _fusion_loss(self, batch: dict, rows: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """VAVL's fusion step: encoders in eval mode without gradients (as in the original, after the unimodal
        updates), the fusion head in train mode on the concatenated pooled representations."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        head = unwrapped.fusion_head
        if not bool(rows.any()):  # this process has no paired row: a zero loss that still gives every grad a value
            return sum(p.sum() for p in head.parameters()) * 0.0, False
        sub = select_rows(batch, rows, "both")
        labels = sub.pop("labels")
        unwrapped.vavl.eval()
        with torch.no_grad(), self.accelerator.autocast():
            encoded = unwrapped.vavl(**sub)
        unwrapped.vavl.train()
        pooled = torch.cat([encoded.audio_pooled_output, encoded.visual_pooled_output], dim=-1).detach()
        with self.accelerator.autocast():
            loss = unwrapped.task_loss(head(pooled), labels)
        return loss, True

    def _backward_outside_ddp(self, loss: torch.Tensor, step: TrainingStep) -> None:
        """Accumulate the gradients of a loss computed without the DDP-wrapped forward (the fusion step) into the
        step's parameters. `autograd.grad` does not fire DDP's reducer hooks, which expect a DDP forward; the
        gradients are averaged over processes by `_all_reduce_step_gradients` instead."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:  # fp16: scaled like accelerator.backward, unscaled by the optimizer step
            loss = scaler.scale(loss)
        params = [p for name, p in self._named if step.owns(name)]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for parameter, grad in zip(params, grads):
            if grad is not None:
                parameter.grad = grad if parameter.grad is None else parameter.grad + grad

    def _all_reduce_step_gradients(self, step: TrainingStep) -> None:
        """Average the gradients of a step computed outside the DDP forward (the fusion step) over processes."""
        for name, parameter in self._named:
            if step.owns(name):
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                parameter.grad = self.accelerator.reduce(parameter.grad, reduction="mean")

    def _restore_gradients(self, step: TrainingStep) -> None:
        """Gradients accumulated by this step over the previous batches of the update (None after an update)."""
        stash = self._stash.pop(step.name, None)
        for index, (_, parameter) in enumerate(self._named):
            parameter.grad = None if stash is None else stash[index]

    def _apply_update(self, step: TrainingStep) -> None:
        """Clip and apply the gradients of the parameters this step owns; drop every other gradient (DDP may have
        filled unused parameters' gradients with zeros, which Adam would otherwise apply)."""
        owned = []
        for name, parameter in self._named:
            if step.owns(name):
                if parameter.grad is not None:
                    owned.append(parameter)
            else:
                parameter.grad = None
        if owned:
            if self.args.max_grad_norm is not None:
                self.accelerator.clip_grad_norm_(owned, self.args.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

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
        references, loss_sum, loss_rows = [], 0.0, 0
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
                loss_sum += float(outputs["loss"]) * size
                loss_rows += size
        self.model.train()
        totals = acc.reduce(torch.tensor([loss_sum, loss_rows], dtype=torch.float64, device=acc.device), "sum")
        loss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
        return {k: np.concatenate(v) for k, v in outputs_per_branch.items()}, np.concatenate(references), loss

    def evaluate(self, dataset=None) -> dict[str, Any]:
        """Metrics per output branch (`combined`, `audio_visual`, `audio`, `visual`, or the fusion model's heads):
        WA, UA, macro/micro-F1 and confusion matrix, or CCC per attribute; plus `loss` and `num_samples`."""
        branches, references, loss = self.predict(dataset)
        config = self.accelerator.unwrap_model(self.model).config
        problem_type = "regression" if self.is_regression else "single_label_classification"
        id2label = {int(k): v for k, v in (config.id2label or {}).items()}
        report: dict[str, Any] = branch_metrics(branches, references, problem_type, id2label)
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
        best = self.state["best_metric"]
        improved = math.isfinite(value) and (
            best is None or (value > best if self.greater_is_better else value < best)
        )
        if not math.isfinite(value):
            logger.warning("epoch %d: %s is %s (non-finite outputs?); not an improvement", epoch + 1, self.metric_name,
                           value)  # fmt: skip
        if improved:
            self.state.update(best_metric=value, best_epoch=epoch + 1, evaluations_without_improvement=0)
            self.state["best_report"] = report
            self._save_best_model(report)
        else:
            self.state["evaluations_without_improvement"] += 1

    # ------------------------------------------------------------------------------------------ saving

    def save_model(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> None:
        """Save the unwrapped model (`save_pretrained`), the processor (if any) and a model card into `directory`
        (from the main process). Each file is written in a staging folder and renamed into place; weight files of
        an earlier save that this one does not write are removed."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)  # a collective under some distributed back-ends
        if acc.is_main_process:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            staging = directory / SAVING_DIR
            shutil.rmtree(staging, ignore_errors=True)
            self._write_model_dir(staging, state_dict, metrics)
            written = {path.name for path in staging.iterdir()}
            for pattern in WEIGHT_PATTERNS:
                for stale in directory.glob(pattern):
                    if stale.name not in written:
                        stale.unlink()
            for path in staging.iterdir():
                os.replace(path, directory / path.name)
            staging.rmdir()
        acc.wait_for_everyone()

    def _save_best_model(self, metrics: dict[str, Any]) -> None:
        """`best_model/` as a whole: written next to it, then swapped in."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            staging = self.output_dir / f".{BEST_DIR}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            self._write_model_dir(staging, state_dict, metrics)
            replace_directory(staging, self.output_dir / BEST_DIR)
        acc.wait_for_everyone()

    def _write_model_dir(self, directory: Path, state_dict: dict, metrics: dict[str, Any] | None) -> None:
        """A directory `pipeline`/`from_pretrained` can load: config, weights, processor (if any), model card."""
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(directory, save_function=self.accelerator.save, state_dict=state_dict)
        if self.processor is not None:
            self.processor.save_pretrained(directory)
        self.model_card(metrics).save(str(directory / "README.md"))

    def model_card(self, metrics: dict[str, Any] | None = None):
        """The model card of a directory this trainer writes (`avemotion.training.hub.build_model_card`): evaluation
        metrics per branch, the training options (local paths reduced to their base names)."""
        from .hub import build_model_card

        config = self.accelerator.unwrap_model(self.model).config
        hyperparameters = self.args.to_dict()
        for key in ("output_dir", "resume_from_checkpoint"):
            if hyperparameters.get(key):
                hyperparameters[key] = Path(hyperparameters[key]).name
        rows = len(self.train_dataset) if self.train_dataset is not None else 0
        training_data = (
            f"Trained with `avemotion.training.EmotionTrainer` on {rows} rows ({self.state['epoch']} epochs, "
            f"{self.state['global_step']} updates); metrics on the evaluation set it was selected on."
        )
        if self.processor is None:
            training_data += (
                "\n\nNo processor was saved with this model: it takes pre-extracted `audio_features` / "
                '`visual_features` (see `avemotion.data.cache_features`). `pipeline("audio-visual-emotion")` needs '
                "the processor matching those features saved next to the model."
            )
        return build_model_card(
            config.model_type, self.output_dir.name, metrics=metrics, training_data=training_data,
            hyperparameters=hyperparameters, split="evaluation",
        )  # fmt: skip

    def _save_model_hook(self, models: list, weights: list, output_dir: str) -> None:
        """accelerate `save_state` hook: the model goes into the checkpoint as a `save_pretrained` directory."""
        if len(models) != 1 or len(weights) != 1:  # FSDP/DeepSpeed save their own way
            return
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            history = self.state["log_history"]
            self._write_model_dir(Path(output_dir), state_dict, history[-1].get("eval") if history else None)
        weights.pop()

    def _load_model_hook(self, models: list, input_dir: str) -> None:
        """accelerate `load_state` hook: read the model of a checkpoint written by `_save_model_hook`."""
        if len(models) == 1 and (Path(input_dir) / "config.json").is_file():
            load_weights(self.accelerator.unwrap_model(models[0]), Path(input_dir))
            models.pop()

    def _save_checkpoint(self) -> None:
        """`checkpoints/checkpoint-<update>`: accelerate's state and the model directory, written under a temporary
        name and renamed when complete (an interrupted save leaves the previous checkpoints as they were)."""
        acc = self.accelerator
        checkpoints = self.output_dir / CHECKPOINTS_DIR
        name = f"checkpoint-{self.state['global_step']:07d}"
        staging = checkpoints / f".{name}.tmp"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(staging))
        acc.wait_for_everyone()  # every process's random states are written
        if acc.is_main_process:
            atomic_write_text(staging / STATE_FILE, json.dumps(self.state, indent=2) + "\n")
            replace_directory(staging, checkpoints / name)
            if self.args.save_total_limit:
                for old in sorted(checkpoints.glob("checkpoint-*"))[: -self.args.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _checkpoint_problem(self, directory: Path) -> str | None:
        """Why `directory` cannot be resumed from (a missing or unreadable file, named), or None after loading it."""
        if not (directory / STATE_FILE).is_file():
            return f"{directory} is not a complete trainer checkpoint (no {STATE_FILE})"
        for path in sorted(directory.iterdir()):
            problem = file_problem(path) if path.is_file() else None
            if problem:
                return problem
        try:
            state = json.loads((directory / STATE_FILE).read_text())
            if not isinstance(state, dict) or "global_step" not in state:
                return f"{directory / STATE_FILE}: not a trainer state"
            self.accelerator.load_state(str(directory))
        except Exception as error:  # whatever accelerate/torch raise on a damaged file: name the checkpoint
            return f"{directory}: {type(error).__name__}: {error}"
        self.state = {**self.state, **state}
        return None

    def _load_checkpoint(self, checkpoint: str) -> None:
        """Restore a checkpoint; `"last"`: the newest one that every process can read (an unreadable or incomplete
        one is skipped with a warning naming it, and the one before it is used)."""
        acc = self.accelerator
        recover_directory(self.output_dir / BEST_DIR)
        if checkpoint == "last":
            candidates = sorted((self.output_dir / CHECKPOINTS_DIR).glob("checkpoint-*"), reverse=True)
            candidates = [d for d in candidates if d.is_dir()]
            if not candidates:
                raise FileNotFoundError(f"no checkpoint to resume from in {self.output_dir / CHECKPOINTS_DIR}")
        else:
            candidates = [Path(checkpoint)]
            if not (candidates[0] / STATE_FILE).is_file():
                raise FileNotFoundError(f"{checkpoint} is not a trainer checkpoint (no {STATE_FILE})")
        problems = []
        for directory in candidates:
            problem = self._checkpoint_problem(directory)
            if acc.num_processes > 1:  # resume from the same checkpoint everywhere
                flag = torch.tensor([float(problem is not None)], device=acc.device)
                if acc.reduce(flag, reduction="sum").item() > 0 and problem is None:
                    problem = f"{directory}: unreadable on another process"
            if problem is None:
                break
            problems.append(problem)
            if checkpoint == "last":
                logger.warning("cannot resume from %s (%s); trying the checkpoint before it", directory, problem)
        else:
            raise ValueError("no checkpoint to resume from could be read: " + "; ".join(problems))
        self.state.setdefault("epoch_nonfinite_skipped_batches", 0)
        acc.print(f"resumed from {directory}: epoch {self.state['epoch'] + 1}, batch {self.state['step_in_epoch']}")

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
        acc.log(flat, step=self.state["global_step"])
        if acc.is_main_process:  # rewritten whole (atomically): the run's epochs, never a truncated line
            lines = "".join(json.dumps(entry) + "\n" for entry in self.state["log_history"])
            atomic_write_text(self.output_dir / LOG_FILE, lines)

    def _finish(self, report: dict[str, Any]) -> None:
        """Put the selected model (best evaluation, else the last epoch) into `output_dir` and the model."""
        acc = self.accelerator
        best_dir = self.output_dir / BEST_DIR
        if self.state.get("best_report") is not None and best_dir.is_dir():
            acc.wait_for_everyone()
            load_weights(acc.unwrap_model(self.model), best_dir, allow_missing="backbone")
            report = self.state["best_report"]
        self.save_model(self.output_dir, metrics=report or None)
        if acc.is_main_process:
            results = {
                "metric_for_best_model": self.metric_name,
                "best_metric": self.state["best_metric"],
                "best_epoch": self.state["best_epoch"],
                "epochs_trained": self.state["epoch"],
                "global_step": self.state["global_step"],
                "num_processes": acc.num_processes,
                "distributed_type": str(acc.distributed_type),
                "eval": report,
            }
            atomic_write_text(self.output_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")


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
    result["best_epoch"] = trainer.state["best_epoch"]
    result["history"] = trainer.state["log_history"]
    return result
