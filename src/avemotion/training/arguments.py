"""Training options of the avemotion trainer, and their command-line form.

Every option of a dataclass here (and of the `avemotion train` / `evaluate` dataclasses in `cli_train` and
`cli_evaluate`) becomes a command-line option through `transformers.HfArgumentParser`: `--name` (the canonical
spelling, with underscores) and `--name-with-dashes`. Only `CUSTOM_TYPES` (a prefix-to-learning-rate map, a label
column or a list of them, an optional boolean) are declared by hand, with their own parsers.

The defaults follow the original VAVL recipe (Adam, lr 5e-5, coupled weight decay 5e-7, betas (0.95, 0.999), 20
epochs, batch 32, no schedule) with the original code's bugs fixed: training data is shuffled (a seeded order per
epoch), a seed is applied, fp16 uses loss scaling (accelerate's GradScaler), and labels are never modified in place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEDULES = ("auto", "joint")
# deprecated schedule names -> the name that replaces them (accepted with a FutureWarning)
SCHEDULE_ALIASES = {"vavl": "auto"}
OPTIMIZERS = ("adam", "adamw", "sgd")
OPTIMIZER_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")


@dataclass
class TrainingArguments:
    """Options of [`EmotionTrainer`].

    Args:
        output_dir: where the final (best) model, `eval_results.json`, `training_log.jsonl` and `checkpoints/` go.
            Every model directory written there (the output, `best_model/`, each checkpoint) holds the config, the
            weights, the processor (when the trainer has one) and a model card (`README.md`).
        overwrite_output_dir: train into an `output_dir` that already holds a run (its checkpoints, log, best model
            or trained model): that run's files are deleted first. Without it, such an `output_dir` is refused
            (a `ValueError`) unless `resume_from_checkpoint` continues the run (then the log is cut back to the
            checkpoint's epochs and nothing is deleted).
        schedule: `"auto"`: the training steps the model declares (`model.training_steps()`: per batch, which
            parameters each step updates, on which loss and which rows; VAVL declares a visual, an acoustic and a
            fusion step, the multi-level fusion model one joint step; a model that declares none is trained
            jointly). `"joint"`: one step on the model's `loss` updating every parameter. The former name
            `"vavl"` is a deprecated alias of `"auto"` (a `FutureWarning`; it is stored as `"auto"`).
        num_train_epochs: passes over the training data.
        per_device_train_batch_size / per_device_eval_batch_size: rows per batch on each process. The default (32,
            the recipe's) leaves a large GPU mostly idle on cached features (the per-batch cost is launches, not
            arithmetic): raise it there (e.g. 128-512), or set `auto_find_batch_size` and start high. The learning
            rate is the recipe's for 32 rows per update; with a larger batch, consider scaling it.
        auto_find_batch_size: on an out-of-memory error (CUDA, XPU, MPS or CPU), start the run again from the
            initial weights with a smaller batch and more gradient accumulation, as often as needed
            (`accelerate.utils.find_executable_batch_size`): the largest divisor of the rows per update (batch size
            times accumulation) at most half the failed batch size, so the rows per update stay exactly the same
            (16 -> 8 -> 4, 6 -> 3 -> 1, 5 -> 1). Not with `resume_from_checkpoint`, nor with several processes (a
            `ValueError`: an out-of-memory error on one would leave the others waiting).
        optimizer: `"adam"` (coupled L2 weight decay, as the original), `"adamw"` or `"sgd"`.
        optimizer_implementation: `"auto"` (fused Adam/AdamW where this torch has the kernels: CUDA, CPU, ...; else
            foreach), `"fused"` (Adam/AdamW), `"foreach"` or `"for_loop"` (PyTorch's per-parameter reference, used
            before this option existed). Foreach results are bitwise the for-loop's; fused ones differ by float
            rounding (training losses within 1e-6 on small models; a parameter whose gradient is zero up to rounding,
            such as an attention key bias, can move differently by up to the learning rate, since Adam normalises
            its gradient). Fused is one kernel per update instead of about ten per parameter, and lets a non-finite
            loss skip its update on the device (one host read per batch, not per step). Not fused with sgd.
        learning_rate: learning rate of every parameter not matched by `parameter_group_lr`.
        parameter_group_lr: parameter-name prefix -> learning rate, e.g. `{"vavl.audio_backbone": 1e-5}`; the longest
            matching prefix wins.
        weight_decay, adam_beta1, adam_beta2, adam_epsilon, sgd_momentum: optimiser settings.
        lr_scheduler_type: a `transformers.get_scheduler` name (`constant_with_warmup`, `linear`, `cosine`, ...).
        warmup_steps / warmup_ratio: warm-up length in optimiser updates (steps win over the ratio).
        gradient_accumulation_steps: batches whose gradients are summed before each update (per VAVL sub-step).
        max_grad_norm: clip the gradient norm of each update (None: no clipping).
        mixed_precision: `"no"`, `"fp16"` (loss-scaled) or `"bf16"`. Weights, gradients and optimizer state stay
            float32; the forward runs under autocast (accelerate's), the losses are float32. bf16 pays on a GPU once
            a batch is large enough for arithmetic to dominate: autocast adds a cast per weight and forward, which at
            small batches (launch-bound) costs more than it saves.
        tf32: let float32 matrix products and convolutions on CUDA use TF32 (True), forbid it (False), or leave
            PyTorch's setting (None). TF32 changes results at about 1e-3 relative.
        torch_compile / torch_compile_mode: `torch.compile` the model's forward (in place: it keeps its class and
            `save_pretrained`); the mode (`"default"`, `"reduce-overhead"`, `"max-autotune"`) or None. Compiling
            takes a while on the first batches and again for each new input shape: pad to a few lengths with
            `pad_to_multiple_of`.
        pad_to_multiple_of: round each batch's padded time length (frames, samples, tokens) up to a multiple of
            this (default collator), so that shapes repeat (CUDA graphs, `torch.compile`, cuDNN/oneDNN plan caches).
            The masks make the padding invisible: outputs and losses equal the unpadded ones to float rounding
            (tested on cached features, waveforms and token ids).
        seed: seeds parameters' initialisation (CLI), dropout and the shuffling order.
        shuffle: shuffle the training data each epoch (the original did not).
        freeze_backbones: True/False overrides the model config's backbone freeze flags; None keeps them.
        early_stopping_patience: stop after this many evaluations without improvement (None: never).
        metric_for_best_model: `"loss"` or `"<branch>/<metric>"` of the evaluation report, e.g.
            `"combined/unweighted_accuracy"`, `"audio_visual/macro_f1"`, `"combined/ccc_mean"`. Default:
            `combined/unweighted_accuracy` (classification) or `combined/ccc_mean` (regression).
        greater_is_better: direction of that metric (default: False for losses, True otherwise).
        save_strategy: `"epoch"`, `"steps"` (every `save_steps` updates) or `"no"`.
        save_total_limit: checkpoints kept in `output_dir/checkpoints` (oldest deleted first).
        resume_from_checkpoint: `"last"` (the newest readable checkpoint in `output_dir/checkpoints`: an unreadable
            or incomplete one is skipped with a warning naming it) or a checkpoint directory.
        max_consecutive_nonfinite_batches: a training step whose loss is NaN or infinite (a NaN feature or label, a
            diverging learning rate) is not applied: the gradients accumulated so far for that step are dropped (with
            gradient accumulation, the window's later batches still make a smaller update; the learning-rate schedule
            advances as if the update had happened), buffers such as BatchNorm statistics are restored, and a
            warning is logged; the skips are counted per epoch (`nonfinite_skipped_batches` in
            `training_log.jsonl`) and in `trainer_state.json`. Training stops with a `ValueError` naming the epoch,
            the update and the batch's dataset rows when this many batches in a row had a non-finite loss (1: stop at
            the first one).
        label_column: the label column (class index), or a list of columns (regression targets).
        report_to: an accelerate tracker name (`"tensorboard"`, `"wandb"`, `"all"`, ...) or `"none"`.
        logging_steps: log the running loss every N updates (0: only per epoch).
        disable_tqdm: no progress bars.
        dataloader_num_workers: worker processes per data loader.
        dataloader_pin_memory: page-locked training batches on CUDA, copied to the GPU asynchronously.
    """

    output_dir: str = "avemotion-output"
    overwrite_output_dir: bool = False
    schedule: Literal["auto", "joint", "vavl"] = "auto"
    num_train_epochs: int = 20
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int | None = None
    auto_find_batch_size: bool = False
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    optimizer_implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"
    learning_rate: float = 5e-5
    parameter_group_lr: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 5e-7
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    sgd_momentum: float = 0.9
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    tf32: bool | None = None
    torch_compile: bool = False
    torch_compile_mode: str | None = None
    pad_to_multiple_of: int | None = None
    seed: int = 42
    shuffle: bool = True
    freeze_backbones: bool | None = None
    early_stopping_patience: int | None = None
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    save_strategy: Literal["epoch", "steps", "no"] = "epoch"
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    max_consecutive_nonfinite_batches: int = 5
    label_column: str | list[str] = "label"
    report_to: str = "none"
    logging_steps: int = 0
    disable_tqdm: bool = False
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = True

    def __post_init__(self):
        if self.schedule in SCHEDULE_ALIASES:
            replacement = SCHEDULE_ALIASES[self.schedule]
            warnings.warn(
                f"TrainingArguments.schedule={self.schedule!r} is deprecated and will be removed; use "
                f"{replacement!r} (the training steps the model declares), which it now means",
                FutureWarning,
                stacklevel=3,
            )
            self.schedule = replacement
        checks = {
            "schedule": (self.schedule in SCHEDULES, f"one of {SCHEDULES}"),
            "optimizer": (self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}"),
            "optimizer_implementation": (
                self.optimizer_implementation in OPTIMIZER_IMPLEMENTATIONS,
                f"one of {OPTIMIZER_IMPLEMENTATIONS}",
            ),
            "pad_to_multiple_of": (
                self.pad_to_multiple_of is None or self.pad_to_multiple_of >= 1,
                "an integer >= 1 or None",
            ),  # fmt: skip
            "mixed_precision": (self.mixed_precision in ("no", "fp16", "bf16"), "'no', 'fp16' or 'bf16'"),
            "save_strategy": (self.save_strategy in ("epoch", "steps", "no"), "'epoch', 'steps' or 'no'"),
            "num_train_epochs": (self.num_train_epochs >= 1, "an integer >= 1"),
            "per_device_train_batch_size": (self.per_device_train_batch_size >= 1, "an integer >= 1"),
            "gradient_accumulation_steps": (self.gradient_accumulation_steps >= 1, "an integer >= 1"),
            "learning_rate": (self.learning_rate > 0, "a positive number"),
            "warmup_ratio": (0.0 <= self.warmup_ratio < 1.0, "a number in [0, 1)"),
            "save_steps": (self.save_steps >= 1, "an integer >= 1"),
            "max_consecutive_nonfinite_batches": (self.max_consecutive_nonfinite_batches >= 1, "an integer >= 1"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"TrainingArguments.{name} must be {expected}, got {getattr(self, name)!r}")
        if self.optimizer == "sgd" and self.optimizer_implementation == "fused":
            raise ValueError("TrainingArguments.optimizer_implementation='fused' is for adam/adamw; use 'foreach' "
                             "with optimizer='sgd'")  # fmt: skip
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"TrainingArguments.max_grad_norm must be positive or None, got {self.max_grad_norm}")
        for prefix, lr in self.parameter_group_lr.items():
            if not isinstance(lr, (int, float)) or lr < 0:
                raise ValueError(f"parameter_group_lr[{prefix!r}] must be a learning rate >= 0, got {lr!r}")
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ command line


def parse_parameter_groups(text: str) -> dict[str, float]:
    """`"prefix=lr,prefix=lr"` -> `{prefix: lr}`."""
    groups = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefix, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected PREFIX=LR, got {item!r}")
        groups[prefix.strip()] = float(value)
    return groups


def parse_optional_bool(text: str) -> bool | None:
    """`true`/`yes`/`1`, `false`/`no`/`0`, or `none`/`keep`/`""` (None)."""
    lowered = text.strip().lower()
    if lowered in ("none", "keep", ""):
        return None
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false or none, got {text!r}")


def parse_label_column(text: str) -> str | list[str]:
    """`"label"` -> `"label"`; `"arousal,valence"` -> `["arousal", "valence"]` (regression targets)."""
    return text.split(",") if "," in text else text


# the fields whose command-line form HfArgumentParser cannot derive from the type: field name -> (parser, metavar)
CUSTOM_TYPES: dict[str, tuple[Callable[[str], Any], str]] = {
    "parameter_group_lr": (parse_parameter_groups, "PREFIX=LR[,PREFIX=LR...]"),
    "label_column": (parse_label_column, "COLUMN[,COLUMN...]"),
    "freeze_backbones": (parse_optional_bool, "{true,false,none}"),
    "tf32": (parse_optional_bool, "{true,false,none}"),
}


def dataclass_argument_parser(*dataclass_types: type):
    """A `transformers.HfArgumentParser` (no `-h`) with one option per field of `dataclass_types`: `--name` and
    `--name-with-dashes`; the fields of `CUSTOM_TYPES` are declared again with their own parser (the parser's
    `conflict_handler="resolve"` replaces HfArgumentParser's generic version)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, add_help=False, conflict_handler="resolve")
    for dataclass_type in dataclass_types:
        for item in dataclasses.fields(dataclass_type):
            if item.name not in CUSTOM_TYPES:
                continue
            convert, metavar = CUSTOM_TYPES[item.name]
            default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
            names = dict.fromkeys((f"--{item.name}", f"--{item.name.replace('_', '-')}"))  # one for `tf32`
            parser.add_argument(
                *names, dest=item.name, type=convert, default=default, metavar=metavar, help=item.metadata.get("help"),
            )  # fmt: skip
    return parser


def add_dataclass_arguments(parser: argparse.ArgumentParser, *dataclass_types: type) -> None:
    """Add the options of `dataclass_argument_parser(*dataclass_types)` to an existing `parser` (e.g. the `avemotion`
    sub-command's). This is argparse's own `parents=[...]` copy, which the public API offers only where the parser is
    created (`ArgumentParser(parents=...)`), and a sub-command's parser is created by the command."""
    parser._add_container_actions(dataclass_argument_parser(*dataclass_types))
    for action in parser._actions:  # help shows the underscore spelling only; both stay registered for parsing
        strings = action.option_strings
        action.option_strings = [
            s
            for s in strings
            if not (s.startswith("--") and "-" in s[2:] and "--" + s[2:].replace("-", "_") in strings)
        ]


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `TrainingArguments` field (see `dataclass_argument_parser`), and `--resume`."""
    add_dataclass_arguments(parser, TrainingArguments)
    parser.add_argument(
        "--resume", dest="resume_from_checkpoint", action="store_const", const="last",
        help="resume from the last checkpoint in OUTPUT_DIR/checkpoints (--resume_from_checkpoint last)",
    )  # fmt: skip


def dataclass_from_namespace(dataclass_type: type, namespace: argparse.Namespace) -> Any:
    """`dataclass_type(**{the namespace's values of its fields})`."""
    names = {item.name for item in dataclasses.fields(dataclass_type) if item.init}
    return dataclass_type(**{key: value for key, value in vars(namespace).items() if key in names})


def training_arguments_from_namespace(namespace: argparse.Namespace) -> TrainingArguments:
    """The `TrainingArguments` of parsed command-line options."""
    return dataclass_from_namespace(TrainingArguments, namespace)
