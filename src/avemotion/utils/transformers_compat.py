"""The one place where avemotion relies on private parts of `transformers` (names starting with `_`).

Each use is here, behind a small function, and `tests/test_transformers_compat.py` checks that every private name
still exists with the signature and behaviour relied on, failing with the name when a transformers release moves it.
Everything else in the package uses public routes. Layer 0: imports nothing from avemotion.

- `auto_model_class`: a new Auto class (`AutoModelForEmotionRecognition`). transformers has no public factory for
  Auto classes; its own are `_BaseAutoModelClass` subclasses with a `_LazyAutoMapping` as `_model_mapping`.
- `init_processor_subset`: `ProcessorMixin.__init__` for a processor whose optional sub-processor (the tokenizer of an
  audio-visual model) is absent. `ProcessorMixin.__init__` requires every sub-processor named in the subclass'
  `__init__`; this does what it does (set `chat_template`, check and set each given sub-processor) for the ones given.
- `install_config_json_guard` (run at import): `PreTrainedConfig._dict_from_json_file`, which reads every
  `config.json` (AutoConfig, `from_pretrained`, `pipeline`), lets a file holding JSON `null` (or a list, a number)
  through to a `TypeError` later, and a file nested too deep for Python's JSON parser raise a `RecursionError`. The
  guard turns both into `ConfigJSONError`, a `json.JSONDecodeError` naming the file: `get_config_dict` re-raises it
  as transformers' own OSError for an invalid JSON config file (naming the file), as for any other broken JSON.
  Results for valid files are unchanged.
- `install_processor_dict_guard` (run at import): the same for `processor_config.json`, read by the public
  `ProcessorMixin.get_processor_dict`, plus a `processor_class` that names no known class (see its docstring).
- `install_auto_config_error_path` (run at import): `AutoConfig.from_pretrained`'s ValueError for a `model_type` it
  does not know ("... has model type `evil` but Transformers does not recognize this architecture ...") names no
  file; the same ValueError gets the config file's path in front. Nothing else changes.
"""

from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from typing import Any

from transformers import AutoConfig, ProcessorMixin
from transformers.configuration_utils import PreTrainedConfig
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

# The private names this module relies on, for the test: (module, attribute or dotted attribute path).
PRIVATE_NAMES = (
    ("transformers.models.auto.auto_factory", "_BaseAutoModelClass"),
    ("transformers.models.auto.auto_factory", "_LazyAutoMapping"),
    ("transformers.configuration_utils", "PreTrainedConfig._dict_from_json_file"),
)


def auto_model_class(name: str, module: str, doc: str | None = None) -> type:
    """A new, empty Auto model class named `name` (defined in `module`), filled with `cls.register(config_class,
    model_class)`; it has `from_pretrained` / `from_config` like `AutoModel`."""
    mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())
    return type(name, (_BaseAutoModelClass,), {"_model_mapping": mapping, "__module__": module, "__doc__": doc})


def auto_model_mapping(auto_class: type) -> Any:
    """The config class -> model class mapping of an Auto class made by `auto_model_class`."""
    return auto_class._model_mapping


def init_processor_subset(processor: ProcessorMixin, chat_template: Any = None, **sub_processors: Any) -> None:
    """Initialise `processor` as `ProcessorMixin.__init__(processor, **sub_processors)` would, for a subset of its
    sub-processors (each checked against its expected class); the others are set to None. Raises `TypeError` for a
    name that is not one of the processor's sub-processors."""
    names = type(processor).get_attributes()
    unknown = sorted(set(sub_processors) - set(names))
    if unknown:
        raise TypeError(f"Unexpected keyword arguments: {unknown}")
    processor.chat_template = chat_template
    for name in names:
        value = sub_processors.get(name)
        if value is not None:
            processor.check_argument_for_proper_class(name, value)
        setattr(processor, name, value)


class ConfigJSONError(json.JSONDecodeError):
    """A config file that is JSON but not a config (not an object, or nested too deep to parse); the message names
    the file. A `json.JSONDecodeError` (so a `ValueError`): transformers' `get_config_dict` reports it as it reports
    any invalid JSON config file."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.msg, self.doc, self.pos, self.lineno, self.colno = message, "", 0, 1, 1

    def __str__(self) -> str:
        return self.msg

    def __reduce__(self):
        return type(self), (self.msg,)


def _guarded_dict_from_json_file(original: Any) -> Any:
    @functools.wraps(original)
    def _dict_from_json_file(cls, json_file: str | os.PathLike):
        try:
            config_dict = original(cls, json_file)
        except RecursionError as error:
            raise ConfigJSONError(f"{json_file}: nested too deeply to be read as a config") from error
        if not isinstance(config_dict, dict):
            raise ConfigJSONError(f"{json_file}: expected a JSON object, got {type(config_dict).__name__}")
        return config_dict

    _dict_from_json_file.__avemotion_guard__ = True
    return _dict_from_json_file


def install_config_json_guard() -> None:
    """Wrap `PreTrainedConfig._dict_from_json_file` (once): JSON that is not an object, or nested too deep for the
    parser, raises `ConfigJSONError` naming the file instead of a `TypeError` / `RecursionError`."""
    current = PreTrainedConfig.__dict__["_dict_from_json_file"]  # a classmethod object
    function = current.__func__
    if getattr(function, "__avemotion_guard__", False):
        return
    PreTrainedConfig._dict_from_json_file = classmethod(_guarded_dict_from_json_file(function))


install_config_json_guard()

# the text of AutoConfig's error for an unknown `model_type` (checked by the test on every transformers release)
UNKNOWN_MODEL_TYPE_TEXT = "but Transformers does not recognize this architecture"


def _config_file(pretrained_model_name_or_path: Any, kwargs: dict[str, Any]) -> str:
    path = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(path):
        return os.path.join(path, kwargs.get("subfolder") or "", "config.json")
    return path if os.path.isfile(path) else f"{path} (config.json)"


def install_auto_config_error_path() -> None:
    """Wrap `AutoConfig.from_pretrained` (once): its ValueError for an unknown `model_type` is re-raised with the
    config file's path in front (same type, same text after it); every other result and error is unchanged."""
    current = AutoConfig.__dict__["from_pretrained"]  # a classmethod object
    function = current.__func__
    if getattr(function, "__avemotion_guard__", False):
        return

    @functools.wraps(function)
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        try:
            return function(cls, pretrained_model_name_or_path, **kwargs)
        except ValueError as error:
            if UNKNOWN_MODEL_TYPE_TEXT not in str(error):
                raise
            where = _config_file(pretrained_model_name_or_path, kwargs)
            raise ValueError(f"{where}: model_type: {error}") from error

    from_pretrained.__avemotion_guard__ = True
    AutoConfig.from_pretrained = classmethod(from_pretrained)


install_auto_config_error_path()


def _processor_file(pretrained_model_name_or_path: Any, kwargs: dict[str, Any]) -> str:
    path = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(path):
        return os.path.join(path, kwargs.get("subfolder") or "", "processor_config.json")
    return f"{path} (processor_config.json)"


def install_processor_dict_guard() -> None:
    """Wrap `ProcessorMixin.get_processor_dict` (once; AutoProcessor and `pipeline` read every
    `processor_config.json` through it): a file nested too deep for the parser, or not a JSON object, and a
    `processor_class` that is not the name of a processor class transformers or avemotion knows (while the file has
    no `auto_map` for remote code), raise a `ValueError` naming the file instead of a `RecursionError`,
    `AttributeError` or `TypeError` (or transformers falling back to a sub-processor and then refusing it). Results
    for valid files are unchanged."""
    from transformers.models.auto.processing_auto import processor_class_from_name

    function = ProcessorMixin.__dict__["get_processor_dict"].__func__
    if getattr(function, "__avemotion_guard__", False):
        return

    @functools.wraps(function)
    def get_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        where = _processor_file(pretrained_model_name_or_path, kwargs)
        try:
            result = function(cls, pretrained_model_name_or_path, **kwargs)
        except RecursionError as error:
            raise ValueError(f"{where}: not readable JSON (nested too deep)") from error
        except (AttributeError, TypeError) as error:  # a list or a number where an object belongs
            raise ValueError(f"{where}: not a processor configuration (a JSON object) ({error})") from error
        name = result[0].get("processor_class") if isinstance(result[0], dict) else None
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{where}: processor_class = {name!r:.40}: expected a class name")
        if isinstance(name, str) and "auto_map" not in result[0] and processor_class_from_name(name) is None:
            raise ValueError(
                f"{where}: processor_class = {name!r:.60}: no processor class of that name (nothing is imported from "
                "a model directory)"
            )
        return result

    get_processor_dict.__avemotion_guard__ = True
    ProcessorMixin.get_processor_dict = classmethod(get_processor_dict)


install_processor_dict_guard()


__all__ = [
    "PRIVATE_NAMES",
    "ConfigJSONError",
    "auto_model_class",
    "auto_model_mapping",
    "init_processor_subset",
    "install_auto_config_error_path",
    "install_config_json_guard",
    "install_processor_dict_guard",
]
