"""`avemotion train` (and `examples/train_*.py` under `accelerate launch`): train on a corpus or a saved dataset.

`--dataset NAME --data_dir DIR` reads a corpus in its official layout (`avemotion.data.load_corpus`) and caches its
features. Otherwise:

The dataset is a `DatasetDict` saved with `save_to_disk` whose rows hold `audio_features` (T, D_a) and/or
`visual_features` (T, D_v) arrays (None for a missing modality) or raw inputs, plus the label column(s).
The model comes from a checkpoint (`--model_name_or_path`), a `config.json` (`--config`), or, with neither, a new
model of `--model_type` whose feature sizes and labels are read from the dataset (`--config_overrides` sets any
other config field).

The options are the fields of `CorpusArguments`, `SplitArguments`, `ModelArguments` and `TrainingArguments`, turned
into options by `transformers.HfArgumentParser`: `--data_dir` (the spelling used everywhere), also `--data-dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import (
    add_dataclass_arguments,
    add_training_arguments,
    dataclass_from_namespace,
    training_arguments_from_namespace,
)
from .run_files import PROCESSOR_FILES, TEST_RESULTS_FILE, load_model

__all__ = ["CorpusArguments", "ModelArguments", "SplitArguments", "load_dataset_dict", "load_model", "load_processor",
           "main", "run"]  # fmt: skip

CORPORA = "crema-d, ravdess, msp-improv, iemocap, synthetic"
# what a corpus keeps once its features are cached: what training reads (no media to decode)
FEATURE_DATASET_COLUMNS = frozenset({"id", "audio_features", "visual_features", "label", "arousal", "valence",
                                     "dominance"})  # fmt: skip


@dataclass
class CorpusArguments:
    """Where the rows come from (`avemotion train` and `avemotion evaluate`)."""

    dataset: str = field(
        metadata={
            "help": "a DatasetDict directory written by save_to_disk (evaluate: or a Dataset), or with "
            f"--data_dir a corpus name ({CORPORA})"
        }  # fmt: skip
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "the corpus root in its official layout (see avemotion.data.load_corpus); "
            "its features are computed and cached"
        },  # fmt: skip
    )
    labels_csv: str | None = field(
        default=None, metadata={"help": "with --data_dir: a VAVL-style label file, or a folder of them"}
    )
    partition: int | None = field(
        default=None, metadata={"help": "with --data_dir: which VAVL label file of a folder (1-5)"}
    )
    fold: int | None = field(
        default=None, metadata={"help": "with --data_dir: which of our speaker-independent folds"}
    )


@dataclass
class SplitArguments:
    """Which splits of the dataset `avemotion train` trains, selects and tests on."""

    train_split: str = "train"
    eval_split: str = field(default="validation", metadata={"help": "selection split ('none' to train without)"})
    test_split: str = field(default="test", metadata={"help": "reported after training if present ('none': skip)"})


@dataclass
class ModelArguments:
    """The model `avemotion train` starts from: a checkpoint, a config, or a new model of `model_type`."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "a checkpoint directory to fine-tune"})
    config: str | None = field(
        default=None, metadata={"help": "a config.json to build a new model from (not with --model_name_or_path)"}
    )
    model_type: str = field(default="vavl", metadata={"help": "new model type when neither of the above is given"})
    config_overrides: str = field(
        default="{}", metadata={"help": "config fields as JSON, e.g. '{\"hidden_size\": 64}'"}
    )
    processor_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "a processor or feature extractor saved with the model (default: the one in "
            "--model_name_or_path, if any); saved into every model directory the run writes"
        },  # fmt: skip
    )

    def __post_init__(self):
        if self.model_name_or_path and self.config:
            raise ValueError(
                "give --model_name_or_path (a checkpoint to fine-tune) or --config (a new model), not both"
            )
        try:
            overrides = json.loads(self.config_overrides)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"--config_overrides must be a JSON object, got {self.config_overrides!r}") from error
        if not isinstance(overrides, dict):
            raise ValueError(f"--config_overrides must be a JSON object, got {self.config_overrides!r}")
        self.overrides: dict[str, Any] = overrides


def load_dataset_dict(args: CorpusArguments | argparse.Namespace, model: Any = None, processor: Any = None):
    """The splits to train or evaluate on, with `audio_features`/`visual_features` and the label columns.

    With `--data_dir`, the corpus is read with `avemotion.data.load_corpus` and its features are computed once and
    cached (`cache_features`): the synthetic corpus's cheap features, or the backbones of `model` on what `processor`
    (the one saved with the model: its crop size, normalisation) makes of the media."""
    import datasets

    if args.data_dir is None:
        if not Path(args.dataset).is_dir():
            raise FileNotFoundError(
                f"--dataset {args.dataset} is not a directory written by DatasetDict.save_to_disk (give --data_dir "
                "to read a corpus by name)"
            )
        from avemotion.data.loading import load_saved_dataset

        corpus = load_saved_dataset(args.dataset)
        if not isinstance(corpus, datasets.DatasetDict):
            raise ValueError(f"--dataset {args.dataset} holds one Dataset; expected a DatasetDict with splits")
        return corpus
    from avemotion.data import cache_features, load_corpus
    from avemotion.data.synthetic import SyntheticFeatureExtractor

    options = {name: getattr(args, name) for name in ("labels_csv", "partition", "fold") if getattr(args, name)}
    corpus = load_corpus(args.dataset, args.data_dir, **options)
    if args.dataset == "synthetic":
        extractor = SyntheticFeatureExtractor()
    elif model is not None and _has_feature_backbones(model):
        extractor = model
    else:
        raise ValueError(
            f"computing features of {args.dataset!r} needs --model_name_or_path with backbones (or save features "
            "with avemotion.data.cache_features and pass the save_to_disk directory as --dataset)"
        )
    corpus = cache_features(corpus, extractor, processor if extractor is model else None)
    keep = FEATURE_DATASET_COLUMNS
    return datasets.DatasetDict({name: split.select_columns([c for c in split.column_names if c in keep])
                                 for name, split in corpus.items()})  # fmt: skip


def _has_feature_backbones(model: Any) -> bool:
    """Whether `cache_features` can compute a corpus's features with `model`'s backbones (its base model has
    `get_audio_features` and `get_visual_features`)."""
    base = getattr(model, "base_model", model)
    return hasattr(base, "get_audio_features") and hasattr(base, "get_visual_features")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `avemotion train`: one per field of `CorpusArguments`, `SplitArguments`, `ModelArguments` and
    `TrainingArguments` (through `transformers.HfArgumentParser`: `--name`, also spelled `--name-with-dashes`), and
    `--resume`."""
    add_dataclass_arguments(parser, CorpusArguments, SplitArguments, ModelArguments)
    add_training_arguments(parser)


def _new_config(model_type: str, train_dataset, overrides: dict[str, Any], label_column):
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {}
    head = train_dataset.select(range(min(64, len(train_dataset))))
    for key, config_field in (("audio_features", "audio_feature_dim"), ("visual_features", "visual_feature_dim")):
        values = [r for r in head[key] if r is not None] if key in head.column_names else []
        if values:
            kwargs[config_field] = len(values[0][0])
    if isinstance(label_column, str):
        feature = train_dataset.features.get(label_column)
        names = getattr(feature, "names", None)
        if names is None:
            raise ValueError(
                f"label column {label_column!r} is not a ClassLabel; pass --config_overrides with id2label"
            )
        kwargs["id2label"] = dict(enumerate(names))
    else:
        kwargs.update(problem_type="regression", id2label=dict(enumerate(label_column)))
    kwargs["label2id"] = {v: k for k, v in kwargs["id2label"].items()}
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def load_processor(path: str, required: bool = False):
    """The processor saved in `path` (`AutoProcessor`, else its feature extractor); None when `path` holds none
    (a `ValueError` instead when `required`)."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    directory = Path(path)
    if directory.is_dir() and not any((directory / name).is_file() for name in PROCESSOR_FILES):
        if required:
            raise ValueError(f"{path} holds no processor ({', '.join(PROCESSOR_FILES)})")
        return None
    if directory.is_dir():  # each settings file a JSON object (transformers' errors name no file)
        from avemotion.utils.json_files import read_json_object

        for name in PROCESSOR_FILES:
            if (directory / name).is_file():
                read_json_object(directory / name)
    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as error:
        if (directory / "processor_config.json").is_file():  # a processor that does not load: not a fall-back case
            message = " ".join(str(error).split())[:300]
            raise ValueError(f"{path}: the processor saved there cannot be loaded ({message})") from error
        try:
            return AutoFeatureExtractor.from_pretrained(path, trust_remote_code=False)
        except OSError as error:
            if required:
                raise ValueError(f"cannot load a processor from {path}: {error}") from error
            logging.getLogger(__name__).warning("no processor loaded from %s: %s", path, error)
            return None


def _split(dataset_dict, name: str):
    if name is None or name.lower() == "none":
        return None
    if name not in dataset_dict:
        raise ValueError(f"the dataset has no split {name!r}; it has {sorted(dataset_dict)}")
    return dataset_dict[name]


def _build_model(options: ModelArguments, train, label_column: str | list[str]):
    """A new model from `--config` or, with neither a checkpoint nor a config, of `--model_type` sized from `train`."""
    from transformers import AutoConfig

    from avemotion.models.auto import AutoModelForEmotionRecognition

    if options.config:
        config = AutoConfig.from_pretrained(options.config, trust_remote_code=False)
        for key, value in options.overrides.items():
            setattr(config, key, value)
    else:
        config = _new_config(options.model_type, train, options.overrides, label_column)
    return AutoModelForEmotionRecognition.from_config(config)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the parsed options of `add_arguments` say; returns `{"eval": report}`, plus `"test"` with a test
    split."""
    from accelerate.utils import set_seed

    from .trainer import EmotionTrainer, atomic_write_text

    corpus_options = dataclass_from_namespace(CorpusArguments, args)
    splits = dataclass_from_namespace(SplitArguments, args)
    options = dataclass_from_namespace(ModelArguments, args)
    training_args = training_arguments_from_namespace(args)
    model = load_model(options.model_name_or_path) if options.model_name_or_path else None
    # the processor of the model it starts from (unless one is given) makes its features and is saved with it
    processor = None
    if options.processor_name_or_path:
        processor = load_processor(options.processor_name_or_path, required=True)
    elif options.model_name_or_path:
        processor = load_processor(options.model_name_or_path)
    corpus = load_dataset_dict(corpus_options, model, processor)
    train, evaluation = _split(corpus, splits.train_split), _split(corpus, splits.eval_split)
    test = _split(corpus, splits.test_split) if splits.test_split in corpus else None
    set_seed(training_args.seed)  # the new model's initialisation
    if model is None:
        model = _build_model(options, train, training_args.label_column)
    trainer = EmotionTrainer(model, training_args, train, evaluation, processor=processor)
    result = {"eval": trainer.train()}
    if test is not None:
        result["test"] = trainer.evaluate(test)
        if trainer.accelerator.is_main_process:
            path = Path(training_args.output_dir) / TEST_RESULTS_FILE
            atomic_write_text(path, json.dumps(result["test"], indent=2) + "\n")
    if trainer.accelerator.is_main_process:
        print(format_report(result.get("test") or result["eval"]))
    return result


def format_report(report: dict[str, Any]) -> str:
    """A table: one row per branch, the scalar metrics as columns."""
    branches = {k: v for k, v in report.items() if isinstance(v, dict)}
    columns = sorted({m for v in branches.values() for m, x in v.items() if isinstance(x, (int, float))})
    lines = ["| branch | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in branches.items():
        cells = [
            f"{metrics[c]:.4f}" if isinstance(metrics.get(c), float) else str(metrics.get(c, "")) for c in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, **defaults: Any) -> dict[str, Any]:
    """`avemotion train ARGV` without the `avemotion` command (the examples' entry point); `defaults` replace the
    options' defaults (e.g. `model_type="mlfusion"`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(**defaults)
    return run(parser.parse_args(argv))
