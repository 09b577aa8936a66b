"""Rotary position embeddings for the q and k of the mLSTM cells.

The mLSTM reads its memory with q_t and writes it with k_j, so the weight of token j in the output
at t is a function of q_t . k_j. Rotating q_t by its position and k_j by its own makes that dot
product depend on the difference of the two positions only, which is what lets positions restart
at every sequence of a concatenated homolog context and jump back after a fill-in-the-middle
sentinel without changing what a position means.

Conventions (`config.rope_pairing`): by default the rotated width is split in halves and channel i
is paired with channel i + D/2 (the "rotate half" layout of Hugging Face's Llama); "interleaved"
pairs channels 2i and 2i + 1 (the layout of Prot-xLSTM and DNA-xLSTM). Pair i turns by
angle * inv_freq[i]. The rotated width is each head (`rope_span="head"`) or the whole mLSTM inner
width before it is split into heads (`"inner"`, as Prot-xLSTM does).
"""

import torch


def inverse_frequencies(
    num_pairs: int, theta: float, device: torch.device | None = None, reciprocal: bool = False
) -> torch.Tensor:
    """Angular speeds theta^(-i/num_pairs), i = 0 .. num_pairs-1: from one radian per step down to
    nearly 1/theta radians per step, so short and long distances are both resolved.

    reciprocal: compute them as 1 / theta^(i/num_pairs) (DNA-xLSTM's and Llama's formula). The two
    differ by float rounding only, but that error grows with the position: at 4k positions it moved
    a converted DNA-xLSTM model's logits by 7e-4 (5e-5 with the model's own formula)."""
    exponents = torch.arange(num_pairs, dtype=torch.float32, device=device) / num_pairs
    return 1.0 / theta**exponents if reciprocal else theta**-exponents


def rotary_angles(
    position_ids: torch.Tensor,
    head_dim: int,
    theta: float,
    sequence_index: torch.Tensor | None = None,
    reciprocal: bool = False,
) -> torch.Tensor:
    """Rotation angle of every channel pair at every position: (B, S, head_dim // 2).

    position_ids: (B, S) position of each token within its sequence.
    sequence_index: (B, S) index of the sequence each token belongs to in a concatenated context,
        or None. When given, the first half of the pairs turn with the position and the second half
        with the sequence index (each half with its own frequency ladder), so scores depend on both
        the distance within a sequence and on how many sequences apart two tokens are.
    reciprocal: see `inverse_frequencies`.
    """
    num_pairs = head_dim // 2
    if sequence_index is None:
        return position_ids[..., None].float() * inverse_frequencies(num_pairs, theta, position_ids.device, reciprocal)
    position_pairs = num_pairs // 2
    within = position_ids[..., None].float() * inverse_frequencies(position_pairs, theta, position_ids.device, reciprocal)
    across = sequence_index[..., None].float() * inverse_frequencies(
        num_pairs - position_pairs, theta, position_ids.device, reciprocal
    )
    return torch.cat([within, across], dim=-1)


def rotation(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angles (B, S, DH // 2), shaped (B, 1, S, DH // 2) to broadcast over heads;
    computed once per forward pass and shared by every layer."""
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], pairing: str = "half") -> torch.Tensor:
    """Rotate the heads x (B, NH, S, DH) by the rotation of `rotation(angles)`, channels paired as
    `pairing` says ("half" or "interleaved")."""
    cos, sin = cos_sin
    if pairing == "interleaved":
        first, second = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack([first * cos - second * sin, first * sin + second * cos], dim=-1).flatten(-2)
    else:
        first, second = x.float().chunk(2, dim=-1)
        rotated = torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return rotated.to(x.dtype)
