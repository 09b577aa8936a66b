"""Downstream assays: one set of metrics, and linear probes on frozen embeddings.

The metrics are those of fine-tuning over seeds (`bioxlstm.training.finetune`, the protocol of
Genomic Benchmarks and the Nucleotide Transformer papers) and of linear probes: a probe
(scikit-learn: standardised features, logistic or ridge regression) on embeddings reports them over
the folds of a k-fold cross-validation.

Metrics, computed with scikit-learn and scipy:

- classification: accuracy; MCC (Matthews correlation; for more than two classes its multi-class
  generalisation, one number over the whole confusion matrix); F1 (two classes: of the positive
  class, the second; more: the macro average over classes); AUROC (two classes: of the positive
  class's probability; more: the macro average of one-vs-rest AUROCs). Token classification
  counts every labeled residue of the test sequences as one example.
- regression: Spearman and Pearson correlation, R² (coefficient of determination).

A metric that is undefined on the data (AUROC with one class present, a correlation of constant
predictions) is NaN; means and standard deviations (sample, ddof=1) over seeds or folds are NaN
where any value is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLASSIFICATION, REGRESSION = "classification", "regression"
TASKS = (CLASSIFICATION, REGRESSION)
METRICS = {CLASSIFICATION: ("accuracy", "mcc", "f1", "auroc"), REGRESSION: ("spearman", "pearson", "r2")}
METRIC_TITLES = {"accuracy": "accuracy", "mcc": "MCC", "f1": "F1", "auroc": "AUROC",
                 "spearman": "Spearman", "pearson": "Pearson", "r2": "R²"}  # fmt: skip


@dataclass
class Metrics:
    """The metrics of one evaluation: `values` by name (NaN where undefined), on `count` examples;
    `averaging` says how classification metrics combine classes."""

    values: dict[str, float]
    count: int
    averaging: str = ""

    def as_dict(self) -> dict:
        """The values, with NaN as None (JSON has no NaN)."""
        return {name: None if math.isnan(value) else value for name, value in self.values.items()}


@dataclass
class Summary:
    """Mean and sample standard deviation of each metric over seeds or folds."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def of(cls, rows: Sequence[Metrics]) -> "Summary":
        names = list(rows[0].values) if rows else []
        columns = {name: np.array([row.values[name] for row in rows], dtype=float) for name in names}
        return cls(
            mean={name: float(np.mean(v)) for name, v in columns.items()},
            std={name: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for name, v in columns.items()},
        )


def _undefined_as_nan(compute: Callable[[], float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy and sklearn warn where they return NaN or 0
        try:
            value = float(compute())
        except ValueError:  # e.g. AUROC with one class present
            return math.nan
    return value


def classification_metrics(labels, probabilities, positive: int = 1) -> Metrics:
    """Accuracy, MCC, F1 and AUROC of class `probabilities` (examples, classes) against integer
    `labels`; the predicted class is the most probable one. Two classes: F1 and AUROC of class
    `positive`; more: macro averages (see the module docstring)."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    if classes == 2:
        f1 = _undefined_as_nan(lambda: f1_score(labels, predicted, pos_label=positive, average="binary", zero_division=0))
        auroc = _undefined_as_nan(lambda: roc_auc_score(labels == positive, probabilities[:, positive]))
        averaging = f"binary: F1 and AUROC of the positive class (index {positive})"
    else:
        everything = list(range(classes))
        f1 = _undefined_as_nan(lambda: f1_score(labels, predicted, labels=everything, average="macro", zero_division=0))
        auroc = _undefined_as_nan(
            lambda: roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=everything)
        )
        averaging = f"macro over {classes} classes (F1, one-vs-rest AUROC); multi-class MCC"
    values = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "mcc": _undefined_as_nan(lambda: matthews_corrcoef(labels, predicted)),
        "f1": f1,
        "auroc": auroc,
    }
    return Metrics(values, len(labels), averaging)


def regression_metrics(measured, predicted) -> Metrics:
    """Spearman and Pearson correlation and R² of `predicted` against `measured` values."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import r2_score

    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    values = {
        "spearman": _undefined_as_nan(lambda: spearmanr(measured, predicted).statistic),
        "pearson": _undefined_as_nan(lambda: pearsonr(measured, predicted).statistic),
        "r2": _undefined_as_nan(lambda: r2_score(measured, predicted)),
    }
    return Metrics(values, len(measured))


@dataclass
class ProbeFold:
    fold: int
    metrics: Metrics
    train_size: int
    test_size: int


@dataclass
class ProbeResult:
    task: str
    classes: list[str]  # classification: the class names, the positive one second of two
    width: int  # embedding dimensions
    measured: np.ndarray = field(repr=False)  # labels (class indices or values), in the embeddings' order
    predicted: np.ndarray = field(repr=False)  # out-of-fold predictions: class probabilities or values
    folds: list[ProbeFold] = field(default_factory=list)

    @property
    def summary(self) -> Summary:
        return Summary.of([fold.metrics for fold in self.folds])


def matched_labels(embedding_ids: Sequence[str], labels: Sequence[tuple[str, str]]) -> list[str]:
    """The label of every embedding, in the embeddings' order. Ids must match one to one: an id
    twice on either side, an embedding without a label or a label without an embedding is an error."""
    for side, ids in (("embeddings", embedding_ids), ("labels", [i for i, _ in labels])):
        seen = set()
        for record_id in ids:
            if record_id in seen:
                raise ValueError(f"id {record_id!r} occurs more than once in the {side}")
            seen.add(record_id)
    by_id = dict(labels)
    unlabeled = [i for i in embedding_ids if i not in by_id]
    unembedded = [i for i in by_id if i not in set(embedding_ids)]
    if unlabeled or unembedded:
        problems = [f"{len(ids)} {what} (first: {ids[0]!r})" for ids, what in (
            (unlabeled, "embedding id(s) have no label"), (unembedded, "label id(s) have no embedding"),
        ) if ids]  # fmt: skip
        raise ValueError(f"the ids of the embeddings and the labels do not match: {'; '.join(problems)}")
    return [by_id[i] for i in embedding_ids]


def _probe_targets(labels: Sequence[str], task: str, positive: str | None):
    """(targets, classes): class indices with the positive class second of two, or numbers."""
    if task == REGRESSION:
        try:
            values = np.array([float(label) for label in labels])
        except ValueError as error:
            raise ValueError(f"a regression probe needs numeric labels: {error}") from None
        if not np.isfinite(values).all():
            raise ValueError("a regression probe needs finite labels; some are inf or NaN")
        return values, []
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"a classification probe needs two or more classes; the labels hold {len(classes)}")
    if positive is not None:
        if len(classes) != 2 or positive not in classes:
            raise ValueError(f"positive class {positive!r} must be one of exactly two classes, not of {', '.join(classes)}")
        classes = [c for c in classes if c != positive] + [positive]
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[label] for label in labels]), classes


def _folds(targets: np.ndarray, task: str, folds: int, seed: int, classes: list[str]):
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2 or folds > len(targets):
        raise ValueError(f"cross-validation needs 2 to {len(targets)} folds for {len(targets)} records, got {folds}")
    if task == REGRESSION:
        return KFold(folds, shuffle=True, random_state=seed).split(targets)
    counts = np.bincount(targets, minlength=len(classes))
    if counts.min() < folds:
        rarest = int(counts.argmin())
        raise ValueError(f"class {classes[rarest]!r} has {counts[rarest]} records, fewer than the {folds} folds; use fewer folds")
    return StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(targets)), targets)


def linear_probe(
    embeddings, labels: Sequence[str], task: str = CLASSIFICATION, folds: int = 5, seed: int = 0,
    positive: str | None = None, progress=None,
) -> ProbeResult:
    """Fit a linear probe (standardised features; logistic regression, or ridge regression for
    `regression`) on `embeddings` (records, width) to `labels` (texts) with k-fold cross-validation
    (stratified for classification, shuffled with `seed`), and measure it on each held-out fold.
    positive: the class scored by binary F1 and AUROC (default: the second of the sorted two)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings for {len(labels)} labels")
    targets, classes = _probe_targets(labels, task, positive)
    splits = list(_folds(targets, task, folds, seed, classes))
    predicted = np.zeros((len(targets), len(classes))) if classes else np.zeros(len(targets))
    result = ProbeResult(task, classes, embeddings.shape[1], targets, predicted)
    for number, (train, test) in enumerate(splits, start=1):
        head = Ridge(alpha=1.0) if task == REGRESSION else LogisticRegression(max_iter=5000)
        probe = make_pipeline(StandardScaler(), head).fit(embeddings[train], targets[train])
        if task == REGRESSION:
            predicted[test] = probe.predict(embeddings[test])
            metrics = regression_metrics(targets[test], predicted[test])
        else:
            predicted[test] = probe.predict_proba(embeddings[test])
            metrics = classification_metrics(targets[test], predicted[test], positive=1)
        result.folds.append(ProbeFold(number, metrics, len(train), len(test)))
        if progress is not None:
            progress(result.folds[-1])
    return result


def plot_metrics(rows: list[dict[str, float]], row_name: str, task: str, path: str | Path, title: str,
                 measured=None, predicted=None) -> None:
    """A strip plot of each metric's value per seed or fold with its mean ± std; for regression,
    beside it the predicted against the measured values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = METRICS[task]
    scatter = task == REGRESSION and measured is not None
    figure, axes = plt.subplots(1, 2 if scatter else 1, figsize=(10 if scatter else 6, 4), squeeze=False)
    strips = axes[0][0]
    for position, name in enumerate(names):
        values = np.array([row[name] for row in rows], dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        strips.scatter(position + jitter, values, s=24, alpha=0.8)
        if len(values) > 1:
            strips.errorbar(position + 0.25, values.mean(), yerr=values.std(ddof=1), fmt="_k", capsize=4)
    strips.set_xticks(range(len(names)), [METRIC_TITLES[name] for name in names])
    strips.set_ylabel(f"value per {row_name} (bar: mean ± std)")
    strips.grid(alpha=0.3, axis="y")
    strips.set_title(title, fontsize=9)
    if scatter:
        points = axes[0][1]
        points.scatter(measured, predicted, s=10, alpha=0.5)
        low, high = float(np.min(measured)), float(np.max(measured))
        points.plot([low, high], [low, high], color="grey", linewidth=1)
        points.set_xlabel("label")
        points.set_ylabel("predicted")
        points.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
