"""Sampling new sequences from a causal language model."""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..tokenization import sequence_token_ids
from .score import require_causal_lm


@dataclass
class GeneratedSequence:
    id: str
    sequence: str  # the prompt followed by the generated continuation, special tokens removed
    log_likelihood: float  # of the generated tokens (and the final <eos>, if one was generated)
    finished: bool  # True when the model ended the sequence with <eos>


@dataclass
class Continuation:
    index: int  # 0-based, counted over all batches
    tokens: list[int]  # the new tokens, up to and including the one that ended it
    log_likelihood: float  # of those tokens, under the unmodified distribution
    finished: bool  # ended by one of the end tokens (else it reached max_new_tokens)


def sample_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    n: int,
    ends: list[int],
    suppressed: list[int] | None,
    batch_size: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    **generate_options,
) -> Iterator[Continuation]:
    """`n` continuations of `prompt_ids` (1, P), sampled `batch_size` at a time with `generate`,
    each cut after its first token in `ends` and scored by the model's own log-likelihood of what
    it generated (not the tempered or truncated distribution it was sampled from).
    `generate_options` go to `generate` as they are (e.g. `position_ids`)."""
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        out = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            do_sample=True,
            temperature=temperature,
            top_k=top_k or 0,
            top_p=top_p or 1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=rows,
            eos_token_id=ends,
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=suppressed,
            output_logits=True,
            return_dict_in_generate=True,
            **generate_options,
        )
        new_tokens = out.sequences[:, prompt_ids.shape[1] :]
        log_probs = F.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        token_log_probs = log_probs.gather(-1, new_tokens[..., None])[..., 0]
        for row in range(rows):
            tokens = new_tokens[row].tolist()
            end = next((i for i, token in enumerate(tokens) if token in ends), None)
            length = len(tokens) if end is None else end + 1
            yield Continuation(start + row, tokens[:length], token_log_probs[row, :length].sum().item(), end is not None)


@torch.no_grad()
def generate_sequences(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    prompt: str = "",
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    id_prefix: str = "generated",
) -> list[GeneratedSequence]:
    """Sample `n` sequences after `<cls>` + `prompt`, each scored by the model's own log-likelihood
    of what it generated (the unmodified distribution, not the tempered or truncated one).

    For a model of a known domain, only tokens of that domain's sequences (and `<eos>`) are sampled:
    no gaps, sentinels or special tokens end up inside a generated sequence."""
    require_causal_lm(model, "generation")
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("-n, --max-new-tokens and --batch-size must be positive")
    if temperature <= 0:
        raise ValueError("--temperature must be positive")
    if seed is not None:
        torch.manual_seed(seed)
    prompt_ids = torch.tensor([tokenizer(prompt)["input_ids"]], dtype=torch.long, device=model.device)
    if prompt_ids.shape[1] == 0:
        # e.g. a converted causal DNA-xLSTM model: it was trained on windows of bases without a start token
        raise ValueError("this model's tokenizer adds no start token: generation needs a prompt of at least one token")
    suppressed = None
    if model.config.domain is not None:
        allowed = set(sequence_token_ids(tokenizer, model.config.domain)) | {tokenizer.eos_token_id}
        suppressed = [i for i in range(model.config.vocab_size) if i not in allowed]
    results = []
    for sample in sample_continuations(
        model, tokenizer, prompt_ids, n, [tokenizer.eos_token_id], suppressed, batch_size,
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
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
