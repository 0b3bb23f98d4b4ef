"""The multi-level fusion model of wav2vec 2.0 and BERT: its config, models and segment pooling.

`configuration_mlfusion.py`, `modeling_mlfusion.py` and `segments.py` are the model's remote code (torch and
transformers only); `onnx_mlfusion.py` is its ONNX export. The IEMOCAP alignment reader and segment padding are data
preparation (`avemotion.processing.segments`), re-exported here because the model card names them
`avemotion.models.mlfusion.<name>`.
"""

from avemotion.processing.segments import (
    load_iemocap_segments,
    pad_segments,
    parse_iemocap_alignment,
    read_iemocap_alignment,
)

from .configuration_mlfusion import IEMOCAP_LABELS, FusionMember, MultiLevelFusionConfig
from .modeling_mlfusion import (
    MultiLevelFusionEmotionRecognitionOutput,
    MultiLevelFusionForEmotionRecognition,
    MultiLevelFusionModel,
    MultiLevelFusionModelOutput,
    MultiLevelFusionPreTrainedModel,
    late_fuse_logits,
)
from .segments import GRANULARITIES

__all__ = [
    "GRANULARITIES",
    "IEMOCAP_LABELS",
    "FusionMember",
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
