"""Chemistry on SMILES strings with RDKit: validity, canonical form, and the metrics of a generated set.

Metrics of a set of generated SMILES (`chem_metrics` computes them all):
- validity: the fraction that RDKit parses (valence checks included); the empty string is invalid.
- uniqueness: distinct molecules (by isomeric canonical SMILES) among the valid ones, as a fraction
  of the valid ones.
- novelty: the fraction of those distinct molecules that are not in the training set (compared by
  canonical SMILES, so two spellings of one molecule match).
- internal diversity: 1 - the mean Tanimoto similarity over all pairs of valid molecules (repeats
  included: a generator that repeats itself is less diverse), on Morgan fingerprints of radius 2 and
  2048 bits.
- invalid, by kind (`invalid_kind`): syntax (RDKit cannot even read the string: an unclosed branch
  or ring, a bond with nothing after it; the empty string), kekulization (an aromatic system that has
  no Kekulé form, or an aromatic atom outside a ring), valence (an atom with more bonds than its
  element allows) and other (any other sanitisation failure).
- FCD, the Fréchet ChemNet Distance of the `fcd` package between the valid generated molecules and
  the valid reference molecules. `fcd.get_fcd` itself neither checks nor canonicalises: it one-hot
  encodes any string, so an invalid SMILES would still move the distance, and two spellings of one
  molecule embed differently. Both sets are therefore reduced to the RDKit-canonical SMILES of their
  valid molecules first: the input that the package's own `fcd.canonical_smiles` helper prepares
  (same RDKit call; it marks invalid SMILES as None). FCD fits a Gaussian to each set: on a few
  dozen molecules it is defined but noisy, so compare such numbers only across many sets.

A metric whose denominator is empty (no valid molecules; fewer than two for diversity and FCD) is
NaN: undefined rather than zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import fcd
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator

MORGAN_RADIUS = 2
MORGAN_BITS = 2048


def _molecule(smiles: str) -> Chem.Mol | None:
    # RDKit logs every parse failure to stderr; callers get the failure as a return value instead.
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles) if smiles else None


def is_valid(smiles: str) -> bool:
    """Whether RDKit parses `smiles` into a molecule (including valence checks); the empty string is not."""
    return _molecule(smiles) is not None


INVALID_KINDS = ("syntax", "kekulization", "valence", "other")


def invalid_kind(smiles: str) -> str | None:
    """Why `smiles` is not a valid molecule, as one of `INVALID_KINDS`; None when it is valid."""
    with rdBase.BlockLogs():
        molecule = Chem.MolFromSmiles(smiles, sanitize=False) if smiles else None
        if molecule is None:
            return "syntax"
        problems = Chem.DetectChemistryProblems(molecule)
    if not problems:  # what the checks miss, the full parse still catches
        return None if is_valid(smiles) else "other"
    kind = problems[0].GetType()
    if kind in ("KekulizeException", "AtomKekulizeException"):
        return "kekulization"
    return "valence" if kind == "AtomValenceException" else "other"


def invalid_counts(smiles: Iterable[str]) -> dict[str, int]:
    """How many of `smiles` are invalid, by kind (every kind present, zero or not)."""
    counts = dict.fromkeys(INVALID_KINDS, 0)
    for kind in map(invalid_kind, smiles):
        if kind is not None:
            counts[kind] += 1
    return counts


def canonicalize(smiles: str, isomeric: bool = True) -> str | None:
    """RDKit's canonical SMILES of `smiles`, or None when it is not a valid molecule.

    With `isomeric=False` stereochemistry and isotopes are dropped, so stereoisomers compare equal.
    """
    molecule = _molecule(smiles)
    return None if molecule is None else Chem.MolToSmiles(molecule, isomericSmiles=isomeric)


def random_spellings(smiles: str, count: int, seed: int) -> list[str]:
    """Up to `count` other SMILES of the molecule `smiles`: RDKit's spellings from random atom orders
    (stereochemistry and isotopes kept), drawn with `seed`, without repeats or `smiles` itself; none
    when `smiles` is not a valid molecule."""
    molecule = _molecule(smiles)
    if molecule is None or count < 1:
        return []
    # RDKit reads randomSeed as a signed 32-bit int and draws unseeded from any seed beyond it.
    spellings = dict.fromkeys(Chem.MolToRandomSmilesVect(molecule, count, randomSeed=seed % 2**31))
    spellings.pop(smiles, None)
    return list(spellings)


def valid_canonical(smiles: Iterable[str]) -> list[str]:
    """The canonical SMILES of the valid entries, in order, repeats kept."""
    return [canonical for canonical in map(canonicalize, smiles) if canonical is not None]


def validity(smiles: Sequence[str]) -> float:
    """Fraction of `smiles` that are valid molecules."""
    return _fraction(len(valid_canonical(smiles)), len(smiles))


def uniqueness(smiles: Sequence[str]) -> float:
    """Distinct molecules among the valid entries of `smiles`, as a fraction of the valid entries."""
    valid = valid_canonical(smiles)
    return _fraction(len(set(valid)), len(valid))


def novelty(smiles: Sequence[str], training: Iterable[str]) -> float:
    """Fraction of the distinct valid molecules of `smiles` that are not among the `training` molecules."""
    distinct = set(valid_canonical(smiles))
    return _fraction(len(distinct - set(valid_canonical(training))), len(distinct))


def internal_diversity(smiles: Sequence[str]) -> float:
    """1 - mean Tanimoto similarity of Morgan fingerprints over all pairs of valid entries of `smiles`."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    fingerprints = [generator.GetFingerprint(_molecule(canonical)) for canonical in valid_canonical(smiles)]
    pairs = len(fingerprints) * (len(fingerprints) - 1) // 2
    total = sum(
        sum(DataStructs.BulkTanimotoSimilarity(fingerprint, fingerprints[index + 1 :]))
        for index, fingerprint in enumerate(fingerprints)
    )
    return 1.0 - _fraction(total, pairs)


def frechet_chemnet_distance(generated: Sequence[str], reference: Sequence[str]) -> float:
    """FCD between the valid molecules of `generated` and of `reference`, in canonical form; NaN
    when either has fewer than two valid molecules (no covariance to compare)."""
    generated, reference = valid_canonical(generated), valid_canonical(reference)
    if min(len(generated), len(reference)) < 2:
        return math.nan
    with fcd_warnings_silenced():
        return float(fcd.get_fcd(generated, reference))


@contextmanager
def fcd_warnings_silenced():
    """Hides the deprecation warnings that `fcd`'s own code triggers (numpy's `row_stack`, scipy's
    `sqrtm(disp=...)`): a user can do nothing about them. Only warnings attributed to `fcd`'s modules
    are hidden; the same deprecations in any other code still show."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"fcd\b")
        yield


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
    if not generated:
        raise ValueError("no generated SMILES to evaluate")
    valid = valid_canonical(generated)
    return ChemMetrics(
        generated=len(generated),
        valid=len(valid),
        unique=len(set(valid)),
        validity=_fraction(len(valid), len(generated)),
        uniqueness=_fraction(len(set(valid)), len(valid)),
        internal_diversity=internal_diversity(valid),
        novelty=None if training is None else novelty(valid, training),
        fcd=None if reference is None else frechet_chemnet_distance(valid, reference),
        invalid=invalid_counts(generated),
    )


def _fraction(part: float, whole: int) -> float:
    return part / whole if whole else math.nan
