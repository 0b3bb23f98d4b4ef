"""The one place where avemotion relies on private parts of `transformers` (names starting with `_`).

Each use is here, behind a small function, and `tests/test_transformers_compat.py` checks that every private name
still exists with the signature and behaviour relied on, failing with the name when a transformers release moves it.
Everything else in the package uses public routes. Layer 0: imports nothing from avemotion.

- `auto_model_class`: a new Auto class (`AutoModelForEmotionRecognition`). transformers has no public factory for
  Auto classes; its own are `_BaseAutoModelClass` subclasses with a `_LazyAutoMapping` as `_model_mapping`.
- `init_processor_subset`: `ProcessorMixin.__init__` for a processor whose optional sub-processor (the tokenizer of an
  audio-visual model) is absent. `ProcessorMixin.__init__` requires every sub-processor named in the subclass'
  `__init__`; this does what it does (set `chat_template`, check and set each given sub-processor) for the ones given.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from transformers import ProcessorMixin
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

# The private names this module relies on, for the test: (module, attribute).
PRIVATE_NAMES = (
    ("transformers.models.auto.auto_factory", "_BaseAutoModelClass"),
    ("transformers.models.auto.auto_factory", "_LazyAutoMapping"),
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


__all__ = ["PRIVATE_NAMES", "auto_model_class", "auto_model_mapping", "init_processor_subset"]
