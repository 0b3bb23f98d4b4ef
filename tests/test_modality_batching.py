"""A row's outputs and gradients do not depend on the rows it is batched with, whichever modalities each row has
(issue 10 items 3 and 4): VAVL and the multi-level fusion model, through the model, the pipeline and the trainer."""

import copy
import functools
from collections import defaultdict

import datasets
import numpy as np
import pytest
import soundfile
import torch
from media_testing import face_frames, tone, write_video
from mlfusion_testing import tiny_bert_config, tiny_tokenizer
from mlfusion_testing import tiny_config as tiny_mlfusion_config
from mlfusion_testing import tiny_wav2vec2_config as tiny_mlfusion_wav2vec2_config
from test_pipeline import _save
from torch import nn
from transformers import pipeline
from vavl_testing import AUDIO_DIM, VISUAL_DIM, tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import (
    MultiLevelFusionForEmotionRecognition,
    VavlForEmotionRecognition,
)
from avemotion.data.collators import AvEmotionCollator
from avemotion.training import EmotionTrainer, TrainingArguments

ATOL = 1e-5
# rows of a batch: which modalities each has ("A" audio, "V" video, "T" text); mixed subsets, different lengths
VAVL_BATCHES = [("AV", "A"), ("AV", "V"), ("A", "V"), ("A", "AV", "V", "AV"), ("V", "V", "A")]
MLF_BATCHES = [("AT", "A"), ("AT", "T"), ("A", "T"), ("T", "AT", "A", "AT")]
VAVL_BRANCHES = ("logits", "audio_logits", "visual_logits", "fusion_logits")
VAVL_POOLED = ("audio_pooled_output", "visual_pooled_output")


def _collate(rows):
    return AvEmotionCollator(label_column="label")(rows)


# ---------------------------------------------------------------------------------------------------------- VAVL


@functools.cache
def _vavl_model(audio_kind: str, video_kind: str, **overrides) -> VavlForEmotionRecognition:
    kwargs = dict(conformer_dropout=0.0, head_dropout=0.0, **overrides)
    if audio_kind == "input_values":
        kwargs["audio_backbone_config"] = tiny_wav2vec2_config()
    if video_kind == "pixel_values_videos":
        kwargs.update(visual_backbone_config=tiny_efficientnet_config(), visual_feature_dim=128)
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(tiny_vavl_config(**kwargs))
    if model.vavl.visual_backbone is not None:
        for module in model.vavl.visual_backbone.modules():  # pass signal through the tiny random EfficientNet
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
    return model.eval()


def _vavl_row(spec: str, index: int, audio_kind: str = "audio_features", video_kind: str = "visual_features"):
    """A collator row with the modalities in `spec`; lengths differ from row to row."""
    generator = torch.Generator().manual_seed(100 + index)
    row = {"label": index % 3}
    if "A" in spec:
        frames = 4 + (3 * index) % 5
        shape = (frames * 400,) if audio_kind == "input_values" else (frames, AUDIO_DIM)
        row[audio_kind] = torch.randn(shape, generator=generator).numpy()
    if "V" in spec:
        frames = 3 + (2 * index) % 4
        shape = (frames, 3, 32, 32) if video_kind == "pixel_values_videos" else (frames, VISUAL_DIM)
        row[video_kind] = torch.randn(shape, generator=generator).numpy()
    return row


def _sub_rows(rows, key):
    """The rows that have `key`, with that input and the label only (a modality step's sub-batch)."""
    return [{"label": r["label"], key: r[key]} for r in rows if key in r]


def _model_inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def _assert_vavl_rows_match(batched, alone_outputs, specs):
    for row, (alone, spec) in enumerate(zip(alone_outputs, specs)):
        assert bool(batched.audio_present[row]) == ("A" in spec)
        assert bool(batched.visual_present[row]) == ("V" in spec)
        for name in VAVL_BRANCHES + VAVL_POOLED:
            single, value = getattr(alone, name), getattr(batched, name)
            if single is not None:
                torch.testing.assert_close(value[row], single[0], atol=ATOL, rtol=0, msg=f"row {row} {spec}: {name}")
            elif value is not None:  # the row lacks this branch: NaN logits, zero pooled vector
                expected = torch.isnan(value[row]) if name.endswith("logits") else value[row] == 0
                assert bool(expected.all()), f"row {row} ({spec}) should have no {name}: {value[row]}"


@pytest.mark.parametrize("video_kind", ["visual_features", "pixel_values_videos"])
@pytest.mark.parametrize("audio_kind", ["audio_features", "input_values"])
@pytest.mark.parametrize("specs", VAVL_BATCHES, ids="-".join)
def test_vavl_rows_batched_equal_rows_alone(specs, audio_kind, video_kind):
    model = _vavl_model(audio_kind, video_kind)
    rows = [_vavl_row(spec, index, audio_kind, video_kind) for index, spec in enumerate(specs)]
    with torch.no_grad():
        batched = model(**_model_inputs(_collate(rows)))
        alone = [model(**_model_inputs(_collate([row]))) for row in rows]
    _assert_vavl_rows_match(batched, alone, specs)


@pytest.mark.parametrize(
    "overrides",
    [
        {"legacy_batch_axis_attention": True, "position_encoding": "legacy_shifted"},
        {"audio_backbone_config": tiny_wav2vec2_config(feat_extract_norm="group", do_stable_layer_norm=False)},
    ],
    ids=["legacy-layout", "group-norm-wav2vec2"],
)
def test_vavl_batch_independence_in_legacy_layout_and_with_group_norm_backbone(overrides):
    """Converted checkpoints (legacy layout) run one clip per forward; a group-norm wav2vec2 (which normalises each
    waveform over time, padding included) runs each waveform at its own length."""
    audio_kind = "input_values" if "audio_backbone_config" in overrides else "audio_features"
    backbone = overrides.pop("audio_backbone_config", None)
    model = _vavl_model("audio_features", "visual_features", **overrides)
    if backbone is not None:
        torch.manual_seed(0)
        model = VavlForEmotionRecognition(
            tiny_vavl_config(conformer_dropout=0.0, head_dropout=0.0, audio_backbone_config=backbone)
        ).eval()
    specs = ("A", "AV", "V", "AV")
    rows = [_vavl_row(spec, index, audio_kind) for index, spec in enumerate(specs)]
    with torch.no_grad():
        batched = model(**_model_inputs(_collate(rows)))
        alone = [model(**_model_inputs(_collate([row]))) for row in rows]
    _assert_vavl_rows_match(batched, alone, specs)


def test_vavl_absent_audio_mask_stays_absent():
    """The reported case: an all-zero waveform mask must not become a mostly-true frame mask (the fusion head would
    then score a video-only row)."""
    model = _vavl_model("input_values", "visual_features")
    rows = [_vavl_row("V", 0, "input_values"), _vavl_row("AV", 1, "input_values")]
    with torch.no_grad():
        out = model(**_model_inputs(_collate(rows)))
    assert out.audio_present.tolist() == [False, True]
    assert not bool(model.vavl(**_model_inputs(_collate(rows))).audio_features_mask[0].any())
    assert torch.isnan(out.fusion_logits[0]).all()
    torch.testing.assert_close(out.logits[0], out.visual_logits[0])


def _grads(loss: torch.Tensor, model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefixes)]
    values = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
    return {n: g for (n, _), g in zip(named, values) if g is not None}


def _assert_same_grads(actual: dict, expected: dict):
    assert expected and set(actual) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=ATOL, rtol=1e-4, msg=name)


AUDIO_STEP = ("vavl.audio_backbone.", "vavl.audio_encoder.", "vavl.shared_encoder.", "audio_head.",
              "audio_reconstruction_head.")  # fmt: skip
VISUAL_STEP = ("vavl.visual_backbone.", "vavl.visual_encoder.", "vavl.shared_encoder.", "visual_head.",
               "visual_reconstruction_head.")  # fmt: skip


@pytest.mark.parametrize("audio_kind", ["audio_features", "input_values"])
def test_vavl_step_losses_on_unpaired_batch_equal_sub_batch_steps(audio_kind):
    """In training mode (BatchNorm on batch statistics), the acoustic and visual step losses of a batch [paired,
    audio-only, video-only] give the gradients of the same losses on the sub-batches of rows that have the modality;
    the fusion loss (encoders in eval mode, as in the schedule) those of the paired row alone."""
    model = copy.deepcopy(_vavl_model(audio_kind, "visual_features")).train()
    rows = [_vavl_row(spec, index, audio_kind) for index, spec in enumerate(("AV", "A", "V"))]
    batch = _collate(rows)
    audio_key = "input_values" if audio_kind == "input_values" else "audio_features"
    audio_rows, video_rows = _sub_rows(rows, audio_key), _sub_rows(rows, "visual_features")
    state = copy.deepcopy(model.state_dict())  # BatchNorm running statistics move in each training forward
    for loss_name, sub_rows, prefixes in (("audio_loss", audio_rows, AUDIO_STEP),
                                          ("visual_loss", video_rows, VISUAL_STEP)):  # fmt: skip
        model.load_state_dict(state)
        batched = _grads(model(**batch)[loss_name], model, prefixes)
        batched_stats = copy.deepcopy(model.state_dict())
        model.load_state_dict(state)
        expected = _grads(model(**_collate(sub_rows))[loss_name], model, prefixes)
        _assert_same_grads(batched, expected)
        for key, value in model.state_dict().items():  # and the same running statistics in the modality encoder
            if key.startswith(prefixes[1]):  # (the shared encoder's also saw the other modality's rows)
                torch.testing.assert_close(batched_stats[key], value, atol=ATOL, rtol=0, msg=key)
    model.eval()
    batched = _grads(model(**batch).fusion_loss, model, ("fusion_head.",))
    _assert_same_grads(batched, _grads(model(**_collate(rows[:1])).fusion_loss, model, ("fusion_head.",)))


def test_vavl_training_padding_does_not_change_gradients():
    """Masked BatchNorm statistics: padding a training batch further changes neither gradients nor running stats."""
    model = copy.deepcopy(_vavl_model("audio_features", "visual_features")).train()
    rows = [_vavl_row(spec, index) for index, spec in enumerate(("AV", "AV", "A"))]
    state = copy.deepcopy(model.state_dict())
    results = []
    for pad in (None, 16):
        model.load_state_dict(state)
        batch = AvEmotionCollator(pad_to_multiple_of=pad)(rows)
        out = model(**batch)
        results.append(
            (_grads(out.audio_loss + out.visual_loss, model, ("vavl.",)), copy.deepcopy(model.state_dict()))
        )
    _assert_same_grads(results[1][0], results[0][0])
    for key, value in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], value, atol=ATOL, rtol=0, msg=key)


def test_vavl_trainer_step_on_unpaired_batch_equals_the_rows_own_steps(tmp_path):
    """EmotionTrainer's three-step schedule on one batch [paired, audio-only, video-only]: each step's gradients equal
    those of the model's step loss on the sub-batch of rows that take part (visual: paired + video-only; acoustic:
    paired + audio-only; fusion: the paired row, encoders in eval mode)."""
    model = copy.deepcopy(_vavl_model("audio_features", "visual_features"))
    reference = copy.deepcopy(model)
    rows = [_vavl_row(spec, index) for index, spec in enumerate(("AV", "A", "V"))]
    features = datasets.Features(
        {
            "audio_features": datasets.List(datasets.List(datasets.Value("float32"))),
            "visual_features": datasets.List(datasets.List(datasets.Value("float32"))),
            "label": datasets.ClassLabel(names=["angry", "happy", "neutral"]),
        }
    )
    keys = ("audio_features", "visual_features", "label")
    dataset = datasets.Dataset.from_list([{key: r.get(key) for key in keys} for r in rows], features=features)
    recorded = defaultdict(list)  # parameter -> gradient of each backward pass that reached it, in order
    for name, parameter in model.named_parameters():
        parameter.register_hook(lambda grad, name=name: recorded[name].append(grad.detach().clone()))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=1,
        per_device_train_batch_size=3,
        optimizer="sgd",  # a negligible plain-SGD step: every step sees (almost exactly) the starting weights
        learning_rate=1e-12,
        sgd_momentum=0.0,
        weight_decay=0.0,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    EmotionTrainer(model, args, dataset).train()

    # the rows' own steps, in the schedule's order (visual, acoustic, fusion), on separately collated sub-batches
    reference.train()
    video_rows, audio_rows = _sub_rows(rows, "visual_features"), _sub_rows(rows, "audio_features")
    expected = defaultdict(list)
    for loss_name, sub_rows, prefixes in (("visual_loss", video_rows, VISUAL_STEP),
                                          ("audio_loss", audio_rows, AUDIO_STEP)):  # fmt: skip
        for name, grad in _grads(reference(**_collate(sub_rows))[loss_name], reference, prefixes).items():
            expected[name].append(grad)
    reference.vavl.eval()
    with torch.no_grad():
        encoded = reference.vavl(**_model_inputs(_collate(rows[:1])))
    pooled = torch.cat([encoded.audio_pooled_output, encoded.visual_pooled_output], dim=-1)
    labels = torch.tensor([rows[0]["label"]])
    fusion = reference.task_loss(reference.fusion_head(pooled), labels)
    for name, grad in _grads(fusion, reference, ("fusion_head.",)).items():
        expected[name].append(grad)

    assert set(recorded) == set(expected)
    for name, grads in expected.items():
        assert len(recorded[name]) == len(grads), name
        for got, want in zip(recorded[name], grads):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------- multi-level fusion

MLF_DROPOUT = dict(attention_dropout=0.0, hidden_dropout=0.0, classifier_dropout=0.0)


@functools.cache
def _mlf_model(norm: str = "layer") -> MultiLevelFusionForEmotionRecognition:
    audio = tiny_mlfusion_wav2vec2_config(feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    torch.manual_seed(0)
    config = tiny_mlfusion_config(
        audio_config=audio, text_config=tiny_bert_config(attention_probs_dropout_prob=0.0), **MLF_DROPOUT
    )
    return MultiLevelFusionForEmotionRecognition(config).eval()


def _mlf_row(spec: str, index: int) -> dict:
    generator = torch.Generator().manual_seed(200 + index)
    row = {"label": index % 3}
    if "A" in spec:
        seconds = 0.3 + 0.07 * index
        row["input_values"] = torch.randn(int(seconds * 16000), generator=generator).numpy()
        for name, count in (
            ("phone_segments", 6 - index % 3),
            ("syllable_segments", 3),
            ("word_segments", 2 + index % 2),
        ):
            edges = np.linspace(0.0, seconds, count + 1)
            row[name] = list(zip(edges[:-1], edges[1:]))
    if "T" in spec:
        row["input_ids"] = torch.randint(1, 99, (3 + 2 * index,), generator=generator).tolist()
    return row


@pytest.mark.parametrize("norm", ["layer", "group"])
@pytest.mark.parametrize("specs", MLF_BATCHES, ids="-".join)
def test_mlfusion_rows_batched_equal_rows_alone(specs, norm):
    model = _mlf_model(norm)
    rows = [_mlf_row(spec, index) for index, spec in enumerate(specs)]
    with torch.no_grad():
        batched = model(**_model_inputs(_collate(rows)))
        alone = [model(**_model_inputs(_collate([row]))) for row in rows]
    for row, (single, spec) in enumerate(zip(alone, specs)):
        torch.testing.assert_close(batched.logits[row], single.logits[0], atol=ATOL, rtol=0, msg=f"row {row} {spec}")
        for head, value in batched.head_logits.items():
            assert bool(batched.head_mask[head][row]) == bool(single.head_mask[head][0]), (row, spec, head)
            torch.testing.assert_close(value[row], single.head_logits[head][0], atol=ATOL, rtol=0, equal_nan=True)
        assert bool(batched.head_mask["text"][row]) == ("T" in spec)
        assert bool(batched.head_mask["audio_frame"][row]) == ("A" in spec)


def test_mlfusion_joint_loss_gradients_equal_the_covered_rows_own():
    """Each head's loss on a batch [audio+text, audio-only, text-only] gives the gradients of that head's loss on the
    sub-batch of the rows it covers."""
    model = copy.deepcopy(_mlf_model()).train()
    rows = [_mlf_row(spec, index) for index, spec in enumerate(("AT", "A", "T"))]
    batched = model(**_collate(rows))
    for head, covered in (("audio_frame", [0, 1]), ("text", [0, 2]), ("early_word", [0])):
        assert batched.head_mask[head].nonzero().flatten().tolist() == covered
        sub = model(**_collate([rows[i] for i in covered]))
        prefixes = ("mlfusion.", f"heads.{head}.")
        _assert_same_grads(
            _grads(batched.head_losses[head], model, prefixes), _grads(sub.head_losses[head], model, prefixes)
        )


# ------------------------------------------------------------------------------------------------------ pipeline

RATE, FPS = 16000, 10


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    frames, _ = face_frames(15)
    clip = write_video(folder / "clip.mp4", frames, fps=FPS, audio=tone(1.5, 44100, channels=2, frequency=300))
    waveform = (np.random.default_rng(0).standard_normal(int(0.8 * RATE)) * 0.1).astype(np.float32)
    soundfile.write(folder / "speech.wav", waveform, RATE)
    other_frames, _ = face_frames(12, seed=3, speed=0.3)
    return {"clip": str(clip), "wav": str(folder / "speech.wav"), "waveform": waveform, "frames": other_frames}


def _scores(result) -> dict[str, float]:
    return {item["label"]: item["score"] for item in result}


def _assert_pipeline_batch_independent(pipe, inputs, **kwargs):
    single = pipe(inputs, batch_size=1, **kwargs)
    batched = pipe(inputs, batch_size=len(inputs), **kwargs)
    for index, (one, many) in enumerate(zip(single, batched)):
        assert one[0]["modalities"] == many[0]["modalities"], index
        assert _scores(many) == pytest.approx(_scores(one), abs=ATOL), f"input #{index}: {one[0]['modalities']}"


@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy-layout"])
def test_vavl_pipeline_batches_mixed_modalities_like_single_inputs(tmp_path, media, legacy):
    """Video-only, audio+video, audio-only inputs in one pipeline batch; the legacy layout of converted checkpoints
    too (one clip per forward by default)."""
    layout = {"legacy_batch_axis_attention": True, "position_encoding": "legacy_shifted"} if legacy else {}
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(
        tiny_vavl_config(
            audio_backbone_config=tiny_wav2vec2_config(),
            visual_backbone_config=tiny_efficientnet_config(),
            visual_feature_dim=128,
            window_seconds=5.0,
            **layout,
        )
    ).eval()
    for module in model.vavl.visual_backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    pipe = pipeline("audio-visual-emotion", model=_save(model, tmp_path / "vavl"))
    inputs = [{"video": media["frames"], "fps": FPS}, media["clip"], media["wav"],
              {"audio": media["waveform"][:5000], "sampling_rate": RATE}]  # fmt: skip
    _assert_pipeline_batch_independent(pipe, inputs)


def test_mlfusion_pipeline_batches_mixed_modalities_like_single_inputs(tmp_path, media):
    tokenizer = tiny_tokenizer(tmp_path)
    torch.manual_seed(0)
    model = MultiLevelFusionForEmotionRecognition(
        tiny_mlfusion_config(fusion_members=["audio_frame", "text", "early_frame"], **MLF_DROPOUT)
    ).eval()
    pipe = pipeline("audio-visual-emotion", model=_save(model, tmp_path / "mlf", tokenizer))
    inputs = ["i am so happy", {"audio": media["wav"], "text": "this is sad"},
              {"audio": media["waveform"][:5000], "sampling_rate": RATE}]  # fmt: skip
    _assert_pipeline_batch_independent(pipe, inputs)


def test_mlfusion_ignores_segments_of_rows_without_audio():
    """Segments locate speech frames: a text-only row's alignment must not make its audio heads look present."""
    model = _mlf_model()
    rows = [_mlf_row("AT", 0), {**_mlf_row("AT", 1), "input_values": None}]  # row 1: text and segments, no audio
    # alone, the row comes with an absent audio row (all-zero mask), as in the batch; with no audio input at all its
    # real segments are a forgotten-audio error (tests/test_mlfusion_modeling.py)
    no_audio = {"input_values": torch.zeros(1, 400), "attention_mask": torch.zeros(1, 400, dtype=torch.long)}
    with torch.no_grad():
        batched = model(**_model_inputs(_collate(rows)))
        alone = model(**_model_inputs(_collate([rows[1]])), **no_audio)
    for head in ("audio_word", "early_word", "audio_frame"):
        assert batched.head_mask[head].tolist() == [True, False]
    torch.testing.assert_close(batched.logits[1], alone.logits[0], atol=ATOL, rtol=0)
