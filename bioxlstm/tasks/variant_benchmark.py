"""The ProteinGym variant-effect benchmark: how well a model's variant scores rank measured effects.

Metrics follow ProteinGym's zero-shot substitution benchmark (`performance_DMS_benchmarks.py`):
Spearman between measured and predicted effects; AUC of the predicted scores against the binary
label; MCC of that label against the predicted scores split at their median (at or above it: 1);
NDCG over the top 10% of variants by predicted score, with min-max normalised measured scores as
gains; and recall of the top 10% of measured variants within the top 10% of predicted ones (both
cut at the 90th percentile, linear interpolation, so ties can let more than 10% in). Higher is
better throughout, for measurements and predictions alike.

Where ProteinGym's definitions leave a value undefined (one class only, constant scores, fewer
than ten variants for NDCG) the value is NaN rather than an arbitrary number; ties in predicted
scores are ranked in the order of the input.

An assay is read and checked without a model (`prepare_assay`), so a whole benchmark's inputs can
be checked before any scoring starts; `score_assay` then scores it with the state-reuse scorer.
"""

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..io import InputError, read_variant_table
from .protein import ContextSource, MutantError, apply_mutant, score_variants

TOP_PERCENT = 10
SCORE_COLUMNS = ("DMS_score", "score")  # tried in order when no score column is named
BINARY_COLUMN = "DMS_score_bin"
MUTANT_COLUMN, SEQUENCE_COLUMN = "mutant", "mutated_sequence"
METRICS = ("spearman", "auc", "mcc", "ndcg", "top_recall")
# Every variant is scored as a whole sequence, so memory grows with the wild type's length times the
# batch; the longest known protein (titin) has about 35,000 residues, and a far longer "wild type"
# is a genome or a concatenation that would only exhaust memory after minutes, without a word.
MAX_WILDTYPE_RESIDUES = 100_000



# --- metrics over arrays ---------------------------------------------------------------------------


def _pair(measured, predicted) -> tuple[np.ndarray, np.ndarray]:
    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    if measured.shape != predicted.shape or measured.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of one length, got shapes {measured.shape} and {predicted.shape}")
    return measured, predicted


def spearman(measured, predicted) -> float:
    """Spearman's rank correlation; NaN when either side is constant or there are under 2 values."""
    measured, predicted = _pair(measured, predicted)
    if len(measured) < 2 or np.ptp(measured) == 0 or np.ptp(predicted) == 0:
        return math.nan
    from scipy import stats  # here, not at the top: `import bioxlstm` reaches this module and need not load SciPy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(measured, predicted).statistic)


def auc(binary, predicted) -> float:
    """Area under the ROC curve of `predicted` for the 0/1 labels `binary`: the chance that a
    random positive outscores a random negative, ties counting one half (the Mann-Whitney U
    statistic over both class sizes). NaN when only one class is present."""
    labels, predicted = _pair(binary, predicted)
    positives = labels == 1
    n_positive, n_negative = int(positives.sum()), int((~positives).sum())
    if n_positive == 0 or n_negative == 0:
        return math.nan
    from scipy import stats

    ranks = stats.rankdata(predicted)  # tied scores share their mean rank, which is the one-half rule
    u = ranks[positives].sum() - n_positive * (n_positive + 1) / 2
    return float(u / (n_positive * n_negative))


def median_split(values) -> np.ndarray:
    """1 where a value is at or above the median, else 0: ProteinGym's binarisation of model
    scores for MCC, used here also for measured scores when an assay has no binary label."""
    values = np.asarray(values, dtype=float)
    return (values >= np.median(values)).astype(int)


def mcc(binary, predicted) -> float:
    """Matthews correlation between the 0/1 labels and the predicted scores split at their median.
    0 when a row or column of the confusion matrix is empty (as scikit-learn and ProteinGym)."""
    labels, predicted = _pair(binary, predicted)
    truth, guess = labels == 1, median_split(predicted) == 1
    tp, tn = float(np.sum(truth & guess)), float(np.sum(~truth & ~guess))
    fp, fn = float(np.sum(~truth & guess)), float(np.sum(truth & ~guess))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def ndcg(measured, predicted, top_percent: int = TOP_PERCENT) -> float:
    """Normalised discounted cumulative gain of the `top_percent`% best-predicted variants
    (k = floor(n * top_percent / 100)): gains are the measured scores min-max normalised to [0, 1],
    the variant ranked r-th by prediction is discounted by 1/log2(r + 1), and the sum is divided by
    that of the ideal order (the k best-measured variants). NaN when k is 0 or all measurements are
    equal (there is then nothing to rank)."""
    measured, predicted = _pair(measured, predicted)
    k = len(measured) * top_percent // 100
    spread = np.ptp(measured) if len(measured) else 0.0
    if k == 0 or spread == 0:
        return math.nan
    gains = (measured - measured.min()) / spread
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    by_prediction = np.argsort(-predicted, kind="stable")[:k]
    ideal = np.sort(gains)[::-1][:k]
    return float(np.sum(gains[by_prediction] * discounts) / np.sum(ideal * discounts))


def top_recall(measured, predicted, top_percent: int = TOP_PERCENT) -> float:
    """Of the variants at or above the measured scores' (100 - top_percent)th percentile, the
    fraction also at or above that percentile of the predicted scores."""
    measured, predicted = _pair(measured, predicted)
    if len(measured) == 0:
        return math.nan
    quantile = (100 - top_percent) / 100
    best_measured = measured >= np.quantile(measured, quantile)
    best_predicted = predicted >= np.quantile(predicted, quantile)
    return float(np.sum(best_measured & best_predicted) / np.sum(best_measured))


def variant_metrics(measured, predicted, binary) -> dict[str, float]:
    """All of METRICS for one assay; `binary` is its 0/1 label (see `median_split` where none is given)."""
    return {
        "spearman": spearman(measured, predicted),
        "auc": auc(binary, predicted),
        "mcc": mcc(binary, predicted),
        "ndcg": ndcg(measured, predicted),
        "top_recall": top_recall(measured, predicted),
    }


# --- assays ----------------------------------------------------------------------------------------

# Why a row of an assay cannot be scored; the kinds are counted per assay.
NO_MUTANT = "no mutant code"
NO_SCORE = "no measured score"
BAD_SCORE = "measured score is not a number"
BAD_BINARY = f"{BINARY_COLUMN} is not 0 or 1"
SEQUENCE_DISAGREES = f"{SEQUENCE_COLUMN} disagrees with the mutant code"


class InvalidVariantError(InputError):
    """A row of an assay cannot be scored; one line naming the file, its line and what is wrong."""


@dataclass
class Variant:
    line: int  # in the assay file, the header being line 1
    mutant: str
    measured: float
    binary: int | None  # the assay's own label, None until a median split gives one


@dataclass
class SkippedVariant:
    line: int
    mutant: str
    reason: str  # one of the kinds above
    detail: str  # the whole explanation, naming the position where one is at fault


@dataclass
class PreparedAssay:
    """An assay read and checked against its wild type, ready to be scored."""

    name: str
    path: str
    wildtype: str
    score_column: str
    binary_label: str  # BINARY_COLUMN, or how the label was made when the assay has none
    variants: list[Variant]
    skipped: list[SkippedVariant]

    @property
    def rows(self) -> int:
        return len(self.variants) + len(self.skipped)


@dataclass
class VariantScore:
    """One row of an assay with the model's prediction (None for a skipped row, with the reason)."""

    assay: str
    line: int
    mutant: str
    measured: float | None = field(metadata={"format": lambda value: _blank_or(value, "g")})
    measured_binary: int | None = field(metadata={"format": lambda value: _blank_or(value, "d")})
    predicted: float | None = field(metadata={"format": lambda value: _blank_or(value, ".6f")})
    skipped: str = ""  # why the row was not scored


def _blank_or(value, spec: str) -> str:
    # A skipped row has no numbers; a blank cell says so where NaN would read as a computed value.
    return "" if value is None else format(value, spec)


@dataclass
class AssayResult:
    assay: str
    path: str
    rows: int
    scored: int
    skipped: int
    binary_label: str
    spearman: float
    auc: float
    mcc: float
    ndcg: float
    top_recall: float
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in METRICS}


def check_wildtype_length(wildtype: str, where: str) -> None:
    """InputError for a wild type longer than MAX_WILDTYPE_RESIDUES; `where` names its source."""
    if len(wildtype) > MAX_WILDTYPE_RESIDUES:
        raise InputError(
            f"{where}: the wild type has {len(wildtype):,} residues; variants are scored as whole sequences of "
            f"at most {MAX_WILDTYPE_RESIDUES:,} residues (the longest known protein has about 35,000)"
        )


def _duplicate_variants(path: Path, variants: list[Variant], by_code: bool) -> None:
    """InputError naming the lines of the first variant measured twice: its two scores would count as
    two variants, and a ranking metric cannot tell which measurement the model should match."""
    seen = {}
    for variant in variants:
        # A1C:D2E and D2E:A1C are one variant; full sequences are compared as written.
        key = ":".join(sorted(part.strip() for part in variant.mutant.split(":"))) if by_code else variant.mutant.strip().upper()
        first = seen.setdefault(key, variant)
        if first is not variant:
            raise InputError(
                f"{path}: lines {first.line} and {variant.line} hold the same mutant {variant.mutant!r} "
                f"(measured {first.measured:g} and {variant.measured:g}); keep one row per variant"
            )


def _choose_column(table, path: Path, wanted: str | None, candidates: Sequence[str], what: str) -> str:
    names = [wanted] if wanted else list(candidates)
    for name in names:
        if name in table.columns:
            return name
    looked_for = " or ".join(repr(name) for name in names)
    available = ", ".join(map(str, table.columns)) or "none"
    raise InputError(f"{path}: no {what} column {looked_for} (available: {available})")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_mutant(wildtype: str, code: str, sequence: str) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with a mutant code (and its mutated sequence, when the
    assay gives one), or None when it can be scored."""
    try:
        mutated = apply_mutant(wildtype, code)
    except MutantError as problem:
        return problem.kind, str(problem)
    if sequence and sequence.upper() != mutated:
        differs = next((i for i, (a, b) in enumerate(zip(sequence.upper(), mutated)) if a != b), len(mutated))
        return SEQUENCE_DISAGREES, f"mutant {code!r}: {SEQUENCE_COLUMN} differs from it at position {differs + 1}"
    return None


def _check_row(line: int, wildtype: str, code: str, score: str, binary: str | None, sequence: str):
    """The Variant of one row of an assay, or a SkippedVariant saying why it cannot be scored."""

    def skipped(kind: str, detail: str) -> SkippedVariant:
        return SkippedVariant(line, code, kind, detail)

    if not code.strip():
        return skipped(NO_MUTANT, "no mutant code")
    if not score.strip():
        return skipped(NO_SCORE, f"mutant {code!r}: no measured score")
    measured = _number(score)
    if measured is None:
        return skipped(BAD_SCORE, f"mutant {code!r}: measured score {score!r} is not a number")
    label = None if binary is None else _number(binary)
    if binary is not None and label not in (0.0, 1.0):
        return skipped(BAD_BINARY, f"mutant {code!r}: {BINARY_COLUMN} {binary!r} is not 0 or 1")
    problem = _check_mutant(wildtype, code, sequence)
    if problem is not None:
        return skipped(*problem)
    return Variant(line, code, measured, None if label is None else int(label))


def prepare_assay(
    path: str | Path,
    wildtype: str,
    score_column: str | None = None,
    name: str | None = None,
    skip_invalid: bool = False,
) -> PreparedAssay:
    """Read an assay table and check every row against `wildtype`, without a model.

    The table (see `bioxlstm.io.read_variant_table`) holds ProteinGym's columns: `mutant` (codes
    like A24C, several joined by `:`; or, without it, `mutated_sequence` as full sequences), the
    measured score (`score_column`; by default the first of SCORE_COLUMNS present), optionally
    `DMS_score_bin` (0/1; without it the measured scores are split at their median) and
    `mutated_sequence`, which must agree with the mutant code. A row that cannot be scored raises
    InvalidVariantError naming the file, the first such row's line and position and how many more
    there are, or with `skip_invalid` is set aside as a SkippedVariant with its reason. An assay without rows, or none that can be scored,
    raises InputError."""
    path = Path(path)
    table = read_variant_table(path)
    mutant_column = _choose_column(table, path, None, (MUTANT_COLUMN, SEQUENCE_COLUMN), "mutant")
    score_column = _choose_column(table, path, score_column, SCORE_COLUMNS, "score")
    if table.empty:
        raise InputError(f"{path}: no variants (a header and no rows)")
    wildtype = wildtype.strip().upper()
    check_wildtype_length(wildtype, str(path))
    binaries = table[BINARY_COLUMN] if BINARY_COLUMN in table.columns else [None] * len(table)
    checks_sequence = mutant_column == MUTANT_COLUMN and SEQUENCE_COLUMN in table.columns
    sequences = table[SEQUENCE_COLUMN] if checks_sequence else [""] * len(table)
    variants, skipped = [], []
    rows = zip(table.index, table[mutant_column], table[score_column], binaries, sequences)
    for line, code, score, binary, sequence in rows:
        row = _check_row(line, wildtype, code, score, binary, sequence)
        (variants if isinstance(row, Variant) else skipped).append(row)
    if skipped and not skip_invalid:
        more = f" ({len(skipped) - 1} more rows cannot be scored)" if len(skipped) > 1 else ""
        raise InvalidVariantError(f"{path}: line {skipped[0].line}: {skipped[0].detail}{more}")
    _duplicate_variants(path, variants, by_code=mutant_column == MUTANT_COLUMN)
    if not variants:
        reasons = ", ".join(f"{count} {kind}" for kind, count in Counter(s.reason for s in skipped).items())
        raise InputError(f"{path}: none of its {len(skipped)} variants can be scored ({reasons})")
    binary_label = BINARY_COLUMN
    if BINARY_COLUMN not in table.columns:
        binary_label = f"median split of {score_column}"
        for variant, label in zip(variants, median_split([v.measured for v in variants])):
            variant.binary = int(label)
    return PreparedAssay(name or path.stem, str(path), wildtype, score_column, binary_label, variants, skipped)


def score_assay(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    assay: PreparedAssay,
    context: ContextSource = None,
    max_context_tokens: int | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[AssayResult, list[VariantScore]]:
    """Score the variants of a prepared assay (log p(mutant | context) - log p(wild type | context),
    the homolog context read once) and measure the scores against the assay's; returns the assay's
    metrics and one VariantScore per row, skipped rows included, in file order. progress: told the
    number of tokens scored after every batch."""
    predicted = score_variants(
        model, tokenizer, assay.wildtype, [v.mutant for v in assay.variants], context=context,
        max_context_tokens=max_context_tokens, batch_size=batch_size, progress=progress,
    )  # fmt: skip
    measured = [v.measured for v in assay.variants]
    metrics = variant_metrics(measured, predicted, [v.binary for v in assay.variants])
    result = AssayResult(
        assay=assay.name, path=assay.path, rows=assay.rows, scored=len(assay.variants), skipped=len(assay.skipped),
        binary_label=assay.binary_label, skipped_reasons=dict(Counter(s.reason for s in assay.skipped)), **metrics,
    )  # fmt: skip
    rows = [VariantScore(assay.name, v.line, v.mutant, v.measured, v.binary, p) for v, p in zip(assay.variants, predicted)]
    rows += [VariantScore(assay.name, s.line, s.mutant, None, None, None, s.detail) for s in assay.skipped]
    return result, sorted(rows, key=lambda row: row.line)


def evaluate_variants(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    assays: Sequence[PreparedAssay],
    contexts: Sequence[ContextSource] | None = None,
    max_context_tokens: int | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[AssayResult], list[VariantScore]]:
    """Score several prepared assays, each with its own context (`contexts`, in order; None: no
    homologs); `progress` is told the number of tokens scored after every batch."""
    contexts = [None] * len(assays) if contexts is None else list(contexts)
    if len(contexts) != len(assays):
        raise ValueError(f"{len(assays)} assays but {len(contexts)} contexts")
    results, rows = [], []
    for assay, context in zip(assays, contexts):
        result, scores = score_assay(model, tokenizer, assay, context, max_context_tokens, batch_size, progress)
        results.append(result)
        rows += scores
    return results, rows


def mean_metrics(results: Sequence[AssayResult]) -> dict[str, float]:
    """Each metric averaged over the assays where it is defined (NaN where it is defined for none).
    A plain mean over assays: ProteinGym's summary first averages assays per protein and function."""
    means = {}
    for name in METRICS:
        values = [value for value in (getattr(r, name) for r in results) if not math.isnan(value)]
        means[name] = float(np.mean(values)) if values else math.nan
    return means
