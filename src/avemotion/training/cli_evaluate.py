"""`avemotion evaluate`: per-branch metrics of a checkpoint on a split of a saved dataset, written as JSON."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a checkpoint directory")
    parser.add_argument(
        "--dataset", required=True,
        help="a DatasetDict (or Dataset) directory from save_to_disk, or with --data_dir a corpus name",
    )  # fmt: skip
    parser.add_argument("--data_dir", help="the corpus root in its official layout (features are computed and cached)")
    parser.add_argument("--labels_csv", help="with --data_dir: a VAVL-style label file, or a folder of them")
    parser.add_argument("--partition", type=int, help="with --data_dir: which VAVL label file of a folder (1-5)")
    parser.add_argument("--fold", type=int, help="with --data_dir: which of our speaker-independent folds")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", help="JSON file to write (default: MODEL/eval_<split>.json)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--label_column", default="label", help="a column, or comma-separated regression columns")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])


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
    import datasets

    if args.data_dir is not None:
        from .cli_train import load_dataset_dict, load_model

        data = load_dataset_dict(args, load_model(args.model))
    elif not Path(args.dataset).is_dir():
        raise FileNotFoundError(f"--dataset {args.dataset} is not a directory written by save_to_disk")
    else:
        data = datasets.load_from_disk(args.dataset)
    if isinstance(data, datasets.DatasetDict):
        if args.split not in data:
            raise ValueError(f"the dataset has no split {args.split!r}; it has {sorted(data)}")
        data = data[args.split]
    label_column = args.label_column.split(",") if "," in args.label_column else args.label_column
    report = evaluate_checkpoint(args.model, data, args.batch_size, label_column, mixed_precision=args.mixed_precision)
    output = Path(args.output) if args.output else Path(args.model) / f"eval_{args.split}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    from .cli_train import format_report

    print(format_report(report))
    print(f"wrote {output}")
    return report
