"""Sequence files -> `Record`s: `read_records` and the reader behind it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from Bio import SeqIO
from Bio.Seq import UndefinedSequenceError

from ..domains import get_domain
from .errors import EmptyRecordError, InputError, InvalidSequenceError
from .files import (
    ALIGNMENT_FORMATS,
    BIOPYTHON_FORMATS,
    FORMATS,
    TABLE_FORMATS,
    TABLE_SEPARATORS,
    format_from_path,
    is_standard_stream,
    open_text,
    parse_errors,
    require_file,
)

ON_INVALID_POLICIES = ("error", "skip", "replace")


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    sequence: str
    description: str = ""


@dataclass
class ReadSummary:
    """What `read_records` did with each record, filled in while the records stream."""

    path: str
    read: int = 0
    skipped: int = 0
    replaced: int = 0
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.path}: {self.read} records read, {self.skipped} skipped, {self.replaced} repaired"


class RecordReader(Iterator[Record]):
    """A single pass over the records of one file; `summary` counts what was read, skipped, repaired."""

    def __init__(self, path, format, domain, on_invalid, column, id_column, unique_ids=False):
        self.path = Path(path)
        if is_standard_stream(self.path):
            if format is None or format == "parquet":
                raise InputError("standard input: name its text format explicitly (e.g. --format fasta)")
        else:
            require_file(self.path, "a sequence file")
        self.format = format or format_from_path(self.path, otherwise="or name the format with --format")
        if self.format not in FORMATS:
            raise InputError(f"{self.path}: unknown format {self.format!r}; supported: {', '.join(FORMATS)}")
        self.alphabet = None if domain is None else get_domain(domain).alphabet
        if on_invalid not in ON_INVALID_POLICIES:
            raise ValueError(f"on_invalid must be one of {', '.join(ON_INVALID_POLICIES)}, not {on_invalid!r}")
        if on_invalid == "replace" and self.alphabet and self.alphabet.unknown_symbol is None:
            raise ValueError(f"on_invalid='replace' is not defined for {domain}: it has no unknown symbol")
        self.on_invalid = on_invalid
        self.column = column
        self.id_column = id_column
        self.unique_ids = unique_ids
        self.summary = ReadSummary(str(self.path))
        self._records = self._checked_records()

    def __next__(self) -> Record:
        return next(self._records)

    def _checked_records(self) -> Iterator[Record]:
        found_any, numbers = False, {}
        for number, record in enumerate(self._parsed_records(), start=1):
            found_any = True
            if self.unique_ids and numbers.setdefault(record.id, number) != number:
                raise InputError(
                    f"{self.path}: records {numbers[record.id]} and {number} share the id {record.id!r}; "
                    "ids name the results, so they must be unique"
                )
            try:
                if not record.sequence and self.format in TABLE_FORMATS:
                    raise EmptyRecordError(self._empty_row(number))
                record = self._checked(record)
            except InputError as problem:
                if self.on_invalid != "skip":
                    raise
                self.summary.skipped += 1
                self.summary.problems.append(str(problem))
                continue
            self.summary.read += 1
            yield record
        if not found_any:
            raise InputError(f"{self.path}: no {self.format} records found")

    def _empty_row(self, number: int) -> str:
        # A table's blank line is an empty record, refused like an empty FASTA record or SMILES line,
        # not dropped: dropping it would silently renumber the row_N ids of the rows after it.
        if self.format == "parquet":
            return f"{self.path}: row {number} has no sequence in column {self.column!r}"
        return f"{self.path}: line {number + 1} has no sequence in column {self.column!r} (a blank line is an empty record)"

    def _checked(self, record: Record) -> Record:
        where = f"{self.path}: record {record.id!r}"
        if not record.sequence:
            raise EmptyRecordError(f"{where} is empty")
        if self.alphabet is None:
            return record
        position = self.alphabet.invalid_position(record.sequence)
        if position is None:
            return record
        problem = (
            f"{where}: invalid character {record.sequence[position]!r} at position {position + 1} "
            f"(allowed: {self.alphabet.description})"
        )
        if self.on_invalid != "replace":
            raise InvalidSequenceError(problem)
        self.summary.replaced += 1
        self.summary.problems.append(problem)
        return Record(record.id, self._repaired(record.sequence, position), record.description)

    def _repaired(self, sequence: str, position: int) -> str:
        pieces, start = [], 0
        while position is not None:
            pieces += [sequence[start:position], self.alphabet.unknown_symbol]
            start = position + 1
            position = self.alphabet.invalid_position(sequence, start)
        pieces.append(sequence[start:])
        return "".join(pieces)

    def _parsed_records(self) -> Iterator[Record]:
        with parse_errors(self.path, self.format):
            if self.format == "parquet":
                yield from self._table_records(self._parquet_batches())
                return
            with open_text(self.path) as handle:
                if self.format in BIOPYTHON_FORMATS:
                    yield from _biopython_records(handle, self.format)
                elif self.format in ALIGNMENT_FORMATS:
                    yield from _homologs(handle, ALIGNMENT_FORMATS[self.format])
                elif self.format == "smiles":
                    yield from _smiles_lines(handle)
                else:
                    yield from self._table_records(self._csv_batches(handle))

    def _require_columns(self, available: list[str]) -> list[str]:
        if self.id_column is None and "id" in available and self.column != "id":
            self.id_column = "id"  # a table's own ids name its records, as a FASTA header's do
        wanted = [name for name in (self.column, self.id_column) if name is not None]
        for name in wanted:
            if name not in available:
                raise InputError(f"{self.path}: no column {name!r} (available: {', '.join(map(str, available))})")
        return wanted

    def _csv_batches(self, handle) -> Iterator[pd.DataFrame]:
        separator = TABLE_SEPARATORS[self.format]
        header = next(csv.reader(handle, delimiter=separator), [])
        handle.seek(0)
        columns = self._require_columns(header)
        yield from pd.read_csv(
            handle, sep=separator, usecols=columns, dtype=str, keep_default_na=False, chunksize=65536,
            skip_blank_lines=False,
        )

    def _parquet_batches(self) -> Iterator[pd.DataFrame]:
        table = pq.ParquetFile(self.path)
        columns = self._require_columns(table.schema_arrow.names)
        for batch in table.iter_batches(columns=columns):
            yield batch.to_pandas()

    def _table_records(self, batches: Iterable[pd.DataFrame]) -> Iterator[Record]:
        row = 0
        for batch in batches:
            sequences = batch[self.column].fillna("")
            ids = batch[self.id_column] if self.id_column else None
            for offset, sequence in enumerate(sequences):
                row += 1
                yield Record(f"row_{row}" if ids is None else str(ids.iat[offset]), str(sequence))


def _biopython_records(handle, format: str) -> Iterator[Record]:
    try:
        for entry in SeqIO.parse(handle, format):
            try:
                sequence = str(entry.seq)
            except UndefinedSequenceError:
                sequence = ""
            yield Record(entry.id, sequence, entry.description)
    except ValueError as error:
        if format == "fasta" and "comments at the beginning" in str(error):
            # Biopython's wording suggests comments; what the user has is text before the first header.
            raise ValueError("the first line is not a FASTA header: a record starts with '>'") from error
        raise


def _homologs(handle, format: str) -> Iterator[Record]:
    """The full sequences of an alignment's records. A3M rows must have the query's number of match
    columns (upper-case letters and '-'); a Stockholm alignment must end with its '//' line, or the
    file was cut short."""
    if format == "stockholm":
        text = handle.read()
        if not text.rstrip().endswith("//"):
            raise ValueError("the alignment does not end with its '//' line; the file may be truncated")
        handle = io.StringIO(text)
    match_columns = None
    for entry in SeqIO.parse(handle, format):
        aligned = str(entry.seq)
        if format != "stockholm":
            columns = sum(character.isupper() or character == "-" for character in aligned)
            match_columns = columns if match_columns is None else match_columns
            if columns != match_columns:
                raise ValueError(
                    f"record {entry.id!r} has {columns} match columns (upper-case letters and '-'), "
                    f"the query {match_columns}"
                )
        yield Record(entry.id, aligned.replace("-", "").replace(".", "").upper(), entry.description)


def _smiles_lines(handle) -> Iterator[Record]:
    """One SMILES per line, optionally followed by whitespace and a name that becomes the id."""
    for line_number, line in enumerate(handle, start=1):
        smiles, name = (line.split(maxsplit=1) + ["", ""])[:2]
        yield Record(name.strip() or f"line_{line_number}", smiles)


def read_records(
    path: str | Path,
    format: str | None = None,
    domain: str | None = None,
    on_invalid: str = "error",
    column: str = "sequence",
    id_column: str | None = None,
    unique_ids: bool = False,
) -> RecordReader:
    """Stream the records of `path`, checking each against the alphabet of `domain`.

    format: one of FORMATS; by default taken from the extension (see FORMAT_BY_EXTENSION).
    domain: "dna", "protein" or "smiles"; None checks only that no record is empty.
    on_invalid: "error" raises InvalidSequenceError at the first bad character; "skip" leaves out
        records with a bad character or no sequence; "replace" writes the domain's unknown symbol
        (N for DNA, X for protein) over each bad character. Both count in the reader's `summary`.
    column, id_column: for CSV, TSV and Parquet, the column holding the sequences and the one holding
        ids (by default a column named "id" if there is one; otherwise records are named "row_1",
        "row_2", ...). Lines of a SMILES file without a name are named "line_1", "line_2", ...
    unique_ids: raise InputError when two records share an id (for results keyed by id).
    """
    return RecordReader(path, format, domain, on_invalid, column, id_column, unique_ids)
