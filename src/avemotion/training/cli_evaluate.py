"""`avemotion evaluate`: per-branch metrics of a checkpoint on a split of a saved dataset, written as JSON, and with
`--figures DIR` the evaluation figures (`avemotion.plotting.write_evaluation_figures`): `confusion_matrix_<branch>.png`
per branch (counts and row-normalised rates), or for regression `scatter_<branch>.png` (predicted vs. true per
attribute, on the corpus scale, CCC in the titles).

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
    figures: str | None = field(
        default=None,
        metadata={"help": "folder to write the figures into: a confusion matrix per branch, or predicted-vs-true "
                  "scatter plots for regression (needs matplotlib: pip install 'avemotion[plot]')"},
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per field of `EvaluationArguments` and `CorpusArguments`."""
    add_dataclass_arguments(parser, EvaluationArguments, CorpusArguments)


def evaluate_checkpoint(
    model_dir: str, dataset, batch_size: int = 16, label_column="label", figures: str | None = None, **kwargs
) -> dict:
    """Per-branch metrics (see `avemotion.metrics.branch_metrics`) of the checkpoint in `model_dir` on `dataset`;
    with `figures`, the evaluation figures are written into that folder (`write_figures`)."""
    from .arguments import TrainingArguments
    from .run_files import load_model
    from .trainer import EmotionTrainer

    if figures is not None:
        from avemotion.plotting import require_matplotlib

        require_matplotlib()  # before the evaluation, not after it
    model = load_model(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch, per_device_eval_batch_size=batch_size, label_column=label_column,
            disable_tqdm=True, **kwargs,
        )  # fmt: skip
        trainer = EmotionTrainer(model, args, eval_dataset=dataset)
        branches, references, loss = trainer.predict()
        report = trainer.evaluation_report(branches, references, loss)
    if figures is not None:
        report_names = trainer.branches
        write_figures(figures, report, model.config, branches, references, report_names)
    return report


def write_figures(
    directory: str | Path, report: dict[str, Any], config: Any, branches=None, references=None, report_names=None
) -> list:
    """The figures of `report` in `directory`: a confusion matrix per branch; for regression, predicted-vs-true
    scatter plots per branch from `branches` (output name -> (N, K)) and `references` (N, K), both on the model's
    output scale, drawn on the corpus scale (`config.label_scale`), under the branches' `report_names` (output name ->
    report name, as the model declares them). Returns the paths written."""
    import numpy as np

    from avemotion.plotting import write_evaluation_figures

    names = [config.id2label[k] for k in sorted(config.id2label, key=int)]
    predictions = None
    if config.problem_type == "regression" and branches is not None:
        low, high = getattr(config, "label_scale", None) or (0.0, 1.0)
        predictions = {(report_names or {}).get(k, k): low + (high - low) * np.asarray(v) for k, v in branches.items()}
        references = low + (high - low) * np.asarray(references, dtype=np.float64).reshape(len(references), -1)
    return write_evaluation_figures(report, directory, names, predictions, references)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as the parsed options of `add_arguments` say; writes and returns the report."""
    import datasets

    from .cli_train import format_report, load_dataset_dict, load_processor
    from .run_files import load_model

    options = dataclass_from_namespace(EvaluationArguments, args)
    corpus = dataclass_from_namespace(CorpusArguments, args)
    if options.figures is not None:
        from avemotion.plotting import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as error:  # a user error: one line
            raise ValueError(f"--figures: {error}") from error
    if corpus.data_dir is not None:
        # features made by the model's backbones on what its own processor makes of the media
        data = load_dataset_dict(corpus, load_model(options.model), load_processor(options.model))
    elif not Path(corpus.dataset).is_dir():
        raise FileNotFoundError(f"--dataset {corpus.dataset} is not a directory written by save_to_disk")
    else:
        from avemotion.data.loading import load_saved_dataset

        data = load_saved_dataset(corpus.dataset)
    if isinstance(data, datasets.DatasetDict):
        if options.split not in data:
            raise ValueError(f"the dataset has no split {options.split!r}; it has {sorted(data)}")
        data = data[options.split]
    report = evaluate_checkpoint(
        options.model, data, options.batch_size, options.label_column, options.figures,
        mixed_precision=options.mixed_precision,
    )  # fmt: skip
    output = Path(options.output) if options.output else Path(options.model) / f"eval_{options.split}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"wrote {output}")
    if options.figures is not None:
        print(f"wrote figures to {options.figures}")
    return report
