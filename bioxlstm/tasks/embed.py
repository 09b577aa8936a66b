"""Sequence embeddings for downstream assays: pooled or per-token, optionally strand-invariant."""

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..domains import allows
from ..io import Record
from ..tokenization import complement_map
from .running import is_bidirectional, run_texts

POOLINGS = ("mean", "max", "last", "cls", "none")


class _Pool:
    """Reduces the per-token hidden states of one sequence, piece by piece, in constant memory
    (except for `none`, which keeps every token). The leading `<cls>` token is not pooled by
    mean/max/last; `cls` returns its state."""

    def __init__(self, pooling: str):
        self.pooling = pooling
        self.total = None
        self.count = 0
        self.tokens = []

    def add(self, hidden: torch.Tensor, is_first: bool) -> None:
        if is_first:
            if self.pooling == "cls":
                self.total = hidden[0]
            hidden = hidden[1:]
        if self.pooling == "none":
            self.tokens.append(hidden)
        elif self.pooling == "mean":
            self.total = hidden.sum(0) if self.total is None else self.total + hidden.sum(0)
            self.count += len(hidden)
        elif self.pooling == "max" and len(hidden):
            self.total = hidden.amax(0) if self.total is None else torch.maximum(self.total, hidden.amax(0))
        elif self.pooling == "last" and len(hidden):
            self.total = hidden[-1]

    def result(self) -> np.ndarray:
        if self.pooling == "none":
            return torch.cat(self.tokens).numpy()
        if self.pooling == "mean":
            return (self.total / self.count).numpy()
        return self.total.numpy()


def embed_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[Record],
    pooling: str = "mean",
    layer: int = -1,
    rc_invariant: bool = False,
    window: int = 4096,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield `(record id, embedding)` for every record, in order.

    pooling: `mean`, `max` or `last` over the sequence's tokens, `cls` (the state of the leading
    `<cls>` token: informative only for bidirectional models) or `none` (one vector per token).
    layer: hidden-state index (0: token embeddings, -1: the model's final output).
    rc_invariant: DNA only; average the embeddings of the sequence and of its reverse complement
    (per-token embeddings of the reverse strand are flipped back onto forward positions first).
    progress: told the number of tokens read after every model call.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if pooling == "cls" and not is_bidirectional(model):
        raise ValueError(
            "pooling 'cls' reads the <cls> token, which a causal model sees before the sequence; "
            "use mean, max or last"
        )
    if rc_invariant and not allows(model.config.domain, "has_strands"):
        raise ValueError(f"strand-symmetric embeddings need a DNA model; this one is for {model.config.domain}")
    states = model.config.num_hidden_layers + 1  # the token embeddings, then the output of every block
    if not -states <= layer < states:
        raise ValueError(
            f"layer {layer}: the model has {states} hidden states, 0 (token embeddings) to {states - 1} "
            f"(the final output; also -1)"
        )

    pools: dict[object, _Pool] = {}
    forward = None
    for piece in run_texts(
        model, tokenizer, ((record.id, record.sequence) for record in records), layer=layer, window=window,
        batch_size=batch_size, complement=complement_map(tokenizer) if rc_invariant else None, progress=progress,
    ):  # fmt: skip
        pool = pools.setdefault((piece.key, piece.strand), _Pool(pooling))
        pool.add(piece.hidden, piece.is_first)
        if not piece.is_last:
            continue
        vector = pools.pop((piece.key, piece.strand)).result()
        if not rc_invariant:
            yield piece.key, vector
        elif not piece.strand:
            forward = vector
        else:
            yield piece.key, (forward + (vector[::-1] if pooling == "none" else vector)) / 2
