"""Options and steps that several commands share: which model, which input, loading them."""

import argparse
import sys


def model_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--model", required=True, help="a saved model directory (or a bundled default: dna, protein, chem, chem-icl)"
    )
    options.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    return options


def input_options(input_required: bool = True) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--input", required=input_required, help="sequence file (FASTA, FASTQ, GenBank, A3M, SMILES, CSV, ...; .gz ok) or - for stdin")
    options.add_argument("--format", help="input format when the extension does not say it (required for stdin)")
    options.add_argument("--column", default="sequence", help="sequence column of a CSV/TSV/Parquet input")
    options.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    options.add_argument(
        "--window", type=int, default=4096,
        help="tokens per forward pass for long sequences; the recurrent state is carried between windows",
    )
    options.add_argument(
        "--rc-invariant", action="store_true",
        help="DNA: average over both strands, so a sequence and its reverse complement get the same result",
    )
    return options


def load_model(args: argparse.Namespace):
    """The model of `--model` on the device of `--device`, and its tokenizer."""
    from ..pretrained import load_pretrained
    from ..tasks.running import pick_device

    model, tokenizer = load_pretrained(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model}: the model has no tokenizer and no domain to choose one")
    return model.to(pick_device(args.device)), tokenizer


def input_records(args: argparse.Namespace, model):
    """The records of `--input`, read for the model's domain, with a progress bar."""
    from tqdm import tqdm

    from ..io import read_records

    reader = read_records(args.input, format=args.format, domain=model.config.domain, column=args.column)
    return tqdm(reader, desc="sequences", unit="seq", file=sys.stderr, disable=None)


def refuse_overwriting_input(args: argparse.Namespace) -> None:
    """Every command writes its --output only once it has succeeded; one that names the --input
    would still replace the file it reads, so it is refused before anything runs."""
    from pathlib import Path

    output, source = getattr(args, "output", None), getattr(args, "input", None)
    if not output or not source or "-" in (str(output), str(source)):
        return
    if Path(output).resolve() == Path(source).resolve():
        raise ValueError(f"{output}: is also the --input; write the results to another file")
