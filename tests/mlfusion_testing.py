"""Tiny multi-level fusion configs and inputs for tests."""

from pathlib import Path
from typing import Any

import torch
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertTokenizerFast, Wav2Vec2Config

from avemotion import MultiLevelFusionConfig

# Two CNN layers with wav2vec2-base's geometry: stride 16 * 20 = 320 samples, receptive field 16 + 24 * 16 = 400.
SAMPLING_RATE = 16000


def tiny_wav2vec2_config(**overrides: Any) -> Wav2Vec2Config:
    kwargs: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(16, 16),
        conv_stride=(16, 20),
        conv_kernel=(16, 25),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        mask_time_prob=0.0,
    )
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)


def tiny_bert_config(**overrides: Any) -> BertConfig:
    kwargs: dict[str, Any] = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_config(**overrides: Any) -> MultiLevelFusionConfig:
    kwargs: dict[str, Any] = dict(
        audio_config=tiny_wav2vec2_config(),
        text_config=tiny_bert_config(),
        fusion_hidden_size=24,
        num_coattention_heads=2,
        coattention_ffn_size=40,
        classifier_hidden_size=16,
    )
    kwargs.update(overrides)
    return MultiLevelFusionConfig(**kwargs)


def make_batch(seconds=(0.5, 0.36), tokens=(7, 4), with_segments=True, generator_seed=0) -> dict[str, torch.Tensor]:
    """Right-padded audio + text (+ phone/syllable/word segments inside each utterance) for len(seconds) rows."""
    generator = torch.Generator().manual_seed(generator_seed)
    samples = [int(s * SAMPLING_RATE) for s in seconds]
    batch = len(samples)
    input_values = torch.zeros(batch, max(samples))
    attention_mask = torch.zeros(batch, max(samples), dtype=torch.long)
    input_ids = torch.zeros(batch, max(tokens), dtype=torch.long)
    text_attention_mask = torch.zeros(batch, max(tokens), dtype=torch.long)
    for row, (n, m) in enumerate(zip(samples, tokens)):
        input_values[row, :n] = torch.randn(n, generator=generator)
        attention_mask[row, :n] = 1
        input_ids[row, :m] = torch.randint(1, 99, (m,), generator=generator)
        text_attention_mask[row, :m] = 1
    out = dict(
        input_values=input_values,
        attention_mask=attention_mask,
        input_ids=input_ids,
        text_attention_mask=text_attention_mask,
    )
    if with_segments:
        for name, count in (("phone", 8), ("syllable", 4), ("word", 3)):
            segments = torch.zeros(batch, count, 2)
            mask = torch.zeros(batch, count, dtype=torch.bool)
            for row, s in enumerate(seconds):
                n = max(1, count - 2 * row)  # rows get different segment counts, so segments are padded too
                edges = torch.linspace(0.0, s, n + 1)
                segments[row, :n, 0], segments[row, :n, 1] = edges[:-1], edges[1:]
                mask[row, :n] = True
            out[f"{name}_segments"], out[f"{name}_segments_mask"] = segments, mask
    return out


def tiny_tokenizer(directory: Path) -> BertTokenizerFast:
    """A 60-token WordPiece tokenizer trained on two sentences, its vocab.txt written into `directory`."""
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(["i am so happy today", "this is sad and angry"], vocab_size=60)
    trainer.save_model(str(directory))
    return BertTokenizerFast(vocab=str(Path(directory) / "vocab.txt"))
