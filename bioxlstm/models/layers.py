"""The layers mixers and blocks are made of: norms, block-diagonal projections, the causal
convolution, and the initialisation scales of the xLSTM recipe.

Module and parameter names and shapes follow the official `xlstm` package, so its checkpoints
convert one to one (see `bioxlstm.convert`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init


def records_gradients(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on any of `tensors` (fast paths without a backward
    take the others)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class LayerNorm(nn.Module):
    """Layer norm without bias whose scale is stored as an offset from one (zero-initialised)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight=1.0 + self.weight, eps=self.eps)


class MultiHeadLayerNorm(LayerNorm):
    """Layer norm over each head separately (a group norm with one group per head, computed as a
    layer norm over the head dimension: F.group_norm over batch x length rows takes twice as long).

    Without autograd it normalises in place in one fresh tensor (in fp32 at least, as F.layer_norm
    computes): over rows as short as a head, on a CPU, that takes half the time of F.layer_norm and
    the scaling after it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, S, NH, DH)
        batch, seq_len, heads, head_dim = x.shape
        scale = (1.0 + self.weight).view(heads, head_dim)
        if records_gradients(x, scale):
            y = F.layer_norm(x, (head_dim,), eps=self.eps) * scale
        else:
            y = x.to(torch.promote_types(x.dtype, torch.float32))
            y = y - y.mean(-1, keepdim=True)
            variance = torch.linalg.vector_norm(y, dim=-1, keepdim=True).square_().div_(head_dim)
            y = y.mul_(variance.add_(self.eps).rsqrt_()).mul_(scale).to(x.dtype)
        return y.reshape(batch, seq_len, heads * head_dim)


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

    def by_block(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The output block-major, (num_blocks, N, block) for the N rows of x (into `out` if given,
        without autograd): the layout of the batched matmul itself, which `forward` copies back
        into x's."""
        rows = x.reshape(-1, self.num_blocks, self.weight.shape[-1]).transpose(0, 1)
        y = torch.bmm(rows, self.weight.transpose(1, 2), out=out)
        if self.bias is None:
            return y
        bias = self.bias.view(self.num_blocks, 1, -1)
        return y.add_(bias) if out is not None else y + bias


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
        same_sequence = None
        if reset is not None:
            # Tap k of output t reads input t-k, which belongs to the same sequence iff no sequence
            # starts in (t-k, t]; inputs before this call count as one earlier sequence.
            starts = torch.cumsum(reset.long(), dim=1)
            starts = torch.cat([starts.new_zeros(x.shape[0], self.kernel_size - 1), starts], dim=1)
            same_sequence = starts.unfold(1, self.kernel_size, 1) == starts[:, self.kernel_size - 1 :, None]
            same_sequence = same_sequence.to(x.dtype)  # (B, S, K): taps t-K+1 .. t
        if same_sequence is None and x.shape[1] > 1 and not records_gradients(x, self.conv.weight, self.conv.bias):
            # The window seen as a channels-last image of height 1 is already in the layout a
            # depthwise conv2d reads without copying (conv1d has no channels-last form and copies
            # it twice). On a CPU that took half the time of the shifted views inside a model, a
            # sixth alone. Not for one step, where the library's set-up costs more than the sum, nor
            # with autograd, where its backward is the slower one.
            image = window.transpose(1, 2).unsqueeze(2)  # (B, D, 1, K - 1 + S)
            y = F.conv2d(image, self.conv.weight.unsqueeze(2), self.conv.bias, groups=x.shape[2])
            return y.squeeze(2).transpose(1, 2), new_state
        # A weighted sum of K shifted views of the window.
        weight = self.conv.weight[:, 0].T  # (K, D)
        y = None
        for tap in range(self.kernel_size):
            inputs = window[:, tap : tap + x.shape[1]]
            if same_sequence is not None:
                inputs = inputs * same_sequence[:, :, tap, None]
            y = torch.addcmul(self.conv.bias, inputs, weight[tap]) if y is None else y.addcmul_(inputs, weight[tap])
        return y, new_state


def mask_padding(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return x if keep is None else x * keep.unsqueeze(-1).to(x.dtype)


def round_up(value: float, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple` (the widths of the up-projections)."""
    return int(math.ceil(value / multiple) * multiple)


def small_init_std(dim: int) -> float:
    """Std of the "small init" of the xLSTM/Transformers-without-tears recipe."""
    return math.sqrt(2 / (5 * dim))


def wang_init_std(dim: int, num_blocks: int) -> float:
    return 2 / num_blocks / math.sqrt(dim)


def init_causal_conv(conv: CausalConv1d) -> None:
    """PyTorch's default initialisation of a depthwise convolution, through transformers' init
    functions (which leave loaded weights alone)."""
    bound = 1.0 / conv.kernel_size**0.5
    init.uniform_(conv.conv.weight, -bound, bound)
    init.uniform_(conv.conv.bias, -bound, bound)


def init_linear(linear: nn.Module, std: float) -> None:
    """Normal weights of `std` and zero biases (where the layer has one)."""
    init.normal_(linear.weight, std=std)
    if getattr(linear, "bias", None) is not None:
        init.zeros_(linear.bias)
