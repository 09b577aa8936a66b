"""Chemistry metrics agree with RDKit and `fcd` called directly, on real ChEMBL molecules, and the
`bioxlstm evaluate chem` / `evaluate chem-in-context` commands report them."""

import gzip
import itertools
import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fcd
import pytest
import torch
from helpers import tiny_model
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

import bioxlstm
from bioxlstm import chem
from bioxlstm.cli import main
from bioxlstm.export import export

ROOT = Path(__file__).resolve().parents[1]
CHEMBL_VALID = ROOT / "data" / "chembl31_valid_50k.smi.gz"
ICST = ROOT / "data" / "icst_valid_50_domains.txt.gz"

with gzip.open(CHEMBL_VALID, "rt") as _handle:
    CHEMBL = [line.strip() for line, _ in zip(_handle, range(30))]
TEN = CHEMBL[:10]
REFERENCE = CHEMBL[10:30]
INVALID = ["C1CC", "c1ccccc"]  # a ring never closed; a six-ring that cannot be kekulised


def respelled(smiles: str) -> str:
    """The same molecule written from another starting atom: another string, the same canonical SMILES."""
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles), canonical=False, rootedAtAtom=1)


@pytest.fixture(scope="module")
def reference_fcd():
    """FCD of the ten molecules to the reference set, by the `fcd` package called directly."""
    return fcd.get_fcd([Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in TEN], REFERENCE)


def test_validity_is_the_fraction_rdkit_parses():
    smiles = TEN + INVALID
    assert chem.validity(smiles) == pytest.approx(10 / 12)
    assert chem.validity(smiles) == sum(Chem.MolFromSmiles(s) is not None for s in smiles) / len(smiles)
    assert not chem.is_valid("")


def test_uniqueness_counts_molecules_not_spellings():
    assert respelled(TEN[0]) != TEN[0]
    assert chem.uniqueness(["CCO", "OCC", "C(C)O"]) == pytest.approx(1 / 3)
    smiles = TEN + [respelled(s) for s in TEN[:5]] + INVALID
    assert chem.uniqueness(smiles) == pytest.approx(10 / 15)  # invalid entries are not in the denominator


def test_random_spellings_are_other_smiles_of_the_same_molecule_and_reproducible():
    smiles = "C[C@H](N)C(=O)O.[13CH4]"
    spellings = chem.random_spellings(smiles, 5, seed=3_000_000_000)  # beyond RDKit's 32-bit seed
    assert spellings == chem.random_spellings(smiles, 5, seed=3_000_000_000)
    assert 1 < len(spellings) == len(set(spellings)) <= 5 and smiles not in spellings
    assert {chem.canonicalize(s) for s in spellings} == {chem.canonicalize(smiles)}  # stereo and isotope kept
    assert chem.random_spellings("C1CC", 5, seed=0) == []


def test_novelty_against_a_training_set_holding_half_the_list_is_one_half():
    training = [respelled(s) for s in TEN[:5]] + REFERENCE
    assert chem.novelty(TEN + INVALID, training) == 0.5
    assert chem.novelty(TEN + TEN[:5], training) == 0.5  # repeats count once


def test_internal_diversity_is_moses_intdiv_one_minus_the_mean_tanimoto_over_all_pairs_self_pairs_included():
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)  # the MOSES fingerprints
    fingerprints = [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in TEN]
    similarities = [DataStructs.TanimotoSimilarity(a, b) for a, b in itertools.product(fingerprints, repeat=2)]
    expected = 1 - sum(similarities) / len(similarities)
    assert chem.internal_diversity(TEN + INVALID) == pytest.approx(expected, abs=1e-9)
    assert chem.internal_diversity([TEN[0], respelled(TEN[0])]) == 0.0  # a repeat is not diverse


def test_a_set_parses_each_smiles_once_and_reads_an_invalid_one_again_only_to_name_its_kind(monkeypatch):
    training = {chem.canonicalize(s) for s in TEN[:5]}
    reads, parse = Counter(), Chem.MolFromSmiles

    def counted_parse(smiles, *args, **kwargs):
        reads[smiles] += 1
        return parse(smiles, *args, **kwargs)

    monkeypatch.setattr(Chem, "MolFromSmiles", counted_parse)
    metrics = chem.MoleculeSet.from_smiles(TEN + INVALID).metrics(training=training)
    assert reads == Counter({**dict.fromkeys(TEN, 1), **dict.fromkeys(INVALID, 2)})
    assert metrics.invalid == chem.invalid_counts(INVALID) and sum(metrics.invalid.values()) == 2
    assert (metrics.valid, metrics.novelty) == (10, 0.5)


def test_fcd_of_a_set_with_itself_is_zero():
    assert abs(chem.frechet_chemnet_distance(REFERENCE, REFERENCE)) < 1e-3


def test_fcd_agrees_with_the_fcd_package_on_the_canonical_valid_molecules(reference_fcd):
    noisy = [respelled(s) for s in TEN] + INVALID  # spelling and invalid entries change nothing
    assert chem.frechet_chemnet_distance(noisy, REFERENCE) == pytest.approx(reference_fcd, rel=1e-6)
    assert reference_fcd > 1


def test_metrics_without_enough_valid_molecules_are_undefined_not_zero():
    metrics = chem.chem_metrics(INVALID + [TEN[0]], reference=REFERENCE, training=REFERENCE)
    assert (metrics.generated, metrics.valid, metrics.unique) == (3, 1, 1)
    assert metrics.uniqueness == 1.0 and metrics.novelty == 1.0
    assert math.isnan(metrics.internal_diversity) and math.isnan(metrics.fcd)
    assert metrics.as_dict()["fcd"] is None and metrics.as_dict()["internal_diversity"] is None
    with pytest.raises(ValueError, match="no generated SMILES"):
        chem.chem_metrics([])


# --- bioxlstm evaluate chem -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chem")
    paths = {
        "generated": directory / "generated.smi",  # with an empty line: a generated empty molecule
        "reference": directory / "reference.smi",
        "train": directory / "train.smi.gz",
        "table": directory / "generated.csv",
        "bad_reference": directory / "bad_reference.smi",
    }
    paths["generated"].write_text("\n".join(TEN + INVALID + [""]) + "\n")
    paths["reference"].write_text("".join(f"{s}\n" for s in REFERENCE))
    with gzip.open(paths["train"], "wt") as handle:
        handle.writelines(f"{respelled(s)} train_{i}\n" for i, s in enumerate(TEN[:5]))
    paths["table"].write_text("id,smiles\n" + "".join(f"g{i},{s}\n" for i, s in enumerate(TEN[:1] + INVALID)))
    paths["bad_reference"].write_text("".join(f"{s}\n" for s in REFERENCE[:2] + INVALID))
    return {name: str(path) for name, path in paths.items()}


def test_evaluate_chem_json_reports_every_metric(files, capsys, reference_fcd):
    main(["evaluate", "chem", "--generated", files["generated"], "--reference", files["reference"],
          "--train", files["train"], "--json"])  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["generated"], metrics["valid"], metrics["unique"]) == (13, 10, 10)
    assert metrics["validity"] == pytest.approx(10 / 13)
    assert metrics["uniqueness"] == 1.0 and metrics["novelty"] == 0.5
    assert metrics["internal_diversity"] == pytest.approx(chem.internal_diversity(TEN))
    assert metrics["fcd"] == pytest.approx(reference_fcd, rel=1e-6)


def test_evaluate_chem_reads_a_csv_column_and_prints_a_table(files, capsys):
    main(["evaluate", "chem", "--generated", files["table"], "--reference", files["reference"], "--column", "smiles"])
    table = capsys.readouterr().out
    rows = {line[:20].strip(): line[20:].split() for line in table.splitlines()}
    assert rows["generated"][0] == "3" and rows["valid"][0] == "1"
    assert rows["validity"][0] == "0.3333" and rows["uniqueness"][0] == "1.0000"
    assert rows["novelty"] == ["n/a", "needs", "--train"]
    assert rows["FCD"][0] == "n/a"  # a single valid molecule has no covariance to compare


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--generated", "missing.smi"], r"missing\.smi: no such file"),
        (["--generated", "{generated}", "--reference", "{bad_reference}"],
         r"bad_reference\.smi: record 'line_3' is not a valid molecule: 'C1CC'"),
        (["--generated", "{table}", "--column", "smiles_column"], r"generated\.csv: no column 'smiles_column'"),
    ],
)  # fmt: skip
def test_evaluate_chem_reports_bad_input_in_one_line(files, capsys, arguments, message):
    arguments = [argument.format(**files) for argument in arguments]
    if "--reference" not in arguments:
        arguments += ["--reference", files["reference"]]
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "chem", *arguments])
    error = capsys.readouterr().err
    assert exit.value.code == 1 and len(error.splitlines()) == 1
    assert error.startswith("bioxlstm: error: ")
    assert re.search(message, error)


def test_evaluate_chem_from_the_shell_fails_without_a_traceback(files):
    result = subprocess.run(
        [sys.executable, "cli.py", "evaluate", "chem", "--generated", "nowhere.smi", "--reference", files["reference"]],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "bioxlstm: error: nowhere.smi: no such file"


def test_evaluate_chem_help_explains_the_metrics(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "chem", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit.value.code == 0
    for phrase in ("validity", "uniqueness", "novelty", "internal diversity", "Frechet ChemNet Distance", "--train"):
        assert phrase in text


# --- bioxlstm evaluate chem-in-context ------------------------------------------------------------


@pytest.fixture(scope="module")
def in_context_files(tmp_path_factory):
    """An untrained SMILES model, saved, and three ICST domains of twelve molecules each."""
    directory = tmp_path_factory.mktemp("in_context")
    tokenizer = bioxlstm.load_tokenizer("smiles")
    torch.manual_seed(0)
    model = tiny_model(vocab_size=len(tokenizer), domain="smiles", pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    saved = export(model, directory / "model", tokenizer)
    with gzip.open(ICST, "rt") as handle:
        domains = [".".join(line.strip().split(".")[:12]) for line, _ in zip(handle, range(3))]
    (directory / "domains.txt").write_text("\n".join(domains) + "\n")
    return {"model": str(saved), "domains": str(directory / "domains.txt")}


def test_evaluate_chem_in_context_reports_both_fcds_per_chosen_domain(in_context_files, capsys):
    # One sample per domain leaves FCD undefined (NaN, null in JSON) and the test quick: the numbers
    # themselves are checked in the tests above.
    common = ["evaluate", "chem-in-context", "--model", in_context_files["model"], "--domains",
              in_context_files["domains"], "--n-context", "4", "--n-generate", "1", "--max-new-tokens", "10"]  # fmt: skip
    main([*common, "--lines", "1,3", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["line"] for row in rows] == [1, 3]
    assert all(row["context"] == 4 and row["reference"] == 8 for row in rows)
    assert all(set(row) >= {"fcd_in_context", "fcd_unconditional", "valid_in_context"} for row in rows)

    main([*common, "--lines", "2"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["line", "context", "reference"] and table[1].split()[:3] == ["2", "4", "8"]
    assert table[2].startswith("in-context FCD below unconditional on ") and table[2].endswith(" of 1 domains")
    assert table[3].startswith("unconditional samples: ") and " of 1 valid" in table[3]

    with pytest.raises(SystemExit) as exit:
        main([*common, "--lines", "4"])
    assert exit.value.code == 1
    assert "domains.txt: has 3 domains, no line 4" in capsys.readouterr().err


def test_evaluate_chem_in_context_samples_under_the_grammar_unless_told_grammar_none(in_context_files, capsys):
    # An untrained model's own samples are hardly ever molecules; under the grammar (the default) many are
    # (1 against 13 of the 48 samples here).
    common = ["evaluate", "chem-in-context", "--model", in_context_files["model"], "--domains",
              in_context_files["domains"], "--n-context", "4", "--n-generate", "12", "--max-new-tokens", "64",
              "--json"]  # fmt: skip
    valid = {}
    for grammar in ([], ["--grammar", "none"]):
        main([*common, *grammar])
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        valid[bool(grammar)] = sum(row["valid_in_context"] for row in rows) + rows[0]["valid_unconditional"]
    own, constrained = valid[True], valid[False]
    assert constrained > 2 * own + 4, (constrained, own)
