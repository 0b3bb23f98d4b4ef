"""`avemotion evaluate`: per-branch metrics of a checkpoint on a split of a saved dataset, written as JSON.

The options are the fields of `cli_train.CorpusArguments` and `EvaluationArguments`, turned into options by
`transformers.HfArgumentParser`: `--batch_size` (the spelling used everywhere), also `--batch-size`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .arguments import add_dataclass_arguments, dataclass_from_namespace
from .cli_train import CorpusArguments


@dataclass
class EvaluationArguments:
    """What `avemotion evaluate` evaluates, and how."""

    model: str = field(metadata={"help": "a checkpoint directory"})
    split: str = "test"
    output: str | None = field(
        default=None, metadata={"help": "JSON file to write (default: MODEL/eval_<split>.json)"}
    )
    batch_size: int = 16
    label_column: str | list[str] = field(
        default="label", metadata={"help": "a column, or comma-separated regression columns"}
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per field of `EvaluationArguments` and `CorpusArguments`."""
    add_dataclass_arguments(parser, EvaluationArguments, CorpusArguments)


def evaluate_checkpoint(model_dir: str, dataset, batch_size: int = 16, label_column="label", **kwargs) -> dict:
    """Per-branch metrics (see `avemotion.metrics.branch_metrics`) of the checkpoint in `model_dir` on `dataset`."""
    from .arguments import TrainingArguments
    from .cli_train import load_model
    from .trainer import EmotionTrainer

    model = load_model(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch, per_device_eval_batch_size=batch_size, label_column=label_column,
            disable_tqdm=True, **kwargs,
        )  # fmt: skip
        return EmotionTrainer(model, args, eval_dataset=dataset).evaluate()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as the parsed options of `add_arguments` say; writes and returns the report."""
    import datasets

    from .cli_train import format_report, load_dataset_dict, load_model

    options = dataclass_from_namespace(EvaluationArguments, args)
    corpus = dataclass_from_namespace(CorpusArguments, args)
    if corpus.data_dir is not None:
        data = load_dataset_dict(corpus, load_model(options.model))
    elif not Path(corpus.dataset).is_dir():
        raise FileNotFoundError(f"--dataset {corpus.dataset} is not a directory written by save_to_disk")
    else:
        data = datasets.load_from_disk(corpus.dataset)
    if isinstance(data, datasets.DatasetDict):
        if options.split not in data:
            raise ValueError(f"the dataset has no split {options.split!r}; it has {sorted(data)}")
        data = data[options.split]
    report = evaluate_checkpoint(
        options.model, data, options.batch_size, options.label_column, mixed_precision=options.mixed_precision
    )
    output = Path(options.output) if options.output else Path(options.model) / f"eval_{options.split}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"wrote {output}")
    return report
