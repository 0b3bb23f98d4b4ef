"""Directories stay closed: a file name read from a model, export or corpus directory names a file of that directory.

For each reader (ONNX export loading and re-export, `avemotion predict`'s model check, model weight loading, the
processor, the IEMOCAP builder), a crafted name (`../outside`, an absolute path, `/etc/passwd`, a symlink leading
out, a NUL, a non-string, an empty string, a subfolder, Windows forms) is a `ValueError` naming the file and the
field, nothing outside is opened, and the message is the same whether the outside file exists or not. A normal
directory still loads and gives the same outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from tokenizers import BertWordPieceTokenizer
from transformers import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    BertTokenizerFast,
    PreTrainedModel,
    pipeline,
)
from vavl_testing import tiny_vavl_config

from avemotion import AutoModelForEmotionRecognition, AvEmotionProcessor, VavlConfig, VavlForEmotionRecognition
from avemotion.models.loading_checks import ContainedWeightsMixin, check_weight_files
from avemotion.pipelines.cli_predict import check_model_dir
from avemotion.utils.paths import OUTSIDE, check_file_name, contained_file

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from avemotion.models.onnx_export import export_onnx  # noqa: E402
from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel, check_external_data  # noqa: E402

DA, DV = 16, 12
TINY = dict(audio_feature_dim=DA, visual_feature_dim=DV, projection_dim=8, hidden_size=32, num_attention_heads=4,
            intermediate_size=64, conv_kernel_size=5, num_modality_layers=1, num_shared_layers=1,
            head_hidden_sizes=[24, 16], max_position_embeddings=16)  # fmt: skip
GRAPH = "model_heads.onnx"

# name -> why it is refused; "{outside}" is a file next to the directory, "{missing}" one that does not exist
CRAFTED = {
    "parent": "../outside.onnx",
    "absolute": "{outside}",
    "etc_passwd": "/etc/passwd",
    "nul": "model_heads.onnx\x00.txt",
    "empty": "",
    "subfolder": "sub/model_heads.onnx",
    "dot_dot": "..",
    "windows_drive": "C:\\Windows\\model.onnx",
    "windows_unc": "\\\\server\\share\\model.onnx",
    "backslash_parent": "..\\outside.onnx",
}
NOT_STRINGS = [3, None, ["model_heads.onnx"], {"file": "model_heads.onnx"}, True]


# -- the helper -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*CRAFTED.values(), *NOT_STRINGS], ids=[*CRAFTED, *map(repr, NOT_STRINGS)])
def test_check_file_name_refuses_anything_but_a_plain_name(name, tmp_path):
    name = name.format(outside=tmp_path / "x") if isinstance(name, str) else name
    with pytest.raises(ValueError, match=r"^SRC: a\.b = ") as error:
        check_file_name(name, "a.b", "SRC")
    assert "expected a file name" in str(error.value) or "NUL" in str(error.value) or OUTSIDE in str(error.value)


def test_contained_file_follows_symlinks_and_says_the_same_either_way(tmp_path):
    directory, outside = tmp_path / "dir", tmp_path / "outside.txt"
    directory.mkdir()
    outside.write_text("secret")
    (directory / "inside.txt").write_text("data")
    os.symlink(outside, directory / "link_to_existing.txt")
    os.symlink(tmp_path / "missing.txt", directory / "link_to_missing.txt")
    os.symlink("inside.txt", directory / "link_inside.txt")
    os.symlink(directory / "loop_b", directory / "loop_a")
    os.symlink(directory / "loop_a", directory / "loop_b")
    assert contained_file(directory, "inside.txt", "f") == directory / "inside.txt"
    assert contained_file(directory, "link_inside.txt", "f") == directory / "link_inside.txt"
    assert contained_file(directory, "not_there_yet.txt", "f") == directory / "not_there_yet.txt"  # caller opens
    messages = []
    for name in ("link_to_existing.txt", "link_to_missing.txt"):
        with pytest.raises(ValueError, match=OUTSIDE) as error:
            contained_file(directory, name, "f")
        messages.append(str(error.value).replace(name, "NAME"))
    assert messages[0] == messages[1]
    with pytest.raises(ValueError, match=OUTSIDE):
        contained_file(directory, "loop_a", "f")


def test_a_hugging_face_cache_snapshot_may_point_into_its_blobs(tmp_path):
    repo = tmp_path / "models--org--name"
    snapshot, blobs = repo / "snapshots" / ("a" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "0123").write_text("{}")
    os.symlink(os.path.relpath(blobs / "0123", snapshot), snapshot / "config.json")
    assert contained_file(snapshot, "config.json", "f") == snapshot / "config.json"
    (tmp_path / "elsewhere").write_text("secret")
    os.symlink(tmp_path / "elsewhere", snapshot / "evil.json")
    with pytest.raises(ValueError, match=OUTSIDE):
        contained_file(snapshot, "evil.json", "f")
    fake = tmp_path / "notacache" / "snapshots" / "x"  # not a models--/datasets--/spaces-- folder: no exception
    fake.mkdir(parents=True)
    (tmp_path / "notacache" / "blobs").mkdir()
    (tmp_path / "notacache" / "blobs" / "b").write_text("x")
    os.symlink(tmp_path / "notacache" / "blobs" / "b", fake / "c.json")
    with pytest.raises(ValueError, match=OUTSIDE):
        contained_file(fake, "c.json", "f")


# -- ONNX exports -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny VAVL heads model exported with the project's exporter, and its directory."""
    torch.manual_seed(0)
    config = VavlConfig.from_preset("crema-d", audio_backbone_config=None, visual_backbone_config=None,
                                    audio_backbone_name=None, **TINY)  # fmt: skip
    model = VavlForEmotionRecognition(config).eval()
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_onnx(model, out, parts="heads")
    return model, out


def _features(seed=0):
    generator = torch.Generator().manual_seed(seed)
    a, v = torch.randn(2, 9, DA, generator=generator), torch.randn(2, 5, DV, generator=generator)
    a_mask, v_mask = torch.ones(2, 9, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    a_mask[1, 6:] = 0
    return {"audio_features": a, "audio_features_mask": a_mask, "visual_features": v, "visual_features_mask": v_mask}


@pytest.fixture
def crafted(exported, tmp_path):
    """A fresh copy of the export in `tmp_path/model`, a valid graph right outside it (`tmp_path/outside.onnx`),
    and `set_file(name)` to point `graphs.heads.file` at `name`."""
    _, source = exported
    directory = tmp_path / "model"
    shutil.copytree(source, directory)
    shutil.copy(source / GRAPH, tmp_path / "outside.onnx")

    def set_file(name):
        meta = json.loads((directory / "onnx_config.json").read_text())
        meta["graphs"]["heads"]["file"] = name
        (directory / "onnx_config.json").write_text(json.dumps(meta))

    return directory, set_file


@pytest.fixture
def opened(monkeypatch):
    """Every path ONNX Runtime and onnx are asked to open."""
    paths = []
    real_session, real_load = onnxruntime.InferenceSession, onnx.load

    def session(path, *args, **kwargs):
        paths.append(str(path))
        return real_session(path, *args, **kwargs)

    def load(path, *args, **kwargs):
        paths.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(onnx, "load", load)
    return paths


def test_a_normal_export_still_loads_and_gives_the_same_outputs(exported, opened):
    model, directory = exported
    inputs = _features()
    onnx_model = OnnxRuntimeEmotionModel.from_pretrained(directory)
    assert opened == [str(directory / GRAPH)] * 2  # the external-data check (onnx.load), then the session
    direct = onnxruntime.InferenceSession(str(directory / GRAPH), providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in inputs.items()}
    np.testing.assert_array_equal(onnx_model(**inputs).logits.numpy(), direct.run(["logits"], feed)[0])
    with torch.no_grad():
        assert float((onnx_model(**inputs).logits - model(**inputs).logits).abs().max()) <= 1e-4


def test_an_export_in_the_hub_cache_layout_loads(exported, tmp_path):
    """snapshot_download's layout: every file a symlink into the repository's blobs/."""
    _, source = exported
    repo = tmp_path / "models--org--onnx"
    snapshot, blobs = repo / "snapshots" / ("b" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for index, item in enumerate(sorted(source.iterdir())):
        shutil.copy(item, blobs / f"blob{index}")
        os.symlink(f"../../blobs/blob{index}", snapshot / item.name)
    inputs = _features()
    expected = OnnxRuntimeEmotionModel.from_pretrained(source)(**inputs).logits
    torch.testing.assert_close(OnnxRuntimeEmotionModel.from_pretrained(snapshot)(**inputs).logits, expected)


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_graph_file_is_refused_and_nothing_outside_is_opened(crafted, opened, tmp_path, case):
    directory, set_file = crafted
    name = CRAFTED[case].format(outside=tmp_path / "outside.onnx")
    set_file(name)
    with pytest.raises(ValueError, match=r"onnx_config\.json: graphs\.heads\.file = ") as error:
        OnnxRuntimeEmotionModel.from_pretrained(directory)
    assert opened == []  # no graph at all was handed to ONNX Runtime or onnx
    if case not in ("nul", "empty"):
        assert OUTSIDE in str(error.value)


@pytest.mark.parametrize("name", NOT_STRINGS, ids=repr)
def test_a_graph_file_that_is_not_a_string_is_refused(crafted, opened, name):
    directory, set_file = crafted
    set_file(name)
    with pytest.raises(ValueError, match=r"graphs\.heads\.file = .*expected a file name \(a non-empty string\)"):
        OnnxRuntimeEmotionModel.from_pretrained(directory)
    assert opened == []


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_the_message_does_not_tell_whether_the_outside_file_exists(crafted, opened, tmp_path, kind):
    directory, set_file = crafted
    messages = []
    for target in (tmp_path / "outside.onnx", tmp_path / "missing.onnx"):
        if kind == "symlink":
            link = directory / "link.onnx"
            link.unlink(missing_ok=True)
            os.symlink(target, link)
            set_file("link.onnx")
        else:
            set_file(f"../{target.name}" if kind == "parent" else str(target))
        with pytest.raises(ValueError, match=OUTSIDE) as error:
            OnnxRuntimeEmotionModel.from_pretrained(directory)
        messages.append(str(error.value).replace(target.name, "NAME"))
    assert messages[0] == messages[1]
    assert opened == []


def test_the_pipeline_refuses_a_crafted_export_without_opening_the_outside_graph(crafted, opened):
    directory, set_file = crafted
    set_file("../outside.onnx")
    with pytest.raises(ValueError, match=r"graphs\.heads\.file = '\.\./outside\.onnx'"):
        pipeline("audio-visual-emotion", model=str(directory))
    assert opened == []


def _graph(meta, **changes):
    return {**meta, "graphs": {"heads": {**meta["graphs"]["heads"], **changes}}}


def _input(dtype, axes, absent):
    return {"x": {"dtype": dtype, "axes": axes, "absent_shape": absent}}


CONFIG_CASES = {
    "top level a list": (lambda m: [m], "the file: expected a JSON object"),
    "format": (lambda m: {**m, "format": "other"}, "format: expected 'avemotion-onnx'"),
    "graphs a list": (lambda m: {**m, "graphs": [m["graphs"]["heads"]]}, "graphs: expected a non-empty object"),
    "graphs empty": (lambda m: {**m, "graphs": {}}, "graphs: expected a non-empty object"),
    "graph a string": (lambda m: {**m, "graphs": {"heads": GRAPH}}, "graphs.heads: expected an object"),
    "inputs missing": (lambda m: _graph(m, inputs=None), "graphs.heads.inputs: expected"),
    "bad dtype": (lambda m: _graph(m, inputs=_input("object", ["batch"], [])), "graphs.heads.inputs.x.dtype"),
    "huge absent shape": (
        lambda m: _graph(m, inputs=_input("float32", ["batch", "t"], [10**12])),
        "graphs.heads.inputs.x.absent_shape",
    ),
    "outputs without logits": (lambda m: _graph(m, outputs=["audio_logits"]), "graphs.heads.outputs"),
    "ignored_inputs": (lambda m: {**m, "ignored_inputs": "labels"}, "ignored_inputs: expected a list of names"),
    "input_spec": (lambda m: {**m, "input_spec": []}, "input_spec: expected an object"),
    "opset": (lambda m: _graph(m, opset="17"), "graphs.heads.opset"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_onnx_config_is_validated_as_data(crafted, opened, case):
    directory, _ = crafted
    change, message = CONFIG_CASES[case]
    meta = json.loads((directory / "onnx_config.json").read_text())
    (directory / "onnx_config.json").write_text(json.dumps(change(meta)))
    with pytest.raises(ValueError, match="onnx_config.json: " + message.replace(".", r"\.").replace("(", r"\(")):
        OnnxRuntimeEmotionModel.from_pretrained(directory)
    assert opened == []


def test_not_an_export_is_said_only_when_that_is_the_cause(crafted, tmp_path):
    directory, _ = crafted
    with pytest.raises(OSError, match="does not exist"):
        OnnxRuntimeEmotionModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(OSError, match="is not a directory"):
        OnnxRuntimeEmotionModel.from_pretrained(directory / GRAPH)
    (tmp_path / "plain").mkdir()
    with pytest.raises(OSError, match="has no onnx_config.json: not a directory written by `avemotion export-onnx`"):
        OnnxRuntimeEmotionModel.from_pretrained(tmp_path / "plain")
    config = directory / "onnx_config.json"
    config.write_text("{not json")
    with pytest.raises(ValueError, match="onnx_config.json: cannot be read as JSON"):
        OnnxRuntimeEmotionModel.from_pretrained(directory)
    config.unlink()
    config.mkdir()
    with pytest.raises(ValueError, match="onnx_config.json: cannot be read as JSON"):
        OnnxRuntimeEmotionModel.from_pretrained(directory)
    config.rmdir()
    (tmp_path / "their_config.json").write_text("{}")
    os.symlink(tmp_path / "their_config.json", config)
    with pytest.raises(ValueError, match=f"'onnx_config.json': {OUTSIDE}"):
        OnnxRuntimeEmotionModel.from_pretrained(directory)


def _graph_with_external_data(path, location):
    """A one-Add graph whose weight is stored in the file `location` (ONNX external data)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_of_a_graph_must_stay_in_its_directory(crafted, tmp_path, monkeypatch):
    directory, _ = crafted
    (tmp_path / "outside.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (directory / "weights.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    check_external_data(_graph_with_external_data(tmp_path / "inside.onnx", "outside.bin"))  # its own folder
    check_external_data(_graph_with_external_data(directory / "ok.onnx", "weights.bin"))
    sessions = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: sessions.append(a))
    for location in ("../outside.bin", str(tmp_path / "outside.bin"), "/etc/passwd"):
        _graph_with_external_data(directory / GRAPH, location)
        with pytest.raises(ValueError, match=rf"{GRAPH}: tensor 'w' external_data\.location = .*{OUTSIDE}"):
            OnnxRuntimeEmotionModel.from_pretrained(directory)
    assert sessions == []


def test_re_export_reads_the_existing_onnx_config_as_data(exported, tmp_path):
    model, source = exported
    directory = tmp_path / "again"
    shutil.copytree(source, directory)
    meta = json.loads((directory / "onnx_config.json").read_text())
    meta["graphs"]["full"] = {**meta["graphs"]["heads"], "file": "../outside.onnx"}
    (directory / "onnx_config.json").write_text(json.dumps(meta))
    before = (directory / GRAPH).read_bytes()
    with pytest.raises(ValueError, match=rf"graphs\.full\.file = '\.\./outside\.onnx': {OUTSIDE}"):
        export_onnx(model, directory, parts="heads")
    assert (directory / GRAPH).read_bytes() == before  # refused before anything was written
    (directory / "onnx_config.json").write_text(json.dumps({"format": "avemotion-onnx", "graphs": "x"}))
    with pytest.raises(ValueError, match="onnx_config.json: graphs: expected"):
        export_onnx(model, directory, parts="heads")


def test_export_refuses_to_copy_a_symlink_leading_out_of_the_source(exported, tmp_path):
    model, _ = exported
    source = tmp_path / "source"
    model.save_pretrained(source)
    (tmp_path / "private_key").write_text("secret")
    os.symlink(tmp_path / "private_key", source / "notes.txt")
    with pytest.raises(ValueError, match=rf"notes\.txt': {OUTSIDE}"):
        export_onnx(source, tmp_path / "out", parts="heads")
    assert not (tmp_path / "out" / "notes.txt").exists()


# -- model weights: transformers' index, `avemotion predict` ------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path):
    """A tiny VAVL checkpoint in shards with its processor; the first shard moved right outside the directory."""
    directory = tmp_path / "model"
    model = VavlForEmotionRecognition(tiny_vavl_config()).eval()
    model.save_pretrained(directory, max_shard_size="20KB")
    AvEmotionProcessor().save_pretrained(directory)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    shutil.copy(directory / first, tmp_path / "outside.safetensors")

    def set_shard(name):
        index["weight_map"] = {k: (name if v == first or v == set_shard.current else v)
                               for k, v in index["weight_map"].items()}  # fmt: skip
        set_shard.current = name
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))

    set_shard.current = first
    return model, directory, set_shard


def _checked_vavl() -> type:
    """The VAVL task model with `ContainedWeightsMixin` (itself, once its base class carries the mixin)."""
    if issubclass(VavlForEmotionRecognition, ContainedWeightsMixin):
        return VavlForEmotionRecognition
    return type("CheckedVavl", (ContainedWeightsMixin, VavlForEmotionRecognition), {})


@pytest.fixture
def safetensors_opened(monkeypatch):
    import safetensors

    paths = []
    real = safetensors.safe_open

    def spy(path, *args, **kwargs):
        paths.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", spy)
    return paths


def test_transformers_alone_reads_a_shard_outside_the_directory(sharded):
    """Why `ContainedWeightsMixin` exists: transformers' own `from_pretrained` follows `../` in the index
    (transformers 5.23). If this fails, transformers checks shard names itself and the mixin can go."""
    model, directory, set_shard = sharded
    set_shard("../outside.safetensors")
    # PreTrainedModel's loading itself, past any avemotion override
    loaded = PreTrainedModel.from_pretrained.__func__(VavlForEmotionRecognition, directory)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


@pytest.mark.parametrize("case", ["parent", "absolute", "etc_passwd", "nul", "empty", "subfolder", "windows_drive"])
def test_a_crafted_shard_name_is_refused_before_any_weight_is_read(sharded, safetensors_opened, tmp_path, case):
    _, directory, set_shard = sharded
    name = CRAFTED[case].replace(".onnx", ".safetensors").format(outside=tmp_path / "outside.safetensors")
    set_shard(name)
    checked = _checked_vavl()
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: weight_map\['[^']+'\] = "):
        checked.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: weight_map\['[^']+'\] = "):
        check_model_dir(str(directory))
    assert safetensors_opened == []


@pytest.mark.parametrize("shard", NOT_STRINGS, ids=repr)
def test_a_shard_name_that_is_not_a_string_is_refused(sharded, shard):
    _, directory, set_shard = sharded
    set_shard(shard)
    with pytest.raises(ValueError, match=r"weight_map\['[^']+'\] = .*expected a file name"):
        check_weight_files(directory)


def test_a_weight_index_of_the_wrong_shape_is_refused(sharded):
    _, directory, _ = sharded
    for index, message in [([], "expected a JSON object"), ({"weight_map": []}, "weight_map: expected an object"),
                           ({"weight_map": {}, "metadata": 1}, "metadata: expected an object")]:  # fmt: skip
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match=message):
            check_model_dir(str(directory))


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_shard_messages_do_not_tell_whether_the_outside_file_exists(sharded, safetensors_opened, tmp_path, kind):
    _, directory, set_shard = sharded
    messages = []
    for target in (tmp_path / "outside.safetensors", tmp_path / "missing.safetensors"):
        if kind == "symlink":
            link = directory / "model-link.safetensors"
            link.unlink(missing_ok=True)
            os.symlink(target, link)
            set_shard(link.name)
        else:
            set_shard(f"../{target.name}" if kind == "parent" else str(target))
        with pytest.raises(ValueError, match=OUTSIDE) as error:
            check_model_dir(str(directory))
        messages.append(str(error.value).replace(target.name, "NAME"))
    assert messages[0] == messages[1]
    assert safetensors_opened == []


def test_a_symlinked_single_weight_file_leading_out_is_refused(tmp_path):
    directory = tmp_path / "model"
    VavlForEmotionRecognition(tiny_vavl_config()).save_pretrained(directory)
    (directory / "model.safetensors").rename(tmp_path / "weights.safetensors")
    os.symlink(tmp_path / "weights.safetensors", directory / "model.safetensors")
    with pytest.raises(ValueError, match=rf"'model\.safetensors': {OUTSIDE}"):
        check_weight_files(directory)


def test_a_normal_sharded_checkpoint_still_loads(sharded):
    model, directory, _ = sharded
    checked = _checked_vavl()
    loaded = checked.from_pretrained(directory)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    assert len(check_weight_files(directory)) == len(list(directory.glob("model-*.safetensors")))
    check_model_dir(str(directory))


def test_avemotion_models_check_their_weight_index(sharded, safetensors_opened):
    """The avemotion model classes carry `ContainedWeightsMixin` (through `EmotionModelHubMixin`)."""
    _, directory, set_shard = sharded
    assert issubclass(VavlForEmotionRecognition, ContainedWeightsMixin)
    set_shard("../outside.safetensors")
    for loader in (AutoModelForEmotionRecognition.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=rf"weight_map\[.*'\.\./outside\.safetensors': {OUTSIDE}"):
            loader(directory)
    assert safetensors_opened == []


# -- processors ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def planted(tmp_path):
    """A model directory whose configs point `auto_map`/`processor_class` at a planted module that, if imported,
    writes a marker file."""
    directory = tmp_path / "model"
    VavlForEmotionRecognition(tiny_vavl_config()).save_pretrained(directory)
    AvEmotionProcessor().save_pretrained(directory)
    marker = tmp_path / "PLANTED_CODE_RAN"
    (directory / "planted.py").write_text(
        f"open({str(marker)!r}, 'a').write(__name__)\n"
        "from transformers import PreTrainedConfig, PreTrainedModel, ProcessorMixin\n"
        "class PlantedProcessor(ProcessorMixin):\n    pass\n"
        "class PlantedConfig(PreTrainedConfig):\n    model_type = 'planted'\n"
        "class PlantedModel(PreTrainedModel):\n    config_class = PlantedConfig\n"
    )
    processor = json.loads((directory / "processor_config.json").read_text())
    processor["auto_map"] = {"AutoProcessor": "planted.PlantedProcessor"}
    processor["feature_extractor"]["auto_map"] = {"AutoFeatureExtractor": "planted.PlantedProcessor"}
    processor["image_processor"]["auto_map"] = {"AutoImageProcessor": "planted.PlantedProcessor"}
    (directory / "processor_config.json").write_text(json.dumps(processor))
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {name: "planted.PlantedModel" for name in config["auto_map"]}
    config["auto_map"].update({"AutoConfig": "planted.PlantedConfig", "AutoProcessor": "planted.PlantedProcessor"})
    (directory / "config.json").write_text(json.dumps(config))
    return directory, marker


def _nothing_ran(marker):
    return not marker.exists() and not any(name.split(".")[-1] == "planted" for name in sys.modules)


@pytest.mark.parametrize("trust_remote_code", [None, False])
def test_auto_map_entries_run_nothing_without_trust_remote_code(planted, trust_remote_code):
    directory, marker = planted
    options = {} if trust_remote_code is None else {"trust_remote_code": False}
    assert isinstance(AutoConfig.from_pretrained(directory, **options), VavlConfig)
    assert isinstance(AutoProcessor.from_pretrained(directory, **options), AvEmotionProcessor)
    assert isinstance(AvEmotionProcessor.from_pretrained(directory), AvEmotionProcessor)
    assert isinstance(AutoModelForEmotionRecognition.from_pretrained(directory, **options), VavlForEmotionRecognition)
    assert type(pipeline("audio-visual-emotion", model=str(directory), **options).processor) is AvEmotionProcessor
    assert _nothing_ran(marker)


@pytest.mark.parametrize("trust_remote_code", [None, False])
def test_an_unknown_processor_class_runs_nothing(planted, trust_remote_code):
    """With `processor_class` naming the planted class, transformers has no local class: it asks (and without an
    answer refuses) or, with trust_remote_code=False, falls back to a sub-processor; nothing is imported. The
    `avemotion predict` check names the field."""
    directory, marker = planted
    processor = json.loads((directory / "processor_config.json").read_text())
    (directory / "processor_config.json").write_text(json.dumps({**processor, "processor_class": "PlantedProcessor"}))
    try:
        AutoProcessor.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except ValueError as error:
        assert "trust_remote_code" in str(error)
    assert _nothing_ran(marker)
    with pytest.raises(ValueError, match=r"processor_config\.json: processor_class = 'PlantedProcessor'"):
        check_model_dir(str(directory))
    assert _nothing_ran(marker)


@pytest.mark.parametrize("value", ["/etc/passwd", "../haarcascade.xml", "planted.PlantedDetector", ""])
def test_a_face_detector_setting_naming_a_file_or_class_is_refused(planted, value):
    directory, marker = planted
    processor = json.loads((directory / "processor_config.json").read_text())
    processor["image_processor"]["face_detector"] = value
    (directory / "processor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match=r"processor_config\.json image_processor: face_detector = "):
        AvEmotionProcessor.from_pretrained(directory)
    with pytest.raises(ValueError, match="face_detector = "):
        AutoProcessor.from_pretrained(directory)
    assert _nothing_ran(marker)


def test_a_custom_detector_record_is_never_imported(planted):
    directory, marker = planted
    processor = json.loads((directory / "processor_config.json").read_text())
    processor["image_processor"]["face_detector"] = "custom:planted.PlantedDetector"
    (directory / "processor_config.json").write_text(json.dumps(processor))
    loaded = AvEmotionProcessor.from_pretrained(directory)
    with pytest.raises(ValueError, match="cannot be built from its name"):
        loaded.image_processor.get_face_detector()
    assert _nothing_ran(marker)


def test_a_tokenizer_setting_naming_a_file_outside_is_refused(tmp_path):
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(["i am so happy today", "this is sad"], vocab_size=60)
    trainer.save_model(str(tmp_path))
    directory = tmp_path / "model"
    AvEmotionProcessor(tokenizer=BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))).save_pretrained(directory)
    assert AvEmotionProcessor.from_pretrained(directory).tokenizer is not None  # the normal directory loads
    outside = tmp_path / "outside_vocab.txt"
    outside.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nOUTSIDEWORD\n")
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**settings, "vocab": str(outside)}))
    (directory / "tokenizer.json").unlink()
    # why: transformers alone opens the path the setting names
    assert "OUTSIDEWORD" in AutoTokenizer.from_pretrained(directory).get_vocab()
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: vocab = '.*outside_vocab\.txt': a saved tokenizer"):
        AvEmotionProcessor.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: vocab = "):
        AutoProcessor.from_pretrained(directory)


# -- corpora ------------------------------------------------------------------------------------------------------------


def test_an_iemocap_evaluation_line_naming_a_path_outside_is_an_error_naming_the_line(tmp_path):
    from data_testing import write_wav

    from avemotion.data.iemocap import scan

    root = tmp_path / "iemocap"
    dialog = "Ses01F_impro01"
    write_wav(root / "Session1" / "sentences" / "wav" / dialog / f"{dialog}_F000.wav")
    evaluation = root / "Session1" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    evaluation.parent.mkdir(parents=True)
    outside = tmp_path / "outside_F001.wav"
    write_wav(outside)
    crafted = f"{dialog}_x/../../../../../../outside_F001"  # from Session1/sentences/wav/<dialog>/: tmp_path
    evaluation.write_text(
        f"[0.0 - 0.3]\t{dialog}_F000\tneu\t[2.5, 2.5, 2.5]\n[1.0 - 1.3]\t{crafted}\tneu\t[2.5, 2.5, 2.5]\n"
    )
    with pytest.raises(ValueError, match=rf"{dialog}\.txt:2: utterance = '{dialog}_x/\.\./.*{OUTSIDE}"):
        scan(root, check_media=False)


def test_a_crafted_processor_class_is_refused_by_the_pipeline(tmp_path):
    """`processor_class` naming another transformers class makes AutoProcessor return something that is not an
    AvEmotionProcessor: the pipeline says so instead of running with a bare image processor."""
    from test_pipeline import _save, _vavl
    from transformers import pipeline

    directory = tmp_path / "model"
    _save(_vavl(), directory)
    config_path = directory / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["processor_class"] = "AvEmotionImageProcessor"
    config_path.write_text(json.dumps(config))
    try:
        pipe = pipeline("audio-visual-emotion", model=str(directory))
    except (ValueError, OSError, TypeError) as error:  # refused by transformers while loading, or by the pipeline
        assert "processor" in str(error).lower()
    else:
        pytest.fail(f"loaded with {type(pipe.processor).__name__}")
