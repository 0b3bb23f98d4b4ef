"""pipeline("audio-visual-emotion"): every input form, modality routing, windows, batching, fall-backs, remote code."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from media_testing import face_frames, tone, write_video
from mlfusion_testing import tiny_config as tiny_mlfusion_config
from mlfusion_testing import tiny_tokenizer
from torch import nn
from transformers import pipeline
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import (
    AudioVisualEmotionPipeline,
    AvEmotionFeatureExtractor,
    AvEmotionImageProcessor,
    AvEmotionProcessor,
    MultiLevelFusionForEmotionRecognition,
    VavlForEmotionRecognition,
)
from avemotion.pipelines.audio_visual_emotion import audio_windows, video_windows

RATE, FPS = 16000, 10


def _vavl(**overrides) -> VavlForEmotionRecognition:
    config = tiny_vavl_config(
        audio_backbone_config=tiny_wav2vec2_config(),
        visual_backbone_config=tiny_efficientnet_config(),
        visual_feature_dim=128,
        window_seconds=1.0,
        **overrides,
    )
    model = VavlForEmotionRecognition(config).eval()
    # transformers' EfficientNet init gives ~0 activations in a tiny random net: use a scale that passes signal
    for module in model.vavl.visual_backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    return model


def _save(model, directory, tokenizer=None) -> str:
    processor = AvEmotionProcessor(
        AvEmotionFeatureExtractor(sampling_rate=RATE, normalization="utterance"),
        AvEmotionImageProcessor(size={"height": 48, "width": 48}),
        tokenizer,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def vavl_dir(tmp_path_factory):
    torch.manual_seed(0)
    return _save(_vavl(), tmp_path_factory.mktemp("vavl"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    frames, _ = face_frames(15)  # 1.5 s at 10 fps
    audio = tone(1.5, 44100, channels=2, frequency=300)
    clip = write_video(folder / "clip.mp4", frames, fps=FPS, audio=audio)
    faceless = write_video(folder / "faceless.mp4", np.full((10, 120, 160, 3), 90, np.uint8), fps=FPS,
                           audio=tone(1.0, 44100))  # fmt: skip
    silent_faceless = write_video(folder / "silent_faceless.mp4", np.full((10, 120, 160, 3), 90, np.uint8), fps=FPS)
    waveform = (np.random.default_rng(0).standard_normal(int(0.8 * RATE)) * 0.1).astype(np.float32)
    soundfile.write(folder / "speech.wav", waveform, RATE)
    return {"clip": str(clip), "faceless": str(faceless), "silent_faceless": str(silent_faceless),
            "wav": str(folder / "speech.wav"), "waveform": waveform, "frames": frames}  # fmt: skip


@pytest.fixture(scope="module")
def pipe(vavl_dir):
    return pipeline("audio-visual-emotion", model=vavl_dir)


def _scores(result) -> dict[str, float]:
    return {item["label"]: item["score"] for item in result}


def test_registered_task_loads_model_and_processor(pipe):
    assert isinstance(pipe, AudioVisualEmotionPipeline)
    assert isinstance(pipe.model, VavlForEmotionRecognition)
    assert isinstance(pipe.processor, AvEmotionProcessor)


def test_video_file_uses_frames_and_sound_track(pipe, media):
    result = pipe(media["clip"], window_seconds=5.0)
    assert [item["label"] for item in result] == sorted(_scores(result), key=_scores(result).get, reverse=True)
    assert sum(_scores(result).values()) == pytest.approx(1.0, abs=1e-5)
    assert result[0]["modalities"] == ["audio", "video"]
    assert len(pipe(media["clip"], top_k=2, window_seconds=5.0)) == 2


def test_audio_path_array_and_dict_forms_agree(pipe, media):
    from_file = _scores(pipe(media["wav"]))
    from_array = _scores(pipe(media["waveform"], sampling_rate=RATE))
    from_dict = _scores(pipe({"audio": {"array": media["waveform"], "sampling_rate": RATE}}))
    for label, score in from_file.items():
        assert from_array[label] == pytest.approx(score, abs=1e-5)
        assert from_dict[label] == pytest.approx(score, abs=1e-5)
    assert pipe(media["wav"])[0]["modalities"] == ["audio"]
    # VAVL has no text branch: a transcript is ignored and not reported as used
    with_text = pipe({"audio": media["wav"], "text": "hello there"})
    assert with_text[0]["modalities"] == ["audio"]
    assert _scores(with_text) == pytest.approx(from_file, abs=1e-6)


def test_frames_array_is_video_only(pipe, media):
    result = pipe({"video": media["frames"], "fps": FPS}, window_seconds=5.0)
    assert result[0]["modalities"] == ["video"]
    direct = pipe(media["frames"], window_seconds=5.0)  # frames of unknown rate: one window
    assert _scores(direct) == pytest.approx(_scores(result), abs=1e-5)


def test_matches_the_model_on_processor_outputs(pipe, media):
    result = _scores(pipe(media["wav"]))
    features = pipe.processor(audio=media["wav"], return_tensors="pt")
    with torch.no_grad():
        logits = pipe.model(input_values=features["input_values"],
                            attention_mask=features["audio_attention_mask"]).logits  # fmt: skip
    expected = torch.softmax(logits[0], -1)
    for index, label in pipe.model.config.id2label.items():
        assert result[label] == pytest.approx(float(expected[index]), abs=1e-5)


def test_batched_results_equal_unbatched(pipe, media):
    inputs = [media["clip"], media["wav"], {"audio": media["waveform"], "sampling_rate": RATE}, media["faceless"]]
    single = pipe(inputs, batch_size=1, window_seconds=5.0)
    batched = pipe(inputs, batch_size=3, window_seconds=5.0)
    assert len(single) == len(batched) == 4
    for one, many in zip(single, batched):
        assert one[0]["modalities"] == many[0]["modalities"]
        assert _scores(many) == pytest.approx(_scores(one), abs=1e-5)


def test_dataset_and_generator_inputs(pipe, media):
    import datasets

    dataset = datasets.Dataset.from_dict({"audio": [media["wav"], media["wav"]], "label": [0, 1]})
    results = list(pipe(dataset))
    assert len(results) == 2 and _scores(results[0]) == pytest.approx(_scores(pipe(media["wav"])), abs=1e-6)
    generated = list(pipe((item for item in [media["wav"], media["clip"]]), window_seconds=5.0))
    assert [r[0]["modalities"] for r in generated] == [["audio"], ["audio", "video"]]


def test_long_input_gives_windows_and_an_aggregate(pipe, media):
    result = pipe(media["clip"], window_seconds=0.6)
    starts = [window["start"] for window in result["windows"]]
    assert starts == pytest.approx([0.0, 0.6, 0.9], abs=0.11)  # the tail window is aligned to the end
    assert all(window["end"] - window["start"] <= 0.6 + 1e-6 for window in result["windows"])
    assert result["modalities"] == ["audio", "video"]
    aggregate = {p["label"]: p["score"] for p in result["predictions"]}
    assert sum(aggregate.values()) == pytest.approx(1.0, abs=1e-5)
    durations = np.array([w["end"] - w["start"] for w in result["windows"]])
    per_window = np.array([[_scores(w["predictions"])[label] for label in aggregate] for w in result["windows"]])
    expected = (per_window * (durations / durations.sum())[:, None]).sum(0)
    np.testing.assert_allclose(list(aggregate.values()), expected, atol=1e-5)
    # each window equals the same audio run alone
    first = result["windows"][0]
    assert first["predictions"][0]["modalities"] == ["audio", "video"]


def test_window_cutters_hold_bounded_state():
    blocks = (np.full(700, i, np.float32) for i in range(10))  # 7000 samples streamed
    windows = list(audio_windows(blocks, rate=1000, window_seconds=2.0, stride_seconds=2.0))
    assert [(s, e) for s, e, _ in windows] == [(0, 2), (2, 4), (4, 6), (5, 7)]
    assert all(len(samples) == 2000 for _, _, samples in windows)
    assert windows[-1][2][-1] == 9  # the tail window ends with the last block
    frames = ((t / 10, np.full((2, 2, 3), t, np.uint8)) for t in range(25))
    groups = list(video_windows(frames, window_seconds=1.0, stride_seconds=1.0))
    assert [(round(s, 3), round(e, 3), len(f)) for s, e, f in groups] == [(0, 1, 10), (1, 2, 10), (1.5, 2.5, 10)]


def test_no_face_falls_back_to_audio_and_says_so(pipe, media):
    result = pipe(media["faceless"], window_seconds=5.0)
    assert result[0]["modalities"] == ["audio"]
    assert "no face found" in result[0]["notes"][0]
    with pytest.raises(ValueError, match="no face found"):
        pipe(media["silent_faceless"], window_seconds=5.0)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("missing/file.wav", "no such file"),
        ("just some words", "uses audio and video"),
        ("yes/no, and/or a transcript", "uses audio and video"),
        ({"label": 3}, "none of 'audio', 'video' or 'text'"),
        (np.zeros((2, 3), np.float32), "2-D array of shape \\(2, 3\\) is neither a waveform"),
        (np.array([0.1, np.nan], np.float32), "NaN"),
        (object(), "expected a media path"),
    ],
)
def test_bad_inputs_raise_clear_errors(pipe, inputs, message):
    with pytest.raises(ValueError, match=message):
        pipe(inputs)


def test_regression_outputs_are_on_the_corpus_scale(tmp_path, media):
    model = _vavl(id2label={0: "arousal", 1: "dominance", 2: "valence"},
                  label2id={"arousal": 0, "dominance": 1, "valence": 2},
                  problem_type="regression", label_scale=[1.0, 5.0])  # fmt: skip
    regression = pipeline("audio-visual-emotion", model=_save(model, tmp_path))
    result = regression(media["wav"])
    features = regression.processor(audio=media["wav"], return_tensors="pt")
    with torch.no_grad():
        raw = model(input_values=features["input_values"], attention_mask=features["audio_attention_mask"]).logits[0]
    assert set(result) == {"arousal", "dominance", "valence", "modalities"}
    for index, name in enumerate(["arousal", "dominance", "valence"]):
        assert result[name] == pytest.approx(1 + 4 * float(raw[index]), abs=1e-4)


def test_audio_text_model_uses_the_transcript(tmp_path, media):
    tokenizer = tiny_tokenizer(tmp_path)
    model = MultiLevelFusionForEmotionRecognition(tiny_mlfusion_config(fusion_members=["audio_frame", "text"])).eval()
    mlfusion = pipeline("audio-visual-emotion", model=_save(model, tmp_path / "mlf", tokenizer))
    both = mlfusion({"audio": media["wav"], "text": "i am so happy", "video": media["clip"]})
    assert both[0]["modalities"] == ["audio", "text"]
    audio_only = mlfusion(media["wav"])
    text_only = mlfusion("i am so happy")
    assert audio_only[0]["modalities"] == ["audio"] and text_only[0]["modalities"] == ["text"]
    assert _scores(both) != pytest.approx(_scores(audio_only), abs=1e-4)


def test_segment_reading_model_takes_a_transcript_alone(tmp_path, media):
    # the pipeline sends all-zero segment rows (and no audio) for a transcript: a text-only batch, not a
    # forgotten-audio error of the model
    tokenizer = tiny_tokenizer(tmp_path)
    config = tiny_mlfusion_config(fusion_members=["audio_word", "early_word", "text"])
    model = MultiLevelFusionForEmotionRecognition(config).eval()
    mlfusion = pipeline("audio-visual-emotion", model=_save(model, tmp_path / "mlf", tokenizer))
    text_only = mlfusion("i am so happy")
    assert text_only[0]["modalities"] == ["text"]
    assert _scores(mlfusion({"text": "i am so happy"})) == pytest.approx(_scores(text_only), abs=1e-6)
    with_segments = {"audio": media["wav"], "text": "i am so happy", "segments": {"word": [[0.0, 0.3], [0.3, 0.7]]}}
    both = mlfusion([with_segments, "i am so happy"], batch_size=2)
    assert both[0][0]["modalities"] == ["audio", "text"]
    assert _scores(both[1]) == pytest.approx(_scores(text_only), abs=1e-5)
    # segments without audio: the same error alone and batched with an item that has audio
    orphan = {"text": "i am so happy", "segments": {"word": [[0.0, 0.3]]}}
    for call in (lambda: mlfusion(orphan), lambda: mlfusion([with_segments, orphan], batch_size=2)):
        with pytest.raises(ValueError, match="'segments' are times in the audio, but the input has no audio"):
            call()


def test_trust_remote_code_pipeline_without_import(vavl_dir, media, tmp_path):
    config = json.loads(open(f"{vavl_dir}/config.json").read())
    assert (
        config["custom_pipelines"]["audio-visual-emotion"]["impl"] == "audio_visual_emotion.AudioVisualEmotionPipeline"
    )
    # the copy imports its sibling modules (inputs, windows) absolutely: transformers would look for relative imports
    # in the model directory, which holds only the copied file
    copied = open(f"{vavl_dir}/audio_visual_emotion.py").read()
    assert "from avemotion.pipelines.inputs import" in copied and "from avemotion.pipelines.windows import" in copied
    assert not [line for line in copied.splitlines() if line.lstrip().startswith("from .")]
    expected = _scores(pipeline("audio-visual-emotion", model=vavl_dir)(media["wav"]))
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import pipeline
        before = "avemotion.pipelines.audio_visual_emotion" in sys.modules
        pipe = pipeline(model={vavl_dir!r}, trust_remote_code=True)
        result = pipe({media["wav"]!r})
        installed = sys.modules.get("avemotion.pipelines.audio_visual_emotion")
        print(json.dumps({{
            "before": before,
            "module": type(pipe).__module__,
            "installed_class": installed is not None and type(pipe) is installed.AudioVisualEmotionPipeline,
            "scores": {{item["label"]: item["score"] for item in result}},
        }}))
    """)
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # the pipeline class is the copy's (a transformers_modules module), not the installed module's; the installed one
    # is imported only as a side effect of `import avemotion` (the package root registers the task), which the copy's
    # absolute `avemotion.*` imports trigger
    assert not report["before"] and not report["installed_class"]
    assert report["module"].startswith("transformers_modules.") and report["module"].endswith(".audio_visual_emotion")
    assert report["scores"] == pytest.approx(expected, abs=1e-5)


def test_predict_cli_reports_failures_per_file(vavl_dir, media, tmp_path, capsys):
    from avemotion.cli import main

    missing = str(tmp_path / "missing.wav")
    status = main(["predict", "--model", vavl_dir, "--json", "--window-seconds", "5",
                   media["wav"], missing, media["silent_faceless"], media["clip"]])  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert status == 1 and [line["input"] for line in lines] == [media["wav"], missing, media["silent_faceless"],
                                                                 media["clip"]]  # fmt: skip
    assert "no such file" in lines[1]["error"] and "no face found" in lines[2]["error"]
    assert lines[3]["result"][0]["modalities"] == ["audio", "video"]
    assert {p["label"]: p["score"] for p in lines[0]["result"]} == pytest.approx(
        _scores(pipeline("audio-visual-emotion", model=vavl_dir)(media["wav"])), abs=1e-6
    )
    # a transcript next to an audio file: VAVL ignores the text and the wav is not taken for a video
    assert main(["predict", "--model", vavl_dir, "--json", media["wav"], "--text", "so happy"]) == 0
    assert json.loads(capsys.readouterr().out)["result"][0]["modalities"] == ["audio"]
    assert main(["predict", "--model", vavl_dir, "--window-seconds", "0.6", media["clip"]]) == 0
    table = capsys.readouterr().out
    assert "audio+video" in table and "[0.6-1.2 s]" in table


def test_pre_extracted_features_input():
    model = VavlForEmotionRecognition(tiny_vavl_config()).eval()
    pipe = AudioVisualEmotionPipeline(model=model, processor=AvEmotionProcessor())
    audio, visual = np.random.rand(7, 16).astype(np.float32), np.random.rand(5, 12).astype(np.float32)
    result = pipe({"audio_features": audio, "visual_features": visual})
    with torch.no_grad():
        expected = torch.softmax(model(audio_features=torch.from_numpy(audio)[None],
                                       visual_features=torch.from_numpy(visual)[None]).logits[0], -1)  # fmt: skip
    assert result[0]["modalities"] == ["audio", "video"]
    for index, label in model.config.id2label.items():
        assert _scores(result)[label] == pytest.approx(float(expected[index]), abs=1e-5)
    assert pipe({"visual_features": visual})[0]["modalities"] == ["video"]
    with pytest.raises(ValueError, match="must have 16 values per frame"):
        pipe({"audio_features": np.zeros((3, 5), np.float32)})


@pytest.mark.parametrize("audio_layer", ["weighted_sum", "last"])
def test_fusion_model_takes_pre_extracted_audio_features_in_its_layout(tmp_path, audio_layer):
    """Cached speech features of the fusion model give the same result as the waveform: (frames, dim) for one layer,
    (layers, frames, dim) for `audio_layer="weighted_sum"` (the model's `input_spec` says which); the other layout
    is an error naming the expected shape."""
    tokenizer = tiny_tokenizer(tmp_path)
    config = tiny_mlfusion_config(fusion_members=["audio_frame", "text"], audio_layer=audio_layer)
    model = MultiLevelFusionForEmotionRecognition(config).eval()
    pipe = pipeline("audio-visual-emotion", model=_save(model, tmp_path / "mlf", tokenizer))
    waveform = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
    values = pipe.processor(audio=waveform, sampling_rate=16000, return_tensors="pt")["input_values"]
    with torch.no_grad():
        encoded = pipe.model.base_model.audio_encoder(values, output_hidden_states=True)
    stacked = torch.stack(encoded.hidden_states)[:, 0].numpy()  # (layers, frames, dim)
    # "last" is `last_hidden_state` (with a stable-layer-norm encoder it differs from hidden_states[-1])
    features = stacked if audio_layer == "weighted_sum" else encoded.last_hidden_state[0].numpy()
    from_waveform = pipe({"audio": {"array": waveform, "sampling_rate": 16000}, "text": "so happy"})
    from_features = pipe({"audio_features": features, "text": "so happy"})
    assert from_features[0]["modalities"] == ["audio", "text"]
    assert _scores(from_features) == pytest.approx(_scores(from_waveform), abs=1e-5)
    wrong = stacked[-1] if audio_layer == "weighted_sum" else stacked
    with pytest.raises(ValueError, match=r"this model takes 'audio_features' as \("):
        pipe({"audio_features": wrong})
