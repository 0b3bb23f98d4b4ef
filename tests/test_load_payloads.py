"""Payloads planted where the readers of `tests/test_load_inventory.py` meet them: pickled weights whose `__reduce__`
writes a marker file, an `auto_map` naming a planted module that writes the marker when imported, pickles and crafted
`state.json` files in a saved dataset, deep and non-object JSON. In every case the marker is never written, and the
outcome is a clear error naming the file or directory, or a documented safe load (the planted entries ignored).

"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import pickle
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from mlfusion_testing import tiny_bert_config
from test_pipeline import _save, _vavl
from transformers import BertModel, EfficientNetImageProcessor, EfficientNetModel, Wav2Vec2Model
from vavl_testing import tiny_efficientnet_config, tiny_wav2vec2_config

from avemotion import (
    AvEmotionFeatureExtractor,
    AvEmotionImageProcessor,
    AvEmotionProcessor,
    MultiLevelFusionForEmotionRecognition,
    VavlForEmotionRecognition,
)
from avemotion.data import corpus_metadata
from avemotion.data.common import METADATA_PREFIX
from avemotion.models.vavl import convert_vavl_original_checkpoint as convert_vavl
from avemotion.training import cli_push, hub
from avemotion.training.cli_train import load_dataset_dict, load_processor

DEEP = "[" * 100_000 + "]" * 100_000  # nested past any recursion limit
NOT_OBJECTS = ["[1, 2]", "3", '"text"', "null"]
BAD_JSON = ["{bad", "", "\xff\xfe"]


class _Marker:
    """A pickled object whose unpickling runs `open(marker, "w")`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a planted payload ran"


def _plant_pickled_weights(directory: Path, marker: Path) -> None:
    """Replace the safetensors weights by a `pytorch_model.bin` whose unpickling writes `marker`."""
    for file in directory.glob("*.safetensors"):
        file.unlink()
    torch.save({"weight": _Marker(marker)}, directory / "pytorch_model.bin")


def _plant_module(directory: Path, marker: Path, body: str) -> None:
    """`evil.py` in `directory`: importing it writes `marker` (and then defines `body`)."""
    (directory / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n{body}\n")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    out = {"audio": root / "audio", "visual": root / "visual", "text": root / "text"}
    torch.manual_seed(0)
    Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained(out["audio"])
    EfficientNetModel(tiny_efficientnet_config()).save_pretrained(out["visual"])
    BertModel(tiny_bert_config()).save_pretrained(out["text"])
    return out


@pytest.fixture
def backbone(backbones, tmp_path):
    def copy(kind: str) -> Path:
        target = tmp_path / kind
        shutil.copytree(backbones[kind], target)
        return target

    return copy


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return Path(_save(_vavl(), tmp_path_factory.mktemp("model") / "model"))


@pytest.fixture
def saved(model_dir, tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


# -- backbones: VavlPreTrainedModel.from_backbones, MultiLevelFusionPreTrainedModel.from_backbones ----------------

FROM_BACKBONES = {
    "vavl-audio": lambda path: VavlForEmotionRecognition.from_backbones(audio=str(path)),
    "vavl-visual": lambda path: VavlForEmotionRecognition.from_backbones(visual=str(path)),
    "mlfusion-audio": lambda path: MultiLevelFusionForEmotionRecognition.from_backbones(audio=str(path)),
    "mlfusion-text": lambda path: MultiLevelFusionForEmotionRecognition.from_backbones(text=str(path)),
}
KIND_OF = {"vavl-audio": "audio", "vavl-visual": "visual", "mlfusion-audio": "audio", "mlfusion-text": "text"}


@pytest.mark.parametrize("entry", sorted(FROM_BACKBONES))
def test_pickled_backbone_weights_never_run(entry, backbone, marker):
    """transformers 5 reads a `pytorch_model.bin` with `torch.load(weights_only=True)`: the payload's global
    (`builtins.open`) is refused before it is resolved, and the load fails."""
    directory = backbone(KIND_OF[entry])
    _plant_pickled_weights(directory, marker)
    with pytest.raises((pickle.UnpicklingError, ValueError, OSError)):
        FROM_BACKBONES[entry](directory)


@pytest.mark.parametrize("entry", ["vavl-audio", "mlfusion-text"])
def test_pickled_backbone_weights_are_a_clear_error(entry, backbone, marker):
    directory = backbone(KIND_OF[entry])
    _plant_pickled_weights(directory, marker)
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        FROM_BACKBONES[entry](directory)


@pytest.mark.parametrize("entry", sorted(FROM_BACKBONES))
def test_backbone_auto_map_is_not_imported(entry, backbone, marker):
    """A backbone config with an `auto_map` to a planted module: the concrete classes (`Wav2Vec2Model`,
    `EfficientNetModel`) never read it, and `AutoModel` prefers the library's class of the known `model_type`; the
    backbone loads and the module is never imported."""
    directory = backbone(KIND_OF[entry])
    _plant_module(directory, marker, "from transformers import AutoConfig as EvilConfig, AutoModel as EvilModel")
    _edit_json(directory / "config.json", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    model = FROM_BACKBONES[entry](directory)
    assert type(model).__module__.startswith("avemotion.")


def test_backbone_of_an_unknown_type_with_auto_map_is_refused(backbone, marker):
    """No `model_type`: AutoModel would need the planted code; without trust_remote_code it refuses, naming the
    directory (stdin is not a terminal here: see the xfail test below for the interactive case)."""
    directory = backbone("audio")
    _plant_module(directory, marker, "from transformers import AutoConfig as EvilConfig, AutoModel as EvilModel")
    _edit_json(
        directory / "config.json",
        model_type=None,
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    )
    with pytest.raises(ValueError, match=str(directory)):
        MultiLevelFusionForEmotionRecognition.from_backbones(audio=str(directory))


@pytest.mark.parametrize("reader", ["from_backbones", "cli_train", "hub"])
def test_answering_yes_to_transformers_prompt_runs_nothing(reader, backbone, saved, tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")  # a user at a terminal who answers "y"
    if reader == "from_backbones":
        directory = backbone("audio")
        _plant_module(directory, marker, "from transformers import AutoConfig as EvilConfig, AutoModel as EvilModel")
        _edit_json(
            directory / "config.json",
            model_type=None,
            auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
        )
        call = lambda: MultiLevelFusionForEmotionRecognition.from_backbones(audio=str(directory))  # noqa: E731
    else:
        directory = _feature_extractor_dir(tmp_path / "fe")
        _plant_module(directory, marker, "from avemotion import AvEmotionFeatureExtractor as EvilFE")
        _edit_json(
            directory / "preprocessor_config.json",
            feature_extractor_type="EvilFE",
            auto_map={"AutoFeatureExtractor": "evil.EvilFE"},
        )
        call = (
            (lambda: load_processor(str(directory)))
            if reader == "cli_train"
            else lambda: hub._load_processor(directory)
        )
    try:
        call()
    except Exception:
        pass
    assert not marker.exists(), "the planted module was imported"


# -- processors: from_backbones, from_backbone, _sub_processors, cli_train.load_processor, hub._load_processor -----


def _feature_extractor_dir(directory: Path) -> Path:
    AvEmotionFeatureExtractor(sampling_rate=16000).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("text", [DEEP, *NOT_OBJECTS, *BAD_JSON], ids=["deep", *NOT_OBJECTS, "bad", "empty", "bytes"])
def test_processor_from_backbones_with_a_crafted_audio_settings_file(text, backbone, marker):
    """`AvEmotionProcessor.from_backbones(audio=DIR)` reads DIR's `preprocessor_config.json`
    (`get_feature_extractor_dict`): JSON only; a broken one is an error naming the file."""
    directory = backbone("audio")
    (directory / "preprocessor_config.json").write_bytes(b"\xff\xfe" if text == "\xff\xfe" else text.encode())
    with pytest.raises(ValueError) as error:
        AvEmotionProcessor.from_backbones(audio=str(directory))
    assert str(directory) in str(error.value) and "preprocessor_config.json" in str(error.value)


def test_processor_from_backbones_ignores_auto_map_and_class_names(backbone, marker):
    """Only `sampling_rate` and `padding_value` are taken from the audio backbone's settings; an `auto_map` or a
    feature extractor class named there is never resolved."""
    directory = backbone("audio")
    _plant_module(directory, marker, "EvilFE = None")
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "EvilFE",
                "auto_map": {"AutoFeatureExtractor": "evil.EvilFE"},
                "sampling_rate": 16000,
                "padding_value": 0.0,
            }
        )  # fmt: skip
    )
    processor = AvEmotionProcessor.from_backbones(audio=str(directory))
    assert processor.feature_extractor.sampling_rate == 16000


@pytest.mark.parametrize("text", [DEEP, *NOT_OBJECTS, "{bad"], ids=["deep", *NOT_OBJECTS, "bad"])
def test_image_processor_from_backbone_with_a_crafted_settings_file(text, backbone, marker):
    directory = backbone("visual")
    (directory / "preprocessor_config.json").write_text(text)
    with pytest.raises(ValueError) as error:
        AvEmotionImageProcessor.from_backbone(str(directory))
    assert str(directory) in str(error.value) and "preprocessor_config.json" in str(error.value)


def test_image_processor_from_backbone_ignores_auto_map(backbone, marker):
    """`from_backbone` takes the size, rescale factor, mean and std of the saved dict; its `auto_map` and
    `image_processor_type` are never resolved."""
    directory = backbone("visual")
    EfficientNetImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    _plant_module(directory, marker, "EvilIP = None")
    _edit_json(
        directory / "preprocessor_config.json",
        image_processor_type="EvilIP",
        auto_map={"AutoImageProcessor": "evil.EvilIP"},
        do_center_crop=False,
        include_top=False,
        rescale_offset=False,
    )
    processor = AvEmotionImageProcessor.from_backbone(str(directory))
    assert (processor.size["height"], processor.size["width"]) == (32, 32)


@pytest.mark.parametrize("text", [DEEP, *NOT_OBJECTS, "{bad"], ids=["deep", *NOT_OBJECTS, "bad"])
def test_sub_processor_feature_extractor_file_is_checked(text, saved, marker):
    """A processor directory whose `processor_config.json` has no `feature_extractor` section: the feature extractor
    is read from `preprocessor_config.json` (`AvEmotionFeatureExtractor.from_pretrained`): an error naming the
    directory."""
    _edit_json(saved / "processor_config.json", feature_extractor=None)
    (saved / "preprocessor_config.json").write_text(text)
    with pytest.raises((ValueError, OSError)) as error:
        AvEmotionProcessor.from_pretrained(saved)
    assert str(saved) in str(error.value)


def test_sub_processor_feature_extractor_auto_map_is_not_imported(saved, marker):
    _edit_json(saved / "processor_config.json", feature_extractor=None)
    _plant_module(saved, marker, "from avemotion import AvEmotionFeatureExtractor as EvilFE")
    settings = AvEmotionFeatureExtractor(sampling_rate=16000).to_dict()
    settings |= {"feature_extractor_type": "EvilFE", "auto_map": {"AutoFeatureExtractor": "evil.EvilFE"}}
    (saved / "preprocessor_config.json").write_text(json.dumps(settings))
    processor = AvEmotionProcessor.from_pretrained(saved)
    assert type(processor.feature_extractor) is AvEmotionFeatureExtractor


PROCESSOR_READERS = {
    "cli_train": lambda path: load_processor(str(path), required=True),
    "hub": lambda path: hub._load_processor(Path(path)),
}


@pytest.mark.parametrize("reader", sorted(PROCESSOR_READERS))
def test_processor_auto_map_is_not_imported(reader, saved, marker):
    """`processor_config.json` with an `auto_map` to a planted module, next to our own `processor_class`: the
    library's class is used (local code wins without trust_remote_code); the module is never imported."""
    _plant_module(saved, marker, "from avemotion import AvEmotionProcessor as EvilProcessor")
    _edit_json(saved / "processor_config.json", auto_map={"AutoProcessor": "evil.EvilProcessor"})
    assert type(PROCESSOR_READERS[reader](saved)) is AvEmotionProcessor


@pytest.mark.parametrize("reader", sorted(PROCESSOR_READERS))
def test_an_unknown_processor_class_with_auto_map_is_not_imported(reader, saved, marker):
    _plant_module(saved, marker, "from avemotion import AvEmotionProcessor as EvilProcessor")
    _edit_json(
        saved / "processor_config.json",
        processor_class="EvilProcessor",
        auto_map={"AutoProcessor": "evil.EvilProcessor"},
    )
    with pytest.raises(ValueError) as error:  # never a silent fall-back to the feature extractor alone
        PROCESSOR_READERS[reader](saved)
    assert str(saved) in str(error.value)


@pytest.mark.parametrize("reader", sorted(PROCESSOR_READERS))
@pytest.mark.parametrize("key", ["feature_extractor_type", "image_processor_type"])
def test_an_unknown_feature_extractor_type_with_auto_map_is_not_imported(reader, key, tmp_path, marker):
    directory = _feature_extractor_dir(tmp_path / "fe")
    _plant_module(directory, marker, "from avemotion import AvEmotionFeatureExtractor as Evil")
    auto = "AutoFeatureExtractor" if key == "feature_extractor_type" else "AutoImageProcessor"
    _edit_json(
        directory / "preprocessor_config.json",
        **{"feature_extractor_type": None, key: "Evil"},
        auto_map={auto: "evil.Evil"},
    )
    with pytest.raises(ValueError) as error:
        PROCESSOR_READERS[reader](directory)
    assert str(directory) in str(error.value) or "model_type" in str(error.value)


@pytest.mark.parametrize("reader", sorted(PROCESSOR_READERS))
@pytest.mark.parametrize("text", [DEEP, *NOT_OBJECTS, "{bad"], ids=["deep", *NOT_OBJECTS, "bad"])
def test_a_crafted_preprocessor_config_runs_nothing(reader, text, tmp_path, marker):
    directory = _feature_extractor_dir(tmp_path / "fe")
    (directory / "preprocessor_config.json").write_text(text)
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        PROCESSOR_READERS[reader](directory)


@pytest.mark.parametrize("reader", sorted(PROCESSOR_READERS))
@pytest.mark.parametrize("text", [DEEP, "[1, 2]"], ids=["deep", "list"])
def test_a_crafted_preprocessor_config_is_a_clear_error(reader, text, tmp_path):
    directory = _feature_extractor_dir(tmp_path / "fe")
    (directory / "preprocessor_config.json").write_text(text)
    with pytest.raises(ValueError, match=str(directory)):
        PROCESSOR_READERS[reader](directory)


# -- datasets: cli_train.load_dataset_dict, cli_evaluate.run, data.common.corpus_metadata ----------------------


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    data = datasets.Dataset.from_dict({"x": [1.0, 2.0], "label": [0, 1]})
    directory = tmp_path / "dataset"
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(directory))
    return directory


def _corpus_args(directory: Path) -> argparse.Namespace:
    return argparse.Namespace(dataset=str(directory), data_dir=None)


def test_a_planted_pickle_in_a_saved_dataset_is_never_read(dataset_dir, marker):
    """`load_from_disk` reads `state.json`, `dataset_info.json` and the Arrow files they name; a pickle next to
    them (under the names older `datasets` used for caches and indices) is never opened."""
    for name in ("cache.pkl", "indices.pkl", "train/data.pkl", "train/state.pkl"):
        with open(dataset_dir / name, "wb") as file:
            pickle.dump(_Marker(marker), file)
    corpus = load_dataset_dict(_corpus_args(dataset_dir))
    assert corpus["train"]["x"] == [1.0, 2.0]


@pytest.mark.parametrize(
    "change",
    ["fingerprint", "format_type", "data_file_outside", "data_file_pickle", "features_type", "deep"],
)
def test_a_crafted_dataset_state_runs_nothing(change, dataset_dir, tmp_path, marker):
    """A crafted `state.json` / `dataset_info.json`: a format naming a module, a data file that is a pickle or lies
    outside, a feature `_type` naming a class, deep JSON. Nothing is imported or unpickled: `datasets` builds
    features only from its own registry and reads Arrow IPC files (a pickle is not one), so the load fails or the
    crafted value is left as data."""
    split = dataset_dir / "train"
    state = json.loads((split / "state.json").read_text())
    info = json.loads((split / "dataset_info.json").read_text())
    if change == "fingerprint":
        state["_fingerprint"] = "__import__('os').system('touch x')"
    elif change == "format_type":
        state["_format_type"] = "evil.Formatter"
        state["_format_kwargs"] = {"__reduce__": "os.system"}
    elif change == "data_file_outside":
        shutil.copy(next(split.glob("*.arrow")), tmp_path / "outside.arrow")
        state["_data_files"] = [{"filename": "../../outside.arrow"}]
    elif change == "data_file_pickle":
        with open(split / "evil.arrow", "wb") as file:
            pickle.dump(_Marker(marker), file)
        state["_data_files"] = [{"filename": "evil.arrow"}]
    elif change == "features_type":
        _plant_module(dataset_dir, marker, "class Evil: pass")
        info["features"]["x"] = {"_type": "evil.Evil"}
    (split / "state.json").write_text(json.dumps(state) if change != "deep" else DEEP)
    (split / "dataset_info.json").write_text(json.dumps(info))
    if change == "data_file_outside":  # datasets would follow it: refused first
        with pytest.raises(ValueError, match=r"state.json: _data_files\[0\].filename = '../../outside.arrow'"):
            load_dataset_dict(_corpus_args(dataset_dir))
    elif change in ("fingerprint", "features_type", "format_type"):  # read as data or refused by datasets itself
        try:
            corpus = load_dataset_dict(_corpus_args(dataset_dir))
        except (ValueError, TypeError, KeyError) as error:  # datasets' own refusal of a format or feature type
            assert "evil" in str(error).lower() or "format" in str(error).lower()
        else:
            assert corpus["train"]["x"] == [1.0, 2.0]
    else:  # a pickle posing as Arrow, deep JSON: a clear error
        with pytest.raises((ValueError, OSError)):
            load_dataset_dict(_corpus_args(dataset_dir))


def test_evaluate_reads_a_crafted_dataset_without_running_anything(dataset_dir, saved, marker, tmp_path):
    """`avemotion evaluate --dataset DIR`: the same reader (`load_from_disk`) on a directory with planted pickles;
    a directory that is not a saved dataset is an error naming it."""
    from avemotion.training import cli_evaluate

    with open(dataset_dir / "train" / "cache.pkl", "wb") as file:
        pickle.dump(_Marker(marker), file)
    parser = argparse.ArgumentParser()
    cli_evaluate.add_arguments(parser)
    not_a_dataset = tmp_path / "not_a_dataset"
    not_a_dataset.mkdir()
    with open(not_a_dataset / "state.pkl", "wb") as file:
        pickle.dump(_Marker(marker), file)
    args = parser.parse_args(["--model", str(saved), "--dataset", str(not_a_dataset), "--output", str(tmp_path / "r")])
    with pytest.raises((FileNotFoundError, ValueError, OSError)) as error:
        cli_evaluate.run(args)
    assert "not_a_dataset" in str(error.value)


@pytest.mark.parametrize(
    "line", [DEEP, *NOT_OBJECTS, "{bad", '{"__class__": "os.system"}'], ids=["deep", *NOT_OBJECTS, "bad", "dunder"]
)
def test_corpus_metadata_of_a_crafted_description(line, marker):
    """The metadata line of a dataset's description is parsed with `json.loads`: JSON values only; a crafted one is
    returned as data or raises while parsing (nothing is built from it)."""
    data = datasets.Dataset.from_dict({"x": [1]}, info=datasets.DatasetInfo(description=METADATA_PREFIX + line))
    if line.startswith("{") and line != "{bad":
        assert isinstance(corpus_metadata(data), dict)  # plain data: a dunder key is only a key
    else:
        with pytest.raises(ValueError, match="metadata"):
            corpus_metadata(data)


@pytest.mark.parametrize("line", [DEEP, "[1, 2]", "{bad"], ids=["deep", "list", "bad"])
def test_corpus_metadata_of_a_crafted_description_is_a_clear_error(line):
    data = datasets.Dataset.from_dict({"x": [1]}, info=datasets.DatasetInfo(description=METADATA_PREFIX + line))
    with pytest.raises(ValueError, match="metadata"):
        corpus_metadata(data)


# -- JSON files: convert-vavl --audio-backbone-config, cli_push._read_json, hub.sanitize_saved_configs ---------


@pytest.mark.parametrize("text", [DEEP, *NOT_OBJECTS, "{bad"], ids=["deep", *NOT_OBJECTS, "bad"])
def test_convert_vavl_audio_backbone_config_is_read_as_json(text, tmp_path, marker):
    """`--audio-backbone-config FILE` is read with `Wav2Vec2Config.from_json_file` (json.loads, then the config's
    constructor): it is read before any checkpoint file is opened, and nothing is imported from it."""
    config = tmp_path / "config.json"
    config.write_text(text)
    args = convert_vavl.add_arguments(argparse.ArgumentParser()).parse_args(
        [
            "--checkpoint_dir",
            str(tmp_path / "none"),
            "--output_dir",
            str(tmp_path / "out"),
            "--preset",
            "crema-d",
            "--audio-backbone-config",
            str(config),
        ]  # fmt: skip
    )
    with pytest.raises(ValueError, match="config.json"):
        convert_vavl.run(args)
    assert not (tmp_path / "out").exists()


def test_convert_vavl_audio_backbone_config_auto_map_is_not_imported(tmp_path, marker):
    _plant_module(tmp_path, marker, "from transformers import Wav2Vec2Config as EvilConfig")
    config = tmp_path / "config.json"
    tiny_wav2vec2_config().to_json_file(config)
    _edit_json(config, auto_map={"AutoConfig": "evil.EvilConfig"})
    args = convert_vavl.add_arguments(argparse.ArgumentParser()).parse_args(
        [
            "--checkpoint_dir",
            str(tmp_path / "none"),
            "--output_dir",
            str(tmp_path / "out"),
            "--preset",
            "crema-d",
            "--audio-backbone-config",
            str(config),
        ]  # fmt: skip
    )
    with pytest.raises((ValueError, OSError)) as error:  # the missing checkpoint: the config itself was data
        convert_vavl.run(args)
    assert "none" in str(error.value)


@pytest.mark.parametrize("text", ["{bad"], ids=["bad"])
def test_convert_vavl_audio_backbone_config_is_a_clear_error(text, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(text)
    args = convert_vavl.add_arguments(argparse.ArgumentParser()).parse_args(
        [
            "--checkpoint_dir",
            str(tmp_path),
            "--output_dir",
            str(tmp_path / "out"),
            "--preset",
            "crema-d",
            "--audio-backbone-config",
            str(config),
        ]  # fmt: skip
    )
    with pytest.raises((ValueError, convert_vavl.ConversionError), match="config.json"):
        convert_vavl.run(args)


@pytest.mark.parametrize("text", [DEEP, *NOT_OBJECTS, "{bad", "\udcff"], ids=["deep", *NOT_OBJECTS, "bad", "bytes"])
def test_push_metrics_file_is_read_as_json(text, tmp_path, marker):
    """`avemotion push --metrics FILE`: `_read_json` gives the JSON value or a `ValueError` naming the file."""
    path = tmp_path / "test_results.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError) as error:
        cli_push._read_json(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("text", [DEEP, "{bad"], ids=["deep", "bad"])
def test_sanitize_saved_configs_of_a_crafted_file(text, saved, marker):
    """`push_to_hub` rewrites the `*config.json` files of the copy it uploads; a crafted one (anywhere below the
    folder, e.g. `extra/evil_config.json`) is parsed as JSON only."""
    (saved / "extra").mkdir()
    (saved / "extra" / "evil_config.json").write_text(text)
    with pytest.raises(ValueError, match="evil_config.json: not readable JSON"):
        hub.sanitize_saved_configs(saved)


def test_sanitize_saved_configs_leaves_auto_map_and_dunders_as_data(saved, marker):
    _plant_module(saved, marker, "EvilConfig = None")
    _edit_json(saved / "config.json", auto_map={"AutoConfig": "evil.EvilConfig"}, __class__="os.system")
    hub.sanitize_saved_configs(saved)
    data = json.loads((saved / "config.json").read_text())
    assert data["auto_map"] == {"AutoConfig": "evil.EvilConfig"} and data["__class__"] == "os.system"
    assert os.path.exists(saved / "evil.py")
