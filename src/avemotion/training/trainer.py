"""The Accelerate trainer: VAVL's three-step schedule or joint training, evaluation per output branch, checkpoints
with exact mid-epoch resumption, early stopping and model selection.

Runs unchanged on one CPU, several CPU processes (`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
--num_processes 2 ...`), GPUs and several machines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
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
        processor: saved (and pushed) next to the model when given.
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
            "log_history": [],
        }

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
            dataset,
            batch_size=batch_size,
            shuffle=train and self.args.shuffle,
            collate_fn=self.data_collator,
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
        self._stash: dict[str, list[torch.Tensor | None]] = {}
        if acc.trackers == [] and self.args.report_to != "none":
            acc.init_trackers("avemotion", config={k: str(v) for k, v in self.args.to_dict().items()})
        self._prepared = True

    # ------------------------------------------------------------------------------------------ training

    def train(self) -> dict[str, Any]:
        """Train; returns the evaluation report of the selected (best) model, or of the last epoch without an
        eval set. The selected model is saved to `output_dir` (with the processor, if any)."""
        self._prepare()
        acc, args = self.accelerator, self.args
        if args.resume_from_checkpoint:
            self._load_checkpoint(args.resume_from_checkpoint)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            args.save(self.output_dir / "training_args.json")
        report: dict[str, Any] = {}
        start_epoch = self.state["epoch"]
        for epoch in range(start_epoch, args.num_train_epochs):
            if self._stopped_early():
                break
            self.state["epoch"] = epoch
            train_loss = self._train_epoch(epoch)
            record = {"epoch": epoch + 1, "global_step": self.state["global_step"], "train_loss": train_loss}
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
        sums = self.state["loss_sums"]
        self.model.train()
        for index, batch in enumerate(loader, start=skip):
            batch = self._prepare_labels(batch)
            boundary = (index + 1) % args.gradient_accumulation_steps == 0 or index + 1 == num_batches
            losses = self._training_batch(batch, boundary)
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
        scale = 1.0 / self.args.gradient_accumulation_steps
        losses = {}
        for step in self.steps:
            active, rows = self._step_active(batch, step)
            if not active:
                continue
            self._restore_gradients(step)
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
            if has_rows:
                losses[step.name] = float(loss.detach())
            if step.output_loss is None and boundary and acc.num_processes > 1:
                self._all_reduce_step_gradients(step)
            if boundary:
                self._apply_update(step)
            else:
                self._stash[step.name] = [p.grad for _, p in self._named]
        return losses

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
        improved = best is None or (value > best if self.greater_is_better else value < best)
        if improved:
            self.state.update(best_metric=value, best_epoch=epoch + 1, evaluations_without_improvement=0)
            self.state["best_report"] = report
            self.save_model(self.output_dir / BEST_DIR)
        else:
            self.state["evaluations_without_improvement"] += 1

    # ------------------------------------------------------------------------------------------ saving

    def save_model(self, directory: str | Path) -> None:
        """`save_pretrained` of the unwrapped model (and processor) from the main process."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            directory = Path(directory)
            model = acc.unwrap_model(self.model)
            model.save_pretrained(directory, save_function=acc.save, state_dict=acc.get_state_dict(self.model))
            if self.processor is not None:
                self.processor.save_pretrained(directory)
        else:
            acc.get_state_dict(self.model)  # collective under some distributed back-ends
        acc.wait_for_everyone()

    def _save_checkpoint(self) -> None:
        acc = self.accelerator
        directory = self.output_dir / CHECKPOINTS_DIR / f"checkpoint-{self.state['global_step']:07d}"
        acc.save_state(str(directory))
        if acc.is_main_process:
            (directory / STATE_FILE).write_text(json.dumps(self.state, indent=2) + "\n")
            if self.args.save_total_limit:
                for old in sorted((self.output_dir / CHECKPOINTS_DIR).glob("checkpoint-*"))[
                    : -self.args.save_total_limit
                ]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _load_checkpoint(self, checkpoint: str) -> None:
        if checkpoint == "last":
            found = sorted((self.output_dir / CHECKPOINTS_DIR).glob("checkpoint-*"))
            found = [d for d in found if (d / STATE_FILE).is_file()]
            if not found:
                raise FileNotFoundError(f"no checkpoint to resume from in {self.output_dir / CHECKPOINTS_DIR}")
            directory = found[-1]
        else:
            directory = Path(checkpoint)
            if not (directory / STATE_FILE).is_file():
                raise FileNotFoundError(f"{directory} is not a trainer checkpoint (no {STATE_FILE})")
        self.accelerator.load_state(str(directory))
        self.state = json.loads((directory / STATE_FILE).read_text())
        self.accelerator.print(
            f"resumed from {directory}: epoch {self.state['epoch'] + 1}, batch {self.state['step_in_epoch']}"
        )

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
        if acc.is_main_process:
            with open(self.output_dir / LOG_FILE, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _finish(self, report: dict[str, Any]) -> None:
        """Put the selected model (best evaluation, else the last epoch) into `output_dir` and the model."""
        acc = self.accelerator
        best_dir = self.output_dir / BEST_DIR
        if self.state.get("best_report") is not None and best_dir.is_dir():
            from safetensors.torch import load_file

            acc.wait_for_everyone()
            state_dict = {}
            for file in sorted(best_dir.glob("*.safetensors")):
                state_dict.update(load_file(file))
            missing, unexpected = acc.unwrap_model(self.model).load_state_dict(state_dict, strict=False)
            if unexpected or [k for k in missing if "backbone" not in k]:
                raise ValueError(f"best model does not match the model: missing {missing}, unexpected {unexpected}")
            report = self.state["best_report"]
        self.save_model(self.output_dir)
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
            (self.output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")


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
