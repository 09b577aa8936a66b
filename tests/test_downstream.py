"""Downstream metrics, labeled-record reading and the linear probe command, on the labeled sets of
data/labeled (built from real annotations by scripts/build_labeled_sets.py)."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu, rankdata

from bioxlstm.cli import main
from bioxlstm.io import InputError, read_labeled_records, read_labels
from bioxlstm.tasks.downstream import Summary, classification_metrics, linear_probe, regression_metrics
from helpers import DATA

LABELED = DATA / "labeled"
HYDROPHOBIC = set("AILMFVW")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _membrane_set():
    """(labels 0 soluble / 1 membrane, hydrophobic fraction) of the Swiss-Prot membrane set: a real
    score that tells the classes apart imperfectly."""
    records = list(read_labeled_records(LABELED / "swissprot_membrane.fasta", domain="protein"))
    labels = np.array([record.label == "membrane" for record in records], dtype=int)
    score = np.array([sum(c in HYDROPHOBIC for c in r.sequence) / len(r.sequence) for r in records])
    return labels, score


def _binary_by_hand(labels, predicted):
    tp = np.sum((predicted == 1) & (labels == 1))
    tn = np.sum((predicted == 0) & (labels == 0))
    fp = np.sum((predicted == 1) & (labels == 0))
    fn = np.sum((predicted == 0) & (labels == 1))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp + tn) / len(labels), mcc, 2 * tp / (2 * tp + fp + fn)


def _auroc_by_ranks(positive_scores, negative_scores):
    u = mannwhitneyu(positive_scores, negative_scores).statistic
    return u / (len(positive_scores) * len(negative_scores))


def test_binary_classification_metrics_match_an_independent_computation():
    labels, score = _membrane_set()
    threshold = np.median(score)
    probability = 1 / (1 + np.exp(-(score - threshold) * 40))
    metrics = classification_metrics(labels, np.stack([1 - probability, probability], axis=1))
    accuracy, mcc, f1 = _binary_by_hand(labels, (probability > 0.5).astype(int))
    assert metrics.count == 56
    assert metrics.values["accuracy"] == pytest.approx(accuracy)
    assert metrics.values["mcc"] == pytest.approx(mcc)
    assert metrics.values["f1"] == pytest.approx(f1)
    assert metrics.values["auroc"] == pytest.approx(_auroc_by_ranks(score[labels == 1], score[labels == 0]))
    assert 0.7 < metrics.values["auroc"] < 1  # hydrophobicity marks membrane proteins, not perfectly


def test_multiclass_metrics_are_macro_f1_one_vs_rest_auroc_and_the_multiclass_mcc():
    """Three classes of ChEMBL molecules by computed logP tercile, scored by a noisy real feature."""
    table = pd.read_csv(LABELED / "chembl_logp_labels.csv")
    smiles = [r.sequence for r in read_labeled_records(LABELED / "chembl_logp.fasta")]
    labels = np.digitize(table["label"], np.quantile(table["label"], [1 / 3, 2 / 3]))
    carbons = np.array([s.count("C") + s.count("c") for s in smiles], dtype=float)
    centres = np.array([np.mean(carbons[labels == k]) for k in range(3)])
    probabilities = np.exp(-np.abs(carbons[:, None] - centres[None, :]) / 3)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    metrics = classification_metrics(labels, probabilities)
    predicted = probabilities.argmax(1)
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (labels, predicted), 1)
    f1s = [2 * confusion[k, k] / (confusion[k].sum() + confusion[:, k].sum()) for k in range(3)]
    aurocs = [_auroc_by_ranks(probabilities[labels == k, k], probabilities[labels != k, k]) for k in range(3)]
    # Gorodkin's R_K from the confusion matrix C: (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)).
    c, s = np.trace(confusion), confusion.sum()
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    mcc = (c * s - t @ p) / math.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    assert metrics.values["accuracy"] == pytest.approx(c / s)
    assert metrics.values["f1"] == pytest.approx(np.mean(f1s))
    assert metrics.values["auroc"] == pytest.approx(np.mean(aurocs))
    assert metrics.values["mcc"] == pytest.approx(mcc)
    assert "macro" in metrics.averaging


def test_regression_metrics_match_an_independent_computation():
    table = pd.read_csv(LABELED / "chembl_logp_labels.csv")
    smiles = [r.sequence for r in read_labeled_records(LABELED / "chembl_logp.fasta")]
    measured = table["label"].to_numpy()
    predicted = np.array([0.12 * (s.count("C") + s.count("c")) - 0.4 * s.count("O") for s in smiles])
    metrics = regression_metrics(measured, predicted)
    assert metrics.values["pearson"] == pytest.approx(np.corrcoef(measured, predicted)[0, 1])
    assert metrics.values["spearman"] == pytest.approx(np.corrcoef(rankdata(measured), rankdata(predicted))[0, 1])
    residual = np.sum((measured - predicted) ** 2)
    assert metrics.values["r2"] == pytest.approx(1 - residual / np.sum((measured - measured.mean()) ** 2))
    assert metrics.values["spearman"] > 0.3


def test_undefined_metrics_are_nan_and_summaries_use_the_sample_std():
    one_class = classification_metrics([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    assert math.isnan(one_class.values["auroc"]) and one_class.as_dict()["auroc"] is None
    flat = regression_metrics([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    assert math.isnan(flat.values["spearman"])
    rows = [regression_metrics([1, 2, 3, 4], p) for p in ([1, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1])]
    summary = Summary.of(rows)
    spearmans = [1.0, 0.8, -1.0]  # 1 - 6 * 2 / (4 * 15) for one swapped pair
    assert summary.mean["spearman"] == pytest.approx(np.mean(spearmans))
    assert summary.std["spearman"] == pytest.approx(np.std(spearmans, ddof=1))


def test_labels_come_from_fasta_headers_and_table_columns(tmp_path):
    fasta = list(read_labeled_records(LABELED / "ecoli_coding_windows.fasta", domain="dna"))
    table = pd.read_csv(LABELED / "ecoli_coding_windows_labels.csv")
    assert [(r.id, r.label) for r in fasta] == list(zip(table["id"], table["label"]))
    parquet = tmp_path / "tm.parquet"
    pd.read_csv(LABELED / "swissprot_transmembrane.csv").to_parquet(parquet)
    records = list(read_labeled_records(parquet, domain="protein", id_column="id"))
    assert len(records) == 100 and all(len(r.label) == len(r.sequence) for r in records)
    assert read_labels(LABELED / "swissprot_membrane.fasta")[:1] == [("CRU4_ARATH", "soluble")]
    frame = pd.DataFrame({"id": ["a", "b"], "sequence": ["MKV", "MKW"], "label": [1.5, float("nan")]})
    frame.to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(InputError, match=r"nan.parquet: record 'b' has no label \(column 'label' is missing, empty or NaN\)"):
        list(read_labeled_records(tmp_path / "nan.parquet", id_column="id"))


@pytest.fixture(scope="module")
def dna_embeddings(tmp_path_factory):
    """Embeddings by the bundled DNA model of 100 coding and intergenic E. coli windows, and their labels."""
    directory = tmp_path_factory.mktemp("probe")
    records = list(read_labeled_records(LABELED / "ecoli_coding_windows.fasta"))
    chosen = [r for r in records if r.label == "coding"][:50] + [r for r in records if r.label == "intergenic"][:50]
    (directory / "windows.fasta").write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    pd.DataFrame({"id": [r.id for r in chosen], "label": [r.label for r in chosen]}).to_csv(directory / "labels.csv", index=False)
    main(["embed", "--model", "dna", "--input", str(directory / "windows.fasta"), "--output", str(directory / "e.parquet")])
    return directory


def test_probe_on_real_embeddings_reports_every_fold_and_their_mean(dna_embeddings, capsys):
    plot = dna_embeddings / "folds.png"
    main(["evaluate", "probe", "--embeddings", str(dna_embeddings / "e.parquet"), "--labels",
          str(dna_embeddings / "labels.csv"), "--positive", "coding", "--json", "--plot", str(plot)])
    result = json.loads(capsys.readouterr().out)
    assert result["records"] == 100 and result["width"] == 128 and result["classes"] == ["intergenic", "coding"]
    assert [fold["fold"] for fold in result["folds"]] == [1, 2, 3, 4, 5]
    assert all(fold["test"] == 20 for fold in result["folds"])  # stratified: 10 of each class per fold
    for name in ("accuracy", "mcc", "f1", "auroc"):
        values = [fold[name] for fold in result["folds"]]
        assert result["mean"][name] == pytest.approx(np.mean(values))
        assert result["std"][name] == pytest.approx(np.std(values, ddof=1))
    assert result["mean"]["auroc"] > 0.6  # frozen DNA-model features carry the coding signal
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main(["evaluate", "probe", "--embeddings", str(dna_embeddings / "e.parquet"), "--labels", str(dna_embeddings / "labels.csv")])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["fold", "accuracy", "MCC", "F1", "AUROC"] and table[6].startswith("mean ± std")


def test_a_regression_probe_predicts_every_record_out_of_fold():
    rng = np.random.default_rng(0)
    table = pd.read_csv(LABELED / "chembl_logp_labels.csv").head(200)
    smiles = [r.sequence for r in read_labeled_records(LABELED / "chembl_logp.fasta")][:200]
    features = np.array([[s.count(c) for c in "CcONSF=()"] for s in smiles], dtype=float) + rng.normal(0, 0.01, (200, 9))
    result = linear_probe(features, [str(v) for v in table["label"]], "regression", folds=4, seed=1)
    assert len(result.folds) == 4 and sum(f.test_size for f in result.folds) == 200
    assert result.summary.mean["pearson"] > 0.5
    whole = regression_metrics(result.measured, result.predicted)
    assert whole.values["pearson"] > 0.5


def _probe_files(directory, labels: pd.DataFrame):
    path = directory / "bad_labels.csv"
    labels.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.assign(label=t["label"].where(t.index != 3, "NaN")), "record 'NC_008253.1_.*' has no label \\(column 'label'"),
        (lambda t: t.iloc[1:], "do not match: 1 embedding id\\(s\\) have no label"),
        (lambda t: pd.concat([t, pd.DataFrame({"id": ["chr_extra"], "label": ["coding"]})]), "1 label id\\(s\\) have no embedding .first: 'chr_extra'"),
        (lambda t: pd.concat([t, t.iloc[:1]]), "id 'NC_008253.1_.*' occurs more than once in the labels"),
        (lambda t: t.rename(columns={"label": "class"}), "no label column 'label' \\(available: id, class\\)"),
    ],
    ids=["nan-label", "missing-label", "missing-embedding", "duplicate-id", "no-label-column"],
)
def test_bad_probe_inputs_are_one_line_errors_and_write_nothing(dna_embeddings, tmp_path, capsys, change, message):
    labels = _probe_files(tmp_path, change(pd.read_csv(dna_embeddings / "labels.csv")))
    plot = tmp_path / "plot.png"
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "probe", "--embeddings", str(dna_embeddings / "e.parquet"), "--labels", str(labels), "--plot", str(plot)])
    assert exit.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == "" and not plot.exists()
    error = captured.err.splitlines()[-1]
    assert error.startswith("bioxlstm: error: ") and re.search(message, error), error
    assert captured.err.count("bioxlstm: error:") == 1
