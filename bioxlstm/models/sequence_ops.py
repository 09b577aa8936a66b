"""Reversal of the valid positions of each row, and reverse complements of token ids.

Reversal is one gather index built by `reversal_index` from a mask; the bidirectional blocks, the
reverse-complement code of `rc.py`, conjoining and the DNA collator all use it, so reversing within
each row's valid span works the same for left padding, right padding and no padding.
"""

import torch


def valid_positions(keep: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """`keep` as a (B, S) bool mask, all True when there is no padding."""
    if keep is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return keep


def reversal_index(mask: torch.Tensor) -> torch.Tensor:
    """Gather index (B, S) that reverses, in each row, the order of the positions where `mask` is
    True and leaves every other position where it is.

    Padding stays in place, so the reversed rows need the same mask as the original ones. The
    permutation is an involution: the same index flips back.
    """
    batch, seq_len = mask.shape
    positions = torch.arange(seq_len, device=mask.device).expand(batch, seq_len)
    # Marked positions in ascending order, then the others (a stable sort keeps them in order).
    marked_first = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    rank = mask.long().cumsum(dim=1) - 1
    mirrored_rank = (mask.sum(dim=1, keepdim=True) - 1 - rank).clamp(min=0)
    return torch.where(mask, marked_first.gather(1, mirrored_rank), positions)


def reverse_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Permute the positions (dim 1) of x (B, S, ...) by a `reversal_index`."""
    index = index.view(*index.shape, *(1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(1, index)


def reverse_complement(input_ids: torch.Tensor, complement: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reverse-complement token ids (B, S): positions permuted by a `reversal_index`, ids mapped
    through the complement table (a LongTensor indexed by token id)."""
    return complement.to(input_ids.device)[reverse_positions(input_ids, index)]
