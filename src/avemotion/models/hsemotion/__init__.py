"""HSEmotion / EmotiEffLib face-emotion models (AffectNet-trained timm EfficientNets) as transformers EfficientNets.

This package owns `convert-hsemotion` (`convert_hsemotion_checkpoint`) and the code-free reader of whole pickled
PyTorch modules it uses (`timm_pickle`). The converted weights keep AffectNet's research-only terms.
"""

from .convert_hsemotion_checkpoint import (
    AFFECTNET_7_LABELS,
    AFFECTNET_8_LABELS,
    build_efficientnet_config,
    convert_hsemotion_checkpoint,
    image_processor_for,
)
from .timm_pickle import ModuleRecord, load_pickled_module

__all__ = [
    "AFFECTNET_7_LABELS",
    "AFFECTNET_8_LABELS",
    "ModuleRecord",
    "build_efficientnet_config",
    "convert_hsemotion_checkpoint",
    "image_processor_for",
    "load_pickled_module",
]
