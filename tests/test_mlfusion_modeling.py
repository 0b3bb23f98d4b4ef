"""The multi-level fusion model (wav2vec 2.0 + BERT) on tiny random encoders."""

import inspect

import pytest
import torch
from mlfusion_testing import make_batch, tiny_bert_config, tiny_config, tiny_wav2vec2_config
from transformers import AutoModel

from avemotion import (
    MultiLevelFusionConfig,
    MultiLevelFusionForEmotionRecognition,
)
from avemotion.models.mlfusion import late_fuse_logits

GRANULARITIES = ["frame", "phone", "syllable", "word"]
LABELS = torch.tensor([0, 2])

# The reference's table of variants, each a config.
VARIANTS = {
    "audio_only_frame": dict(fusion_members=["audio_frame"]),
    "audio_only_multi_granularity": dict(fusion_members=[f"audio_{g}" for g in GRANULARITIES]),
    "text_only": dict(fusion_members=["text"], text_pooling="cls"),
    "early_fusion": dict(fusion_members=["early_frame"]),
    "late_fusion": dict(fusion_members=["audio_frame", "text"]),
    "early_plus_late": dict(fusion_members=["early_word", "audio_word", "text"], late_fusion_mode="mean_logprob"),
    "final": dict(),
    "final_concat": dict(granularity_fusion="concat", num_self_attention_layers=1, num_coattention_layers=2),
    "weighted": dict(
        fusion_members=["audio_phone", "text", "early_syllable"],
        late_fusion_mode="weighted",
        late_fusion_weights={"audio_phone": 0.2, "text": 0.3, "early_syllable": 0.5},
        head_loss_weights={"text": 0.5},
        class_weights=[1.0, 2.0, 1.0, 0.5],
    ),
}


def _trim(batch, row):
    """Row `row` of a right-padded batch, cut to its own lengths (what it would be alone)."""
    out = {k: v[row : row + 1] for k, v in batch.items()}
    samples, tokens = int(batch["attention_mask"][row].sum()), int(batch["text_attention_mask"][row].sum())
    for key in ("input_values", "attention_mask"):
        out[key] = out[key][:, :samples]
    for key in ("input_ids", "text_attention_mask"):
        out[key] = out[key][:, :tokens]
    for granularity in ("phone", "syllable", "word"):
        key = f"{granularity}_segments"
        if key in out:
            count = int(out[f"{key}_mask"].sum())
            out[key], out[f"{key}_mask"] = out[key][:, :count], out[f"{key}_mask"][:, :count]
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_fusion_variant_runs_and_trains_its_members(variant):
    config = tiny_config(**VARIANTS[variant])
    model = MultiLevelFusionForEmotionRecognition(config)
    output = model(**make_batch(), labels=LABELS)
    members = config.fusion_members
    assert set(output.head_logits) == set(members) == set(model.heads)
    assert output.logits.shape == (2, 4) and torch.isfinite(output.logits).all()
    if len(members) > 1:
        weights = [config.late_fusion_weights[m] for m in members] if config.late_fusion_weights else None
        fused = late_fuse_logits([output.head_logits[m] for m in members], config.late_fusion_mode, weights)
        torch.testing.assert_close(output.logits, fused)
        torch.testing.assert_close(output.logits.exp().sum(-1), torch.ones(2))  # log-posteriors
    # joint training: the loss is the weighted sum of the per-head cross-entropies
    loss_weights = config.head_loss_weights or {}
    class_weights = torch.tensor(config.class_weights) if config.class_weights else None
    expected = sum(
        loss_weights.get(m, 1.0)
        * torch.nn.functional.cross_entropy(output.head_logits[m], LABELS, weight=class_weights)
        for m in members
    )
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    for member in members:
        assert model.heads[member].out_proj.weight.grad.abs().sum() > 0, member
    # frozen encoders (the default) get no gradient
    assert all(p.grad is None for p in model.mlfusion.audio_encoder.parameters()) if config.uses_audio else True
    assert model.mlfusion.text_encoder is None if not config.uses_text else True


@pytest.mark.parametrize("variant", ["final", "final_concat", "text_only"])
def test_batch_independence_with_padding(variant):
    model = MultiLevelFusionForEmotionRecognition(tiny_config(**VARIANTS[variant])).eval()
    batch = make_batch(seconds=(0.5, 0.3, 0.42), tokens=(7, 3, 5))
    with torch.no_grad():
        together = model(**batch)
        for row in range(3):
            alone = model(**_trim(batch, row))
            torch.testing.assert_close(alone.logits, together.logits[row : row + 1], atol=1e-5, rtol=0)
            for name, logits in alone.head_logits.items():
                torch.testing.assert_close(logits, together.head_logits[name][row : row + 1], atol=1e-5, rtol=0)


def _plain_text_classifier(model, batch):
    encoder = model.mlfusion.text_encoder
    hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["text_attention_mask"]).last_hidden_state
    mask = batch["text_attention_mask"].unsqueeze(-1).float()
    return model.heads["text"]((hidden * mask).sum(1) / mask.sum(1))


def _plain_audio_classifier(model, batch):
    encoder = model.mlfusion.audio_encoder
    hidden = encoder(batch["input_values"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = encoder._get_feature_vector_attention_mask(hidden.shape[1], batch["attention_mask"]).unsqueeze(-1).float()
    return model.heads["audio_frame"]((hidden * mask).sum(1) / mask.sum(1))


@pytest.mark.parametrize("member, plain", [("text", _plain_text_classifier), ("audio_frame", _plain_audio_classifier)])
def test_one_member_variant_equals_a_plain_classifier(member, plain):
    config = tiny_config(fusion_members=[member], audio_layer="last", late_fusion_mode="mean_logprob")
    model = MultiLevelFusionForEmotionRecognition(config).eval()
    batch = make_batch(with_segments=False)
    with torch.no_grad():
        output = model(**batch, labels=LABELS)
        expected = plain(model, batch)
    torch.testing.assert_close(output.logits, expected)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(expected, LABELS))
    # the same head inside the final system gives the same logits with the same weights
    final = MultiLevelFusionForEmotionRecognition(tiny_config(audio_layer="last")).eval()
    missing, _ = model.load_state_dict(final.state_dict(), strict=False)
    assert missing == []
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, final(**make_batch()).head_logits[member])


def test_missing_alignment_masks_the_granularity_instead_of_inventing_it():
    model = MultiLevelFusionForEmotionRecognition(tiny_config()).eval()
    batch = make_batch()
    batch["phone_segments_mask"][1] = False  # utterance 1 has no phone alignment
    with torch.no_grad():
        output = model(**batch, labels=LABELS)
        alone = model(**_trim(batch, 0))
    for name in ("audio_phone", "early_phone"):
        assert output.head_mask[name].tolist() == [True, False]
        assert torch.isnan(output.head_logits[name][1]).all() and torch.isfinite(output.head_logits[name][0]).all()
    available = [m for m in model.config.fusion_members if output.head_mask[m][1]]
    assert len(available) == 7
    torch.testing.assert_close(
        output.logits[1:], late_fuse_logits([output.head_logits[m][1:] for m in available], "mean_prob")
    )
    torch.testing.assert_close(output.logits[:1], alone.logits)
    assert torch.isfinite(output.loss)
    phone_ce = torch.nn.functional.cross_entropy(output.head_logits["audio_phone"][:1], LABELS[:1])
    torch.testing.assert_close(output.head_losses["audio_phone"], phone_ce)

    # no segments at all (plain audio + transcript): frame and text heads only
    plain = make_batch(with_segments=False)
    with torch.no_grad():
        output = model(**plain)
    assert not output.head_mask["audio_word"].any() and output.head_mask["early_frame"].all()
    # a model whose only member has no input for a row says so
    phone_only = MultiLevelFusionForEmotionRecognition(tiny_config(fusion_members=["audio_phone"]))
    with pytest.raises(ValueError, match=r"rows \[0, 1\] lack the inputs of the only fusion member 'audio_phone'"):
        phone_only(**plain)


def test_input_errors_are_clear():
    model = MultiLevelFusionForEmotionRecognition(tiny_config(fusion_members=["audio_word", "text"]))
    batch = make_batch()
    batch["phone_segments"][0, 0] = torch.tensor([5.0, 6.0])  # phones are not read by this model
    model(**batch)
    batch["word_segments"][0, 0] = torch.tensor([0.6, 0.7])  # row 0 has 0.5 s of audio
    with pytest.raises(ValueError, match="`word_segments`: segment 0 of row 0.*starts at or after the end"):
        model(**batch)
    with pytest.raises(ValueError, match="No input for fusion members"):
        model()
    with pytest.raises(ValueError, match="`labels` must be"):
        model(**make_batch(with_segments=False), labels=torch.zeros(2, 4))


def test_segments_without_any_audio_input_raise_but_empty_segments_and_absent_audio_rows_do_not():
    model = MultiLevelFusionForEmotionRecognition(tiny_config(fusion_members=["audio_word", "text"])).eval()
    batch = make_batch()
    text_only = {k: v for k, v in batch.items() if k not in ("input_values", "attention_mask")}
    # real word segments but no `input_values`/`audio_features`: the audio was forgotten, not a text-only batch
    with pytest.raises(ValueError, match=r"Segments were given \(word_segments with real entries\) without audio"):
        model(**text_only)
    no_mask = {k: v for k, v in text_only.items() if not k.endswith("_mask") or k == "text_attention_mask"}
    with pytest.raises(ValueError, match="word_segments with real entries"):
        model(**no_mask)  # no segment mask: every segment is real
    with torch.no_grad():
        # segments of a granularity the model does not read (phones here) are not audio-dependent inputs of it
        unread = {k: v for k, v in text_only.items() if not k.startswith(("word_", "syllable_"))}
        assert torch.isfinite(model(**unread).logits).all()
        # all-zero segment masks (the pipeline's rows without an alignment): a text-only batch
        empty = {**text_only, **{k: torch.zeros_like(v) for k, v in text_only.items() if k.endswith("_segments_mask")}}
        reference = model(**{k: v for k, v in text_only.items() if "segments" not in k}).logits
        torch.testing.assert_close(model(**empty).logits, reference)
        # audio passed but absent on every row (all-zero mask): the segments of rows without audio are not read
        absent = {**batch, "attention_mask": torch.zeros_like(batch["attention_mask"])}
        output = model(**absent)
        torch.testing.assert_close(output.logits, reference)
        assert not output.head_mask["audio_word"].any()


def test_config_validation():
    with pytest.raises(ValueError, match="fusion_members must be distinct heads of"):
        tiny_config(fusion_members=["early_phone"], granularities=["frame", "word"])
    with pytest.raises(ValueError, match="late_fusion_weights must sum to 1"):
        tiny_config(
            fusion_members=["text", "audio_frame"],
            late_fusion_mode="weighted",
            late_fusion_weights={"text": 0.5, "audio_frame": 0.6},
        )
    with pytest.raises(ValueError, match="only used with late_fusion_mode='weighted'"):
        tiny_config(late_fusion_weights={"text": 1.0})
    with pytest.raises(ValueError, match="training_scheme='separate'"):
        tiny_config(training_scheme="separate")
    with pytest.raises(ValueError, match="audio_layer must be"):
        tiny_config(audio_layer="first")
    with pytest.raises(ValueError, match="needs audio_config.layerdrop=0"):
        tiny_config(audio_config=tiny_wav2vec2_config(layerdrop=0.1), freeze_audio_encoder=False, audio_layer=1)
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(num_coattention_heads=5)
    with pytest.raises(ValueError, match="a wav2vec2-style speech encoder"):
        tiny_config(audio_config=tiny_bert_config())
    config = MultiLevelFusionConfig(audio_config=tiny_wav2vec2_config(), text_config=tiny_bert_config())
    assert config.audio_layer == "weighted_sum" and config.id2label[1] == "happy" and config.label2id["sad"] == 3
    assert len(config.fusion_members) == 9
    assert tiny_config(freeze_audio_encoder=False).audio_layer == "last"


def test_weighted_layer_sum_and_cached_features():
    model = MultiLevelFusionForEmotionRecognition(tiny_config()).eval()
    base = model.mlfusion
    assert base.audio_layer_weights.shape == (3,)
    batch = make_batch()
    output = model(**batch, labels=LABELS)
    output.loss.backward()
    assert base.audio_layer_weights.grad.abs().sum() > 0
    # a dominant weight on hidden state 1 selects that layer
    with torch.no_grad():
        base.audio_layer_weights.copy_(torch.tensor([-1e4, 1e4, -1e4]))
        features, _ = base.get_audio_features(batch["input_values"], batch["attention_mask"])
        states = base.audio_encoder(batch["input_values"], batch["attention_mask"], output_hidden_states=True)
        torch.testing.assert_close(features, states.hidden_states[1])
        # the cached-feature path (all hidden states, stacked) gives the same outputs as the waveform path
        cached = dict(batch)
        cached["audio_features"] = torch.stack(states.hidden_states, dim=1)
        cached["audio_features_mask"] = base.audio_encoder._get_feature_vector_attention_mask(
            cached["audio_features"].shape[2], batch["attention_mask"]
        )
        del cached["input_values"], cached["attention_mask"]
        torch.testing.assert_close(model(**cached).logits, model(**batch).logits)
        with pytest.raises(ValueError, match=r"`audio_features` must be \(batch, layers, length, dim\)"):
            model(audio_features=cached["audio_features"][:, 0], input_ids=batch["input_ids"])


def test_freezing_options():
    config = tiny_config(freeze_audio_encoder=False, freeze_feature_encoder=True, freeze_text_encoder=False)
    base = MultiLevelFusionForEmotionRecognition(config).mlfusion
    assert not any(p.requires_grad for p in base.audio_encoder.feature_extractor.parameters())
    assert all(p.requires_grad for p in base.audio_encoder.encoder.parameters())
    assert all(p.requires_grad for p in base.text_encoder.parameters())
    frozen = MultiLevelFusionForEmotionRecognition(tiny_config()).train()
    assert not frozen.mlfusion.audio_encoder.training and not frozen.mlfusion.text_encoder.training
    assert frozen.heads["text"].training
    assert not any(p.requires_grad for p in frozen.mlfusion.text_encoder.parameters())


def _unfrozen_deterministic_config(**overrides):
    no_dropout = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    audio = tiny_wav2vec2_config(layerdrop=0.0, **no_dropout)
    text = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kwargs = dict(
        audio_config=audio,
        text_config=text,
        freeze_audio_encoder=False,
        freeze_text_encoder=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        classifier_dropout=0.0,
    )
    kwargs.update(overrides)
    return tiny_config(**kwargs)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = MultiLevelFusionForEmotionRecognition(_unfrozen_deterministic_config()).train()
    batch = make_batch()

    def gradients():
        model.zero_grad()
        loss = model(**batch, labels=LABELS).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = [type(m).__name__ for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    # 4 early blocks x 2 co-attention streams, 2 wav2vec2 and 2 BERT layers
    assert checkpointed.count("MultiLevelFusionTransformerLayer") == 8
    assert checkpointed.count("Wav2Vec2EncoderLayerStableLayerNorm") == checkpointed.count("BertLayer") == 2
    loss_checkpointed, checkpointed = gradients()
    torch.testing.assert_close(loss_checkpointed, loss)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    assert plain["mlfusion.audio_encoder.encoder.layers.0.attention.q_proj.weight"].abs().sum() > 0


def test_sdpa_and_eager_attention_agree(tmp_path):
    model = MultiLevelFusionForEmotionRecognition(tiny_config()).eval()
    assert model.config._attn_implementation == "sdpa"
    batch = make_batch()
    with torch.no_grad():
        sdpa = model(**batch)
        model.set_attn_implementation("eager")
        assert model.config.audio_config._attn_implementation == "eager"
        assert model.config.text_config._attn_implementation == "eager"
        eager = model(**batch, output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa.logits, atol=1e-5, rtol=1e-5)
    speech_to_text, text_to_speech = eager.coattention_weights["early_word"][0]
    assert speech_to_text.shape == (2, 2, 3, 7) and text_to_speech.shape == (2, 2, 7, 3)
    # padded text tokens and padded segments get no attention
    assert speech_to_text[1, :, :, 4:].abs().max() == 0 and text_to_speech[1, :, :, 1:].abs().max() == 0
    torch.testing.assert_close(speech_to_text.sum(-1), torch.ones(2, 2, 3))
    model.save_pretrained(tmp_path)
    loaded = MultiLevelFusionForEmotionRecognition.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config.text_config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, sdpa.logits, atol=1e-5, rtol=1e-5)


def test_fusion_member_names_are_parsed_in_one_place():
    from avemotion.models.mlfusion import FusionMember

    granularities = ["frame", "word"]
    assert FusionMember.parse("text", granularities) == FusionMember("text", "text", ())
    assert FusionMember.parse("audio_word", granularities) == FusionMember("audio_word", "audio", ("word",))
    assert FusionMember.parse("early_frame", granularities) == FusionMember("early_frame", "early", ("frame",))
    assert FusionMember.parse("early", granularities).granularities == ("frame", "word")
    early = FusionMember.parse("early_word", granularities)
    assert early.uses_audio and early.uses_text and not FusionMember.parse("text", []).uses_audio
    for bad in ("video_frame", "audio", "audio_", "early-word"):
        with pytest.raises(ValueError, match="fusion member must be"):
            FusionMember.parse(bad, granularities)
    config = tiny_config(fusion_members=["early_word", "audio_phone", "text"])
    assert [m.name for m in config.members] == config.fusion_members
    assert config.member_granularities == ["phone", "word"] and config.uses_audio and config.uses_text
    text_only = tiny_config(fusion_members=["text"])
    assert text_only.member_granularities == [] and not text_only.uses_audio


@pytest.mark.parametrize(
    ("members", "segments"),
    [
        (None, ["phone", "syllable", "word"]),
        (["early_word", "audio_frame", "text"], ["word"]),
        (["audio_frame"], []),
        (["text"], []),
    ],
)
def test_declaration_for_generic_code(members, segments):
    config = tiny_config(fusion_members=members, max_text_length=32)
    model = MultiLevelFusionForEmotionRecognition(config)
    spec = model.input_spec()
    audio, text = spec["modalities"]["audio"], spec["modalities"]["text"]
    assert set(spec["modalities"]) == {"audio", "text"}
    assert audio["inputs"] == ("input_values", "attention_mask") and audio["sampling_rate"] == 16000
    assert audio["features"] == ("audio_features", "audio_features_mask") and audio["feature_dim"] == 32
    assert text["inputs"] == ("input_ids", "text_attention_mask") and text["extra_inputs"] == ("token_type_ids",)
    assert text["features"] == ("text_features", "text_attention_mask") and text["max_length"] == 32
    assert spec["segments"] == {g: (f"{g}_segments", f"{g}_segments_mask") for g in segments}
    assert spec["window_seconds"] is None
    assert audio["layout"] == "waveform" and text["layout"] == "tokens"
    stride, receptive_field = model.mlfusion.frame_stride, model.mlfusion.frame_receptive_field
    assert audio["feature_rate"] == 16000 / stride and audio["min_samples"] == receptive_field
    forward_inputs = set(inspect.signature(model.forward).parameters)
    named = {key for m in spec["modalities"].values() for key in (*m["inputs"], *m.get("extra_inputs", ()))}
    named |= {key for m in spec["modalities"].values() for key in m["features"] if key}
    named |= {key for pair in spec["segments"].values() for key in pair}
    assert named <= forward_inputs
    (step,) = model.training_steps()
    assert step == {"name": "joint", "modules": (), "loss": "loss", "rows": ()}
    assert model.evaluation_branches() == {
        "logits": "combined",
        **{member: member for member in config.fusion_members},
    }
    # the inputs the spec names run the model, and every branch is an output: `logits`, the members in `head_logits`
    batch = {k: v for k, v in make_batch().items() if "segments" not in k or k in named}
    with torch.no_grad():
        output = model.eval()(**batch, labels=LABELS)
    assert set(output.head_logits) == set(list(model.evaluation_branches())[1:]) and output.loss is not None


def test_frames_mask_from_the_convolution_geometry_equals_wav2vec2s():
    # the model computes frame masks from config.conv_kernel / conv_stride (no private encoder method); on rows with
    # audio they equal wav2vec2's own, and a row without samples has no frame
    from avemotion.models.mlfusion.modeling_mlfusion import feature_frames_mask

    config = tiny_wav2vec2_config()
    encoder = AutoModel.from_config(config)
    mask = torch.zeros(3, 8000, dtype=torch.long)
    mask[0], mask[1, :5000] = 1, 1
    frames = encoder(torch.randn(3, 8000), attention_mask=mask).last_hidden_state.shape[1]
    ours = feature_frames_mask(config, frames, mask)
    reference = encoder._get_feature_vector_attention_mask(frames, mask).bool()
    assert torch.equal(ours[:2], reference[:2]) and not ours[2].any()
    assert ours.sum(-1).tolist() == [24, 15, 0]


def test_hubert_feature_encoder_is_frozen_without_freeze_feature_encoder():
    from transformers import HubertConfig

    audio = HubertConfig(**tiny_wav2vec2_config().to_diff_dict())
    config = tiny_config(audio_config=audio, freeze_audio_encoder=False, fusion_members=["audio_frame"])
    encoder = MultiLevelFusionForEmotionRecognition(config).mlfusion.audio_encoder
    assert not hasattr(encoder, "freeze_feature_encoder")
    assert not any(p.requires_grad for p in encoder.feature_extractor.parameters())
    assert all(p.requires_grad for p in encoder.encoder.parameters())


def test_text_encoders_are_built_without_a_pooler_where_they_have_one():
    from transformers import DistilBertConfig

    with_pooler = MultiLevelFusionForEmotionRecognition(tiny_config(fusion_members=["text"]))
    assert with_pooler.mlfusion.text_encoder.pooler is None
    assert not any("pooler" in name for name in with_pooler.state_dict())
    distilbert = DistilBertConfig(
        vocab_size=99, dim=32, n_layers=1, n_heads=2, hidden_dim=37, max_position_embeddings=64
    )
    model = MultiLevelFusionForEmotionRecognition(tiny_config(text_config=distilbert, fusion_members=["text"])).eval()
    assert type(model.mlfusion.text_encoder).__name__ == "DistilBertModel"  # no add_pooling_layer argument
    batch = make_batch()
    assert model(input_ids=batch["input_ids"], text_attention_mask=batch["text_attention_mask"]).logits.shape == (2, 4)
