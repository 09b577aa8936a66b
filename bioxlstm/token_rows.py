"""Rows of token ids as a model reads them, for the training collators and the inference tasks alike:
a row with its position ids, rows padded into a batch, and a row's sequence tokens told from its
special tokens and reverse-complemented (the reversal itself is `models.sequence_ops`')."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .models.sequence_ops import reversal_index, reverse_complement


@dataclass
class TokenRow:
    """Token ids with their position ids; `infill` marks the appended FIM suffix (sentinels, span
    residues and the closing `<eos>`) of `bioxlstm.data.protein.fill_in_the_middle`."""

    input_ids: list[int]
    position_ids: list[int]
    infill: list[bool]

    def __add__(self, other: "TokenRow") -> "TokenRow":
        return TokenRow(
            self.input_ids + other.input_ids, self.position_ids + other.position_ids, self.infill + other.infill
        )

    def __len__(self) -> int:
        return len(self.input_ids)


def right_padded(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` (token ids, position ids or labels) as one (B, S) LongTensor, each padded on the right
    with `pad` to the longest, and the (B, S) attention mask: 1 on the rows' own entries, 0 on the padding."""
    # Filled in numpy: it reads a list of ints several times faster than torch.tensor does.
    width = max(len(row) for row in rows)
    values = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        values[index, : len(row)] = row
        mask[index, : len(row)] = 1
    return torch.from_numpy(values).to(device), torch.from_numpy(mask).to(device)


def strand_positions(input_ids: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """(B, S) bool: the positions holding sequence tokens, not padding or delimiters such as `<cls>`."""
    return ~torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))


def reverse_complement_ids(input_ids: torch.Tensor, sequence_mask: torch.Tensor, complement: Sequence[int]) -> torch.Tensor:
    """The reverse complement (B, S) of the tokens of every row where `sequence_mask` is True, read
    through the `complement` map of token ids; every other position (special tokens, padding) keeps its token."""
    flipped = reverse_complement(input_ids, torch.as_tensor(complement), reversal_index(sequence_mask))
    return torch.where(sequence_mask, flipped, input_ids)
