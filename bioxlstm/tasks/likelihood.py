"""Log-likelihoods of sequences under a causal language model: every score, perplexity and model-card
figure is computed here.

Numbers: log-softmax in float32, the log-probabilities summed in float64, whatever the sequence
length or window: a float32 sum over thousands of tokens is good only to ~1e-4, and a sequence
scored window by window must get the number it gets in one pass.
Perplexity: exp of the mean negative log-likelihood per predicted token. A sequence of L residues
read as `<cls>` + residues + `<eos>` predicts L + 1 tokens. A padding token inside a sequence is read
but not predicted: it counts in neither the log-likelihood nor the number of tokens.
Reverse complements are taken on token ids (a complement map, `bioxlstm.complement_map`); special
tokens stay where they are, so `<cls> ACG <eos>` pairs with `<cls> CGT <eos>`, the form DNA models
are trained on.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..domains import allows
from ..io import Record
from ..token_rows import TokenRow, reverse_complement_ids, right_padded, strand_positions
from ..tokenization import complement_map as token_complement_map
from .running import run_texts


@dataclass
class SequenceScore:
    id: str
    length: int  # characters of the sequence (residues, bases; a SMILES string's characters)
    log_likelihood: float  # natural log, of the sequence and its end (<eos>)
    perplexity: float  # per predicted token (a SMILES token such as Cl or [nH] is one)


@dataclass
class MoleculeScore(SequenceScore):
    valid: bool  # RDKit reads the SMILES as a molecule; an invalid one still has a likelihood, flagged here


class UnknownTokenError(ValueError):
    """A record holds a token outside the model's vocabulary, which it would read as `<unk>`."""


def require_causal_lm(model: PreTrainedModel, task: str) -> None:
    if not hasattr(model, "lm_head") or getattr(model.config, "bidirectional", False):
        raise ValueError(f"{task} needs a causal language model; this one is a {type(model).__name__}")


def perplexity(log_likelihood: float, predicted_tokens: int) -> float:
    """exp of the mean negative log-likelihood per predicted token."""
    return math.exp(-log_likelihood / predicted_tokens)


def token_log_probabilities(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position (..., ), in float64, of logits (..., vocab) that predict `targets`."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0].double()


def summed_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """The sum over the last axis (...,) of log p(target), in float64, at the positions where
    `counted` is True: every log-likelihood of a sequence, or of a piece of one, is this sum."""
    return (token_log_probabilities(logits, targets) * counted).sum(dim=-1)


@torch.no_grad()
def sequence_log_likelihood(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache=None,
    skip: int = 0,
) -> torch.Tensor:
    """log p(x) (B,) under a causal LM, float64: the sum of log p(x_t | x_<t) over the valid tokens
    that have a valid token before them (the first one is the condition, not a prediction). Left or
    right padding gives every row the value it gets alone. `cache`: a state the rows continue from;
    `skip`: leading positions that are read but not scored (a context in the same rows)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.bool()
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        cache=cache, use_cache=cache is not None,
    ).logits[:, skip:-1]  # fmt: skip
    predicted = (valid[:, 1:] & (valid.long().cumsum(dim=1)[:, :-1] > 0))[:, skip:]
    return summed_log_likelihood(logits, input_ids[:, skip + 1 :], predicted)


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
    equivariant itself without seeing the future). `special_ids`: e.g. `tokenizer.all_special_ids`."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    sequence_tokens = strand_positions(input_ids, special_ids) & attention_mask.bool()
    rc_ids = reverse_complement_ids(input_ids, sequence_tokens, complement_map)
    both = sequence_log_likelihood(model, torch.cat([input_ids, rc_ids]), torch.cat([attention_mask, attention_mask]))
    forward_strand, rc_strand = both.chunk(2)
    return (forward_strand + rc_strand) / 2


@torch.no_grad()
def row_log_likelihoods(
    model,
    rows: list[TokenRow],
    pad_id: int,
    cache=None,
    skip: int = 0,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """log p of every row (token ids with their positions) after its first token, `batch_size` rows
    at a time, each batch continuing from a copy of `cache` (one sequence's state) when given; the
    first `skip` tokens of every row are read but not scored. progress: told the number of tokens
    of every batch once it is scored."""
    results = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        input_ids, mask = right_padded([row.input_ids for row in batch], pad_id, model.device)
        position_ids, _ = right_padded([row.position_ids for row in batch], 0, model.device)
        state = None if cache is None else cache.repeat_interleave(len(batch))
        results += sequence_log_likelihood(model, input_ids, mask, position_ids, state, skip).tolist()
        if progress is not None:
            progress(sum(len(row) for row in batch))
    return results


def score_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[Record],
    rc_invariant: bool = False,
    window: int = 4096,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> Iterator[SequenceScore]:
    """Yield the log-likelihood of every record: `<cls>` + sequence + `<eos>`, every token after
    `<cls>` predicted from the ones before it. Long sequences are scored window by window with
    the recurrent state carried, which gives the same numbers as one pass.

    rc_invariant: DNA only; the mean of the log-likelihoods of both strands, a strand-symmetric
    score for a causal model, which cannot see the other strand without seeing the future.
    progress: told the number of tokens read after every model call.
    """
    require_causal_lm(model, "scoring")
    if rc_invariant and not allows(model.config.domain, "has_strands"):
        raise ValueError(f"strand-symmetric scoring needs a model of double-stranded sequences; this one is for {model.config.domain}")
    molecules = allows(model.config.domain, "molecule_sets")
    if molecules:
        from ..chem import is_valid

        records = (
            ((record.id, len(record.sequence), is_valid(record.sequence)), record.sequence)
            for record in _in_vocabulary(records, tokenizer)
        )
    else:
        records = (((record.id, len(record.sequence), None), record.sequence) for record in records)
    pieces = run_texts(
        model, tokenizer, records, window=window, batch_size=batch_size, logits=True, append_eos=True,
        complement=token_complement_map(tokenizer) if rc_invariant else None, progress=progress,
    )  # fmt: skip
    pad_id = tokenizer.pad_token_id

    def scored(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        # A [PAD] inside a sequence is a token the vocabulary lacks (converted Chem-xLSTM tokenizers
        # encode those so, as their project does), and that project leaves it out of its sum and count.
        counted = targets != pad_id if pad_id is not None else torch.ones_like(targets, dtype=torch.bool)
        return summed_log_likelihood(logits, targets, counted).item(), int(counted.sum())

    total, predicted, previous_logits, strand_scores = 0.0, 0, None, []
    for piece in pieces:
        if piece.is_first:
            total, predicted = 0.0, 0  # <cls> is given, not predicted
        if not piece.is_first:  # the last logits of the previous window predict this window's first token
            value, count = scored(previous_logits, piece.token_ids[:1])
            total, predicted = total + value, predicted + count
        value, count = scored(piece.logits[:-1], piece.token_ids[1:])
        total, predicted = total + value, predicted + count
        previous_logits = piece.logits[-1:]
        if not piece.is_last:
            continue
        strand_scores.append(total)
        if piece.strand == (1 if rc_invariant else 0):
            (record_id, length, valid), log_likelihood = piece.key, sum(strand_scores) / len(strand_scores)
            strand_scores = []
            score = SequenceScore(record_id, length, log_likelihood, perplexity(log_likelihood, predicted))
            yield MoleculeScore(**vars(score), valid=valid) if molecules else score


def _in_vocabulary(records: Iterable[Record], tokenizer: PreTrainedTokenizerBase) -> Iterator[Record]:
    """The records, each refused with UnknownTokenError if it holds a token the vocabulary lacks:
    the alphabet check passes any bracket atom, and `<unk>` would get a likelihood that means nothing.
    A tokenizer whose unknown token is its padding (converted Chem-xLSTM) leaves such tokens out of
    the score, as its project does, so there is nothing to refuse."""
    unknown = tokenizer.unk_token_id
    for record in records:
        if unknown is not None and unknown != tokenizer.pad_token_id:
            encoding = tokenizer(record.sequence, add_special_tokens=False, return_offsets_mapping=True)
            if unknown in encoding["input_ids"]:
                start, end = encoding["offset_mapping"][encoding["input_ids"].index(unknown)]
                raise UnknownTokenError(
                    f"record {record.id!r}: token {record.sequence[start:end]!r} at position {start + 1} is not in "
                    "the model's vocabulary, so the model cannot score it"
                )
        yield record
