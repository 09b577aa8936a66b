"""Sampling continuations from a causal language model: every generation task samples through
`sample_continuations`, one call of `transformers`' `generate` per batch, as one `SamplingOptions`
says."""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from ..tokenization import sequence_token_ids
from .likelihood import token_log_probabilities


@dataclass
class Continuation:
    index: int  # 0-based, counted over all batches
    tokens: list[int]  # the new tokens, up to and including the one that ended it
    token_log_likelihoods: list[float]  # of each of those tokens, under the unmodified distribution
    finished: bool  # ended by one of the end tokens (else it reached max_new_tokens)

    @property
    def log_likelihood(self) -> float:
        return sum(self.token_log_likelihoods)

    @property
    def body(self) -> list[int]:
        """The new tokens without the one that ended them."""
        return self.tokens[:-1] if self.finished else self.tokens


# Logits of a trained model span a few dozen nats: at 100 every allowed token is already about
# equally likely, and far above it float32 turns the logits into inf and NaN.
MAX_TEMPERATURE = 100.0
# `generate` keeps every sampled token and its logits in memory and reports a sequence only once it
# ends: far beyond a million tokens a run only looks hung until memory runs out.
MAX_NEW_TOKENS = 1_000_000


@dataclass(frozen=True)
class SamplingOptions:
    """How a generation task samples, from the command line or the Python API down to `generate`.

    max_new_tokens: the longest continuation. temperature: divides the logits (0, where a task
    allows it, picks the likeliest token). top_k, top_p: sample among the k likeliest tokens, within
    this probability mass (None: no limit). seed: seeds the task's random draws (None: they continue
    torch's global random state). batch_size: continuations sampled at once. grammar: a SMILES model
    writes only what can still become a molecule (`tasks.smiles_grammar`); False samples the model's
    own distribution (other domains have no grammar)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    batch_size: int = 16
    grammar: bool = True

    def check(self, n: int) -> None:
        """Raise ValueError where `n` samples with these options cannot be drawn."""
        if n < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("n, max_new_tokens and batch_size must be positive")
        if self.max_new_tokens > MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens {self.max_new_tokens:,} is more than the {MAX_NEW_TOKENS:,} a sampler can hold")
        if not 0 < self.temperature <= MAX_TEMPERATURE:  # also false for NaN
            raise ValueError(f"temperature {self.temperature!r}: expected a number above 0 and at most {MAX_TEMPERATURE:g}")

    def apply_seed(self) -> None:
        """Seed torch's random generator with `seed`; without one, leave its state as it is."""
        if self.seed is not None:
            torch.manual_seed(self.seed)


def never_sampled(tokenizer: PreTrainedTokenizerBase, vocab_size: int, domain: str | None, ends: Iterable[int]):
    """The token ids that may never be sampled: all but `domain`'s sequence tokens and the `ends`
    (no gaps, sentinels or special tokens inside a sequence); None, nothing, for an unknown domain."""
    if domain is None:
        return None
    allowed = set(sequence_token_ids(tokenizer, domain)) | set(ends)
    return [i for i in range(vocab_size) if i not in allowed]


@torch.no_grad()
def sample_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    n: int,
    ends: list[int],
    domain: str | None,
    options: SamplingOptions,
    cache=None,
    progress: Callable[[int], None] | None = None,
    logits_processor: LogitsProcessor | None = None,
    **generate_options,
) -> Iterator[Continuation]:
    """`n` continuations of `prompt_ids` (1, P), sampled `options.batch_size` at a time with
    `generate` at `options`' temperature, top-k and top-p, each cut after its first token in `ends`
    (or after `options.max_new_tokens`) and scored by the model's own log-likelihood of what it
    generated (not the tempered or truncated distribution it was sampled from). Only the tokens of
    `domain`'s sequences and the `ends` are sampled (see `never_sampled`). `options.seed` and
    `options.grammar` are the task's to apply: it seeds once for all its calls, and builds the grammar.

    cache: the model's state after all but the last prompt token (e.g. a context read once): every
    batch continues from a copy of it, so the prompt is read once for all samples.
    progress: told the number of continuations of every batch once it is sampled.
    logits_processor: applied to every step's scores before temperature, top-k and top-p (e.g. the
    SMILES grammar, `tasks.smiles_grammar.SmilesGrammar`); the log-likelihoods stay the model's own.
    `generate_options` go to `generate` as they are (e.g. `position_ids`). The options are checked
    by the tasks, with `SamplingOptions.check`, before they read any prompt."""
    suppressed = never_sampled(tokenizer, model.config.vocab_size, domain, ends)
    if options.temperature == 0:  # the likeliest token at every step
        choice = dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        choice = dict(do_sample=True, temperature=options.temperature, top_k=options.top_k or 0, top_p=options.top_p or 1.0)
    for start in range(0, n, options.batch_size):
        rows = min(options.batch_size, n - start)
        if cache is None:
            inputs, per_batch = prompt_ids, dict(num_return_sequences=rows)
            attention_mask = torch.ones_like(inputs)
        else:  # a cache passed in from outside is not one of transformers' compilable Cache classes
            inputs = prompt_ids[:, -1:].repeat(rows, 1)
            per_batch = dict(cache=cache.repeat_interleave(rows), disable_compile=True)
            # Over the tokens the cache has read and the new one: that says only the new one is to be read.
            attention_mask = inputs.new_ones(rows, cache.get_seq_length() + inputs.shape[1])
        out = model.generate(
            inputs,
            attention_mask=attention_mask,
            **choice,
            max_new_tokens=options.max_new_tokens,
            eos_token_id=ends,
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=suppressed,
            logits_processor=None if logits_processor is None else LogitsProcessorList([logits_processor]),
            output_logits=True,
            return_dict_in_generate=True,
            **per_batch,
            **generate_options,
        )
        new_tokens = out.sequences[:, inputs.shape[1] :]
        token_log_probs = token_log_probabilities(torch.stack(out.logits, dim=1), new_tokens)
        if progress is not None:
            progress(rows)
        for row in range(rows):
            tokens = new_tokens[row].tolist()
            end = next((i for i, token in enumerate(tokens) if token in ends), None)
            length = len(tokens) if end is None else end + 1
            yield Continuation(start + row, tokens[:length], token_log_probs[row, :length].tolist(), end is not None)
