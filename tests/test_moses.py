"""The MOSES metric set (`bioxlstm.moses`, `bioxlstm evaluate chem --benchmark moses`) agrees with
direct computations, by RDKit, numpy and `fcd` called here, on real MOSES molecules; hand-checked
cases pin the fragment, scaffold and filter definitions."""

import json
import math
import re
from collections import Counter
from pathlib import Path

import fcd
import numpy as np
import pandas as pd
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from bioxlstm import chem, moses
from bioxlstm.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread", "private_cache")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Reference statistics computed by a test are cached in its own folder, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"

ROOT = Path(__file__).resolve().parents[1]
MOSES_DATA = ROOT / "data" / "moses"
TEST = pd.read_csv(MOSES_DATA / "test.csv.gz", nrows=40)["SMILES"].tolist()
SCAFFOLD_TEST = pd.read_csv(MOSES_DATA / "test_scaffolds.csv.gz", nrows=30)["SMILES"].tolist()
GENERATED = TEST[:12] + SCAFFOLD_TEST[:12]
REFERENCE = TEST[12:40]
FILTERS = str(MOSES_DATA)


def morgan(smiles):
    """Radius-2, 1024-bit Morgan fingerprint as an RDKit bit vector (what the MOSES code uses)."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    return generator.GetFingerprint(Chem.MolFromSmiles(smiles))


def packed(smiles_list):
    return chem.fingerprint_matrix(moses.molecule_features(s, FILTERS).fingerprint for s in smiles_list)


def canonical(smiles):
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


# --- one molecule ---------------------------------------------------------------------------------


def test_fingerprints_are_the_rdkit_morgan_bits():
    for smiles in GENERATED[:5]:
        bits = np.unpackbits(np.frombuffer(moses.molecule_features(smiles, FILTERS).fingerprint, dtype=np.uint8))
        assert set(np.flatnonzero(bits)) == set(morgan(smiles).GetOnBits())


def test_brics_fragments_by_hand():
    # One BRICS bond: between the carbonyl carbon (type 1) and the ester oxygen (type 3) of the carbamate.
    smiles = "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1"
    assert sorted(moses.brics_fragments(Chem.MolFromSmiles(smiles))) == sorted(
        ["[1*]C(=O)N=c1[nH]c2ccc(S(=O)CCC)cc2[nH]1", "[3*]OC"]
    )
    assert moses.brics_fragments(Chem.MolFromSmiles("c1ccccc1")) == ["c1ccccc1"]  # nothing to cut


def test_scaffolds_by_hand_keep_only_two_or_more_rings():
    assert moses.murcko_scaffold(Chem.MolFromSmiles("Cc1ccc(-c2ccccc2)cc1CCO")) == "c1ccc(-c2ccccc2)cc1"
    assert moses.murcko_scaffold(Chem.MolFromSmiles("Cc1ccccc1")) is None  # one ring
    assert moses.murcko_scaffold(Chem.MolFromSmiles("CCCO")) is None  # none


@pytest.mark.parametrize(
    "smiles, why",
    [
        ("C=CC#N", "MCF1: acrylonitrile"),
        ("CCCCCl", "MCF4: primary alkyl halide"),
        ("O=C1NC(=S)SC1=Cc1ccccc1", "PAINS ene_rhod: benzylidene rhodanine"),
        ("CCc1ccc(O)c(O)c1", "PAINS catechol_A: a catechol"),
        ("C[N+](C)(C)CCO", "a charged atom"),
        ("CCP(CC)CC", "phosphorus is not an allowed atom"),
        ("C1CCCCCCC1CO", "an eight-membered ring"),
    ],
)  # fmt: skip
def test_filters_reject_molecules_that_break_a_rule(smiles, why):
    assert not moses.passes_filters(Chem.MolFromSmiles(smiles), moses.filter_patterns(FILTERS)), why


def test_filters_pass_a_clean_molecule_and_hydroquinone_which_no_rule_names():
    patterns = moses.filter_patterns(FILTERS)
    assert moses.passes_filters(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"), patterns)  # paracetamol
    assert moses.passes_filters(Chem.MolFromSmiles("Oc1ccc(O)cc1"), patterns)  # para, not a catechol


def test_filters_pass_the_moses_test_molecules_and_have_every_rule():
    # The MOSES data set was built from molecules that pass these filters.
    patterns = moses.filter_patterns(FILTERS)
    assert len(patterns) == 22 + 480  # MCF rules + PAINS (Wehi) rules, every one parsed
    assert all(moses.passes_filters(Chem.MolFromSmiles(s), patterns) for s in TEST + SCAFFOLD_TEST)


# --- sets of molecules ----------------------------------------------------------------------------


def test_cosine_similarity_of_hand_built_count_vectors():
    # (1, 2, 0) . (0, 2, 2) = 4; norms sqrt(5) and sqrt(8).
    assert moses.cosine_similarity(Counter(a=1, b=2), Counter(b=2, c=2)) == pytest.approx(4 / math.sqrt(40))
    assert moses.cosine_similarity(Counter(a=3), Counter(a=1)) == pytest.approx(1.0)  # same direction
    assert moses.cosine_similarity(Counter(a=1), Counter(b=1)) == 0.0
    assert math.isnan(moses.cosine_similarity(Counter(), Counter(a=1)))


def test_unique_at_k_counts_the_first_k_valid_molecules():
    assert chem.unique_fraction(["A", "B", "A", "C", "C"], 3) == pytest.approx(2 / 3)
    assert chem.unique_fraction(["A", "B", "A", "C", "C"], 1000) == pytest.approx(3 / 5)  # fewer than k: all
    assert math.isnan(chem.unique_fraction([], 10))


def test_nearest_neighbour_similarity_agrees_with_rdkit_and_is_one_for_a_molecule_itself():
    nearest = chem.nearest_neighbour_similarity(packed(GENERATED), packed(REFERENCE))
    expected = [max(DataStructs.BulkTanimotoSimilarity(morgan(g), [morgan(r) for r in REFERENCE])) for g in GENERATED]
    np.testing.assert_allclose(nearest, expected, rtol=1e-6)
    assert chem.nearest_neighbour_similarity(packed(GENERATED), packed(GENERATED)) == pytest.approx(1.0)


def test_internal_diversity_agrees_with_a_double_loop_over_all_pairs_self_pairs_included():
    molecules = GENERATED + GENERATED[:4]  # repeats count as often as they are generated
    fingerprints = [morgan(s) for s in molecules]
    table = np.array([[DataStructs.TanimotoSimilarity(x, y) for y in fingerprints] for x in fingerprints])
    expected_p1 = 1 - table.mean()
    expected_p2 = 1 - np.sqrt((table**2).mean(axis=0)).mean()
    distinct = list(dict.fromkeys(molecules))
    weights = np.array([molecules.count(s) for s in distinct], dtype=float)
    intdiv, intdiv2 = chem.internal_diversities(packed(distinct), weights)
    assert intdiv == pytest.approx(expected_p1, abs=1e-9)
    assert intdiv2 == pytest.approx(expected_p2, abs=1e-9)


@pytest.fixture(scope="module")
def package_fcd():
    """FCD of the valid generated molecules (one repeated) to the reference set, by `fcd.get_fcd`."""
    return fcd.get_fcd([canonical(s) for s in GENERATED + [GENERATED[0]]], [canonical(r) for r in REFERENCE])


def test_fcd_statistics_agree_with_the_fcd_package(package_fcd):
    ours = chem.frechet_distance(
        chem.chemnet_statistics([canonical(s) for s in GENERATED + [GENERATED[0]]]),
        chem.chemnet_statistics([canonical(r) for r in REFERENCE]),
    )
    assert ours == pytest.approx(package_fcd, rel=1e-6)


@pytest.fixture(scope="module")
def references():
    return {
        "Test": moses.reference_set("test", REFERENCE),
        "TestSF": moses.reference_set("test_scaffolds", SCAFFOLD_TEST[12:30]),
    }


def test_moses_metrics_against_direct_computations(references, package_fcd):
    generated = GENERATED + [GENERATED[0], "C1CC", ""]  # one repeat, two invalid entries
    training = moses.training_set(TEST[:6])  # half of the first twelve were "seen in training"
    metrics = moses.moses_metrics(generated, references, training, FILTERS).values
    valid = [canonical(s) for s in generated[:-2]]
    assert list(metrics) == list(moses.COLUMNS)
    assert metrics["valid"] == pytest.approx(25 / 27)
    assert metrics["unique@1k"] == pytest.approx(24 / 25)
    assert metrics["Novelty"] == pytest.approx(18 / 24)
    assert metrics["Filters"] == 1.0
    test_fingerprints = [morgan(r) for r in REFERENCE]
    snn = np.mean([max(DataStructs.BulkTanimotoSimilarity(morgan(v), test_fingerprints)) for v in valid])
    assert metrics["SNN/Test"] == pytest.approx(snn, rel=1e-6)
    fragments = Counter(f for v in valid for f in Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(Chem.MolFromSmiles(v))).split("."))
    assert metrics["Frag/Test"] == pytest.approx(moses.cosine_similarity(fragments, references["Test"].fragments))
    assert metrics["FCD/Test"] == pytest.approx(package_fcd, rel=1e-5)


def test_the_metrics_evaluate_chem_shares_with_moses_are_the_same_numbers(references):
    generated = GENERATED + [GENERATED[0], "C1CC", ""]
    plain = chem.chem_metrics(generated, reference=REFERENCE, training=TEST[:6])
    benchmark = moses.moses_metrics(generated, references, moses.training_set(TEST[:6]), FILTERS)
    assert plain.validity == benchmark.values["valid"] and plain.uniqueness == benchmark.values["unique@10k"]
    assert plain.novelty == benchmark.values["Novelty"] and plain.internal_diversity == benchmark.values["IntDiv"]
    assert plain.fcd == pytest.approx(benchmark.values["FCD/Test"], rel=1e-9)
    assert plain.invalid == benchmark.invalid == {"syntax": 2, "kekulization": 0, "valence": 0, "other": 0}


def test_a_set_against_itself_scores_like_a_perfect_generator():
    reference = moses.reference_set("self", REFERENCE)
    metrics = moses.moses_metrics(REFERENCE, {"Test": reference}, set(), FILTERS).values
    assert metrics["SNN/Test"] == pytest.approx(1.0)
    assert metrics["Frag/Test"] == pytest.approx(1.0)
    assert metrics["Scaf/Test"] == pytest.approx(1.0)
    assert metrics["FCD/Test"] == pytest.approx(0.0, abs=1e-3)
    assert metrics["Novelty"] == 1.0
    assert "SNN/TestSF" not in metrics  # columns of a reference set not given are left out


def test_precomputed_statistics_round_trip(tmp_path, references):
    directory = tmp_path / "moses"
    directory.mkdir()
    pd.DataFrame({"SMILES": REFERENCE}).to_csv(directory / "test.csv.gz", index=False)
    moses.write_reference_statistics(references["Test"], directory)
    loaded = moses.load_reference_set(directory, "test")
    np.testing.assert_array_equal(loaded.fingerprints, references["Test"].fingerprints)
    np.testing.assert_array_equal(loaded.fcd_covariance, references["Test"].fcd_covariance)
    assert loaded.fragments == references["Test"].fragments and loaded.scaffolds == references["Test"].scaffolds


# --- the command ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moses_directory(tmp_path_factory):
    """A MOSES-like directory of small real sets (no precomputed statistics, no filter files: the
    command computes the former and takes the bundled filters)."""
    directory = tmp_path_factory.mktemp("moses")
    pd.DataFrame({"SMILES": REFERENCE}).to_csv(directory / "test.csv.gz", index=False)
    pd.DataFrame({"SMILES": SCAFFOLD_TEST[12:30]}).to_csv(directory / "test_scaffolds.csv.gz", index=False)
    pd.DataFrame({"SMILES": TEST[:6]}).to_csv(directory / "train.csv.gz", index=False)
    generated = directory / "generated.smi"
    generated.write_text("\n".join(GENERATED + ["C1CC"]) + "\n")
    return directory


def test_evaluate_chem_moses_json_reports_every_column(moses_directory, capsys):
    main(["evaluate", "chem", "--benchmark", "moses", "--generated", str(moses_directory / "generated.smi"),
          "--moses-dir", str(moses_directory), "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert set(moses.COLUMNS) <= set(result)
    assert result["generated"] == 25 and result["valid_molecules"] == 24
    assert result["valid"] == pytest.approx(24 / 25)
    assert result["Novelty"] == pytest.approx(18 / 24)
    assert result["Filters"] == 1.0


def test_evaluate_chem_moses_prints_a_table_and_takes_overrides(moses_directory, tmp_path, capsys):
    train = tmp_path / "train.smi"
    train.write_text("\n".join(GENERATED[:12]) + "\n")
    main(["evaluate", "chem", "--benchmark", "moses", "--generated", str(moses_directory / "generated.smi"),
          "--moses-dir", str(moses_directory), "--train", str(train), "--workers", "2"])  # fmt: skip
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()}
    assert set(moses.COLUMNS) <= set(rows)
    assert float(rows["Novelty"]) == pytest.approx(12 / 24, abs=1e-4)


@pytest.mark.parametrize(
    "generated, extra, message",
    [
        ("missing.smi", [], r"missing\.smi: no such file"),
        ("binary.smi.gz", [], r"binary\.smi\.gz: not a readable SMILES file"),
        ("generated.smi", ["--train", "absent_train.smi"], r"absent_train\.smi: no such file"),
        ("generated.smi", ["--moses-dir", "no_such_dir"], r"no_such_dir: no such directory"),
    ],
)  # fmt: skip
def test_evaluate_chem_moses_reports_bad_input_in_one_line(moses_directory, tmp_path, capsys, generated, extra, message):
    (tmp_path / "binary.smi.gz").write_bytes(b"\x1f\x8b\x08\x00garbage that is not gzip")
    path = moses_directory / generated if generated == "generated.smi" else tmp_path / generated
    arguments = ["--moses-dir", str(moses_directory), *extra] if "--moses-dir" not in extra else extra
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "chem", "--benchmark", "moses", "--generated", str(path), *arguments])
    error = capsys.readouterr().err
    assert exit.value.code == 1 and len(error.strip().splitlines()) == 1
    assert error.startswith("bioxlstm: error: ") and re.search(message, error)


def test_evaluate_chem_without_benchmark_still_needs_a_reference(moses_directory, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "chem", "--generated", str(moses_directory / "generated.smi")])
    assert exit.value.code == 1 and "--reference is required" in capsys.readouterr().err


def test_reference_statistics_computed_once_are_cached_under_the_file_digest(tmp_path, private_cache):
    directory = tmp_path / "sets"
    directory.mkdir()
    pd.DataFrame({"SMILES": REFERENCE}).to_csv(directory / "test.csv.gz", index=False)
    first = moses.load_reference_set(directory, "test")
    (cached,) = private_cache.glob("bioxlstm/moses/*")
    assert sorted(p.name for p in cached.iterdir()) == ["test_counts.json.gz", "test_fcd.npz"]
    again = moses.load_reference_set(directory, "test")
    assert np.array_equal(again.fcd_covariance, first.fcd_covariance) and again.scaffolds == first.scaffolds
    pd.DataFrame({"SMILES": REFERENCE[:-1]}).to_csv(directory / "test.csv.gz", index=False)
    moses.load_reference_set(directory, "test")
    assert len(list(private_cache.glob("bioxlstm/moses/*"))) == 2, "an edited file gets statistics of its own"
