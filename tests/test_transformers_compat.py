"""The private transformers APIs avemotion relies on (all in `avemotion.utils.transformers_compat`) still exist and
behave as relied on; the public routes used instead of private ones still exist; and no other package module uses a
private transformers name. A failure names the API that moved."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
from pathlib import Path

import pytest
import transformers
from tokenizers import BertWordPieceTokenizer
from transformers import AutoConfig, BertConfig, BertModel, BertTokenizerFast, ProcessorMixin
from transformers.configuration_utils import PreTrainedConfig

from avemotion import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor
from avemotion.utils import transformers_compat
from avemotion.utils.transformers_compat import auto_model_class, auto_model_mapping, init_processor_subset

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "avemotion"
COMPAT = PACKAGE / "utils" / "transformers_compat.py"
# private attributes of transformers objects the package once used; only the compatibility module may use them
KNOWN_PRIVATE_ATTRIBUTES = (
    "_model_mapping", "_get_feature_vector_attention_mask", "_freeze_parameters", "_get_arguments_from_pretrained",
    "_load_tokenizer_from_pretrained", "_valid_kwargs_names", "_standardize_kwargs", "_set_attributes",
    "_raise_exceptions_for_missing_entries", "_raise_exceptions_for_connection_errors", "_LazyAutoMapping",
    "_BaseAutoModelClass",
)  # fmt: skip


@pytest.mark.parametrize(("module", "name"), transformers_compat.PRIVATE_NAMES)
def test_private_names_still_exist(module, name):
    owner = importlib.import_module(module)
    try:
        functools.reduce(getattr, name.split("."), owner)
    except AttributeError:
        pytest.fail(f"transformers moved the private API {module}.{name}")


def test_config_json_guard_wraps_the_config_json_reader(tmp_path):
    """`PreTrainedConfig._dict_from_json_file` is a classmethod taking the file that `get_config_dict` calls (a
    transformers release that reads config.json elsewhere fails here), and the guard is installed on it."""
    raw = PreTrainedConfig.__dict__.get("_dict_from_json_file")
    assert isinstance(raw, classmethod), "PreTrainedConfig._dict_from_json_file is no longer a classmethod"
    assert getattr(raw.__func__, "__avemotion_guard__", False), "the config JSON guard is not installed"
    assert list(inspect.signature(raw.__func__.__wrapped__).parameters) == ["cls", "json_file"]
    source = inspect.getsource(PreTrainedConfig._get_config_dict)
    assert "cls._dict_from_json_file(" in source and "json.JSONDecodeError" in source, (
        "PreTrainedConfig._get_config_dict no longer reads config.json through _dict_from_json_file"
    )
    transformers_compat.install_config_json_guard()  # idempotent: wraps once
    assert not hasattr(PreTrainedConfig._dict_from_json_file.__wrapped__, "__wrapped__")
    # valid files: results unchanged
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps({"model_type": "bert", "x": "Infinity", "nested": {"a": [1, 2]}}))
    assert BertConfig._dict_from_json_file(valid) == raw.__func__.__wrapped__(BertConfig, valid)
    for text, reason in (("null", "got NoneType"), ("[1, 2]", "got list"), ("[" * 100_000 + "]" * 100_000, "deep")):
        directory = tmp_path / f"bad{len(text)}"
        directory.mkdir()
        (directory / "config.json").write_text(text)
        with pytest.raises(transformers_compat.ConfigJSONError, match=reason) as caught:
            BertConfig.from_json_file(directory / "config.json")
        assert str(directory / "config.json") in str(caught.value)
        with pytest.raises(OSError, match="config.json"):  # transformers' own report of an invalid JSON config
            AutoConfig.from_pretrained(directory)


def _tiny_bert() -> BertConfig:
    return BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def test_auto_model_class_registers_builds_and_loads(tmp_path):
    """`_BaseAutoModelClass` with a `_LazyAutoMapping` as `_model_mapping`: register, from_config, from_pretrained."""
    auto = auto_model_class("AutoModelForTesting", __name__, "doc")
    assert auto.__name__ == "AutoModelForTesting" and auto.__module__ == __name__ and auto.__doc__ == "doc"
    assert len(auto_model_mapping(auto)) == 0, "a new Auto class starts empty"
    auto.register(BertConfig, BertModel, exist_ok=True)  # a transformers config needs exist_ok (as avemotion uses)
    assert auto_model_mapping(auto)[BertConfig] is BertModel
    model = auto.from_config(_tiny_bert())
    assert type(model) is BertModel
    model.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path)
    assert type(loaded) is BertModel
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        auto_model_class("AutoModelEmpty", __name__).from_config(_tiny_bert())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(["i am so happy today", "this is sad"], vocab_size=40)
    folder = tmp_path_factory.mktemp("vocab")
    trainer.save_model(str(folder))
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"))


def test_processor_subset_init_matches_processor_mixin_init(tokenizer):
    """`init_processor_subset` stands in for `ProcessorMixin.__init__`: it must set the same attributes (a release
    that sets more in `ProcessorMixin.__init__` fails here)."""
    extractor, frames = AvEmotionFeatureExtractor(), AvEmotionImageProcessor()
    full = AvEmotionProcessor(extractor, frames, tokenizer)  # through ProcessorMixin.__init__
    subset = AvEmotionProcessor(extractor, frames)  # through init_processor_subset
    assert set(vars(full)) == set(vars(subset)), "ProcessorMixin.__init__ sets attributes init_processor_subset misses"
    assert subset.tokenizer is None and subset.feature_extractor is extractor and subset.chat_template is None
    assert AvEmotionProcessor.get_attributes() == ["feature_extractor", "image_processor", "tokenizer"]
    with pytest.raises(TypeError, match="Received a"):  # the sub-processors' classes are still checked
        init_processor_subset(AvEmotionProcessor.__new__(AvEmotionProcessor), feature_extractor=frames)
    with pytest.raises(TypeError, match="Unexpected keyword arguments"):
        init_processor_subset(AvEmotionProcessor.__new__(AvEmotionProcessor), decoder=extractor)


@pytest.mark.parametrize(
    ("owner", "name", "parameters"),
    [
        (transformers, "PilBackend", None),
        (transformers.utils, "has_file", ("path_or_repo", "filename", "revision", "token", "local_files_only")),
        (transformers.utils, "resolve_revision", ("token", "local_files_only", "cache_dir")),
        (ProcessorMixin, "get_processor_dict", ("pretrained_model_name_or_path",)),
        (ProcessorMixin, "from_args_and_dict", ("args", "processor_dict")),
        (ProcessorMixin, "check_argument_for_proper_class", ("argument_name", "argument")),
        (ProcessorMixin, "get_attributes", ()),
    ],
)
def test_public_routes_used_instead_of_private_ones_exist(owner, name, parameters):
    assert hasattr(owner, name), f"{getattr(owner, '__name__', owner)}.{name} is gone"
    if parameters is not None:
        signature = inspect.signature(getattr(owner, name))
        missing = [p for p in parameters if p not in signature.parameters]
        assert not missing, f"{name} lost the parameters {missing}"
    assert transformers.utils.PROCESSOR_NAME == "processor_config.json"


def _private_uses(path: Path) -> list[str]:
    """`_Name`s imported from transformers, and the known private attributes, used in one source file."""
    tree, found = ast.parse(path.read_text(), str(path)), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers":
            found += [alias.name for alias in node.names if alias.name.startswith("_")]
            found += [node.module] if any(part.startswith("_") for part in node.module.split(".")) else []
        elif isinstance(node, ast.Attribute) and node.attr in KNOWN_PRIVATE_ATTRIBUTES:
            found.append(node.attr)
        elif isinstance(node, ast.keyword) and node.arg in KNOWN_PRIVATE_ATTRIBUTES:
            found.append(node.arg)
    return found


def test_no_private_transformers_api_outside_the_compatibility_module():
    uses = {
        str(path.relative_to(PACKAGE)): _private_uses(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != COMPAT and _private_uses(path)
    }
    assert not uses, f"private transformers APIs outside avemotion.utils.transformers_compat: {uses}"
    assert _private_uses(COMPAT), "the checker finds the compatibility module's own private uses"


def test_auto_config_unknown_model_type_error_names_the_file(tmp_path):
    """AutoConfig's ValueError for an unknown `model_type` still has the text the wrapper recognises (a transformers
    release that rewords it fails here), and the wrapped one names the config file; known types load unchanged."""
    raw = AutoConfig.__dict__["from_pretrained"]
    assert isinstance(raw, classmethod) and getattr(raw.__func__, "__avemotion_guard__", False)
    assert list(inspect.signature(raw.__func__.__wrapped__).parameters) == ["cls", "pretrained_model_name_or_path",
                                                                            "kwargs"]  # fmt: skip
    transformers_compat.install_auto_config_error_path()  # idempotent: wraps once
    assert not hasattr(AutoConfig.from_pretrained.__wrapped__, "__wrapped__")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "evil"}))
    with pytest.raises(ValueError, match=transformers_compat.UNKNOWN_MODEL_TYPE_TEXT):
        raw.__func__.__wrapped__(AutoConfig, str(tmp_path))
    with pytest.raises(ValueError, match="config.json: model_type: .*`evil`") as caught:
        AutoConfig.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(caught.value)
    _tiny_bert().save_pretrained(tmp_path / "bert")
    loaded = AutoConfig.from_pretrained(tmp_path / "bert")
    assert type(loaded) is BertConfig and loaded.to_diff_dict() == _tiny_bert().to_diff_dict()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deep"),
        ("[1, 2]", "not a processor configuration"),
        ('{"processor_class": 5}', "processor_class = 5: expected a class name"),
        ('{"processor_class": "EvilProcessor"}', "no processor class of that name"),
        ('{"processor_class": "os.system"}', "no processor class of that name"),
    ],
)
def test_processor_dict_guard_names_the_file(tmp_path, content, match):
    """AutoProcessor (and so `pipeline`) reads processor_config.json through `ProcessorMixin.get_processor_dict`:
    a crafted one is a ValueError naming the file, not a RecursionError / AttributeError / TypeError."""
    from transformers import AutoProcessor

    (tmp_path / "processor_config.json").write_text(content)
    with pytest.raises(ValueError, match=rf"processor_config.json: .*{match}"):
        AutoProcessor.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text('{"processor_class": "AvEmotionProcessor"}')
    processor_dict, _ = ProcessorMixin.get_processor_dict(tmp_path)
    assert processor_dict["processor_class"] == "AvEmotionProcessor"
