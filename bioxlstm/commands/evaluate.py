"""`bioxlstm evaluate`: chemistry metrics of generated molecules and the in-context protocol."""

import argparse
import sys

from ..domains import SMILES
from .options import load_model, model_options


def add_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="measure generated sequences",
        description="Measure generated sequences against reference data.",
    )
    evaluations = evaluate.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    chem = evaluations.add_parser(
        "chem", help="validity, uniqueness, novelty, internal diversity and FCD of generated molecules",
        description=(
            "Measure a file of generated SMILES with RDKit and the fcd package. validity: fraction that RDKit "
            "parses (empty entries count as invalid). uniqueness: distinct canonical molecules among the valid "
            "ones. novelty: fraction of those not in --train. internal diversity: 1 - mean pairwise Tanimoto "
            "similarity of Morgan fingerprints (radius 2, 2048 bits) of the valid ones. FCD: Frechet ChemNet "
            "Distance between the valid generated and the --reference molecules, both canonicalised; lower is "
            "closer. Undefined values (e.g. no valid molecule) show as n/a, or null in JSON."
        ),
    )
    chem.add_argument(
        "--generated", required=True,
        help="generated SMILES, one per line (.smi, .txt; .gz ok) or a --column of a CSV/TSV/Parquet file; "
        "invalid ones are counted, not rejected",
    )
    chem.add_argument("--reference", required=True, help="reference molecules for FCD, e.g. data/chembl31_valid_50k.smi.gz")
    chem.add_argument("--train", help="the training molecules, for novelty (left out without it)")
    chem.add_argument("--column", default="sequence", help="SMILES column of CSV/TSV/Parquet inputs")
    chem.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    chem.set_defaults(run=run_chem)

    in_context = evaluations.add_parser(
        "chem-in-context", parents=[model_options()],
        help="FCD of in-context versus unconditional samples on held-out molecular domains",
        description=(
            "The in-context protocol: for each domain (a line of molecules joined by '.', the ICST format), "
            "--n-context of its molecules are placed in context and --n-generate molecules sampled after them; "
            "their FCD to the rest of the domain is compared with that of --n-generate unconditional samples. "
            "On a hundred molecules FCD is noisy: judge by how many domains improve."
        ),
    )
    in_context.add_argument("--domains", required=True, help="ICST file, one domain per line, e.g. data/icst_valid_50_domains.txt.gz")
    in_context.add_argument(
        "--lines", type=_line_numbers, default=None, metavar="1,3,4",
        help="which domains (1-based line numbers) to evaluate; default: all",
    )
    in_context.add_argument("--n-context", type=int, default=20, help="molecules of a domain placed in context")
    in_context.add_argument("--n-generate", type=int, default=100, help="molecules sampled per domain, and unconditionally")
    in_context.add_argument("--temperature", type=float, default=1.0)
    in_context.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    in_context.add_argument("--top-p", type=float, default=None, help="sample within this probability mass")
    in_context.add_argument("--max-new-tokens", type=int, default=256, help="longest molecule, in tokens")
    in_context.add_argument("--batch-size", type=int, default=64, help="molecules sampled at once")
    in_context.add_argument("--seed", type=int, default=0, help="chooses the context molecules and the samples")
    in_context.add_argument("--json", action="store_true", help="print one JSON object per domain instead of a table")
    in_context.set_defaults(run=run_chem_in_context)


def _line_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive line numbers separated by commas, not {text!r}")
    return numbers


def _molecules(path: str, column: str) -> list[str]:
    """The molecules of a reference or training file, each of which must be valid."""
    from tqdm import tqdm

    from ..chem import is_valid
    from ..io import InputError, read_records

    molecules = []
    for record in tqdm(read_records(path, domain=SMILES.name, column=column), desc=path, unit="mol", file=sys.stderr, disable=None):
        if not is_valid(record.sequence):
            raise InputError(f"{path}: record {record.id!r} is not a valid molecule: {record.sequence!r}")
        molecules.append(record.sequence)
    return molecules


def run_chem(args: argparse.Namespace) -> None:
    import json

    from ..chem import chem_metrics
    from ..io import read_records

    # Generated entries are taken as they are: RDKit judges them, and empty ones (skipped by the
    # reader) are generated molecules too, invalid ones.
    reader = read_records(args.generated, on_invalid="skip", column=args.column)
    generated = [record.sequence for record in reader] + [""] * reader.summary.skipped
    metrics = chem_metrics(
        generated,
        reference=_molecules(args.reference, args.column),
        training=None if args.train is None else _molecules(args.train, args.column),
    )
    if args.json:
        print(json.dumps(metrics.as_dict()))
        return
    values = metrics.as_dict()
    rows = [
        ("generated", f"{metrics.generated}", args.generated),
        ("valid", f"{metrics.valid}", ""),
        ("unique", f"{metrics.unique}", ""),
        ("validity", _number(values["validity"]), "valid / generated"),
        ("uniqueness", _number(values["uniqueness"]), "unique / valid"),
        ("novelty", _number(values["novelty"]), f"not in {args.train}" if args.train else "needs --train"),
        ("internal diversity", _number(values["internal_diversity"]), "1 - mean pairwise Tanimoto"),
        ("FCD", _number(values["fcd"]), f"to {args.reference}"),
    ]
    for name, value, note in rows:
        print(f"{name:<20}{value:>10}  {note}".rstrip())


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_chem_in_context(args: argparse.Namespace) -> None:
    import json
    import math

    from ..io import read_records
    from ..tasks import evaluate_in_context

    records = list(read_records(args.domains, format="smiles", domain=SMILES.name))
    lines = args.lines or range(1, len(records) + 1)
    beyond = [line for line in lines if line > len(records)]
    if beyond:
        raise ValueError(f"{args.domains}: has {len(records)} domains, no line {beyond[0]}")
    model, tokenizer = load_model(args)
    results = evaluate_in_context(
        model, tokenizer, [records[line - 1].sequence for line in lines], n_context=args.n_context,
        n_generate=args.n_generate, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )  # fmt: skip
    if args.json:
        for line, result in zip(lines, results):
            values = {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in vars(result).items()}
            print(json.dumps({"line": line, **values}))
        return
    print(f"{'line':>5} {'context':>8} {'reference':>10} {'valid':>6} {'FCD in-context':>15} {'FCD unconditional':>18}")
    for line, r in zip(lines, results):
        print(
            f"{line:>5} {r.context:>8} {r.reference:>10} {r.valid_in_context:>6} "
            f"{r.fcd_in_context:>15.3f} {r.fcd_unconditional:>18.3f}"
        )
    better = sum(r.fcd_in_context < r.fcd_unconditional for r in results)
    print(f"in-context FCD below unconditional on {better} of {len(results)} domains")
    if results:
        valid = results[0].valid_unconditional
        print(f"unconditional samples: {valid} of {args.n_generate} valid ({valid / args.n_generate:.1%})")
