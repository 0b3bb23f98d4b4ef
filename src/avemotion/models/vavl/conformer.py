"""The Conformer blocks of VAVL (its modality and shared encoders).

Imports only torch and transformers: a saved VAVL checkpoint carries this file next to `modeling_vavl.py` (a relative
import), so its remote code runs without avemotion. `avemotion.models.conformer` re-exports it.

The block is the Macaron Conformer of Gulati et al. (2020) in the variant used by VAVL (the sooftware/conformer
code): half-step feed-forward, relative multi-head self-attention with Transformer-XL ``u``/``v`` biases, a
convolution module with GLU, depthwise convolution and BatchNorm, a second half-step feed-forward and a final
LayerNorm. Attention scores are scaled by ``sqrt(d_model)`` as in that code.

Two positional schemes are supported (``position_encoding``):

- ``"relative"``: true relative positions. The positional score of query ``i`` and key ``j`` depends only on
  ``i - j``, so with a key-padding mask a sequence's output does not depend on how much it was padded.
- ``"legacy_shifted"``: the original code's absolute sinusoid rows followed by the Transformer-XL "relative shift"
  applied to a square score matrix. Its result depends on the (padded) sequence length; it exists for checkpoint
  parity only.

Tensors are laid out ``(batch, time, hidden)``. The legacy VAVL layout (attention across the batch axis) is obtained
by the caller transposing its input, not by a switch in here.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

POSITION_ENCODINGS = ("relative", "legacy_shifted")


def sinusoidal_embeddings(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal position embeddings, sine on even and cosine on odd channels.

    Args:
        positions: integer or float tensor of any shape; negative positions are allowed.
        dim: embedding width (even).

    Returns:
        Float32 tensor of shape ``positions.shape + (dim,)``.
    """
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / dim)
    )
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    table = torch.empty(*positions.shape, dim, dtype=torch.float32, device=positions.device)
    table[..., 0::2] = torch.sin(angles)
    table[..., 1::2] = torch.cos(angles)
    return table


class SinusoidalPositionalEmbedding(nn.Module):
    """A cached sinusoid table (non-persistent buffer) looked up by position; positions past the table are computed.

    Negative positions use ``sin(-x) = -sin(x)`` and ``cos(-x) = cos(x)``.
    """

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("table", sinusoidal_embeddings(torch.arange(max_positions), dim), persistent=False)

    def forward(self, positions: torch.Tensor, max_position: int | None = None) -> torch.Tensor:
        """positions: (L,) integer tensor -> (L, dim). `max_position`: the largest `|position|` when the caller knows
        it (no device-to-host read of the positions)."""
        if max_position is None:
            too_far = positions.numel() and positions.abs().max() >= self.table.shape[0]
        else:
            too_far = max_position >= self.table.shape[0]
        if too_far:
            return sinusoidal_embeddings(positions, self.dim).to(self.table.dtype)
        embeddings = self.table[positions.abs()]
        sine_channel = torch.arange(self.dim, device=positions.device) % 2 == 0
        return torch.where((positions < 0).unsqueeze(-1) & sine_channel, -embeddings, embeddings)


class ConformerFeedForward(nn.Module):
    """LayerNorm -> Linear(d, d*expansion) -> Swish -> Dropout -> Linear(d*expansion, d) -> Dropout."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(hidden_size)
        self.intermediate_dense = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.SiLU()
        self.intermediate_dropout = nn.Dropout(dropout)
        self.output_dense = nn.Linear(intermediate_size, hidden_size)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.intermediate_dropout(self.activation(self.intermediate_dense(hidden_states)))
        return self.output_dropout(self.output_dense(hidden_states))


class ConformerRelativeSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positional scores.

    ``score = ((q + u) k^T + shift((q + v) p^T)) / sqrt(hidden_size)``, where ``p`` are the projected sinusoid
    embeddings (``linear_pos`` has no bias).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, position_encoding: str = "relative"):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, got {position_encoding!r}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.position_encoding = position_encoding
        # sqrt(d_model), not sqrt(d_head): kept from the original code so converted weights behave the same.
        self.scale = math.sqrt(hidden_size)
        self.linear_q = nn.Linear(hidden_size, hidden_size)
        self.linear_k = nn.Linear(hidden_size, hidden_size)
        self.linear_v = nn.Linear(hidden_size, hidden_size)
        self.linear_pos = nn.Linear(hidden_size, hidden_size, bias=False)
        self.linear_out = nn.Linear(hidden_size, hidden_size)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_size))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_size))
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, D) -> (B, L, H, d)
        return x.view(*x.shape[:-1], self.num_heads, self.head_size)

    @staticmethod
    def _legacy_relative_shift(scores: torch.Tensor) -> torch.Tensor:
        """The original code's shift of a square (B, H, L, L) score matrix (depends on L; parity only)."""
        batch, heads, len_q, len_k = scores.shape
        padded = torch.cat([scores.new_zeros(batch, heads, len_q, 1), scores], dim=-1)
        padded = padded.view(batch, heads, len_k + 1, len_q)
        return padded[:, :, 1:].reshape(batch, heads, len_q, len_k)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_table: SinusoidalPositionalEmbedding,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: (B, L, D), already layer-normalised.
            position_table: the sinusoid lookup.
            key_padding_mask: (B, L) bool, True on real positions. ``None`` attends to every position.

        Returns:
            (B, L, D)
        """
        length = hidden_states.shape[1]
        query = self._split_heads(self.linear_q(hidden_states))  # (B, L, H, d)
        key = self._split_heads(self.linear_k(hidden_states)).transpose(1, 2)  # (B, H, L, d)
        value = self._split_heads(self.linear_v(hidden_states)).transpose(1, 2)  # (B, H, L, d)

        content_scores = torch.matmul((query + self.pos_bias_u).transpose(1, 2), key.transpose(2, 3))

        device = hidden_states.device
        if self.position_encoding == "legacy_shifted":
            positions = torch.arange(length, device=device)
        else:
            # relative distances L-1, ..., 0, ..., -(L-1); column k holds distance (L-1-k)
            positions = torch.arange(length - 1, -length, -1, device=device)
        # eager: the largest |position| is length - 1, known here (no host sync); traced/compiled or another table
        # (the export's computed one): the table's own call
        known = isinstance(position_table, SinusoidalPositionalEmbedding)
        if known and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            embeddings = position_table(positions, max_position=length - 1)
        else:
            embeddings = position_table(positions)
        pos = self._split_heads(self.linear_pos(embeddings.to(hidden_states.dtype)))  # (P, H, d)
        pos_scores = torch.matmul((query + self.pos_bias_v).transpose(1, 2), pos.permute(1, 2, 0))  # (B, H, L, P)

        if self.position_encoding == "legacy_shifted":
            pos_scores = self._legacy_relative_shift(pos_scores)
        else:
            # score(i, j) uses distance i - j, found in column (L-1) - (i-j)
            steps = torch.arange(length, device=device)
            index = (length - 1) - steps[:, None] + steps[None, :]
            pos_scores = pos_scores.gather(-1, index.expand(*pos_scores.shape[:2], length, length))

        scores = (content_scores + pos_scores) / self.scale
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        # softmax in float32 (a no-op for a float32 model): bfloat16/float16 scores lose the small probabilities
        probs = self.dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype))
        context = torch.matmul(probs, value).transpose(1, 2).reshape(hidden_states.shape)
        return self.linear_out(context)


class ConformerConvolutionModule(nn.Module):
    """LayerNorm -> pointwise conv (x2) -> GLU -> depthwise conv -> BatchNorm -> Swish -> pointwise conv -> Dropout."""

    def __init__(self, hidden_size: int, kernel_size: int, dropout: float, expansion: int = 2):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd, got {kernel_size}")
        self.layer_norm = nn.LayerNorm(hidden_size)
        self.pointwise_conv1 = nn.Conv1d(hidden_size, expansion * hidden_size, kernel_size=1)
        self.glu = nn.GLU(dim=1)
        self.depthwise_conv = nn.Conv1d(
            hidden_size, hidden_size, kernel_size, padding=(kernel_size - 1) // 2, groups=hidden_size, bias=False
        )
        self.batch_norm = nn.BatchNorm1d(hidden_size)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(hidden_size, hidden_size, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        real_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states: (B, L, D); padding_mask: (B, L) bool, True on real positions; real_positions: the flat
        (B * L) indices of the real positions, in order, when the caller has them (see `ConformerEncoder.forward`).
        Returns (B, L, D)."""
        hidden_states = self.glu(self.pointwise_conv1(self.layer_norm(hidden_states).transpose(1, 2)))
        if padding_mask is not None:
            # zero padded steps so they do not leak into real ones through the depthwise kernel
            hidden_states = hidden_states.masked_fill(~padding_mask[:, None, :], 0.0)
        hidden_states = self.depthwise_conv(hidden_states)
        hidden_states = self.activation(self._normalize(hidden_states, padding_mask, real_positions))
        return self.dropout(self.pointwise_conv2(hidden_states)).transpose(1, 2)

    def _normalize(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None,
        real_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BatchNorm over real positions only. With batch statistics (training), padded steps would otherwise enter
        the mean and variance, so a row's output and the running statistics would depend on how much the batch was
        padded (and on rows of other lengths). Padded steps come out as zeros. Evaluation with running statistics
        is per position and needs no mask. With `real_positions` the same values are gathered by index, with no
        device-to-host synchronisation."""
        batch_stats = self.batch_norm.training or not self.batch_norm.track_running_stats
        if not batch_stats:
            return self.batch_norm(hidden_states)
        if real_positions is not None:
            return self._normalize_positions(hidden_states, real_positions)
        real = int(padding_mask.sum()) if padding_mask is not None else hidden_states.shape[0] * hidden_states.shape[2]
        if real >= 2 and (padding_mask is None or bool(padding_mask.all())):
            return self.batch_norm(hidden_states)
        channels_last = hidden_states.transpose(1, 2)  # (B, L, C)
        if padding_mask is None:
            padding_mask = torch.ones(channels_last.shape[:2], dtype=torch.bool, device=channels_last.device)
        values = channels_last[padding_mask]  # (N_real, C)
        # statistics over real steps; fewer than 2 (one short clip alone, e.g. a video with a face in one frame) give
        # no variance, and torch refuses them in training
        normalized = self.batch_norm(values) if real >= 2 else self._normalize_few(values)
        output = channels_last.new_zeros(channels_last.shape).masked_scatter(padding_mask.unsqueeze(-1), normalized)
        return output.transpose(1, 2)

    def _normalize_positions(self, hidden_states: torch.Tensor, real_positions: torch.Tensor) -> torch.Tensor:
        """`_normalize` of (B, C, L) `hidden_states` over the real steps given as flat (B * L) indices (the values and
        the order of the boolean selection, so the same numbers; padded steps come out as zeros)."""
        channels_last = hidden_states.transpose(1, 2)  # (B, L, C)
        flat = channels_last.reshape(-1, channels_last.shape[-1])
        values = flat.index_select(0, real_positions)  # (N_real, C)
        normalized = self.batch_norm(values) if values.shape[0] >= 2 else self._normalize_few(values)
        output = flat.new_zeros(flat.shape).index_copy(0, real_positions, normalized)
        return output.view(channels_last.shape).transpose(1, 2)

    def _normalize_few(self, values: torch.Tensor) -> torch.Tensor:
        """BatchNorm of fewer than 2 real steps (N, C) in training. One value has no variance: its own "batch
        statistics" (mean = the value, variance 0) would turn every such clip into the constant bias, unlike the
        same clip in a batch, which is normalised with statistics near the population's. The running statistics
        are the best estimate of those: they normalise it here (as in evaluation), and they are not updated (one
        value carries no variance to update them with). Without running statistics the batch formula is kept
        (centred value 0: the bias). The padded layout never enters, so the clip does not depend on padding."""
        norm = self.batch_norm
        if norm.running_mean is not None:
            return nn.functional.batch_norm(
                values, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps
            )
        output = values - values.mean(dim=0, keepdim=True) if values.shape[0] else values  # zeros, graph kept
        return output * norm.weight + norm.bias if norm.affine else output


class ConformerBlock(GradientCheckpointingLayer):
    """x + FF/2 -> x + MHSA -> x + Conv -> x + FF/2 -> LayerNorm."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        conv_kernel_size: int,
        dropout: float,
        position_encoding: str = "relative",
    ):
        super().__init__()
        self.ffn1 = ConformerFeedForward(hidden_size, intermediate_size, dropout)
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.self_attn = ConformerRelativeSelfAttention(hidden_size, num_heads, dropout, position_encoding)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.conv_module = ConformerConvolutionModule(hidden_size, conv_kernel_size, dropout)
        self.ffn2 = ConformerFeedForward(hidden_size, intermediate_size, dropout)
        self.final_layer_norm = nn.LayerNorm(hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_table: SinusoidalPositionalEmbedding,
        padding_mask: torch.Tensor | None = None,
        real_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states: (B, L, D); padding_mask: (B, L) bool or None; real_positions: see
        `ConformerConvolutionModule.forward`. Returns (B, L, D)."""
        hidden_states = hidden_states + 0.5 * self.ffn1(hidden_states)
        attn_output = self.self_attn(self.self_attn_layer_norm(hidden_states), position_table, padding_mask)
        hidden_states = hidden_states + self.self_attn_dropout(attn_output)
        hidden_states = hidden_states + self.conv_module(hidden_states, padding_mask, real_positions)
        hidden_states = hidden_states + 0.5 * self.ffn2(hidden_states)
        return self.final_layer_norm(hidden_states)


class ConformerEncoder(nn.Module):
    """Linear input projection + dropout, then a stack of Conformer blocks.

    Args:
        input_size: width of the input features.
        hidden_size, num_layers, num_heads, intermediate_size, conv_kernel_size, dropout: block sizes.
        position_encoding: ``"relative"`` or ``"legacy_shifted"`` (see the module docstring).
        max_position_embeddings: size of the cached sinusoid table (longer inputs are computed on the fly).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        conv_kernel_size: int,
        dropout: float,
        position_encoding: str = "relative",
        max_position_embeddings: int = 1024,
    ):
        super().__init__()
        self.input_projection = nn.Linear(input_size, hidden_size)
        self.input_dropout = nn.Dropout(dropout)
        self.position_table = SinusoidalPositionalEmbedding(hidden_size, max_position_embeddings)
        self.layers = nn.ModuleList(
            ConformerBlock(hidden_size, num_heads, intermediate_size, conv_kernel_size, dropout, position_encoding)
            for _ in range(num_layers)
        )

    def forward(
        self, inputs: torch.Tensor, padding_mask: torch.Tensor | None = None, num_real: int | None = None
    ) -> torch.Tensor:
        """inputs: (B, L, input_size); padding_mask: (B, L) bool or None; num_real: the number of True values of
        `padding_mask`, when the caller knows it. Returns (B, L, hidden_size).

        With `num_real` nothing reads the mask back to the host: an all-real mask is dropped (masking nothing gives
        the same numbers) and the BatchNorms of a padded batch gather the real steps by index. Without it (tracing,
        ONNX export, other callers) the mask is used as given."""
        real_positions = None
        if padding_mask is not None and num_real is not None:
            if num_real == padding_mask.numel():
                padding_mask = None
            else:
                real_positions = true_positions(padding_mask.flatten(), num_real)
        hidden_states = self.input_dropout(self.input_projection(inputs))
        for layer in self.layers:
            hidden_states = layer(hidden_states, self.position_table, padding_mask, real_positions)
        return hidden_states


def true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the True values of the 1-D bool `mask`, in order, given their `count`: what
    `mask.nonzero().flatten()` returns, without its device-to-host synchronisation (a stable sort puts the True
    positions first, in order)."""
    return torch.argsort((~mask).to(torch.uint8), stable=True)[:count]
