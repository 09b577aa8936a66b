"""`bioxlstm score`: log-likelihood and perplexity of sequences, alone or after homologs, and variant effects."""

import argparse

from ..domains import PROTEIN, allows
from .options import input_options, input_records, load_model, model_options, positive_int


def add_parser(commands) -> None:
    score = commands.add_parser(
        "score", parents=[model_options(), input_options(input_required=False)],
        help="log-likelihood and perplexity of sequences, or variant effects",
        description=(
            "Score every sequence of --input by its log-likelihood (natural log, including its end) and perplexity, "
            "optionally after homologs (--context). With --wildtype and --mutants, score variant effects instead: "
            "log p(mutant | context) - log p(wild type | context) per mutant. A mutant that does not match the wild "
            "type stops the run before anything is scored, with one line naming its row."
        ),
    )
    variants = score.add_argument_group("variant effects and homolog context (protein models)")
    variants.add_argument("--wildtype", help="sequence file holding the one wild-type sequence (FASTA, ...)")
    variants.add_argument("--mutants", help="CSV or TSV with one mutant per row: codes like A24C:D30E (1-based) or full sequences")
    variants.add_argument("--mutant-column", default="mutant", help="the column of --mutants holding them (default: mutant)")
    variants.add_argument("--context", help="homologs read before every scored sequence: A3M, Stockholm or FASTA (.gz ok)")
    variants.add_argument("--max-context-tokens", type=positive_int, default=None, help="read homologs while the context stays within N tokens")
    variants.add_argument(
        "--no-reuse-context-state", action="store_true",
        help="read the context again for every sequence instead of copying its state (same scores, slower; for checking)",
    )
    score.add_argument("--output", default="-", help="table: .csv, .tsv, .parquet or .jsonl; - for stdout (default)")
    score.add_argument("--json", action="store_true", help="write JSON lines (one object per row) instead of a table")
    score.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..io import InputError, write_results
    from ..progress import token_progress
    from ..tasks import SequenceScore, score_records
    from ..tasks.likelihood import MoleculeScore, UnknownTokenError

    _check_output(args)
    if args.wildtype or args.mutants:
        _variant_scoring(args)
        return
    if args.input is None:
        raise ValueError("score needs --input (sequences to score) or --wildtype and --mutants (variant effects)")
    if args.context:
        _context_scoring(args)
        return
    model, tokenizer = load_model(args)
    if args.rc_invariant and not allows(model.config.domain, "has_strands"):
        raise ValueError(f"--rc-invariant needs a DNA model; this one is for {model.config.domain}")
    with token_progress("scoring") as bar:
        try:
            scores = list(score_records(
                model, tokenizer, input_records(args, model), rc_invariant=args.rc_invariant,
                window=args.window, batch_size=args.batch_size, progress=bar.update,
            ))  # fmt: skip
        except UnknownTokenError as error:
            raise InputError(f"{args.input}: {error}") from error
    kind = MoleculeScore if allows(model.config.domain, "molecule_sets") else SequenceScore
    write_results(scores, args.output, format=_table_format(args), kind=kind)


def _check_output(args: argparse.Namespace) -> None:
    """Refuse an --output that cannot hold a table of scores before anything is scored."""
    from ..io import RESULT_TABLE_FORMATS, STANDARD_STREAM, format_from_path, require_writable_file

    if args.output == STANDARD_STREAM:
        return
    require_writable_file(args.output)
    if args.json:
        return
    try:
        format = format_from_path(args.output)
    except ValueError:
        format = None
    if format not in RESULT_TABLE_FORMATS:
        formats = ", ".join(f".{name}" for name in RESULT_TABLE_FORMATS)
        raise ValueError(f"--output {args.output}: scores are a table; name the file {formats} (or give --json)")


def _table_format(args: argparse.Namespace) -> str | None:
    """The output format: JSON lines with --json (to --output or stdout), else by --output's extension."""
    return "jsonl" if args.json else None


def _context_scoring(args: argparse.Namespace) -> None:
    from ..io import write_results
    from ..progress import token_progress
    from ..tasks.likelihood import SequenceScore, perplexity
    from ..tasks.protein import load_context, sequence_log_likelihoods

    model, tokenizer = load_model(args)
    records = list(input_records(args, model))
    context = load_context(args.context, max_tokens=args.max_context_tokens)
    with token_progress("scoring") as bar:
        log_likelihoods = sequence_log_likelihoods(
            model, tokenizer, [r.sequence for r in records], context,
            reuse_context_state=not args.no_reuse_context_state, batch_size=args.batch_size, progress=bar.update,
        )
    scores = [
        SequenceScore(r.id, len(r.sequence), value, perplexity(value, len(r.sequence) + 1))
        for r, value in zip(records, log_likelihoods)
    ]
    write_results(scores, args.output, format=_table_format(args), kind=SequenceScore)


def _variant_scoring(args: argparse.Namespace) -> None:
    from ..io import InputError, read_records, read_variant_table, write_table
    from ..progress import token_progress
    from ..tasks.protein import apply_mutant, score_variants
    from ..tasks.variant_benchmark import check_wildtype_length

    if not (args.wildtype and args.mutants):
        raise ValueError("variant-effect scoring needs both --wildtype and --mutants")
    wildtypes = list(read_records(args.wildtype, domain=PROTEIN.name))
    if len(wildtypes) != 1:
        raise InputError(f"{args.wildtype}: expected one wild-type sequence, found {len(wildtypes)}")
    wildtype = wildtypes[0].sequence
    check_wildtype_length(wildtype, f"{args.wildtype}: record {wildtypes[0].id!r}")
    table = read_variant_table(args.mutants)
    if args.mutant_column not in table.columns:
        raise InputError(
            f"{args.mutants}: no column {args.mutant_column!r} (available: {', '.join(map(str, table.columns))})"
        )
    if table.empty:
        raise InputError(f"{args.mutants}: no mutants (a header and no rows)")
    problems = []
    for line, code in table[args.mutant_column].items():
        try:
            apply_mutant(wildtype, code)
        except ValueError as problem:
            problems.append(f"line {line}: {problem}")
    if problems:
        more = f" ({len(problems) - 1} more rows do not match the wild type)" if len(problems) > 1 else ""
        raise InputError(f"{args.mutants}: {problems[0]}{more}; nothing was scored")
    model, tokenizer = load_model(args)
    with token_progress("scoring") as bar:
        table["score"] = score_variants(
            model, tokenizer, wildtype, list(table[args.mutant_column]), context=args.context,
            reuse_context_state=not args.no_reuse_context_state, max_context_tokens=args.max_context_tokens,
            batch_size=args.batch_size, progress=bar.update,
        )
    write_table(table, args.output, _table_format(args))
