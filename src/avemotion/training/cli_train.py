"""`avemotion train` (and `examples/train_*.py` under `accelerate launch`): train on a corpus or a saved dataset.

`--dataset NAME --data_dir DIR` reads a corpus in its official layout (`avemotion.data.load_corpus`) and caches its
features. Otherwise:

The dataset is a `DatasetDict` saved with `save_to_disk` whose rows hold `audio_features` (T, D_a) and/or
`visual_features` (T, D_v) arrays (None for a missing modality) or raw inputs, plus the label column(s).
The model comes from a checkpoint (`--model_name_or_path`), a `config.json` (`--config`), or, with neither, a new
model of `--model_type` whose feature sizes and labels are read from the dataset (`--config_overrides` sets any
other config field).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .arguments import add_training_arguments, training_arguments_from_namespace


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """`--dataset` (a save_to_disk directory, or with `--data_dir` a corpus name) and the corpus options."""
    parser.add_argument(
        "--dataset", required=True,
        help="a DatasetDict directory written by save_to_disk, or with --data_dir a corpus name "
        "(crema-d, ravdess, msp-improv, iemocap, synthetic)",
    )  # fmt: skip
    parser.add_argument("--data_dir", help="the corpus root in its official layout (see avemotion.data.load_corpus)")
    parser.add_argument("--labels_csv", help="with --data_dir: a VAVL-style label file, or a folder of them")
    parser.add_argument("--partition", type=int, help="with --data_dir: which VAVL label file of a folder (1-5)")
    parser.add_argument("--fold", type=int, help="with --data_dir: which of our speaker-independent folds")


def load_dataset_dict(args: argparse.Namespace, model: Any = None):
    """The splits to train or evaluate on, with `audio_features`/`visual_features` and the label columns.

    With `--data_dir`, the corpus is read with `avemotion.data.load_corpus` and its features are computed once and
    cached (`cache_features`): the synthetic corpus's cheap features, or the backbones of `model`."""
    import datasets

    if args.data_dir is None:
        if not Path(args.dataset).is_dir():
            raise FileNotFoundError(
                f"--dataset {args.dataset} is not a directory written by DatasetDict.save_to_disk (give --data_dir "
                "to read a corpus by name)"
            )
        corpus = datasets.load_from_disk(args.dataset)
        if not isinstance(corpus, datasets.DatasetDict):
            raise ValueError(f"--dataset {args.dataset} holds one Dataset; expected a DatasetDict with splits")
        return corpus
    from avemotion.data import cache_features, load_corpus
    from avemotion.data.synthetic import SyntheticFeatureExtractor

    options = {name: getattr(args, name) for name in ("labels_csv", "partition", "fold") if getattr(args, name)}
    corpus = load_corpus(args.dataset, args.data_dir, **options)
    if args.dataset == "synthetic":
        extractor = SyntheticFeatureExtractor()
    elif model is not None and (hasattr(model, "get_audio_features") or hasattr(model, "vavl")):
        extractor = model
    else:
        raise ValueError(
            f"computing features of {args.dataset!r} needs --model_name_or_path with backbones (or save features "
            "with avemotion.data.cache_features and pass the save_to_disk directory as --dataset)"
        )
    corpus = cache_features(corpus, extractor)
    keep = {"id", "audio_features", "visual_features", "label", "arousal", "valence", "dominance"}
    return datasets.DatasetDict({name: split.select_columns([c for c in split.column_names if c in keep])
                                 for name, split in corpus.items()})  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_corpus_arguments(parser)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="validation", help="selection split ('none' to train without)")
    parser.add_argument("--test_split", default="test", help="reported after training if present ('none': skip)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_name_or_path", help="a checkpoint directory to fine-tune")
    source.add_argument("--config", help="a config.json to build a new model from")
    parser.add_argument("--model_type", default="vavl", help="new model type when neither of the above is given")
    parser.add_argument("--config_overrides", type=json.loads, default={}, help="JSON, e.g. '{\"hidden_size\": 64}'")
    parser.add_argument(
        "--processor_name_or_path",
        help="a processor or feature extractor saved with the model (default: the one in --model_name_or_path, if "
        "any); saved into every model directory the run writes",
    )  # fmt: skip
    add_training_arguments(parser)


def _new_config(model_type: str, train_dataset, overrides: dict[str, Any], label_column):
    from transformers import AutoConfig

    import avemotion  # noqa: F401  (registers the model types)

    kwargs: dict[str, Any] = {}
    head = train_dataset.select(range(min(64, len(train_dataset))))
    for key, field in (("audio_features", "audio_feature_dim"), ("visual_features", "visual_feature_dim")):
        values = [r for r in head[key] if r is not None] if key in head.column_names else []
        if values:
            kwargs[field] = len(values[0][0])
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


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def load_model(path: str):
    """`AutoModelForEmotionRecognition.from_pretrained(path)`, with a `ValueError` naming the directory or the file
    that cannot be read (a missing directory, no config.json, truncated weights) instead of a library traceback."""
    import avemotion  # noqa: F401
    from avemotion.models.auto import AutoModelForEmotionRecognition

    directory = Path(path)
    if directory.exists() and not (directory / "config.json").is_file():
        raise ValueError(f"{path} is not a saved model directory (no config.json)")
    if directory.is_dir():
        from .trainer import file_problem

        for file in sorted(directory.glob("*.safetensors")):
            problem = file_problem(file)
            if problem:
                raise ValueError(f"cannot load the model: {problem}")
    try:
        return AutoModelForEmotionRecognition.from_pretrained(path)
    except OSError as error:  # a missing directory / hub id offline
        raise ValueError(f"cannot load a model from {path}: {error}") from error


def load_processor(path: str, required: bool = False):
    """The processor saved in `path` (`AutoProcessor`, else its feature extractor); None when `path` holds none
    (a `ValueError` instead when `required`)."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    directory = Path(path)
    if directory.is_dir() and not any((directory / name).is_file() for name in PROCESSOR_FILES):
        if required:
            raise ValueError(f"{path} holds no processor ({', '.join(PROCESSOR_FILES)})")
        return None
    try:
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError):
        try:
            return AutoFeatureExtractor.from_pretrained(path)
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    from accelerate.utils import set_seed

    import avemotion  # noqa: F401
    from avemotion.models.auto import AutoModelForEmotionRecognition

    from .trainer import EmotionTrainer, atomic_write_text

    training_args = training_arguments_from_namespace(args)
    model = None
    if args.model_name_or_path:
        model = load_model(args.model_name_or_path)
    corpus = load_dataset_dict(args, model)
    train, evaluation = _split(corpus, args.train_split), _split(corpus, args.eval_split)
    test = _split(corpus, args.test_split) if args.test_split in corpus else None
    set_seed(training_args.seed)  # the new model's initialisation
    if model is None:
        from transformers import AutoConfig

        if args.config:
            config = AutoConfig.from_pretrained(args.config)
            for key, value in args.config_overrides.items():
                setattr(config, key, value)
        else:
            config = _new_config(args.model_type, train, args.config_overrides, training_args.label_column)
        model = AutoModelForEmotionRecognition.from_config(config)
    # the trained model is saved with the processor of the model it starts from, unless one is given
    processor = None
    if args.processor_name_or_path:
        processor = load_processor(args.processor_name_or_path, required=True)
    elif args.model_name_or_path:
        processor = load_processor(args.model_name_or_path)
    trainer = EmotionTrainer(model, training_args, train, evaluation, processor=processor)
    result = {"eval": trainer.train()}
    if test is not None:
        result["test"] = trainer.evaluate(test)
        if trainer.accelerator.is_main_process:
            path = Path(training_args.output_dir) / "test_results.json"
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(**defaults)
    return run(parser.parse_args(argv))
