"""Homolog contexts and the fill-in-the-middle (FIM) transform of ProtMamba / Prot-xLSTM.

A homolog context is one row of tokens: every homolog as `<cls>` + residues, then the query as
`<cls>` + residues + `<eos>`, the query last. Position ids restart at 0 on every `<cls>`, so
residue j (1-based) of any sequence has position j, whatever precedes it.

The FIM transform of a sequence cuts out up to five spans, writes `<mask-i>` in place of span i
and appends, after the sequence, `<mask-i>` followed by the span's residues for every span, then
`<eos>`. Every token keeps the position it has in the original sequence: a sentinel takes the
position of its span's first residue (in the sequence and in the suffix), the residues after a
span keep theirs (so positions jump over a cut-out span), and the suffix jumps back to the spans'
positions. `<eos>` takes the position after the last residue. A causal model trained on this learns
to write a span given everything around it: the prompt up to a suffix sentinel is an inpainting query.
"""

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from ..token_rows import TokenRow, right_padded
from ..tokenization import FILL_IN_THE_MIDDLE_SENTINELS
from .collators import batch_seed

LOSS_TARGETS = ("all", "infill")
IGNORE_INDEX = -100  # labels the loss skips (transformers' convention)
MAX_FIM_SPANS = 5  # spans cut out of a query in FIM form, at most


def sample_spans(
    length: int, rng: random.Random, max_spans: int = MAX_FIM_SPANS, min_span_length: int = 1, max_span_length: int = 16
) -> list[tuple[int, int]]:
    """Between 1 and `max_spans` non-overlapping spans `(start, end)` (0-based, end exclusive) of a
    sequence of `length` residues, in order, with at least one residue between two spans (so two
    sentinels never meet) and span lengths uniform in [min_span_length, max_span_length]. Fewer
    spans (possibly none) are returned when the sequence is too short for the drawn lengths."""
    if not 1 <= max_spans <= len(FILL_IN_THE_MIDDLE_SENTINELS):
        raise ValueError(f"max_spans must be between 1 and {len(FILL_IN_THE_MIDDLE_SENTINELS)}, got {max_spans}")
    if not 1 <= min_span_length <= max_span_length:
        raise ValueError(f"need 1 <= min_span_length <= max_span_length, got {min_span_length}, {max_span_length}")
    lengths = [rng.randint(min_span_length, max_span_length) for _ in range(rng.randint(1, max_spans))]
    while lengths and sum(lengths) + len(lengths) - 1 > length:
        lengths.pop()
    count = len(lengths)
    if count == 0:
        return []
    # The residues left over are shared among the count + 1 gaps around the spans (stars and bars),
    # after one residue is reserved for each of the count - 1 inner gaps.
    spare = length - sum(lengths) - (count - 1)
    bars = sorted(rng.sample(range(spare + count), count))
    gaps = [b - a - 1 for a, b in zip([-1, *bars], bars)]
    spans, start = [], 0
    for index, (gap, span_length) in enumerate(zip(gaps, lengths)):
        start += gap + (index > 0)
        spans.append((start, start + span_length))
        start += span_length
    return spans


def sentinel_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of `<mask-1>` .. `<mask-5>`."""
    return tokenizer.convert_tokens_to_ids(FILL_IN_THE_MIDDLE_SENTINELS)


def sequence_row(cls_id: int, residue_ids: Sequence[int]) -> TokenRow:
    """`<cls>` + residues at positions 0, 1, .. L."""
    return TokenRow([cls_id, *residue_ids], list(range(len(residue_ids) + 1)), [False] * (len(residue_ids) + 1))


def fill_in_the_middle(
    cls_id: int, eos_id: int, residue_ids: Sequence[int], spans: Sequence[tuple[int, int]], sentinels: Sequence[int]
) -> TokenRow:
    """The FIM form of one sequence (see the module docstring), spans 0-based, end exclusive, in order."""
    if len(spans) > len(sentinels):
        raise ValueError(f"at most {len(sentinels)} spans can be filled, got {len(spans)}")
    row = TokenRow([cls_id], [0], [False])
    suffix = TokenRow([], [], [])
    previous_end = 0
    for sentinel, (start, end) in zip(sentinels, spans):
        if not previous_end <= start < end <= len(residue_ids):
            raise ValueError(f"span {start}-{end} overlaps another or lies outside a sequence of {len(residue_ids)}")
        row += TokenRow(list(residue_ids[previous_end:start]), list(range(previous_end + 1, start + 1)), [False] * (start - previous_end))
        row += TokenRow([sentinel], [start + 1], [False])
        suffix += TokenRow([sentinel, *residue_ids[start:end]], [start + 1, *range(start + 1, end + 1)], [True] * (end - start + 1))
        previous_end = end
    tail = len(residue_ids) - previous_end
    row += TokenRow(list(residue_ids[previous_end:]), list(range(previous_end + 1, len(residue_ids) + 1)), [False] * tail)
    return row + suffix + TokenRow([eos_id], [len(residue_ids) + 1], [True])


def undo_fill_in_the_middle(fim_ids: Sequence[int], sentinels: Sequence[int]) -> list[int]:
    """The residues of a sequence from its FIM form without `<cls>` and `<eos>`: every sentinel in
    the sequence is replaced by the tokens that follow the same sentinel in the suffix."""
    sentinel_set = set(sentinels)
    first = next((i for i, token in enumerate(fim_ids) if token in sentinel_set), len(fim_ids))
    suffix_start = next(
        (i for i in range(first + 1, len(fim_ids)) if fim_ids[i] in sentinel_set and fim_ids[i] == fim_ids[first]),
        len(fim_ids),
    )
    fills: dict[int, list[int]] = {}
    current = None
    for token in fim_ids[suffix_start:]:
        if token in sentinel_set:
            current = fills.setdefault(token, [])
        else:
            current.append(token)
    restored = []
    for token in fim_ids[:suffix_start]:
        restored.extend(fills.get(token, []) if token in sentinel_set else [token])
    return restored


def context_row(cls_id: int, homolog_residue_ids: Sequence[Sequence[int]]) -> TokenRow:
    """The homologs as one row: `<cls>` + residues each, positions restarting at every `<cls>`."""
    row = TokenRow([], [], [])
    for residue_ids in homolog_residue_ids:
        row += sequence_row(cls_id, residue_ids)
    return row


class HomologContextCollator:
    """Collate protein families into homolog-context rows for causal language modelling.

    Each feature is a family, in one of two forms:
    - `{"sequences": [query, *homologs]}`: strings, the query first (as `bioxlstm.io.read_records`
      yields an A3M);
    - `{"input_ids": [<cls>, *h1, <eos>, *h2, <eos>, ...]}`: a homolog group as
      `bioxlstm.data.build_datasets` cuts it with `homologs_in_context` (the `fim-icl` training
      objective); a member drawn at random is the query.
    Per row: the homologs are shuffled and taken while the whole row stays within `max_tokens`; the
    query comes last, in FIM form with probability `fim_probability`, and ends with `<eos>`. A query
    too long for `max_tokens` alone is cut to fit.

    loss_on: "all" trains on every token; "infill" only on the FIM suffix (sentinels, span residues
    and `<eos>`), the usual choice for fine-tuning an inpainting model.
    Returns input_ids, labels, position_ids and attention_mask, right-padded with `<pad>`.
    The draws of a batch come from `seed`, `epoch` and the batch's content (see
    `bioxlstm.data.collators.batch_seed`): the same seed gives the same batches.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int = 2048,
        fim_probability: float = 0.5,
        loss_on: str = "all",
        max_spans: int = MAX_FIM_SPANS,
        min_span_length: int = 1,
        max_span_length: int = 16,
        seed: int = 0,
    ):
        if loss_on not in LOSS_TARGETS:
            raise ValueError(f"loss_on must be one of {', '.join(LOSS_TARGETS)}, got {loss_on!r}")
        if max_tokens < 3:
            raise ValueError(f"max_tokens must leave room for <cls>, a residue and <eos>; got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.fim_probability = fim_probability
        self.loss_on = loss_on
        self.span_options = dict(max_spans=max_spans, min_span_length=min_span_length, max_span_length=max_span_length)
        self.sentinels = sentinel_ids(tokenizer)
        self.seed, self.epoch = seed, 0
        self.rng = random.Random(seed)

    def _residues(self, sequence: str | Sequence[int]) -> list[int]:
        if isinstance(sequence, str):
            return self.tokenizer(sequence, add_special_tokens=False)["input_ids"]
        return list(sequence)

    def family(self, feature: dict) -> list:
        """[query, *homologs] of a feature (strings or token-id lists)."""
        if "sequences" in feature:
            return list(feature["sequences"])
        members, current = [], []
        for token in feature["input_ids"][1:]:
            if token == self.tokenizer.eos_token_id:
                members.append(current)
                current = []
            else:
                current.append(token)
        if current:  # the group was cut inside its last member
            members.append(current)
        if not members:
            raise ValueError("a homolog group without any sequence")
        query = members.pop(self.rng.randrange(len(members)))
        return [query, *members]

    def row(self, sequences: Sequence[str | Sequence[int]]) -> TokenRow:
        cls_id, eos_id = self.tokenizer.cls_token_id, self.tokenizer.eos_token_id
        query = self._residues(sequences[0])[: self.max_tokens - 2]
        spans = []
        if self.rng.random() < self.fim_probability:
            spans = sample_spans(len(query), self.rng, **self.span_options)
        query_row = fill_in_the_middle(cls_id, eos_id, query, spans, self.sentinels)
        homologs = list(sequences[1:])
        self.rng.shuffle(homologs)
        budget = self.max_tokens - len(query_row)
        chosen = []
        for homolog in homologs:
            residues = self._residues(homolog)
            if len(residues) + 1 > budget:
                continue
            chosen.append(residues)
            budget -= len(residues) + 1
        return context_row(cls_id, chosen) + query_row

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        self.rng = random.Random(batch_seed(self.seed, self.epoch, features))
        rows = [self.row(self.family(feature)) for feature in features]
        input_ids, attention_mask = right_padded([row.input_ids for row in rows], self.tokenizer.pad_token_id)
        position_ids, _ = right_padded([row.position_ids for row in rows], 0)
        labels, _ = right_padded([self._labels(row) for row in rows], IGNORE_INDEX)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": attention_mask}

    def _labels(self, row: TokenRow) -> list[int]:
        """The labels of a row: its tokens, or with loss_on "infill" only those of its FIM suffix."""
        if self.loss_on == "infill":
            return [token if infill else IGNORE_INDEX for token, infill in zip(row.input_ids, row.infill)]
        return row.input_ids
