"""`bioxlstm evaluate variants`: the ProteinGym variant-effect benchmark over one or many assays."""

import argparse
import math
import sys
from pathlib import Path

from ...domains import PROTEIN
from ..options import load_model, model_options, positive_int, print_json

# The columns of ProteinGym's reference file (reference_files/DMS_substitutions.csv) that are read.
REFERENCE_ID, REFERENCE_FILE, REFERENCE_SEQUENCE, REFERENCE_MSA = "DMS_id", "DMS_filename", "target_seq", "MSA_filename"
_HEADINGS = {"spearman": "Spearman", "auc": "AUC", "mcc": "MCC", "ndcg": "NDCG", "top_recall": "top10%"}
_PLOT_FORMATS = (".png", ".pdf", ".svg")


def add_parser(evaluations) -> None:
    variants = evaluations.add_parser(
        "variants", parents=[model_options()],
        help="ProteinGym variant-effect benchmark: Spearman, AUC, MCC, NDCG, top-10%% recall per assay",
        description=(
            "Score every variant of deep mutational scanning assays as log p(mutant | homologs) - log p(wild type | "
            "homologs), the homologs read once per assay, and measure the scores against the assay's as ProteinGym "
            "does: Spearman; AUC on DMS_score_bin (or, where an assay has none, on its scores split at their median, "
            "which the output says); MCC against the model's scores split at their median; NDCG of the top 10% of "
            "variants by model score; recall of the top 10% measured variants in the top 10% predicted. Assays: "
            "--assay (repeatable) with --wildtype (once for all, or once per --assay, in order) and optionally "
            "--context (likewise); or ProteinGym's reference table with --reference, --assay-dir and --msa-dir. "
            "Every assay is read and checked before the model loads; a row that cannot be scored stops the run "
            "with one line naming it, unless --skip-invalid, which counts and reports each skipped row."
        ),
    )
    inputs = variants.add_argument_group("assays")
    inputs.add_argument(
        "--assay", action="append", default=[], metavar="DMS.csv",
        help="an assay table (CSV/TSV/Parquet): ProteinGym's DMS layout (mutant, DMS_score, DMS_score_bin, "
        "mutated_sequence) or mutant,score; repeat for several assays",
    )
    inputs.add_argument(
        "--wildtype", action="append", default=[], metavar="WT.fasta", help="the wild type, one record per file"
    )
    inputs.add_argument(
        "--context", action="append", default=[], metavar="MSA", help="homologs in context: A3M, Stockholm or FASTA"
    )
    inputs.add_argument(
        "--reference",
        help="ProteinGym reference table (DMS_id, DMS_filename, target_seq, MSA_filename) instead of --assay",
    )
    inputs.add_argument("--assay-dir", help="with --reference: the folder of the DMS_filename files")
    inputs.add_argument("--msa-dir", help="with --reference: the folder of the MSA_filename files (A2M/A3M), read as context")
    inputs.add_argument("--ids", help="with --reference: only these DMS_id, separated by commas")
    inputs.add_argument("--score-column", help="measured score column (default: DMS_score, else score)")
    inputs.add_argument(
        "--skip-invalid", action="store_true",
        help="leave out rows that cannot be scored (counted and reported per assay) instead of stopping",
    )
    variants.add_argument("--max-context-tokens", type=positive_int, default=None, help="read homologs while the context stays within N tokens")
    variants.add_argument("--batch-size", type=positive_int, default=16, help="variants per forward pass")
    variants.add_argument("--output", help="per-variant scores (.csv, .tsv or .parquet), skipped rows with their reason")
    variants.add_argument("--plot", help="predicted vs measured effects, one panel per assay (.png, .pdf or .svg)")
    variants.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    variants.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ...progress import token_progress
    from ...tasks.variant_benchmark import evaluate_variants, mean_metrics

    assays, contexts = _reference_assays(args) if args.reference else _listed_assays(args)
    _check_outputs(args, [a.path for a in assays] + args.wildtype + [c for c in contexts if isinstance(c, str)])
    where = f"listed in {args.output}" if args.output else "--output would list each row"
    for assay in assays:
        if assay.skipped:
            print(f"{assay.path}: {_skipped_note(assay)}; {where}", file=sys.stderr)
    model, tokenizer = load_model(args)
    with token_progress("scoring variants") as bar:
        results, rows = evaluate_variants(
            model, tokenizer, assays, contexts, args.max_context_tokens, args.batch_size, progress=bar.update
        )
    if args.output:
        from ...io import write_results
        from ...tasks.variant_benchmark import VariantScore

        write_results(rows, args.output, kind=VariantScore)
    if args.plot:
        _plot(results, rows, args.plot)
    means = mean_metrics(results)
    if args.json:
        _print_json(results, means)
    else:
        _print_table(results, means)


def _skipped_note(assay) -> str:
    from collections import Counter

    reasons = ", ".join(f"{count} {kind}" for kind, count in Counter(s.reason for s in assay.skipped).items())
    return f"{len(assay.skipped)} of {assay.rows} variants skipped ({reasons})"


def _prepare(path, wildtype: str, args: argparse.Namespace, name: str | None = None):
    from ...tasks.variant_benchmark import InvalidVariantError, prepare_assay

    try:
        return prepare_assay(path, wildtype, args.score_column, name=name, skip_invalid=args.skip_invalid)
    except InvalidVariantError as error:
        raise InvalidVariantError(f"{error}; nothing was scored (--skip-invalid leaves such rows out)") from error


def _wildtype(path: str) -> str:
    from ...io import InputError, read_records
    from ...tasks.variant_benchmark import check_wildtype_length

    records = list(read_records(path, domain=PROTEIN.name))
    if len(records) != 1:
        raise InputError(f"{path}: expected one wild-type sequence, found {len(records)}")
    check_wildtype_length(records[0].sequence, f"{path}: record {records[0].id!r}")
    return records[0].sequence


def _per_assay(values: list[str], count: int, option: str, optional: bool) -> list[str | None]:
    """One value per assay from an option given once for all, once per assay, or (if optional) not at all."""
    if not values and optional:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        allowed = "none, one" if optional else "one"
        raise ValueError(f"{option} is given {len(values)} times for {count} assays: give {allowed} or one per --assay")
    return values


def _listed_assays(args: argparse.Namespace):
    if not args.assay:
        raise ValueError("evaluate variants needs --assay (with --wildtype) or --reference")
    for option in ("assay_dir", "msa_dir", "ids"):
        if getattr(args, option):
            raise ValueError(f"--{option.replace('_', '-')} goes with --reference, not --assay")
    if not args.wildtype:
        raise ValueError("--assay needs --wildtype: the wild type its mutant codes refer to")
    wildtypes = _per_assay(args.wildtype, len(args.assay), "--wildtype", optional=False)
    contexts = _per_assay(args.context, len(args.assay), "--context", optional=True)
    for path in {c for c in contexts if c is not None}:
        if not Path(path).is_file():
            raise FileNotFoundError(2, "no such file", path)
    stems = [Path(path).stem for path in args.assay]
    names = [stem if stems.count(stem) == 1 else path for stem, path in zip(stems, args.assay)]
    sequences = {path: _wildtype(path) for path in dict.fromkeys(wildtypes)}
    assays = [_prepare(path, sequences[wt], args, name) for path, wt, name in zip(args.assay, wildtypes, names)]
    return assays, contexts


def _reference_assays(args: argparse.Namespace):
    from ...io import InputError, read_records, read_variant_table

    if args.assay or args.wildtype or args.context:
        raise ValueError("--reference names the assays, wild types and MSAs itself: leave out --assay, --wildtype, --context")
    if not args.assay_dir:
        raise ValueError("--reference needs --assay-dir, the folder of its DMS_filename files")
    table = read_variant_table(args.reference)
    wanted = [REFERENCE_ID, REFERENCE_FILE, REFERENCE_SEQUENCE] + ([REFERENCE_MSA] if args.msa_dir else [])
    missing = [column for column in wanted if column not in table.columns]
    if missing:
        raise InputError(f"{args.reference}: no column {missing[0]!r} (a ProteinGym reference table has {', '.join(wanted)})")
    if args.ids:
        ids = [i.strip() for i in args.ids.split(",") if i.strip()]
        unknown = [i for i in ids if i not in set(table[REFERENCE_ID])]
        if unknown:
            raise InputError(f"{args.reference}: no DMS_id {unknown[0]!r}")
        table = table[table[REFERENCE_ID].isin(ids)]
    assays, contexts = [], []
    for _, row in table.iterrows():
        assays.append(_prepare(Path(args.assay_dir) / row[REFERENCE_FILE], row[REFERENCE_SEQUENCE], args, row[REFERENCE_ID]))
        if args.msa_dir:
            # ProteinGym's MSAs are A2M: A3M's letters and gaps, read the same way.
            msa = Path(args.msa_dir) / row[REFERENCE_MSA]
            contexts.append(read_records(msa, format="a3m", domain=PROTEIN.name))
        else:
            contexts.append(None)
    return assays, contexts


def _check_outputs(args: argparse.Namespace, inputs: list[str]) -> None:
    """Refuse, before the model loads, outputs that could not be written or would replace an input."""
    from ...io import TABLE_FORMATS, format_from_path

    if args.output and args.output != "-" and format_from_path(args.output) not in TABLE_FORMATS:
        raise ValueError(f"{args.output}: per-variant scores are a table: .csv, .tsv or .parquet")
    if args.plot and Path(args.plot).suffix.lower() not in _PLOT_FORMATS:
        raise ValueError(f"{args.plot}: a plot is written as {', '.join(_PLOT_FORMATS)}")
    read = {Path(path).resolve() for path in inputs}
    for output in (args.output, args.plot):
        if output and output != "-" and Path(output).resolve() in read:
            raise ValueError(f"{output}: is also an input; write the results to another file")


def _print_json(results, means) -> None:
    from dataclasses import asdict

    print_json({"assays": [asdict(r) for r in results], "mean": means, "assay_count": len(results)})


def _print_table(results, means) -> None:
    width = max([len("mean of 00 assays")] + [len(r.assay) for r in results])
    metric_names = list(_HEADINGS)
    print(f"{'assay':<{width}} {'rows':>7} {'scored':>7} {'skipped':>7} " + " ".join(f"{_HEADINGS[m]:>8}" for m in metric_names))
    for r in results:
        values = " ".join(_cell(getattr(r, m)) for m in metric_names)
        print(f"{r.assay:<{width}} {r.rows:>7} {r.scored:>7} {r.skipped:>7} {values}")
    if len(results) > 1:
        label = f"mean of {len(results)} assays"
        print(f"{label:<{width}} {'':>7} {'':>7} {'':>7} " + " ".join(_cell(means[m]) for m in metric_names))
    for r in results:
        notes = [] if r.binary_label == "DMS_score_bin" else [f"AUC and MCC against a {r.binary_label} (no DMS_score_bin)"]
        notes += [f"skipped {count}: {kind}" for kind, count in r.skipped_reasons.items()]
        for note in notes:
            print(f"{r.assay}: {note}")


def _cell(value: float) -> str:
    return f"{'n/a':>8}" if math.isnan(value) else f"{value:>8.4f}"


def _plot(results, rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io import atomic_output

    columns = min(len(results), 4)
    lines = math.ceil(len(results) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3.6 * lines), squeeze=False)
    by_assay = {result.assay: [] for result in results}
    for row in rows:
        if row.predicted is not None:
            by_assay[row.assay].append(row)
    for axis, result in zip(axes.flat, results):
        scored = by_assay[result.assay]
        axis.scatter([row.measured for row in scored], [row.predicted for row in scored], s=8, alpha=0.6)
        axis.set_title(f"{result.assay}\nSpearman {_cell(result.spearman).strip()}, n = {result.scored}", fontsize=9)
        axis.set_xlabel("measured effect")
        axis.set_ylabel("predicted (log-likelihood ratio)")
    for axis in list(axes.flat)[len(results) :]:
        axis.set_visible(False)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format=Path(path).suffix.lstrip(".").lower())
    plt.close(figure)
