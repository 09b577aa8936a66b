"""Reading and writing sequence files: every user input enters here, and bad input fails loudly.

`read_records` streams records from FASTA, FASTQ, GenBank, EMBL, Swiss-Prot (Biopython SeqIO),
A3M and Stockholm alignments, SMILES lists and CSV/TSV/Parquet tables, gzip-compressed or not.

Alignments yield the full homologous sequences: gaps (`-`, `.`) are dropped and the lower-case
insertion states are upper-cased. An A3M file lists its query first, and so does the output.
Positions in error messages are 1-based and count characters of the sequence as yielded.

Every problem with the input raises an `InputError` (a ValueError) whose message is one line naming
the file, and where it applies the record id and position.

Modules: `records` (sequence files), `labeled` (records with labels), `tables` (variant, label and
embedding tables), `writers` (records and results), `atomic` (outputs that appear whole or not at
all), `files` (formats, standard streams, gzip), `errors`.
"""

from .atomic import UMASK, atomic_directory, atomic_output, require_new_directory, require_writable_file
from .errors import EmptyRecordError, InputError, InvalidSequenceError, MissingLabelError
from .files import FORMAT_BY_EXTENSION, FORMATS, RESULT_TABLE_FORMATS, STANDARD_STREAM, TABLE_FORMATS, format_from_path
from .labeled import LabeledRecord, read_labeled_records
from .records import ON_INVALID_POLICIES, ReadSummary, Record, read_records
from .tables import read_embeddings, read_labels, read_variant_table
from .writers import WRITABLE_FORMATS, write_records, write_results, write_table

__all__ = [
    "FORMATS",
    "FORMAT_BY_EXTENSION",
    "ON_INVALID_POLICIES",
    "RESULT_TABLE_FORMATS",
    "STANDARD_STREAM",
    "TABLE_FORMATS",
    "UMASK",
    "WRITABLE_FORMATS",
    "EmptyRecordError",
    "InputError",
    "InvalidSequenceError",
    "LabeledRecord",
    "MissingLabelError",
    "ReadSummary",
    "Record",
    "atomic_directory",
    "atomic_output",
    "format_from_path",
    "read_embeddings",
    "read_labeled_records",
    "read_labels",
    "read_records",
    "read_variant_table",
    "require_new_directory",
    "require_writable_file",
    "write_records",
    "write_results",
    "write_table",
]
