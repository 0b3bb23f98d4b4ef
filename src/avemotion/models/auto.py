"""`AutoModelForEmotionRecognition` (an Auto class mapping each avemotion config to its task model) and
`EmotionModelHubMixin`, the save-time extras of the avemotion models (`auto_map`, the pipeline's code)."""

from __future__ import annotations

import shutil
from pathlib import Path

from avemotion.models.loading_checks import ContainedWeightsMixin
from avemotion.utils.transformers_compat import auto_model_class, auto_model_mapping

# Filled by `AutoModelForEmotionRecognition.register(...)` when `avemotion` is imported (transformers has no public
# factory for Auto classes: the private base class is isolated in `avemotion.utils.transformers_compat`).
AutoModelForEmotionRecognition = auto_model_class(
    "AutoModelForEmotionRecognition",
    __name__,
    """Instantiates the emotion-recognition task model of a config (`"vavl"` -> `VavlForEmotionRecognition`,
    `"mlfusion"` -> `MultiLevelFusionForEmotionRecognition`), with `from_pretrained` / `from_config`.""",
)
MODEL_FOR_EMOTION_RECOGNITION_MAPPING = auto_model_mapping(AutoModelForEmotionRecognition)


# The pipeline's code is copied next to every saved checkpoint, so that `pipeline(model=dir, trust_remote_code=True)`
# works in a process that never imported avemotion.
PIPELINE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "audio_visual_emotion.py"
CUSTOM_PIPELINES = {
    "audio-visual-emotion": {
        "impl": f"{PIPELINE_FILE.stem}.AudioVisualEmotionPipeline",
        "pt": ["AutoModelForAudioClassification"],
        "tf": [],
        "type": "multimodal",
    }
}


class EmotionModelHubMixin(ContainedWeightsMixin):
    """Save-time extras of the avemotion models, and `from_pretrained`'s check that a local directory's weight
    files stay inside it (`ContainedWeightsMixin`).

    transformers writes `auto_map` only for the class that saves; this maps both the base model (`AutoModel`) and the
    task model (`AutoModelForAudioClassification`), records the pipeline in `custom_pipelines` and copies its code.
    Subclasses name their classes in `_auto_map_classes = (base_class_name, task_class_name)`.
    """

    _auto_map_classes: tuple[str, str]

    def save_pretrained(self, save_directory, *args, **kwargs):
        module = type(self).__module__.rsplit(".", 1)[-1]
        base, task = self._auto_map_classes
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": f"{module}.{base}",
            "AutoModelForAudioClassification": f"{module}.{task}",
        }
        self.config.custom_pipelines = CUSTOM_PIPELINES
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            shutil.copy(PIPELINE_FILE, Path(save_directory) / PIPELINE_FILE.name)
        return result
