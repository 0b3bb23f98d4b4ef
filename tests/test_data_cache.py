"""cache_features: cached features equal the backbones' outputs; the cache is reused, and invalidated by new weights."""

import numpy as np
import pytest
import torch
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import VavlModel
from avemotion.data import load_corpus
from avemotion.data.cache import cache_features
from avemotion.data.collators import AvEmotionCollator
from avemotion.data.synthetic import SyntheticFeatureExtractor, extract_audio_features
from avemotion.processing import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    dataset = load_corpus("synthetic", root / "s", num_clips=6, seed=0, unpaired_fraction=0.34, cache_dir=root / "c")
    return root, datasets_concat(dataset)


def datasets_concat(dataset):
    from datasets import concatenate_datasets

    return concatenate_datasets([dataset[s] for s in dataset])


def _model_and_processor():
    config = tiny_vavl_config(
        audio_backbone_config=tiny_wav2vec2_config(),
        visual_backbone_config=tiny_efficientnet_config(),
        visual_feature_dim=128,
    )
    processor = AvEmotionProcessor(
        feature_extractor=AvEmotionFeatureExtractor(),
        image_processor=AvEmotionImageProcessor(face_detector=None, size={"height": 32, "width": 32}),
    )
    return VavlModel(config).eval(), processor


def test_cached_features_equal_backbone_outputs_and_cache_is_reused(corpus, tmp_path, monkeypatch):
    _, dataset = corpus
    model, processor = _model_and_processor()
    cached = cache_features(dataset, model, processor, batch_size=4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*"))) == 1
    with torch.no_grad():
        for row in cached:
            if row["audio"] is None:
                assert row["audio_features"] is None
            else:
                waveform = row["audio"].get_all_samples().data.mean(0).numpy()
                inputs = processor.feature_extractor(waveform, sampling_rate=16000, return_tensors="pt")
                expected, _ = model.get_audio_features(inputs["input_values"], inputs["attention_mask"])
                np.testing.assert_allclose(np.array(row["audio_features"]), expected[0].numpy(), atol=1e-4)
            if row["video"] is None:
                assert row["visual_features"] is None
            else:
                inputs = processor.image_processor(row["video"], return_tensors="pt")
                expected = model.get_visual_features(inputs["pixel_values_videos"], inputs["visual_features_mask"])
                np.testing.assert_allclose(np.array(row["visual_features"]), expected[0].numpy(), atol=1e-4)

    # the same backbone again: read from the cache, the backbone is not run
    def fail(*args, **kwargs):
        raise AssertionError("backbone ran although the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(model, "get_audio_features", fail)
        patch.setattr(model, "get_visual_features", fail)
        again = cache_features(dataset, model, processor, batch_size=4, cache_dir=tmp_path)
    assert again["audio_features"] == cached["audio_features"]

    # a changed backbone invalidates the cache
    with torch.no_grad():
        model.audio_backbone.encoder.layer_norm.bias.add_(0.5)
    changed = cache_features(dataset, model, processor, batch_size=4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*"))) == 2
    first = next(i for i, row in enumerate(cached["audio_features"]) if row is not None)
    assert not np.allclose(changed[first]["audio_features"], cached[first]["audio_features"])


def test_cheap_extractor_feeds_the_collator(corpus, tmp_path):
    _, dataset = corpus
    cached = cache_features(dataset, SyntheticFeatureExtractor(), cache_dir=tmp_path)
    row = next(r for r in cached if r["audio"] is not None)
    waveform = row["audio"].get_all_samples().data.mean(0).numpy()
    np.testing.assert_allclose(np.array(row["audio_features"]), extract_audio_features(waveform), atol=1e-5)
    batch = AvEmotionCollator()(list(cached.remove_columns("audio")))
    present_audio = [r is not None for r in cached["audio_features"]]
    assert batch["audio_features_mask"].any(-1).tolist() == present_audio
    assert batch["visual_features"].shape[-1] == 256 and batch["labels"].shape == (6,)


class BrightFrameDetector:
    """A face detector that sees a face (the whole frame) in bright frames only."""

    def detect(self, frame_rgb):
        height, width = frame_rgb.shape[:2]
        return np.array([[0.0, 0.0, width, height]]) if frame_rgb.mean() > 100 else np.zeros((0, 4))


def test_video_without_a_face_gets_none_and_is_reported(tmp_path, caplog):
    import datasets
    from media_testing import write_video

    paths = {}
    for name, value in (("bright", 200), ("dark", 10)):
        paths[name] = str(write_video(tmp_path / f"{name}.mp4", np.full((3, 32, 32, 3), value, np.uint8), fps=3))
    dataset = datasets.Dataset.from_dict(
        {
            "id": ["a", "b", "c", "d"],
            "video": [paths["bright"], paths["dark"], paths["bright"], None],
            "label": [0, 1, 0, 1],
        }
    )
    model, processor = _model_and_processor()
    processor.image_processor.face_detector = BrightFrameDetector()
    with caplog.at_level("WARNING", logger="avemotion.data.cache"):
        cached = cache_features(dataset, model, processor, batch_size=4, cache_dir=tmp_path / "cache")
    present = [row is not None for row in cached["visual_features"]]
    assert present == [True, False, True, False]
    # the faceless row does not change the others' features: they equal a single-video backbone run
    inputs = processor.image_processor(paths["bright"], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_visual_features(inputs["pixel_values_videos"], inputs["visual_features_mask"])
    np.testing.assert_allclose(np.array(cached[0]["visual_features"]), expected[0].numpy(), atol=1e-4)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("1 of 4 rows") and warnings[0].endswith(": b")

    # read back from the cache: still reported, and the collator masks the faceless row's video
    caplog.clear()
    with caplog.at_level("WARNING", logger="avemotion.data.cache"):
        again = cache_features(dataset, model, processor, batch_size=4, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("features-*"))) == 1
    assert [r.getMessage().endswith(": b") for r in caplog.records] == [True]
    batch = AvEmotionCollator()(list(again.remove_columns("video")))
    assert batch["visual_features_mask"].any(-1).tolist() == present


def test_a_file_corrupt_mid_stream_is_reported_not_fatal(tmp_path, caplog):
    """A video that passes the scan's cheap probe (first frame and packets intact) but cannot be decoded further on
    loses only its visual features, with a warning naming it; the other rows are cached."""
    import av

    from avemotion.data.synthetic import write_synthetic_corpus

    root = write_synthetic_corpus(tmp_path / "syn", num_clips=6, num_speakers=3, seed=2)
    bad = sorted((root / "VideoFlash").glob("*.mp4"))[0]
    with av.open(str(bad), "w", format="mov") as container:  # PNG frames: each packet decodes on its own
        stream = container.add_stream("png", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "rgb24"
        for value in range(0, 240, 20):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), value, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = bytearray(bad.read_bytes())
    data[len(data) * 4 // 10 : len(data) * 6 // 10] = bytes(len(data) * 6 // 10 - len(data) * 4 // 10)
    bad.write_bytes(bytes(data))
    dataset, report = load_corpus("synthetic", root, cache_dir=tmp_path / "hf", return_report=True)
    assert report.num_malformed == 0  # the probe cannot see it
    with caplog.at_level("WARNING", logger="avemotion.data.cache"):
        cached = cache_features(dataset, SyntheticFeatureExtractor(), cache_dir=tmp_path / "features")
    rows = {r["id"]: r for split in cached.values() for r in split}
    assert len(rows) == 6
    assert rows[bad.stem]["visual_features"] is None and rows[bad.stem]["audio_features"] is not None
    assert sum(r["visual_features"] is None for r in rows.values()) == 1
    assert f"{bad.stem}: video '{bad}': cannot decode the video" in caplog.text


def test_audio_bytes_are_read_by_our_loader_and_a_bad_payload_is_reported_by_name(tmp_path, caplog):
    """Undecoded `datasets` Audio values given as bytes (m4a/webm payloads too) are read like the files themselves
    (`load_audio`: any container, mono mix); an undecodable payload loses its audio with a warning naming its path
    instead of stopping the caching with a traceback."""
    import datasets
    from media_testing import channel_tones, write_audio

    good = write_audio(tmp_path / "good.m4a", channel_tones(0.6, 16000, 1), 16000, "aac", "fltp", "mono")
    stereo = write_audio(tmp_path / "stereo.webm", channel_tones(0.5, 48000, 2), 48000, "libopus", "flt", "stereo")
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(good.read_bytes()[:200])  # the header only: no decodable audio
    files = [good, stereo, bad]
    rows = {"id": ["good", "stereo", "bad"], "label": [0, 1, 0]}
    by_bytes = datasets.Dataset.from_dict(
        {**rows, "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in files]},
        features=datasets.Features(
            {"id": datasets.Value("string"), "label": datasets.Value("int64"), "audio": datasets.Audio(decode=False)}
        ),
    )
    config = tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config())
    model, processor = VavlModel(config).eval(), AvEmotionProcessor(feature_extractor=AvEmotionFeatureExtractor())
    with caplog.at_level("WARNING", logger="avemotion.data.cache"):
        cached = cache_features(by_bytes, model, processor, batch_size=3)
    features = cached["audio_features"]
    assert features[2] is None and features[0] is not None and features[1] is not None
    assert "bad: audio file 'bad.m4a'" in caplog.text and "its audio is left out" in caplog.text
    # the same features as from the files on disk (read by `load_audio`)
    by_path = datasets.Dataset.from_dict(
        {"id": rows["id"][:2], "audio": [{"bytes": None, "path": str(p)} for p in files[:2]]},
        features=datasets.Features({"id": datasets.Value("string"), "audio": datasets.Audio(decode=False)}),
    )
    expected = cache_features(by_path, model, processor, batch_size=3)["audio_features"]
    for got, want in zip(features[:2], expected, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)
