"""The tests every model passes (`model_testing.ModelTesterMixin`), applied to each avemotion model on a tiny config:
save/load round trips, the base model from a task checkpoint, remote code without avemotion, the declaration."""

from __future__ import annotations

from typing import Any

import torch
from mlfusion_testing import make_batch, tiny_config
from model_testing import ModelTesterMixin
from vavl_testing import VISUAL_DIM, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import (
    MultiLevelFusionConfig,
    MultiLevelFusionForEmotionRecognition,
    MultiLevelFusionModel,
    VavlConfig,
    VavlForEmotionRecognition,
    VavlModel,
)


def _padded(lengths: list[int], *shape: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random rows of `lengths` steps and their (B, T) 0/1 mask."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.zeros(len(lengths), max(lengths), *shape)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        values[row, :length] = torch.randn(length, *shape, generator=generator)
        mask[row, :length] = 1
    return values, mask


class TestVavlModelCommon(ModelTesterMixin):
    """VAVL on padded 16 kHz waveforms through a tiny wav2vec2 backbone (frame masks from the backbone's geometry) and
    padded visual features, one row without video."""

    model_class = VavlForEmotionRecognition
    base_model_class = VavlModel
    config_class = VavlConfig
    remote_code_files = frozenset({"modeling_vavl.py", "configuration_vavl.py", "conformer.py"})

    @staticmethod
    def prepare_config_and_inputs() -> tuple[Any, dict[str, torch.Tensor]]:
        waves, attention_mask = _padded([1600, 1100, 1300], seed=1)
        video, video_mask = _padded([4, 2, 1], VISUAL_DIM, seed=2)
        video_mask[2] = 0  # the third row has no video
        inputs = dict(
            input_values=waves, attention_mask=attention_mask, visual_features=video, visual_features_mask=video_mask
        )
        return tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config()), inputs


class TestMultiLevelFusionModelCommon(ModelTesterMixin):
    """The multi-level fusion model (all granularities, early and late members) on waveforms, tokens and segments."""

    model_class = MultiLevelFusionForEmotionRecognition
    base_model_class = MultiLevelFusionModel
    config_class = MultiLevelFusionConfig
    remote_code_files = frozenset({"modeling_mlfusion.py", "configuration_mlfusion.py", "segments.py"})

    @staticmethod
    def prepare_config_and_inputs() -> tuple[Any, dict[str, torch.Tensor]]:
        return tiny_config(), make_batch()
