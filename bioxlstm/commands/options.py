"""Options and steps that several commands share: which model, which input, loading them."""

import argparse
import math


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count, a size, a length)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _number_in(text: str, low: float, high: float, low_included: bool, what: str) -> float:
    """`text` as a number from `low` (included or not) to `high`, else an argparse error saying so."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (low <= value if low_included else low < value) or not value <= high:  # also refuses NaN
        span = f"from {low:g} to {high:g}" if low_included else f"above {low:g} and at most {high:g}"
        raise argparse.ArgumentTypeError(f"expected {what} {span}, not {text!r}")
    return value


def probability_mass(text: str) -> float:
    """An argparse type for nucleus sampling: a probability mass above 0 and at most 1."""
    return _number_in(text, 0, 1, False, "a probability mass")


def temperature(text: str) -> float:
    """An argparse type: a sampling temperature from 0 (the likeliest token) to MAX_TEMPERATURE."""
    from ..tasks.sampling import MAX_TEMPERATURE

    return _number_in(text, 0, MAX_TEMPERATURE, True, "a temperature")


def positive_temperature(text: str) -> float:
    """An argparse type: a sampling temperature above 0 and at most MAX_TEMPERATURE."""
    from ..tasks.sampling import MAX_TEMPERATURE

    return _number_in(text, 0, MAX_TEMPERATURE, False, "a temperature")


def new_token_count(text: str) -> int:
    """An argparse type: how many tokens to sample, from 1 to MAX_NEW_TOKENS."""
    from ..tasks.sampling import MAX_NEW_TOKENS

    value = positive_int(text)
    if value > MAX_NEW_TOKENS:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_NEW_TOKENS:,}, not {text!r}")
    return value


def png_path(text: str):
    """An argparse type: a path for a plot written as PNG."""
    from pathlib import Path

    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{text}: the plot is written as PNG; name it .png")
    return Path(text)


def print_json(value) -> None:
    """Print `value` as one line of JSON, an undefined number (NaN) as null: JSON has no NaN."""
    import json

    print(json.dumps(_nan_as_none(value)))


def _nan_as_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_as_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_as_none(item) for item in value]
    return value


def sampling_options(batch_size: int | None = 16, greedy: bool = False, seed: int | None = None) -> argparse.ArgumentParser:
    """The options of every sampling command. greedy: temperature 0 picks the likeliest token."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--temperature", type=temperature if greedy else positive_temperature, default=1.0,
        help="divides the logits before sampling" + ("; 0 picks the likeliest token" if greedy else " (above 0)"),
    )
    options.add_argument("--top-k", type=positive_int, default=None, help="sample among the k likeliest tokens")
    options.add_argument("--top-p", type=probability_mass, default=None, help="sample within this probability mass (0-1]")
    options.add_argument("--seed", type=int, default=seed, help="make sampling reproducible")
    if batch_size is not None:
        options.add_argument("--batch-size", type=positive_int, default=batch_size, help="sequences sampled at once")
    return options


def add_grammar_option(group, what: str) -> None:
    """--grammar of the commands that sample molecules; `what`: the molecules it applies to."""
    group.add_argument(
        "--grammar", choices=["smiles", "none"], default="smiles",
        help=f"smiles (default): {what} are sampled under the SMILES grammar, so a SMILES model writes only what "
        "can still become a molecule (syntax, valence, kekulizable aromatic rings); none: the model's own samples",
    )


def chosen_sampling(args: argparse.Namespace):
    """The `SamplingOptions` of a sampling command: the options `sampling_options` declares, and
    the command's own --max-new-tokens and --grammar where it has them."""
    from dataclasses import fields

    from ..tasks.sampling import SamplingOptions

    given = {field.name: getattr(args, field.name) for field in fields(SamplingOptions) if hasattr(args, field.name)}
    if "grammar" in given:
        given["grammar"] = args.grammar != "none"
    return SamplingOptions(**given)


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
    options.add_argument(
        "--id-column", default=None,
        help="id column of a CSV/TSV/Parquet input (default: a column named 'id' if there is one, else row_1, row_2, ...)",
    )
    options.add_argument("--batch-size", type=positive_int, default=16, help="sequences per forward pass")
    options.add_argument(
        "--window", type=positive_int, default=4096,
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
    """The records of `--input`, read for the model's domain; their ids must be unique, as they name the results."""
    from ..io import read_records

    return read_records(
        args.input, format=args.format, domain=model.config.domain, column=args.column, id_column=args.id_column,
        unique_ids=True,
    )


def refuse_overwriting_input(args: argparse.Namespace) -> None:
    """Every command writes its --output only once it has succeeded; one that names the --input
    would still replace the file it reads, so it is refused before anything runs."""
    from pathlib import Path

    output, source = getattr(args, "output", None), getattr(args, "input", None)
    if not output or not source or "-" in (str(output), str(source)):
        return
    if Path(output).resolve() == Path(source).resolve():
        raise ValueError(f"{output}: is also the --input; write the results to another file")
