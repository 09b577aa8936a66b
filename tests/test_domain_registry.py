"""A new sequence domain lands in one place: a toy RNA domain, registered here in the test file alone
(one `register_domain` call, plus a tokenizer file built by `bioxlstm.tokenization`'s builder), reaches
the tokenizer, the command line (a recipe's domain), the data readers and strand handling."""

import re
from pathlib import Path

import pytest

from bioxlstm.cli import main
from bioxlstm.domains import DOMAINS, Alphabet, Domain, get_domain, register_domain
from bioxlstm.io import InputError, read_records
from bioxlstm.pretrained import load_pretrained
from bioxlstm.tokenization import build_character_tokenizer, complement_map, load_tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RNA_BASES = "ACGU"
READS = "".join(f">read{i}\n{'ACGUUGCAAGCU'[i % 4:] * 3}\n" for i in range(40))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rna(tmp_path_factory):
    tokenizer_directory = tmp_path_factory.mktemp("rna_tokenizer")
    build_character_tokenizer(RNA_BASES).save_pretrained(tokenizer_directory)
    domain = register_domain(
        Domain(
            name="rna",
            display_name="RNA",
            alphabet=Alphabet("rna", f"(?i:[{RNA_BASES}])", "A, C, G, U, any case", None),
            output_format="fasta",
            complementary_bases={"A": "U", "U": "A", "C": "G", "G": "C"},
            tokenizer_directory=tokenizer_directory,
        )
    )
    yield domain
    del DOMAINS[domain.name]  # the registry is process-wide: the other tests know the built-in domains only


def test_a_registered_domain_is_known_by_name_next_to_the_built_in_ones(rna):
    assert get_domain("rna") is rna
    with pytest.raises(ValueError, match=r"unknown domain 'xna'; expected one of dna, protein, smiles, rna"):
        get_domain("xna")


def test_a_domain_name_is_registered_once(rna):
    with pytest.raises(ValueError, match="domain 'rna' is already registered"):
        register_domain(rna)


def test_its_tokenizer_loads_by_domain_name_and_round_trips(rna):
    tokenizer = load_tokenizer("rna")
    ids = tokenizer("ACGUUGCA")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and len(ids) == 1 + len("ACGUUGCA")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ACGUUGCA"
    assert tokenizer.decode(tokenizer("acgu")["input_ids"], skip_special_tokens=True) == "ACGU"
    assert tokenizer.unk_token_id not in ids


def test_the_data_readers_read_its_alphabet_and_name_a_foreign_letter(rna, tmp_path):
    reads = tmp_path / "reads.fasta"
    reads.write_text(">a\nACGU\n>b\nacguu\n")
    assert [(r.id, r.sequence) for r in read_records(reads, domain="rna")] == [("a", "ACGU"), ("b", "acguu")]
    reads.write_text(">a\nACGU\n>b\nACGT\n")
    refusal = rf"^{re.escape(str(reads))}: record 'b': invalid character 'T' at position 4 \(allowed: A, C, G, U"
    with pytest.raises(InputError, match=refusal):
        list(read_records(reads, domain="rna"))


def test_its_complement_map_pairs_its_own_bases(rna):
    tokenizer = load_tokenizer("rna")
    complement = complement_map(tokenizer)
    ids = tokenizer("AACGU", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([complement[i] for i in reversed(ids)]) == "ACGUU"
    assert all(complement[tokenizer.convert_tokens_to_ids(t)] == tokenizer.convert_tokens_to_ids(t)
               for t in tokenizer.all_special_tokens)  # fmt: skip
    # The DNA tokenizer keeps DNA's pairs: it has no U, so only DNA's bases fit it.
    dna = load_tokenizer("dna")
    assert dna.decode([complement_map(dna)[i] for i in dna("ACGT", add_special_tokens=False)["input_ids"]]) == "TGCA"


def test_a_recipe_trains_a_model_of_it_that_the_command_line_samples_from(rna, tmp_path, capsys):
    (tmp_path / "reads.fasta").write_text(READS)
    run = tmp_path / "run"
    main(["train", str(RECIPES / "dna-clm-tiny.yaml"), "--output-dir", str(run), "domain=rna",
          f"data.train=[{tmp_path / 'reads.fasta'}]", "data.cards=[]", f"data.cache_dir={tmp_path / 'cache'}",
          "data.max_length=24", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_heads=2",
          "model.chunk_size=8", "training.max_steps=2", "training.eval_strategy=no", "training.save_steps=2",
          "training.report_to=[]"])  # fmt: skip
    model, tokenizer = load_pretrained(run / "model")
    assert model.config.domain == "rna" and model.config.complement_map == complement_map(load_tokenizer("rna"))
    sampled = tmp_path / "sampled.fasta"
    main(["generate", "--model", str(run / "model"), "--prompt", "GAU", "-n", "3", "--max-new-tokens", "12",
          "--seed", "0", "--output", str(sampled)])  # fmt: skip
    records = list(read_records(sampled, domain="rna"))
    assert len(records) == 3
    assert all(record.sequence.startswith("GAU") and set(record.sequence) <= set(RNA_BASES) for record in records)
    with pytest.raises(SystemExit) as exit:
        main(["generate", "--model", str(run / "model"), "--prompt", "GAT", "--output", str(sampled)])
    assert exit.value.code == 1 and "'T' at position 3 is not allowed (allowed: A, C, G, U" in capsys.readouterr().err


def test_a_recipe_for_an_unregistered_domain_lists_the_registered_ones(rna, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", str(RECIPES / "dna-clm-tiny.yaml"), "--output-dir", str(tmp_path / "run"), "domain=xna"])
    assert exit.value.code == 1
    assert "domain must be one of dna, protein, smiles, rna, got 'xna'" in capsys.readouterr().err
