"""The sLSTM mixer (xLSTM v1): causal conv, head-wise gate projections, the exponentially gated
scalar-memory cell with block-diagonal recurrent matrices, and a multi-head group norm; its block
adds the shared gated feed-forward.

Its recurrent state is ((h, c, n, m) stacked, conv window); `kernels.slstm_recurrence` advances it
(a scan with a hand-written backward, or the fused Triton kernel), one step at a time in decoding,
or, where a model runs several blocks' recurrences as one (`Mixer.stages`), a scan over all of
their heads.
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .kernels import SLSTMRecurrence, resolve_kernel
from .layers import CausalConv1d, HeadwiseLinear, MultiHeadLayerNorm, init_causal_conv, mask_padding, small_init_std
from .mixers import Mixer, complete, register_mixer


def num_heads(config) -> int:
    return config.slstm_num_heads or config.num_heads


def conv_size(config) -> int:
    """The convolution width of sLSTM blocks (0: none)."""
    return config.conv1d_kernel_size if config.slstm_conv1d_kernel_size is None else config.slstm_conv1d_kernel_size


@dataclass(frozen=True)
class SLSTMSettings:
    """The sLSTM's fields of the config.

    slstm_num_heads: heads of the sLSTM cell (default: `num_heads`).
    slstm_conv1d_kernel_size: its convolution width (default: `conv1d_kernel_size`; 0 disables it).
    rcps_slstm_head_flip: reproduce DNA-xLSTM's RC-PS sLSTM, which in the reverse-complement view
        reverses the order of its heads before the group norm and does not restore it. That view then
        differs from the forward one by a head permutation, so the model is not exactly
        RC-equivariant; only for converted DNA-xLSTM "ps" checkpoints. Needs `rcps`.
    """

    slstm_num_heads: int | None = None
    slstm_conv1d_kernel_size: int | None = None
    rcps_slstm_head_flip: bool = False


@register_mixer
class SLSTMLayer(Mixer):
    kind = "slstm"
    display_name = "sLSTM"
    settings = SLSTMSettings
    feed_forward = True

    def __init__(self, config, layer_idx: int):
        super().__init__()
        dim, heads = config.block_width, num_heads(config)
        self.num_heads = heads
        self.kernel = config.kernel
        self.head_flip = config.rcps_slstm_head_flip
        # The forget-gate initialisation depends on the depth of the block.
        self.depth_ratio = layer_idx / (config.num_hidden_layers - 1) if config.num_hidden_layers > 1 else 0.0
        self.init_std = small_init_std(dim)
        width = conv_size(config)
        self.conv1d = CausalConv1d(dim, width) if width > 0 else None
        self.igate = HeadwiseLinear(dim, heads, bias=False)
        self.fgate = HeadwiseLinear(dim, heads, bias=False)
        self.zgate = HeadwiseLinear(dim, heads, bias=False)
        self.ogate = HeadwiseLinear(dim, heads, bias=False)
        self.recurrent_kernel = nn.Parameter(torch.zeros(heads, dim // heads, 4, dim // heads))
        self.bias = nn.Parameter(torch.zeros(heads, 4, dim // heads))
        self.group_norm = MultiHeadLayerNorm(dim, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    @classmethod
    def check_config(cls, config) -> None:
        if config.block_width % num_heads(config):
            raise ValueError(f"block width {config.block_width} is not divisible by the sLSTM heads ({num_heads(config)})")
        if config.rcps_slstm_head_flip and not config.rcps:
            raise ValueError("rcps_slstm_head_flip reproduces an RC-PS quirk and needs rcps=True")

    def forward(self, x, state, keep, reset=None, rotary=None, overwrite_state=False, rc_rows=None):
        """The sLSTM has no q and k to rotate and its state is small: `rotary` and `overwrite_state`
        are not read. With `rcps_slstm_head_flip`, the rows in `rc_rows` go into the group norm with
        their heads in reverse order, and stay so."""
        return complete(self.stages(x, state, keep, reset, rotary, overwrite_state, rc_rows))

    def stages(self, x, state, keep, reset=None, rotary=None, overwrite_state=False, rc_rows=None):
        """`forward`, yielding its recurrence (`SLSTMRecurrence`) to be run, possibly with others."""
        cell_state, conv_state = state if state is not None else (None, None)
        x = mask_padding(x, keep)
        if self.conv1d is not None:
            x_conv, conv_state = self.conv1d(x, conv_state, reset)
            x_conv = F.silu(x_conv)
        else:
            x_conv = x
        h, cell_state = yield SLSTMRecurrence(
            partial(self.gate_preactivations, x, x_conv),
            x,
            self.recurrent_kernel,
            self.bias,
            cell_state,
            keep,
            reset,
            resolve_kernel(self.kernel, x.device),
        )
        h = self.dropout(h)
        if self.head_flip and rc_rows is not None:
            h = torch.where(rc_rows.view(-1, 1, 1, 1), h.flip(2), h)
        return self.group_norm(h), (cell_state, conv_state)

    def gate_preactivations(self, x: torch.Tensor, x_conv: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The input contributions to the gates, (B, S, 4, NH, DH): i and f from the convolved input,
        z and o from the input. A view of one gate-major (4, NH, B * S, DH) tensor, the layout of the
        head-wise products: stacking them as (B, S, 4, NH, DH) copied each gate three times. Without
        autograd each product is written in its place (in `out` if given), which spares the one copy
        left."""
        batch, seq_len, dim = x.shape
        products = (self.igate, x_conv), (self.fgate, x_conv), (self.zgate, x), (self.ogate, x)
        if torch.is_grad_enabled():
            gates = torch.stack([gate.by_block(source) for gate, source in products])
        else:
            gates = x.new_empty(4, self.num_heads, batch * seq_len, dim // self.num_heads) if out is None else out
            for slot, (gate, source) in zip(gates, products):
                gate.by_block(source, out=slot)
        return gates.view(4, self.num_heads, batch, seq_len, dim // self.num_heads).permute(2, 3, 0, 1, 4)

    def init_parameters(self) -> None:
        """Small init for the gate projections, no recurrence at first, forget-gate biases spread over
        a power law per head (deeper blocks remember longer), the other gates' biases at zero."""
        for gate in (self.igate, self.fgate, self.zgate, self.ogate):
            init.normal_(gate.weight, std=self.init_std)
        if self.conv1d is not None:
            init_causal_conv(self.conv1d)
        init.zeros_(self.recurrent_kernel)
        heads, _, head_dim = self.bias.shape
        bias = torch.zeros(self.bias.shape)
        spread = torch.arange(head_dim) / max(head_dim - 1, 1)
        bias[:, 1, :] = 5.0 - 12.0 * spread ** (0.3 + 1.3 * self.depth_ratio)
        init.copy_(self.bias, bias)

    @torch.no_grad()
    def zero_output_(self) -> None:
        """The layer ends in its group norm, whose scale is stored as an offset from one."""
        self.group_norm.weight.fill_(-1.0)

    @classmethod
    def from_xlstm(cls, parameters, layout, config):
        """The official layer computes the input gate with its `fgate` projection and the forget gate
        with `igate`, so the two swap names; its cell's recurrent kernel and bias are stored in the
        layout of the backend it was trained with (`slstm_cell_from_internal`)."""
        swapped = {"igate.weight": "fgate.weight", "fgate.weight": "igate.weight"}
        converted = {swapped.get(name, name): tensor for name, tensor in parameters.items() if not name.startswith("slstm_cell.")}
        kernel_name, bias_name = "slstm_cell._recurrent_kernel_", "slstm_cell._bias_"
        missing = [name for name in (kernel_name, bias_name) if name not in parameters]
        if missing:
            raise KeyError(missing)
        converted["recurrent_kernel"], converted["bias"] = slstm_cell_from_internal(
            parameters[kernel_name], parameters[bias_name], layout or "vanilla", num_heads(config)
        )
        return converted


def slstm_cell_from_internal(
    recurrent_kernel: torch.Tensor, bias: torch.Tensor, layout: str, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sLSTM cell's recurrent matrices (NH, DH_in, 4, DH_out) and biases (NH, 4, DH) from the
    layout in which an `xlstm` backend stores them.

    The backends keep the same numbers in different orders: `cuda` stores the kernel as
    (NH, DH_in, 4 DH_out) and the bias in [head, gate, dim] order, `vanilla` the kernel as
    (NH, 4 DH_out, DH_in) and the bias in [gate, head, dim] order. The sizes agree, so a
    checkpoint does not say which one it holds: the caller must know the backend it was trained with.
    """
    size = recurrent_kernel.numel()
    head_dim = int(round((size / (4 * num_heads)) ** 0.5))
    if 4 * num_heads * head_dim * head_dim != size or bias.numel() != 4 * num_heads * head_dim:
        raise ValueError(
            f"sLSTM parameters of shapes {tuple(recurrent_kernel.shape)} and {tuple(bias.shape)} "
            f"do not fit {num_heads} heads"
        )
    if layout == "cuda":
        kernel = recurrent_kernel.reshape(num_heads, head_dim, 4, head_dim)
        bias = bias.reshape(num_heads, 4, head_dim)
    elif layout == "vanilla":
        kernel = recurrent_kernel.reshape(num_heads, 4, head_dim, head_dim).permute(0, 3, 1, 2)
        bias = bias.reshape(4, num_heads, head_dim).permute(1, 0, 2)
    else:
        raise ValueError(f"unknown sLSTM backend layout {layout!r} (expected 'cuda' or 'vanilla')")
    return kernel.contiguous(), bias.contiguous()
