"""Crafted model directories fail with a `ValueError` / `OSError` naming the directory, file or field (the fuzz
`bench/fuzz_model_dirs.py` found bare `SafetensorError`s, torch's `UnpicklingError`, `TypeError` / `RecursionError`
from transformers' config reader and raw ONNX Runtime errors), and valid directories still load."""

from __future__ import annotations

import json
import pickle
import shutil
import struct

import pytest
import torch
from transformers import AutoConfig

from avemotion import AutoModelForEmotionRecognition, VavlConfig, VavlForEmotionRecognition
from avemotion.utils.transformers_compat import ConfigJSONError

TINY = dict(audio_feature_dim=16, visual_feature_dim=12, projection_dim=8, hidden_size=32, num_attention_heads=4,
            intermediate_size=64, conv_kernel_size=5, num_modality_layers=1, num_shared_layers=1,
            head_hidden_sizes=[24, 16], max_position_embeddings=16)  # fmt: skip
DEEP = "[" * 100_000 + "]" * 100_000


def _model() -> VavlForEmotionRecognition:
    config = VavlConfig.from_preset("crema-d", audio_backbone_config=None, visual_backbone_config=None,
                                    audio_backbone_name=None, **TINY)  # fmt: skip
    return VavlForEmotionRecognition(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("vavl")
    _model().save_pretrained(directory)
    return directory


@pytest.fixture
def model_dir(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "model")


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _lying_header(path, how):
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    if how == "huge header length":
        path.write_bytes(struct.pack("<Q", 1 << 62) + raw[8:])
    elif how == "truncated in the data":
        path.write_bytes(raw[: 8 + length + 10])
    elif how == "truncated in the header":
        path.write_bytes(raw[: 8 + length // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "a pickle renamed":
        path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    elif how in ("dtype F64", "dtype unknown", "shape one longer"):
        name = next(n for n in header if n != "__metadata__" and header[n]["dtype"] == "F32" and header[n]["shape"])
        if how == "dtype F64":
            header[name]["dtype"] = "F64"
        elif how == "dtype unknown":
            header[name]["dtype"] = "Q7"
        else:
            header[name]["shape"] = [*header[name]["shape"][:-1], header[name]["shape"][-1] + 1]
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def test_a_valid_directory_still_loads(saved):
    model = VavlForEmotionRecognition.from_pretrained(saved)
    again = AutoModelForEmotionRecognition.from_pretrained(saved)
    reference = _model().state_dict()
    assert set(model.state_dict()) == set(reference) and type(again) is VavlForEmotionRecognition


@pytest.mark.parametrize(
    "how",
    ["huge header length", "truncated in the data", "truncated in the header", "empty", "a pickle renamed",
     "dtype F64", "dtype unknown", "shape one longer"],
)  # fmt: skip
def test_a_broken_safetensors_file_is_refused_naming_it(model_dir, how):
    _lying_header(model_dir / "model.safetensors", how)
    for loader in (VavlForEmotionRecognition, AutoModelForEmotionRecognition):
        with pytest.raises(ValueError, match="model.safetensors: not a valid safetensors file"):
            loader.from_pretrained(model_dir)


def test_pickled_weights_are_refused_without_unpickling(model_dir, tmp_path):
    marker = tmp_path / "unpickled"
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(
        ValueError, match=r"pytorch_model\.bin: pickled PyTorch weights .* convert them to safetensors"
    ):
        AutoModelForEmotionRecognition.from_pretrained(model_dir)
    assert not marker.exists()


def test_a_safetensors_index_naming_a_pickle_is_refused(model_dir, tmp_path):
    marker = tmp_path / "unpickled"
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model-00001-of-00001.bin").write_bytes(pickle.dumps(_Payload(marker)))
    weight_map = {name: "pytorch_model-00001-of-00001.bin" for name in _model().state_dict()}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: weight_map\[.*must be a .safetensors file"):
        VavlForEmotionRecognition.from_pretrained(model_dir)
    assert not marker.exists()


def test_use_safetensors_false_is_refused(model_dir):
    with pytest.raises(ValueError, match="use_safetensors=False"):
        VavlForEmotionRecognition.from_pretrained(model_dir, use_safetensors=False)


def test_a_deep_weight_index_is_refused_naming_it(model_dir):
    (model_dir / "model.safetensors.index.json").write_text(DEEP)
    with pytest.raises(ValueError, match="model.safetensors.index.json: .*nested too deeply"):
        VavlForEmotionRecognition.from_pretrained(model_dir)


@pytest.mark.parametrize(("text", "reason"), [("null", "NoneType"), ("[1, 2]", "list"), ("5", "int"), (DEEP, "deep")])
def test_a_config_json_that_is_not_an_object_is_refused_naming_it(model_dir, text, reason):
    config = model_dir / "config.json"
    config.write_text(text)
    with pytest.raises(ConfigJSONError, match=reason) as caught:
        VavlConfig.from_json_file(config)
    assert isinstance(caught.value, ValueError) and str(config) in str(caught.value)
    for load in (AutoConfig.from_pretrained, AutoModelForEmotionRecognition.from_pretrained):
        with pytest.raises(OSError, match="config.json"):
            load(model_dir)


# -- ONNX exports ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from avemotion.models.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    export_onnx(VavlForEmotionRecognition.from_pretrained(saved), out, parts="heads")
    return out


@pytest.fixture
def export_dir(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "export")


def _meta(directory):
    return json.loads((directory / "onnx_config.json").read_text())


def _write_meta(directory, meta):
    (directory / "onnx_config.json").write_text(json.dumps(meta))


def _graph(directory):
    return directory / _meta(directory)["graphs"]["heads"]["file"]


def test_a_valid_export_still_loads(exported):
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    model = OnnxRuntimeEmotionModel.from_pretrained(exported)
    assert set(model.sessions) == {"heads"} and model.config.model_type == "vavl"


def _opset_99(graph):
    import onnx

    model = onnx.load(str(graph))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 99
    onnx.save(model, str(graph))


def _external_data_truncated(graph):
    import onnx

    model = onnx.load(str(graph))
    onnx.save(model, str(graph), save_as_external_data=True, location="weights.data", size_threshold=0)
    data = graph.parent / "weights.data"
    data.write_bytes(data.read_bytes()[:100])


@pytest.mark.parametrize(
    "how", ["a directory", "missing", "empty", "not protobuf", "opset 99", "external data truncated"]
)
def test_a_broken_graph_file_is_refused_naming_it(export_dir, how):
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    graph = _graph(export_dir)
    if how in ("a directory", "missing"):
        graph.unlink()
        if how == "a directory":
            graph.mkdir()
    elif how == "empty":
        graph.write_bytes(b"")
    elif how == "not protobuf":
        graph.write_bytes(b"\xff" * 64)
    elif how == "opset 99":
        _opset_99(graph)
    else:
        _external_data_truncated(graph)
    with pytest.raises(ValueError, match=str(graph).replace("\\", "\\\\")):
        OnnxRuntimeEmotionModel.from_pretrained(export_dir)


def test_a_graph_whose_inputs_differ_from_onnx_config_is_refused(export_dir):
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    meta = _meta(export_dir)
    inputs = meta["graphs"]["heads"]["inputs"]
    first = next(iter(inputs))
    inputs["renamed"] = inputs.pop(first)
    _write_meta(export_dir, meta)
    with pytest.raises(ValueError, match=r"\.onnx: the graph's inputs .* not the ones onnx_config.json declares"):
        OnnxRuntimeEmotionModel.from_pretrained(export_dir)
    meta = _meta(export_dir)
    meta["graphs"]["heads"]["inputs"][first] = meta["graphs"]["heads"]["inputs"].pop("renamed")
    meta["graphs"]["heads"]["outputs"].append("embeddings_nowhere")
    _write_meta(export_dir, meta)
    with pytest.raises(ValueError, match=r"\.onnx: the graph has no outputs \['embeddings_nowhere'\]"):
        OnnxRuntimeEmotionModel.from_pretrained(export_dir)


@pytest.mark.parametrize("window", [0, 1e12, "x", True, -1.0])
def test_a_bad_window_seconds_is_refused(export_dir, window):
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    meta = _meta(export_dir)
    meta.setdefault("input_spec", {})["window_seconds"] = window
    _write_meta(export_dir, meta)
    with pytest.raises(ValueError, match=r"onnx_config.json: input_spec.window_seconds"):
        OnnxRuntimeEmotionModel.from_pretrained(export_dir)


def test_a_model_type_other_than_config_json_is_refused(export_dir):
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    meta = _meta(export_dir)
    meta["model_type"] = "mlfusion"
    _write_meta(export_dir, meta)
    with pytest.raises(ValueError, match=r"onnx_config.json: model_type 'mlfusion' differs from config.json's 'vavl'"):
        OnnxRuntimeEmotionModel.from_pretrained(export_dir)


@pytest.mark.parametrize(("model_type", "error"), [("evil", ValueError), (None, OSError)])
def test_a_config_json_of_an_unknown_model_type_names_the_directory(export_dir, model_type, error):
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    config = export_dir / "config.json"
    config.write_text(json.dumps({"model_type": "evil"}) if model_type else DEEP)
    with pytest.raises(error, match=str(export_dir).replace("\\", "\\\\")):
        OnnxRuntimeEmotionModel.from_pretrained(export_dir)
