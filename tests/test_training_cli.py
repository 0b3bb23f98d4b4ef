"""The options of `avemotion train`, `evaluate` and `push`: `train`'s and `evaluate`'s are the fields of their
dataclasses (through `transformers.HfArgumentParser`), every option is spelled with underscores and accepts dashes,
and the few fields with a custom type parse as before."""

import dataclasses
import warnings

import pytest

from avemotion.cli import build_parser
from avemotion.training import cli_train
from avemotion.training.arguments import TrainingArguments, training_arguments_from_namespace
from avemotion.training.cli_evaluate import EvaluationArguments
from avemotion.training.cli_train import CorpusArguments, ModelArguments, SplitArguments


def _parse(command: str, *argv: str):
    return build_parser(command).parse_args([command, *argv])


def _option_names(dataclass_type) -> list[str]:
    return [item.name for item in dataclasses.fields(dataclass_type)]


def test_every_dataclass_field_is_an_option_with_the_dataclass_default():
    namespace = _parse("train", "--dataset", "data")
    for dataclass_type in (TrainingArguments, CorpusArguments, SplitArguments, ModelArguments):
        for name in _option_names(dataclass_type):
            assert hasattr(namespace, name), name
    assert training_arguments_from_namespace(namespace) == TrainingArguments()
    namespace = _parse("evaluate", "--model", "m", "--dataset", "data")
    assert all(
        hasattr(namespace, name) for name in _option_names(EvaluationArguments) + _option_names(CorpusArguments)
    )
    assert (namespace.split, namespace.batch_size, namespace.label_column) == ("test", 16, "label")


@pytest.mark.parametrize(
    ("command", "required", "options"),
    [
        ("train", ["--dataset", "d"], {"--data_dir": "c", "--per_device_train_batch_size": "3", "--output_dir": "o",
                                        "--model_name_or_path": "m", "--config_overrides": "{}", "--lr_scheduler_type":
                                        "linear", "--resume_from_checkpoint": "last", "--eval_split": "none"}),
        ("evaluate", ["--model", "m"], {"--dataset": "d", "--data_dir": "c", "--batch_size": "3",
                                         "--label_column": "a,b", "--mixed_precision": "bf16"}),
        ("push", ["--model", "m"], {"--repo_id": "o/n", "--training_data": "t", "--hub_id": "a=o/n"}),
    ],
)  # fmt: skip
def test_options_are_spelled_with_underscores_and_accept_dashes(command, required, options):
    underscores = _parse(command, *required, *[word for pair in options.items() for word in pair])
    dashes = _parse(command, *required, *[word for k, v in options.items() for word in (k.replace("_", "-"), v)])
    assert vars(underscores) == vars(dashes)
    assert all(getattr(underscores, key[2:]) not in (None, []) for key in options)


def test_usage_names_the_underscore_spelling(capsys):
    with pytest.raises(SystemExit):
        _parse("train", "--help")
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "--data_dir" in usage and "--per_device_train_batch_size" in usage and "--no_shuffle" in usage
    assert "--data-dir" not in usage and "--no-shuffle" not in usage


def test_custom_types_and_flags():
    namespace = _parse(
        "train", "--dataset", "d", "--parameter_group_lr", "fusion_head.=1e-2, audio_head.=0", "--label_column",
        "arousal,valence", "--freeze_backbones", "false", "--disable_tqdm", "--no-shuffle", "--greater_is_better",
        "false", "--max_grad_norm", "1.5", "--resume",
    )  # fmt: skip
    args = training_arguments_from_namespace(namespace)
    assert args.parameter_group_lr == {"fusion_head.": 1e-2, "audio_head.": 0.0}
    assert args.label_column == ["arousal", "valence"] and args.freeze_backbones is False
    assert args.disable_tqdm is True and args.shuffle is False and args.greater_is_better is False
    assert args.max_grad_norm == 1.5 and args.resume_from_checkpoint == "last"
    keep = training_arguments_from_namespace(_parse("train", "--dataset", "d", "--freeze_backbones", "none"))
    assert keep.freeze_backbones is None and keep.label_column == "label"
    for bad in (["--parameter_group_lr", "nolr"], ["--freeze_backbones", "maybe"], ["--schedule", "alternate"]):
        with pytest.raises(SystemExit):
            _parse("train", "--dataset", "d", *bad)


def test_deprecated_schedule_name_on_the_command_line():
    namespace = _parse("train", "--dataset", "d", "--schedule", "vavl")
    with pytest.warns(FutureWarning, match="deprecated"):
        assert training_arguments_from_namespace(namespace).schedule == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert training_arguments_from_namespace(_parse("train", "--dataset", "d")).schedule == "auto"


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="not both"):
        ModelArguments(model_name_or_path="a", config="b")
    with pytest.raises(ValueError, match="--config_overrides must be a JSON object"):
        ModelArguments(config_overrides="[1]")
    with pytest.raises(ValueError, match="--config_overrides must be a JSON object"):
        ModelArguments(config_overrides="{hidden_size: 4}")
    assert ModelArguments(config_overrides='{"hidden_size": 4}').overrides == {"hidden_size": 4}


def test_examples_entry_point_takes_both_spellings_and_defaults(monkeypatch):
    """`cli_train.main` (what `examples/train_*.py` call under `accelerate launch`) parses without the `avemotion`
    command: its own parser takes both spellings too, and its keyword defaults replace the options' defaults."""
    seen = []
    monkeypatch.setattr(cli_train, "run", seen.append)
    cli_train.main(["--dataset", "d", "--output-dir", "o", "--num_train_epochs", "2"], model_type="mlfusion")
    (namespace,) = seen
    assert (namespace.output_dir, namespace.num_train_epochs, namespace.model_type) == ("o", 2, "mlfusion")
