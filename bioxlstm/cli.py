"""The `bioxlstm` command line: a thin parser over the package's functions."""

import argparse
import os
import sys
from pathlib import Path

from . import __version__

# Mistakes a user can make; they are reported in one line, without a traceback (unless --debug).
USER_ERRORS = (ValueError, OSError)


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
    input_options = argparse.ArgumentParser(add_help=False)
    input_options.add_argument("--input", required=True, help="sequence file (FASTA, FASTQ, GenBank, A3M, SMILES, CSV, ...; .gz ok) or - for stdin")
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
        "score", parents=[model_options, input_options], help="log-likelihood and perplexity of sequences",
        description="Score every sequence of a file by its log-likelihood (natural log, including its end) and perplexity.",
    )
    score.add_argument("--output", default="-", help="table: .csv, .tsv or .parquet; - for stdout (default)")
    score.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    score.set_defaults(run=run_score)

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

    from .io import STANDARD_STREAM, TABLE_FORMATS, Record, format_from_path, write_records, write_table
    from .tasks import generate_sequences

    model, tokenizer = _load(args)
    if args.output == STANDARD_STREAM:
        output_format = "smiles" if model.config.domain == "smiles" else "fasta"
    else:
        output_format = format_from_path(args.output)
    generated = generate_sequences(
        model, tokenizer, args.n, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
    )
    if output_format in TABLE_FORMATS:
        write_table(pd.DataFrame([vars(g) for g in generated]), args.output, output_format)
        return
    records = [
        Record(g.id, g.sequence, f"log_likelihood={g.log_likelihood:.4f} finished={'yes' if g.finished else 'no'}")
        for g in generated
    ]
    write_records(records, args.output, output_format)


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
