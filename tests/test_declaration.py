"""`avemotion.models.declaration`: the one typed reader of a model's declaration, its checks and its defaults."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avemotion.models.declaration import (
    JOINT_STEP,
    DeclarationError,
    read_branches,
    read_declaration,
    read_input_spec,
)

AUDIO = {"inputs": ("input_values", "attention_mask"), "features": ("audio_features", "audio_features_mask")}


class Declaring(nn.Module):
    """A module that declares whatever the test gives it."""

    def __init__(self, spec=None, steps=None, branches=None):
        super().__init__()
        self.encoder, self.head = nn.Linear(2, 2), nn.Linear(2, 2)
        self.spec, self.steps, self.branches = spec, steps, branches

    def input_spec(self):
        return self.spec

    def training_steps(self):
        return self.steps

    def evaluation_branches(self):
        return self.branches


def test_a_full_declaration_reads_into_typed_records():
    spec = {
        "modalities": {
            "audio": {**AUDIO, "layout": "waveform", "feature_dim": 8, "feature_rate": 25.0, "sampling_rate": 8000,
                      "min_samples": 200},
            "text": {"inputs": ("input_ids", "text_attention_mask"), "layout": "tokens", "max_length": 16,
                     "extra_inputs": ("token_type_ids",)},
        },
        "segments": {"word": ("word_segments", "word_segments_mask")},
        "window_seconds": 6,
    }  # fmt: skip
    model = Declaring(spec, None, {"logits": "combined", "audio_logits": "audio"})
    model.steps = ({"name": "audio", "modules": (model.encoder, None), "loss": "audio_loss", "rows": ("audio",)},)
    declaration = read_declaration(model)
    audio, text = declaration.inputs.modalities["audio"], declaration.inputs.modalities["text"]
    assert (audio.layout, audio.feature_dim, audio.feature_rate, audio.sampling_rate, audio.min_samples) == (
        "waveform", 8, 25.0, 8000, 200
    )  # fmt: skip
    assert audio.keys == ("input_values", "attention_mask", "audio_features", "audio_features_mask")
    assert text.keys == ("input_ids", "text_attention_mask", "token_type_ids") and text.max_length == 16
    # the collator pads waveform inputs and features with zeros, token ids as text
    assert declaration.inputs.padded_keys == {
        "input_values": "attention_mask",
        "audio_features": "audio_features_mask",
    }
    assert declaration.inputs.segments == {"word": ("word_segments", "word_segments_mask")}
    assert declaration.inputs.window_seconds == 6.0
    (step,) = declaration.steps
    assert step.modules == (model.encoder,) and step.loss == "audio_loss" and step.rows == ("audio",)
    assert declaration.branches == {"logits": "combined", "audio_logits": "audio"}

    batch = {"audio_features": torch.ones(3, 2, 8), "audio_features_mask": torch.tensor([[1, 1], [0, 0], [1, 0]])}
    assert audio.present(batch, 3, torch.device("cpu")).tolist() == [True, False, True]
    assert text.present(batch, 3, torch.device("cpu")).tolist() == [False, False, False]


def test_declarations_written_before_the_typed_fields_get_the_old_defaults():
    """A remote copy saved by an earlier release declares no layout, feature rate or shortest waveform."""
    model = Declaring({"modalities": {"audio": AUDIO, "video": {"inputs": ("pixel_values_videos", "mask")}}})
    declaration = read_declaration(model)
    audio, video = declaration.inputs.modalities["audio"], declaration.inputs.modalities["video"]
    assert (audio.layout, audio.feature_rate, audio.min_samples) == ("waveform", 50.0, 400)
    assert (video.layout, video.feature_rate, video.min_samples) == ("frames", None, None)
    assert declaration.steps == (JOINT_STEP,) and declaration.branches == {"logits": "logits"}
    assert declaration.freeze_flags == {}
    assert read_branches(["logits", "audio"]) == {"logits": "logits", "audio": "audio"}
    # generic code that also serves models without a declaration reads an empty one
    bare = read_declaration(Declaring(None, None, ["logits", "audio_logits"]), required=False)
    assert dict(bare.inputs.modalities) == {} and bare.steps == (JOINT_STEP,)
    assert bare.branches == {"logits": "logits", "audio_logits": "audio_logits"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (None, r"Declaring\.input_spec\(\): is missing"),
        ({"modalities": {}}, r"input_spec\(\)\['modalities'\]: must name at least one modality"),
        ({"modalities": {"audio": {"features": ("a", "b")}}}, r"\['audio'\]: needs its `inputs`"),
        ({"modalities": {"audio": {**AUDIO, "layout": "pixels"}}}, r"\['audio'\]\['layout'\]: must be one of"),
        ({"modalities": {"audio": {**AUDIO, "feature_dim": -3}}}, r"\['feature_dim'\]: must be a positive number"),
        ({"modalities": {"audio": {**AUDIO, "min_samples": 2.5}}}, r"\['min_samples'\]: must be a whole number"),
        ({"modalities": {"audio": {**AUDIO, "sampling_rte": 16000}}}, r"unknown fields \['sampling_rte'\]"),
        ({"modalities": {"audio": {"inputs": "input_values"}}}, r"\['inputs'\]: must be a \(values key, mask key\)"),
        ({"modalities": {"audio": AUDIO, "video": AUDIO}}, r"key 'input_values' belongs to both 'audio' and 'video'"),
        ({"modalities": {"audio": AUDIO}, "window": 3}, r"input_spec\(\): unknown fields \['window'\]"),
        ({"modalities": {"audio": AUDIO}, "window_seconds": 0}, r"\['window_seconds'\]: must be a positive"),
    ],
)
def test_a_malformed_input_spec_names_the_model_and_the_field(spec, match):
    with pytest.raises(DeclarationError, match=match):
        read_declaration(Declaring(spec))


@pytest.mark.parametrize(
    ("steps", "branches", "match"),
    [
        ([{"modules": ()}], None, r"training_steps\(\)\[0\]: a step has no name"),
        ([{"name": "a", "loss": 3}], None, r"training step 'a': loss must be an output field name or a callable"),
        ([{"name": "a", "rows": ("video",)}], None, r"rows \['video'\] are not modalities"),
        ([{"name": "a", "modules": (None,)}], None, r"training step 'a': owns nothing"),
        ([{"name": "a", "optimizer": "sgd"}], None, r"training_steps\(\)\[0\]: unknown fields \['optimizer'\]"),
        ([], None, r"training_steps\(\): declares no step"),
        (None, {"logits": "x", "audio_logits": "x"}, r"two branches share a report name"),
        (None, {"logits": ""}, r"evaluation_branches\(\): needs output and report names"),
        (None, [], r"evaluation_branches\(\): declares no branch"),
    ],
)
def test_malformed_steps_and_branches_name_the_model(steps, branches, match):
    with pytest.raises(DeclarationError, match=r"Declaring\.") as caught:
        read_declaration(Declaring({"modalities": {"audio": AUDIO}}, steps, branches))
    assert caught.match(match)


def test_freeze_flags_need_the_hook_and_config_fields():
    class Config:
        freeze_encoder = True

    model = Declaring({"modalities": {"audio": AUDIO}})
    model.config = Config()
    model.backbone_freeze_flags = {"freeze_encoder": ("freeze_encoder_cnn",)}
    with pytest.raises(DeclarationError, match=r"backbone_freeze_flags: is declared without the hook"):
        read_declaration(model)
    model.apply_backbone_freezing = lambda: None
    with pytest.raises(DeclarationError, match=r"names \['freeze_encoder_cnn'\]: no fields of its Config"):
        read_declaration(model)
    Config.freeze_encoder_cnn = False
    assert read_declaration(model).freeze_flags == {"freeze_encoder": ("freeze_encoder_cnn",)}


def test_the_package_models_declare_through_the_reader():
    from vavl_testing import tiny_vavl_config

    from avemotion.models.vavl import VavlForEmotionRecognition

    declaration = read_declaration(VavlForEmotionRecognition(tiny_vavl_config()))
    assert [step.name for step in declaration.steps] == ["visual", "acoustic", "fusion"]
    assert declaration.inputs.modalities["audio"].feature_rate == 50.0
    assert declaration.inputs.modalities["audio"].min_samples == 400
    assert declaration.branches["fusion_logits"] == "audio_visual"
    assert read_input_spec({"modalities": {"audio": AUDIO}}).modalities["audio"].name == "audio"
