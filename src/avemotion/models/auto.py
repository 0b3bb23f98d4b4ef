"""`AutoModelForEmotionRecognition`: an Auto class mapping each avemotion config to its task model."""

from __future__ import annotations

from collections import OrderedDict

from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

# Filled by `AutoModelForEmotionRecognition.register(...)` when `avemotion` is imported.
MODEL_FOR_EMOTION_RECOGNITION_MAPPING = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


class AutoModelForEmotionRecognition(_BaseAutoModelClass):
    """Instantiates the emotion-recognition task model of a config (`"vavl"` -> `VavlForEmotionRecognition`,
    `"mlfusion"` -> `MultiLevelFusionForEmotionRecognition`), with `from_pretrained` / `from_config`."""

    _model_mapping = MODEL_FOR_EMOTION_RECOGNITION_MAPPING
