"""The MOSES benchmark (Polykovskiy et al. 2020, "Molecular Sets (MOSES)"): its metric set, its
reference sets and its filter rules, as the MOSES paper and its reference code define them.

The metrics that are not MOSES' alone (validity, uniqueness, novelty, FCD, SNN, IntDiv, and the
invalid samples by kind) are `bioxlstm.chem`'s, the same code that `evaluate chem` reports them with;
this module adds the fragment, scaffold and filter columns and the MOSES data. Of a list of
generated SMILES (each parsed once, in worker processes):
- valid: the fraction that RDKit parses (the empty string is invalid). Every metric below is taken
  over the valid molecules only, in RDKit-canonical form, repeats kept, unless it says "distinct".
- unique@k: distinct molecules among the first k valid ones, as a fraction of k (of all the valid
  ones when there are fewer than k, as MOSES does).
- FCD/<set>: the Fréchet ChemNet Distance between the ChemNet activations of the valid molecules and
  those of the reference set (Test: the MOSES test set; TestSF: the scaffold-split test set).
- SNN/<set>: the mean over the valid molecules of the Tanimoto similarity to the nearest reference
  molecule, on Morgan fingerprints of radius 2 and 1024 bits (`chem.MORGAN_BITS`).
- Frag/<set>: the cosine similarity of the count vectors of BRICS fragments (each molecule cut at its
  BRICS bonds, every piece counted once per occurrence) of the valid and the reference molecules.
- Scaf/<set>: the same over Bemis-Murcko scaffolds; scaffolds with fewer than two rings (and
  molecules without one) are left out, as in the MOSES code.
- IntDiv (p=1) and IntDiv2 (p=2): 1 - mean over the valid molecules x of (mean over all valid
  molecules y, x itself included, of T(x, y)^p)^(1/p), T the Tanimoto similarity above.
- Filters: the fraction of valid molecules that pass the medicinal-chemistry filters (MCF) and the
  PAINS filters (no SMARTS match on the molecule with explicit hydrogens), have no charged atom, only
  the atoms C N S O F Cl Br H, no ring of eight or more atoms, and write a SMILES that parses again.
- Novelty: the fraction of the distinct valid molecules that are not in the training set.

The filter rules are data (`mcf.csv`, `wehi_pains.csv`) from the MOSES repository; see
`data_cards/moses.md`. Two fingerprints without any set bit have Tanimoto similarity 1, as in MOSES.
A column whose denominator is empty is NaN, as `bioxlstm.chem` says.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from .chem import (
    MoleculeSet,
    ParsedSmiles,
    canonicalize,
    chemnet_statistics,
    fingerprint_matrix,
    molecule_from_smiles,
    packed_fingerprint,
    parse_smiles,
)
from .io import atomic_directory
from .progress import progress as progress_bar

COLUMNS = (
    "valid", "unique@1k", "unique@10k", "FCD/Test", "FCD/TestSF", "SNN/Test", "SNN/TestSF",
    "Frag/Test", "Frag/TestSF", "Scaf/Test", "Scaf/TestSF", "IntDiv", "IntDiv2", "Filters", "Novelty",
)  # fmt: skip
UNIQUE_AT = {"unique@1k": 1000, "unique@10k": 10000}
# Column suffix -> file stem of the MOSES reference set in a MOSES data directory.
REFERENCE_SETS = {"Test": "test", "TestSF": "test_scaffolds"}
TRAIN_CANONICAL = "train_canonical.smi.gz"
TRAIN_RAW = "train.csv.gz"
SMILES_COLUMN = "SMILES"

SCAFFOLD_MIN_RINGS = 2
FILTER_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
FILTER_LARGEST_RING = 7
FILTER_FILES = ("mcf.csv", "wehi_pains.csv")


def bundled_moses_directory() -> Path:
    """The directory of the MOSES files shipped with bioxlstm (see `data_cards/moses.md`)."""
    # An installed wheel carries them inside the package; a source checkout keeps them in data/moses.
    candidates = [
        Path(str(resources.files("bioxlstm"))) / "moses_data",
        Path(__file__).resolve().parent.parent / "data" / "moses",
    ]
    for directory in candidates:
        if (directory / FILTER_FILES[0]).is_file():
            return directory
    raise FileNotFoundError(f"no MOSES data in {' or '.join(map(str, candidates))}")


# ---------------------------------------------------------------------------------------------
# One molecule


@dataclass(frozen=True)
class MoleculeFeatures(ParsedSmiles):
    """What the metrics need of one SMILES, computed from one parse (in a worker process): beside
    what `bioxlstm.chem` needs of it, a valid molecule's BRICS fragments, scaffold and filter verdict."""

    fragments: tuple[str, ...] = ()
    scaffold: str | None = None
    passes_filters: bool | None = None  # None when not asked for (reference sets need no filtering)


def brics_fragments(molecule: Chem.Mol) -> list[str]:
    """SMILES of the pieces of `molecule` cut at its BRICS bonds (dummy atoms mark the cuts)."""
    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(molecule)).split(".")


def murcko_scaffold(molecule: Chem.Mol, min_rings: int = SCAFFOLD_MIN_RINGS) -> str | None:
    """The Bemis-Murcko scaffold SMILES of `molecule`, or None when it has fewer than `min_rings` rings."""
    try:
        scaffold = MurckoScaffold.GetScaffoldForMol(molecule)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(scaffold)
    if not smiles or scaffold.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


@lru_cache(maxsize=4)
def filter_patterns(directory: str) -> tuple[Chem.Mol, ...]:
    """The MCF and PAINS SMARTS patterns of the MOSES filter files in `directory`, compiled."""
    patterns = []
    for name in FILTER_FILES:
        path = Path(directory) / name
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        # mcf.csv is `names,smarts` with a header; wehi_pains.csv is `smarts,name` without one.
        header = [cell.strip() for cell in rows[0]]
        column = header.index("smarts") if "smarts" in header else 0
        rows = rows[1:] if "smarts" in header else rows
        for row in rows:
            pattern = Chem.MolFromSmarts(row[column].strip())
            if pattern is None:
                raise ValueError(f"{path}: SMARTS {row[column].strip()!r} does not parse")
            patterns.append(pattern)
    return tuple(patterns)


def passes_filters(molecule: Chem.Mol, patterns: Sequence[Chem.Mol]) -> bool:
    """Whether `molecule` passes the MOSES filters (see the module docstring) with these SMARTS `patterns`."""
    if any(len(ring) > FILTER_LARGEST_RING for ring in molecule.GetRingInfo().AtomRings()):
        return False
    atoms = molecule.GetAtoms()
    if any(atom.GetFormalCharge() != 0 or atom.GetSymbol() not in FILTER_ATOMS for atom in atoms):
        return False
    # PAINS patterns name hydrogens explicitly ([#1]); they only match once the hydrogens are atoms.
    with_hydrogens = Chem.AddHs(molecule)
    if any(with_hydrogens.HasSubstructMatch(pattern) for pattern in patterns):
        return False
    smiles = Chem.MolToSmiles(molecule, isomericSmiles=False)
    return bool(smiles) and molecule_from_smiles(smiles) is not None


def molecule_features(smiles: str, filter_directory: str | None) -> MoleculeFeatures:
    """The features of `smiles` (only why it is invalid, when it is); the filters (with the rules in
    `filter_directory`) are only checked when a directory is given."""
    molecule, parsed = parse_smiles(smiles)
    if molecule is None:
        return MoleculeFeatures(**vars(parsed))
    return MoleculeFeatures(
        **vars(parsed),
        fragments=tuple(brics_fragments(molecule)),
        scaffold=murcko_scaffold(molecule),
        passes_filters=None if filter_directory is None else passes_filters(molecule, filter_patterns(filter_directory)),
    )


def _features_of_chunk(arguments: tuple[list[str], str | None]) -> list[MoleculeFeatures]:
    chunk, filter_directory = arguments
    return [molecule_features(smiles, filter_directory) for smiles in chunk]


def features(
    smiles: Sequence[str], filter_directory: str | Path | None, workers: int = 1, description: str = "molecules"
) -> list[MoleculeFeatures]:
    """`molecule_features` of every entry, in order, over `workers` processes, with a progress bar."""
    directory = None if filter_directory is None else str(filter_directory)
    size = max(1, min(2000, len(smiles) // (4 * workers) + 1))
    chunks = [(list(smiles[start : start + size]), directory) for start in range(0, len(smiles), size)]
    progress = progress_bar(total=len(smiles), desc=description, unit="mol")
    results: list[MoleculeFeatures] = []
    with _pool(workers) as pool:
        for chunk_result in pool(_features_of_chunk, chunks):
            results.extend(chunk_result)
            progress.update(len(chunk_result))
    progress.close()
    return results


@contextmanager
def _pool(workers: int) -> Iterator:
    # Fork shares the already-imported RDKit and torch with the workers instead of importing them again.
    if workers <= 1:
        yield map
        return
    with get_context("fork").Pool(workers) as pool:
        yield pool.imap


def cosine_similarity(counts: Counter, other: Counter) -> float:
    """Cosine similarity of two count vectors given as {key: count} (absent keys count 0); NaN when
    either is empty: Frag and Scaf compare fragment and scaffold counts this way."""
    if not counts or not other:
        return math.nan
    dot = sum(count * other.get(key, 0) for key, count in counts.items())
    norm = math.sqrt(sum(c * c for c in counts.values())) * math.sqrt(sum(c * c for c in other.values()))
    return dot / norm


# ---------------------------------------------------------------------------------------------
# Reference and training sets


@dataclass
class ReferenceSet:
    """What the metrics need of a reference set (MOSES test or scaffold test): its fingerprints, and
    its ChemNet statistics and fragment and scaffold counts (which a MOSES data directory may ship
    precomputed)."""

    name: str
    fingerprints: np.ndarray
    fcd_mean: np.ndarray
    fcd_covariance: np.ndarray
    fragments: Counter = field(default_factory=Counter)
    scaffolds: Counter = field(default_factory=Counter)


def reference_set(name: str, smiles: Sequence[str], workers: int = 1) -> ReferenceSet:
    """The `ReferenceSet` of `smiles`, every one of which must be a valid molecule."""
    described = features(smiles, None, workers, description=f"{name} set")
    invalid = [entry for entry, feature in zip(smiles, described) if feature.invalid is not None]
    if invalid:
        raise ValueError(f"reference set {name}: {len(invalid)} invalid molecules, e.g. {invalid[0]!r}")
    mean, covariance = chemnet_statistics([feature.canonical for feature in described])
    return ReferenceSet(
        name=name,
        fingerprints=fingerprint_matrix(feature.fingerprint for feature in described),
        fcd_mean=mean,
        fcd_covariance=covariance,
        fragments=Counter(fragment for feature in described for fragment in feature.fragments),
        scaffolds=Counter(feature.scaffold for feature in described if feature.scaffold is not None),
    )


def write_reference_statistics(reference: ReferenceSet, directory: str | Path) -> list[Path]:
    """Write the precomputed parts of `reference` beside its SMILES file: `<name>_fcd.npz` (ChemNet mean
    and covariance) and `<name>_counts.json.gz` (fragment and scaffold counts)."""
    directory = Path(directory)
    fcd_path = directory / f"{reference.name}_fcd.npz"
    counts_path = directory / f"{reference.name}_counts.json.gz"
    np.savez_compressed(fcd_path, mean=reference.fcd_mean, covariance=reference.fcd_covariance)
    counts = {"fragments": dict(reference.fragments.most_common()), "scaffolds": dict(reference.scaffolds.most_common())}
    # mtime=0: the same statistics give the same bytes.
    with gzip.GzipFile(counts_path, "wb", mtime=0) as handle:
        handle.write(json.dumps(counts, separators=(",", ":")).encode())
    return [fcd_path, counts_path]


def read_smiles_column(path: str | Path, column: str = SMILES_COLUMN) -> list[str]:
    """The `column` of a CSV file (gzip by extension), as strings."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)
    except ValueError as error:
        raise ValueError(f"{path}: no {column!r} column ({error})") from error
    return frame[column].tolist()


def statistics_cache(path: Path) -> Path:
    """Where the statistics of a reference SMILES file are kept once computed: the user's cache,
    under a digest of the file's bytes, so an edited file never meets stale statistics."""
    import hashlib
    import os

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bioxlstm" / "moses" / digest


def load_reference_set(directory: str | Path, name: str, workers: int = 1) -> ReferenceSet:
    """The reference set `<name>.csv.gz` of a MOSES data `directory`; its statistics are read where
    precomputed (see `write_reference_statistics`), beside the file or in the user's cache, and
    otherwise computed (ChemNet over the set: minutes of CPU) and kept in that cache."""
    directory = Path(directory)
    smiles = read_smiles_column(directory / f"{name}.csv.gz")
    fcd_path, counts_path = directory / f"{name}_fcd.npz", directory / f"{name}_counts.json.gz"
    if not (fcd_path.is_file() and counts_path.is_file()):
        cache = statistics_cache(directory / f"{name}.csv.gz")
        fcd_path, counts_path = cache / f"{name}_fcd.npz", cache / f"{name}_counts.json.gz"
    if not (fcd_path.is_file() and counts_path.is_file()):
        reference = reference_set(name, smiles, workers)
        try:
            with atomic_directory(cache) as staging:  # a run stopped halfway leaves no half-written file
                write_reference_statistics(reference, staging)
        except OSError:
            pass  # a read-only or full cache only costs the next run the same minutes
        return reference
    fingerprints = reference_fingerprints(smiles, workers, name)
    with np.load(fcd_path) as statistics:
        mean, covariance = statistics["mean"], statistics["covariance"]
    with gzip.open(counts_path, "rt") as handle:
        counts = json.load(handle)
    return ReferenceSet(name, fingerprints, mean, covariance, Counter(counts["fragments"]), Counter(counts["scaffolds"]))


def _fingerprints_of_chunk(chunk: list[str]) -> list[bytes | None]:
    molecules = [molecule_from_smiles(smiles) for smiles in chunk]
    return [None if molecule is None else packed_fingerprint(molecule) for molecule in molecules]


def reference_fingerprints(smiles: Sequence[str], workers: int = 1, name: str = "reference") -> np.ndarray:
    """Packed Morgan fingerprints of `smiles`, which must all be valid molecules."""
    size = 2000
    packed: list[bytes | None] = []
    progress = progress_bar(total=len(smiles), desc=f"{name} fingerprints", unit="mol")
    with _pool(workers) as pool:
        for chunk in pool(_fingerprints_of_chunk, [list(smiles[i : i + size]) for i in range(0, len(smiles), size)]):
            packed.extend(chunk)
            progress.update(len(chunk))
    progress.close()
    if None in packed:
        bad = smiles[packed.index(None)]
        raise ValueError(f"reference set {name}: {bad!r} is not a valid molecule")
    return fingerprint_matrix(packed)


def _canonical_of_chunk(chunk: list[str]) -> list[str | None]:
    return [canonicalize(smiles) for smiles in chunk]


def canonical_smiles(smiles: Sequence[str], workers: int = 1, description: str = "canonical") -> list[str | None]:
    """RDKit-canonical SMILES of every entry (None for an invalid one), over `workers` processes."""
    size = 5000
    result: list[str | None] = []
    progress = progress_bar(total=len(smiles), desc=description, unit="mol")
    with _pool(workers) as pool:
        for chunk in pool(_canonical_of_chunk, [list(smiles[i : i + size]) for i in range(0, len(smiles), size)]):
            result.extend(chunk)
            progress.update(len(chunk))
    progress.close()
    return result


def load_training_set(directory: str | Path, workers: int = 1) -> set[str]:
    """The canonical SMILES of the training set of a MOSES data `directory`: `train_canonical.smi.gz`
    (already canonical, one per line) where present, else `train.csv.gz` canonicalised here."""
    directory = Path(directory)
    if (directory / TRAIN_CANONICAL).is_file():
        with gzip.open(directory / TRAIN_CANONICAL, "rt") as handle:
            return {line.rstrip("\n") for line in handle if line.strip()}
    return training_set(read_smiles_column(directory / TRAIN_RAW), workers)


def training_set(smiles: Sequence[str], workers: int = 1) -> set[str]:
    """The canonical SMILES of the valid entries of `smiles`: what novelty compares against."""
    return set(canonical_smiles(smiles, workers, description="training set")) - {None}


# ---------------------------------------------------------------------------------------------
# The metric set


@dataclass
class MosesMetrics:
    """The MOSES columns of one generated set (NaN: undefined, e.g. no valid molecule), with counts
    and the invalid samples by kind."""

    generated: int
    valid: int
    distinct: int
    values: dict[str, float]
    invalid: dict[str, int]

    def as_dict(self) -> dict:
        """JSON-ready: the counts, every column (NaN as None) and the invalid samples by kind."""
        columns = {name: None if math.isnan(value) else value for name, value in self.values.items()}
        counts = {"generated": self.generated, "valid_molecules": self.valid, "distinct_molecules": self.distinct}
        return {**counts, **columns, "invalid": self.invalid}


def moses_metrics(
    generated: Sequence[str],
    references: dict[str, ReferenceSet],
    training: set[str] | None,
    filter_directory: str | Path,
    workers: int = 1,
) -> MosesMetrics:
    """The MOSES metrics of `generated` against `references` ({"Test": ..., "TestSF": ...}) and the
    canonical `training` SMILES (novelty is NaN without them)."""
    if not generated:
        raise ValueError("no generated SMILES to evaluate")
    described = features(generated, filter_directory, workers, "generated")
    molecules = MoleculeSet.of(described)
    valid = [feature for feature in described if feature.invalid is None]
    # Columns of reference sets not given are left out rather than reported as undefined.
    values = {column: math.nan for column in COLUMNS if "/" not in column or column.split("/")[1] in references}
    values["valid"] = molecules.validity()
    for column, k in UNIQUE_AT.items():
        values[column] = molecules.uniqueness(k)
    fragments = Counter(fragment for feature in valid for fragment in feature.fragments)
    scaffolds = Counter(feature.scaffold for feature in valid if feature.scaffold is not None)
    for suffix, reference in references.items():
        values[f"FCD/{suffix}"] = molecules.fcd((reference.fcd_mean, reference.fcd_covariance))
        values[f"SNN/{suffix}"] = molecules.nearest_neighbour_similarity(reference.fingerprints, f"SNN/{suffix}")
        values[f"Frag/{suffix}"] = cosine_similarity(fragments, reference.fragments)
        values[f"Scaf/{suffix}"] = cosine_similarity(scaffolds, reference.scaffolds)
    values["IntDiv"], values["IntDiv2"] = molecules.internal_diversity((1, 2))
    if valid:
        values["Filters"] = sum(feature.passes_filters for feature in valid) / len(valid)
    if training is not None:
        values["Novelty"] = molecules.novelty(training)
    return MosesMetrics(len(generated), molecules.valid, molecules.distinct, values, molecules.invalid)


def build_moses_directory(source: str | Path, destination: str | Path, workers: int = 1) -> list[Path]:
    """Write the precomputed MOSES statistics of the test sets in `source` (a directory with test.csv.gz,
    test_scaffolds.csv.gz and train.csv.gz) into `destination`, with the canonical training SMILES
    (sorted, one per line): how `data/moses/` was made (see data_cards/moses.md)."""
    source, destination = Path(source), Path(destination)
    written = []
    for name in REFERENCE_SETS.values():
        smiles = read_smiles_column(source / f"{name}.csv.gz")
        written += write_reference_statistics(reference_set(name, smiles, workers), destination)
    training = sorted(training_set(read_smiles_column(source / TRAIN_RAW), workers))
    with gzip.GzipFile(destination / TRAIN_CANONICAL, "wb", mtime=0) as handle:
        handle.write("".join(f"{smiles}\n" for smiles in training).encode())
    return [*written, destination / TRAIN_CANONICAL]
