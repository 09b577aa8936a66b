"""Molecules as SMILES strings, with RDKit: validity, canonical form, and the metrics of a set of
generated molecules. Each metric is implemented once, here, as MOSES (Polykovskiy et al. 2020,
"Molecular Sets") and its reference code define it; `evaluate chem`, `evaluate chem-in-context`,
`chem_metrics` and the MOSES benchmark (`bioxlstm.moses`, which adds the benchmark's fragment,
scaffold and filter columns and its reference sets) all compute them with this code.

A set of SMILES is read once (`MoleculeSet`): RDKit parses every entry a single time, and what the
metrics need of a valid molecule (its canonical SMILES and its fingerprint) is kept; only an invalid
entry is read again, unsanitised, to say what is wrong with it. Of a generated set:
- validity: the fraction that RDKit parses (valence checks included); the empty string is invalid.
  Every metric below is taken over the valid molecules only, in RDKit's (isomeric) canonical form,
  repeats kept, unless it says "distinct".
- uniqueness: distinct molecules among the valid ones, as a fraction of the valid ones; MOSES'
  unique@k takes the first k valid ones (all of them when there are fewer).
- novelty: the fraction of the distinct valid molecules that are not in the training set (compared
  by canonical SMILES, so two spellings of one molecule match).
- internal diversity (MOSES' IntDiv for p=1, IntDiv2 for p=2): 1 - the mean over the valid molecules
  x of (the mean over all valid molecules y, x itself included, of T(x, y)^p)^(1/p), T the Tanimoto
  similarity of Morgan fingerprints of radius 2 and 1024 bits. A molecule generated n times counts n
  times: a generator that repeats itself is less diverse. Two fingerprints without any set bit have
  similarity 1, as in MOSES.
- nearest-neighbour similarity (MOSES' SNN): the mean over the valid molecules of T to the most
  similar molecule of a reference set.
- FCD: the Fréchet ChemNet Distance between the ChemNet activations (the `fcd` package's network) of
  the valid molecules and those of a reference set's valid molecules, both canonical. `fcd.get_fcd`
  itself neither checks nor canonicalises: it one-hot encodes any string, so an invalid SMILES would
  move the distance and two spellings of one molecule would embed differently. FCD fits a Gaussian
  to each set: on a few dozen molecules it is defined but noisy, so compare such numbers only across
  many sets.
- invalid, by kind (`invalid_kind`): syntax (RDKit cannot even read the string: an unclosed branch
  or ring, a bond with nothing after it; the empty string), kekulization (an aromatic system that has
  no Kekulé form, or an aromatic atom outside a ring), valence (an atom with more bonds than its
  element allows) and other (any other sanitisation failure).

A metric whose denominator is empty (no valid molecules; fewer than two for internal diversity and
FCD) is NaN: undefined rather than zero. (MOSES' formula gives one molecule the internal diversity
0, its similarity to itself; one molecule has no diversity to measure.)
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import numpy as np

from .progress import progress as progress_bar

if TYPE_CHECKING:  # RDKit is imported where it is used (the [chem] extra)
    from rdkit import Chem

MORGAN_RADIUS = 2
MORGAN_BITS = 1024
INVALID_KINDS = ("syntax", "kekulization", "valence", "other")

# Rows per matrix product: a (8192 x 4096) float32 block of similarities is 128 MiB.
_REFERENCE_CHUNK = 8192
_QUERY_CHUNK = 4096


# ---------------------------------------------------------------------------------------------
# One SMILES


def molecule_from_smiles(smiles: str) -> Chem.Mol | None:
    """The RDKit molecule of `smiles` (sanitised: valence checks included), or None when it is not a
    valid molecule; the empty string is not."""
    # RDKit and fcd are imported where used: `import bioxlstm` reaches this module, and the base
    # install (without the [chem] extra) has neither.
    from rdkit import Chem, rdBase

    # RDKit logs every parse failure to stderr; callers get the failure as a return value instead.
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles) if smiles else None


def is_valid(smiles: str) -> bool:
    """Whether RDKit parses `smiles` into a molecule (including valence checks); the empty string is not."""
    return molecule_from_smiles(smiles) is not None


def invalid_kind(smiles: str) -> str | None:
    """Why `smiles` is not a valid molecule, as one of `INVALID_KINDS`; None when it is valid."""
    return None if is_valid(smiles) else _why_invalid(smiles)


def _why_invalid(smiles: str) -> str:
    """The kind of a SMILES that RDKit refuses: read again without sanitisation, the checks that
    sanitisation runs say which one fails."""
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        molecule = Chem.MolFromSmiles(smiles, sanitize=False) if smiles else None
        if molecule is None:
            return "syntax"
        problems = Chem.DetectChemistryProblems(molecule)
    if not problems:  # what the checks miss, the full parse still refused
        return "other"
    kind = problems[0].GetType()
    if kind in ("KekulizeException", "AtomKekulizeException"):
        return "kekulization"
    return "valence" if kind == "AtomValenceException" else "other"


def invalid_counts(smiles: Iterable[str]) -> dict[str, int]:
    """How many of `smiles` are invalid, by kind (every kind present, zero or not)."""
    return _count_kinds(map(invalid_kind, smiles))


def _count_kinds(kinds: Iterable[str | None]) -> dict[str, int]:
    counts = dict.fromkeys(INVALID_KINDS, 0)
    for kind in kinds:
        if kind is not None:
            counts[kind] += 1
    return counts


def canonicalize(smiles: str, isomeric: bool = True) -> str | None:
    """RDKit's canonical SMILES of `smiles`, or None when it is not a valid molecule.

    With `isomeric=False` stereochemistry and isotopes are dropped, so stereoisomers compare equal.
    """
    from rdkit import Chem

    molecule = molecule_from_smiles(smiles)
    return None if molecule is None else Chem.MolToSmiles(molecule, isomericSmiles=isomeric)


def random_spellings(smiles: str, count: int, seed: int) -> list[str]:
    """Up to `count` other SMILES of the molecule `smiles`: RDKit's spellings from random atom orders
    (stereochemistry and isotopes kept), drawn with `seed`, without repeats or `smiles` itself; none
    when `smiles` is not a valid molecule."""
    from rdkit import Chem

    molecule = molecule_from_smiles(smiles)
    if molecule is None or count < 1:
        return []
    # RDKit reads randomSeed as a signed 32-bit int and draws unseeded from any seed beyond it.
    spellings = dict.fromkeys(Chem.MolToRandomSmilesVect(molecule, count, randomSeed=seed % 2**31))
    spellings.pop(smiles, None)
    return list(spellings)


def valid_canonical(smiles: Iterable[str]) -> list[str]:
    """The canonical SMILES of the valid entries, in order, repeats kept."""
    return [canonical for canonical in map(canonicalize, smiles) if canonical is not None]


@lru_cache(maxsize=1)
def _fingerprint_generator():
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)


def morgan_bits(molecule: Chem.Mol) -> np.ndarray:
    """The Morgan fingerprint of `molecule` (radius 2, 1024 bits) as 0/1 uint8."""
    return _fingerprint_generator().GetFingerprintAsNumPy(molecule).astype(np.uint8)


def packed_fingerprint(molecule: Chem.Mol) -> bytes:
    """`morgan_bits` of `molecule` packed eight to a byte (numpy.packbits): one row of `fingerprint_matrix`."""
    return np.packbits(morgan_bits(molecule)).tobytes()


@dataclass(frozen=True)
class ParsedSmiles:
    """What the metrics need of one SMILES, from a single parse: a valid molecule's canonical SMILES
    and packed fingerprint, or why it is not a molecule."""

    invalid: str | None  # one of INVALID_KINDS; None for a valid molecule
    canonical: str | None = None
    fingerprint: bytes | None = None


def parse_smiles(smiles: str) -> tuple[Chem.Mol | None, ParsedSmiles]:
    """`smiles` read by RDKit once: its molecule (None when it is not a valid one), for whatever else
    a caller measures of it, and what the set metrics need of it."""
    from rdkit import Chem

    molecule = molecule_from_smiles(smiles)
    if molecule is None:
        return None, ParsedSmiles(invalid=_why_invalid(smiles))
    return molecule, ParsedSmiles(None, Chem.MolToSmiles(molecule), packed_fingerprint(molecule))


# ---------------------------------------------------------------------------------------------
# Similarity of fingerprints


def fingerprint_matrix(packed: Iterable[bytes]) -> np.ndarray:
    """Packed fingerprints stacked into one uint8 array of shape (molecules, MORGAN_BITS / 8)."""
    return np.frombuffer(b"".join(packed), dtype=np.uint8).reshape(-1, MORGAN_BITS // 8)


def _tanimoto_blocks(queries: np.ndarray, references: np.ndarray) -> Iterator:
    """Tanimoto similarities of reference chunks against query chunks: yields (query slice, reference
    slice, torch block of shape (references in chunk, queries in chunk))."""
    import torch

    query_bits = torch.from_numpy(np.unpackbits(queries, axis=1).astype(np.float32))
    query_counts = query_bits.sum(1)
    query_columns = [
        query_bits[start : start + _QUERY_CHUNK].T.contiguous() for start in range(0, len(queries), _QUERY_CHUNK)
    ]
    for start in range(0, len(references), _REFERENCE_CHUNK):
        reference_slice = slice(start, min(start + _REFERENCE_CHUNK, len(references)))
        reference_bits = torch.from_numpy(np.unpackbits(references[reference_slice], axis=1).astype(np.float32))
        reference_counts = reference_bits.sum(1, keepdim=True)
        # About 40 of the 1024 Morgan bits are set: a sparse left factor halves the work of the product.
        with warnings.catch_warnings():
            # torch's note that its sparse CSR support is in beta: nothing a user could act on.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            reference_sparse = reference_bits.to_sparse_csr()
        for index, columns in enumerate(query_columns):
            query_slice = slice(index * _QUERY_CHUNK, index * _QUERY_CHUNK + columns.shape[1])
            # Bit counts stay below 2**24, so float32 holds the intersections exactly.
            common = reference_sparse @ columns
            union = reference_counts + query_counts[None, query_slice] - common
            yield query_slice, reference_slice, torch.nan_to_num(common / union, nan=1.0)


def _progress(total: int, description: str | None, unit: str):
    """A progress bar, or none when `description` is None."""
    return progress_bar(total=total, desc=description, unit=unit, disable=description is None)


def nearest_neighbour_similarity(
    queries: np.ndarray, references: np.ndarray, description: str | None = "SNN"
) -> np.ndarray:
    """For each packed query fingerprint, the largest Tanimoto similarity to any reference fingerprint."""
    import torch

    best = torch.zeros(len(queries))
    progress = _progress(len(references), description, "ref")
    for query_slice, reference_slice, block in _tanimoto_blocks(queries, references):
        best[query_slice] = torch.maximum(best[query_slice], block.max(0).values)
        if query_slice.stop == len(queries):
            progress.update(reference_slice.stop - reference_slice.start)
    progress.close()
    return best.numpy().astype(np.float64)


def internal_diversities(
    fingerprints: np.ndarray, weights: np.ndarray, powers: Sequence[int] = (1, 2), description: str | None = "IntDiv"
) -> list[float]:
    """IntDiv for each power p of a set given as distinct packed fingerprints and their multiplicities
    (a molecule generated n times counts n times, as in MOSES, without computing its row n times)."""
    import torch

    weight = torch.from_numpy(weights.astype(np.float64))
    total = float(weight.sum())
    # For each molecule x: the sum over all molecules y (with multiplicity, x included) of T(x, y)^p.
    sums = {p: torch.zeros(len(fingerprints), dtype=torch.float64) for p in powers}
    progress = _progress(len(fingerprints), description, "mol")
    for query_slice, reference_slice, block in _tanimoto_blocks(fingerprints, fingerprints):
        block = block.double()
        for p in powers:
            sums[p][query_slice] += (block**p * weight[reference_slice, None]).sum(0)
        if query_slice.stop == len(fingerprints):
            progress.update(reference_slice.stop - reference_slice.start)
    progress.close()
    return [1.0 - float((((sums[p] / total) ** (1.0 / p)) * weight).sum() / total) for p in powers]


# ---------------------------------------------------------------------------------------------
# FCD


def chemnet_statistics(
    canonical: Sequence[str], chunk: int = 50000, description: str | None = "ChemNet"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the ChemNet activations of `canonical` (valid, canonical SMILES),
    accumulated `chunk` molecules at a time in float64: the activations of the 1.6M MOSES training
    molecules would take 3 GB, and numpy's covariance of them several times that."""
    import fcd

    if len(canonical) < 2:
        raise ValueError("FCD needs at least two valid molecules")
    model = fcd.load_ref_model()
    total, outer = None, None
    progress = _progress(len(canonical), description, "mol")
    for start in range(0, len(canonical), chunk):
        part = list(canonical[start : start + chunk])
        # fcd's n_jobs is a DataLoader's worker count: a worker process costs seconds to start, which
        # only a large set earns back by encoding SMILES beside the network.
        with fcd_warnings_silenced():
            activations = fcd.get_predictions(model, part, n_jobs=1 if len(part) > 5000 else 0).astype(np.float64)
        total = activations.sum(axis=0) if total is None else total + activations.sum(axis=0)
        outer = activations.T @ activations if outer is None else outer + activations.T @ activations
        progress.update(len(part))
    progress.close()
    mean = total / len(canonical)
    return mean, (outer - len(canonical) * np.outer(mean, mean)) / (len(canonical) - 1)


def frechet_distance(statistics: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray]) -> float:
    """The Fréchet distance of two Gaussians given as (mean, covariance)."""
    import fcd

    with fcd_warnings_silenced():
        return float(fcd.calculate_frechet_distance(mu1=statistics[0], sigma1=statistics[1], mu2=reference[0], sigma2=reference[1]))


@contextmanager
def fcd_warnings_silenced():
    """Hides the deprecation warnings that `fcd`'s own code triggers (numpy's `row_stack`, scipy's
    `sqrtm(disp=...)`): a user can do nothing about them. Only warnings attributed to `fcd`'s modules
    are hidden; the same deprecations in any other code still show."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"fcd\b")
        yield


# ---------------------------------------------------------------------------------------------
# A set of molecules


def unique_fraction(canonical: Sequence[str], k: int | None = None) -> float:
    """Distinct molecules among the first `k` (all when None) of `canonical`, as a fraction of how
    many were taken."""
    first = canonical[:k]
    return _fraction(len(set(first)), len(first))


@dataclass
class MoleculeSet:
    """A set of SMILES (generated, or a reference set) as every metric sees it, each entry parsed once.

    `canonical` holds the valid molecules' canonical SMILES in order, repeats kept; `fingerprints`
    one packed row per distinct molecule, in order of first appearance, generated `multiplicity`
    times; `invalid` counts the invalid entries by kind. `progress`: whether the long computations
    (ChemNet, IntDiv, SNN) show a progress bar."""

    size: int
    canonical: list[str]
    fingerprints: np.ndarray
    multiplicity: np.ndarray
    invalid: dict[str, int]
    progress: bool = True

    @classmethod
    def of(cls, parsed: Sequence[ParsedSmiles], progress: bool = True) -> MoleculeSet:
        """The set of these parsed SMILES."""
        valid = [entry for entry in parsed if entry.invalid is None]
        canonical = [entry.canonical for entry in valid]
        counts = Counter(canonical)
        # Spellings of one molecule have one fingerprint: any of them stands for it.
        distinct = {entry.canonical: entry.fingerprint for entry in valid}
        return cls(
            size=len(parsed),
            canonical=canonical,
            fingerprints=fingerprint_matrix(distinct.values()),
            multiplicity=np.array([counts[smiles] for smiles in distinct], dtype=np.float64),
            invalid=_count_kinds(entry.invalid for entry in parsed),
            progress=progress,
        )

    @classmethod
    def from_smiles(cls, smiles: Iterable[str], progress: bool = True) -> MoleculeSet:
        """The set of these SMILES, each parsed once."""
        return cls.of([parse_smiles(entry)[1] for entry in smiles], progress)

    @property
    def valid(self) -> int:
        return len(self.canonical)

    @property
    def distinct(self) -> int:
        return len(self.multiplicity)

    def validity(self) -> float:
        return _fraction(self.valid, self.size)

    def uniqueness(self, k: int | None = None) -> float:
        """Distinct molecules among the first `k` valid ones (all when None), as a fraction of those."""
        return unique_fraction(self.canonical, k)

    def novelty(self, training: set[str]) -> float:
        """Fraction of the distinct valid molecules whose canonical SMILES are not in `training`."""
        distinct = set(self.canonical)
        return _fraction(len(distinct - training), len(distinct))

    def internal_diversity(self, powers: Sequence[int] = (1,)) -> list[float]:
        """IntDiv for each power p (1: IntDiv, 2: IntDiv2); NaN with fewer than two valid molecules."""
        if self.valid < 2:
            return [math.nan] * len(powers)
        return internal_diversities(self.fingerprints, self.multiplicity, powers, self._description("IntDiv"))

    def nearest_neighbour_similarity(self, reference_fingerprints: np.ndarray, description: str = "SNN") -> float:
        """SNN: the mean over the valid molecules of the Tanimoto similarity to the nearest reference molecule."""
        if not self.valid:
            return math.nan
        nearest = nearest_neighbour_similarity(self.fingerprints, reference_fingerprints, self._description(description))
        return float((nearest * self.multiplicity).sum() / self.multiplicity.sum())

    @cached_property
    def fcd_statistics(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Mean and covariance of the ChemNet activations of the valid molecules; None with fewer than two."""
        return chemnet_statistics(self.canonical, description=self._description("ChemNet")) if self.valid >= 2 else None

    def fcd(self, reference_statistics: tuple[np.ndarray, np.ndarray] | None) -> float:
        """FCD to a set with these ChemNet statistics (`fcd_statistics`); NaN when either is undefined."""
        if self.fcd_statistics is None or reference_statistics is None:
            return math.nan
        return frechet_distance(self.fcd_statistics, reference_statistics)

    def metrics(self, reference: MoleculeSet | None = None, training: set[str] | None = None) -> ChemMetrics:
        """The metrics of this generated set; FCD needs the `reference` set and novelty the canonical
        `training` SMILES."""
        if not self.size:
            raise ValueError("no generated SMILES to evaluate")
        (internal_diversity,) = self.internal_diversity()
        return ChemMetrics(
            generated=self.size,
            valid=self.valid,
            unique=self.distinct,
            validity=self.validity(),
            uniqueness=self.uniqueness(),
            internal_diversity=internal_diversity,
            novelty=None if training is None else self.novelty(training),
            fcd=None if reference is None else self.fcd(reference.fcd_statistics),
            invalid=self.invalid,
        )

    def _description(self, name: str) -> str | None:
        return name if self.progress else None


@dataclass
class ChemMetrics:
    """The metrics of one generated set (see the module docstring); counts are of the generated set."""

    generated: int
    valid: int
    unique: int
    validity: float
    uniqueness: float
    internal_diversity: float
    novelty: float | None = None  # None when no training set was given
    fcd: float | None = None  # None when no reference set was given
    invalid: dict[str, int] | None = None  # invalid samples by kind (`invalid_counts`)

    def as_dict(self) -> dict:
        """The metrics as JSON-ready values: NaN (undefined) becomes None."""
        return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in asdict(self).items()}


def chem_metrics(
    generated: Sequence[str], reference: Sequence[str] | None = None, training: Iterable[str] | None = None
) -> ChemMetrics:
    """All metrics of `generated`; FCD needs the `reference` set and novelty the `training` set."""
    return MoleculeSet.from_smiles(generated).metrics(
        reference=None if reference is None else MoleculeSet.from_smiles(reference),
        training=None if training is None else set(valid_canonical(training)),
    )


def validity(smiles: Sequence[str]) -> float:
    """Fraction of `smiles` that are valid molecules."""
    return MoleculeSet.from_smiles(smiles).validity()


def uniqueness(smiles: Sequence[str]) -> float:
    """Distinct molecules among the valid entries of `smiles`, as a fraction of the valid entries."""
    return MoleculeSet.from_smiles(smiles).uniqueness()


def novelty(smiles: Sequence[str], training: Iterable[str]) -> float:
    """Fraction of the distinct valid molecules of `smiles` that are not among the `training` molecules."""
    return MoleculeSet.from_smiles(smiles).novelty(set(valid_canonical(training)))


def internal_diversity(smiles: Sequence[str]) -> float:
    """IntDiv (p=1) of the valid entries of `smiles`: see the module docstring."""
    return MoleculeSet.from_smiles(smiles).internal_diversity()[0]


def frechet_chemnet_distance(generated: Sequence[str], reference: Sequence[str]) -> float:
    """FCD between the valid molecules of `generated` and of `reference`, in canonical form; NaN
    when either has fewer than two valid molecules (no covariance to compare)."""
    return MoleculeSet.from_smiles(generated).fcd(MoleculeSet.from_smiles(reference).fcd_statistics)


def _fraction(part: float, whole: int) -> float:
    return part / whole if whole else math.nan
