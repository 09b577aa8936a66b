"""`bioxlstm evaluate probe`: a linear probe on frozen embeddings, k-fold cross-validated."""

import argparse
from pathlib import Path

from ..options import png_path, positive_int, print_json
from .finetune import positive_note, print_table


def add_parser(evaluations) -> None:
    probe = evaluations.add_parser(
        "probe", help="linear probe on frozen embeddings (from `bioxlstm embed`), k-fold cross-validated",
        description=(
            "Fit a linear probe (scikit-learn: features standardised, then logistic regression, or ridge regression "
            "for --task regression) on the embeddings of `bioxlstm embed --output E.parquet` against the labels of "
            "--labels, with k-fold cross-validation (stratified by class for classification, shuffled with --seed), "
            "and report each fold's held-out metrics and their mean ± sample standard deviation: accuracy, MCC, F1, "
            "AUROC (two classes: F1 and AUROC of the positive class; more: macro averages and the multi-class MCC) "
            "or Spearman, Pearson, R². The ids of the embeddings and the labels must match one to one."
        ),
    )
    probe.add_argument("--embeddings", required=True, type=Path, help="Parquet file written by `bioxlstm embed` (pooled)")
    probe.add_argument(
        "--labels", required=True, type=Path,
        help="CSV/TSV/Parquet with an id column and a label column (or FASTA with label=VALUE in the headers)",
    )
    probe.add_argument("--task", choices=["classification", "regression"], default="classification")
    probe.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds")
    probe.add_argument("--seed", type=int, default=0, help="shuffles the records into folds")
    probe.add_argument("--id-column", default="id", help="the labels' id column (default id)")
    probe.add_argument("--label-column", default="label", help="the labels' label column (default label)")
    probe.add_argument("--positive", help="classification with two classes: the positive class (default: the second, sorted)")
    probe.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    probe.add_argument("--plot", type=png_path, help="PNG: the metrics per fold (and, for regression, predicted vs measured)")
    probe.set_defaults(run=run)


def _require_numbers(labels: list[tuple[str, str]], args: argparse.Namespace) -> None:
    """A regression probe's labels are finite numbers; the first that is not is named with its row."""
    import math

    for row, (record_id, label) in enumerate(labels, start=1):
        try:
            value = float(label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(
                f"{args.labels}: row {row}: record {record_id!r}: label {label!r} in {args.label_column!r} is not a "
                "finite number, which --task regression needs"
            )


def run(args: argparse.Namespace) -> None:
    from ...io import read_embeddings, read_labels
    from ...progress import progress
    from ...tasks.downstream import METRICS, linear_probe, matched_labels, plot_metrics

    ids, embeddings = read_embeddings(args.embeddings)
    labels = read_labels(args.labels, label_column=args.label_column, id_column=args.id_column)
    if args.task == "regression":
        _require_numbers(labels, args)
    try:
        matched = matched_labels(ids, labels)
    except ValueError as error:
        raise ValueError(f"{args.embeddings} and {args.labels}: {error}") from None
    with progress(total=args.folds, desc="folds", unit="fold") as bar:
        result = linear_probe(
            embeddings, matched, args.task, folds=args.folds, seed=args.seed, positive=args.positive,
            progress=lambda _: bar.update(),
        )  # fmt: skip
    rows = [{"fold": f.fold, **f.metrics.values, "train": f.train_size, "test": f.test_size} for f in result.folds]
    summary = result.summary
    if args.plot is not None:
        predicted = result.predicted if args.task == "regression" else None
        plot_metrics(rows, "fold", args.task, args.plot, f"linear probe on {args.embeddings.name}: {args.folds} folds, n={len(ids)}",
                     measured=result.measured if predicted is not None else None, predicted=predicted)  # fmt: skip
    averaging = result.folds[0].metrics.averaging
    if args.json:
        print_json({
            "embeddings": str(args.embeddings), "labels": str(args.labels), "task": args.task, "records": len(ids),
            "width": result.width, "classes": result.classes, "averaging": averaging,
            "folds": [{**row, **fold.metrics.as_dict()} for row, fold in zip(rows, result.folds)],
            "mean": summary.mean, "std": summary.std,
        })  # fmt: skip
        return
    print_table(rows, "fold", METRICS[args.task], summary)
    note = f"{len(ids)} records, {result.width}-dimensional embeddings, {args.folds}-fold cross-validation"
    if result.classes:
        note += f"\nclasses: {', '.join(result.classes)}; {positive_note(result.classes, averaging)}"
    print(note)
