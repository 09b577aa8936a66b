"""RDKit checks on SMILES strings: validity and canonical form."""

from __future__ import annotations

from rdkit import Chem, rdBase


def _molecule(smiles: str) -> Chem.Mol | None:
    # RDKit logs every parse failure to stderr; callers get the failure as a return value instead.
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles) if smiles else None


def is_valid(smiles: str) -> bool:
    """Whether RDKit parses `smiles` into a molecule (including valence checks); the empty string is not."""
    return _molecule(smiles) is not None


def canonicalize(smiles: str, isomeric: bool = True) -> str | None:
    """RDKit's canonical SMILES of `smiles`, or None when it is not a valid molecule.

    With `isomeric=False` stereochemistry and isotopes are dropped, so stereoisomers compare equal.
    """
    molecule = _molecule(smiles)
    return None if molecule is None else Chem.MolToSmiles(molecule, isomericSmiles=isomeric)
