"""The mLSTM mixer (xLSTM v1): up-projection, causal conv, head-wise q/k/v, the exponentially gated
matrix-memory cell with a multi-head norm, a learnable skip, an output gate and the down-projection.

Its recurrent state is (C, n, m, conv window); `kernels.mlstm_recurrence` advances it, chunkwise for
a prompt or a training sequence and one step at a time in decoding.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .kernels import FORGET_GATE_CLOSED, FORGET_GATE_OPEN, INPUT_GATE_CLOSED, mlstm_recurrence, resolve_kernel
from .layers import (
    CausalConv1d,
    HeadwiseLinear,
    MultiHeadLayerNorm,
    init_causal_conv,
    init_linear,
    mask_padding,
    round_up,
    small_init_std,
    wang_init_std,
)
from .mixers import Mixer, register_mixer
from .positions import apply_rotary


def inner_size(config) -> int:
    """The mLSTM's inner width: `mlstm_inner_width` where a converted checkpoint fixes it, otherwise
    `proj_factor` times the block width rounded up to a multiple of `proj_round_multiple`."""
    if config.mlstm_inner_width is not None:
        return config.mlstm_inner_width
    return round_up(config.proj_factor * config.block_width, config.proj_round_multiple)


@dataclass(frozen=True)
class MLSTMSettings:
    """The mLSTM's fields of the config.

    proj_factor: up-projection factor; the inner width is `proj_factor * block width` rounded up to
        a multiple of `proj_round_multiple`.
    qkv_proj_blocksize: block size of the block-diagonal q/k/v projections.
    chunk_size: chunk length of the chunkwise kernel used for training and prefill.
    mlstm_inner_width: the inner width itself, overriding `proj_factor` and its rounding
        (checkpoints whose width was rounded otherwise, e.g. DNA-xLSTM's rounding down).
    """

    proj_factor: float = 2.0
    qkv_proj_blocksize: int = 4
    chunk_size: int = 64
    mlstm_inner_width: int | None = None


@register_mixer
class MLSTMLayer(Mixer):
    kind = "mlstm"
    display_name = "mLSTM"
    settings = MLSTMSettings

    def __init__(self, config, layer_idx: int):
        super().__init__()
        inner = inner_size(config)
        self.inner = inner
        self.num_heads = config.num_heads
        self.chunk_size = config.chunk_size
        self.kernel = config.kernel
        self.rope_pairing, self.rope_span = config.rope_pairing, config.rope_span
        self.rope_gates_read_rotated = config.rope_gates_read_rotated
        self.init_stds = small_init_std(config.block_width), wang_init_std(config.block_width, config.num_hidden_layers)
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

    @classmethod
    def check_config(cls, config) -> None:
        width = config.mlstm_inner_width
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise ValueError(f"mlstm_inner_width must be a positive integer or None, got {width!r}")
        inner = inner_size(config)
        for name in ("num_heads", "qkv_proj_blocksize"):
            if inner % getattr(config, name):
                raise ValueError(f"mLSTM inner size {inner} is not divisible by {name}={getattr(config, name)}")
        if config.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {config.chunk_size}")

    def forward(self, x, state, keep, reset=None, rotary=None, overwrite_state=False, rc_rows=None):
        batch, seq_len, _ = x.shape
        x_mlstm, z = self.proj_up(x).split(self.inner, dim=-1)
        x_mlstm = mask_padding(x_mlstm, keep)
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

        h, cell_state = mlstm_recurrence(
            heads(q),
            heads(k),
            heads(v),
            igate.transpose(1, 2).float(),
            fgate.transpose(1, 2).float(),
            cell_state,
            self.chunk_size,
            resolve_kernel(self.kernel, x.device),
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

    def init_parameters(self) -> None:
        """Small init for the input projections, Wang init for the output one, input gates closed-ish,
        forget gates biased open (3 to 6 across heads), the skip at one."""
        small, wang = self.init_stds
        init_linear(self.proj_up, small)
        init_linear(self.proj_down, wang)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            init_linear(proj, small)
        init_causal_conv(self.conv1d)
        init.zeros_(self.igate.weight)
        init.normal_(self.igate.bias, std=0.1)
        init.zeros_(self.fgate.weight)
        init.copy_(self.fgate.bias, torch.linspace(3.0, 6.0, self.fgate.bias.numel()))
        init.ones_(self.learnable_skip)

    @torch.no_grad()
    def zero_output_(self) -> None:
        self.proj_down.weight.zero_()
        if self.proj_down.bias is not None:
            self.proj_down.bias.zero_()

    @classmethod
    def from_xlstm(cls, parameters, layout, config):
        """The official layer keeps its gates and norm in an `mlstm_cell` submodule; ours holds them."""
        return {name.removeprefix("mlstm_cell."): tensor for name, tensor in parameters.items()}
