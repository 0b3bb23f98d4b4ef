"""AvEmotionProcessor: defaults, any subset of modalities, save/load through AutoProcessor, and the VAVL model."""

import numpy as np
import pytest
import torch
from media_testing import face_frames, tone, write_video
from tokenizers import BertWordPieceTokenizer
from transformers import AutoProcessor, BertTokenizerFast
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config

from avemotion import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor, VavlForEmotionRecognition

NUM_FRAMES, FPS = 12, 12


@pytest.fixture(scope="module")
def talking_face(tmp_path_factory):
    """1 s mp4 with the astronaut's face (frames 3 and 4 without it) and a stereo AAC sound track."""
    frames, _ = face_frames(NUM_FRAMES, without_face=(3, 4))
    folder = tmp_path_factory.mktemp("av")
    return write_video(folder / "talk.mp4", frames, fps=FPS, audio=tone(1.0, 44100, channels=2))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A BertTokenizerFast on a tiny WordPiece vocabulary trained here."""
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(["i am so happy today", "this is sad and angry", "a neutral sentence"], vocab_size=60)
    folder = tmp_path_factory.mktemp("vocab")
    trainer.save_model(str(folder))
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"))


def test_default_processor_has_vavl_settings():
    processor = AvEmotionProcessor()
    extractor, frames = processor.feature_extractor, processor.image_processor
    assert extractor.sampling_rate == 16000 and extractor.normalization == "global"
    assert (frames.size.height, frames.size.width) == (224, 224)
    assert (frames.face_box_scale, frames.crop_scale) == (1.1, 1.25)
    assert frames.face_detector == "mtcnn" and frames.video_fps is None
    assert tuple(frames.image_mean) == (0.485, 0.456, 0.406) and tuple(frames.image_std) == (0.229, 0.224, 0.225)
    assert processor.tokenizer is None


def test_audio_video_and_text_from_one_file(talking_face, tokenizer):
    processor = AvEmotionProcessor(tokenizer=tokenizer)
    out = processor(audio=talking_face, video=talking_face, text="i am so happy", return_tensors="pt")
    assert out["input_values"].shape[0] == 1 and abs(out["input_values"].shape[1] - 16000) < 1600
    assert out["audio_attention_mask"].shape == out["input_values"].shape
    assert tuple(out["pixel_values_videos"].shape) == (1, NUM_FRAMES, 3, 224, 224)
    assert out["visual_features_mask"].tolist() == [[1, 1, 1, 0, 0] + [1] * (NUM_FRAMES - 5)]
    assert out["num_frames_without_face"].tolist() == [2]
    # the text mask keeps the tokenizer's name; the audio mask does not clash with it
    assert out["attention_mask"].shape == out["input_ids"].shape
    assert tokenizer.decode(out["input_ids"][0], skip_special_tokens=True) == "i am so happy"


def test_any_subset_of_modalities_and_batches():
    processor = AvEmotionProcessor()
    waveforms = [np.zeros(8000, np.float32) + 0.1, np.zeros(4000, np.float32) + 0.2]
    audio_only = processor(audio=waveforms, sampling_rate=8000, return_tensors="np")
    assert set(audio_only) == {"input_values", "audio_attention_mask"}
    assert audio_only["input_values"].shape == (2, 16000)
    np.testing.assert_array_equal(audio_only["audio_attention_mask"].sum(axis=1), [16000, 8000])
    frames, _ = face_frames(4)
    video_only = processor(video=[frames, frames[:2]], return_tensors="np")
    assert set(video_only) == {"pixel_values_videos", "visual_features_mask", "num_frames_without_face"}
    assert video_only["visual_features_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with pytest.raises(ValueError, match="different numbers of samples"):
        processor(audio=waveforms, video=frames, sampling_rate=8000)
    with pytest.raises(ValueError, match="no tokenizer"):
        processor(text="hello")
    with pytest.raises(ValueError, match="at least one"):
        processor()


def test_save_and_load_round_trip(tmp_path, talking_face, tokenizer):
    extractor = AvEmotionFeatureExtractor(normalization="global", global_mean=0.01, global_std=0.2)
    image_processor = AvEmotionImageProcessor(detect_every=3, size={"height": 64, "width": 64}, video_fps=6)
    processor = AvEmotionProcessor(extractor, image_processor, tokenizer)
    processor.save_pretrained(tmp_path / "with_text")
    loaded = AutoProcessor.from_pretrained(tmp_path / "with_text")
    assert isinstance(loaded, AvEmotionProcessor) and isinstance(loaded.tokenizer, BertTokenizerFast)
    assert loaded.feature_extractor.global_std == 0.2 and loaded.image_processor.detect_every == 3
    inputs = dict(audio=talking_face, video=talking_face, text="so happy", return_tensors="np")
    expected, actual = processor(**inputs), loaded(**inputs)
    assert actual["pixel_values_videos"].shape == (1, 6, 3, 64, 64)  # 1 s at video_fps=6
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)

    AvEmotionProcessor(extractor, image_processor).save_pretrained(tmp_path / "no_text")
    no_text = AutoProcessor.from_pretrained(tmp_path / "no_text", face_detector=None)
    assert no_text.tokenizer is None and no_text.image_processor.face_detector is None
    assert no_text.image_processor.size.height == 64


def test_directory_with_only_the_feature_extractor_gets_default_frames(tmp_path):
    # what the VAVL converter writes: config.json + preprocessor_config.json
    tiny_vavl_config().save_pretrained(tmp_path)
    AvEmotionFeatureExtractor(normalization="global", global_mean=0.3, global_std=2.0).save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, AvEmotionProcessor) and processor.feature_extractor.global_mean == 0.3
    assert processor.image_processor.to_dict() == AvEmotionImageProcessor().to_dict()


def test_vavl_visual_backbone_consumes_processor_frames_in_chunks(talking_face):
    effnet = tiny_efficientnet_config()
    model = VavlForEmotionRecognition(
        tiny_vavl_config(visual_backbone_config=effnet, visual_feature_dim=effnet.hidden_dim)
    ).eval()
    # transformers draws EfficientNet's conv and BatchNorm weights from N(0, 0.02), which shrinks random features to
    # about 1e-32; a larger init keeps them clearly non-zero so that the comparison below means something
    for module in model.vavl.visual_backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
        elif isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    processor = AvEmotionProcessor(image_processor=AvEmotionImageProcessor(size={"height": 96, "width": 96}))
    frames = processor(video=talking_face, return_tensors="pt")
    pixels, mask = frames["pixel_values_videos"], frames["visual_features_mask"]
    with torch.no_grad():
        model.config.visual_backbone_chunk_size = 3
        chunked = model.vavl.get_visual_features(pixels, mask)
        chunked_logits = model(pixel_values_videos=pixels, visual_features_mask=mask).logits
        model.config.visual_backbone_chunk_size = 1000
        whole = model.vavl.get_visual_features(pixels, mask)
        whole_logits = model(pixel_values_videos=pixels, visual_features_mask=mask).logits
    assert chunked.shape == (1, NUM_FRAMES, effnet.hidden_dim)
    torch.testing.assert_close(chunked, whole, atol=1e-9, rtol=1e-4)  # the tiny backbone's features are ~1e-4
    torch.testing.assert_close(chunked_logits, whole_logits, atol=1e-5, rtol=1e-5)
    assert torch.all(chunked[0, 3:5] == 0)  # faceless frames are skipped
    assert chunked[0, :3].abs().mean() > 1e-6 and not torch.allclose(chunked[0, 0], chunked[0, 1])
