"""`bioxlstm inpaint`: fill spans of a protein sequence by fill-in-the-middle decoding."""

import argparse

from ..domains import PROTEIN
from .options import load_model, model_options


def add_parser(commands) -> None:
    inpaint = commands.add_parser(
        "inpaint", parents=[model_options()], help="fill spans of a protein sequence",
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
    inpaint.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ..io import read_records, write_results
    from ..tasks.protein import inpaint

    if args.n < 1:
        raise ValueError(f"-n {args.n}: give the number of inpainted versions to write (at least 1)")
    spans = [_span(text) for text in args.span]
    model, tokenizer = load_model(args)
    record = next(read_records(args.input, domain=PROTEIN.name))
    results = []
    for index in range(args.n):
        result = inpaint(
            model, tokenizer, record.sequence, spans, context=args.context, max_context_tokens=args.max_context_tokens,
            max_fill_length=args.max_fill_length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed if index == 0 else None,
        )
        results.append(replace(result, id=f"{record.id}_inpainted_{index + 1}"))
    write_results(results, args.output, "fasta" if args.output == "-" else None)


def _span(text: str) -> tuple[int, int]:
    """A 1-based inclusive `START-END` as a 0-based slice."""
    start, separator, end = text.partition("-")
    if not (separator and start.isdigit() and end.isdigit() and 1 <= int(start) <= int(end)):
        raise ValueError(f"--span {text!r}: expected START-END, 1-based and inclusive, e.g. 10-20")
    return int(start) - 1, int(end)
