"""A processor directory's settings are data: every crafted value fails at construction, so at load, with a
`ValueError` naming the class and the field; files that cannot be read fail with a `ValueError` naming the
directory (and the file)."""

import json
from pathlib import Path

import pytest
from mlfusion_testing import tiny_tokenizer
from transformers import AutoProcessor

from avemotion import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor

DEEP = '{"a": ' * 100_000 + "1" + "}" * 100_000

AUDIO_CASES = [
    ("sampling_rate", 0),
    ("sampling_rate", -16000),
    ("sampling_rate", 10**12),
    ("sampling_rate", "16000"),
    ("sampling_rate", 16000.5),
    ("sampling_rate", True),
    ("max_duration_seconds", -1),
    ("max_duration_seconds", 0),
    ("max_duration_seconds", "x"),
    ("max_duration_seconds", float("nan")),
    ("max_duration_seconds", 10**12),
    ("global_std", 0.0),
    ("global_std", float("inf")),
    ("global_mean", "x"),
    ("padding_value", "x"),
    ("feature_size", 10**9),
    ("normalization", "evil"),
    ("return_attention_mask", "yes"),
]
IMAGE_CASES = [
    ("size", {"height": 10**9, "width": 10**9}),
    ("size", {"height": 0, "width": 32}),
    ("size", {"height": 32.5, "width": 32}),
    ("size", None),
    ("size", "32"),
    ("image_mean", "x"),
    ("image_mean", []),
    ("image_mean", [0.5, 0.5]),
    ("image_mean", [0.5, float("nan"), 0.5]),
    ("image_std", [0, 0, 0]),
    ("image_std", 0),
    ("rescale_factor", "x"),
    ("rescale_factor", 0),
    ("resample", 99),
    ("resample", "bicubic"),
    ("crop_scale", -1.0),
    ("crop_scale", 1e12),
    ("face_box_scale", 0),
    ("detection_max_side", 0),
    ("detect_every", 0),
    ("detect_every", "x"),
    ("do_resize", "yes"),
    ("do_rescale", 1),
    ("do_normalize", None),
    ("face_selection", "evil"),
    ("max_frames", 0),
]


def _ids(cases):
    return [f"{name}={value!r}" for name, value in cases]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny saved processor (no tokenizer): processor_config.json with both sections."""
    directory = tmp_path_factory.mktemp("processor")
    AvEmotionProcessor(
        AvEmotionFeatureExtractor(sampling_rate=16000, normalization="utterance"),
        AvEmotionImageProcessor(size={"height": 48, "width": 48}),
    ).save_pretrained(directory)
    return directory


def _section(saved: Path, section: str) -> dict:
    return json.loads((saved / "processor_config.json").read_text())[section]


def _crafted(saved: Path, tmp_path: Path, section: str, name: str, value) -> Path:
    settings = json.loads((saved / "processor_config.json").read_text())
    settings[section][name] = value
    (tmp_path / "processor_config.json").write_text(json.dumps(settings))
    return tmp_path


@pytest.mark.parametrize(("name", "value"), AUDIO_CASES, ids=_ids(AUDIO_CASES))
def test_feature_extractor_settings_are_checked(saved, tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"AvEmotionFeatureExtractor\.{name} = "):
        AvEmotionFeatureExtractor(**{name: value})
    directory = _crafted(saved, tmp_path, "feature_extractor", name, value)
    with pytest.raises(ValueError, match=rf"AvEmotionFeatureExtractor\.{name} = ") as error:
        AvEmotionProcessor.from_pretrained(directory)
    assert str(directory) in str(error.value)
    direct = tmp_path / "direct"  # a preprocessor_config.json loaded by the feature extractor itself
    direct.mkdir()
    (direct / "preprocessor_config.json").write_text(json.dumps({**_section(saved, "feature_extractor"), name: value}))
    with pytest.raises(ValueError, match=rf"AvEmotionFeatureExtractor\.{name} = ") as error:
        AvEmotionFeatureExtractor.from_pretrained(direct)
    assert str(direct) in str(error.value)


@pytest.mark.parametrize(("name", "value"), IMAGE_CASES, ids=_ids(IMAGE_CASES))
def test_image_processor_settings_are_checked(saved, tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"AvEmotionImageProcessor(\.{name}\b|: )") as error:
        AvEmotionImageProcessor(**{name: value})
    assert name in str(error.value)
    directory = _crafted(saved, tmp_path, "image_processor", name, value)
    with pytest.raises(ValueError, match=rf"AvEmotionImageProcessor\.{name}\b") as error:
        AvEmotionProcessor.from_pretrained(directory)
    assert str(directory) in str(error.value)
    direct = tmp_path / "direct"  # a preprocessor_config.json loaded by the image processor itself
    direct.mkdir()
    (direct / "preprocessor_config.json").write_text(json.dumps({**_section(saved, "image_processor"), name: value}))
    with pytest.raises(ValueError, match=rf"AvEmotionImageProcessor\.{name}\b") as error:
        AvEmotionImageProcessor.from_pretrained(direct)
    assert str(direct) in str(error.value)


def test_image_settings_of_a_call_are_checked():
    processor = AvEmotionImageProcessor(face_detector=None)
    with pytest.raises(ValueError, match=r"AvEmotionImageProcessor\.image_std = "):
        processor([[0]], image_std=[0, 0, 0])
    with pytest.raises(ValueError, match=r"AvEmotionImageProcessor\.resample = 99"):
        processor([[0]], resample=99)


def test_valid_settings_pass(saved):
    AvEmotionFeatureExtractor(sampling_rate=44100, max_duration_seconds=3600, global_mean=-0.1, global_std=0.05)
    AvEmotionImageProcessor(size=4096, image_mean=0.5, image_std=[0.2, 0.2, 0.2], rescale_factor=1.0, resample=2,
                            crop_scale=1.0, face_box_scale=1.0, detection_max_side=None)  # fmt: skip
    loaded = AvEmotionProcessor.from_pretrained(saved)
    assert loaded.image_processor.size.height == 48 and loaded.feature_extractor.sampling_rate == 16000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", r"processor_config\.json"),
        ("[1]", r"processor_config\.json"),
        (DEEP, r"processor_config\.json"),
        ('{"feature_extractor": ', r"processor_config\.json"),
        ('{"feature_extractor": "x"}', r"processor_config\.json feature_extractor"),
        ('{"feature_extractor": {}, "image_processor": [1]}', r"processor_config\.json image_processor"),
        ('{"processor_class": 5}', r"processor_class"),
    ],
    ids=["list", "list of int", "deep", "not JSON", "feature_extractor str", "image_processor list", "class int"],
)
def test_unreadable_processor_config(tmp_path, text, expected):
    (tmp_path / "processor_config.json").write_text(text)
    with pytest.raises(ValueError, match=expected) as error:
        AvEmotionProcessor.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_feature_extractor_only_directory(tmp_path):
    """A directory with only preprocessor_config.json (as the VAVL converter writes)."""
    AvEmotionFeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(DEEP)
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: cannot be read \(nested too deeply") as error:
        AvEmotionProcessor.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 0}))
    with pytest.raises(ValueError, match=r"AvEmotionFeatureExtractor\.sampling_rate = 0") as error:
        AvEmotionProcessor.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)
    with pytest.raises(ValueError, match=r"AvEmotionFeatureExtractor\.sampling_rate = 0") as error:  # directly
        AvEmotionFeatureExtractor.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)
    for loader in (AvEmotionFeatureExtractor, AvEmotionImageProcessor):
        (tmp_path / "preprocessor_config.json").write_text(DEEP)
        with pytest.raises(ValueError, match=r"nested too deeply") as error:
            loader.from_pretrained(tmp_path)
        assert str(tmp_path) in str(error.value)
        (tmp_path / "preprocessor_config.json").write_text("[1]")
        with pytest.raises(ValueError) as error:
            loader.from_pretrained(tmp_path)
        assert str(tmp_path) in str(error.value)


@pytest.fixture()
def with_tokenizer(tmp_path) -> Path:
    directory = tmp_path / "text"
    directory.mkdir()
    tokenizer = tiny_tokenizer(tmp_path)
    AvEmotionProcessor(AvEmotionFeatureExtractor(), AvEmotionImageProcessor(), tokenizer).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("how", ["tokenizer.json not JSON", "tokenizer.json deep", "vocab.txt binary", "vocab empty"])
def test_unreadable_tokenizer_files(with_tokenizer, how):
    directory = with_tokenizer
    if how == "tokenizer.json not JSON":
        (directory / "tokenizer.json").write_text("{")
    elif how == "tokenizer.json deep":
        (directory / "tokenizer.json").write_text(DEEP)
    else:
        (directory / "tokenizer.json").unlink(missing_ok=True)
        data = bytes(range(256)) * 2 if how == "vocab.txt binary" else b""
        (directory / "vocab.txt").write_bytes(data)
    try:
        AvEmotionProcessor.from_pretrained(directory)
    except ValueError as error:
        assert str(directory) in str(error) and "tokenizer" in str(error)
    else:  # transformers may build a (usable) tokenizer from other files: then it must encode
        assert how == "vocab.txt binary", f"{how}: accepted"


def test_auto_processor_reports_bad_settings(saved, tmp_path):
    directory = _crafted(saved, tmp_path, "feature_extractor", "sampling_rate", 0)
    with pytest.raises(ValueError, match=r"AvEmotionFeatureExtractor\.sampling_rate = 0"):
        AutoProcessor.from_pretrained(directory)
