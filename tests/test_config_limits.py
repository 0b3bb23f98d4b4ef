"""Configs are validated at construction (`avemotion.models.config_limits`): a crafted size fails at once with a
`ValueError` naming the field, from the constructor, `from_pretrained`, the pipeline and `avemotion predict`; the
parameter bound is set only by an explicit argument and never saved; the analytic parameter counts equal those of
the built models (built on the meta device: no memory, no weights)."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from mlfusion_testing import tiny_bert_config
from mlfusion_testing import tiny_config as tiny_mlfusion_config
from mlfusion_testing import tiny_wav2vec2_config as tiny_speech_config
from test_pipeline import _save, _vavl
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    Data2VecAudioConfig,
    DistilBertConfig,
    EfficientNetConfig,
    HubertConfig,
    RobertaConfig,
    Wav2Vec2Config,
    WavLMConfig,
    pipeline,
)
from transformers.models.efficientnet.modeling_efficientnet import round_filters
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import (
    AutoModelForEmotionRecognition,
    MultiLevelFusionConfig,
    MultiLevelFusionForEmotionRecognition,
    VavlConfig,
    VavlForEmotionRecognition,
)
from avemotion.cli import main
from avemotion.models import config_limits
from avemotion.models.config_limits import DEFAULT_MAX_PARAMETERS, backbone_parameters

FAST = 1.0  # seconds: generous; a crafted config used to hang for minutes or allocate terabytes


def _raises_fast(build, match: str) -> ValueError:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match) as caught:
        build()
    assert time.perf_counter() - start < FAST
    return caught.value


def _meta_parameters(build) -> int:
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in build().parameters())


# -- own fields ---------------------------------------------------------------------------------------------------

VAVL_CASES = [
    (
        {"num_shared_layers": 10**7},
        r"VavlConfig\.num_shared_layers = 10000000: expected a whole number from 1 to 256$",
    ),
    ({"num_modality_layers": -3}, r"VavlConfig\.num_modality_layers = -3: expected a whole number from 1 to 256"),
    ({"num_modality_layers": 0}, r"num_modality_layers = 0: expected a whole number from 1"),
    ({"hidden_size": 10**7}, r"VavlConfig\.hidden_size = 10000000: expected a whole number from 2 to 16384"),
    ({"hidden_size": 33, "num_attention_heads": 1}, r"VavlConfig\.hidden_size = 33: must be even"),
    ({"num_shared_layers": True}, r"num_shared_layers = True: .* got a bool"),
    ({"num_shared_layers": 3.0}, r"num_shared_layers = 3\.0: .* got the float 3\.0 \(write 3 without"),
    ({"num_shared_layers": "3"}, r"num_shared_layers = '3': .* got a str"),
    ({"num_attention_heads": 0}, r"num_attention_heads = 0: expected a whole number from 1 to 1024"),
    ({"conv_kernel_size": 10**6}, r"conv_kernel_size = 1000000: expected a whole number from 1 to 1023"),
    ({"intermediate_size": 10**9}, r"intermediate_size = 1000000000"),
    ({"projection_dim": -1}, r"projection_dim = -1"),
    ({"audio_feature_dim": 10**7}, r"audio_feature_dim = 10000000"),
    ({"head_hidden_sizes": []}, r"head_hidden_sizes = \[\]: expected a list of 1 to 16 whole numbers"),
    ({"head_hidden_sizes": 512}, r"head_hidden_sizes = 512: expected a list .* got an int"),
    ({"head_hidden_sizes": [24, 10**8]}, r"head_hidden_sizes\[1\] = 100000000"),
    ({"max_position_embeddings": 10**9}, r"max_position_embeddings = 1000000000"),
    ({"visual_backbone_chunk_size": 0}, r"visual_backbone_chunk_size = 0"),
    ({"conformer_dropout": 1.5}, r"conformer_dropout = 1\.5: expected a number from 0 to 1"),
    ({"head_dropout": float("nan")}, r"head_dropout = nan"),
    ({"window_seconds": 0}, r"window_seconds = 0: expected a number above 0 and at most 3600"),
    ({"window_seconds": float("inf")}, r"window_seconds = inf"),
    ({"sampling_rate": 16000.0}, r"sampling_rate = 16000\.0"),
    ({"label_scale": ["1", "5"]}, r"label_scale\[0\] = '1'"),
    ({"legacy_batch_axis_attention": "false"}, r"legacy_batch_axis_attention = 'false': expected true or false"),
    ({"position_encoding": "absolute"}, r"position_encoding = 'absolute': expected one of"),
    ({"num_labels": 10**8, "id2label": None, "label2id": None}, r"VavlConfig\.num_labels = 100000000"),
    ({"id2label": {i: str(i) for i in range(2000)}, "label2id": None}, r"VavlConfig\.id2label has 2000 labels"),
    (
        {"id2label": {"x": "angry", "1": "sad"}, "label2id": None},
        r"VavlConfig\.id2label: key 'x' is not a class index",
    ),
    ({"id2label": {"0": "angry", str(10**12): "sad"}, "label2id": None}, r"VavlConfig\.id2label: key '1000000000000'"),
    ({"id2label": {0: "angry", 2: "sad"}, "label2id": None}, r"id2label: the keys \[0, 2\] must be the class indices"),
]


@pytest.mark.parametrize(("overrides", "match"), VAVL_CASES, ids=[str(sorted(c[0]))[:40] for c in VAVL_CASES])
def test_vavl_fields_are_bounded(overrides, match):
    _raises_fast(lambda: tiny_vavl_config(**overrides), match)


MLFUSION_CASES = [
    (
        {"num_coattention_layers": 10**7},
        r"MultiLevelFusionConfig\.num_coattention_layers = 10000000: expected a whole",
    ),
    ({"num_self_attention_layers": -3}, r"num_self_attention_layers = -3: expected a whole number from 0 to 256"),
    ({"fusion_hidden_size": 10**7}, r"fusion_hidden_size = 10000000"),
    ({"num_coattention_heads": False}, r"num_coattention_heads = False: .* got a bool"),
    ({"coattention_ffn_size": 40.0}, r"coattention_ffn_size = 40\.0: .* got the float"),
    ({"classifier_hidden_size": "16"}, r"classifier_hidden_size = '16'"),
    ({"max_text_length": 0}, r"max_text_length = 0"),
    ({"attention_dropout": -0.1}, r"attention_dropout = -0\.1"),
    ({"max_segment_overrun": float("nan")}, r"max_segment_overrun = nan"),
    ({"granularities": "frame"}, r"granularities = 'frame': expected a list of 1 to 4 strings, got a str"),
    ({"fusion_members": 3}, r"fusion_members = 3"),
    ({"class_weights": [1, 2, 3, float("inf")]}, r"class_weights\[3\] = inf"),
    ({"audio_layer": 99}, r"audio_layer = 99: expected a hidden-state index from -3 to 2"),
    ({"text_layer": -4}, r"text_layer = -4"),
    ({"freeze_text_encoder": 1}, r"freeze_text_encoder = 1: expected true or false"),
    (
        {
            "late_fusion_mode": "weighted",
            "fusion_members": ["text", "audio_frame"],
            "late_fusion_weights": {"text": float("nan"), "audio_frame": 0.5},
        },
        r"late_fusion_weights\['text'\] = nan",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("overrides", "match"), MLFUSION_CASES, ids=[str(sorted(c[0]))[:40] for c in MLFUSION_CASES])
def test_mlfusion_fields_are_bounded(overrides, match):
    _raises_fast(lambda: tiny_mlfusion_config(**overrides), match)


# -- backbone sub-configs -----------------------------------------------------------------------------------------


def _speech(**changes) -> dict:
    return {**tiny_wav2vec2_config().to_dict(), **changes}


BACKBONE_CASES = [
    # VAVL's audio backbone (wav2vec2), as a dict (a file) and as a config object
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(num_hidden_layers=10**7)),
     r"VavlConfig\.audio_backbone_config\.num_hidden_layers = 10000000: expected a whole number from 1 to 256"),
    (lambda: tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config(num_hidden_layers=10**7)),
     r"VavlConfig\.audio_backbone_config\.num_hidden_layers = 10000000"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(hidden_size=10**7)),
     r"audio_backbone_config\.hidden_size = 10000000"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(num_attention_heads=3)),
     r"audio_backbone_config\.hidden_size = 16 must be divisible by num_attention_heads = 3"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(num_conv_pos_embedding_groups=5)),
     r"must be divisible by num_conv_pos_embedding_groups = 5"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(conv_dim=[16] * 10**6)),
     r"audio_backbone_config\.conv_dim = .*: expected a list of 1 to 32 whole numbers"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(conv_kernel=[10, 10**7])),
     r"audio_backbone_config\.conv_kernel\[1\] = 10000000"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(num_conv_pos_embeddings=10**7)),
     r"num_conv_pos_embeddings = 10000000"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(num_hidden_layers=2.0)),
     r"audio_backbone_config\.num_hidden_layers = 2\.0: .* got the float"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(layer_norm_eps="x")),  # no bound: transformers' check
     r"VavlConfig\.audio_backbone_config: .*layer_norm_eps"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(hidden_act="evil")),
     r"audio_backbone_config\.hidden_act = 'evil': expected an activation name"),
    (lambda: tiny_vavl_config(audio_backbone_config=_speech(feat_extract_norm="evil")),
     r"audio_backbone_config\.feat_extract_norm = 'evil': expected one of \['group', 'layer'\]"),
    (lambda: tiny_vavl_config(audio_backbone_config=[1, 2]),
     r"audio_backbone_config = \[1, 2\]: expected a config object or a dict"),
    # VAVL's visual backbone (EfficientNet)
    (lambda: tiny_vavl_config(visual_backbone_config={"depth_coefficient": 10**6}),
     r"visual_backbone_config\.depth_coefficient = 1000000: expected a number above 0 and at most 16"),
    (lambda: tiny_vavl_config(visual_backbone_config={"num_block_repeats": [64] * 7, "depth_coefficient": 16.0}),
     r"visual_backbone_config: num_block_repeats .* give 7168 blocks"),
    (lambda: tiny_vavl_config(visual_backbone_config={"strides": [1, 3, 2, 2, 1, 2, 1]}),
     r"visual_backbone_config\.strides\[1\] = 3"),
    (lambda: tiny_vavl_config(visual_backbone_config={"kernel_sizes": [3, 3]}),
     r"visual_backbone_config: in_channels, .* must have one length"),
    (lambda: tiny_vavl_config(visual_backbone_config={"hidden_act": "evil"}),
     r"visual_backbone_config\.hidden_act = 'evil': expected an activation name"),
    (lambda: tiny_vavl_config(visual_backbone_config={**tiny_efficientnet_config().to_dict(), "depthwise_padding": [99]},
                              visual_feature_dim=128),
     r"visual_backbone_config\.depthwise_padding = \[99\]: block indices must be below the number of blocks"),
    (lambda: tiny_vavl_config(visual_backbone_config={"hidden_dim": 10**9}),
     r"visual_backbone_config\.hidden_dim = 1000000000"),
    (lambda: tiny_vavl_config(visual_backbone_config={"width_coefficient": 0.1, "depth_coefficient": 0.1}),
     r"visual_backbone_config\.hidden_dim = 2560: the top convolution of this EfficientNet has 128 channels"),
    (lambda: tiny_vavl_config(visual_backbone_config={"width_coefficient": 16.0, "hidden_dim": 20480},
                              visual_feature_dim=20480),
     r"VavlConfig: the model would have about .* parameters \(visual_backbone_config"),
    # the multi-level fusion encoders (wav2vec2-style speech, BERT-style text)
    (lambda: tiny_mlfusion_config(text_config={**tiny_bert_config().to_dict(), "vocab_size": 10**9}),
     r"MultiLevelFusionConfig\.text_config\.vocab_size = 1000000000: expected a whole number from 1 to 1000000"),
    (lambda: tiny_mlfusion_config(text_config={"model_type": "bert", "num_hidden_layers": 10**7}),
     r"text_config\.num_hidden_layers = 10000000"),
    (lambda: tiny_mlfusion_config(text_config={"model_type": "bert", "max_position_embeddings": 10**8}),
     r"text_config\.max_position_embeddings = 100000000"),
    (lambda: tiny_mlfusion_config(text_config=DistilBertConfig(n_layers=10**7)),
     r"text_config\.(n_layers|num_hidden_layers) = 10000000"),
    (lambda: tiny_mlfusion_config(text_config={**tiny_bert_config().to_dict(), "num_attention_heads": 5}),
     r"text_config\.hidden_size = 32 must be divisible by num_attention_heads = 5"),
    (lambda: tiny_mlfusion_config(audio_config={"model_type": "wav2vec2", "num_hidden_layers": 10**7}),
     r"MultiLevelFusionConfig\.audio_config\.num_hidden_layers = 10000000"),
    (lambda: tiny_mlfusion_config(audio_config={"model_type": "hubert", "intermediate_size": -1}),
     r"audio_config\.intermediate_size = -1"),
    (lambda: tiny_mlfusion_config(text_config={**tiny_bert_config().to_dict(), "type_vocab_size": 0}),
     r"text_config\.type_vocab_size = 0: expected a whole number from 1"),
    (lambda: tiny_mlfusion_config(text_config={**tiny_bert_config().to_dict(), "hidden_act": "evil"}),
     r"text_config\.hidden_act = 'evil'"),
    (lambda: tiny_mlfusion_config(audio_config={**tiny_speech_config().to_dict(), "model_type": "bert"}),
     r"audio_config \(BertConfig\) has no `\w+`: a wav2vec2-style speech encoder"),  # the wav2vec2 keys are extras
    (lambda: tiny_mlfusion_config(audio_config={"model_type": "no-such-model"}),
     r"MultiLevelFusionConfig\.audio_config: Unrecognized model type"),
    (lambda: tiny_mlfusion_config(text_config={"model_type": "bert", "hidden_size": 8192, "num_attention_heads": 8,
                                               "intermediate_size": 32768, "num_hidden_layers": 24}),
     r"MultiLevelFusionConfig: the model would have about 1\.\d+e\+10 parameters \(text_config"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "match"), BACKBONE_CASES, ids=[c[1][:50] for c in BACKBONE_CASES])
def test_backbone_sub_configs_are_bounded(build, match):
    _raises_fast(build, match)


def test_existing_messages_still_come_first():
    """The bounds add to the configs' checks: the cases those name keep their messages."""
    with pytest.raises(ValueError, match="a wav2vec2-style speech encoder"):
        tiny_mlfusion_config(audio_config=tiny_bert_config())
    with pytest.raises(ValueError, match="divisible"):
        tiny_vavl_config(num_attention_heads=5)
    with pytest.raises(ValueError, match="odd"):
        tiny_vavl_config(conv_kernel_size=4)


# -- files: from_pretrained, the pipeline, `avemotion predict` ----------------------------------------------------


def _write_config(directory: Path, config, **changes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    saved = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        target = saved
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    (directory / "config.json").write_text(json.dumps(saved))
    return directory


FILE_CASES = [
    (lambda: tiny_vavl_config(), {"num_shared_layers": 10**7}, r"VavlConfig\.num_shared_layers = 10000000"),
    (lambda: tiny_vavl_config(), {"num_modality_layers": -3}, r"VavlConfig\.num_modality_layers = -3"),
    (lambda: tiny_vavl_config(), {"hidden_size": 10**7}, r"VavlConfig\.hidden_size = 10000000"),
    (lambda: tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config()),
     {"audio_backbone_config.num_hidden_layers": 10**7}, r"audio_backbone_config\.num_hidden_layers = 10000000"),
    (lambda: tiny_vavl_config(), {"id2label": ["a", "b"]}, r"VavlConfig\.id2label = \['a', 'b'\]: expected a mapping"),
    (lambda: tiny_mlfusion_config(), {"text_config.vocab_size": 10**9}, r"text_config\.vocab_size = 1000000000"),
    (lambda: tiny_mlfusion_config(), {"num_coattention_layers": 10**7}, r"num_coattention_layers = 10000000"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "changes", "match"), FILE_CASES, ids=[c[2][:40] for c in FILE_CASES])
def test_from_pretrained_of_a_crafted_directory_fails_fast(tmp_path, make, changes, match):
    directory = _write_config(tmp_path / "model", make(), **changes)
    config_class = type(make())
    for load in (config_class.from_pretrained, AutoConfig.from_pretrained, AutoModel.from_pretrained,
                 AutoModelForEmotionRecognition.from_pretrained):  # fmt: skip
        _raises_fast(lambda load=load: load(directory), match)


def test_from_pretrained_checks_the_fields_its_kwargs_override(tmp_path):
    """transformers sets from_pretrained's config kwargs after building the config: they are checked too."""
    directory = _write_config(tmp_path / "model", tiny_vavl_config())
    _raises_fast(lambda: VavlConfig.from_pretrained(directory, num_shared_layers=10**7), "num_shared_layers")
    assert VavlConfig.from_pretrained(directory, num_shared_layers=2).num_shared_layers == 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return Path(_save(_vavl(), tmp_path_factory.mktemp("vavl")))


def _crafted_copy(model_dir: Path, tmp_path: Path, **changes) -> str:
    target = tmp_path / "crafted"
    shutil.copytree(model_dir, target)
    saved = json.loads((target / "config.json").read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = saved
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    (target / "config.json").write_text(json.dumps(saved))
    return str(target)


CRAFTED = [
    ({"num_shared_layers": 10**7}, "VavlConfig.num_shared_layers = 10000000"),
    ({"num_modality_layers": -3}, "VavlConfig.num_modality_layers = -3"),
    ({"hidden_size": 10**7}, "VavlConfig.hidden_size = 10000000"),
    ({"audio_backbone_config.num_hidden_layers": 10**7}, "VavlConfig.audio_backbone_config.num_hidden_layers"),
]


@pytest.mark.parametrize(("changes", "field"), CRAFTED, ids=[c[1] for c in CRAFTED])
def test_pipeline_reports_the_config_field_not_onnx(model_dir, tmp_path, changes, field):
    crafted = _crafted_copy(model_dir, tmp_path, **changes)
    error = _raises_fast(lambda: pipeline("audio-visual-emotion", model=crafted), re.escape(field))
    assert "onnx" not in str(error).lower()


@pytest.mark.parametrize(("changes", "field"), CRAFTED, ids=[c[1] for c in CRAFTED])
def test_predict_reports_the_config_field_not_onnx(model_dir, tmp_path, capsys, changes, field):
    crafted = _crafted_copy(model_dir, tmp_path, **changes)
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, np.zeros(8000, np.float32), 16000)
    start = time.perf_counter()
    assert main(["predict", "--model", crafted, str(wav)]) == 2
    assert time.perf_counter() - start < FAST
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avemotion predict: error: "), lines
    assert field in lines[0] and "onnx" not in lines[0].lower()


# -- the parameter bound: explicit argument only, never saved -----------------------------------------------------


def _large_vavl(**kwargs) -> VavlConfig:
    """~1.5e10 parameters by the estimate (nothing is built)."""
    return tiny_vavl_config(hidden_size=4096, num_attention_heads=8, intermediate_size=65536, num_shared_layers=8,
                            **kwargs)  # fmt: skip


def test_max_parameters_is_an_explicit_argument_only(tmp_path):
    _raises_fast(
        _large_vavl, r"VavlConfig: the model would have about 1\.\d+e\+10 parameters .* max_parameters=2e\+09"
    )
    config = _large_vavl(max_parameters=5e10)
    assert config.max_parameters == 5e10
    assert VavlConfig.from_preset("crema-d").max_parameters == DEFAULT_MAX_PARAMETERS
    # never serialised: not by to_dict, to_json_string or save_pretrained
    assert not any("max_parameters" in key for key in config.to_dict())
    assert "max_parameters" not in config.to_json_string() and "max_parameters" not in repr(config)
    config.save_pretrained(tmp_path / "large")
    assert "max_parameters" not in (tmp_path / "large" / "config.json").read_text()
    # so loading needs the argument again
    _raises_fast(lambda: VavlConfig.from_pretrained(tmp_path / "large"), "more than max_parameters=2e")
    for load in (VavlConfig.from_pretrained, AutoConfig.from_pretrained):
        loaded = load(tmp_path / "large", max_parameters=5e10)
        assert type(loaded) is VavlConfig and loaded.max_parameters == 5e10
        assert loaded.to_dict() == {**config.to_dict(), "_name_or_path": loaded.to_dict()["_name_or_path"]}
    loaded, unused = VavlConfig.from_pretrained(tmp_path / "large", max_parameters=5e10, return_unused_kwargs=True)
    assert loaded.max_parameters == 5e10 and "max_parameters" not in unused


def test_a_file_cannot_set_max_parameters(tmp_path):
    directory = _write_config(tmp_path / "model", _large_vavl(max_parameters=5e10), max_parameters=1e12)
    json_file = directory / "config.json"
    _raises_fast(lambda: VavlConfig.from_json_file(json_file), "the config file sets max_parameters")
    for load in (
        VavlConfig.from_pretrained,
        AutoConfig.from_pretrained,
        AutoModelForEmotionRecognition.from_pretrained,
    ):
        _raises_fast(lambda load=load: load(directory), "the config file sets max_parameters.*never read from a file")
        _raises_fast(lambda load=load: load(directory, max_parameters=1e12), "never read from a file")


@pytest.mark.parametrize("bound", [0, -1, True, "5e9", float("nan")])
def test_max_parameters_must_be_a_positive_number(bound):
    _raises_fast(lambda: tiny_vavl_config(max_parameters=bound), r"VavlConfig\.max_parameters = .*: expected a posit")


def test_max_parameters_reaches_the_config_through_the_model_loaders(model_dir, tmp_path):
    """AutoModel/AutoModelForEmotionRecognition/pipeline kwargs reach the config (and not the model's __init__)."""
    model = AutoModelForEmotionRecognition.from_pretrained(model_dir, max_parameters=1e8)
    assert model.config.max_parameters == 1e8
    assert "max_parameters" not in json.loads(model.config.to_json_string())
    model.save_pretrained(tmp_path / "resaved")
    assert "max_parameters" not in (tmp_path / "resaved" / "config.json").read_text()
    for load in (AutoModel.from_pretrained, AutoModelForEmotionRecognition.from_pretrained):
        _raises_fast(lambda load=load: load(model_dir, max_parameters=10), "more than max_parameters=10")
    with pytest.raises(ValueError, match="more than max_parameters=10"):
        pipeline("audio-visual-emotion", model=str(model_dir), model_kwargs={"max_parameters": 10})
    mlfusion = tiny_mlfusion_config(max_parameters=math.inf)
    assert mlfusion.max_parameters == math.inf and "max_parameters" not in mlfusion.to_json_string()


# -- presets and estimates ----------------------------------------------------------------------------------------


PRESETS = {
    "vavl crema-d": lambda: VavlConfig.from_preset("crema-d"),
    "vavl msp-improv": lambda: VavlConfig.from_preset("msp-improv"),
    "mlfusion default (final system)": lambda: MultiLevelFusionConfig(),
    "mlfusion concat, fine-tuned": lambda: MultiLevelFusionConfig(
        granularity_fusion="concat", num_self_attention_layers=1, num_coattention_layers=2, freeze_audio_encoder=False,
        freeze_text_encoder=False, text_layer="weighted_sum", audio_config={"model_type": "wav2vec2", "layerdrop": 0.0},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_within_bounds_with_margin_and_estimated_exactly(name):
    start = time.perf_counter()
    config = PRESETS[name]()
    estimate = config.check_model_size()
    assert time.perf_counter() - start < FAST
    assert 1e8 < estimate < DEFAULT_MAX_PARAMETERS / 4  # the paper-sized models: ~0.2-0.3 B
    model_class = (
        VavlForEmotionRecognition if isinstance(config, VavlConfig) else MultiLevelFusionForEmotionRecognition
    )
    assert _meta_parameters(lambda: model_class(config)) == estimate == sum(config.estimated_parameters().values())


MODEL_CASES = {
    "vavl tiny": lambda: tiny_vavl_config(),
    "vavl tiny with backbones": lambda: tiny_vavl_config(
        audio_backbone_config=tiny_wav2vec2_config(), visual_backbone_config=tiny_efficientnet_config(),
        visual_feature_dim=128),
    "vavl medium": lambda: tiny_vavl_config(hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                                            num_modality_layers=3, num_shared_layers=2, head_hidden_sizes=[128],
                                            conv_kernel_size=15, num_labels=4, id2label=None, label2id=None),
    "mlfusion tiny": lambda: tiny_mlfusion_config(),
    "mlfusion tiny concat": lambda: tiny_mlfusion_config(granularity_fusion="concat", num_self_attention_layers=1),
    "mlfusion tiny text-only weighted": lambda: tiny_mlfusion_config(fusion_members=["text"],
                                                                     text_layer="weighted_sum"),
    "mlfusion tiny DistilBERT": lambda: tiny_mlfusion_config(
        text_config=DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=2, hidden_dim=37,
                                     max_position_embeddings=64)),
    "mlfusion medium": lambda: tiny_mlfusion_config(
        fusion_hidden_size=128, num_coattention_heads=4, coattention_ffn_size=256,
        audio_config=tiny_speech_config(hidden_size=96, num_attention_heads=4, intermediate_size=200),
        text_config=tiny_bert_config(hidden_size=64, intermediate_size=128, vocab_size=1000)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_model_estimates_equal_the_built_models(name):
    config = MODEL_CASES[name]()
    model_class = (
        VavlForEmotionRecognition if isinstance(config, VavlConfig) else MultiLevelFusionForEmotionRecognition
    )
    assert _meta_parameters(lambda: model_class(config)) == sum(config.estimated_parameters().values())


def _speech_kwargs(**changes) -> dict:
    kwargs = {**tiny_speech_config().to_diff_dict(), **changes}
    kwargs.pop("model_type", None)
    return kwargs


BACKBONES = {
    # wav2vec2-style speech encoders
    "wav2vec2 tiny": (lambda: tiny_wav2vec2_config(), "wav2vec2"),
    "wav2vec2 tiny group norm, no bias, no masking": (
        lambda: Wav2Vec2Config(**_speech_kwargs(feat_extract_norm="group", do_stable_layer_norm=False,
                                                conv_bias=False, mask_time_prob=0.0, mask_feature_prob=0.0)),
        "wav2vec2"),
    "wav2vec2 tiny adapters": (
        lambda: Wav2Vec2Config(**_speech_kwargs(add_adapter=True, output_hidden_size=24, num_adapter_layers=2,
                                                adapter_attn_dim=8)),
        "wav2vec2"),
    "wav2vec2-base": (lambda: Wav2Vec2Config(), "wav2vec2"),
    "wav2vec2-large-robust, 12 layers": (lambda: VavlConfig.from_preset("crema-d").audio_backbone_config, "wav2vec2"),
    "hubert tiny": (lambda: HubertConfig(**_speech_kwargs()), "wav2vec2"),
    "hubert tiny batch-norm pos conv, no projection norm": (
        lambda: HubertConfig(**_speech_kwargs(conv_pos_batch_norm=True, feat_proj_layer_norm=False,
                                              adapter_attn_dim=8)),
        "wav2vec2"),
    "wavlm tiny": (lambda: WavLMConfig(**_speech_kwargs(num_buckets=40)), "wav2vec2"),
    "wavlm tiny group norm": (lambda: WavLMConfig(**_speech_kwargs(feat_extract_norm="group",
                                                                   do_stable_layer_norm=False)), "wav2vec2"),
    "data2vec-audio tiny": (lambda: Data2VecAudioConfig(**_speech_kwargs(num_conv_pos_embeddings=3,
                                                                         conv_pos_kernel_size=5)), "wav2vec2"),
    # BERT-style text encoders (as the fusion model builds them: no pooler), and with a pooler
    "bert tiny": (lambda: tiny_bert_config(), "bert"),
    "bert-base": (lambda: BertConfig(), "bert"),
    "roberta tiny": (lambda: RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=37, max_position_embeddings=66), "bert"),
    "distilbert tiny": (lambda: DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                                                 max_position_embeddings=64), "bert"),
    # transformers' EfficientNet
    "efficientnet tiny": (lambda: tiny_efficientnet_config(), "efficientnet"),
    "efficientnet-b2": (lambda: VavlConfig.from_preset("crema-d").visual_backbone_config, "efficientnet"),
    "efficientnet-b7 (defaults)": (lambda: EfficientNetConfig(), "efficientnet"),
    "efficientnet depthwise padding, squeeze 0.5": (
        lambda: EfficientNetConfig(width_coefficient=0.5, depth_coefficient=0.8, hidden_dim=640,
                                   depthwise_padding=[1, 3], squeeze_expansion_ratio=0.5, num_channels=1),
        "efficientnet"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_estimates_equal_the_built_backbones(name):
    make, architecture = BACKBONES[name]
    config = make()
    config_limits.check_backbone(name, config, architecture)
    start = time.perf_counter()
    estimate = backbone_parameters(config, architecture)
    assert time.perf_counter() - start < 0.05  # milliseconds, not a model build
    built = _meta_parameters(lambda: AutoModel.from_config(config))
    if architecture == "bert" and hasattr(AutoModel.from_config(config), "pooler"):
        # the fusion model builds its text encoder without the pooler; the count covers both
        assert backbone_parameters(config, architecture, pooler=True) == built
        built = _meta_parameters(lambda: AutoModel.from_config(config, add_pooling_layer=False))
    assert abs(estimate - built) <= 0.01 * built and estimate == built, (estimate, built)


@pytest.mark.parametrize("width", [0.1, 0.25, 0.4, 0.5, 1.0, 1.1, 1.4, 1.8, 2.0, 3.3])
@pytest.mark.parametrize("divisor", [1, 8])
def test_round_filters_mirrors_transformers(width, divisor):
    config = EfficientNetConfig(width_coefficient=width, depth_divisor=divisor)
    for channels in (1, 3, 16, 24, 32, 40, 80, 112, 192, 320, 1280):
        assert config_limits.efficientnet_round_filters(config, channels) == round_filters(config, channels)


def test_whole_numbers_and_numbers():
    """The checks' type rules: a bool is not an int, an integral float is not a whole number, NaN is no number."""
    whole, number = config_limits.whole(1, 4), config_limits.number(0.0, 1.0)
    whole("x.n", 4)
    whole("x.n", np.int64(2))  # integral number types pass
    for bad in (True, 2.0, "2", None, 0, 5, [2]):
        with pytest.raises(ValueError, match=r"^x\.n = "):
            whole("x.n", bad)
    number("x.p", 1)
    number("x.p", 0.5)
    for bad in (False, float("nan"), float("inf"), -0.01, "0.5", None):
        with pytest.raises(ValueError, match=r"^x\.p = "):
            number("x.p", bad)
    with pytest.raises(ValueError, match=r"x\.s = 'x' \* 1000|x\.s = 'xxx.*\.\.\.: expected"):
        whole("x.s", "x" * 1000)  # a huge value is shown cut


def test_weights_of_another_model_or_shape_are_refused_naming_the_directory(tmp_path):
    """A valid config.json of another model type (or of other sizes) next to a checkpoint's weights: transformers
    would warn and run a randomly initialised model, or raise a RuntimeError naming no file."""
    directory = tmp_path / "model"
    VavlForEmotionRecognition(tiny_vavl_config()).save_pretrained(directory)
    tiny_mlfusion_config().save_pretrained(directory)  # overwrites config.json only
    with pytest.raises(ValueError, match=r"none of its weights belong to .*'mlfusion'"):
        AutoModelForEmotionRecognition.from_pretrained(directory)
    VavlForEmotionRecognition(tiny_vavl_config()).save_pretrained(directory)
    tiny_vavl_config(projection_dim=tiny_vavl_config().projection_dim * 2).save_pretrained(directory)
    with pytest.raises(ValueError, match=rf"{directory}: its weights do not fit the model its config.json describes"):
        AutoModelForEmotionRecognition.from_pretrained(directory)
    # an unchanged directory loads, with its loading info when asked
    VavlForEmotionRecognition(tiny_vavl_config()).save_pretrained(directory)
    model, info = AutoModelForEmotionRecognition.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and isinstance(model, VavlForEmotionRecognition)
