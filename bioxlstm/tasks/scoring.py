"""Sequence log-likelihoods under causal language models, including the strand-symmetric one for DNA."""

import torch

from ..data.dna import strand_positions
from ..models.blocks import reversal_index
from ..models.rc import reverse_complement


@torch.no_grad()
def sequence_log_likelihood(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) (B,) under a causal LM: the sum of log p(x_t | x_<t) over the valid tokens that
    have a valid token before them (the first one is the condition, not a prediction). Left or
    right padding gives every row the value it gets alone."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.bool()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    token_log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    predicted = valid[:, 1:] & (valid.long().cumsum(dim=1)[:, :-1] > 0)
    return (token_log_probs * predicted).sum(dim=1)


@torch.no_grad()
def rc_invariant_log_likelihood(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    complement_map: list[int],
    special_ids: list[int],
) -> torch.Tensor:
    """The mean of log p(x) and log p(rc(x)) per sequence (B,): the same for a sequence and its
    reverse complement, the strand-symmetric score of a causal DNA model (which cannot be made
    equivariant itself without seeing the future).

    rc(x) reverses and complements the sequence tokens only; special tokens (`special_ids`, e.g.
    `tokenizer.all_special_ids`: delimiters and padding) stay where they are, so `<cls> ACG <eos>`
    is scored against `<cls> CGT <eos>`, the form the model was trained on.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    index = reversal_index(strand_positions(input_ids, special_ids) & attention_mask.bool())
    rc_ids = reverse_complement(input_ids, torch.tensor(complement_map), index)
    both = sequence_log_likelihood(model, torch.cat([input_ids, rc_ids]), torch.cat([attention_mask, attention_mask]))
    forward_strand, rc_strand = both.chunk(2)
    return (forward_strand + rc_strand) / 2
