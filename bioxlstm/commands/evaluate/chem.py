"""`bioxlstm evaluate chem`: chemistry metrics of a file of generated molecules, or the MOSES metric set
(`--benchmark moses`)."""

import argparse
import gzip
import zlib
from typing import TYPE_CHECKING

from ...domains import SMILES

if TYPE_CHECKING:
    from ...chem import ParsedSmiles


def add_parser(evaluations) -> None:
    chem = evaluations.add_parser(
        "chem", help="validity, uniqueness, novelty, internal diversity and FCD of generated molecules",
        description=(
            "Measure a file of generated SMILES with RDKit and the fcd package, every metric as MOSES defines it "
            "(bioxlstm/chem.py). validity: fraction that RDKit parses (empty entries count as invalid). "
            "uniqueness: distinct canonical molecules among the valid ones. novelty: fraction of those not in "
            "--train. internal diversity (MOSES IntDiv): 1 - mean Tanimoto similarity of Morgan fingerprints "
            "(radius 2, 1024 bits) over all pairs of valid ones, a molecule with itself included. FCD: Frechet "
            "ChemNet Distance between the valid generated and the --reference molecules, both canonicalised; lower "
            "is closer. Undefined values (e.g. no valid molecule) show as n/a, or null in JSON. "
            "With --benchmark moses: the MOSES metric set (valid, unique@1k/10k, FCD, SNN, Frag and Scaf against "
            "the MOSES test and scaffold-test sets, IntDiv, IntDiv2, Filters, Novelty against the MOSES training "
            "set) as the MOSES paper and code define them; see bioxlstm/moses.py and data_cards/moses.md."
        ),
    )
    chem.add_argument(
        "--generated", required=True,
        help="generated SMILES, one per line (.smi, .txt; .gz ok) or a --column of a CSV/TSV/Parquet file; "
        "invalid ones are counted, not rejected",
    )
    chem.add_argument(
        "--unconstrained",
        help="the same model's samples drawn without the SMILES grammar (`generate --grammar none`): every "
        "metric is shown for both, --generated (constrained) beside these (the model's own), and the invalid "
        "samples of each are counted by kind",
    )
    chem.add_argument(
        "--reference", help="reference molecules for FCD, e.g. data/chembl31_valid_50k.smi.gz (required unless "
        "--benchmark moses; there it replaces the MOSES test set)",
    )
    chem.add_argument(
        "--train", help="the training molecules, for novelty (left out without it; with --benchmark moses it "
        "replaces the MOSES training set)",
    )
    chem.add_argument(
        "--benchmark", choices=["moses"],
        help="moses: the MOSES metric set against the MOSES test, scaffold-test and training sets",
    )
    chem.add_argument(
        "--moses-dir", help="directory of the MOSES sets: test.csv.gz and test_scaffolds.csv.gz (column SMILES), "
        "train_canonical.smi.gz or train.csv.gz, and optionally their precomputed statistics (*_fcd.npz, "
        "*_counts.json.gz; computed when absent). Default: the copy bundled with bioxlstm (data/moses in a "
        "source checkout; see data_cards/moses.md)",
    )
    chem.add_argument(
        "--workers", type=int, default=1, help="processes for the per-molecule RDKit work of --benchmark moses",
    )
    chem.add_argument("--column", default="sequence", help="SMILES column of CSV/TSV/Parquet inputs")
    chem.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    chem.set_defaults(run=run)

def _molecules(path: str, column: str) -> list[tuple[str, "ParsedSmiles"]]:
    """The molecules of a reference or training file, each of which must be valid: each SMILES as
    written, with what the metrics need of it (from one parse)."""
    from ...chem import parse_smiles
    from ...io import InputError, read_records
    from ...progress import progress

    molecules = []
    for record in progress(read_records(path, domain=SMILES.name, column=column), desc=path, unit="mol"):
        molecule, parsed = parse_smiles(record.sequence)
        if molecule is None:
            raise InputError(f"{path}: record {record.id!r} is not a valid molecule: {record.sequence!r}")
        molecules.append((record.sequence, parsed))
    return molecules


def _training(args: argparse.Namespace) -> set[str] | None:
    """The canonical SMILES of the --train molecules, for novelty; None without --train."""
    return None if args.train is None else {parsed.canonical for _, parsed in _molecules(args.train, args.column)}


def _generated(path: str, column: str) -> list[str]:
    """The generated entries, as they are: RDKit judges them, and empty ones (skipped by the reader)
    are generated molecules too, invalid ones."""
    from ...io import read_records

    try:
        reader = read_records(path, on_invalid="skip", column=column)
        generated = [record.sequence for record in reader] + [""] * reader.summary.skipped
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        # Raised by the decoders, without the file name: a binary, corrupt or truncated file.
        raise ValueError(f"{path}: not a readable SMILES file ({error})") from error
    if not generated:
        raise ValueError(f"{path}: no generated SMILES to evaluate")
    return generated


def run(args: argparse.Namespace) -> None:
    from ...chem import MoleculeSet

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {args.workers}")
    if args.benchmark == "moses":
        _run_moses(args)
        return
    if args.reference is None:
        raise ValueError("--reference is required (or --benchmark moses)")
    sets = {name: MoleculeSet.from_smiles(molecules) for name, molecules in _generated_sets(args).items()}
    reference = MoleculeSet.of([parsed for _, parsed in _molecules(args.reference, args.column)])
    training = _training(args)
    results = {name: molecules.metrics(reference, training).as_dict() for name, molecules in sets.items()}
    if args.json:
        _print_json(results)
        return
    values = list(results.values())
    rows = [
        ("generated", [f"{v['generated']}" for v in values], " | ".join(_paths(args))),
        ("valid", [f"{v['valid']}" for v in values], ""),
        ("unique", [f"{v['unique']}" for v in values], ""),
        ("validity", [_number(v["validity"]) for v in values], "valid / generated"),
        ("uniqueness", [_number(v["uniqueness"]) for v in values], "unique / valid"),
        ("novelty", [_number(v["novelty"]) for v in values], f"not in {args.train}" if args.train else "needs --train"),
        ("internal diversity", [_number(v["internal_diversity"]) for v in values], "MOSES IntDiv: 1 - mean Tanimoto"),
        ("FCD", [_number(v["fcd"]) for v in values], f"to {args.reference}"),
    ]
    _print_table(rows, values)


INVALID_NOTES = {
    "syntax": "RDKit cannot read it (unclosed branch or ring, dangling bond)",
    "kekulization": "aromatic system without a Kekule form",
    "valence": "an atom with too many bonds",
    "other": "any other sanitization failure",
}


def _generated_sets(args: argparse.Namespace) -> dict[str, list[str]]:
    """The generated SMILES of --generated and, when given, of --unconstrained, by name."""
    sets = {"generated": _generated(args.generated, args.column)}
    if args.unconstrained:
        sets["unconstrained"] = _generated(args.unconstrained, args.column)
    return sets


def _paths(args: argparse.Namespace) -> list[str]:
    return [args.generated] + ([args.unconstrained] if args.unconstrained else [])


def _print_json(results: dict[str, dict]) -> None:
    """The metrics of the generated set; with --unconstrained, of both sets, by name."""
    import json

    if "unconstrained" in results:
        print(json.dumps({"constrained": results["generated"], "unconstrained": results["unconstrained"]}))
    else:
        print(json.dumps(results["generated"]))


def _print_table(rows: list[tuple[str, list[str], str]], values: list[dict]) -> None:
    """`rows`, then the invalid samples of every set by kind; a header names the sets when there are two."""
    rows = rows + [
        (f"invalid {kind}", [f"{v['invalid'][kind]}" for v in values], INVALID_NOTES[kind]) for kind in INVALID_NOTES
    ]
    _table(rows, ["constrained", "own"] if len(values) == 2 else None)


def _table(rows: list[tuple[str, list[str], str]], columns: list[str] | None) -> None:
    """One line per metric: its value for every set, then a note; with `columns`, a header naming them."""
    if columns:
        print(f"{'':<20}" + "".join(f"{column:>12}" for column in columns))
    for name, cells, note in rows:
        print(f"{name:<20}" + "".join(f"{cell:>12}" for cell in cells) + f"  {note}".rstrip())


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _run_moses(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ... import moses

    sets = _generated_sets(args)
    directory = Path(args.moses_dir) if args.moses_dir else moses.bundled_moses_directory()
    if not directory.is_dir():
        raise ValueError(f"--moses-dir {directory}: no such directory")
    # The filter rules belong to the metric, not to the data: a directory without them uses the bundled ones.
    filters = directory if (directory / moses.FILTER_FILES[0]).is_file() else moses.bundled_moses_directory()
    # Every input file is read before the long work starts, so that a bad one fails at once.
    test_override = None if args.reference is None else [smiles for smiles, _ in _molecules(args.reference, args.column)]
    train_override = _training(args)
    references = {
        suffix: moses.reference_set(suffix, test_override, args.workers)
        if suffix == "Test" and test_override is not None
        else moses.load_reference_set(directory, name, args.workers)
        for suffix, name in moses.REFERENCE_SETS.items()
    }
    training = train_override if train_override is not None else moses.load_training_set(directory, args.workers)
    results = {
        name: moses.moses_metrics(molecules, references, training, filters, args.workers).as_dict()
        for name, molecules in sets.items()
    }
    if args.json:
        _print_json(results)
        return
    sources = {"Test": args.reference or f"{directory}/test.csv.gz", "TestSF": f"{directory}/test_scaffolds.csv.gz"}
    values = list(results.values())
    rows = [
        ("generated", [f"{v['generated']}" for v in values], " | ".join(_paths(args))),
        ("molecules", [f"{v['valid_molecules']}" for v in values], "valid"),
        ("distinct", [f"{v['distinct_molecules']}" for v in values], "distinct valid"),
    ]
    for column in moses.COLUMNS:
        note = f"to {sources[column.split('/')[1]]}" if "/" in column else MOSES_NOTES.get(column, "")
        rows.append((column, [_number(v[column]) for v in values], note))
    _print_table(rows, values)


MOSES_NOTES = {
    "valid": "valid / generated",
    "unique@1k": "distinct among the first 1,000 valid",
    "unique@10k": "distinct among the first 10,000 valid",
    "IntDiv": "1 - mean Tanimoto to the whole set",
    "IntDiv2": "1 - mean root-mean-square Tanimoto to the whole set",
    "Filters": "pass MCF, PAINS, atom, charge and ring rules",
    "Novelty": "distinct valid ones not in the training set",
}
