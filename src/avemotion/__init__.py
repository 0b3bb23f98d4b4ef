"""avemotion: multimodal emotion recognition for the Hugging Face ecosystem.

Importing the package registers its configs and models with `transformers`' Auto classes
(`AutoConfig`, `AutoModel`, `AutoModelForAudioClassification`) and with `AutoModelForEmotionRecognition`.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoProcessor,
)

from .models.auto import AutoModelForEmotionRecognition
from .models.mlfusion import MultiLevelFusionConfig, MultiLevelFusionForEmotionRecognition, MultiLevelFusionModel
from .models.vavl import VavlConfig, VavlForEmotionRecognition, VavlModel
from .pipelines import AudioVisualEmotionPipeline, register_pipeline
from .processing import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor

__version__ = "0.1.0.dev0"


def _register() -> None:
    AutoConfig.register(VavlConfig.model_type, VavlConfig, exist_ok=True)
    AutoModel.register(VavlConfig, VavlModel, exist_ok=True)
    AutoModelForAudioClassification.register(VavlConfig, VavlForEmotionRecognition, exist_ok=True)
    AutoModelForEmotionRecognition.register(VavlConfig, VavlForEmotionRecognition, exist_ok=True)
    AutoFeatureExtractor.register(VavlConfig, AvEmotionFeatureExtractor, exist_ok=True)
    AutoImageProcessor.register(VavlConfig, image_processor_classes={"pil": AvEmotionImageProcessor}, exist_ok=True)
    AutoProcessor.register(VavlConfig, AvEmotionProcessor, exist_ok=True)
    # `save_pretrained` then writes `auto_map` and copies the code, so `trust_remote_code=True` loads without the import.
    VavlConfig.register_for_auto_class()
    VavlModel.register_for_auto_class("AutoModel")
    VavlForEmotionRecognition.register_for_auto_class("AutoModelForAudioClassification")
    AutoConfig.register(MultiLevelFusionConfig.model_type, MultiLevelFusionConfig, exist_ok=True)
    AutoModel.register(MultiLevelFusionConfig, MultiLevelFusionModel, exist_ok=True)
    AutoModelForAudioClassification.register(
        MultiLevelFusionConfig, MultiLevelFusionForEmotionRecognition, exist_ok=True
    )
    AutoModelForEmotionRecognition.register(
        MultiLevelFusionConfig, MultiLevelFusionForEmotionRecognition, exist_ok=True
    )
    MultiLevelFusionConfig.register_for_auto_class()
    MultiLevelFusionModel.register_for_auto_class("AutoModel")
    MultiLevelFusionForEmotionRecognition.register_for_auto_class("AutoModelForAudioClassification")
    register_pipeline()


_register()

__all__ = [
    "AudioVisualEmotionPipeline",
    "AutoModelForEmotionRecognition",
    "AvEmotionFeatureExtractor",
    "AvEmotionImageProcessor",
    "AvEmotionProcessor",
    "MultiLevelFusionConfig",
    "MultiLevelFusionForEmotionRecognition",
    "MultiLevelFusionModel",
    "VavlConfig",
    "VavlForEmotionRecognition",
    "VavlModel",
]
