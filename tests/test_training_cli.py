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


def _captured_figures(monkeypatch) -> dict:
    """file name -> figure, for each figure `write_evaluation_figures` saves (still saved)."""
    from avemotion.plotting import evaluation

    figures, save = {}, evaluation.save_figure

    def capture(figure, path, dpi=100):
        figures[path.name] = figure
        return save(figure, path, dpi)

    monkeypatch.setattr(evaluation, "save_figure", capture)
    return figures


def test_evaluate_figures_writes_a_confusion_matrix_per_branch(tmp_path, monkeypatch):
    import json

    import numpy as np
    from PIL import Image
    from training_testing import toy_dataset
    from vavl_testing import tiny_vavl_config

    from avemotion import VavlForEmotionRecognition
    from avemotion.cli import main

    VavlForEmotionRecognition(tiny_vavl_config()).save_pretrained(tmp_path / "model")
    toy_dataset(12, 0, unpaired=0.3).save_to_disk(str(tmp_path / "data"))
    figures = _captured_figures(monkeypatch)
    argv = ["evaluate", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"), "--split", "train"]
    assert main([*argv, "--output", str(tmp_path / "e.json"), "--figures", str(tmp_path / "figures")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    branches = ["combined", "audio_visual", "audio", "visual"]
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == sorted(
        f"confusion_matrix_{branch}.png" for branch in branches
    )
    for branch in branches:
        ax = figures[f"confusion_matrix_{branch}.png"].axes[0]
        assert [label.get_text() for label in ax.get_xticklabels()] == ["angry", "happy", "neutral"]
        counts = np.zeros((3, 3), dtype=int)
        for text in ax.texts:
            column, row = (round(v) for v in text.get_position())
            counts[row, column] = int(text.get_text().split("\n")[0])
        assert counts.tolist() == report[branch]["confusion_matrix"]  # the cells are the report's counts
        assert counts.sum() == report[branch]["num_samples"]
        image = np.asarray(Image.open(tmp_path / "figures" / f"confusion_matrix_{branch}.png").convert("L"))
        assert image.shape[1] >= 400 and (image < 245).mean() > 0.1


def test_evaluate_figures_of_a_regression_model_are_scatter_plots_with_the_ccc(tmp_path, monkeypatch):
    import json

    from training_testing import toy_dataset
    from vavl_testing import tiny_vavl_config

    from avemotion import VavlForEmotionRecognition
    from avemotion.cli import main

    config = tiny_vavl_config(
        problem_type="regression", id2label={0: "arousal", 1: "valence"}, label2id={"arousal": 0, "valence": 1},
        label_scale=[1.0, 5.0],
    )  # fmt: skip
    VavlForEmotionRecognition(config).save_pretrained(tmp_path / "model")
    data = toy_dataset(10, 0).map(lambda row: {"arousal": 1.0 + 2 * row["label"], "valence": 5.0 - row["label"]})
    data.save_to_disk(str(tmp_path / "data"))
    figures = _captured_figures(monkeypatch)
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"), "--split",
                 "train", "--label_column", "arousal,valence", "--output", str(tmp_path / "e.json"), "--figures",
                 str(tmp_path / "figures")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "e.json").read_text())
    assert sorted(figures) == ["scatter_audio.png", "scatter_audio_visual.png", "scatter_combined.png",
                               "scatter_visual.png"]  # fmt: skip
    for branch in ("combined", "audio"):
        axes = figures[f"scatter_{branch}.png"].axes
        assert [ax.get_title() for ax in axes] == [
            f"arousal: CCC {report[branch]['ccc_arousal']:.3f}",
            f"valence: CCC {report[branch]['ccc_valence']:.3f}",
        ]
        truth = axes[0].collections[0].get_offsets()[:, 0]
        assert sorted(set(truth.round(6))) == [1.0, 3.0, 5.0]  # drawn on the corpus scale
