"""Sequence files -> Hugging Face `datasets` of token-id examples, ready for a collator.

The pipeline, the same for every domain:

    files --read_records--> records --tokenise--> token ids --examples--> <cls> ... windows
          --split--> train / eval --augmentation (DNA: reverse complements; SMILES: random spellings)--> collator

- Records stream from `bioxlstm.io.read_records` into an Arrow table that `datasets` caches on disk
  and memory-maps (`streaming: true` builds an `IterableDataset` instead, for corpora larger than
  the disk cache or RAM). Tokenisation is a batched `map` with `num_proc` workers.
- An example starts with `<cls>` (as every tokenised prompt does) and holds at most `max_length`
  tokens. `<eos>` follows a sequence only where it really ends, so a window cut from the middle of
  a genome carries none. With `cut_at` (e.g. `.` between the molecules of a set) a long record is
  cut just after that token, so no item is split unless it alone exceeds an example. With
  `homologs_in_context`, consecutive records of one file (one protein family) are joined, each
  closed by `<eos>`, into examples of up to `max_length` tokens, so the model predicts each homolog
  with the previous ones in context.
- `held_out_records` leaves records out of training altogether (e.g. whole ICST domains kept for
  an in-context evaluation on domains the model never saw).
- Without separate eval files, an example goes to the eval split when a hash of its tokens falls in
  the `eval_fraction`: the split is the same on every run, in streaming and map-style mode alike,
  and identical examples never straddle it.
- Augmentation applies to the training split only, after the split, so the eval examples stay as
  written and no variant of one reaches training. `smiles_spellings` (SMILES enumeration) adds to
  every training molecule up to that many other SMILES of it, from random atom orders: a model that has
  seen each molecule in many spellings cannot learn a small data set by heart as quickly, which
  matters once that set is read for many epochs; it also learns to write random spellings, which it
  keeps valid far less often, so it suits models that score or embed molecules, not generators.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from ..domains import get_domain
from ..io import read_records
from ..token_rows import reverse_complement_ids, right_padded
from ..tokenization import complement_map, vocabulary_id

if TYPE_CHECKING:  # `datasets` is imported where it is used (the [train] extra)
    import datasets

# Buckets of the hash split: eval_fraction is honoured to 1 / HASH_BUCKETS.
HASH_BUCKETS = 10_000


@dataclass
class DataSpec:
    """The `data` section of a recipe. Paths are relative to the recipe file."""

    train: list[str] = field(default_factory=list)  # sequence files read by bioxlstm.io
    eval: list[str] = field(default_factory=list)  # held-out files; empty: hold out eval_fraction of train
    eval_fraction: float = 0.01
    max_eval_examples: int | None = None  # cap on the eval set, so evaluation stays quick
    format: str | None = None  # bioxlstm.io format of every file; default: from each file's extension
    on_invalid: str = "error"  # bioxlstm.io policy for records with characters outside the alphabet
    max_records: int | None = None  # read at most this many records per file
    held_out_records: list[int] = field(default_factory=list)  # record numbers (from 1, per file) never trained on
    max_length: int = 1024  # tokens per example, <cls> and <eos> included
    homologs_in_context: bool = False
    reverse_complement: bool = False  # DNA: add the reverse-complement strand of every training example
    smiles_spellings: int = 0  # SMILES: add up to this many random spellings of every training molecule
    cut_at: str | None = None  # a token after which long records are cut (e.g. "." between molecules)
    packing: bool = True  # pack examples into one row with state resets (else pad to the longest)
    mlm_probability: float = 0.15  # objective mlm: the fraction of sequence tokens selected for the loss
    rc_probability: float = 0.0  # DNA: the collator replaces an example by its reverse complement this often
    fim_probability: float = 0.5  # objective fim-icl: the fraction of queries written in fill-in-the-middle form
    streaming: bool = False
    num_proc: int | None = None  # worker processes for tokenisation (map-style datasets only)
    cache_dir: str | None = None  # Arrow cache; default: the datasets library's cache
    cards: list[str] = field(default_factory=list)  # data cards (markdown) of the files, for the model card
    seed: int = 0  # seed of the hash that chooses the eval examples, and of the collators' random draws
    # Labeled-data objectives (`bioxlstm.data.labeled`): where the labels are and the held-out test split.
    test: list[str] = field(default_factory=list)  # held-out test files; empty: hold out test_fraction of train
    test_fraction: float = 0.0
    sequence_column: str = "sequence"  # CSV/TSV/Parquet: the column of the sequences (every objective)
    label_column: str = "label"  # the column, or the FASTA header key (`>id label=...`), of the labels
    id_column: str | None = None  # the column of record ids (else row_1, row_2, ...)
    classes: list[str] | None = None  # class names in order (the second of two is the positive one); default: sorted

    def validate(self) -> None:
        if not self.train:
            raise ValueError("recipe data.train names no files")
        for path in [*self.train, *self.eval, *self.test, *self.cards]:
            if not Path(path).is_file():
                raise FileNotFoundError(2, "no such file", path)
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0 <= self.test_fraction < 1 or self.eval_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"data.test_fraction must be in [0, 1) and leave training data beside data.eval_fraction, "
                f"got {self.test_fraction} and {self.eval_fraction}"
            )
        if not self.eval and self.eval_fraction == 0:
            raise ValueError("no eval data: give data.eval files or a positive data.eval_fraction")
        if self.max_length < 3:
            raise ValueError(f"data.max_length must be at least 3 (<cls>, a token, <eos>), got {self.max_length}")
        if self.smiles_spellings < 0:
            raise ValueError(f"data.smiles_spellings must be 0 or more, got {self.smiles_spellings}")
        for name in ("mlm_probability", "rc_probability", "fim_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")


def _records(
    paths: list[str], format: str | None, domain: str, on_invalid: str, max_records: int | None,
    skipped: list[int], stamps, column: str = "sequence",
):
    # `stamps` (size, mtime per file) is unused here but part of the arguments `datasets` hashes for
    # its cache fingerprint, so an edited file is read again instead of served stale from the cache.
    del stamps
    for source, path in enumerate(paths):
        records = read_records(path, format, domain, on_invalid, column=column)
        kept = (record for number, record in enumerate(records, start=1) if number not in skipped)
        for record in itertools.islice(kept, max_records):
            yield {"source": source, "sequence": record.sequence}


def read_dataset(
    paths: list[str], spec: DataSpec, domain: str, skipped: list[int] = ()
) -> datasets.Dataset | datasets.IterableDataset:
    """The records of `paths` as a dataset with columns `source` (file index) and `sequence`,
    without the records numbered (from 1, in each file) in `skipped`."""
    # Imported here: scoring and generation import this package, and a base install has no `datasets`.
    import datasets

    kwargs = dict(
        paths=[str(Path(p).resolve()) for p in paths],
        format=spec.format,
        domain=domain,
        on_invalid=spec.on_invalid,
        max_records=spec.max_records,
        skipped=tuple(sorted(skipped)),  # a tuple: `datasets` would shard over a list
        stamps=[(Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths],
        column=spec.sequence_column,
    )
    if spec.streaming:
        return datasets.IterableDataset.from_generator(_records, gen_kwargs=kwargs)
    try:
        return datasets.Dataset.from_generator(_records, gen_kwargs=kwargs, cache_dir=spec.cache_dir)
    except datasets.exceptions.DatasetGenerationError as error:
        # A bad record is the user's input error, not a failure of the generator machinery.
        raise error.__cause__ or error


def _tokenise(batch: dict, tokenizer: PreTrainedTokenizerBase) -> dict:
    return {"input_ids": tokenizer(batch["sequence"], add_special_tokens=False)["input_ids"]}


def _pieces(ids: list[int], room: int, cut_after: int | None) -> list[list[int]]:
    """`ids` in pieces of at most `room` tokens; each piece but the last ends just after a `cut_after`
    token when it holds one."""
    pieces, start = [], 0
    while start < len(ids):
        end = min(start + room, len(ids))
        if end < len(ids) and cut_after is not None:
            window = ids[start:end]
            if cut_after in window:
                end = start + len(window) - window[::-1].index(cut_after)
        pieces.append(ids[start:end])
        start = end
    return pieces


def _examples(
    batch: dict, cls_id: int, eos_id: int, max_length: int, homologs_in_context: bool, cut_after: int | None
) -> dict:
    """Cut each sequence (closed by <eos>) into pieces of at most max_length - 1 tokens (after a
    `cut_after` token where possible) and start every example with <cls>; with homologs_in_context,
    fill each example with consecutive pieces of the same file."""
    room = max_length - 1
    examples, current, current_source = [], [], None
    for source, ids in zip(batch["source"], batch["input_ids"]):
        for piece in _pieces([*ids, eos_id], room, cut_after):
            fits = homologs_in_context and source == current_source and len(current) + len(piece) <= room
            if current and not fits:
                examples.append([cls_id, *current])
                current = []
            current += piece
            current_source = source
    if current:
        examples.append([cls_id, *current])
    return {"input_ids": examples}


def _in_split(example: dict, eval_fraction: float, seed: int, evaluation: bool) -> bool:
    digest = zlib.crc32(str(example["input_ids"]).encode(), seed)
    return (digest % HASH_BUCKETS < eval_fraction * HASH_BUCKETS) == evaluation


def _with_reverse_complements(batch: dict, complement: list[int], eos_id: int) -> dict:
    """Every example, then its reverse complement with <cls> (and a closing <eos>) kept in place."""
    ids, present = right_padded(batch["input_ids"], eos_id)
    body = present.bool()
    body[:, 0] = False
    last = present.sum(dim=1) - 1
    rows = torch.arange(len(ids))
    body[rows, last] &= ids[rows, last] != eos_id  # a window cut from inside a record has no <eos>
    flipped = reverse_complement_ids(ids, body, complement)
    examples = []
    for row, original in enumerate(batch["input_ids"]):
        examples += [original, flipped[row, : len(original)].tolist()]
    return {"input_ids": examples}


def _with_random_spellings(batch: dict, tokenizer: PreTrainedTokenizerBase, count: int, seed: int, max_length: int) -> dict:
    """Every example, then up to `count` random spellings of its molecule, each as its own example.
    A piece of a longer record (no closing <eos>) is kept as it is, without spellings; a spelling that
    holds a token outside the vocabulary or is too long for an example is left out."""
    from ..chem import random_spellings

    examples = []
    for ids in batch["input_ids"]:
        examples.append(ids)
        if ids[-1] != tokenizer.eos_token_id:
            continue
        smiles = tokenizer.decode(ids[1:-1])
        # Seeded by the molecule, not its place in the batch: the same spellings with any num_proc.
        for spelling in random_spellings(smiles, count, zlib.crc32(smiles.encode(), seed)):
            tokens = tokenizer(spelling, add_special_tokens=False)["input_ids"]
            if tokenizer.unk_token_id not in tokens and len(tokens) + 2 <= max_length:
                examples.append([ids[0], *tokens, ids[-1]])
    return {"input_ids": examples}


def build_datasets(spec: DataSpec, tokenizer: PreTrainedTokenizerBase, domain: str):
    """(train, eval) datasets of `input_ids` examples, as described in the module docstring."""
    spec.validate()
    if spec.smiles_spellings and not get_domain(domain).molecule_sets:
        raise ValueError(f"data.smiles_spellings needs SMILES data; this recipe's domain is {domain}")
    cut_after = None
    if spec.cut_at is not None:
        cut_after = vocabulary_id(tokenizer, spec.cut_at)
        if cut_after is None:
            raise ValueError(f"data.cut_at {spec.cut_at!r} is not a token of the {domain} tokenizer")
    map_options = {} if spec.streaming else {"num_proc": spec.num_proc}

    def examples_of(paths: list[str], skipped: list[int] = ()):
        records = read_dataset(paths, spec, domain, skipped)
        tokens = records.map(
            _tokenise, batched=True, fn_kwargs={"tokenizer": tokenizer}, remove_columns=["sequence"],
            **map_options, **({} if spec.streaming else {"desc": "tokenising"}),
        )
        # One process: a group of homologs must not be cut at a worker's shard boundary.
        return tokens.map(
            _examples, batched=True, remove_columns=["source"],
            fn_kwargs={
                "cls_id": tokenizer.cls_token_id, "eos_id": tokenizer.eos_token_id,
                "max_length": spec.max_length, "homologs_in_context": spec.homologs_in_context,
                "cut_after": cut_after,
            },
            **({} if spec.streaming else {"desc": "cutting examples"}),
        )

    train = examples_of(spec.train, spec.held_out_records)
    if spec.eval:
        evaluation = examples_of(spec.eval)
    else:
        split = {"eval_fraction": spec.eval_fraction, "seed": spec.seed}
        evaluation = train.filter(_in_split, fn_kwargs={**split, "evaluation": True}, **map_options)
        train = train.filter(_in_split, fn_kwargs={**split, "evaluation": False}, **map_options)
    if spec.max_eval_examples is not None:
        evaluation = (
            evaluation.take(spec.max_eval_examples)
            if spec.streaming
            else evaluation.select(range(min(spec.max_eval_examples, len(evaluation))))
        )
    if spec.reverse_complement:
        train = train.map(
            _with_reverse_complements, batched=True,
            fn_kwargs={"complement": complement_map(tokenizer), "eos_id": tokenizer.eos_token_id}, **map_options,
        )
    if spec.smiles_spellings:
        train = train.map(
            _with_random_spellings, batched=True, **map_options,
            fn_kwargs={
                "tokenizer": tokenizer, "count": spec.smiles_spellings, "seed": spec.seed,
                "max_length": spec.max_length,
            },
            **({} if spec.streaming else {"desc": "spelling molecules"}),
        )
    return train, evaluation
