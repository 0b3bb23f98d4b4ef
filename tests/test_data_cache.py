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
    assert len(list(tmp_path.glob("features-*.arrow"))) == 1
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
    assert len(list(tmp_path.glob("features-*.arrow"))) == 2
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
