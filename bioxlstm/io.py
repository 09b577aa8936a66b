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
import io
import json
import os
import shutil
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
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl",
}  # fmt: skip
_BIOPYTHON_FORMATS = {"fasta", "fastq", "genbank", "embl", "swiss"}
# HH-suite and ColabFold A3M files may start with a `#` line, which "fasta-pearson" skips as a comment
# ("fasta-blast" would too, but Biopython 1.88 then gives every record the first record's id).
_ALIGNMENT_FORMATS = {"a3m": "fasta-pearson", "stockholm": "stockholm"}
_TABLE_SEPARATORS = {"csv": ",", "tsv": "\t"}
FORMATS = sorted(_BIOPYTHON_FORMATS | set(_ALIGNMENT_FORMATS) | set(_TABLE_SEPARATORS) | {"parquet", "smiles"})
WRITABLE_FORMATS = ("fasta", "smiles", "csv", "tsv", "parquet", "jsonl")
# Formats a table of results can be written in; JSON lines: one object per row.
TABLE_FORMATS = ("csv", "tsv", "parquet")
RESULT_TABLE_FORMATS = (*TABLE_FORMATS, "jsonl")
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

    def __init__(self, path, format, domain, on_invalid, column, id_column, unique_ids=False):
        self.path = Path(path)
        if _is_standard_stream(self.path):
            if format is None or format == "parquet":
                raise InputError("standard input: name its text format explicitly (e.g. --format fasta)")
        else:
            require_file(self.path, "a sequence file")
        self.format = format or format_from_path(self.path, otherwise="or name the format with --format")
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
            with _open_text(self.path) as handle:
                if self.format in _BIOPYTHON_FORMATS:
                    yield from _biopython_records(handle, self.format)
                elif self.format in _ALIGNMENT_FORMATS:
                    yield from _homologs(handle, _ALIGNMENT_FORMATS[self.format])
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
        separator = _TABLE_SEPARATORS[self.format]
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


def require_file(path: Path, what: str) -> None:
    """InputError unless `path` is an existing file: a directory or a missing path, said as such."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not {what}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")


@contextlib.contextmanager
def parse_errors(path: Path, format: str, also: tuple[type[Exception], ...] = ()):
    """Turn what a parser raises on a broken file into one InputError line that names the file.
    also: further exception types that mean a broken file for this reader."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile) as error:
        raise InputError(f"{path}: truncated gzip stream (file ends early)") from error
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a text file ({error.reason} at byte {error.start})") from error
    except (ValueError, pa.ArrowException, csv.Error, *also) as error:
        if isinstance(error, InputError):
            raise
        # Parsers explain at length; the first paragraph, on one line, names the problem.
        reason = " ".join(str(error).split("\n\n")[0].split())
        raise InputError(f"{path}: not valid {format}: {reason}") from error


def format_from_path(path: str | Path, otherwise: str = "") -> str:
    """The format named by a file's extension, looking through a trailing `.gz`. otherwise: what the
    user can do instead, appended to the error for an unknown extension."""
    path = Path(path)
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes.pop()
    extension = suffixes[-1] if suffixes else ""
    if extension not in FORMAT_BY_EXTENSION:
        known = ", ".join(sorted(FORMAT_BY_EXTENSION))
        raise InputError(
            f"{path}: unknown file extension {extension or '(none)'!r}; known: {known} (optionally .gz)"
            + (f", {otherwise}" if otherwise else "")
        )
    return FORMAT_BY_EXTENSION[extension]


def _is_standard_stream(path: str | Path) -> bool:
    return str(path) == STANDARD_STREAM


def _open_text(path: Path):
    if _is_standard_stream(path):
        if sys.stdin is None or sys.stdin.closed:
            raise InputError("standard input: it is closed; pipe the records in or give a file")
        return contextlib.nullcontext(sys.stdin)
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    if not compressed and path.suffix.lower() == ".gz":
        # A name that promises gzip over other bytes is a mislabelled or broken file; read as text it
        # would be blamed on its format ("not valid fasta") or read as something it may not be.
        raise InputError(f"{path}: not a gzip file (it lacks the gzip signature), although its name ends in .gz")
    return gzip.open(path, "rt") if compressed else open(path)


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
    if format in RESULT_TABLE_FORMATS:
        rows = [{f.name: _result_value(getattr(r, f.name), f, text=False) for f in shown} for r in results]
        write_table(pd.DataFrame(rows, columns=[f.name for f in shown]), path, format)
        return
    extra = [f for f in shown if f.name not in ("id", "sequence")]
    if kind is not None and "sequence" not in {f.name for f in shown}:
        raise ValueError(
            f"{path}: these results have no sequences to write as {format}; write them as a table: "
            f"{', '.join('.' + name for name in RESULT_TABLE_FORMATS)}"
        )
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
    """Write a result table as CSV, TSV, Parquet or JSON lines (by extension unless `format` is
    given); `-` is standard output (CSV unless `format` says otherwise)."""
    format = format or ("csv" if _is_standard_stream(path) else format_from_path(path))
    if format not in RESULT_TABLE_FORMATS:
        raise ValueError(f"{path}: cannot write a table as {format!r}; use one of {', '.join(RESULT_TABLE_FORMATS)}")
    if format == "parquet":
        if _is_standard_stream(path):
            raise ValueError("Parquet cannot be written to standard output; give a file name")
        with atomic_output(path) as temporary:
            table.to_parquet(temporary, index=False)
        return
    with _open_for_writing(path) as handle:
        if format == "jsonl":
            # A table of results is small next to its inputs; NaN becomes JSON null.
            handle.writelines(json.dumps(row) + "\n" for row in _json_rows(table))
        else:
            table.to_csv(handle, sep=_TABLE_SEPARATORS[format], index=False)


def _json_rows(table: pd.DataFrame) -> Iterator[dict]:
    for row in table.astype(object).where(table.notna(), None).to_dict(orient="records"):
        yield {key: value.item() if hasattr(value, "item") else value for key, value in row.items()}


UMASK = os.umask(0)
os.umask(UMASK)


def require_writable_file(path: str | Path) -> None:
    """An OSError naming `path` unless a file can be written there: a command checks its output
    before the work, and the error names the user's path, where mkstemp's would name our temporary file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; name a file to write the output to")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: cannot be written: the directory {path.parent} does not exist")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only when the block ends
    without an error, so an existing file is never left half-written or emptied by a bad record or
    Ctrl-C halfway (the temporary file is removed then)."""
    path = Path(path)
    require_writable_file(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~UMASK)  # mkstemp makes it private; an output is an ordinary file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def require_new_directory(path: Path) -> None:
    """FileExistsError unless `path` is absent or an empty directory: an output never replaces one."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path}: exists and is not empty; choose a new directory")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside `path` to fill; it becomes `path` (absent or empty, else
    FileExistsError) only when the block ends without an error, so a failure or Ctrl-C halfway
    leaves no partial directory behind."""
    path = Path(path)
    require_new_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~UMASK)  # mkdtemp makes it private; an output is an ordinary directory
        if path.exists():
            path.rmdir()
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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



def read_variant_table(path: str | Path) -> pd.DataFrame:
    """Every column of a table of variants (CSV or TSV, .gz ok, or Parquet; by extension) as text,
    empty cells as "", indexed by line number (the header is line 1; blank lines are skipped but
    counted), so that the caller decides what a blank or an odd value means and names the right
    line. A row with more or fewer fields than the header (e.g. an unquoted `M1A,K2Q`) raises
    InputError; so does a file without a header. A header without rows gives an empty table."""
    path = Path(path)
    require_file(path, "a table")
    format = format_from_path(path)
    if format not in TABLE_FORMATS:
        raise InputError(f"{path}: a variant table is CSV, TSV or Parquet, not {format}")
    with parse_errors(path, format, also=(OSError,)):
        if format == "parquet":
            table = pd.read_parquet(path)
            table.index = range(2, len(table) + 2)
            return table.astype(object).where(table.notna(), "").astype(str)
        with _open_text(path) as handle:
            return _delimited_rows(path, csv.reader(handle, delimiter=_TABLE_SEPARATORS[format]))


def _delimited_rows(path: Path, reader) -> pd.DataFrame:
    header, rows, lines = None, [], []
    for fields_ in reader:
        if not any(cell.strip() for cell in fields_):
            continue
        if header is None:
            header = [cell.strip() for cell in fields_]
            continue
        if len(fields_) != len(header):
            raise InputError(
                f"{path}: line {reader.line_num}: {len(fields_)} fields, the header has {len(header)} "
                "(quote a value that holds the separator)"
            )
        rows.append(fields_)
        lines.append(reader.line_num)
    if header is None:
        raise InputError(f"{path}: empty file, not even a header")
    return pd.DataFrame(rows, columns=header, index=lines, dtype=str)


# Labeled records: the training data of fine-tuning objectives and the targets of probes.

# Label texts that mean "no label": pandas' missing-value spellings, compared in lower case, so a
# CSV's `NaN`, `NA` or empty cell reads as missing instead of as a class named "NaN".
MISSING_LABEL_TEXTS = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>", "#n/a"})
# Formats whose records can carry a label: a table column, or `key=value` in a header.
LABELED_FORMATS = tuple(sorted(_BIOPYTHON_FORMATS | set(TABLE_FORMATS)))


class MissingLabelError(InputError):
    """A record has no label, or an empty / NaN one."""


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


def read_labels(path: str | Path, label_column: str = "label", id_column: str = "id") -> list[tuple[str, str]]:
    """`(id, label)` of every row of a label table (CSV, TSV, Parquet; no sequences needed), or of
    every record of a FASTA file with `label_column=VALUE` headers."""
    path = Path(path)
    format = format_from_path(path) if not _is_standard_stream(path) else None
    if format in TABLE_FORMATS:
        reader = read_labeled_records(path, column=id_column, label_column=label_column, id_column=id_column)
    else:
        reader = read_labeled_records(path, format, label_column=label_column)
    return [(record.id, record.label) for record in reader]


def read_embeddings(path: str | Path):
    """`(ids, vectors)` of a `bioxlstm embed` Parquet file: the record ids and a float32 array
    (records, width) of their pooled embeddings."""
    import numpy as np

    path = Path(path)
    require_file(path, "a Parquet file of embeddings")
    try:
        table = pq.read_table(path)
    except pa.ArrowException as error:
        raise InputError(f"{path}: not a Parquet file of embeddings ({' '.join(str(error).split())})") from error
    missing = [name for name in ("id", "embedding") if name not in table.column_names]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r}; expected the id and embedding columns of `bioxlstm embed`")
    column = table.column("embedding")
    if not pa.types.is_fixed_size_list(column.type):
        raise InputError(f"{path}: holds one vector per token, not per sequence; embed with a pooling other than none")
    width = column.type.list_size
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    ids = [str(value) for value in table.column("id").to_pylist()]
    return ids, np.asarray(flat, dtype=np.float32).reshape(len(ids), width)
