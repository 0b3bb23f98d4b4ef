"""The old import path of the Conformer blocks, kept for existing imports.

The blocks live in `avemotion.models.vavl.conformer`, next to their only user, so that a saved VAVL checkpoint
carries them with its remote code; this module re-exports the same objects (identity, not copies).
"""

from .vavl.conformer import (
    POSITION_ENCODINGS,
    ConformerBlock,
    ConformerConvolutionModule,
    ConformerEncoder,
    ConformerFeedForward,
    ConformerRelativeSelfAttention,
    SinusoidalPositionalEmbedding,
    sinusoidal_embeddings,
)

__all__ = [
    "POSITION_ENCODINGS",
    "ConformerBlock",
    "ConformerConvolutionModule",
    "ConformerEncoder",
    "ConformerFeedForward",
    "ConformerRelativeSelfAttention",
    "SinusoidalPositionalEmbedding",
    "sinusoidal_embeddings",
]
