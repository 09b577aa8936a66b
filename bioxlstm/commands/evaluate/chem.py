"""`bioxlstm evaluate chem`: chemistry metrics of a file of generated molecules."""

import argparse
import sys

from ...domains import SMILES


def add_parser(evaluations) -> None:
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
    chem.set_defaults(run=run)

def _molecules(path: str, column: str) -> list[str]:
    """The molecules of a reference or training file, each of which must be valid."""
    from tqdm import tqdm

    from ...chem import is_valid
    from ...io import InputError, read_records

    molecules = []
    for record in tqdm(read_records(path, domain=SMILES.name, column=column), desc=path, unit="mol", file=sys.stderr, disable=None):
        if not is_valid(record.sequence):
            raise InputError(f"{path}: record {record.id!r} is not a valid molecule: {record.sequence!r}")
        molecules.append(record.sequence)
    return molecules


def run(args: argparse.Namespace) -> None:
    import json

    from ...chem import chem_metrics
    from ...io import read_records

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
