"""Sampling new sequences from a causal language model."""

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..domains import DOMAINS
from .likelihood import require_causal_lm
from .sampling import SamplingOptions, sample_continuations
from .smiles_grammar import grammar_for


@dataclass
class GeneratedSequence:
    id: str
    sequence: str  # the prompt followed by the generated continuation, special tokens removed
    # of the generated tokens (and the final <eos>, if one was generated)
    log_likelihood: float = field(metadata={"format": ".4f"})
    finished: bool  # True when the model ended the sequence with <eos>


def check_prompt(prompt: str, domain: str | None) -> None:
    """Raise ValueError when `prompt` is not a valid start of a sequence of `domain`: a character
    outside the alphabet would become an unknown token and silently vanish from the output."""
    if domain not in DOMAINS or not prompt:
        return
    alphabet = DOMAINS[domain].alphabet
    position = alphabet.invalid_position(prompt)
    if position is not None:
        raise ValueError(
            f"prompt {prompt!r}: {prompt[position]!r} at position {position + 1} is not allowed "
            f"(allowed: {alphabet.description})"
        )


@torch.no_grad()
def generate_sequences(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    prompt: str = "",
    *,
    id_prefix: str = "generated",
    progress: Callable[[int], None] | None = None,
    sampling: SamplingOptions | None = None,
    **overrides,
) -> list[GeneratedSequence]:
    """Sample `n` sequences after `<cls>` + `prompt`, each scored by the model's own log-likelihood
    of what it generated (the unmodified distribution, not the tempered or truncated one).

    For a model of a known domain, only tokens of that domain's sequences (and `<eos>`) are sampled:
    no gaps, sentinels or special tokens end up inside a generated sequence. progress: told the
    number of sequences of every batch once it is sampled.
    sampling: a `SamplingOptions` (default: its defaults); `overrides` replace its fields by name
    (max_new_tokens=256, temperature=1.0, top_k, top_p, seed, batch_size=16, grammar=True: a SMILES
    model writes only what can still become a molecule)."""
    options = replace(sampling or SamplingOptions(), **overrides)
    require_causal_lm(model, "generation")
    options.check(n)
    check_prompt(prompt, model.config.domain)
    options.apply_seed()
    prompt_ids = torch.tensor([tokenizer(prompt)["input_ids"]], dtype=torch.long, device=model.device)
    if prompt_ids.shape[1] == 0:
        # e.g. a converted causal DNA-xLSTM model: it was trained on windows of bases without a start token
        raise ValueError("this model's tokenizer adds no start token: generation needs a prompt of at least one token")
    constraint = grammar_for(model, tokenizer, [tokenizer.eos_token_id], options.grammar, options.max_new_tokens)
    if constraint is not None:
        constraint.start(prompt_ids[0].tolist())  # a prompt it cannot continue fails before any sampling
    results = []
    for sample in sample_continuations(
        model, tokenizer, prompt_ids, n, [tokenizer.eos_token_id], model.config.domain, options, progress=progress,
        logits_processor=constraint,
    ):  # fmt: skip
        results.append(
            GeneratedSequence(
                id=f"{id_prefix}_{sample.index + 1}",
                sequence=tokenizer.decode(prompt_ids[0].tolist() + sample.tokens, skip_special_tokens=True),
                log_likelihood=sample.log_likelihood,
                finished=sample.finished,
            )
        )
    return results
