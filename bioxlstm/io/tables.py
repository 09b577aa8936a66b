"""Tables that are not sequence files: variant tables, label tables, and `bioxlstm embed`'s embeddings."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .files import TABLE_FORMATS, TABLE_SEPARATORS, format_from_path, is_standard_stream, open_text, parse_errors, require_file
from .labeled import read_labeled_records


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
        with open_text(path) as handle:
            return _delimited_rows(path, csv.reader(handle, delimiter=TABLE_SEPARATORS[format]))


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


def read_labels(path: str | Path, label_column: str = "label", id_column: str = "id") -> list[tuple[str, str]]:
    """`(id, label)` of every row of a label table (CSV, TSV, Parquet; no sequences needed), or of
    every record of a FASTA file with `label_column=VALUE` headers."""
    path = Path(path)
    format = format_from_path(path) if not is_standard_stream(path) else None
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
