"""`evaluate variants`: ProteinGym's variant-effect metrics, checked against independent computations,
and the command end to end on the bundled protein model.

There is no deep mutational scan among the project's data, so the assays here are built from a real
wild type (the first globin of data/globins45.fa, MYG_ESCGI) with BLOSUM62 substitution scores
standing in for measured effects: real published numbers with many ties, but not measurements.
"""

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from Bio.Align import substitution_matrices
from scipy import stats
from sklearn.metrics import matthews_corrcoef, roc_auc_score

import bioxlstm
from bioxlstm.cli import main
from bioxlstm.io import read_records
from bioxlstm.pretrained import load_pretrained
from bioxlstm.tasks.protein import apply_mutant
from bioxlstm.tasks.variant_benchmark import (
    InvalidVariantError,
    auc,
    mcc,
    mean_metrics,
    median_split,
    ndcg,
    prepare_assay,
    spearman,
    top_recall,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
GLOBINS = ROOT / "data" / "globins45.fa"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def globins() -> list[str]:
    return [record.sequence for record in read_records(GLOBINS, domain="protein")]


def substitutions(wildtype: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    codes = []
    for position in rng.sample(range(len(wildtype)), count):
        new = rng.choice([a for a in AMINO_ACIDS if a != wildtype[position]])
        codes.append(f"{wildtype[position]}{position + 1}{new}")
    return codes


def blosum62(code: str) -> float:
    matrix = substitution_matrices.load("BLOSUM62")
    return float(sum(matrix[part[0]][part[-1]] for part in code.split(":")))


@pytest.fixture(scope="module")
def bundled():
    return load_pretrained("protein")


@pytest.fixture(scope="module")
def model_scores(globins, bundled):
    """40 single mutants of the globin: BLOSUM62 scores and the bundled model's scores."""
    model, tokenizer = bundled
    codes = substitutions(globins[0], 40, seed=0)
    predicted = bioxlstm.score_variants(model, tokenizer, globins[0], codes)
    return codes, np.array([blosum62(c) for c in codes]), np.array(predicted)


# --- metrics against independent computations --------------------------------------------------------


def test_spearman_agrees_with_pandas_rank_correlation(model_scores):
    _, measured, predicted = model_scores
    expected = pd.Series(measured).corr(pd.Series(predicted), method="spearman")
    assert spearman(measured, predicted) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(spearman(measured, np.ones_like(predicted)))


def test_auc_agrees_with_scikit_learn_with_tied_scores(model_scores):
    _, measured, predicted = model_scores
    labels = (measured >= 0).astype(int)
    tied = np.round(predicted)  # many ties: each counts one half
    for scores in (predicted, tied):
        assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(auc(np.ones_like(labels), predicted))


def test_mcc_splits_model_scores_at_their_median_as_proteingym(model_scores):
    _, measured, predicted = model_scores
    labels = median_split(measured)
    assert labels.tolist() == (measured >= np.median(measured)).astype(int).tolist()
    guesses = (predicted >= np.median(predicted)).astype(int)
    assert mcc(labels, predicted) == pytest.approx(matthews_corrcoef(labels, guesses), abs=1e-12)
    assert mcc(labels, np.zeros_like(predicted)) == matthews_corrcoef(labels, np.ones_like(labels)) == 0.0


def test_ndcg_by_hand():
    # 20 variants: k = floor(20 * 10%) = 2; measured 0..19, so gains are i / 19.
    measured = np.arange(20, dtype=float)
    predicted = np.zeros(20)
    predicted[19], predicted[10] = 5.0, 4.0  # the model's top two: the best variant and the 11th
    discount = 1 / np.log2(3)
    expected = (1 + 10 / 19 * discount) / (1 + 18 / 19 * discount)
    assert ndcg(measured, predicted) == pytest.approx(expected, abs=1e-12)
    assert ndcg(measured, measured) == 1.0
    assert math.isnan(ndcg(measured[:9], predicted[:9]))  # k = 0: nothing to rank


def test_ndcg_reverse_order_by_hand():
    measured = np.arange(20, dtype=float)
    # The worst two have gains 0 and 1/19; the ideal top two 1 and 18/19.
    expected = (1 / 19 / np.log2(3)) / (1 + 18 / 19 / np.log2(3))
    assert ndcg(measured, -measured) == pytest.approx(expected, abs=1e-12)


def test_top_recall_by_hand():
    # 20 variants: the 90th percentile of 0..19 is 17.1, so the top set is {18, 19} on both sides.
    measured = np.arange(20, dtype=float)
    predicted = np.zeros(20)
    predicted[19], predicted[3] = 2.0, 1.0
    assert top_recall(measured, predicted) == pytest.approx(1 / 2)
    # 10 variants, predictions tied at the top: 4 pass the predicted cut, and the best measured one is among them.
    assert top_recall(np.arange(10.0), np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1.0])) == 1.0
    assert top_recall(np.arange(10.0), np.arange(10.0)[::-1]) == 0.0


def test_the_mean_over_assays_leaves_out_undefined_values(tmp_path, globins):
    from bioxlstm.tasks.variant_benchmark import AssayResult

    def result(spearman_value):
        return AssayResult("a", "a.csv", 10, 10, 0, "DMS_score_bin", spearman_value, 0.5, 0.1, 0.2, 0.3)

    means = mean_metrics([result(0.2), result(math.nan), result(0.4)])
    assert means["spearman"] == pytest.approx(0.3) and means["auc"] == 0.5


# --- reading and checking assays -------------------------------------------------------------------


def test_an_assay_in_proteingym_layout_is_checked_row_by_row(tmp_path, globins):
    wildtype = globins[0]
    single, double = f"{wildtype[0]}1A", f"{wildtype[1]}2W:{wildtype[4]}5K"
    mutated = list(wildtype)
    mutated[1], mutated[4] = "W", "K"
    table = pd.DataFrame({
        "mutant": [single, double, f"{wildtype[2]}3C", "Q2A", f"{wildtype[3]}4A:{wildtype[3]}4C"],
        "mutated_sequence": ["", "".join(mutated), "A" * len(wildtype), "", ""],
        "DMS_score": ["0.5", "-1", "0.1", "2", "3"],
        "DMS_score_bin": ["1", "0", "1", "1", "1"],
    })  # fmt: skip
    table.to_csv(tmp_path / "dms.csv", index=False)
    assay = prepare_assay(tmp_path / "dms.csv", wildtype, skip_invalid=True)
    assert [(v.line, v.mutant, v.measured, v.binary) for v in assay.variants] == [(2, single, 0.5, 1), (3, double, -1.0, 0)]
    assert [(s.line, s.reason) for s in assay.skipped] == [
        (4, "mutated_sequence disagrees with the mutant code"), (5, "does not match the wild type"),
        (6, "changes one position twice"),
    ]  # fmt: skip
    assert assay.binary_label == "DMS_score_bin" and assay.rows == 5
    with pytest.raises(InvalidVariantError, match=r"dms.csv: line 4: mutant .*differs from it at position 1 \(2 more rows cannot be scored\)$"):
        prepare_assay(tmp_path / "dms.csv", wildtype)


# --- the command end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assay_files(tmp_path_factory, globins):
    """A plain mutant,score assay of 40 singles, a ProteinGym-layout assay of 30 doubles, the wild
    type, and homologs (the other globins)."""
    directory = tmp_path_factory.mktemp("assays")
    wildtype = globins[0]
    (directory / "wt.fasta").write_text(f">MYG_ESCGI\n{wildtype}\n")
    (directory / "homologs.fasta").write_text("".join(f">globin_{i}\n{s}\n" for i, s in enumerate(globins[1:], 2)))
    singles = substitutions(wildtype, 40, seed=0)
    pd.DataFrame({"mutant": singles, "score": [blosum62(c) for c in singles]}).to_csv(directory / "singles.csv", index=False)
    firsts = substitutions(wildtype[:70], 30, seed=1)
    seconds = [code for code in substitutions(wildtype, 100, seed=2) if int(code[1:-1]) > 70]
    doubles = [f"{a}:{b}" for a, b in zip(firsts, seconds, strict=False)]
    scores = [blosum62(c) for c in doubles]
    pd.DataFrame({
        "mutant": doubles, "mutated_sequence": [apply_mutant(wildtype, c) for c in doubles],
        "DMS_score": scores, "DMS_score_bin": [int(s >= 0) for s in scores],
    }).to_csv(directory / "doubles.csv", index=False)  # fmt: skip
    return directory


def run_cli(argv, capsys):
    main(argv)
    return capsys.readouterr()


def test_command_scores_assays_and_reports_proteingym_metrics(assay_files, tmp_path, capsys, globins, bundled):
    d = assay_files
    output, plot = tmp_path / "per_variant.csv", tmp_path / "scatter.png"
    out = run_cli(["evaluate", "variants", "--model", "protein", "--assay", str(d / "singles.csv"), "--assay",
                   str(d / "doubles.csv"), "--wildtype", str(d / "wt.fasta"), "--output", str(output), "--plot",
                   str(plot), "--json"], capsys).out  # fmt: skip
    report = json.loads(out)
    singles, doubles = report["assays"]
    assert (singles["assay"], singles["scored"], singles["skipped"]) == ("singles", 40, 0)
    assert singles["binary_label"] == "median split of score" and doubles["binary_label"] == "DMS_score_bin"
    rows = pd.read_csv(output)
    model, tokenizer = bundled
    expected = bioxlstm.score_variants(model, tokenizer, globins[0], list(rows.mutant[rows.assay == "singles"]))
    assert np.allclose(rows.predicted[rows.assay == "singles"], expected, atol=1e-5)
    for result in report["assays"]:
        part = rows[rows.assay == result["assay"]]
        assert result["spearman"] == pytest.approx(stats.spearmanr(part.measured, part.predicted).statistic, abs=1e-5)
        assert result["auc"] == pytest.approx(roc_auc_score(part.measured_binary, part.predicted), abs=1e-5)
    assert report["mean"]["ndcg"] == pytest.approx((singles["ndcg"] + doubles["ndcg"]) / 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_with_homologs_in_context_prints_a_table(assay_files, tmp_path, capsys, globins, bundled):
    d = assay_files
    output = tmp_path / "per_variant.csv"
    out = run_cli(["evaluate", "variants", "--model", "protein", "--assay", str(d / "singles.csv"), "--wildtype",
                   str(d / "wt.fasta"), "--context", str(d / "homologs.fasta"), "--max-context-tokens", "700",
                   "--output", str(output)], capsys).out  # fmt: skip
    lines = out.splitlines()
    assert lines[0].split() == ["assay", "rows", "scored", "skipped", "Spearman", "AUC", "MCC", "NDCG", "top10%"]
    assert lines[1].split()[:4] == ["singles", "40", "40", "0"]
    assert "AUC and MCC against a median split of score (no DMS_score_bin)" in out
    model, tokenizer = bundled
    rows = pd.read_csv(output)
    with_context = bioxlstm.score_variants(
        model, tokenizer, globins[0], list(rows.mutant), context=d / "homologs.fasta", max_context_tokens=700
    )
    alone = bioxlstm.score_variants(model, tokenizer, globins[0], list(rows.mutant))
    assert np.allclose(rows.predicted, with_context, atol=1e-5) and not np.allclose(rows.predicted, alone, atol=1e-3)


def test_skip_invalid_counts_and_lists_every_skipped_row(assay_files, tmp_path, capsys, globins):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"mutant": ["W3A", f"{globins[0][0]}1C", "V1A:V1C"] + substitutions(globins[0], 12, 3),
                  "DMS_score": ["1", "", "2"] + [str(i) for i in range(12)]}).to_csv(bad, index=False)  # fmt: skip
    output = tmp_path / "per_variant.csv"
    captured = run_cli(["evaluate", "variants", "--model", "protein", "--assay", str(bad), "--wildtype",
                        str(assay_files / "wt.fasta"), "--skip-invalid", "--output", str(output), "--json"], capsys)  # fmt: skip
    (result,) = json.loads(captured.out)["assays"]
    assert (result["rows"], result["scored"], result["skipped"]) == (15, 12, 3)
    assert result["skipped_reasons"] == {
        "does not match the wild type": 1, "no measured score": 1, "changes one position twice": 1
    }  # fmt: skip
    assert f"{bad}: 3 of 15 variants skipped" in captured.err
    rows = pd.read_csv(output, keep_default_na=False)
    assert len(rows) == 15 and (rows.skipped != "").sum() == 3


@pytest.mark.parametrize(
    "table, message",
    [
        ({"mutant": ["{wt1}1A", "W3A"], "DMS_score": ["1", "2"]},
         "bad.csv: line 3: mutant 'W3A': the wild type has {wt3} at position 3, not W; nothing was scored"),
        ({"mutant": ["{wt1}1A"], "fitness": ["1"]}, "bad.csv: no score column 'DMS_score' or 'score' (available: mutant, fitness)"),
        ({"mutant": [], "DMS_score": []}, "bad.csv: no variants (a header and no rows)"),
        ({"mutant": ["{wt1}1A:{wt1}1C"], "DMS_score": ["1"]}, "bad.csv: line 2: mutant '{wt1}1A:{wt1}1C': changes position 1 twice"),
    ],
    ids=["mismatch", "no-score-column", "header-only", "same-position-twice"],
)
def test_bad_assays_give_one_line_and_write_nothing(assay_files, tmp_path, capsys, globins, table, message):
    wildtype = globins[0]
    table = {k: [v.format(wt1=wildtype[0]) for v in values] for k, values in table.items()}
    bad, output = tmp_path / "bad.csv", tmp_path / "per_variant.csv"
    pd.DataFrame(table).to_csv(bad, index=False)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "variants", "--model", "protein", "--assay", str(bad), "--wildtype",
              str(assay_files / "wt.fasta"), "--output", str(output), "--plot", str(tmp_path / "p.png")])  # fmt: skip
    error = capsys.readouterr().err
    assert exit_.value.code == 1 and len(error.strip().splitlines()) == 1
    assert error.startswith("bioxlstm: error: ") and message.format(wt1=wildtype[0], wt3=wildtype[2]) in error
    assert not output.exists() and not (tmp_path / "p.png").exists()


def test_a_proteingym_reference_table_names_assays_wild_types_and_msas(assay_files, tmp_path, capsys, globins):
    d = assay_files
    (tmp_path / "MSA").mkdir()
    (tmp_path / "MSA" / "GLOBIN.a2m").write_text((d / "homologs.fasta").read_text())
    pd.DataFrame({
        "DMS_id": ["GLOBIN_doubles", "GLOBIN_singles"], "DMS_filename": ["doubles.csv", "singles.csv"],
        "target_seq": [globins[0]] * 2, "MSA_filename": ["GLOBIN.a2m"] * 2,
    }).to_csv(tmp_path / "DMS_substitutions.csv", index=False)  # fmt: skip
    common = ["evaluate", "variants", "--model", "protein", "--reference", str(tmp_path / "DMS_substitutions.csv"),
              "--assay-dir", str(d), "--msa-dir", str(tmp_path / "MSA"), "--max-context-tokens", "700"]  # fmt: skip
    report = json.loads(run_cli(common + ["--ids", "GLOBIN_doubles", "--json"], capsys).out)
    assert [(a["assay"], a["scored"]) for a in report["assays"]] == [("GLOBIN_doubles", 30)]
    with pytest.raises(SystemExit):
        main(common + ["--ids", "GLOBIN_triples"])
    assert "DMS_substitutions.csv: no DMS_id 'GLOBIN_triples'" in capsys.readouterr().err


def test_wild_types_pair_with_assays_once_for_all_or_once_each(assay_files, capsys):
    d = assay_files
    with pytest.raises(SystemExit):
        main(["evaluate", "variants", "--model", "protein", "--assay", str(d / "singles.csv"), "--assay",
              str(d / "doubles.csv")] + ["--wildtype", str(d / "wt.fasta")] * 3)  # fmt: skip
    assert "--wildtype is given 3 times for 2 assays" in capsys.readouterr().err
