"""mLSTM and sLSTM blocks (xLSTM v1 structure) and the layers they are made of.

Module and parameter names and shapes follow the official `xlstm` package's `xLSTMLMModel`, so
its checkpoints convert one to one (see `bioxlstm.convert`). Every layer takes an optional
recurrent state and returns its new one, so one code path serves training, prompt prefill and
token-by-token decoding; `keep` (B, S) marks the real (non-padding) positions and `reset` (B, S)
the first position of each sequence packed into a row, where every state starts afresh.
Bidirectional blocks reverse each row within its valid span with `sequence_ops`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .kernels import FORGET_GATE_CLOSED, FORGET_GATE_OPEN, INPUT_GATE_CLOSED, mlstm_recurrence, resolve_backend, slstm_recurrence
from .configuration_bioxlstm import BioXLSTMConfig
from .positions import apply_rotary
from .sequence_ops import reversal_index, reverse_positions, valid_positions

ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu, "relu": F.relu}
# How a bidirectional block merges the mixer output on the sequence with the one on its reversal.
DIRECTION_COMBINERS = {"add": torch.add, "mean": lambda forward, backward: (forward + backward) / 2}


class LayerNorm(nn.Module):
    """Layer norm without bias whose scale is stored as an offset from one (zero-initialised)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight=1.0 + self.weight, eps=self.eps)


class MultiHeadLayerNorm(LayerNorm):
    """Layer norm over each head separately (a group norm with one group per head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, S, NH, DH)
        batch, seq_len, heads, head_dim = x.shape
        y = F.group_norm(x.reshape(batch * seq_len, heads * head_dim), heads, weight=1.0 + self.weight, eps=self.eps)
        return y.view(batch, seq_len, heads * head_dim)


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map: each of `num_blocks` channel groups has its own square matrix."""

    def __init__(self, dim: int, num_blocks: int, bias: bool):
        super().__init__()
        self.num_blocks = num_blocks
        block = dim // num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, block, block))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.einsum("...hi,hoi->...ho", x.view(*shape[:-1], self.num_blocks, -1), self.weight)
        y = y.reshape(shape)
        return y if self.bias is None else y + self.bias


class CausalConv1d(nn.Module):
    """Depthwise causal convolution whose state is the last `kernel_size - 1` inputs."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=True)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, S, D); state: (B, K-1, D) or None (zeros, i.e. the sequence starts here);
        reset: (B, S) bool, True where a sequence starts that must not see earlier inputs."""
        if state is None:
            state = x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])
        window = torch.cat([state.to(x.dtype), x], dim=1)
        new_state = window[:, window.shape[1] - (self.kernel_size - 1) :]
        if reset is None and x.shape[1] == 1:
            # One decoding step: a weighted sum of the window, without conv1d's per-call set-up.
            return (window * self.conv.weight[:, 0].T).sum(1, keepdim=True) + self.conv.bias, new_state
        if reset is None:
            y = F.conv1d(window.transpose(1, 2), self.conv.weight, self.conv.bias, groups=x.shape[2])
            return y.transpose(1, 2), new_state
        # Tap k of output t reads input t-k, which belongs to the same sequence iff no sequence
        # starts in (t-k, t]; inputs before this call count as one earlier sequence.
        starts = torch.cumsum(reset.long(), dim=1)
        starts = torch.cat([starts.new_zeros(x.shape[0], self.kernel_size - 1), starts], dim=1)
        taps = window.unfold(1, self.kernel_size, 1)  # (B, S, D, K): inputs t-K+1 .. t
        same_sequence = starts.unfold(1, self.kernel_size, 1) == starts[:, self.kernel_size - 1 :, None]
        y = torch.einsum("bsdk,dk->bsd", taps * same_sequence[:, :, None, :], self.conv.weight[:, 0])
        return y + self.conv.bias, new_state


class GatedFeedForward(nn.Module):
    def __init__(self, config: BioXLSTMConfig):
        super().__init__()
        inner = config.ffn_inner_size
        self.proj_up = nn.Linear(config.block_width, 2 * inner, bias=config.ffn_has_bias)
        self.proj_down = nn.Linear(inner, config.block_width, bias=config.ffn_has_bias)
        self.act_fn = ACTIVATIONS[config.ffn_activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_up(x).chunk(2, dim=-1)
        return self.dropout(self.proj_down(self.act_fn(gate) * up))


def _mask_padding(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return x if keep is None else x * keep.unsqueeze(-1).to(x.dtype)


class MLSTMLayer(nn.Module):
    """Up-projection, causal conv, head-wise q/k/v, exponential-gated mLSTM cell with multi-head
    norm, learnable skip, output gate and down-projection.

    State: (C, n, m, conv window).
    """

    def __init__(self, config: BioXLSTMConfig):
        super().__init__()
        inner = config.mlstm_inner_size
        self.inner = inner
        self.num_heads = config.num_heads
        self.chunk_size = config.chunk_size
        self.kernel = config.kernel
        self.rope_pairing, self.rope_span = config.rope_pairing, config.rope_span
        self.rope_gates_read_rotated = config.rope_gates_read_rotated
        blocks = inner // config.qkv_proj_blocksize
        self.proj_up = nn.Linear(config.block_width, 2 * inner, bias=config.bias)
        self.q_proj = HeadwiseLinear(inner, blocks, config.bias)
        self.k_proj = HeadwiseLinear(inner, blocks, config.bias)
        self.v_proj = HeadwiseLinear(inner, blocks, config.bias)
        self.conv1d = CausalConv1d(inner, config.conv1d_kernel_size)
        self.igate = nn.Linear(3 * inner, config.num_heads)
        self.fgate = nn.Linear(3 * inner, config.num_heads)
        self.outnorm = MultiHeadLayerNorm(inner, config.norm_eps)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, config.block_width, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None,
        keep: torch.Tensor | None,
        reset: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        overwrite_state: bool = False,
    ) -> tuple[torch.Tensor, tuple]:
        """rotary: the (cos, sin) rotation of q and k by their positions (see `positions.py`), or None.
        overwrite_state: the caller discards `state`, whose tensors may then hold the new one."""
        batch, seq_len, _ = x.shape
        x_mlstm, z = self.proj_up(x).split(self.inner, dim=-1)
        x_mlstm = _mask_padding(x_mlstm, keep)
        cell_state, conv_state = (state[:3], state[3]) if state is not None else (None, None)
        x_conv, conv_state = self.conv1d(x_mlstm, conv_state, reset)
        x_conv = F.silu(x_conv)
        q, k, v = self.q_proj(x_conv), self.k_proj(x_conv), self.v_proj(x_mlstm)
        rotated = (self._rotate(q, rotary), self._rotate(k, rotary)) if rotary is not None else (q, k)
        # Position-free gates read the unrotated q and k (our default); Prot-xLSTM's read the rotated ones.
        gate_input = torch.cat([*(rotated if self.rope_gates_read_rotated else (q, k)), v], dim=-1)
        q, k = rotated
        igate, fgate = self.igate(gate_input), self.fgate(gate_input)  # (B, S, NH)
        if keep is not None:
            igate = igate.masked_fill(~keep.unsqueeze(-1), INPUT_GATE_CLOSED)
            fgate = fgate.masked_fill(~keep.unsqueeze(-1), FORGET_GATE_OPEN)
        if reset is not None:
            fgate = fgate.masked_fill(reset.unsqueeze(-1), FORGET_GATE_CLOSED)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq_len, self.num_heads, -1).transpose(1, 2)

        q, k = heads(q), heads(k)
        h, cell_state = mlstm_recurrence(
            q,
            k,
            heads(v),
            igate.transpose(1, 2).float(),
            fgate.transpose(1, 2).float(),
            cell_state,
            self.chunk_size,
            resolve_backend(self.kernel, x.device),
            overwrite_state,
        )
        h = self.outnorm(h.transpose(1, 2))
        h = (h + self.learnable_skip * x_conv) * F.silu(z)
        return self.dropout(self.proj_down(h)), (*cell_state, conv_state)

    def _rotate(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate q or k (B, S, inner) by position, per head or across the whole inner width."""
        batch, seq_len, _ = x.shape
        if self.rope_span == "inner":
            return apply_rotary(x[:, None], rotary, self.rope_pairing)[:, 0]
        per_head = x.view(batch, seq_len, self.num_heads, -1).transpose(1, 2)
        return apply_rotary(per_head, rotary, self.rope_pairing).transpose(1, 2).reshape(batch, seq_len, -1)


class SLSTMLayer(nn.Module):
    """Causal conv, head-wise gate projections, sLSTM cell with block-diagonal recurrent matrices,
    and a multi-head group norm.

    State: ((h, c, n, m) stacked, conv window).
    """

    def __init__(self, config: BioXLSTMConfig, layer_idx: int):
        super().__init__()
        dim, heads = config.block_width, config.slstm_heads
        self.num_heads = heads
        self.kernel = config.kernel
        self.layer_idx = layer_idx  # the forget-gate initialisation depends on depth
        self.conv1d = CausalConv1d(dim, config.slstm_conv_size) if config.slstm_conv_size > 0 else None
        self.igate = HeadwiseLinear(dim, heads, bias=False)
        self.fgate = HeadwiseLinear(dim, heads, bias=False)
        self.zgate = HeadwiseLinear(dim, heads, bias=False)
        self.ogate = HeadwiseLinear(dim, heads, bias=False)
        self.recurrent_kernel = nn.Parameter(torch.zeros(heads, dim // heads, 4, dim // heads))
        self.bias = nn.Parameter(torch.zeros(heads, 4, dim // heads))
        self.group_norm = MultiHeadLayerNorm(dim, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None,
        keep: torch.Tensor | None,
        reset: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        overwrite_state: bool = False,
        head_flip_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple]:
        """rotary and overwrite_state are accepted for a uniform block interface and unused: the
        sLSTM has no q and k, and its state is small. head_flip_rows: (B,) bool, rows whose heads
        go into the group norm in reverse order and stay so (`config.rcps_slstm_head_flip`)."""
        batch, seq_len, dim = x.shape
        cell_state, conv_state = state if state is not None else (None, None)
        x = _mask_padding(x, keep)
        if self.conv1d is not None:
            x_conv, conv_state = self.conv1d(x, conv_state, reset)
            x_conv = F.silu(x_conv)
        else:
            x_conv = x
        preacts = torch.stack([self.igate(x_conv), self.fgate(x_conv), self.zgate(x), self.ogate(x)], dim=2)
        h, cell_state = slstm_recurrence(
            preacts.view(batch, seq_len, 4, self.num_heads, dim // self.num_heads),
            self.recurrent_kernel,
            self.bias,
            cell_state,
            keep,
            reset,
            resolve_backend(self.kernel, x.device),
        )
        h = self.dropout(h)
        if head_flip_rows is not None:
            h = torch.where(head_flip_rows.view(-1, 1, 1, 1), h.flip(2), h)
        return self.group_norm(h), (cell_state, conv_state)


class XLSTMBlock(GradientCheckpointingLayer):
    """Pre-norm residual block around an mLSTM or sLSTM layer; sLSTM blocks add a gated
    feed-forward with its own pre-norm.

    Bidirectional blocks (`config.bidirectional_mode`): "mixer" runs the same layer (same
    weights) on the normed input and on its reversal within each row's valid span, flips the second
    output back and combines the two with `config.bidirectional_combine` before the residual (the
    feed-forward runs once); "block" does the same with the whole block, residual and feed-forward
    included; "alternating" runs the whole block once, on the reversal in even-numbered blocks.
    Rotary positions are the same in both directions: position t of the reversal turns by t. They
    have no recurrent state to carry, so `state` must be None.
    """

    def __init__(self, config: BioXLSTMConfig, layer_idx: int):
        super().__init__()
        self.is_slstm = config.block_types[layer_idx] == "slstm"
        self.combine_directions = DIRECTION_COMBINERS[config.bidirectional_combine] if config.bidirectional else None
        self.bidirectional_mode = config.bidirectional_mode
        self.reversed_input = config.bidirectional and config.bidirectional_mode == "alternating" and layer_idx % 2 == 0
        self.rcps_slstm_head_flip = config.rcps_slstm_head_flip
        self.xlstm_norm = LayerNorm(config.block_width, config.norm_eps)
        self.xlstm = SLSTMLayer(config, layer_idx) if self.is_slstm else MLSTMLayer(config)
        if self.is_slstm:
            self.ffn_norm = LayerNorm(config.block_width, config.norm_eps)
            self.ffn = GatedFeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None = None,
        keep: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        overwrite_state: bool = False,
        rc_rows: torch.Tensor | None = None,
    ):
        """rc_rows: (B,) bool, the rows that hold the reverse-complement strand view (set by
        `rc.ReverseComplementShared`); read only with `config.rcps_slstm_head_flip`."""
        head_flip_rows = rc_rows if self.rcps_slstm_head_flip and self.is_slstm else None
        if self.combine_directions is None:
            return self._body(x, state, keep, reset, rotary, overwrite_state, head_flip_rows)
        if state is not None:
            raise ValueError("a bidirectional block has no recurrent state to continue from")
        if reset is not None:
            raise ValueError("a bidirectional block cannot read packed rows (seq_idx); pad the sequences instead")
        index = reversal_index(valid_positions(keep, x))
        if self.bidirectional_mode == "alternating":
            if not self.reversed_input:
                return self._body(x, None, keep, None, rotary, False, head_flip_rows)
            y, _ = self._body(reverse_positions(x, index), None, keep, None, rotary, False, head_flip_rows)
            return reverse_positions(y, index), None
        both_keep = None if keep is None else keep.repeat(2, 1)
        both_rotary = None if rotary is None else tuple(t.repeat(2, *(1,) * (t.dim() - 1)) for t in rotary)
        both_rows = None if head_flip_rows is None else head_flip_rows.repeat(2)
        if self.bidirectional_mode == "block":
            both, _ = self._body(torch.cat([x, reverse_positions(x, index)]), None, both_keep, None, both_rotary, False, both_rows)
            forward, backward = both.chunk(2)
            return self.combine_directions(forward, reverse_positions(backward, index)), None
        normed = self.xlstm_norm(x)
        both, _ = self._mix(torch.cat([normed, reverse_positions(normed, index)]), None, both_keep, None, both_rotary, False, both_rows)
        forward, backward = both.chunk(2)
        return self._feed_forward(x + self.combine_directions(forward, reverse_positions(backward, index))), None

    @torch.no_grad()
    def zero_residual_(self) -> None:
        """Make the block add exactly zero to its input, whatever the input (function-preserving
        growth) by zeroing the last linear map of each residual branch: the mLSTM layer's output
        projection; in an sLSTM block, the scale (1 + weight) of the group norm the layer ends in
        and the feed-forward's output projection."""
        if self.is_slstm:
            self.xlstm.group_norm.weight.fill_(-1.0)
            output = self.ffn.proj_down
        else:
            output = self.xlstm.proj_down
        output.weight.zero_()
        if output.bias is not None:
            output.bias.zero_()

    def _mix(self, normed, state, keep, reset, rotary, overwrite_state, head_flip_rows):
        if head_flip_rows is None:  # mLSTM layers take no head_flip_rows
            return self.xlstm(normed, state, keep, reset, rotary, overwrite_state)
        return self.xlstm(normed, state, keep, reset, rotary, overwrite_state, head_flip_rows=head_flip_rows)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(self.ffn_norm(x)) if self.is_slstm else x

    def _body(self, x, state, keep, reset, rotary, overwrite_state, head_flip_rows):
        """The block in one direction: residual mixer, then the residual feed-forward."""
        y, state = self._mix(self.xlstm_norm(x), state, keep, reset, rotary, overwrite_state, head_flip_rows)
        return self._feed_forward(x + y), state


def small_init_std(dim: int) -> float:
    """Std of the "small init" of the xLSTM/Transformers-without-tears recipe."""
    return math.sqrt(2 / (5 * dim))


def wang_init_std(dim: int, num_blocks: int) -> float:
    return 2 / num_blocks / math.sqrt(dim)
