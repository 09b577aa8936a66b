"""Writing records and results: FASTA, SMILES, CSV/TSV, Parquet or JSON lines, to a file (replaced only
once it is complete) or to standard output."""

from __future__ import annotations

import contextlib
import gzip
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import Field, fields
from pathlib import Path

import pandas as pd
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from .atomic import atomic_output
from .files import RESULT_TABLE_FORMATS, TABLE_FORMATS, TABLE_SEPARATORS, format_from_path, is_standard_stream
from .records import Record

WRITABLE_FORMATS = ("fasta", "smiles", "csv", "tsv", "parquet", "jsonl")


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
    format = format or ("csv" if is_standard_stream(path) else format_from_path(path))
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
    format = format or ("csv" if is_standard_stream(path) else format_from_path(path))
    if format not in RESULT_TABLE_FORMATS:
        raise ValueError(f"{path}: cannot write a table as {format!r}; use one of {', '.join(RESULT_TABLE_FORMATS)}")
    if format == "parquet":
        if is_standard_stream(path):
            raise ValueError("Parquet cannot be written to standard output; give a file name")
        with atomic_output(path) as temporary:
            table.to_parquet(temporary, index=False)
        return
    with _open_for_writing(path) as handle:
        if format == "jsonl":
            # A table of results is small next to its inputs; NaN becomes JSON null.
            handle.writelines(json.dumps(row) + "\n" for row in _json_rows(table))
        else:
            table.to_csv(handle, sep=TABLE_SEPARATORS[format], index=False)


def _json_rows(table: pd.DataFrame) -> Iterator[dict]:
    for row in table.astype(object).where(table.notna(), None).to_dict(orient="records"):
        yield {key: value.item() if hasattr(value, "item") else value for key, value in row.items()}


@contextlib.contextmanager
def _open_for_writing(path: str | Path):
    if is_standard_stream(path):
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
