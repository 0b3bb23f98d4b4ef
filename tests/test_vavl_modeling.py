"""VAVL model behaviour on tiny configs: shapes, modality routing, masks, losses, the declaration (input spec,
training steps, fusion step loss), errors. Saving, the Auto classes and remote code: tests/test_model_common.py."""

import numpy as np
import pytest
import torch
from transformers import EfficientNetModel, Wav2Vec2Model
from vavl_testing import AUDIO_DIM, VISUAL_DIM, tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import VavlConfig, VavlForEmotionRecognition, VavlModel
from avemotion.models.vavl.conformer import ConformerConvolutionModule
from avemotion.models.vavl.modeling_vavl import feature_frames_mask
from avemotion.utils.losses import concordance_correlation_coefficient


def make_model(**overrides) -> VavlForEmotionRecognition:
    return VavlForEmotionRecognition(tiny_vavl_config(**overrides)).eval()


def padded_batch(lengths, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.zeros(len(lengths), max(lengths), dim)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        features[row, :length] = torch.randn(length, dim, generator=generator)
        mask[row, :length] = 1
    return features, mask


def test_preset_parameter_count_matches_original_used_heads():
    config = VavlConfig.from_preset("crema-d", audio_backbone_config=None, visual_backbone_config=None)
    model = VavlForEmotionRecognition(config)
    assert sum(p.numel() for p in model.parameters()) == 53_884_818
    assert config.id2label == {0: "angry", 1: "sad", 2: "disgust", 3: "fear", 4: "neutral", 5: "happy"}
    assert config.label2id["happy"] == 5
    # sinusoid tables are regenerated, never saved
    assert not any("position_table" in key for key in model.state_dict())


def test_presets_carry_the_paper_setups():
    crema = VavlConfig.from_preset("crema-d")
    assert crema.audio_backbone_config.num_hidden_layers == 12
    assert crema.audio_backbone_config.hidden_size == 1024
    assert crema.visual_backbone_config.hidden_dim == 1408
    assert crema.reconstruction_loss_weight == 2.0 and crema.problem_type == "single_label_classification"
    improv = VavlConfig.from_preset("msp-improv", num_shared_layers=1)
    assert improv.id2label == {0: "arousal", 1: "dominance", 2: "valence"}
    assert improv.problem_type == "regression" and improv.label_scale == [1.0, 5.0]
    assert improv.reconstruction_loss_weight == 1.0 and improv.num_shared_layers == 1
    with pytest.raises(ValueError, match="Unknown VAVL preset"):
        VavlConfig.from_preset("iemocap")


def test_paper_backbone_layouts_have_the_original_sizes():
    config = VavlConfig.from_preset("crema-d")
    assert sum(p.numel() for p in Wav2Vec2Model(config.audio_backbone_config).parameters()) == 164_284_032
    effnet = EfficientNetModel(config.visual_backbone_config).eval()
    with torch.no_grad():
        assert effnet(torch.randn(1, 3, 224, 224)).pooler_output.shape == (1, 1408)


def test_modality_routing_and_shapes():
    model = make_model()
    audio, audio_mask = padded_batch([7, 5], AUDIO_DIM)
    video, video_mask = padded_batch([4, 6], VISUAL_DIM, seed=1)
    with torch.no_grad():
        both = model(
            audio_features=audio,
            audio_features_mask=audio_mask,
            visual_features=video,
            visual_features_mask=video_mask,
        )
        audio_only = model(audio_features=audio, audio_features_mask=audio_mask)
        video_only = model(visual_features=video, visual_features_mask=video_mask)
    assert both.logits.shape == (2, 3)
    torch.testing.assert_close(both.logits, both.fusion_logits)
    torch.testing.assert_close(audio_only.logits, both.audio_logits)
    torch.testing.assert_close(video_only.logits, both.visual_logits)
    assert audio_only.visual_logits is None and audio_only.fusion_logits is None
    assert video_only.audio_logits is None and video_only.fusion_logits is None
    assert both.audio_pooled_output.shape == (2, 32)


def test_row_with_missing_modality_uses_the_other_head():
    model = make_model()
    audio, audio_mask = padded_batch([7, 5], AUDIO_DIM)
    video, video_mask = padded_batch([4, 6], VISUAL_DIM, seed=1)
    video_mask[1] = 0  # row 1 has no video
    with torch.no_grad():
        out = model(
            audio_features=audio,
            audio_features_mask=audio_mask,
            visual_features=video,
            visual_features_mask=video_mask,
        )
        alone = model(audio_features=audio[1:, :5], audio_features_mask=audio_mask[1:, :5])
    assert out.visual_present.tolist() == [True, False]
    torch.testing.assert_close(out.logits[0], out.fusion_logits[0])
    torch.testing.assert_close(out.logits[1], out.audio_logits[1])
    torch.testing.assert_close(out.logits[1], alone.logits[0], atol=1e-5, rtol=0)


def test_batch_independence_in_default_mode():
    model = make_model()
    audio, audio_mask = padded_batch([9, 4, 6], AUDIO_DIM)
    video, video_mask = padded_batch([3, 8, 5], VISUAL_DIM, seed=1)
    with torch.no_grad():
        batched = model(
            audio_features=audio,
            audio_features_mask=audio_mask,
            visual_features=video,
            visual_features_mask=video_mask,
        )
        for row, (a_len, v_len) in enumerate([(9, 3), (4, 8), (6, 5)]):
            single = model(audio_features=audio[row : row + 1, :a_len], visual_features=video[row : row + 1, :v_len])
            for name in ("logits", "audio_logits", "visual_logits", "audio_pooled_output"):
                torch.testing.assert_close(getattr(batched, name)[row], getattr(single, name)[0], atol=1e-5, rtol=0)
        # reversing the batch order does not change any row either
        flipped = model(
            audio_features=audio.flip(0),
            audio_features_mask=audio_mask.flip(0),
            visual_features=video.flip(0),
            visual_features_mask=video_mask.flip(0),
        )
    torch.testing.assert_close(flipped.logits.flip(0), batched.logits, atol=1e-5, rtol=0)


def test_legacy_batch_mixing_attends_across_the_batch():
    model = make_model(legacy_batch_axis_attention=True, position_encoding="legacy_shifted", legacy_batch_mixing=True)
    audio = torch.randn(3, 6, AUDIO_DIM)
    with torch.no_grad():
        batched = model(audio_features=audio).logits
        first_alone = model(audio_features=audio[:1]).logits
        changed_neighbour = model(audio_features=torch.cat([audio[:2], torch.randn(1, 6, AUDIO_DIM)])).logits
    # the original code's behaviour: a sample's output depends on the other samples of its batch
    assert (batched[0] - first_alone[0]).abs().max() > 1e-4
    assert (batched[0] - changed_neighbour[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs legacy_batch_axis_attention=True"):
        tiny_vavl_config(legacy_batch_mixing=True)


def test_legacy_layout_is_batch_independent_by_default():
    """Converted checkpoints (legacy layout) run one clip per forward unless `legacy_batch_mixing` is set."""
    model = make_model(legacy_batch_axis_attention=True, position_encoding="legacy_shifted")
    assert model.config.legacy_batch_mixing is False and "legacy_batch_mixing" in model.config.to_dict()
    audio, audio_mask = padded_batch([7, 4, 6], AUDIO_DIM)
    video, video_mask = padded_batch([3, 5, 0], VISUAL_DIM, seed=1)  # row 2 has no video
    with torch.no_grad():
        batched = model(
            audio_features=audio,
            audio_features_mask=audio_mask,
            visual_features=video,
            visual_features_mask=video_mask,
        )
        for row, (a_len, v_len) in enumerate([(7, 3), (4, 5), (6, 0)]):
            video_inputs = {"visual_features": video[row : row + 1, :v_len]} if v_len else {}
            alone = model(audio_features=audio[row : row + 1, :a_len], **video_inputs)
            torch.testing.assert_close(batched.logits[row], alone.logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.audio_logits[row], alone.audio_logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                batched.audio_pooled_output[row], alone.audio_pooled_output[0], atol=1e-5, rtol=0
            )
    assert torch.isnan(batched.visual_logits[2]).all() and torch.isnan(batched.fusion_logits[2]).all()


def test_relative_positions_make_attention_shift_invariant():
    # same content placed at a different offset of a longer padded sequence gives the same pooled output
    model = VavlModel(tiny_vavl_config()).eval()
    frames = torch.randn(1, 5, AUDIO_DIM)
    with torch.no_grad():
        short = model(audio_features=frames).audio_pooled_output
        padded = torch.cat([frames, torch.zeros(1, 7, AUDIO_DIM)], dim=1)
        mask = torch.tensor([[1] * 5 + [0] * 7])
        long = model(audio_features=padded, audio_features_mask=mask).audio_pooled_output
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


def test_classification_loss_terms():
    model = make_model()
    audio, audio_mask = padded_batch([7, 5, 6], AUDIO_DIM)
    video, video_mask = padded_batch([4, 6, 2], VISUAL_DIM, seed=1)
    labels = torch.tensor([0, 2, 1])
    out = model(
        audio_features=audio,
        audio_features_mask=audio_mask,
        visual_features=video,
        visual_features_mask=video_mask,
        labels=labels,
    )
    ce = torch.nn.functional.cross_entropy
    pooled = model.vavl(audio_features=audio, audio_features_mask=audio_mask)
    lengths = audio_mask.sum(1, keepdim=True)
    audio_target = (audio * audio_mask.unsqueeze(-1)).sum(1) / lengths
    expected_rec = torch.nn.functional.mse_loss(
        model.audio_reconstruction_head(pooled.audio_pooled_output), audio_target
    )
    torch.testing.assert_close(out.audio_reconstruction_loss, expected_rec)
    torch.testing.assert_close(out.audio_loss, ce(out.audio_logits, labels) + 2.0 * expected_rec)
    torch.testing.assert_close(out.fusion_loss, ce(out.fusion_logits, labels))
    torch.testing.assert_close(out.loss, out.audio_loss + out.visual_loss + out.fusion_loss)
    # soft labels (class probabilities) are accepted
    soft = torch.nn.functional.one_hot(labels, 3).float()
    out_soft = model(audio_features=audio, audio_features_mask=audio_mask, labels=soft)
    torch.testing.assert_close(out_soft.loss, out.audio_loss)


def test_gradients_reach_shared_layers_from_each_modality():
    model = make_model().train()
    shared = [p for p in model.vavl.shared_encoder.parameters()]
    for kwargs, own, other in (
        ({"audio_features": torch.randn(2, 6, AUDIO_DIM)}, model.vavl.audio_encoder, model.vavl.visual_encoder),
        ({"visual_features": torch.randn(2, 6, VISUAL_DIM)}, model.vavl.visual_encoder, model.vavl.audio_encoder),
    ):
        model.zero_grad(set_to_none=True)
        model(**kwargs, labels=torch.tensor([0, 1])).loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared if p.requires_grad)
        assert own.projection.weight.grad.abs().sum() > 0
        assert other.projection.weight.grad is None


def test_training_on_a_single_one_frame_clip_works():
    """BatchNorm over real frames in training: one real frame in the batch (a short clip alone, or the only row with
    that modality) has no variance; it is normalised with the running statistics instead of raising."""
    torch.manual_seed(0)
    model = make_model(conformer_dropout=0.0, head_dropout=0.0).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    cases = [
        ({"audio_features": torch.randn(1, 1, AUDIO_DIM)}, [1]),  # one row, one frame, no mask
        ({"visual_features": torch.randn(1, 1, VISUAL_DIM), "visual_features_mask": torch.ones(1, 1)}, [2]),
    ]
    # padded: row 0 has one audio frame, row 1 no audio (the audio encoder sees one real position)
    audio, audio_mask = padded_batch([1, 0], AUDIO_DIM)
    video, video_mask = padded_batch([0, 3], VISUAL_DIM, seed=1)
    cases.append(({"audio_features": audio, "audio_features_mask": audio_mask, "visual_features": video,
                   "visual_features_mask": video_mask}, [0, 1]))  # fmt: skip
    for index, (inputs, labels) in enumerate(cases):
        model.zero_grad(set_to_none=True)
        output = model(**inputs, labels=torch.tensor(labels))
        output.loss.backward()
        assert torch.isfinite(output.loss)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        if index == 1:  # one frame everywhere so far: the running statistics were used, not updated
            for norm, (mean, var, count) in zip(norms, before, strict=True):
                assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)
                assert int(norm.num_batches_tracked) == count
    # the one-frame clip does not depend on the padding of the batch around it (padded steps come out as zeros)
    conv = ConformerConvolutionModule(8, kernel_size=3, dropout=0.0).train()
    conv.batch_norm.running_mean.uniform_(-1, 1)
    clip = torch.randn(1, 1, 8)
    padded = torch.cat([clip, torch.randn(1, 2, 8)], dim=1)
    alone = conv(clip)
    with_padding = conv(padded, torch.tensor([[True, False, False]]))
    torch.testing.assert_close(with_padding[:, :1], alone)
    assert bool(torch.isfinite(alone).all()) and not bool((alone == alone[..., :1]).all())  # not a constant


def test_regression_head_and_ccc_loss():
    model = make_model(
        id2label={0: "arousal", 1: "dominance", 2: "valence"},
        label2id={"arousal": 0, "dominance": 1, "valence": 2},
        problem_type="regression",
        reconstruction_loss_weight=1.0,
        label_scale=[1, 5],
    )
    audio = torch.randn(4, 6, AUDIO_DIM)
    labels = torch.rand(4, 3)
    out = model(audio_features=audio, labels=labels)
    predictions, targets = out.audio_logits.detach().numpy(), labels.numpy()
    ccc = []
    for k in range(3):
        p, y = predictions[:, k], targets[:, k]
        ccc.append(2 * np.mean((p - p.mean()) * (y - y.mean())) / (p.var() + y.var() + (p.mean() - y.mean()) ** 2))
    expected = sum(1 - c for c in ccc) + out.audio_reconstruction_loss.item()
    assert out.audio_loss.item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="Regression labels"):
        model(audio_features=audio, labels=torch.rand(4))


def test_concordance_correlation_coefficient_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert concordance_correlation_coefficient(x, x).item() == pytest.approx(1.0, abs=1e-6)
    centred = x - x.mean()
    assert concordance_correlation_coefficient(centred, -centred).item() == pytest.approx(-1.0, abs=1e-6)
    # negated without centring: the mean offset (5) adds 25 to the denominator: -2.5 / (2.5 + 25)
    assert concordance_correlation_coefficient(x, -x).item() == pytest.approx(-2.5 / 27.5, abs=1e-6)
    # shifted copy: perfect correlation but a mean offset lowers CCC: 2*1.25 / (1.25 + 1.25 + 1)
    assert concordance_correlation_coefficient(x, x + 1).item() == pytest.approx(2.5 / 3.5, abs=1e-6)
    assert concordance_correlation_coefficient(torch.ones(4), x).item() == pytest.approx(0.0, abs=1e-6)


def test_audio_backbone_from_waveforms_is_batch_independent():
    model = make_model(audio_backbone_config=tiny_wav2vec2_config())
    waves = torch.randn(2, 1600)
    mask = torch.ones(2, 1600, dtype=torch.long)
    mask[1, 1000:] = 0
    waves[1, 1000:] = 0
    with torch.no_grad():
        batched = model(input_values=waves, attention_mask=mask)
        alone = model(input_values=waves[1:, :1000])
    torch.testing.assert_close(batched.logits[1], alone.logits[0], atol=1e-5, rtol=0)
    # frozen by default: no gradients and eval mode even after .train()
    model.train()
    assert not model.vavl.audio_backbone.training
    assert not any(p.requires_grad for p in model.vavl.audio_backbone.parameters())


def test_visual_backbone_on_frames_skips_padding():
    model = make_model(visual_backbone_config=tiny_efficientnet_config(), visual_feature_dim=128)
    frames = torch.randn(2, 3, 3, 32, 32)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        features = model.vavl.get_visual_features(frames, mask)
        batched = model(pixel_values_videos=frames, visual_features_mask=mask)
        alone = model(pixel_values_videos=frames[1:, :2])
    assert features.shape == (2, 3, 128)
    assert torch.all(features[1, 2] == 0)
    torch.testing.assert_close(batched.logits[1], alone.logits[0], atol=1e-5, rtol=0)


def test_from_backbones_loads_pretrained_weights(tmp_path):
    wav2vec2 = Wav2Vec2Model(tiny_wav2vec2_config(num_hidden_layers=3))
    wav2vec2.save_pretrained(tmp_path / "w2v")
    effnet = EfficientNetModel(tiny_efficientnet_config())
    effnet.save_pretrained(tmp_path / "effnet")
    model = VavlForEmotionRecognition.from_backbones(
        audio=tmp_path / "w2v", visual=tmp_path / "effnet", audio_num_layers=2, config=tiny_vavl_config()
    )
    backbone = model.vavl.audio_backbone
    assert backbone.config.num_hidden_layers == 2 and model.config.visual_feature_dim == 128
    torch.testing.assert_close(
        backbone.encoder.layers[1].attention.q_proj.weight, wav2vec2.encoder.layers[1].attention.q_proj.weight
    )
    for name, tensor in effnet.state_dict().items():
        torch.testing.assert_close(model.vavl.visual_backbone.state_dict()[name], tensor)
    assert model.config.audio_backbone_name == str(tmp_path / "w2v")


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model(conformer_dropout=0.0, head_dropout=0.0).train()
    audio = torch.randn(2, 6, AUDIO_DIM)
    labels = torch.tensor([0, 1])
    model(audio_features=audio, labels=labels).loss.backward()
    reference = model.vavl.audio_encoder.projection.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable()
    assert model.vavl.shared_encoder.conformer.layers[0].gradient_checkpointing
    model(audio_features=audio, labels=labels).loss.backward()
    torch.testing.assert_close(model.vavl.audio_encoder.projection.weight.grad, reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one modality"),
        ({"audio_features": torch.randn(2, 5, AUDIO_DIM + 1)}, r"audio_features` must be \(batch, frames, 16\)"),
        ({"audio_features": torch.randn(5, AUDIO_DIM)}, "audio_features"),
        (
            {"audio_features": torch.randn(2, 5, AUDIO_DIM), "audio_features_mask": torch.ones(2, 4)},
            "audio_features_mask",
        ),
        ({"audio_features": torch.randn(2, 5, AUDIO_DIM), "input_values": torch.randn(2, 400)}, "not both"),
        ({"input_values": torch.randn(2, 400)}, "no audio backbone"),
        ({"pixel_values_videos": torch.randn(2, 3, 3, 8, 8)}, "no visual backbone"),
        (
            {"audio_features": torch.randn(2, 5, AUDIO_DIM), "visual_features": torch.randn(3, 5, VISUAL_DIM)},
            "batch sizes differ",
        ),
        (
            {"audio_features": torch.randn(2, 5, AUDIO_DIM), "audio_features_mask": torch.tensor([[1] * 5, [0] * 5])},
            r"Rows \[1\] have neither",
        ),
        ({"audio_features": torch.randint(0, 3, (2, 5, AUDIO_DIM))}, "floating-point"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model()(**kwargs)


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        tiny_vavl_config(num_attention_heads=5)
    with pytest.raises(ValueError, match="odd"):
        tiny_vavl_config(conv_kernel_size=4)
    with pytest.raises(ValueError, match="label_scale"):
        tiny_vavl_config(label_scale=[5, 1])


def test_model_card_template_documents_real_config_fields():
    import re
    from pathlib import Path

    from huggingface_hub import ModelCard, ModelCardData

    template = Path(__file__).resolve().parents[1] / "hub_cards" / "vavl.md"
    card = ModelCard.from_template(ModelCardData(license="apache-2.0"), template_path=str(template), repo_id="me/vavl")
    assert "me/vavl" in card.content and card.data.license == "apache-2.0"
    documented = re.findall(r"^\| `(\w+)` \|", card.content, flags=re.MULTILINE)
    assert {"legacy_batch_axis_attention", "position_encoding"} <= set(documented)
    config = tiny_vavl_config()
    assert all(hasattr(config, field) for field in documented)


# The parameter names each step of VAVL's schedule updated when the trainer listed them as prefixes (before the
# model declared its steps as modules): the modules must cover exactly these.
PREFIX_STEPS = {
    "visual": (
        "vavl.visual_backbone.", "vavl.visual_encoder.", "vavl.shared_encoder.", "visual_head.",
        "visual_reconstruction_head.",
    ),
    "acoustic": (
        "vavl.audio_backbone.", "vavl.audio_encoder.", "vavl.shared_encoder.", "audio_head.",
        "audio_reconstruction_head.",
    ),
    "fusion": ("fusion_head.",),
}  # fmt: skip


@pytest.mark.parametrize("backbones", [False, True])
def test_training_steps_own_the_parameters_the_prefix_schedule_owned(backbones):
    extra = {}
    if backbones:
        extra = dict(
            audio_backbone_config=tiny_wav2vec2_config(),
            visual_backbone_config=tiny_efficientnet_config(),
            visual_feature_dim=128,
        )
    model = make_model(**extra)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    steps = model.training_steps()
    assert [step["name"] for step in steps] == ["visual", "acoustic", "fusion"]
    assert [step["rows"] for step in steps] == [("video",), ("audio",), ("audio", "video")]
    assert steps[0]["loss"] == "visual_loss" and steps[1]["loss"] == "audio_loss"
    assert steps[2]["loss"] == model.fusion_step_loss
    for step in steps:
        assert all(isinstance(m, torch.nn.Module) for m in step["modules"] if m is not None)
        owned = {names[id(p)] for module in step["modules"] if module is not None for p in module.parameters()}
        expected = {name for name in names.values() if name.startswith(PREFIX_STEPS[step["name"]])}
        assert owned == expected, step["name"]
    # without backbones their entries are None (skipped), with them they are the backbone modules
    backbone_entries = (steps[0]["modules"][0], steps[1]["modules"][0])
    if backbones:
        assert backbone_entries == (model.vavl.visual_backbone, model.vavl.audio_backbone)
    else:
        assert backbone_entries == (None, None)


def _old_fusion_loss(model, labels, **inputs):
    """The trainer's fusion step as it was (training/trainer.py::_fusion_loss, without accelerate)."""
    model.vavl.eval()
    with torch.no_grad():
        encoded = model.vavl(**inputs)
    model.vavl.train()
    pooled = torch.cat([encoded.audio_pooled_output, encoded.visual_pooled_output], dim=-1).detach()
    return model.task_loss(model.fusion_head(pooled), labels)


@pytest.mark.parametrize("problem", ["classification", "regression"])
def test_fusion_step_loss_equals_the_trainer_fusion_step(problem):
    extra = {"problem_type": "regression", "label_scale": [1.0, 5.0]} if problem == "regression" else {}
    model = make_model(audio_backbone_config=tiny_wav2vec2_config(), **extra).train()
    waves = torch.randn(3, 1600)
    attention_mask = torch.ones(3, 1600, dtype=torch.long)
    attention_mask[1, 1200:] = 0
    video, video_mask = padded_batch([4, 2, 3], VISUAL_DIM, seed=1)
    inputs = dict(
        input_values=waves, attention_mask=attention_mask, visual_features=video, visual_features_mask=video_mask
    )
    labels = torch.rand(3, 3) if problem == "regression" else torch.tensor([0, 2, 1])

    torch.manual_seed(7)  # the fusion head runs in train mode (dropout): the same random state for both
    expected = _old_fusion_loss(model, labels, **inputs)
    expected.backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    torch.manual_seed(7)
    loss = model.fusion_step_loss(labels=labels, **inputs)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == set(expected_grads) and all(name.startswith("fusion_head.") for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=0, atol=0)
    # the encoders are back in train mode (a frozen backbone stays in eval mode); an eval-mode model stays in eval mode
    assert model.vavl.training and model.vavl.shared_encoder.training and not model.vavl.audio_backbone.training
    model.eval()
    model.fusion_step_loss(labels=labels, **inputs)
    assert not any(module.training for module in model.modules())


def test_fusion_step_loss_edge_cases():
    model = make_model().train()
    empty = model.fusion_step_loss(
        labels=torch.zeros(0, dtype=torch.long), audio_features=torch.zeros(0, 2, AUDIO_DIM)
    )
    empty.backward()
    assert empty.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.fusion_head.parameters())
    with pytest.raises(ValueError, match="needs audio and video"):
        model.fusion_step_loss(labels=torch.tensor([0]), audio_features=torch.randn(1, 3, AUDIO_DIM))


def test_input_spec_follows_the_config():
    spec = make_model(sampling_rate=8000, window_seconds=6.0).input_spec()
    assert spec["modalities"]["audio"] == {
        "inputs": ("input_values", "attention_mask"),
        "layout": "waveform",
        "features": ("audio_features", "audio_features_mask"),
        "feature_dim": AUDIO_DIM,
        "feature_rate": 25.0,  # wav2vec2's 320-sample hop at 8 kHz
        "sampling_rate": 8000,
        "min_samples": 400,  # the receptive field of one frame
    }
    assert spec["modalities"]["video"] == {
        "inputs": ("pixel_values_videos", "visual_features_mask"),
        "layout": "frames",
        "features": ("visual_features", "visual_features_mask"),
        "feature_dim": VISUAL_DIM,
    }
    assert spec["segments"] == {} and spec["window_seconds"] == 6.0
    paper = VavlForEmotionRecognition(
        VavlConfig.from_preset("crema-d", audio_backbone_config=None, visual_backbone_config=None)
    )
    dims = {name: entry["feature_dim"] for name, entry in paper.input_spec()["modalities"].items()}
    assert dims == {"audio": 1024, "video": 1408}
    assert make_model().evaluation_branches() == {
        "logits": "combined", "fusion_logits": "audio_visual", "audio_logits": "audio", "visual_logits": "visual"
    }  # fmt: skip


@pytest.mark.parametrize("adapter", [False, True])
def test_audio_frame_masks_match_the_frames_the_backbone_makes(adapter):
    """The frame mask of a padded batch (computed from the backbone config's convolution geometry, no private API)
    marks as many frames as each waveform gives alone."""
    extra = (
        dict(add_adapter=True, num_adapter_layers=2, adapter_stride=2, output_hidden_size=AUDIO_DIM) if adapter else {}
    )
    backbone = Wav2Vec2Model(tiny_wav2vec2_config(**extra)).eval()
    lengths = [1600, 1599, 1000, 421, 46, 45, 44, 20]  # receptive field: 10 + 7 * 5 = 45
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    with torch.no_grad():
        frames = backbone(torch.randn(1, max(lengths)), attention_mask=mask[:1]).last_hidden_state.shape[1]
        alone = [backbone(torch.randn(1, n)).last_hidden_state.shape[1] if n >= 45 else 0 for n in lengths]
    computed = feature_frames_mask(backbone.config, frames, mask)
    assert computed.shape == (len(lengths), frames) and computed.dtype == torch.bool
    assert computed.sum(dim=1).tolist() == alone
    assert all(bool(row[: int(row.sum())].all()) for row in computed)  # real frames first, then padding
    # a row with fewer samples than one frame has no frame (wav2vec2's own formula would mark nearly all)
    assert not feature_frames_mask(backbone.config, frames, torch.ones(1, 5)).any()
