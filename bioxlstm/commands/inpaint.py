"""`bioxlstm inpaint`: fill spans of a protein sequence by fill-in-the-middle decoding."""

import argparse

from ..domains import PROTEIN
from .options import chosen_sampling, load_model, model_options, positive_int, sampling_options


def add_parser(commands) -> None:
    inpaint = commands.add_parser(
        "inpaint", parents=[model_options(), sampling_options(batch_size=None, greedy=True)], help="fill spans of a protein sequence",
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
    inpaint.add_argument("--max-context-tokens", type=positive_int, default=None, help="read homologs while the context stays within N tokens")
    inpaint.add_argument("-n", type=positive_int, default=1, help="number of inpainted versions")
    inpaint.add_argument("--max-fill-length", type=positive_int, default=64, help="longest fill of one span, in residues")
    inpaint.add_argument("--output", default="-", help="FASTA file; - for stdout (default)")
    inpaint.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ..io import read_records, write_results
    from ..tasks.protein import inpaint

    record = next(read_records(args.input, domain=PROTEIN.name))
    spans = _spans(args.span, args.input, record)
    model, tokenizer = load_model(args)
    sampling = chosen_sampling(args)
    results = []
    for index in range(args.n):
        # The seed starts the random draws of the first version; the others continue them.
        result = inpaint(
            model, tokenizer, record.sequence, spans, context=args.context, max_context_tokens=args.max_context_tokens,
            max_fill_length=args.max_fill_length, sampling=sampling if index == 0 else replace(sampling, seed=None),
        )
        results.append(replace(result, id=f"{record.id}_inpainted_{index + 1}"))
    write_results(results, args.output, "fasta" if args.output == "-" else None)


def _spans(texts: list[str], path: str, record) -> list[tuple[int, int]]:
    """The 1-based inclusive `START-END` spans as 0-based slices, each checked against the record
    and the others, in the user's own numbers."""
    spans = {}
    for text in texts:
        start, separator, end = text.partition("-")
        if not (separator and start.isdigit() and end.isdigit()):
            raise ValueError(f"--span {text!r}: expected START-END, 1-based and inclusive, e.g. 10-20")
        if int(start) < 1:
            raise ValueError(f"--span {text!r}: positions start at 1 (the first residue), not {int(start)}")
        if int(start) > int(end):
            raise ValueError(f"--span {text!r}: the start {int(start)} is after the end {int(end)}; write START-END, e.g. {end}-{start}")
        if int(end) > len(record.sequence):
            raise ValueError(
                f"--span {text}: {path}: record {record.id!r} has {len(record.sequence)} residues, "
                f"so a span ends at {len(record.sequence)} at most"
            )
        spans[text] = (int(start) - 1, int(end))
    ordered = sorted(spans.items(), key=lambda item: item[1])
    for (first, (_, first_end)), (second, (second_start, _)) in zip(ordered, ordered[1:]):
        if second_start < first_end:
            raise ValueError(f"--span {first} and --span {second} overlap; give disjoint spans")
    return [span for _, span in ordered]
