"""ONNX export (`avemotion export-onnx`) and ONNX Runtime inference: parity with PyTorch (<= 1e-4 on logits) for
both VAVL presets, the legacy layout and the fusion model, batched and unbatched, each modality missing, dynamic
lengths, through the model class and the pipeline; clear errors for what is not supported."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from media_testing import face_frames
from mlfusion_testing import make_batch, tiny_tokenizer
from mlfusion_testing import tiny_config as tiny_fusion_config
from torch import nn
from transformers import pipeline
from vavl_testing import tiny_efficientnet_config, tiny_wav2vec2_config

from avemotion import (
    AvEmotionFeatureExtractor,
    AvEmotionImageProcessor,
    AvEmotionProcessor,
    MultiLevelFusionForEmotionRecognition,
    VavlConfig,
    VavlForEmotionRecognition,
)
from avemotion.cli import main as cli_main
from avemotion.models.onnx_export import conv_output_lengths, export_onnx
from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

pytest.importorskip("onnxruntime")

TOL = 1e-4
DA, DV = 16, 12
TINY = dict(audio_feature_dim=DA, visual_feature_dim=DV, projection_dim=8, hidden_size=32, num_attention_heads=4,
            intermediate_size=64, conv_kernel_size=5, num_modality_layers=1, num_shared_layers=1,
            head_hidden_sizes=[24, 16], max_position_embeddings=16)  # fmt: skip


def _features_model(preset: str, **overrides) -> VavlForEmotionRecognition:
    config = VavlConfig.from_preset(preset, audio_backbone_config=None, visual_backbone_config=None,
                                    audio_backbone_name=None, **{**TINY, **overrides})  # fmt: skip
    model = VavlForEmotionRecognition(config).eval()
    with torch.no_grad():  # non-trivial visual statistics, so that the normalisation is exercised
        model.vavl.visual_features_mean.normal_()
        model.vavl.visual_features_std.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module", params=["crema-d", "msp-improv"])
def heads(request, tmp_path_factory):
    torch.manual_seed(0)
    model = _features_model(request.param, normalize_visual_features=True)
    out = tmp_path_factory.mktemp(f"onnx-{request.param}")
    export_onnx(model, out, parts="heads")
    return model, OnnxRuntimeEmotionModel.from_pretrained(out)


def _feature_batch(audio_lengths, video_lengths, seed=0):
    """Right-padded features; a length of 0 is an absent modality (all-zero mask row)."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(audio_lengths)
    a = torch.randn(batch, max(max(audio_lengths), 1), DA, generator=generator)
    v = torch.randn(batch, max(max(video_lengths), 1), DV, generator=generator)
    a_mask = (torch.arange(a.shape[1]) < torch.tensor(audio_lengths)[:, None]).long()
    v_mask = (torch.arange(v.shape[1]) < torch.tensor(video_lengths)[:, None]).long()
    return {"audio_features": a, "audio_features_mask": a_mask, "visual_features": v, "visual_features_mask": v_mask}


def _alone(model, inputs, row):
    """The PyTorch model on one row, given only its modalities at their real lengths (absent = not passed)."""
    kwargs = {}
    for values, mask in (("audio_features", "audio_features_mask"), ("visual_features", "visual_features_mask")):
        length = int(inputs[mask][row].sum())
        if length:
            kwargs[values] = inputs[values][row : row + 1, :length]
            kwargs[mask] = torch.ones(1, length, dtype=torch.long)
    with torch.no_grad():
        return model(**kwargs)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_heads_parity_batched_unbatched_and_missing_modalities(heads):
    model, onnx_model = heads
    # both, audio only, video only, both; lengths differ from the export's example (dynamic axes)
    inputs = _feature_batch([23, 9, 0, 31], [11, 0, 6, 17])
    out = onnx_model(**inputs)
    with torch.no_grad():
        batched = model(**inputs)
    assert _max_diff(out.logits, batched.logits) <= TOL
    for row in range(4):
        alone = _alone(model, inputs, row)
        assert _max_diff(out.logits[row], alone.logits[0]) <= TOL
        for name in ("audio_logits", "visual_logits"):
            expected = getattr(alone, name)
            if expected is None:
                assert torch.isnan(getattr(out, name)[row]).all()  # no input for that head
            else:
                assert _max_diff(getattr(out, name)[row], expected[0]) <= TOL
        single = onnx_model(**{k: v[row : row + 1] for k, v in inputs.items()})  # unbatched, still padded
        assert _max_diff(single.logits[0], out.logits[row]) <= TOL


def test_heads_modality_absent_for_the_whole_batch(heads):
    model, onnx_model = heads
    inputs = _feature_batch([13, 7], [5, 8], seed=1)
    for keep in (("audio_features", "audio_features_mask"), ("visual_features", "visual_features_mask")):
        given = {k: inputs[k] for k in keep}
        with torch.no_grad():
            expected = model(**given).logits
        assert _max_diff(onnx_model(**given).logits, expected) <= TOL  # the missing inputs are filled as absent


def test_row_without_any_modality_is_an_error(heads):
    _, onnx_model = heads
    with pytest.raises(ValueError, match=r"Rows \[1\] have no input"):
        onnx_model(**_feature_batch([5, 0], [4, 0]))
    with pytest.raises(ValueError, match="No exported graph takes the inputs"):
        onnx_model(input_values=torch.zeros(1, 400), attention_mask=torch.ones(1, 400))


def test_legacy_layout_is_exported_clip_by_clip(tmp_path):
    torch.manual_seed(0)
    model = _features_model("crema-d", legacy_batch_axis_attention=True, position_encoding="legacy_shifted")
    export_onnx(model, tmp_path, parts="heads")
    onnx_model = OnnxRuntimeEmotionModel.from_pretrained(tmp_path)
    inputs = _feature_batch([12, 20, 0], [7, 0, 9], seed=2)
    out = onnx_model(**inputs)
    for row in range(3):  # the original code's outputs for one clip (batch size 1)
        assert _max_diff(out.logits[row], _alone(model, inputs, row).logits[0]) <= TOL


def test_legacy_batch_mixing_is_refused(tmp_path):
    model = _features_model("crema-d", legacy_batch_axis_attention=True)
    model.config.legacy_batch_mixing = True
    with pytest.raises(ValueError, match="legacy_batch_mixing=True makes each clip's output depend"):
        export_onnx(model, tmp_path, parts="heads")


def _full_vavl() -> VavlForEmotionRecognition:
    config = VavlConfig.from_preset("crema-d", **{**TINY, "visual_feature_dim": 128}, audio_backbone_name=None,
                                    audio_backbone_config=tiny_wav2vec2_config(),
                                    visual_backbone_config=tiny_efficientnet_config(), window_seconds=1.0)  # fmt: skip
    model = VavlForEmotionRecognition(config).eval()
    for module in model.vavl.visual_backbone.modules():  # a tiny random EfficientNet needs a scale that passes signal
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    return model


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    torch.manual_seed(0)
    model = _full_vavl()
    source = tmp_path_factory.mktemp("vavl-full")
    model.save_pretrained(source)
    AvEmotionProcessor(AvEmotionFeatureExtractor(sampling_rate=16000, normalization="utterance"),
                       AvEmotionImageProcessor(size={"height": 48, "width": 48})).save_pretrained(source)  # fmt: skip
    out = tmp_path_factory.mktemp("vavl-full-onnx")
    assert cli_main(["export-onnx", "--model", str(source), "--output-dir", str(out), "--parts", "full"]) == 0
    return model, source, out


def test_full_export_parity_with_missing_modalities(full):
    model, _, out = full
    onnx_model = OnnxRuntimeEmotionModel.from_pretrained(out)
    generator = torch.Generator().manual_seed(3)
    samples, frames = [9000, 4000, 0], [3, 0, 2]  # both, audio only, video only
    values = torch.randn(3, max(samples), generator=generator)
    audio_mask = (torch.arange(values.shape[1]) < torch.tensor(samples)[:, None]).long()
    pixels = torch.randn(3, max(frames), 3, 40, 40, generator=generator)
    video_mask = (torch.arange(pixels.shape[1]) < torch.tensor(frames)[:, None]).long()
    out_logits = onnx_model(input_values=values, attention_mask=audio_mask, pixel_values_videos=pixels,
                            visual_features_mask=video_mask).logits  # fmt: skip
    for row in range(3):
        kwargs = {}
        if samples[row]:
            kwargs.update(input_values=values[row : row + 1, : samples[row]])
        if frames[row]:
            kwargs.update(pixel_values_videos=pixels[row : row + 1, : frames[row]])
        with torch.no_grad():
            assert _max_diff(out_logits[row], model(**kwargs).logits[0]) <= TOL


def test_pipeline_runs_the_onnx_directory_like_pytorch(full):
    _, source, out = full
    frames, _ = face_frames(8)
    waveform = (np.random.default_rng(0).standard_normal(12000) * 0.1).astype(np.float32)
    torch_pipe = pipeline("audio-visual-emotion", model=str(source))
    onnx_pipe = pipeline("audio-visual-emotion", model=str(out))
    assert isinstance(onnx_pipe.model, OnnxRuntimeEmotionModel)
    inputs = [
        {"audio": waveform, "video": frames, "sampling_rate": 16000, "fps": 10},
        {"audio": waveform[:7000], "sampling_rate": 16000},
        {"video": frames[:5], "fps": 10},
    ]
    # reference: PyTorch one input at a time (each row as if alone, the batch-independence contract; batched rows
    # without audio are treated the same way by the row selection of the current models)
    expected = torch_pipe(inputs, batch_size=1)
    for batch_size in (1, 3):
        actual = onnx_pipe(inputs, batch_size=batch_size)
        for want, got in zip(expected, actual, strict=True):
            assert [p["label"] for p in want] == [p["label"] for p in got]
            assert max(abs(w["score"] - g["score"]) for w, g in zip(want, got)) <= TOL
            assert want[0]["modalities"] == got[0]["modalities"]


def test_fusion_model_heads_and_full(tmp_path):
    torch.manual_seed(0)
    model = MultiLevelFusionForEmotionRecognition(tiny_fusion_config()).eval()
    batch = make_batch(seconds=(0.6, 0.45, 0.5), tokens=(7, 4, 5))
    batch["text_attention_mask"][2] = 0  # the third row has no transcript
    with torch.no_grad():
        expected = model(**batch).logits
        # cached features as the feature cache stores them: every hidden state, stacked (audio_layer weighted_sum)
        assert model.config.audio_layer == "weighted_sum"
        hidden = model.mlfusion.audio_encoder(batch["input_values"], attention_mask=batch["attention_mask"],
                                              output_hidden_states=True).hidden_states  # fmt: skip
        hidden = torch.stack(hidden, dim=1)
        lengths = conv_output_lengths(batch["attention_mask"].sum(-1), (16, 25), (16, 20))
        frames_mask = (torch.arange(hidden.shape[2]) < lengths[:, None]).long()
    export_onnx(model, tmp_path / "full", parts="full")
    full_model = OnnxRuntimeEmotionModel.from_pretrained(tmp_path / "full")
    assert _max_diff(full_model(**batch).logits, expected) <= TOL
    for row in range(3):
        single = full_model(**{k: v[row : row + 1] for k, v in batch.items()}).logits
        assert _max_diff(single[0], expected[row]) <= TOL

    export_onnx(model, tmp_path / "heads", parts="heads")
    heads_model = OnnxRuntimeEmotionModel.from_pretrained(tmp_path / "heads")
    features = {k: v for k, v in batch.items() if k not in ("input_values", "attention_mask")}
    features.update(audio_features=hidden, audio_features_mask=frames_mask)
    with torch.no_grad():
        expected_heads = model(**features).logits
    assert _max_diff(heads_model(**features).logits, expected_heads) <= TOL
    assert _max_diff(expected_heads, expected) <= TOL  # the same model on cached features


def test_unsupported_options_give_clear_errors(tmp_path, capsys):
    model = _features_model("crema-d")
    source = tmp_path / "model"
    model.save_pretrained(source)
    assert (
        cli_main(["export-onnx", "--model", str(source), "--output-dir", str(tmp_path / "a"), "--parts", "full"]) == 2
    )
    assert "--parts full needs the audio and visual backbones" in capsys.readouterr().err
    assert cli_main(["export-onnx", "--model", str(source), "--output-dir", str(tmp_path / "b"), "--opset", "9"]) == 2
    assert "opset 9 is not supported" in capsys.readouterr().err
    assert cli_main(["export-onnx", "--model", str(source), "--output-dir", str(source)]) == 2
    assert "must differ from the model directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["export-onnx", "--model", str(source), "--output-dir", str(tmp_path / "c"), "--parts", "encoder"])
    with pytest.raises(ValueError, match="use --exporter torchscript"):
        export_onnx(MultiLevelFusionForEmotionRecognition(tiny_fusion_config()), tmp_path / "d", exporter="dynamo")


def test_cli_help_imports_no_exporter_or_runtime():
    code = ("import sys; from avemotion.cli import build_parser; build_parser(); "
            "print([m for m in ('onnxruntime', 'onnx', 'onnxscript', 'avemotion.models.onnx_export') if m in sys.modules])")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(
    not os.environ.get("AVEMOTION_SLOW_TESTS"),
    reason="the dynamo exporter (torch.export + onnxscript) takes 20-40 s on 2 cores; set AVEMOTION_SLOW_TESTS=1",
)
def test_dynamo_exporter_gives_the_same_graph_behaviour(tmp_path):
    torch.manual_seed(0)
    model = _features_model("msp-improv")
    export_onnx(model, tmp_path, parts="heads", exporter="dynamo")
    onnx_model = OnnxRuntimeEmotionModel.from_pretrained(tmp_path)
    inputs = _feature_batch([23, 9, 0], [11, 0, 6])
    out = onnx_model(**inputs)
    for row in range(3):
        assert _max_diff(out.logits[row], _alone(model, inputs, row).logits[0]) <= TOL


def test_fusion_pipeline_through_onnx_runtime(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    torch.manual_seed(0)
    # a granularity ablation: the pipeline's phone/syllable segments are inputs this model does not read
    model = MultiLevelFusionForEmotionRecognition(
        tiny_fusion_config(granularities=["frame", "word"], fusion_members=["audio_frame", "text", "early_word"])
    ).eval()
    source = tmp_path / "model"
    model.save_pretrained(source)
    AvEmotionProcessor(AvEmotionFeatureExtractor(sampling_rate=16000), None, tokenizer).save_pretrained(source)
    export_onnx(source, tmp_path / "onnx", parts="full")
    torch_pipe = pipeline("audio-visual-emotion", model=str(source))
    onnx_pipe = pipeline("audio-visual-emotion", model=str(tmp_path / "onnx"))
    waveform = (np.random.default_rng(1).standard_normal(8000) * 0.1).astype(np.float32)
    inputs = [
        {"audio": waveform, "sampling_rate": 16000, "text": "i am so happy",
         "segments": {"word": [[0.0, 0.2], [0.2, 0.45]], "phone": [[0.0, 0.1]]}},
        {"audio": waveform[:6000], "sampling_rate": 16000},
        {"audio": waveform[:7000], "sampling_rate": 16000, "text": "this is sad"},
        "this is a transcript alone",
    ]  # fmt: skip
    expected = torch_pipe(inputs, batch_size=1)
    for batch_size in (1, 3):
        for want, got in zip(expected, onnx_pipe(inputs, batch_size=batch_size), strict=True):
            assert [p["label"] for p in want] == [p["label"] for p in got]
            assert max(abs(w["score"] - g["score"]) for w, g in zip(want, got)) <= TOL
            assert want[0]["modalities"] == got[0]["modalities"]
