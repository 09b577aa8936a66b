"""Reverse-complement parameter sharing (RC-PS).

Notation: x is a row of token ids, `rc(x)` its reverse complement within the valid span (the
valid positions in reverse order, each id mapped by `config.complement_map`; padding stays where
it is). An RC-PS hidden state H (S, D) has D = 2d channels: the first d are the forward view, the
last d the reverse-complement view stored channel-reversed. Writing `flip_c` for the reversal of
all D channels and `flip_s` for the reversal of the valid positions, every RC-PS layer satisfies
the channel-flip relation

    H(rc(x)) == flip_s(flip_c(H(x))),   i.e.  H(rc(x))[t, c] == H(x)[t', D - 1 - c]

where t' is the valid position mirroring t. The embedding creates the relation, the wrapped blocks
and norms keep it, and the LM head turns it into `logits(rc(x))[t, v] == logits(x)[t', comp(v)]`.

Inside the model the valid span is every non-padding token, delimiters included, because the model
knows no tokenizer: with `conjoin`, `<cls> ACG <eos>` is paired with `<eos> CGT <cls>`. The
collator and the scorer outside `models/` know the special tokens and keep them in place.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .sequence_ops import reversal_index, reverse_positions, valid_positions


def strand_shared(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Apply `module` (width d to width d) to both strand views of an RC-PS state x (B, S, 2d).

    The forward view goes in as it is; the reverse-complement view is first put into forward
    orientation (channels and valid positions reversed), so that one set of weights serves both
    and the result keeps the channel-flip relation. Both views run as one batch.
    """
    forward_view, rc_half = x.chunk(2, dim=-1)
    rc_view = reverse_positions(rc_half.flip(-1), index)
    forward_out, rc_out = module(torch.cat([forward_view, rc_view])).chunk(2)
    return torch.cat([forward_out, reverse_positions(rc_out, index).flip(-1)], dim=-1)


def strand_average(hidden: torch.Tensor) -> torch.Tensor:
    """Strand-invariant token features (B, S, d) of an RC-PS state: the mean of the forward view
    and the channel-reversed reverse-complement view. For rc(x) they are those of x with the
    valid positions reversed."""
    forward_view, rc_half = hidden.chunk(2, dim=-1)
    return (forward_view + rc_half.flip(-1)) / 2


class ReverseComplementShared(nn.Module):
    """Makes any block RC-equivariant (mLSTM, sLSTM, bidirectional or not): the block, with its
    norms and feed-forward, runs with the same weights on both strand views (`strand_shared`).
    The reverse-complement view reads the sequence backwards, so there is no recurrent state."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None = None,
        keep: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        overwrite_state: bool = False,
    ):
        """Same interface as `XLSTMBlock.forward`; rotary positions are refused by the config, and
        without a state there is nothing to overwrite."""
        if state is not None:
            raise ValueError("an RC-PS block has no recurrent state to continue from")
        if reset is not None:
            raise ValueError("an RC-PS block cannot read packed rows (seq_idx); pad the sequences instead")
        both_keep = None if keep is None else keep.repeat(2, 1)
        index = reversal_index(valid_positions(keep, x))
        # strand_shared stacks the forward views, then the reverse-complement ones.
        rc_rows = torch.arange(2 * x.shape[0], device=x.device) >= x.shape[0]
        return strand_shared(lambda views: self.block(views, None, both_keep, rc_rows=rc_rows)[0], x, index), None

    def zero_residual_(self) -> None:
        self.block.zero_residual_()


class ReverseComplementEmbedding(nn.Embedding):
    """Embedding table of width d whose output (width 2d) is [e(t), flip(e(comp(t)))] per token t,
    which gives the channel-flip relation at the input."""

    def __init__(self, complement_map: list[int], embedding_dim: int):
        super().__init__(len(complement_map), embedding_dim)
        self.register_buffer("complement", torch.tensor(complement_map, dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([super().forward(input_ids), super().forward(self.complement[input_ids]).flip(-1)], dim=-1)


class ReverseComplementLMHead(nn.Module):
    """Output layer with one weight row per token (width d, so it can be tied to the embedding):
    logits[v] = <forward view, w_v> + <channel-reversed RC view, w_comp(v)>, so that the logits of
    rc(x) are those of x flipped with the vocabulary permuted by the complement map."""

    def __init__(self, complement_map: list[int], width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(len(complement_map), width))
        self.register_buffer("complement", torch.tensor(complement_map, dtype=torch.long), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        forward_view, rc_half = hidden.chunk(2, dim=-1)
        return F.linear(forward_view, self.weight) + F.linear(rc_half.flip(-1), self.weight[self.complement])
