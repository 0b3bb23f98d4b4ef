"""`push_to_hub` of a trained model + processor + generated model card, against a loopback stand-in for the Hub; the
card templates as package data."""

import configparser
import importlib.resources
import json
import logging
from pathlib import Path

import pytest
from vavl_testing import tiny_vavl_config

from avemotion import AvEmotionFeatureExtractor, VavlForEmotionRecognition
from avemotion.cli import main as cli_main
from avemotion.training import hub as hub_module
from avemotion.training.hub import build_model_card, card_template, metrics_table

ROOT = Path(__file__).resolve().parents[1]

REPORT = {
    "combined": {"accuracy": 0.75, "unweighted_accuracy": 0.7, "macro_f1": 0.69, "micro_f1": 0.75, "num_samples": 12},
    "audio": {"accuracy": 0.5, "unweighted_accuracy": 0.45, "macro_f1": 0.4, "micro_f1": 0.5, "num_samples": 12},
    "loss": 1.2,
    "num_samples": 12,
}


def test_model_card_has_metrics_per_branch_and_hyperparameters():
    card = build_model_card(
        "vavl", "org/vavl-test", REPORT, training_data="Synthetic corpus, speaker-independent split.",
        hyperparameters={"learning_rate": 5e-5, "num_train_epochs": 3},
    )  # fmt: skip
    text = str(card)
    assert "| combined (per-row best available) | 0.7500 | 0.7000 | 0.6900 | 0.7500 | 12 |" in text
    assert "| audio | 0.5000 | 0.4500 | 0.4000 | 0.5000 | 12 |" in text
    assert "| learning_rate | `5e-05` |" in text and "Synthetic corpus" in text
    assert "org/vavl-test" in text and "goncalves2023vavl" in text
    assert card.data.license == "apache-2.0" and "vavl" in card.data.tags
    assert {r.metric_type for r in card.data.eval_results} >= {"accuracy", "macro_f1"}
    assert metrics_table({"loss": 1.0}) == ""
    # the fusion model's card shows the same table, and says so when a checkpoint has no results
    fusion = str(build_model_card("mlfusion", "org/mlf-test", REPORT))
    assert "| audio | 0.5000 | 0.4500 | 0.4000 | 0.5000 | 12 |" in fusion and "No results are recorded" not in fusion
    assert "No results are recorded" in str(build_model_card("mlfusion", "org/mlf-test"))


def test_card_templates_are_package_data(monkeypatch, caplog):
    """The templates of the top-level hub_cards/ folder are the package `avemotion.hub_cards`, found through
    `importlib.resources` (as in an installed wheel), not through a path relative to the source tree."""
    templates = importlib.resources.files("avemotion.hub_cards")
    names = {entry.name for entry in templates.iterdir() if entry.name.endswith(".md")}
    assert names == {path.name for path in (ROOT / "hub_cards").glob("*.md")} >= {"vavl.md", "mlfusion.md"}
    assert card_template("vavl").read_text() == (ROOT / "hub_cards" / "vavl.md").read_text()
    assert card_template("no-such-model") is None
    assert "goncalves2023vavl" in str(build_model_card("vavl", "org/m"))

    def not_installed(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    # an install without the package (an editable install made before it existed): huggingface_hub's default card
    monkeypatch.setattr(hub_module.importlib.resources, "files", not_installed)
    with caplog.at_level(logging.WARNING, logger="avemotion.training.hub"):
        card = build_model_card("vavl", "org/m", REPORT)
    assert "goncalves2023vavl" not in str(card) and "accuracy" in {r.metric_type for r in card.data.eval_results}
    assert any("avemotion.hub_cards is not installed" in record.getMessage() for record in caplog.records)


def test_setup_cfg_ships_every_package_and_the_card_templates():
    """setup.cfg lists its packages (`find:` searches src/ only): every package under src/avemotion, and
    avemotion.hub_cards mapped to hub_cards/ with its templates as package data."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {".".join(path.parent.relative_to(ROOT / "src").parts) for path in (ROOT / "src").rglob("__init__.py")}
    assert listed == found | {"avemotion.hub_cards"}
    mapping = dict(line.replace(" ", "").split("=") for line in config["options"]["package_dir"].splitlines() if line)
    assert mapping == {"": "src", "avemotion.hub_cards": "hub_cards"}
    assert config["options.package_data"]["avemotion.hub_cards"] == "*.md"
    assert (ROOT / "hub_cards" / "__init__.py").is_file()


def test_push_model_processor_and_card(tmp_path, hub):
    model = VavlForEmotionRecognition(tiny_vavl_config())
    model.save_pretrained(tmp_path / "model")
    AvEmotionFeatureExtractor().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "test_results.json").write_text(json.dumps(REPORT))
    (tmp_path / "model" / "training_args.json").write_text(json.dumps({"learning_rate": 0.003, "seed": 7}))
    code = cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/tiny-vavl",
                     "--training_data", "Toy rows written by the test."])  # fmt: skip
    assert code == 0
    files = hub.store["org/tiny-vavl"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files)
    readme = files["README.md"].decode()
    assert "| audio | 0.5000 |" in readme and "Toy rows written by the test." in readme and "| seed | `7` |" in readme
    # the pushed weights are the model's weights
    (tmp_path / "pulled").mkdir()
    for name, content in files.items():
        Path(tmp_path / "pulled" / name).write_bytes(content)
    reloaded = VavlForEmotionRecognition.from_pretrained(tmp_path / "pulled")
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert (a == b).all(), name
    assert any(r.startswith("POST /api/repos/create") for r in hub.requests)


def _saved_model(folder: Path, processor: bool = True, **config) -> VavlForEmotionRecognition:
    model = VavlForEmotionRecognition(tiny_vavl_config(**config))
    model.save_pretrained(folder)
    if processor:
        AvEmotionFeatureExtractor().save_pretrained(folder)
    return model


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_uploads_no_local_path(tmp_path, hub, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "runs" / "exp1" / "best_model"
    cached = tmp_path / "hf_cache" / "models--google--efficientnet-b2" / "snapshots" / "0123abcd"
    _saved_model(model_dir, audio_backbone_name=str(tmp_path / "backbones" / "wav2vec2-local"),
                 visual_backbone_name=str(cached))  # fmt: skip
    # a processor field holding a path (kept by save_pretrained), and the trainer's arguments
    config_file = model_dir / "preprocessor_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "name_or_path": str(model_dir)}))
    (model_dir / "training_args.json").write_text(json.dumps({
        "output_dir": str(tmp_path / "runs" / "exp1"), "resume_from_checkpoint": str(tmp_path / "runs" / "exp1" /
        "checkpoints" / "checkpoint-40"), "learning_rate": 0.003, "label_column": "label",
        "data_dir": "./corpora/crema-d", "cache": "~/feature-cache",
    }))  # fmt: skip
    (model_dir / "eval_results.json").write_text(json.dumps({"eval": REPORT, "metric_for_best_model": "loss"}))
    before = _snapshot(model_dir)
    assert cli_main(["push", "--model", str(model_dir), "--repo_id", "org/exp1", "--hub_id",
                     f"{tmp_path / 'backbones' / 'wav2vec2-local'}=facebook/wav2vec2-base"]) == 0  # fmt: skip
    files = hub.store["org/exp1"]
    for name, content in files.items():
        for leak in (str(tmp_path), "~/feature-cache", "./corpora"):
            assert leak.encode() not in content, (name, leak)
    config = json.loads(files["config.json"])
    assert config["audio_backbone_name"] == "facebook/wav2vec2-base"  # named by --hub_id
    assert config["visual_backbone_name"] == "google/efficientnet-b2"  # a huggingface_hub cache snapshot
    assert json.loads(files["preprocessor_config.json"])["name_or_path"] == "org/exp1"  # the pushed directory
    readme = files["README.md"].decode()
    assert "| resume_from_checkpoint | `checkpoint-40` |" in readme and "| output_dir | `exp1` |" in readme
    assert "| data_dir | `crema-d` |" in readme and "| cache | `feature-cache` |" in readme
    assert "| label_column | `label` |" in readme and "| learning_rate | `0.003` |" in readme
    assert _snapshot(model_dir) == before  # only the uploaded copy was rewritten


def test_sanitize_local_paths_and_saved_configs(tmp_path):
    from avemotion.training.hub import is_local_path, sanitize_local_paths, sanitize_saved_configs

    assert [is_local_path(v) for v in ["/home/a/x", "C:\\Users\\a\\x", "~/x", "./x", "org/name", "angry", "/", "last"]] == [
        True, True, True, True, False, False, False, False]  # fmt: skip
    assert sanitize_local_paths({"a": ["/srv/m/bert-base", ("x", 3)], "b": None}) == {"a": ["bert-base", ("x", 3)],
                                                                                        "b": None}  # fmt: skip
    assert sanitize_local_paths("/c/models--org--m/snapshots/abc/sub/vocab.txt") == "org/m/sub/vocab.txt"
    assert sanitize_local_paths(str(tmp_path), {tmp_path: "org/here"}) == "org/here"
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "/home/alice/base", "text_model": "bert"}))
    tokenizer = {"name_or_path": "/home/alice/tok", "added_tokens_decoder": {"5": {"content": "/x/y"}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"merges": ["/a /b"]}))
    assert sanitize_saved_configs(tmp_path) == ["config.json", "tokenizer_config.json"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"_name_or_path": "base", "text_model": "bert"}
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved == {"name_or_path": "tok", "added_tokens_decoder": {"5": {"content": "/x/y"}}}  # tokens untouched
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"merges": ["/a /b"]}


def test_model_card_hyperparameters_have_no_local_paths():
    card = str(build_model_card("vavl", "org/m", REPORT, None, {"resume_from_checkpoint": "/home/a/out/checkpoint-3"}))
    assert "| resume_from_checkpoint | `checkpoint-3` |" in card and "/home/a" not in card


def test_push_deletes_stale_files_in_one_commit(tmp_path, hub):
    hub.create("org/m", files={"pytorch_model.bin": b"old", "old/notes.txt": b"x", "README.md": b"old card"})
    _saved_model(tmp_path / "model")
    assert cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/m"]) == 0
    files = hub.store["org/m"]
    assert "pytorch_model.bin" not in files and "old/notes.txt" not in files
    expected = {".gitattributes", "config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    assert expected <= set(files)
    assert files["README.md"] != b"old card"
    [(added, deleted)] = hub.commits["org/m"]  # one commit holds the additions and the deletions
    assert sorted(deleted) == ["old/notes.txt", "pytorch_model.bin"] and "model.safetensors" in added


def test_private_holds_for_an_existing_repo(tmp_path, hub):
    from avemotion.training.hub import push_to_hub

    _saved_model(tmp_path / "model")
    hub.create("org/public")
    assert cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/public", "--private"]) == 0
    assert hub.private["org/public"] is True
    settings = next(i for i, r in enumerate(hub.requests) if r.startswith("PUT /api/models/org/public/settings"))
    commit = next(i for i, r in enumerate(hub.requests) if "/commit/" in r)
    assert settings < commit  # private before anything is uploaded

    assert cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/new", "--private"]) == 0
    assert hub.private["org/new"] is True
    hub.create("org/secret", private=True)
    assert cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/secret"]) == 0
    assert hub.private["org/secret"] is True  # without --private an existing repo keeps its visibility
    hub.create("org/secret2", private=True)
    with pytest.raises(ValueError, match="org/secret2 is private and private=False was asked: refusing"):
        push_to_hub(tmp_path / "model", "org/secret2", private=False)
    assert hub.private["org/secret2"] is True and hub.commits["org/secret2"] == []


def test_push_help_documents_private():
    import argparse

    from avemotion.training import cli_push

    parser = argparse.ArgumentParser()
    cli_push.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "an existing public repo is made private before anything is uploaded" in text
    assert "deleted" in text and "--processor" in text


def test_push_without_processor_is_one_error_line(tmp_path, hub, capsys):
    _saved_model(tmp_path / "model", processor=False)
    assert cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/np"]) == 2
    err = _error_line(capsys)
    assert f"{tmp_path / 'model'} has no processor" in err and "--processor" in err
    assert "org/np" not in hub.store and not hub.requests  # nothing created or uploaded
    # the processor of another directory (e.g. the base model) completes the upload
    AvEmotionFeatureExtractor(normalization="global", global_mean=0.25).save_pretrained(tmp_path / "base")
    assert cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/np",
                     "--processor", str(tmp_path / "base")]) == 0  # fmt: skip
    assert json.loads(hub.store["org/np"]["preprocessor_config.json"])["global_mean"] == 0.25
    assert "README.md" in hub.store["org/np"]
    # a broken processor file, a missing model directory, a missing --processor: one line each
    (tmp_path / "model" / "preprocessor_config.json").write_text("{not json")
    for args, message in [
        (["--model", str(tmp_path / "model")], "the processor saved there cannot be loaded"),
        (["--model", str(tmp_path / "nowhere")], "nowhere does not exist"),
        (["--model", str(tmp_path / "model"), "--processor", str(tmp_path / "none")], "--processor"),
    ]:
        assert cli_main(["push", *args, "--repo_id", "org/np"]) == 2
        assert message in _error_line(capsys)


def _error_line(capsys) -> str:
    """The CLI's error line (stderr may also hold progress bars), with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("avemotion push: error: "), err
    return line


def test_push_of_a_truncated_model_is_one_error_line(tmp_path, hub, capsys):
    _saved_model(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/t"]) == 2
    assert f"{tmp_path / 'model'}: the model cannot be loaded" in _error_line(capsys)
    assert "org/t" not in hub.store


def test_push_uploads_the_card_figures_it_embeds(tmp_path, hub):
    """The card shows the confusion matrix of the branch named by metric_for_best_model and the training curves of
    the run (its training_log.jsonl, next to best_model/); both images are in the pushed folder."""
    import io

    from PIL import Image

    run = tmp_path / "run"
    _saved_model(run / "best_model")
    matrix = [[3, 1, 0], [0, 2, 2], [1, 0, 3]]
    report = {**REPORT, "audio": {**REPORT["audio"], "confusion_matrix": matrix}}
    (run / "best_model" / "eval_results.json").write_text(json.dumps({"eval": report, "metric_for_best_model": "x"}))
    (run / "best_model" / "training_args.json").write_text(json.dumps({"metric_for_best_model": "audio/macro_f1"}))
    records = [{"epoch": e, "train_loss": {"joint": 1.0 / e}, "eval": report} for e in (1, 2)]
    (run / "training_log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    assert cli_main(["push", "--model", str(run / "best_model"), "--repo_id", "org/figures"]) == 0
    files = hub.store["org/figures"]
    readme = files["README.md"].decode()
    assert "![confusion matrix, audio branch](confusion_matrix.png)" in readme
    assert "![training curves](training_curves.png)" in readme and "`audio/macro_f1` per epoch" in readme
    for name in ("confusion_matrix.png", "training_curves.png"):
        image = Image.open(io.BytesIO(files[name]))
        assert image.format == "PNG" and image.size[0] >= 400
    # without a log or a confusion matrix: no figures, and the card names none
    _saved_model(tmp_path / "plain")
    assert cli_main(["push", "--model", str(tmp_path / "plain"), "--repo_id", "org/plain"]) == 0
    assert not {"confusion_matrix.png", "training_curves.png"} & set(hub.store["org/plain"])
    assert ".png" not in hub.store["org/plain"]["README.md"].decode()


def test_trained_output_has_its_card_figures(tmp_path):
    """The output directory of a training run: the card embeds the selected branch's confusion matrix and the
    training curves, written next to it; best_model/ and checkpoints are saved without figures (saved often)."""
    from training_testing import toy_dataset

    from avemotion.plotting import read_training_log
    from avemotion.training import EmotionTrainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
                             disable_tqdm=True, metric_for_best_model="audio/accuracy")  # fmt: skip
    trainer = EmotionTrainer(VavlForEmotionRecognition(tiny_vavl_config()), args, toy_dataset(8, 0), toy_dataset(6, 1))
    trainer.train()
    out = tmp_path / "out"
    readme = (out / "README.md").read_text()
    assert "![confusion matrix, audio branch](confusion_matrix.png)" in readme
    assert "![training curves](training_curves.png)" in readme
    assert (out / "confusion_matrix.png").stat().st_size > 5000 and (out / "training_curves.png").is_file()
    assert len(read_training_log(out / "training_log.jsonl")) == 2
    assert (
        not list((out / "best_model").glob("*.png")) and ".png" not in (out / "best_model" / "README.md").read_text()
    )
