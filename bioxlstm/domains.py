"""The sequence domains, one record each: the only place where a domain is spelled out.

Code elsewhere asks a domain what it can do (`has_strands`, `reads_homologs`, `molecule_sets`)
instead of comparing names, and finds a domain by name in the registry `DOMAINS`, so adding a domain
is one `register_domain(Domain(...))` call plus its tokenizer file (built by `bioxlstm.tokenization`;
the built-in ones live in `tokenizers/<name>/`). The built-in domains below register the same way.
"""

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Alphabet:
    """What a sequence of one domain may contain, as a regular expression for a single token."""

    domain: str
    token_pattern: str
    description: str
    unknown_symbol: str | None

    @functools.cached_property
    def _longest_valid_prefix(self) -> re.Pattern[str]:
        return re.compile(f"(?:{self.token_pattern})*")

    def invalid_position(self, sequence: str, start: int = 0) -> int | None:
        """0-based index of the first character at or after `start` that starts no token, or None."""
        end = self._longest_valid_prefix.match(sequence, start).end()
        return None if end == len(sequence) else end


@dataclass(frozen=True)
class Domain:
    name: str  # the value of `config.domain`, the folder of the bundled tokenizer
    display_name: str  # for model cards and messages
    alphabet: Alphabet
    output_format: str  # how generated sequences are written when no file extension says it
    default_model: str | None = None  # the bundled model of the domain, if it has one
    # The folder of its `tokenizer.json`; None: the tokenizer bundled with bioxlstm (`tokenizers/<name>/`).
    tokenizer_directory: Path | None = None
    # Watson-Crick pairs: sequences have two strands (reverse-complement invariance, RC-PS).
    complementary_bases: Mapping[str, str] = field(default_factory=dict)
    reads_homologs: bool = False  # a family of homologs (A3M, Stockholm, FASTA) can be the context
    molecule_sets: bool = False  # chemistry metrics apply; in-context sets are molecules joined by `separator`
    separator: str | None = None
    # Tokens outside the alphabet that generation may still sample (e.g. the characters of bracket
    # atoms, which converted Chem-xLSTM tokenizers spell one by one).
    sampleable_pieces: str | None = None

    @property
    def has_strands(self) -> bool:
        return bool(self.complementary_bases)


DNA_BASES = "ACGTN"
IUPAC_AMBIGUITY_CODES = "RYSWKMBDHV"
PROTEIN_RESIDUES = "ACDEFGHIKLMNPQRSTVWY" + "XBUZO"
# Bracket atoms first so that their content is never split; two-letter halogens before one-letter atoms.
SMILES_TOKEN_PATTERN = r"\[[^\[\]]+\]|Br|Cl|[BCNOPSFI]|[bcnops]|%\d{2}|\d|[=#$/\\\-+()\.:~@?>*]"
MOLECULE_SEPARATOR = "."

# Every domain by name; `register_domain` adds to it, so code that reads it sees domains registered later.
DOMAINS: dict[str, Domain] = {}


def register_domain(domain: Domain) -> Domain:
    """Make `domain` known to the tokenizers, the data readers, recipes and commands; returns it.
    ValueError when its name is taken or its alphabet belongs to another domain."""
    if domain.name in DOMAINS:
        raise ValueError(f"domain {domain.name!r} is already registered")
    if domain.alphabet.domain != domain.name:
        raise ValueError(f"domain {domain.name!r} has the alphabet of domain {domain.alphabet.domain!r}")
    DOMAINS[domain.name] = domain
    return domain


DNA = register_domain(Domain(
    name="dna",
    display_name="DNA",
    alphabet=Alphabet(
        "dna",
        f"(?i:[{DNA_BASES}{IUPAC_AMBIGUITY_CODES}])",
        f"{DNA_BASES} and IUPAC codes {IUPAC_AMBIGUITY_CODES}, any case",
        "N",
    ),
    output_format="fasta",
    default_model="dna",
    complementary_bases={"A": "T", "T": "A", "C": "G", "G": "C"},
))
PROTEIN = register_domain(Domain(
    name="protein",
    display_name="protein",
    alphabet=Alphabet("protein", f"(?i:[{PROTEIN_RESIDUES}])", f"{PROTEIN_RESIDUES}, any case", "X"),
    output_format="fasta",
    default_model="protein",
    reads_homologs=True,
))
SMILES = register_domain(Domain(
    name="smiles",
    display_name="small molecules (SMILES)",
    alphabet=Alphabet("smiles", SMILES_TOKEN_PATTERN, "atom-level SMILES tokens", None),
    output_format="smiles",
    default_model="chem",
    molecule_sets=True,
    separator=MOLECULE_SEPARATOR,
    sampleable_pieces=r"[A-Za-z0-9\[\]()=#$/\\\-+.:~@?>*%]+",
))


def get_domain(name: str) -> Domain:
    """The record of the domain called `name`; ValueError naming the known ones otherwise."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; expected one of {', '.join(DOMAINS)}")
    return DOMAINS[name]


def allows(name: str | None, capability: str) -> bool:
    """Whether a model of the domain called `name` can do what the `Domain` attribute `capability`
    (e.g. "has_strands", "reads_homologs", "molecule_sets") says; a model without a domain is
    trusted to, since nothing says otherwise."""
    return name is None or (name in DOMAINS and bool(getattr(DOMAINS[name], capability)))
