"""Labeled records: the training data of fine-tuning objectives and the targets of probes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import InputError, MissingLabelError
from .files import BIOPYTHON_FORMATS, TABLE_FORMATS
from .records import Record, RecordReader

# Label texts that mean "no label": pandas' missing-value spellings, compared in lower case, so a
# CSV's `NaN`, `NA` or empty cell reads as missing instead of as a class named "NaN".
MISSING_LABEL_TEXTS = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>", "#n/a"})
# Formats whose records can carry a label: a table column, or `key=value` in a header.
LABELED_FORMATS = tuple(sorted(BIOPYTHON_FORMATS | set(TABLE_FORMATS)))


@dataclass(frozen=True, slots=True)
class LabeledRecord(Record):
    label: str = ""


class LabeledRecordReader(RecordReader):
    """`RecordReader` whose records also carry a label: the `label_column` of a table, or the
    `label_column=value` word of a FASTA (GenBank, EMBL, Swiss-Prot) header such as
    `>P02699 label=membrane`, the `name=value` form in which `write_results` writes fields.
    A missing, empty or NaN label raises `MissingLabelError` naming the file, record and column."""

    def __init__(self, path, format, domain, on_invalid, column, id_column, label_column):
        self.label_column = label_column
        super().__init__(path, format, domain, on_invalid, column, id_column)
        if self.format not in LABELED_FORMATS:
            raise InputError(
                f"{self.path}: {self.format} records carry no labels; use a table with a {label_column!r} column "
                f"or FASTA headers with {label_column}=VALUE"
            )

    def _require_columns(self, available: list[str]) -> list[str]:
        wanted = super()._require_columns(available)
        if self.label_column not in available:
            raise InputError(
                f"{self.path}: no label column {self.label_column!r} (available: {', '.join(map(str, available))})"
            )
        return list(dict.fromkeys([*wanted, self.label_column]))

    def _table_records(self, batches: Iterable[pd.DataFrame]) -> Iterator[Record]:
        row = 0
        for batch in batches:
            ids = batch[self.id_column] if self.id_column else None
            sequences, labels = batch[self.column].fillna(""), batch[self.label_column]
            for offset, (sequence, label) in enumerate(zip(sequences, labels)):
                row += 1
                record_id = f"row_{row}" if ids is None else str(ids.iat[offset])
                yield LabeledRecord(record_id, str(sequence), "", _label_text(label))

    def _parsed_records(self) -> Iterator[Record]:
        for record in super()._parsed_records():
            if not isinstance(record, LabeledRecord):
                label = _header_label(record.description, self.label_column)
                record = LabeledRecord(record.id, record.sequence, record.description, label)
            yield record

    def _checked(self, record: Record) -> Record:
        if record.label.strip().lower() in MISSING_LABEL_TEXTS:
            where = "column" if self.format in TABLE_FORMATS else "header key"
            raise MissingLabelError(
                f"{self.path}: record {record.id!r} has no label ({where} {self.label_column!r} is missing, empty or NaN)"
            )
        checked = super()._checked(record)
        # The parent rebuilds a repaired record as a plain Record; the label goes with it.
        if checked is record:
            return checked
        return LabeledRecord(checked.id, checked.sequence, checked.description, record.label)


def _label_text(value) -> str:
    """A table cell as label text; Parquet's nulls and float NaNs become the empty (missing) label."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _header_label(description: str, key: str) -> str:
    prefix = f"{key}="
    return next((word[len(prefix):] for word in description.split() if word.startswith(prefix)), "")


def read_labeled_records(
    path: str | Path,
    format: str | None = None,
    domain: str | None = None,
    on_invalid: str = "error",
    column: str = "sequence",
    label_column: str = "label",
    id_column: str | None = None,
) -> LabeledRecordReader:
    """Stream `LabeledRecord`s: as `read_records`, each with the text of its label.

    Tables (CSV, TSV, Parquet): the label is the `label_column` cell. FASTA and the other Biopython
    formats: the label is VALUE in a `label_column=VALUE` word of the header (values hold no spaces).
    on_invalid "skip" also leaves out records without a label; otherwise one raises MissingLabelError.
    """
    return LabeledRecordReader(path, format, domain, on_invalid, column, id_column, label_column)
