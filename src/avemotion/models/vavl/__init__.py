from .configuration_vavl import CREMA_D_LABELS, MSP_IMPROV_ATTRIBUTES, VavlConfig
from .modeling_vavl import (
    VavlEmotionRecognitionOutput,
    VavlForEmotionRecognition,
    VavlModel,
    VavlModelOutput,
    VavlPreTrainedModel,
)

__all__ = [
    "CREMA_D_LABELS",
    "MSP_IMPROV_ATTRIBUTES",
    "VavlConfig",
    "VavlEmotionRecognitionOutput",
    "VavlForEmotionRecognition",
    "VavlModel",
    "VavlModelOutput",
    "VavlPreTrainedModel",
]
