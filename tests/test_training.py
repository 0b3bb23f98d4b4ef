"""The accelerate trainer: the steps a model declares (VAVL's schedule), learning, resumption, options, evaluation
JSON."""

import json

import datasets
import pytest
import torch
from training_testing import Killed, KilledTrainer, toy_dataset
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import VavlForEmotionRecognition
from avemotion.cli import main as cli_main
from avemotion.data import load_corpus
from avemotion.training import EmotionTrainer, TrainingArguments, train_and_evaluate
from avemotion.training.schedules import resolve_schedule


def _args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def test_vavl_learns_well_above_chance(tmp_path):
    """Three classes (chance 1/3), a third of the training rows unpaired: the trained model is well above chance on
    every branch, and the selected model is what lands in output_dir."""
    model = VavlForEmotionRecognition(tiny_vavl_config())
    args = _args(tmp_path, num_train_epochs=3)
    result = train_and_evaluate(model, toy_dataset(48, 0, unpaired=0.3), toy_dataset(24, 1), args)
    report = result["eval"]
    assert report["num_samples"] == 24
    for branch in ("combined", "audio_visual", "audio", "visual"):
        assert report[branch]["num_samples"] == 24
    assert report["combined"]["accuracy"] >= 0.75, report["combined"]
    assert report["audio"]["accuracy"] >= 0.6 and report["visual"]["accuracy"] >= 0.6
    assert [record["epoch"] for record in result["history"]] == [1, 2, 3]
    assert set(result["history"][0]["train_loss"]) == {"visual", "acoustic", "fusion"}
    # the selected model was saved and reproduces the reported metrics
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert saved["best_epoch"] == result["best_epoch"]
    reloaded = VavlForEmotionRecognition.from_pretrained(tmp_path / "out")
    again = EmotionTrainer(reloaded, _args(tmp_path / "again"), eval_dataset=toy_dataset(24, 1)).evaluate()
    assert again["combined"]["accuracy"] == pytest.approx(report["combined"]["accuracy"])


def test_unpaired_rows_join_only_their_modality_step(tmp_path):
    """A batch of audio-only rows runs the acoustic step alone: visual path and fusion head stay untouched."""
    model = VavlForEmotionRecognition(tiny_vavl_config())
    data = toy_dataset(8, 0).map(lambda row: {"visual_features": None})
    trainer = EmotionTrainer(model, _args(tmp_path, num_train_epochs=1), data)
    before = _snapshot(model)
    trainer.train()
    changed = _changed(before, model)
    assert changed, "nothing was trained"
    assert all(not name.startswith(("vavl.visual_encoder.", "visual_", "fusion_head.")) for name in changed), changed
    assert any(name.startswith("vavl.audio_encoder.") for name in changed)
    assert any(name.startswith("vavl.shared_encoder.") for name in changed)


def test_fusion_step_updates_only_the_fusion_head(tmp_path):
    model = VavlForEmotionRecognition(tiny_vavl_config())
    trainer = EmotionTrainer(model, _args(tmp_path, num_train_epochs=1), toy_dataset(8, 0))
    trainer.steps = tuple(step for step in trainer.steps if step.name == "fusion")
    before = _snapshot(model)
    trainer.train()
    changed = _changed(before, model)
    assert changed and all(name.startswith("fusion_head.") for name in changed), changed
    # BatchNorm statistics of the encoders are not updated either: the step runs them in eval mode
    buffers = dict(VavlForEmotionRecognition(tiny_vavl_config()).named_buffers())
    for name, value in model.named_buffers():
        if "running_mean" in name:
            assert torch.equal(value, buffers[name]), name


# The parameters each step of VAVL's schedule updated when the trainer named them by prefix (before the model declared
# its steps as modules): the trainer's steps, read from the declaration, must own exactly these.
PREFIX_STEPS = {
    "visual": ("vavl.visual_backbone.", "vavl.visual_encoder.", "vavl.shared_encoder.", "visual_head.",
               "visual_reconstruction_head."),
    "acoustic": ("vavl.audio_backbone.", "vavl.audio_encoder.", "vavl.shared_encoder.", "audio_head.",
                 "audio_reconstruction_head."),
    "fusion": ("fusion_head.",),
}  # fmt: skip


@pytest.mark.parametrize("backbones", [False, True])
def test_declared_steps_own_what_the_prefix_schedule_owned(backbones):
    extra = {}
    if backbones:  # frozen backbones (the default): owned by their step, not trained
        extra = dict(audio_backbone_config=tiny_wav2vec2_config(), visual_backbone_config=tiny_efficientnet_config(),
                     visual_feature_dim=128)  # fmt: skip
    model = VavlForEmotionRecognition(tiny_vavl_config(**extra))
    names = [name for name, _ in model.named_parameters()]
    steps = resolve_schedule("auto", model)
    assert [(step.name, step.rows, step.outside_ddp) for step in steps] == [
        ("visual", ("video",), False), ("acoustic", ("audio",), False), ("fusion", ("audio", "video"), True)
    ]  # fmt: skip
    for step in steps:
        assert step.parameter_names == {name for name in names if name.startswith(PREFIX_STEPS[step.name])}
        assert {name for name in names if step.owns(name)} == step.parameter_names
    assert any(name.startswith("vavl.audio_backbone.") for name in steps[1].parameter_names) == backbones
    (joint,) = resolve_schedule("joint", model)
    assert joint.name == "joint" and joint.loss == "loss" and joint.rows == () and all(map(joint.owns, names))


def test_a_declaration_the_model_does_not_satisfy_is_refused_at_construction(tmp_path):
    """Each step of `training_steps()` must own parameters of the model (by identity), some of them trainable, and
    take rows of modalities its `input_spec()` declares; otherwise the trainer refuses it before training."""
    model = VavlForEmotionRecognition(tiny_vavl_config())
    frozen = VavlForEmotionRecognition(tiny_vavl_config()).requires_grad_(False)
    step = {"name": "audio", "modules": (model.audio_head,), "loss": "audio_loss", "rows": ("audio",)}
    cases = [
        (
            {"modules": (torch.nn.Linear(2, 2),)},
            model,
            r"module Linear owns no parameter of VavlForEmotionRecognition",
        ),
        ({"modules": (None,)}, model, "owns nothing"),
        (
            {"modules": (frozen.audio_head,)},
            frozen,
            "'audio' of VavlForEmotionRecognition owns no trainable parameter",
        ),
        ({"rows": ("text",)}, model, r"rows \['text'\] are not modalities of its input_spec\(\)"),
        ({"loss": 3}, model, "loss must be an output field name or a callable"),
        ({"name": ""}, model, "a step has no name"),
    ]
    for change, target, message in cases:
        target.training_steps = lambda change=change, target=target: ({**step, **change},)
        with pytest.raises(ValueError, match=message):
            EmotionTrainer(target, _args(tmp_path))
    model.training_steps = lambda: (step,)
    assert [s.name for s in EmotionTrainer(model, _args(tmp_path)).steps] == ["audio"]


def test_schedule_vavl_is_a_deprecated_alias_of_auto(tmp_path):
    with pytest.warns(FutureWarning, match=r"schedule='vavl' is deprecated.*use 'auto'"):
        args = _args(tmp_path, schedule="vavl")
    assert args.schedule == "auto"
    trainer = EmotionTrainer(VavlForEmotionRecognition(tiny_vavl_config()), args)
    assert [step.name for step in trainer.steps] == ["visual", "acoustic", "fusion"]


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    """A run killed after 5 of 12 updates and resumed from its last checkpoint (update 4, mid-epoch) ends with the
    same parameters and metrics as the uninterrupted run with the same seed."""
    train, evaluation = toy_dataset(48, 0, unpaired=0.2), toy_dataset(12, 1)
    options = dict(save_strategy="steps", save_steps=2, save_total_limit=1)  # 6 batches per epoch

    torch.manual_seed(1)
    reference_model = VavlForEmotionRecognition(tiny_vavl_config())
    reference = EmotionTrainer(reference_model, _args(tmp_path / "a", **options), train, evaluation)
    reference_report = reference.train()

    torch.manual_seed(1)
    killed = KilledTrainer(VavlForEmotionRecognition(tiny_vavl_config()), _args(tmp_path / "b", **options), train,
                           evaluation)  # fmt: skip
    with pytest.raises(Killed):
        killed.train()
    checkpoints = sorted((tmp_path / "b" / "out" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["checkpoint-0000004"]

    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    resumed_model = VavlForEmotionRecognition(tiny_vavl_config())
    resumed = EmotionTrainer(resumed_model, _args(tmp_path / "b", resume_from_checkpoint="last", **options), train,
                             evaluation)  # fmt: skip
    resumed_report = resumed.train()
    assert resumed.state.global_step == reference.state.global_step == 12
    for (name, a), (_, b) in zip(reference_model.named_parameters(), resumed_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert resumed_report["combined"] == reference_report["combined"]
    assert resumed_report["loss"] == pytest.approx(reference_report["loss"], abs=1e-6)
    assert resumed.state.log_history[-1]["train_loss"] == pytest.approx(
        reference.state.log_history[-1]["train_loss"], abs=1e-6
    )


def test_options_accumulation_groups_and_schedule(tmp_path):
    model = VavlForEmotionRecognition(tiny_vavl_config())
    args = _args(
        tmp_path,
        num_train_epochs=2,
        gradient_accumulation_steps=2,
        parameter_group_lr={"fusion_head.": 1e-2, "vavl.visual_encoder.": 0.0},
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_grad_norm=1.0,
        schedule="joint",
        metric_for_best_model="loss",
    )
    before = _snapshot(model)
    trainer = EmotionTrainer(model, args, toy_dataset(40, 0), toy_dataset(12, 1))
    trainer.train()
    # 5 batches per epoch, 2 per update (the last update of an epoch takes the odd batch): 3 updates per epoch
    assert trainer.state.global_step == 6
    changed = _changed(before, model)
    assert not any(name.startswith("vavl.visual_encoder.") for name in changed)  # the group at lr 0 is frozen
    assert any(name.startswith("fusion_head.") for name in changed)
    assert sorted(group["initial_lr"] for group in trainer.optimizer.param_groups) == [3e-3, 1e-2]
    assert all(group["lr"] == 0.0 for group in trainer.optimizer.param_groups)  # linear decay reached its end
    assert trainer.greater_is_better is False and trainer.metric_name == "loss"
    assert set(trainer.state.log_history[0]["train_loss"]) == {"joint"}


def test_early_stopping_stops(tmp_path):
    model = VavlForEmotionRecognition(tiny_vavl_config())
    args = _args(tmp_path, num_train_epochs=5, learning_rate=1e-12, early_stopping_patience=1, weight_decay=0.0)
    trainer = EmotionTrainer(model, args, toy_dataset(16, 0), toy_dataset(9, 1))
    trainer.train()
    # the metric cannot improve at lr 1e-12: best at epoch 1, stop after epoch 2
    assert trainer.state.best_epoch == 1 and trainer.state.epoch == 2


def test_regression_targets_use_label_scale(tmp_path):
    """Regression on a 1-5 scale: targets are mapped to [0, 1] for the loss; CCC per attribute is reported."""
    config = tiny_vavl_config(
        problem_type="regression", id2label={0: "arousal", 1: "valence"}, label2id={"arousal": 0, "valence": 1},
        label_scale=[1.0, 5.0],
    )  # fmt: skip
    data = toy_dataset(24, 0).map(lambda row: {"arousal": 1.0 + 2 * row["label"], "valence": 5.0 - row["label"]})
    args = _args(tmp_path, label_column=["arousal", "valence"], num_train_epochs=1)
    trainer = EmotionTrainer(VavlForEmotionRecognition(config), args, data, data)
    report = trainer.train()
    assert set(report["combined"]) >= {"ccc_arousal", "ccc_valence", "ccc_mean"}
    assert trainer.metric_name == "combined/ccc_mean"
    batch = trainer._prepare_labels({"labels": torch.tensor([[1.0, 5.0], [3.0, 4.0]])})
    torch.testing.assert_close(batch["labels"], torch.tensor([[0.0, 1.0], [0.5, 0.75]]))


def test_freeze_backbones_sets_every_backbone_flag_of_the_config(tmp_path):
    config = tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config(),
                              visual_backbone_config=tiny_efficientnet_config(), visual_feature_dim=128)  # fmt: skip
    model = VavlForEmotionRecognition(config)
    backbones = (model.vavl.audio_backbone, model.vavl.visual_backbone)
    assert not any(p.requires_grad for backbone in backbones for p in backbone.parameters())
    EmotionTrainer(model, _args(tmp_path, freeze_backbones=False))
    flags = (config.freeze_audio_backbone, config.freeze_visual_backbone, config.freeze_audio_feature_encoder)
    assert flags == (False, False, True)  # the CNN feature-encoder flag refines the audio backbone's: left alone
    assert all(p.requires_grad for p in model.vavl.visual_backbone.parameters())
    audio = dict(model.vavl.audio_backbone.named_parameters())
    assert all(p.requires_grad != name.startswith("feature_extractor.") for name, p in audio.items())
    EmotionTrainer(model, _args(tmp_path, freeze_backbones=True))
    assert not any(p.requires_grad for backbone in backbones for p in backbone.parameters())


def test_bad_options_raise():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        TrainingArguments(gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainingArguments(schedule="alternate")
    model = VavlForEmotionRecognition(tiny_vavl_config())
    with pytest.raises(ValueError, match="match no parameter"):
        EmotionTrainer(model, TrainingArguments(parameter_group_lr={"nope.": 1e-3}), toy_dataset(4, 0)).train()
    with pytest.raises(ValueError, match="metric_for_best_model"):
        trainer = EmotionTrainer(model, TrainingArguments(metric_for_best_model="combined/nope"))
        trainer.metric_value({"combined": {"accuracy": 1.0}})


def test_cli_train_and_evaluate_write_json(tmp_path):
    """`avemotion train` builds a model from the dataset's sizes and labels; `avemotion evaluate` writes per-branch
    metrics equal to the trainer's."""
    corpus = datasets.DatasetDict(
        {"train": toy_dataset(24, 0, unpaired=0.2), "validation": toy_dataset(9, 1), "test": toy_dataset(9, 2)}
    )
    corpus.save_to_disk(str(tmp_path / "data"))
    overrides = {k: v for k, v in tiny_vavl_config().to_dict().items() if k in ("projection_dim", "hidden_size",
                 "num_attention_heads", "intermediate_size", "conv_kernel_size", "num_modality_layers",
                 "num_shared_layers", "head_hidden_sizes")}  # fmt: skip
    out = tmp_path / "model"
    code = cli_main(
        ["train", "--dataset", str(tmp_path / "data"), "--output_dir", str(out), "--num_train_epochs", "1",
         "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--disable_tqdm",
         "--config_overrides", json.dumps(overrides)]
    )  # fmt: skip
    assert code == 0
    test_results = json.loads((out / "test_results.json").read_text())
    assert cli_main(["evaluate", "--model", str(out), "--dataset", str(tmp_path / "data"), "--split", "test"]) == 0
    written = json.loads((out / "eval_test.json").read_text())
    assert set(written) >= {"combined", "audio_visual", "audio", "visual", "loss", "num_samples"}
    assert written["combined"]["confusion_matrix"] == test_results["combined"]["confusion_matrix"]
    assert written["audio"]["macro_f1"] == pytest.approx(test_results["audio"]["macro_f1"])
    assert cli_main(["evaluate", "--model", str(out), "--dataset", str(tmp_path / "data"), "--split", "dev"]) == 2


def test_cli_trains_and_evaluates_a_corpus_by_name(tmp_path):
    from avemotion.cli import main
    from avemotion.data.synthetic import write_synthetic_corpus

    write_synthetic_corpus(tmp_path / "corpus", num_clips=36, seed=0)
    common = ["--dataset", "synthetic", "--data_dir", str(tmp_path / "corpus")]
    assert main(["train", *common, "--output_dir", str(tmp_path / "run"), "--num_train_epochs", "1",
                 "--per_device_train_batch_size", "8", "--config_overrides", '{"hidden_size": 32, '
                 '"num_attention_heads": 4, "intermediate_size": 64, "num_modality_layers": 1, "num_shared_layers": 1}',
                 "--disable_tqdm"]) == 0  # fmt: skip
    # cheap synthetic features have no processor: the output holds the model and a card that says so
    assert not (tmp_path / "run" / "processor_config.json").exists()
    assert "No processor was saved" in (tmp_path / "run" / "README.md").read_text()
    assert main(["evaluate", "--model", str(tmp_path / "run"), *common, "--output", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert {"audio", "visual", "audio_visual"} <= set(report)
    assert report["audio_visual"]["num_samples"] == len(load_corpus("synthetic", tmp_path / "corpus")["test"])
    assert main(["train", "--dataset", "crema-d", "--data_dir", str(tmp_path / "corpus"), "--output_dir",
                 str(tmp_path / "x")]) == 2  # no backbones to compute CREMA-D features with  # fmt: skip
