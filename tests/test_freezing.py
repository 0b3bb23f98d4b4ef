"""Backbone freezing: every model declares its backbone freeze flags (`backbone_freeze_flags`: each flag and the flags
that refine it) and applies its config's flags with one hook (`apply_backbone_freezing()`); the trainer's
`freeze_backbones` sets the declared flags and calls the hook, so a model it changed equals one rebuilt from the
changed config."""

import itertools

import pytest
import torch
from mlfusion_testing import tiny_config
from mlfusion_testing import tiny_wav2vec2_config as fusion_wav2vec2_config
from transformers import PretrainedConfig
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import MultiLevelFusionForEmotionRecognition, VavlForEmotionRecognition
from avemotion.training import EmotionTrainer, TrainingArguments
from avemotion.training.trainer import set_backbones_trainable


def _vavl(**flags):
    config = tiny_vavl_config(
        audio_backbone_config=tiny_wav2vec2_config(), visual_backbone_config=tiny_efficientnet_config(),
        visual_feature_dim=128, **flags,
    )  # fmt: skip
    return VavlForEmotionRecognition(config)


def _fusion(**flags):
    # layerdrop 0: the default audio_layer ("weighted_sum", resolved while the encoder is frozen) stays valid unfrozen
    config = tiny_config(audio_config=fusion_wav2vec2_config(layerdrop=0.0), **flags)
    return MultiLevelFusionForEmotionRecognition(config)


MODELS = {"vavl": _vavl, "mlfusion": _fusion}


def _trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def _modes(model):
    return {name: module.training for name, module in model.named_modules()}


def _rebuilt(model, tmp_path):
    """A model freshly built from `model`'s config, and one saved and loaded again."""
    fresh = type(model)(type(model.config).from_dict(model.config.to_dict()))
    model.save_pretrained(tmp_path / "saved")
    return fresh, type(model).from_pretrained(tmp_path / "saved")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_both_models_declare_their_backbone_freeze_flags(kind):
    model = MODELS[kind]()
    declared = type(model).backbone_freeze_flags
    assert declared == type(model.base_model).backbone_freeze_flags and declared
    config = model.config.to_dict()
    for flag, refining in declared.items():
        assert flag in config and all(refine in config for refine in refining)
    assert callable(model.apply_backbone_freezing) and callable(model.base_model.apply_backbone_freezing)


@pytest.mark.parametrize("kind, start, freeze", itertools.product(sorted(MODELS), (True, False), (True, False, None)))
def test_freeze_backbones_equals_a_model_rebuilt_from_the_resulting_config(kind, start, freeze, tmp_path):
    model = MODELS[kind]()
    flags = type(model).backbone_freeze_flags
    for flag in flags:  # start from a model whose backbones are all frozen, or all trainable
        setattr(model.config, flag, start)
    model.apply_backbone_freezing()
    refining = {refine: getattr(model.config, refine) for refines in flags.values() for refine in refines}
    set_backbones_trainable(model, freeze)
    expected = dict.fromkeys(flags, start if freeze is None else freeze)
    assert {flag: getattr(model.config, flag) for flag in flags} == expected
    assert {refine: getattr(model.config, refine) for refine in refining} == refining  # refining flags left alone
    fresh, reloaded = _rebuilt(model, tmp_path)
    assert _trainable(model) == _trainable(fresh) == _trainable(reloaded)
    assert _modes(model) == _modes(fresh)
    model.train(), fresh.train(), reloaded.train()
    assert _modes(model) == _modes(fresh) == _modes(reloaded)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_hook_applies_any_change_of_the_flags_as_a_fresh_model_does(kind):
    """Every combination of the backbone and refining flags, applied to a model built with the opposite ones, on the
    task model and on the base model."""
    declared = type(MODELS[kind]()).backbone_freeze_flags
    names = [*declared, *(refine for refines in declared.values() for refine in refines)]
    for values in itertools.product((True, False), repeat=len(names)):
        model = MODELS[kind](**{name: not value for name, value in zip(names, values)})
        for name, value in zip(names, values):
            setattr(model.config, name, value)
        (model if values[0] else model.base_model).apply_backbone_freezing()
        fresh = type(model)(type(model.config).from_dict(model.config.to_dict()))
        assert _trainable(model) == _trainable(fresh), dict(zip(names, values))
        assert _modes(model) == _modes(fresh), dict(zip(names, values))


def test_freeze_backbones_false_keeps_the_fusion_feature_encoder_frozen(tmp_path):
    """The fusion config says freeze_feature_encoder=True: unfreezing the speech encoder leaves its CNN frozen, as a
    model rebuilt from the changed config has it."""
    model = _fusion()
    assert model.config.freeze_feature_encoder
    EmotionTrainer(model, TrainingArguments(output_dir=str(tmp_path / "out"), freeze_backbones=False))
    assert not model.config.freeze_audio_encoder and not model.config.freeze_text_encoder
    assert model.config.freeze_feature_encoder
    audio = dict(model.mlfusion.audio_encoder.named_parameters())
    assert all(p.requires_grad != name.startswith("feature_extractor.") for name, p in audio.items())
    assert all(p.requires_grad for p in model.mlfusion.text_encoder.parameters())
    assert _trainable(model) == _trainable(type(model)(model.config))


def test_freeze_backbones_false_that_makes_an_invalid_config_is_an_error_and_changes_nothing(tmp_path):
    """A frozen speech encoder resolves audio_layer to "weighted_sum", which a fine-tuned encoder with layerdrop cannot
    use: a rebuilt model would fail, so the override does, before it changes the config or the model."""
    model = MultiLevelFusionForEmotionRecognition(tiny_config(audio_config=fusion_wav2vec2_config(layerdrop=0.1)))
    before = _trainable(model)
    with pytest.raises(ValueError, match="layerdrop"):
        set_backbones_trainable(model, False)
    assert model.config.freeze_audio_encoder and model.config.freeze_text_encoder
    assert _trainable(model) == before


class _Config(PretrainedConfig):
    model_type = "undeclared-test"

    def __init__(self, freeze_encoder=True, **kwargs):
        self.freeze_encoder = freeze_encoder
        super().__init__(**kwargs)


class _Undeclared(torch.nn.Module):
    """A model with a freeze flag and a module of the flag's name, but no declaration of either."""

    def __init__(self):
        super().__init__()
        self.config = _Config()
        self.encoder = torch.nn.Linear(2, 2).requires_grad_(False)


class _FlagsWithoutHook(_Undeclared):
    backbone_freeze_flags = {"freeze_encoder": ()}


class _HookWithoutFlags(_Undeclared):
    def apply_backbone_freezing(self):
        self.encoder.requires_grad_(not self.config.freeze_encoder)


class _UnknownFlag(_HookWithoutFlags):
    backbone_freeze_flags = {"freeze_decoder": ()}


@pytest.mark.parametrize("model_class", [_Undeclared, _FlagsWithoutHook, _HookWithoutFlags])
def test_a_model_without_the_declaration_is_a_clear_error(model_class):
    model = model_class()
    set_backbones_trainable(model, None)  # nothing to override: no error
    for freeze in (True, False):
        with pytest.raises(ValueError, match=r"backbone_freeze_flags.*apply_backbone_freezing"):
            set_backbones_trainable(model, freeze)
    assert model.config.freeze_encoder and not any(p.requires_grad for p in model.parameters())


def test_a_declared_flag_the_config_lacks_is_a_clear_error():
    with pytest.raises(ValueError, match="freeze_decoder"):
        set_backbones_trainable(_UnknownFlag(), False)
