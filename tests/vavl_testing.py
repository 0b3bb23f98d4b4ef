"""Tiny VAVL configs for tests."""

from typing import Any

from transformers import EfficientNetConfig, Wav2Vec2Config
from transformers.models.efficientnet.modeling_efficientnet import round_filters

from avemotion import VavlConfig

AUDIO_DIM, VISUAL_DIM = 16, 12
LABELS = ["angry", "happy", "neutral"]


def tiny_vavl_config(**overrides: Any) -> VavlConfig:
    kwargs: dict[str, Any] = dict(
        audio_feature_dim=AUDIO_DIM,
        visual_feature_dim=VISUAL_DIM,
        projection_dim=8,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        conv_kernel_size=5,
        num_modality_layers=2,
        num_shared_layers=1,
        head_hidden_sizes=[24, 16],
        max_position_embeddings=64,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    kwargs.update(overrides)
    return VavlConfig(**kwargs)


def tiny_wav2vec2_config(**overrides: Any) -> Wav2Vec2Config:
    kwargs: dict[str, Any] = dict(
        hidden_size=AUDIO_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    )
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)


def tiny_efficientnet_config() -> EfficientNetConfig:
    config = EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=1)
    config.hidden_dim = round_filters(config, 1280)  # the pooled feature width
    return config
