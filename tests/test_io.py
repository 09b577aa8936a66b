"""Reading and writing sequence files, and the errors users see for bad input."""

import gzip
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from Bio import SeqIO
from hypothesis import given, settings
from hypothesis import strategies as st

from bioxlstm import chem
from bioxlstm.io import (
    EmptyRecordError,
    InputError,
    InvalidSequenceError,
    Record,
    read_records,
    write_records,
)

DATA = Path(__file__).resolve().parent.parent / "data"
GLOBINS = DATA / "globins45.fa"


def read(path, **options):
    return list(read_records(path, **options))


def write_text(path, text):
    path.write_text(text)
    return path


def test_the_genome_is_one_record_of_4938920_bases():
    (genome,) = read(DATA / "ecoli_536_NC_008253.fna.gz", domain="dna")
    assert genome.id == "gi|110640213|ref|NC_008253.1|"
    assert "Escherichia coli 536" in genome.description
    assert len(genome.sequence) == 4_938_920


def test_gzip_is_read_transparently(tmp_path):
    plain = tmp_path / "globins.fa"
    shutil.copy(GLOBINS, plain)
    compressed = tmp_path / "globins.fa.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read(compressed, domain="protein") == read(plain, domain="protein")


def test_a3m_yields_full_homologs_with_the_query_first(tmp_path):
    alignment = write_text(tmp_path / "family.a3m", "#6\t1\n>query\nMKV-LA\n>homolog_1\nMK-aaVLA\n>homolog_2\n-KVL--\n")
    assert [(r.id, r.sequence) for r in read(alignment, domain="protein")] == [
        ("query", "MKVLA"),
        ("homolog_1", "MKAAVLA"),
        ("homolog_2", "KVL"),
    ]


def test_real_msas_yield_ungapped_upper_case_homologs():
    a3m = read(DATA / "A0A1C5UJ41.a3m.gz", domain="protein")
    assert a3m[0].id == ">tr|A0A1C5UJ41|A0A1C5UJ41_9FIRM_consensus"  # the file's own query header
    assert len(a3m) == 1776
    stockholm = read(DATA / "Pkinase.sto.gz", domain="protein")
    assert len(stockholm) == 38 and stockholm[0].id == "CDC15_YEAST/25-272"
    start, end = map(int, stockholm[0].id.split("/")[1].split("-"))
    assert len(stockholm[0].sequence) == end - start + 1
    for record in a3m + stockholm:
        assert record.sequence.isupper() and not set(record.sequence) & set("-.")


def test_swissprot_entries_are_read_by_accession():
    entries = read(DATA / "swissprot_100_entries.dat.gz", domain="protein")
    assert len(entries) == 100
    assert entries[0].id == "P15455" and entries[0].sequence.startswith("MARVSSLLSFCLTLLILFHGYAAQQ")


@pytest.mark.parametrize("format, extension", [("fastq", ".fq"), ("genbank", ".gb"), ("embl", ".embl")])
def test_fastq_genbank_and_embl_hold_the_same_records_as_the_fasta(tmp_path, format, extension):
    entries = list(SeqIO.parse(GLOBINS, "fasta"))
    for entry in entries:
        entry.annotations["molecule_type"] = "protein"
        entry.letter_annotations["phred_quality"] = [40] * len(entry)
    converted = tmp_path / f"globins{extension}"
    SeqIO.write(entries, converted, format)
    expected = [r.sequence for r in read(GLOBINS, domain="protein")]
    assert [r.sequence for r in read(converted, domain="protein")] == expected


def test_an_explicit_format_overrides_the_extension(tmp_path):
    fasta = write_text(tmp_path / "reads.data", ">r1\nACGT\n")
    assert read(fasta, format="fasta", domain="dna") == [Record("r1", "ACGT", "r1")]


def test_smiles_lines_take_an_optional_name_as_id(tmp_path):
    listing = write_text(tmp_path / "molecules.smi", "CCO ethanol\nc1ccccc1\tbenzene\nCC(=O)O\n")
    assert [(r.id, r.sequence) for r in read(listing, domain="smiles")] == [
        ("ethanol", "CCO"),
        ("benzene", "c1ccccc1"),
        ("line_3", "CC(=O)O"),
    ]


def test_all_50000_chembl_smiles_are_read():
    assert len(read(DATA / "chembl31_valid_50k.smi.gz", domain="smiles")) == 50_000


@pytest.mark.parametrize("name", ["out.fa", "out.fa.gz", "out.smi", "out.csv", "out.tsv.gz", "out.parquet"])
def test_written_records_read_back_identically(tmp_path, name):
    molecules = read(DATA / "chembl31_train_50k.smi.gz", domain="smiles")[:300]
    path = tmp_path / name
    write_records(molecules, path)
    columns = {} if name.startswith(("out.fa", "out.smi")) else {"column": "sequence", "id_column": "id"}
    back = read(path, domain="smiles", **columns)
    assert [r.sequence for r in back] == [r.sequence for r in molecules]
    if not name.startswith("out.smi"):
        assert [r.id for r in back] == [r.id for r in molecules]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="ACGTNacgtnRYKM", min_size=1, max_size=200), min_size=1, max_size=10))
def test_any_dna_records_survive_a_fasta_round_trip(sequences):
    records = [Record(f"seq{i}", sequence) for i, sequence in enumerate(sequences)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "records.fa"
        write_records(records, path)
        assert [(r.id, r.sequence) for r in read(path, domain="dna")] == [(r.id, r.sequence) for r in records]


def test_an_id_that_fasta_cannot_hold_is_refused(tmp_path):
    with pytest.raises(ValueError, match="record id 'two words' cannot be written to FASTA"):
        write_records([Record("two words", "ACGT")], tmp_path / "out.fa")


def test_a_named_column_is_read_from_a_table(tmp_path):
    table = tmp_path / "molecules.csv"
    pd.DataFrame({"name": ["ethanol", "acetic acid"], "smiles": ["CCO", "CC(=O)O"]}).to_csv(table, index=False)
    assert read(table, domain="smiles", column="smiles", id_column="name") == [
        Record("ethanol", "CCO"),
        Record("acetic acid", "CC(=O)O"),
    ]
    assert [r.id for r in read(table, column="smiles")] == ["row_1", "row_2"]


# Bad input: one clear message each, never a silent drop.


def test_an_invalid_character_names_file_record_and_position(tmp_path):
    fasta = write_text(tmp_path / "reads.fa", ">seq1\nACGT\n>seq7\nACGTACGTACGJA\n")
    with pytest.raises(InvalidSequenceError) as error:
        read(fasta, domain="dna")
    assert str(error.value) == (
        f"{fasta}: record 'seq7': invalid character 'J' at position 12 "
        "(allowed: ACGTN and IUPAC codes RYSWKMBDHV, any case)"
    )


def test_an_untokenisable_smiles_character_is_reported_with_its_position(tmp_path):
    listing = write_text(tmp_path / "molecules.smi", "CCO\nCC[C@H\n")
    with pytest.raises(InvalidSequenceError, match=r"record 'line_2': invalid character '\[' at position 3 "):
        read(listing, domain="smiles")


def test_skipped_and_repaired_records_are_counted_in_the_summary(tmp_path):
    fasta = write_text(tmp_path / "proteins.fa", ">ok\nMKV\n>stop\nMKV*\n>odd\nMJKJ\n>ok2\nLLA\n")
    skipping = read_records(fasta, domain="protein", on_invalid="skip")
    assert [r.id for r in skipping] == ["ok", "ok2"]
    assert (skipping.summary.read, skipping.summary.skipped, skipping.summary.replaced) == (2, 2, 0)
    assert str(skipping.summary) == f"{fasta}: 2 records read, 2 skipped, 0 repaired"
    assert skipping.summary.problems[0].endswith("record 'stop': invalid character '*' at position 4 "
                                                 "(allowed: ACDEFGHIKLMNPQRSTVWYXBUZO, any case)")

    repairing = read_records(fasta, domain="protein", on_invalid="replace")
    assert [r.sequence for r in repairing] == ["MKV", "MKVX", "MXKX", "LLA"]
    assert (repairing.summary.read, repairing.summary.skipped, repairing.summary.replaced) == (4, 0, 2)


def test_an_empty_record_is_an_error_unless_skipped(tmp_path):
    fasta = write_text(tmp_path / "reads.fa", ">full\nACGT\n>hollow\n>full2\nAC\n")
    with pytest.raises(EmptyRecordError, match=rf"^{fasta}: record 'hollow' is empty$"):
        read(fasta, domain="dna")
    skipping = read_records(fasta, domain="dna", on_invalid="skip")
    assert [r.id for r in skipping] == ["full", "full2"] and skipping.summary.skipped == 1


def test_an_unknown_extension_is_named_with_the_supported_ones(tmp_path):
    path = write_text(tmp_path / "reads.xyz", "ACGT\n")
    with pytest.raises(InputError, match=r"unknown file extension '\.xyz'; known: .*\.fa.*\.parquet"):
        read_records(path)
    with pytest.raises(InputError, match=r"unknown format 'bam'; supported: a3m, csv, embl, fasta"):
        read_records(path, format="bam")


def test_a_truncated_gzip_file_is_reported(tmp_path):
    whole = (DATA / "swissprot_100_entries.dat.gz").read_bytes()
    truncated = tmp_path / "entries.dat.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=rf"^{truncated}: truncated gzip stream \(file ends early\)$"):
        read(truncated, domain="protein")


def test_a_missing_file_is_reported():
    with pytest.raises(InputError, match=r"^nowhere/reads\.fa: no such file$"):
        read_records("nowhere/reads.fa")


def test_a_missing_column_lists_the_available_ones(tmp_path):
    table = tmp_path / "molecules.csv"
    pd.DataFrame({"name": ["ethanol"], "canonical_smiles": ["CCO"]}).to_parquet(tmp_path / "m.parquet")
    table.write_text("name,canonical_smiles\nethanol,CCO\n")
    for path in (table, tmp_path / "m.parquet"):
        with pytest.raises(InputError, match=r"no column 'smiles' \(available: name, canonical_smiles\)"):
            read(path, column="smiles")


def test_a_file_in_another_format_is_not_silently_empty(tmp_path):
    mislabelled = tmp_path / "entries.fa"
    mislabelled.write_bytes(gzip.decompress((DATA / "swissprot_100_entries.dat.gz").read_bytes()))
    expected = rf"^{mislabelled}: not valid fasta: the first line is not a FASTA header: a record starts with '>'$"
    with pytest.raises(InputError, match=expected) as error:
        read(mislabelled)
    assert "\n" not in str(error.value)


def test_replacing_is_refused_for_smiles_which_has_no_unknown_symbol(tmp_path):
    with pytest.raises(ValueError, match="on_invalid='replace' is not defined for smiles"):
        read_records(DATA / "chembl31_valid_50k.smi.gz", domain="smiles", on_invalid="replace")


# RDKit checks


def test_canonical_smiles_are_rdkit_canonical_and_stable():
    assert chem.canonicalize("C1=CC=CC=C1") == "c1ccccc1"
    assert chem.canonicalize("OCC") == chem.canonicalize("CCO") == "CCO"
    for record in read(DATA / "chembl31_train_50k.smi.gz")[:500]:
        canonical = chem.canonicalize(record.sequence)
        assert canonical is not None and chem.canonicalize(canonical) == canonical


def test_invalid_smiles_are_recognised():
    assert chem.is_valid("CC(=O)O")
    for invalid in ["C1CC", "C(C", "c1cccc1", "C=C=C=C=C=C(C)(C)(C)C", ""]:
        assert not chem.is_valid(invalid) and chem.canonicalize(invalid) is None
