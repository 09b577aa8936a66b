"""Labeled data for fine-tuning: records with a label -> train / validation / test examples.

Three kinds of label (the objectives of the same names in `bioxlstm.training.OBJECTIVES`):

    sequence-classification   one class name per record (a table cell or `label=NAME` in a FASTA header)
    sequence-regression       one number per record
    token-classification      one class per residue: a label string as long as the sequence, one
                              character per residue (e.g. `----MMMMMMMMMMMMMMMMMMMM----` for a
                              transmembrane helix); classes are single characters

Records are read with `bioxlstm.io.read_labeled_records` (`data.sequence_column`, `label_column`,
`id_column`). The splits: `data.eval` and `data.test` files when given; otherwise `eval_fraction`
and `test_fraction` of the `train` records, drawn with `data.seed`. For sequence classification
the draw is stratified: the records are shuffled within each class, the classes laid end to end,
and every k-th record taken, so each class is spread over the splits in proportion. The split
depends on `data.seed` only, never on the training seed, so runs over seeds share one test set.

An example is the tokenised sequence as `bioxlstm embed` and `score` read it (`<cls>` + residues),
cut to `max_length` tokens; a token label of -100 (at `<cls>`) is ignored by loss and metrics.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from ..io import InputError, LabeledRecord, read_labeled_records
from .datasets import DataSpec

SEQUENCE_CLASSIFICATION, SEQUENCE_REGRESSION, TOKEN_CLASSIFICATION = (
    "sequence-classification", "sequence-regression", "token-classification",
)
LABEL_KINDS = (SEQUENCE_CLASSIFICATION, SEQUENCE_REGRESSION, TOKEN_CLASSIFICATION)
IGNORED_LABEL = -100  # transformers' loss functions skip it


@dataclass
class LabeledRecords:
    """The records of one split, with the file each came from (for error messages)."""

    records: list[LabeledRecord] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices) -> "LabeledRecords":
        return LabeledRecords([self.records[i] for i in indices], [self.sources[i] for i in indices])


@dataclass
class LabeledSplits:
    """Train, validation and test examples (`input_ids`, `labels`) and the classes the labels
    index (empty for regression)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    classes: list[str]
    test_ids: list[str] = field(default_factory=list)

    def head_config(self, kind: str) -> dict:
        """What a classifier head's config needs: `num_labels`, `problem_type` and the class names."""
        if kind == SEQUENCE_REGRESSION:
            return {"num_labels": 1, "problem_type": "regression"}
        problem = "single_label_classification" if kind == SEQUENCE_CLASSIFICATION else None
        return {
            "num_labels": len(self.classes),
            "id2label": dict(enumerate(self.classes)),
            "label2id": {name: index for index, name in enumerate(self.classes)},
            **({"problem_type": problem} if problem else {}),
        }


def read_labeled(paths: list[str], spec: DataSpec, domain: str) -> LabeledRecords:
    found = LabeledRecords()
    for path in paths:
        reader = read_labeled_records(
            path, spec.format, domain, spec.on_invalid, column=spec.sequence_column,
            label_column=spec.label_column, id_column=spec.id_column,
        )  # fmt: skip
        for record in itertools.islice(reader, spec.max_records):
            found.records.append(record)
            found.sources.append(path)
    return found


def _check_token_labels(found: LabeledRecords, label_column: str) -> None:
    for record, source in zip(found.records, found.sources):
        if len(record.label) != len(record.sequence):
            raise InputError(
                f"{source}: record {record.id!r}: its {label_column!r} label string has {len(record.label)} "
                f"characters for {len(record.sequence)} residues; token classification needs one per residue"
            )


def _regression_values(found: LabeledRecords, label_column: str) -> list[float]:
    values = []
    for record, source in zip(found.records, found.sources):
        try:
            value = float(record.label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(f"{source}: record {record.id!r}: label {record.label!r} in {label_column!r} is not a finite number")
        values.append(value)
    return values


def _split_order(found: LabeledRecords, kind: str, seed: int) -> list[int]:
    """Record indices shuffled, and for classification grouped by class, so that taking every k-th
    one stratifies."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(found)).tolist()
    if kind == SEQUENCE_CLASSIFICATION:
        order.sort(key=lambda index: found.records[index].label)  # stable: shuffled within each class
    return order


def _every_kth(order: list[int], fraction: float) -> tuple[list[int], list[int]]:
    """(taken, rest): the positions where floor(i * fraction) steps up, about `fraction` of them."""
    taken = [index for i, index in enumerate(order) if math.floor((i + 1) * fraction) > math.floor(i * fraction)]
    chosen = set(taken)
    return taken, [index for index in order if index not in chosen]


def split_records(found: LabeledRecords, kind: str, spec: DataSpec, with_eval: bool, with_test: bool):
    """(train, validation, test) record sets cut from `found` as the module docstring says."""
    order = _split_order(found, kind, spec.seed)
    test, rest = _every_kth(order, spec.test_fraction) if with_test else ([], order)
    eval_share = spec.eval_fraction / (1 - spec.test_fraction) if with_test else spec.eval_fraction
    validation, train = _every_kth(rest, eval_share) if with_eval else ([], rest)
    if not train or (with_eval and not validation) or (with_test and not test):
        raise ValueError(
            f"{len(found)} labeled records are too few for data.eval_fraction {spec.eval_fraction} and "
            f"data.test_fraction {spec.test_fraction}: a split would be empty"
        )
    return found.subset(sorted(train)), found.subset(sorted(validation)), found.subset(sorted(test))


def class_names(splits: list[LabeledRecords], kind: str, spec: DataSpec) -> list[str]:
    """`data.classes` in its order (the second of two is the positive class) or, without it, every
    label seen, sorted; a label outside `data.classes` is an error naming its record."""
    seen = {}
    for part in splits:
        for record, source in zip(part.records, part.sources):
            for name in record.label if kind == TOKEN_CLASSIFICATION else [record.label]:
                seen.setdefault(name, (source, record.id))
    if spec.classes is None:
        return sorted(seen)
    classes = [str(name) for name in spec.classes]
    unknown = [name for name in seen if name not in classes]
    if unknown:
        source, record_id = seen[unknown[0]]
        raise InputError(
            f"{source}: record {record_id!r}: label {unknown[0]!r} is not one of data.classes ({', '.join(classes)})"
        )
    return classes


def _examples(part: LabeledRecords, kind: str, classes: list[str], tokenizer, spec: DataSpec) -> datasets.Dataset:
    if not part.records:
        return datasets.Dataset.from_dict({"input_ids": [], "labels": []})
    sequences = [record.sequence for record in part.records]
    input_ids = tokenizer(sequences, truncation=True, max_length=spec.max_length)["input_ids"]
    if kind == SEQUENCE_REGRESSION:
        labels = _regression_values(part, spec.label_column)
    elif kind == SEQUENCE_CLASSIFICATION:
        index = {name: i for i, name in enumerate(classes)}
        labels = [index[record.label] for record in part.records]
    else:
        index = {name: i for i, name in enumerate(classes)}
        # <cls> first; residue i is token i + 1 (DNA and protein tokens are single characters).
        labels = [[IGNORED_LABEL, *(index[c] for c in record.label)][: len(ids)] for record, ids in zip(part.records, input_ids)]
    return datasets.Dataset.from_dict({"input_ids": input_ids, "labels": labels})


def build_labeled_datasets(spec: DataSpec, tokenizer: PreTrainedTokenizerBase, domain: str, kind: str) -> LabeledSplits:
    """Train, validation and test examples of a labeled-data recipe (see the module docstring)."""
    spec.validate()
    found = read_labeled(spec.train, spec, domain)
    given_eval = read_labeled(spec.eval, spec, domain) if spec.eval else None
    given_test = read_labeled(spec.test, spec, domain) if spec.test else None
    for part in (found, given_eval, given_test):
        if part is not None and kind == TOKEN_CLASSIFICATION:
            _check_token_labels(part, spec.label_column)
        elif part is not None and kind == SEQUENCE_REGRESSION:
            _regression_values(part, spec.label_column)
    train, validation, test = split_records(
        found, kind, spec, with_eval=given_eval is None, with_test=given_test is None and spec.test_fraction > 0
    )
    validation = given_eval or validation
    test = given_test or test
    parts = [train, validation, test]
    classes = [] if kind == SEQUENCE_REGRESSION else class_names(parts, kind, spec)
    trained = {label for record in train.records for label in record.label} if kind == TOKEN_CLASSIFICATION else {
        record.label for record in train.records}  # fmt: skip
    if kind != SEQUENCE_REGRESSION and len(trained) < 2:
        raise ValueError(f"the training split holds a single class ({', '.join(trained)}); classification needs two or more")
    if spec.max_eval_examples is not None:
        validation = validation.subset(range(min(len(validation), spec.max_eval_examples)))
    train_set, validation_set, test_set = (_examples(part, kind, classes, tokenizer, spec) for part in parts)
    return LabeledSplits(
        train_set, validation_set, test_set if len(test) else None, classes, [r.id for r in test.records]
    )
