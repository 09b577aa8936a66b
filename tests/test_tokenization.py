"""The DNA, protein and SMILES tokenizers, on the real samples in data/."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from Bio.Seq import reverse_complement
from hypothesis import given, settings
from hypothesis import strategies as st

from bioxlstm import complement_map, load_tokenizer
from bioxlstm.io import read_records
from bioxlstm.domains import IUPAC_AMBIGUITY_CODES, PROTEIN_RESIDUES, SMILES_TOKEN_PATTERN
from bioxlstm.tokenization import build_smiles_tokenizer, bundled_tokenizer_directory

DATA = Path(__file__).resolve().parent.parent / "data"
GENOME = DATA / "ecoli_536_NC_008253.fna.gz"
CHEMBL_TRAIN = DATA / "chembl31_train_50k.smi.gz"
CHEMBL_VALID = DATA / "chembl31_valid_50k.smi.gz"
PROTEIN_FILES = [
    "A0A1C5UJ41.a3m.gz",
    "protmamba_example.a3m",
    "Pkinase.sto.gz",
    "fn3.sto.gz",
    "swissprot_100_entries.dat.gz",
]
ESM_VOCAB = (
    "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>".split()
)
FEW_EXAMPLES = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def dna():
    return load_tokenizer("dna")


@pytest.fixture(scope="module")
def protein():
    return load_tokenizer("protein")


@pytest.fixture(scope="module")
def smiles():
    return load_tokenizer("smiles")


def sequences(path, domain):
    return [record.sequence for record in read_records(path, domain=domain)]


def round_trip(tokenizer, texts):
    encoded = tokenizer(texts)["input_ids"]
    return tokenizer.batch_decode(encoded, skip_special_tokens=True)


def test_the_e_coli_genome_round_trips_one_token_per_base(dna):
    (genome,) = sequences(GENOME, "dna")
    chunks = [genome[start : start + 100_000] for start in range(0, len(genome), 100_000)]
    ids = dna(chunks, add_special_tokens=False)["input_ids"]
    assert sum(map(len, ids)) == len(genome) == 4_938_920
    assert "".join(dna.batch_decode(ids)) == genome


def test_every_protein_of_the_msa_and_swissprot_samples_round_trips(protein):
    for name in PROTEIN_FILES:
        proteins = sequences(DATA / name, "protein")
        assert round_trip(protein, proteins) == proteins, name


def test_every_chembl_training_smiles_round_trips_without_unknown_tokens(smiles):
    molecules = sequences(CHEMBL_TRAIN, "smiles")
    ids = smiles(molecules)["input_ids"]
    assert not any(smiles.unk_token_id in row for row in ids)
    assert smiles.batch_decode(ids, skip_special_tokens=True) == molecules


def test_validation_smiles_round_trip_unless_they_hold_a_token_unseen_in_training(smiles):
    molecules = sequences(CHEMBL_VALID, "smiles")
    vocab = smiles.get_vocab()
    ids = smiles(molecules)["input_ids"]
    decoded = smiles.batch_decode(ids, skip_special_tokens=True)
    for molecule, row, text in zip(molecules, ids, decoded):
        has_unseen_token = any(token not in vocab for token in re.findall(SMILES_TOKEN_PATTERN, molecule))
        assert (smiles.unk_token_id in row) == has_unseen_token, molecule
        assert (text == molecule) != has_unseen_token, molecule


@pytest.mark.parametrize(
    "molecule, tokens",
    [
        ("ClC(Br)=O", ["Cl", "C", "(", "Br", ")", "=", "O"]),
        ("C[C@@H](N)C(=O)[O-]", ["C", "[C@@H]", "(", "N", ")", "C", "(", "=", "O", ")", "[O-]"]),
        ("C%10CC%10", ["C", "%10", "C", "C", "%10"]),
        ("c1ccncc1.[Na+]", ["c", "1", "c", "c", "n", "c", "c", "1", ".", "[Na+]"]),
        ("F/C=C/F", ["F", "/", "C", "=", "C", "/", "F"]),
    ],
)
def test_smiles_split_into_atom_level_tokens(molecule, tokens):
    assert re.findall(SMILES_TOKEN_PATTERN, molecule) == tokens
    tokenizer = build_smiles_tokenizer([molecule])
    assert tokenizer.tokenize(molecule) == tokens


def test_a_smiles_vocabulary_is_learned_from_a_corpus_with_frequent_tokens_first():
    tokenizer = build_smiles_tokenizer(["CCO", "CCN", "c1ccccc1"])
    vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    assert vocab == ["<cls>", "<pad>", "<eos>", "<unk>", "<mask>", "c", "C", "1", "N", "O", "."]
    assert tokenizer.tokenize("CCBr") == ["C", "C", "<unk>"]


def test_a_smiles_corpus_with_an_untokenisable_character_is_rejected():
    with pytest.raises(ValueError, match=r"^SMILES corpus entry 1: invalid character 'X' at position 3$"):
        build_smiles_tokenizer(["CCO", "CCX"])


def test_protein_vocabulary_is_esm_order_then_fill_in_the_middle_sentinels(protein):
    vocab = protein.get_vocab()
    assert sorted(vocab, key=vocab.get) == ESM_VOCAB + [f"<mask-{i}>" for i in range(1, 6)]
    assert protein.tokenize("MK<mask-2>V") == ["M", "K", "<mask-2>", "V"]


def test_dna_input_is_upper_cased_and_iupac_codes_read_as_n(dna):
    text = "acgtn" + IUPAC_AMBIGUITY_CODES + IUPAC_AMBIGUITY_CODES.lower()
    expected = "ACGTN" + "N" * 2 * len(IUPAC_AMBIGUITY_CODES)
    assert dna.decode(dna(text)["input_ids"], skip_special_tokens=True) == expected


def test_special_tokens_start_a_sequence_only_when_asked(dna, protein, smiles):
    """A tokenised text is a generation prompt: `<cls>` first, no `<eos>` after it."""
    for tokenizer, text in [(dna, "ACGT"), (protein, "MKV"), (smiles, "CCO")]:
        with_specials = tokenizer(text)["input_ids"]
        without = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert with_specials == [tokenizer.bos_token_id, *without]
        assert tokenizer.eos_token_id not in with_specials
        assert tokenizer.bos_token == tokenizer.cls_token == "<cls>"
        assert tokenizer.pad_token_id is not None and tokenizer.mask_token_id is not None
    assert dna.sep_token == "<sep>"


@FEW_EXAMPLES
@given(st.text(alphabet="ACGTN", max_size=300))
def test_any_dna_string_round_trips(text):
    tokenizer = load_tokenizer("dna")
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@FEW_EXAMPLES
@given(st.text(alphabet=PROTEIN_RESIDUES + PROTEIN_RESIDUES.lower(), max_size=300))
def test_any_protein_string_round_trips_upper_cased(text):
    tokenizer = load_tokenizer("protein")
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.upper()


@FEW_EXAMPLES
@given(
    st.lists(st.text(alphabet="ACGT", max_size=40), min_size=1, max_size=8),
    st.sampled_from(["left", "right"]),
)
def test_padded_batches_mark_real_tokens_in_the_attention_mask(texts, side):
    tokenizer = load_tokenizer("dna", padding_side=side)
    batch = tokenizer(texts, padding=True)
    width = max(map(len, texts)) + 1
    for text, ids, mask in zip(texts, batch["input_ids"], batch["attention_mask"]):
        real = len(text) + 1
        assert len(ids) == len(mask) == width
        assert mask == ([0] * (width - real) + [1] * real if side == "left" else [1] * real + [0] * (width - real))
        assert [i for i, m in zip(ids, mask) if not m] == [tokenizer.pad_token_id] * (width - real)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_complement_map_gives_the_reverse_complement_of_real_dna(dna):
    (genome,) = sequences(GENOME, "dna")
    fragment = genome[:5000] + "N"
    complement = complement_map(dna)
    reversed_ids = [complement[i] for i in reversed(dna(fragment)["input_ids"])]
    assert dna.decode(reversed_ids, skip_special_tokens=True) == reverse_complement(fragment)
    assert all(complement[complement[i]] == i for i in range(len(complement)))
    assert all(complement[dna.convert_tokens_to_ids(t)] == dna.convert_tokens_to_ids(t) for t in dna.all_special_tokens)


def test_complement_map_refuses_a_tokenizer_without_bases(smiles):
    with pytest.raises(ValueError, match="no token for base"):
        complement_map(smiles)


def test_an_unknown_domain_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"unknown domain 'rna'; expected one of dna, protein, smiles"):
        load_tokenizer("rna")


def test_saved_tokenizers_load_with_autotokenizer_where_bioxlstm_cannot_be_imported(tmp_path, dna, protein, smiles):
    samples = {"dna": "ACGTNacgt", "protein": "MKVLA<mask-1>X", "smiles": "CC(=O)Nc1ccc(O)cc1"}
    tokenizers = {"dna": dna, "protein": protein, "smiles": smiles}
    directories = {}
    for domain, tokenizer in tokenizers.items():
        tokenizer.save_pretrained(tmp_path / domain)
        directories[domain] = [str(tmp_path / domain), str(bundled_tokenizer_directory(domain))]
    script = f"""
import json, sys
sys.modules["bioxlstm"] = None  # any import of bioxlstm now fails
from transformers import AutoTokenizer
import tokenizers
assert hasattr(tokenizers, "Tokenizer"), "the data folder tokenizers/ shadowed the library"
samples, directories = {samples!r}, {directories!r}
print(json.dumps({{
    domain: [AutoTokenizer.from_pretrained(d)(samples[domain])["input_ids"] for d in directories[domain]]
    for domain in samples
}}))
"""
    # Run from the repository root: the data folder `tokenizers/` there must not shadow the library.
    repository_root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=repository_root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    encoded = json.loads(result.stdout)
    for domain, tokenizer in tokenizers.items():
        expected = tokenizer(samples[domain])["input_ids"]
        assert encoded[domain] == [expected, expected], domain
