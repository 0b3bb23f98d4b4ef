"""VAVL on the paper's backbone kinds: an HSEmotion face model converted by `avemotion convert-hsemotion` (a tiny pickle
built without timm) and a wav2vec2 cut to fewer layers, through `from_backbones`, the matching processor, save/load and
the pipeline on a raw talking-face video."""

import json

import numpy as np
import pytest
import torch
from media_testing import face_frames, tone, write_video
from test_hsemotion_conversion import _save_old_timm_model
from transformers import EfficientNetModel, Wav2Vec2Model, pipeline
from transformers.image_utils import PILImageResampling
from vavl_testing import AUDIO_DIM, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import AvEmotionProcessor, VavlConfig, VavlForEmotionRecognition
from avemotion.models.hsemotion.convert_hsemotion_checkpoint import convert_hsemotion_checkpoint
from avemotion.processing.video import AvEmotionImageProcessor, backbone_image_settings

IMAGE_SIZE = 64  # the converted face model's input size (VAVL's is 224); small keeps the test fast
FACE_DIM = 640  # the tiny timm model's pooled width


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """`(wav2vec2 directory (3 layers), converted face-model directory)`."""
    folder = tmp_path_factory.mktemp("backbones")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _save_old_timm_model(folder / "enet_tiny.pt", monkeypatch, num_classes=0)
    convert_hsemotion_checkpoint(folder / "enet_tiny.pt", folder / "face", image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    Wav2Vec2Model(tiny_wav2vec2_config(num_hidden_layers=3)).save_pretrained(folder / "w2v")
    return folder / "w2v", folder / "face"


def _build(backbones) -> VavlForEmotionRecognition:
    audio, visual = backbones
    return VavlForEmotionRecognition.from_backbones(
        audio=audio, visual=visual, audio_num_layers=2, config=tiny_vavl_config()
    ).eval()


def test_from_backbones_records_names_widths_and_weights(backbones, tmp_path):
    audio, visual = backbones
    model = _build(backbones)
    config = model.config
    assert (config.audio_backbone_name, config.visual_backbone_name) == (str(audio), str(visual))
    assert (config.audio_feature_dim, config.visual_feature_dim) == (AUDIO_DIM, FACE_DIM)
    assert config.audio_backbone_config.num_hidden_layers == 2 and config.visual_backbone_config.image_size == 64
    face = EfficientNetModel.from_pretrained(visual)
    for name, tensor in face.state_dict().items():
        torch.testing.assert_close(model.vavl.visual_backbone.state_dict()[name], tensor, rtol=0, atol=0)
    # keyword arguments instead of a config build the same layout
    other = VavlForEmotionRecognition.from_backbones(audio=audio, visual=visual, audio_num_layers=2,
                                                     **tiny_vavl_config().to_diff_dict())  # fmt: skip
    assert other.config.visual_feature_dim == FACE_DIM and other.config.visual_backbone_name == str(visual)
    with pytest.raises(ValueError, match="either `config` or config keyword arguments"):
        VavlForEmotionRecognition.from_backbones(visual=visual, config=tiny_vavl_config(), hidden_size=64)

    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert (saved["audio_backbone_name"], saved["visual_backbone_name"]) == (str(audio), str(visual))
    reloaded = VavlForEmotionRecognition.from_pretrained(tmp_path / "saved")
    assert reloaded.config.visual_feature_dim == FACE_DIM


def test_feature_widths_must_match_the_backbones(backbones):
    with pytest.raises(ValueError, match=r"audio_feature_dim=16 disagrees with audio_backbone_config, whose features "
                                         r"are 1024-d"):  # fmt: skip
        VavlConfig.from_preset("crema-d", audio_feature_dim=16)
    face_config = EfficientNetModel.from_pretrained(backbones[1]).config
    with pytest.raises(ValueError, match=r"visual_feature_dim=12 disagrees with visual_backbone_config, whose "
                                         r"features are 640-d"):  # fmt: skip
        tiny_vavl_config(visual_backbone_config=face_config)
    # a config changed after it was built is checked by the model
    config = tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config())
    config.audio_feature_dim = 32
    with pytest.raises(ValueError, match=r"audio_feature_dim=32 disagrees .* 16-d"):
        VavlForEmotionRecognition(config)
    # no backbones (converted original checkpoints, cached features): any widths
    assert VavlConfig.from_preset("crema-d", audio_backbone_config=None, visual_backbone_config=None,
                                  audio_feature_dim=7, visual_feature_dim=9).visual_feature_dim == 9  # fmt: skip


def test_processor_from_backbones_takes_the_face_models_image_settings(backbones, tmp_path):
    audio, visual = backbones
    processor = AvEmotionProcessor.from_backbones(audio=audio, visual=visual, audio_kwargs={"global_std": 0.5})
    image = processor.image_processor
    assert dict(image.size) == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    # the crop is cut at the backbone's size with VAVL's bicubic interpolation (the backbone's own resize is a no-op)
    assert image.resample == PILImageResampling.BICUBIC and image.face_detector == "mtcnn"
    np.testing.assert_allclose(image.image_mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(image.image_std, [0.229, 0.224, 0.225])
    features = processor.feature_extractor
    assert (features.sampling_rate, features.normalization, features.global_std) == (16000, "global", 0.5)
    override = AvEmotionImageProcessor.from_backbone(visual, resample=PILImageResampling.BILINEAR, face_detector=None)
    assert override.resample == PILImageResampling.BILINEAR and override.face_detector is None

    processor.save_pretrained(tmp_path)
    reloaded = AvEmotionProcessor.from_pretrained(tmp_path).image_processor
    assert dict(reloaded.size) == dict(image.size) and int(reloaded.resample) == int(PILImageResampling.BICUBIC)

    with pytest.raises(ValueError, match=r"face: its image processor sets do_center_crop=True"):
        backbone_image_settings({"do_center_crop": True, "size": {"height": 8, "width": 8}}, "face")
    with pytest.raises(ValueError, match=r"not a square"):
        backbone_image_settings({"size": {"height": 8, "width": 10}})
    assert backbone_image_settings({"size": {"shortest_edge": 96}, "resample": 2})["size"] == {"height": 96,
                                                                                               "width": 96}  # fmt: skip


def test_pipeline_visual_features_equal_the_converted_backbone_on_the_processors_crops(backbones, tmp_path):
    audio, visual = backbones
    model = _build(backbones)
    model.save_pretrained(tmp_path / "model")
    AvEmotionProcessor.from_backbones(audio=audio, visual=visual).save_pretrained(tmp_path / "model")
    frames, _ = face_frames(8)  # a moving real face photo (the Haar cascade finds it)
    clip = write_video(tmp_path / "talking.mp4", frames, fps=8, audio=tone(1.0, 16000))

    pipe = pipeline("audio-visual-emotion", model=str(tmp_path / "model"))
    seen = []
    hook = pipe.model.vavl.register_forward_hook(lambda module, args, kwargs, output: seen.append(output),
                                                 with_kwargs=True)  # fmt: skip
    try:
        result = pipe(str(clip))
    finally:
        hook.remove()
    assert result[0]["modalities"] == ["audio", "video"] and len(seen) == 1
    mask = seen[0].visual_features_mask[0]
    assert int(mask.sum()) == len(frames)  # a face in every frame
    features = seen[0].visual_features[0][mask]

    crops = AvEmotionProcessor.from_pretrained(tmp_path / "model")(video=str(clip), return_tensors="pt")
    pixels = crops["pixel_values_videos"][0][crops["visual_features_mask"][0].bool()]
    assert pixels.shape == (len(frames), 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = EfficientNetModel.from_pretrained(visual).eval()(pixels).pooler_output
    assert features.shape == expected.shape == (len(frames), FACE_DIM)
    assert float(expected.abs().max()) > 1e-3  # real signal, not zeros
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
