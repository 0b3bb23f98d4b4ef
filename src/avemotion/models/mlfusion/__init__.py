from .configuration_mlfusion import IEMOCAP_LABELS, MultiLevelFusionConfig
from .modeling_mlfusion import (
    MultiLevelFusionEmotionRecognitionOutput,
    MultiLevelFusionForEmotionRecognition,
    MultiLevelFusionModel,
    MultiLevelFusionModelOutput,
    MultiLevelFusionPreTrainedModel,
    late_fuse_logits,
)
from .segments import (
    GRANULARITIES,
    load_iemocap_segments,
    pad_segments,
    parse_iemocap_alignment,
    read_iemocap_alignment,
)

__all__ = [
    "GRANULARITIES",
    "IEMOCAP_LABELS",
    "MultiLevelFusionConfig",
    "MultiLevelFusionEmotionRecognitionOutput",
    "MultiLevelFusionForEmotionRecognition",
    "MultiLevelFusionModel",
    "MultiLevelFusionModelOutput",
    "MultiLevelFusionPreTrainedModel",
    "late_fuse_logits",
    "load_iemocap_segments",
    "pad_segments",
    "parse_iemocap_alignment",
    "read_iemocap_alignment",
]
