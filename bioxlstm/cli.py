"""The `bioxlstm` command line: a thin parser over the package's functions."""

import argparse
import os
import sys
from pathlib import Path

from . import __version__

# Mistakes a user can make; they are reported in one line, without a traceback (unless --debug).
USER_ERRORS = (ValueError, OSError)


def _input_options(input_required: bool) -> argparse.ArgumentParser:
    input_options = argparse.ArgumentParser(add_help=False)
    input_options.add_argument("--input", required=input_required, help="sequence file (FASTA, FASTQ, GenBank, A3M, SMILES, CSV, ...; .gz ok) or - for stdin")
    input_options.add_argument("--format", help="input format when the extension does not say it (required for stdin)")
    input_options.add_argument("--column", default="sequence", help="sequence column of a CSV/TSV/Parquet input")
    input_options.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    input_options.add_argument(
        "--window", type=int, default=4096,
        help="tokens per forward pass for long sequences; the recurrent state is carried between windows",
    )
    input_options.add_argument(
        "--rc-invariant", action="store_true",
        help="DNA: average over both strands, so a sequence and its reverse complement get the same result",
    )
    return input_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioxlstm",
        description="xLSTM language models for DNA, proteins and small molecules.",
    )
    parser.add_argument("--version", action="version", version=f"bioxlstm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument(
        "--model", required=True, help="a saved model directory (or a bundled default: dna, protein, chem)"
    )
    model_options.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    input_options = _input_options(input_required=True)

    generate = commands.add_parser(
        "generate", parents=[model_options], help="sample new sequences",
        description="Sample new sequences from a causal model, each with the model's log-likelihood of it.",
    )
    generate.add_argument("--prompt", default="", help="start of every sequence (default: empty)")
    generate.add_argument("-n", type=int, default=10, help="number of sequences")
    generate.add_argument("--max-new-tokens", type=int, default=256, help="longest continuation")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    generate.add_argument("--top-p", type=float, default=None, help="sample within this probability mass")
    generate.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    generate.add_argument("--batch-size", type=int, default=16, help="sequences sampled at once")
    generate.add_argument(
        "--output", default="-",
        help="FASTA for DNA and proteins; .smi or .csv for molecules; - for stdout (default)",
    )
    family = generate.add_argument_group(
        "family generation (protein models)",
        "with --context, sample new members of the family whose homologs the model reads first; each "
        "FASTA record's description gives its log-likelihood, perplexity and identity to the context",
    )
    family.add_argument("--context", help="homologs: A3M, Stockholm or FASTA (.gz ok), the query first")
    family.add_argument("--context-sequences", type=int, default=None, help="read only the first N homologs")
    family.add_argument("--max-context-tokens", type=int, default=None, help="read homologs while the context stays within N tokens")
    generate.set_defaults(run=run_generate)

    embed = commands.add_parser(
        "embed", parents=[model_options, input_options], help="embed sequences as vectors",
        description=(
            "Embed every sequence of a file. Long sequences are processed window by window with the "
            "recurrent state carried, so a whole genome embeds in the memory of one window."
        ),
    )
    embed.add_argument("--output", required=True, help="out.parquet (columns id, embedding) or out.npy (ids in out.ids.txt)")
    embed.add_argument("--pooling", default="mean", choices=["mean", "max", "last", "cls", "none"],
                       help="how token vectors become one vector; none keeps one per token (Parquet only)")
    embed.add_argument("--layer", type=int, default=-1, help="hidden-state index: 0 token embeddings, -1 final output")
    embed.set_defaults(run=run_embed)

    score = commands.add_parser(
        "score", parents=[model_options, _input_options(input_required=False)],
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
    variants.add_argument("--max-context-tokens", type=int, default=None, help="read homologs while the context stays within N tokens")
    variants.add_argument(
        "--no-reuse-context-state", action="store_true",
        help="read the context again for every sequence instead of copying its state (same scores, slower; for checking)",
    )
    score.add_argument("--output", default="-", help="table: .csv, .tsv or .parquet; - for stdout (default)")
    score.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    score.set_defaults(run=run_score)

    inpaint = commands.add_parser(
        "inpaint", parents=[model_options], help="fill spans of a protein sequence",
        description=(
            "Rewrite spans of a protein sequence by fill-in-the-middle decoding, optionally given homologs. "
            "Writes FASTA; each record's description gives the fill lengths and their log-likelihood."
        ),
    )
    inpaint.add_argument("--input", required=True, help="sequence file; its first record is filled")
    inpaint.add_argument(
        "--span", action="append", required=True, metavar="START-END",
        help="residues to rewrite, 1-based and inclusive (e.g. 10-20); repeat for up to five spans",
    )
    inpaint.add_argument("--context", help="homologs: A3M, Stockholm or FASTA (.gz ok)")
    inpaint.add_argument("--max-context-tokens", type=int, default=None, help="read homologs while the context stays within N tokens")
    inpaint.add_argument("-n", type=int, default=1, help="number of inpainted versions")
    inpaint.add_argument("--max-fill-length", type=int, default=64, help="longest fill of one span")
    inpaint.add_argument("--temperature", type=float, default=1.0, help="0 picks the likeliest residue")
    inpaint.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    inpaint.add_argument("--top-p", type=float, default=None, help="sample within this probability mass")
    inpaint.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    inpaint.add_argument("--output", default="-", help="FASTA file; - for stdout (default)")
    inpaint.set_defaults(run=run_inpaint)

    info = commands.add_parser("info", help="describe a model", description="Show a model's architecture, size, domain and card.")
    info.add_argument("--model", required=True, help="a saved model directory (or a bundled default)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=run_info)

    export = commands.add_parser(
        "export",
        help="write a model as a self-contained Hugging Face directory",
        description=(
            "Write a saved model as a Hugging Face model directory: safetensors weights, config.json with "
            "auto_map, the model code (so it loads with trust_remote_code=True where bioxlstm is not "
            "installed), the tokenizer and a model card (README.md with YAML metadata)."
        ),
    )
    export.add_argument("--model", required=True, help="directory of a saved Bio-xLSTM model")
    export.add_argument("--output", required=True, type=Path, help="directory to create (must not exist or be empty)")
    export.add_argument(
        "--data-card", action="append", type=Path, default=[], metavar="FILE",
        help="data card (markdown) of the training data; repeat for several; default: the model's own card",
    )
    export.add_argument(
        "--metrics", type=Path, metavar="FILE.json",
        help='held-out numbers for the card, a JSON object such as {"eval_perplexity": 3.7}',
    )
    export.add_argument("--description", default=None, help="a paragraph describing the model for its card")
    export.set_defaults(run=run_export)
    return parser


def run_export(args: argparse.Namespace) -> None:
    import json

    from .export import CARD_INFO_FILE, CardInfo, export
    from .pretrained import load_pretrained

    if args.output.exists() and any(args.output.iterdir()):
        raise FileExistsError(f"{args.output}: exists and is not empty; choose a new directory")
    own_card = Path(args.model) / CARD_INFO_FILE
    card = CardInfo.from_file(own_card) if own_card.is_file() else CardInfo()
    if args.data_card:
        card.training_data = {path.stem: path.read_text() for path in args.data_card}
    if args.metrics:
        metrics = json.loads(args.metrics.read_text())
        if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
            raise ValueError(f"{args.metrics}: expected a JSON object of metric names to numbers")
        card.metrics = metrics
    if args.description:
        card.description = args.description
    model, tokenizer = load_pretrained(args.model)
    export(model, args.output, tokenizer, card)
    print(f"exported {type(model).__name__} to {args.output}", file=sys.stderr)


def _load(args: argparse.Namespace):
    from .pretrained import load_pretrained
    from .tasks.running import pick_device

    model, tokenizer = load_pretrained(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model}: the model has no tokenizer and no domain to choose one")
    return model.to(pick_device(args.device)), tokenizer


def _records(args: argparse.Namespace, model):
    from tqdm import tqdm

    from .io import read_records

    reader = read_records(args.input, format=args.format, domain=model.config.domain, column=args.column)
    return tqdm(reader, desc="sequences", unit="seq", file=sys.stderr, disable=None)


def run_generate(args: argparse.Namespace) -> None:
    import pandas as pd

    from .io import Record, format_from_path, write_records, write_table
    from .tasks import generate_sequences

    if args.context:
        run_generate_family(args)
        return
    model, tokenizer = _load(args)
    domain = model.config.domain
    molecules = domain == "smiles"
    output_format = "smiles" if args.output == "-" and molecules else None
    if args.output == "-" and not molecules:
        output_format = "fasta"
    output_format = output_format or format_from_path(args.output)
    generated = generate_sequences(
        model, tokenizer, args.n, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
    )
    if output_format in ("csv", "tsv", "parquet"):
        write_table(pd.DataFrame([vars(g) for g in generated]), args.output, output_format)
        return
    records = [
        Record(g.id, g.sequence, f"log_likelihood={g.log_likelihood:.4f} finished={'yes' if g.finished else 'no'}")
        for g in generated
    ]
    write_records(records, args.output, output_format)


def run_generate_family(args: argparse.Namespace) -> None:
    import pandas as pd

    from .io import Record, format_from_path, write_records, write_table
    from .tasks.protein import generate_family

    model, tokenizer = _load(args)
    members = generate_family(
        model, tokenizer, args.context, args.n, context_sequences=args.context_sequences,
        max_context_tokens=args.max_context_tokens, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
    )
    output_format = "fasta" if args.output == "-" else format_from_path(args.output)
    if output_format in ("csv", "tsv", "parquet"):
        write_table(pd.DataFrame([vars(m) for m in members]), args.output, output_format)
        return
    records = [
        Record(
            m.id, m.sequence,
            f"log_likelihood={m.log_likelihood:.4f} perplexity={m.perplexity:.3f} max_identity={m.max_identity:.3f} "
            f"min_hamming={m.min_hamming} finished={'yes' if m.finished else 'no'}",
        )
        for m in members
    ]
    write_records(records, args.output, output_format)


def run_inpaint(args: argparse.Namespace) -> None:
    from .io import Record, read_records, write_records
    from .tasks.protein import inpaint

    spans = [_span(text) for text in args.span]
    model, tokenizer = _load(args)
    record = next(read_records(args.input, domain="protein"))
    results = []
    for index in range(args.n):
        result = inpaint(
            model, tokenizer, record.sequence, spans, context=args.context, max_context_tokens=args.max_context_tokens,
            max_fill_length=args.max_fill_length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed if index == 0 else None,
        )
        lengths = ",".join(map(str, result.fill_lengths))
        results.append(
            Record(f"{record.id}_inpainted_{index + 1}", result.sequence,
                   f"fill_lengths={lengths} log_likelihood={result.log_likelihood:.4f}")
        )
    write_records(results, args.output, "fasta" if args.output == "-" else None)


def _span(text: str) -> tuple[int, int]:
    """A 1-based inclusive `START-END` as a 0-based slice."""
    start, separator, end = text.partition("-")
    if not (separator and start.isdigit() and end.isdigit() and 1 <= int(start) <= int(end)):
        raise ValueError(f"--span {text!r}: expected START-END, 1-based and inclusive, e.g. 10-20")
    return int(start) - 1, int(end)


def run_embed(args: argparse.Namespace) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .tasks import embed_records

    output = Path(args.output)
    if output.suffix not in (".parquet", ".npy"):
        raise ValueError(f"{output}: embeddings are written as .parquet or .npy")
    if output.suffix == ".npy" and args.pooling == "none":
        raise ValueError("--pooling none gives one vector per token, of varying count: write a .parquet file")
    model, tokenizer = _load(args)
    embeddings = embed_records(
        model, tokenizer, _records(args, model), pooling=args.pooling, layer=args.layer,
        rc_invariant=args.rc_invariant, window=args.window, batch_size=args.batch_size,
    )
    if output.suffix == ".npy":
        ids, vectors = [], []
        for record_id, vector in embeddings:
            ids.append(record_id)
            vectors.append(vector)
        np.save(output, np.stack(vectors).astype(np.float32))
        output.with_suffix(".ids.txt").write_text("".join(f"{i}\n" for i in ids))
        return
    writer = None
    try:
        for record_id, vector in embeddings:  # one row group per sequence: memory stays flat
            table = pa.table({"id": [record_id], "embedding": [vector.astype(np.float32).tolist()]})
            writer = writer or pq.ParquetWriter(output, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def run_score(args: argparse.Namespace) -> None:
    import json

    import pandas as pd

    from .io import write_table
    from .tasks import score_records

    if args.wildtype or args.mutants:
        run_variant_scoring(args)
        return
    if args.input is None:
        raise ValueError("score needs --input (sequences to score) or --wildtype and --mutants (variant effects)")
    if args.context:
        run_context_scoring(args)
        return
    model, tokenizer = _load(args)
    scores = score_records(
        model, tokenizer, _records(args, model), rc_invariant=args.rc_invariant,
        window=args.window, batch_size=args.batch_size,
    )
    if args.json:
        for score in scores:
            print(json.dumps(vars(score)))
        return
    write_table(pd.DataFrame([vars(score) for score in scores], columns=["id", "length", "log_likelihood", "perplexity"]), args.output)


def run_context_scoring(args: argparse.Namespace) -> None:
    import pandas as pd

    from .io import write_table
    from .tasks.protein import load_context, perplexity, sequence_log_likelihoods

    model, tokenizer = _load(args)
    records = list(_records(args, model))
    context = load_context(args.context, max_tokens=args.max_context_tokens)
    log_likelihoods = sequence_log_likelihoods(
        model, tokenizer, [r.sequence for r in records], context,
        reuse_context_state=not args.no_reuse_context_state, batch_size=args.batch_size,
    )
    rows = [
        (r.id, len(r.sequence), value, perplexity(value, len(r.sequence) + 1)) for r, value in zip(records, log_likelihoods)
    ]
    write_table(pd.DataFrame(rows, columns=["id", "length", "log_likelihood", "perplexity"]), args.output)


def run_variant_scoring(args: argparse.Namespace) -> None:
    import pandas as pd

    from .io import InputError, format_from_path, read_records, write_table
    from .tasks.protein import apply_mutant, score_variants

    if not (args.wildtype and args.mutants):
        raise ValueError("variant-effect scoring needs both --wildtype and --mutants")
    wildtypes = list(read_records(args.wildtype, domain="protein"))
    if len(wildtypes) != 1:
        raise InputError(f"{args.wildtype}: expected one wild-type sequence, found {len(wildtypes)}")
    wildtype = wildtypes[0].sequence
    separator = {"csv": ",", "tsv": "\t"}.get(format_from_path(args.mutants))
    if separator is None:
        raise InputError(f"{args.mutants}: mutants are read from a CSV or TSV file")
    table = pd.read_csv(args.mutants, sep=separator, dtype=str, keep_default_na=False)
    if args.mutant_column not in table.columns:
        raise InputError(
            f"{args.mutants}: no column {args.mutant_column!r} (available: {', '.join(map(str, table.columns))})"
        )
    problems = []
    for row, code in enumerate(table[args.mutant_column], start=2):  # line 1 is the header
        try:
            apply_mutant(wildtype, code)
        except ValueError as problem:
            problems.append(f"line {row}: {problem}")
    if problems:
        more = f" ({len(problems) - 1} more rows do not match the wild type)" if len(problems) > 1 else ""
        raise InputError(f"{args.mutants}: {problems[0]}{more}; nothing was scored")
    model, tokenizer = _load(args)
    table["score"] = score_variants(
        model, tokenizer, wildtype, list(table[args.mutant_column]), context=args.context,
        reuse_context_state=not args.no_reuse_context_state, max_context_tokens=args.max_context_tokens,
        batch_size=args.batch_size,
    )
    write_table(table, args.output)


def run_info(args: argparse.Namespace) -> None:
    import json

    from .pretrained import load_pretrained

    model, tokenizer = load_pretrained(args.model)
    config = model.config
    card = Path(args.model) / "README.md"
    summary = {
        "model": str(args.model),
        "architecture": type(model).__name__,
        "domain": config.domain,
        "parameters": sum(p.numel() for p in model.parameters()),
        "blocks": ["sLSTM" if config.is_slstm(i) else "mLSTM" for i in range(config.num_hidden_layers)],
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
        "config": config.to_diff_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for key, value in summary.items():
        if key != "config":
            print(f"{key}: {value}")
    if card.is_file():
        print()
        print(card.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(2)
    from transformers.utils import logging as transformers_logging

    # Loading a small model is quick; its per-tensor progress bars would only bury our messages.
    transformers_logging.disable_progress_bar()
    try:
        args.run(args)
    except BrokenPipeError:
        # The reader of our output (e.g. `head`) has had enough; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"bioxlstm: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)


def one_line(error: Exception) -> str:
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file or directory"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
