"""Reading and writing sequence files: every user input enters here, and bad input fails loudly.

`read_records` streams records from FASTA, FASTQ, GenBank, EMBL, Swiss-Prot (Biopython SeqIO),
A3M and Stockholm alignments, SMILES lists and CSV/TSV/Parquet tables, gzip-compressed or not.

Alignments yield the full homologous sequences: gaps (`-`, `.`) are dropped and the lower-case
insertion states are upper-cased. An A3M file lists its query first, and so does the output.
Positions in error messages are 1-based and count characters of the sequence as yielded.

Every problem with the input raises an `InputError` (a ValueError) whose message is one line naming
the file, and where it applies the record id and position.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from Bio import SeqIO
from Bio.Seq import Seq, UndefinedSequenceError
from Bio.SeqRecord import SeqRecord

from .tokenization import ALPHABETS

FORMAT_BY_EXTENSION = {
    ".fa": "fasta", ".fasta": "fasta", ".fna": "fasta", ".faa": "fasta", ".ffn": "fasta", ".fas": "fasta",
    ".fq": "fastq", ".fastq": "fastq",
    ".gb": "genbank", ".gbk": "genbank", ".genbank": "genbank",
    ".embl": "embl",
    ".dat": "swiss", ".swiss": "swiss",
    ".a3m": "a3m",
    ".sto": "stockholm", ".stk": "stockholm", ".stockholm": "stockholm",
    ".smi": "smiles", ".smiles": "smiles", ".txt": "smiles",
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
}  # fmt: skip
_BIOPYTHON_FORMATS = {"fasta", "fastq", "genbank", "embl", "swiss"}
# HH-suite and ColabFold A3M files may start with a `#` line, which "fasta-pearson" skips as a comment
# ("fasta-blast" would too, but Biopython 1.88 then gives every record the first record's id).
_ALIGNMENT_FORMATS = {"a3m": "fasta-pearson", "stockholm": "stockholm"}
_TABLE_SEPARATORS = {"csv": ",", "tsv": "\t"}
FORMATS = sorted(_BIOPYTHON_FORMATS | set(_ALIGNMENT_FORMATS) | set(_TABLE_SEPARATORS) | {"parquet", "smiles"})
WRITABLE_FORMATS = ("fasta", "smiles", "csv", "tsv", "parquet")
TABLE_FORMATS = ("csv", "tsv", "parquet")
ON_INVALID_POLICIES = ("error", "skip", "replace")
STANDARD_STREAM = "-"  # as a path: standard input for readers, standard output for writers
_GZIP_MAGIC = b"\x1f\x8b"


class InputError(ValueError):
    """A problem with an input file, described in one line that names the file."""


class InvalidSequenceError(InputError):
    """A record holds a character outside its domain's alphabet."""


class EmptyRecordError(InputError):
    """A record has no sequence."""


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

    def __init__(self, path, format, domain, on_invalid, column, id_column):
        self.path = Path(path)
        if _is_standard_stream(self.path):
            if format is None or format == "parquet":
                raise InputError("standard input: name its text format explicitly (e.g. --format fasta)")
        elif not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        self.format = format or format_from_path(self.path)
        if self.format not in FORMATS:
            raise InputError(f"{self.path}: unknown format {self.format!r}; supported: {', '.join(FORMATS)}")
        if domain is not None and domain not in ALPHABETS:
            raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(ALPHABETS)}")
        if on_invalid not in ON_INVALID_POLICIES:
            raise ValueError(f"on_invalid must be one of {', '.join(ON_INVALID_POLICIES)}, not {on_invalid!r}")
        self.alphabet = ALPHABETS[domain] if domain else None
        if on_invalid == "replace" and self.alphabet and self.alphabet.unknown_symbol is None:
            raise ValueError(f"on_invalid='replace' is not defined for {domain}: it has no unknown symbol")
        self.on_invalid = on_invalid
        self.column = column
        self.id_column = id_column
        self.summary = ReadSummary(str(self.path))
        self._records = self._checked_records()

    def __next__(self) -> Record:
        return next(self._records)

    def _checked_records(self) -> Iterator[Record]:
        found_any = False
        for record in self._parsed_records():
            found_any = True
            try:
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
        try:
            if self.format == "parquet":
                yield from self._table_records(self._parquet_batches())
                return
            with _open_text(self.path) as handle:
                if self.format in _BIOPYTHON_FORMATS:
                    yield from _biopython_records(handle, self.format)
                elif self.format in _ALIGNMENT_FORMATS:
                    yield from _homologs(handle, _ALIGNMENT_FORMATS[self.format])
                elif self.format == "smiles":
                    yield from _smiles_lines(handle)
                else:
                    yield from self._table_records(self._csv_batches(handle))
        except (EOFError, gzip.BadGzipFile) as error:
            raise InputError(f"{self.path}: truncated gzip stream (file ends early)") from error
        except UnicodeDecodeError as error:
            raise InputError(f"{self.path}: not a text file ({error.reason} at byte {error.start})") from error
        except (ValueError, pa.ArrowException, csv.Error) as error:
            if isinstance(error, InputError):
                raise
            # Parsers explain at length; the first paragraph, on one line, names the problem.
            reason = " ".join(str(error).split("\n\n")[0].split())
            raise InputError(f"{self.path}: not valid {self.format}: {reason}") from error

    def _require_columns(self, available: list[str]) -> list[str]:
        wanted = [name for name in (self.column, self.id_column) if name is not None]
        for name in wanted:
            if name not in available:
                raise InputError(f"{self.path}: no column {name!r} (available: {', '.join(map(str, available))})")
        return wanted

    def _csv_batches(self, handle) -> Iterator[pd.DataFrame]:
        separator = _TABLE_SEPARATORS[self.format]
        header = next(csv.reader(handle, delimiter=separator), [])
        handle.seek(0)
        columns = self._require_columns(header)
        yield from pd.read_csv(
            handle, sep=separator, usecols=columns, dtype=str, keep_default_na=False, chunksize=65536
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


def format_from_path(path: str | Path) -> str:
    """The format named by a file's extension, looking through a trailing `.gz`."""
    path = Path(path)
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes.pop()
    extension = suffixes[-1] if suffixes else ""
    if extension not in FORMAT_BY_EXTENSION:
        known = ", ".join(sorted(FORMAT_BY_EXTENSION))
        raise InputError(
            f"{path}: unknown file extension {extension or '(none)'!r}; known: {known} "
            "(optionally .gz), or pass format= explicitly"
        )
    return FORMAT_BY_EXTENSION[extension]


def _is_standard_stream(path: str | Path) -> bool:
    return str(path) == STANDARD_STREAM


def _open_text(path: Path):
    if _is_standard_stream(path):
        return contextlib.nullcontext(sys.stdin)
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rt") if compressed else open(path)


def _biopython_records(handle, format: str) -> Iterator[Record]:
    for entry in SeqIO.parse(handle, format):
        try:
            sequence = str(entry.seq)
        except UndefinedSequenceError:
            sequence = ""
        yield Record(entry.id, sequence, entry.description)


def _homologs(handle, format: str) -> Iterator[Record]:
    for entry in SeqIO.parse(handle, format):
        sequence = str(entry.seq).replace("-", "").replace(".", "").upper()
        yield Record(entry.id, sequence, entry.description)


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
) -> RecordReader:
    """Stream the records of `path`, checking each against the alphabet of `domain`.

    format: one of FORMATS; by default taken from the extension (see FORMAT_BY_EXTENSION).
    domain: "dna", "protein" or "smiles"; None checks only that no record is empty.
    on_invalid: "error" raises InvalidSequenceError at the first bad character; "skip" leaves out
        records with a bad character or no sequence; "replace" writes the domain's unknown symbol
        (N for DNA, X for protein) over each bad character. Both count in the reader's `summary`.
    column, id_column: for CSV, TSV and Parquet, the column holding the sequences and, optionally,
        the one holding ids (otherwise records are named "row_1", "row_2", ...). Lines of a SMILES
        file without a name are named "line_1", "line_2", ...
    """
    return RecordReader(path, format, domain, on_invalid, column, id_column)


def write_records(
    records: Iterable[Record], path: str | Path, format: str | None = None, column: str = "sequence"
) -> None:
    """Write records as FASTA, SMILES (one per line, no ids), CSV/TSV or Parquet (columns id and `column`).

    A `.gz` path is gzip-compressed (not for Parquet, which compresses itself); `-` is standard output.
    """
    format = format or format_from_path(path)
    if format not in WRITABLE_FORMATS:
        raise ValueError(f"cannot write {format!r}; writable formats: {', '.join(WRITABLE_FORMATS)}")
    if format in TABLE_FORMATS:
        write_table(_records_table(records, column), path, format)
        return
    with _open_for_writing(path) as handle:
        if format == "fasta":
            SeqIO.write(map(_fasta_entry, records), handle, "fasta")
        else:
            handle.writelines(f"{record.sequence}\n" for record in records)


def write_results(results: Sequence, path: str | Path, format: str | None = None, kind: type | None = None) -> None:
    """Write a task's result dataclasses (each with `id` and `sequence` fields): FASTA with the other
    fields as `name=value` in each description, SMILES (sequences only) or a table with one column
    per field. A field's `format` metadata (a format spec, or a function for values format() cannot
    take) sets its text in descriptions and tables alike; booleans read `yes`/`no`; fields with
    `write=False` metadata are left out. Paths as for `write_records`; `-` without a format is CSV.
    kind: the results' dataclass, which names a table's columns when there are no results."""
    format = format or ("csv" if _is_standard_stream(path) else format_from_path(path))
    kind = kind or (type(results[0]) if results else None)
    shown = [f for f in fields(kind) if f.metadata.get("write", True)] if kind else []
    if format in TABLE_FORMATS:
        rows = [{f.name: _result_value(getattr(r, f.name), f, text=False) for f in shown} for r in results]
        write_table(pd.DataFrame(rows, columns=[f.name for f in shown]), path, format)
        return
    extra = [f for f in shown if f.name not in ("id", "sequence")]
    if kind is not None and len(extra) == len(shown):
        raise ValueError(f"{path}: results without sequences are written as a table: {', '.join(TABLE_FORMATS)}")
    records = (
        Record(r.id, r.sequence, " ".join(f"{f.name}={_result_value(getattr(r, f.name), f)}" for f in extra))
        for r in results
    )
    write_records(records, path, format)


def _result_value(value, field_: Field, text: bool = True):
    """A result field's value as written: formatted text where its field asks for it or it is a
    boolean, else itself (a table keeps numbers as numbers) or, in a description, its str()."""
    spec = field_.metadata.get("format")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec is not None:
        return spec(value) if callable(spec) else format(value, spec)
    return str(value) if text else value


def write_table(table: pd.DataFrame, path: str | Path, format: str | None = None) -> None:
    """Write a result table as CSV, TSV or Parquet (by extension unless `format` is given); `-` is
    standard output (CSV unless `format` says otherwise)."""
    format = format or ("csv" if _is_standard_stream(path) else format_from_path(path))
    if format not in TABLE_FORMATS:
        raise ValueError(f"{path}: cannot write a table as {format!r}; use one of {', '.join(TABLE_FORMATS)}")
    if format == "parquet":
        if _is_standard_stream(path):
            raise ValueError("Parquet cannot be written to standard output; give a file name")
        with atomic_output(path) as temporary:
            table.to_parquet(temporary, index=False)
        return
    with _open_for_writing(path) as handle:
        table.to_csv(handle, sep=_TABLE_SEPARATORS[format], index=False)


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only when the block ends
    without an error, so an existing file is never left half-written or emptied by a bad record or
    Ctrl-C halfway (the temporary file is removed then)."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it private; an output is an ordinary file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _open_for_writing(path: str | Path):
    if _is_standard_stream(path):
        yield sys.stdout
        return
    compressed = Path(path).suffix.lower() == ".gz"
    with atomic_output(path) as temporary:
        with gzip.open(temporary, "wt", newline="") if compressed else open(temporary, "w", newline="") as handle:
            yield handle


def _fasta_entry(record: Record) -> SeqRecord:
    # A FASTA id ends at the first space, so such an id would come back as a different one.
    if not record.id or any(character.isspace() for character in record.id):
        raise ValueError(f"record id {record.id!r} cannot be written to FASTA: it must be non-empty, without spaces")
    return SeqRecord(Seq(record.sequence), id=record.id, description=record.description)


def _records_table(records: Iterable[Record], column: str) -> pd.DataFrame:
    rows = [(record.id, record.sequence) for record in records]
    return pd.DataFrame(rows, columns=["id", column])

