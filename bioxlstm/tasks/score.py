"""Sequence log-likelihoods under a causal language model."""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from Bio.Seq import reverse_complement
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..io import Record
from .running import run_texts


@dataclass
class SequenceScore:
    id: str
    length: int
    log_likelihood: float  # natural log, of the sequence and its end (<eos>)
    perplexity: float  # per predicted token


def require_causal_lm(model: PreTrainedModel, task: str) -> None:
    if not hasattr(model, "lm_head") or getattr(model.config, "bidirectional", False):
        raise ValueError(f"{task} needs a causal language model; this one is a {type(model).__name__}")


def score_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[Record],
    rc_invariant: bool = False,
    window: int = 4096,
    batch_size: int = 16,
) -> Iterator[SequenceScore]:
    """Yield the log-likelihood of every record: `<cls>` + sequence + `<eos>`, every token after
    `<cls>` predicted from the ones before it. Long sequences are scored window by window with
    the recurrent state carried, which gives the same numbers as one pass.

    rc_invariant: DNA only; the mean of the log-likelihoods of both strands, a strand-symmetric
    score for a causal model, which cannot see the other strand without seeing the future.
    """
    require_causal_lm(model, "scoring")
    if rc_invariant and model.config.domain not in (None, "dna"):
        raise ValueError(f"--rc-invariant needs a DNA model; this one is for {model.config.domain}")

    def strands():
        for record in records:
            texts = [record.sequence] + ([reverse_complement(record.sequence)] if rc_invariant else [])
            for strand, text in enumerate(texts):
                yield (record.id, strand, len(record.sequence)), text

    total, previous_logits, strand_scores = 0.0, None, []
    pieces = run_texts(model, tokenizer, strands(), window=window, batch_size=batch_size, logits=True, append_eos=True)
    for piece in pieces:
        if piece.is_first:
            total = 0.0
        else:  # the last logits of the previous window predict this window's first token
            total += _log_probability(previous_logits, piece.token_ids[:1])
        total += _log_probability(piece.logits[:-1], piece.token_ids[1:])
        previous_logits = piece.logits[-1:]
        if not piece.is_last:
            continue
        record_id, strand, length = piece.key
        strand_scores.append(total)
        if strand == (1 if rc_invariant else 0):
            log_likelihood = sum(strand_scores) / len(strand_scores)
            strand_scores = []
            yield SequenceScore(record_id, length, log_likelihood, math.exp(-log_likelihood / (length + 1)))


def _log_probability(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return F.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).sum().item()
