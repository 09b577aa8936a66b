"""What a path holds and how to open it: formats by extension, standard streams, gzip, and parser
errors turned into one line that names the file."""

from __future__ import annotations

import contextlib
import csv
import gzip
import sys
from pathlib import Path

import pyarrow as pa

from .errors import InputError

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
BIOPYTHON_FORMATS = {"fasta", "fastq", "genbank", "embl", "swiss"}
# HH-suite and ColabFold A3M files may start with a `#` line, which "fasta-pearson" skips as a comment
# ("fasta-blast" would too, but Biopython 1.88 then gives every record the first record's id).
ALIGNMENT_FORMATS = {"a3m": "fasta-pearson", "stockholm": "stockholm"}
TABLE_SEPARATORS = {"csv": ",", "tsv": "\t"}
FORMATS = sorted(BIOPYTHON_FORMATS | set(ALIGNMENT_FORMATS) | set(TABLE_SEPARATORS) | {"parquet", "smiles"})
# Formats a table of results can be written in; JSON lines: one object per row.
TABLE_FORMATS = ("csv", "tsv", "parquet")
RESULT_TABLE_FORMATS = (*TABLE_FORMATS, "jsonl")
STANDARD_STREAM = "-"  # as a path: standard input for readers, standard output for writers
_GZIP_MAGIC = b"\x1f\x8b"


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


def is_standard_stream(path: str | Path) -> bool:
    return str(path) == STANDARD_STREAM


def open_text(path: Path):
    if is_standard_stream(path):
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
