"""`bioxlstm evaluate finetune`: a labeled-data recipe fine-tuned over seeds, measured on its test split."""

import argparse
import sys
from pathlib import Path

from ..options import png_path, positive_int, print_json


def add_parser(evaluations) -> None:
    finetune = evaluations.add_parser(
        "finetune", help="fine-tune a labeled-data recipe once per seed; mean ± std of its test metrics",
        description=(
            "The Genomic Benchmarks / Nucleotide Transformer protocol: run RECIPE (objective sequence-classification, "
            "sequence-regression or token-classification) once per seed 0..N-1 (the seed draws the new head's weights "
            "and the order of the training examples; the split, drawn with data.seed, stays the same) and measure "
            "each run on the held-out test split. Classification: accuracy, MCC, F1, AUROC (two classes: F1 and AUROC "
            "of the positive class, the second of data.classes; more classes: macro averages and the multi-class "
            "MCC; token classification counts each labeled residue). Regression: Spearman, Pearson, R². Reports every "
            "seed and the mean ± sample standard deviation. No checkpoints are written."
        ),
    )
    finetune.add_argument("recipe", type=Path, help="a labeled-data recipe, e.g. recipes/protein-classify-tiny.yaml")
    finetune.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE",
        help="change the recipe, e.g. training.max_steps=20 init_from=path/to/model",
    )
    finetune.add_argument("--seeds", type=positive_int, default=5, help="how many seeds (0, 1, ...)")
    finetune.add_argument("--output-dir", type=Path, help="keep each run's log.csv and loss curve in OUTPUT_DIR/seed-N")
    finetune.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    finetune.add_argument("--plot", type=png_path, help="PNG: the metrics per seed (and, for regression, predicted vs measured)")
    finetune.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import contextlib

    from ...progress import progress
    from ...tasks.downstream import METRICS, plot_metrics
    from ...training import finetune_over_seeds, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    # One bar over the seeds; the trainer's own bars would interleave with it.
    recipe.training.setdefault("disable_tqdm", True)
    # The Trainer prints its logs to standard output, which carries only the table or the JSON.
    with progress(total=args.seeds, desc="seeds", unit="run") as bar, \
            contextlib.redirect_stdout(sys.stderr):
        result = finetune_over_seeds(recipe, range(args.seeds), args.output_dir, progress=lambda _: bar.update())
    rows = [{"seed": r.seed, **r.metrics.values, "steps": r.steps, "seconds": r.seconds} for r in result.runs]
    summary = result.summary
    if args.plot is not None:
        plot_metrics(rows, "seed", result.task, args.plot, f"{recipe.name}: {len(rows)} seeds, test n={result.test_size}",
                     measured=result.measured, predicted=result.runs[-1].predicted)  # fmt: skip
    if args.json:
        print_json({
            "recipe": recipe.name, "objective": result.objective, "task": result.task, "classes": result.classes,
            "test_sequences": result.test_size, "test_examples": result.runs[0].metrics.count,
            "averaging": result.runs[0].metrics.averaging,
            "runs": [{**row, **result.runs[i].metrics.as_dict()} for i, row in enumerate(rows)],
            "mean": summary.mean, "std": summary.std,
        })  # fmt: skip
        return
    print_table(rows, "seed", METRICS[result.task], summary)
    first = result.runs[0].metrics
    notes = [f"{recipe.name} ({result.objective}), test split: {result.test_size} sequences, {first.count} examples"]
    if result.classes:
        notes.append(f"classes: {', '.join(result.classes)}; {positive_note(result.classes, first.averaging)}")
    print("\n".join(notes))


def positive_note(classes: list[str], averaging: str) -> str:
    return f"binary: F1 and AUROC of the positive class, {classes[1]}" if len(classes) == 2 else averaging


def print_table(rows: list[dict], key: str, names: tuple[str, ...], summary) -> None:
    """One line per seed or fold, then mean ± std."""
    from ...tasks.downstream import METRIC_TITLES

    def number(value: float) -> str:
        return "n/a" if value != value else f"{value:.3f}"

    print(f"{key:<12}" + "".join(f"{METRIC_TITLES[name]:>16}" for name in names))
    for row in rows:
        print(f"{row[key]!s:<12}" + "".join(f"{number(row[name]):>16}" for name in names))
    print(f"{'mean ± std':<12}" + "".join(
        f"{number(summary.mean[name]) + ' ± ' + number(summary.std[name]):>16}" for name in names
    ))  # fmt: skip
