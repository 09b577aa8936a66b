"""Valid by construction: a `transformers` logits processor that lets a SMILES model write only what
can still become a molecule.

`SmilesGrammar` keeps, for every row of a batch, the state of the SMILES read so far and, before each
token is drawn, sets the score of every token that cannot continue it to -inf. The state has two halves:

- syntax: open branches, open ring labels (with the bond written at the opening), whether an atom or
  a bond is due, the bond waiting for its atom. Ending (the end tokens, or the separator `.`) needs no
  open branch, no open ring and no bond waiting.
- chemistry: every atom's bonds, and its valence (RDKit's largest allowed valence of its element and
  charge, less explicit hydrogens): a bond, branch or ring that exceeds it is refused. Aromatic atoms
  keep their aromatic bonds, and an aromatic system must stay kekulizable. An atom of a SMILES string
  only gets new bonds while it is the last atom, the root of an open branch or holds an open ring
  label; once none of these, its bonds are final. So before a token finishes aromatic atoms (the next
  atom, `)`, a ring closure, the end), or takes from an open one the double bond it could give a
  neighbour, the processor checks that every finished aromatic atom that needs a double bond (a `c`,
  an `n` with two bonds, `[nH+]`, ...) can get one from a neighbour across an aromatic bond: a
  matching in which still-open atoms may take part. Every aromatic atom needs two aromatic ring
  bonds: one that has fewer and can get no more is refused (`[nH]` after a chain atom, say). A bond
  between aromatic atoms lies in a ring only if a ring closes around it, and RDKit reads it as single
  otherwise: one to a new atom where no ring is open and no branch waits never will, and at the end a
  molecule with such a bond is checked as a whole as RDKit reads it.

These are necessary conditions, not RDKit's whole sanitisation: the grammar never refuses a molecule
RDKit accepts (tested on the MOSES test set), and a few invalid ones still pass (unusual charges). A
token can lead into a state that no token passes; one token ahead, the processor sees it and refuses
that token too: a bond or `(` after an aromatic atom, a ring label or `)` that fills an atom or
leaves an aromatic atom that must go on (`_continues_after`). Two tokens ahead it does not look: a
row that reaches a state no token passes can no longer become a molecule, keeps the syntax alone and
is steered to its end. A row whose model wants to end where the grammar cannot yet, or that nears
`max_new_tokens`, is steered to the end too (`SmilesState.steered_to_the_end`), unless nothing it
would write leads towards an end without opening a ring first: then it goes on unsteered. Where the mask and
the other processors' scores leave a row no token at all, the row is left unconstrained: a processor
must never make sampling fail.

Special tokens (`<cls>`, `<pad>`, the end tokens) and `.` start a new molecule, so prompts with
molecules in context, padding and the rows that already ended need nothing special. Rows are
followed by the tokens they hold, not by their position, so beam search, which reorders rows
between steps, is followed too. A prompt that the grammar cannot read raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

__all__ = ["SmilesGrammar", "SmilesState", "SmilesVocabulary", "grammar_for"]

BOND_ORDERS = {"-": 1, "/": 1, "\\": 1, ":": 1, "=": 2, "#": 3, "$": 4}
ORGANIC_ALIPHATIC = {"B", "C", "N", "O", "P", "S", "F", "Cl", "Br", "I"}
ORGANIC_AROMATIC = {"b", "c", "n", "o", "p", "s"}
# Elements whose valence RDKit checks by the table below; any other (metals) is not limited.
_NONMETALS = {"H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I"}
_BRACKET = re.compile(
    r"\[(?P<isotope>\d+)?(?P<symbol>[A-Z][a-z]?|[a-z][a-z]?|\*)(?P<chirality>@[A-Z]{2}\d*|@@?)?"
    r"(?P<hydrogens>H\d*)?(?P<charge>[+-]+\d*)?(?::\d+)?\]"
)
_RING_LABEL = re.compile(r"\d|%\d\d")
_UNLIMITED = 99

# Token kinds
ATOM, BOND, OPEN, CLOSE, RING, DOT, RESET, NEVER = range(8)


@dataclass(frozen=True)
class AtomSpec:
    symbol: str
    aromatic: bool
    hydrogens: int  # explicit, in brackets; organic-subset atoms get theirs implicitly
    valences: tuple[int, ...]  # allowed total valences, ascending; (_UNLIMITED,) when not checked
    carbon_like: bool  # an aromatic atom that always takes one double bond (c, [c-] aside)

    @cached_property  # asked for every bond the grammar weighs
    def max_valence(self) -> int:
        return self.valences[-1] - self.hydrogens


def _valences(symbol: str, charge: int) -> tuple[int, ...]:
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    element = symbol.capitalize()
    if element not in _NONMETALS:
        return (_UNLIMITED,)
    # RDKit's rule for charged main-group atoms: valence of the isoelectronic element ([N+] like C).
    number = table.GetAtomicNumber(element) - charge
    if number < 1:
        return (_UNLIMITED,)
    valences = tuple(v for v in table.GetValenceList(number) if v >= 0)
    return tuple(sorted(valences)) if valences and -1 not in table.GetValenceList(number) else (_UNLIMITED,)


def atom_spec(token: str) -> AtomSpec | None:
    """What a SMILES atom token means to the grammar; None when `token` is not an atom."""
    if token in ORGANIC_ALIPHATIC or token in ORGANIC_AROMATIC:
        aromatic = token in ORGANIC_AROMATIC
        return AtomSpec(token, aromatic, 0, _valences(token, 0), token == "c")
    if token == "*":
        return AtomSpec("*", False, 0, (_UNLIMITED,), False)
    match = _BRACKET.fullmatch(token)
    if match is None:
        return None
    symbol = match["symbol"]
    hydrogens = match["hydrogens"]
    hydrogens = 0 if hydrogens is None else int(hydrogens[1:] or 1)
    charge_text = match["charge"] or ""
    if charge_text:
        sign = 1 if charge_text[0] == "+" else -1
        digits = charge_text.lstrip("+-")
        charge = sign * (int(digits) if digits else len(charge_text))
    else:
        charge = 0
    aromatic = symbol[0].islower() and symbol != "*"
    valences = _valences(symbol, charge)
    return AtomSpec(symbol, aromatic, hydrogens, valences, aromatic and symbol == "c" and charge == 0)


class Allowed(NamedTuple):
    """The tokens allowed in a state, as a mask and as Python bools: per-token questions (is this
    token allowed, may the row end) are asked of the list, which costs no torch call."""

    mask: torch.Tensor
    tokens: list[bool]
    none: bool  # no token at all


class SmilesVocabulary:
    """The tokens of a SMILES tokenizer, classified once: kind, atom meaning, bond order, ring label."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, ends: list[int] | None = None):
        if not atom_level(tokenizer):
            raise ValueError("the SMILES grammar reads atom-level tokens; this tokenizer spells bracket atoms out")
        vocab = tokenizer.get_vocab()
        self.size = max(len(tokenizer), max(vocab.values()) + 1)
        specials = set(tokenizer.all_special_ids)
        self.ends = sorted(set([tokenizer.eos_token_id] if ends is None else ends) - {None})
        self.kind = [NEVER] * self.size
        self.atom: list[AtomSpec | None] = [None] * self.size
        self.order = [0] * self.size
        self.text = [""] * self.size
        for token, index in vocab.items():
            self.text[index] = token
            spec = atom_spec(token)
            if index in specials or index in self.ends:
                kind = RESET
            elif token == ".":
                kind = DOT
            elif spec is not None:
                kind, self.atom[index] = ATOM, spec
            elif token in BOND_ORDERS:
                kind, self.order[index] = BOND, BOND_ORDERS[token]
            elif token == "(":
                kind = OPEN
            elif token == ")":
                kind = CLOSE
            elif _RING_LABEL.fullmatch(token):
                kind = RING
            else:
                kind = NEVER
            self.kind[index] = kind
        self.masks: dict[tuple, Allowed] = {}  # by state key
        self.dot = vocab.get(".")
        self.ring_labels = [i for i in range(self.size) if self.kind[i] == RING]
        self.bonds = [i for i in range(self.size) if self.kind[i] == BOND]
        self.open = vocab.get("(")
        self.close = vocab.get(")")
        atoms = [i for i in range(self.size) if self.kind[i] == ATOM]
        aliphatic = [i for i in atoms if not self.atom[i].aromatic]
        aromatic = [i for i in atoms if self.atom[i].aromatic]
        # Atoms that can take a first bond of order k (k = 0: a molecule's first atom): the syntax
        # alone, and the first atom, ask no more.
        self.atoms_taking = {k: frozenset(i for i in atoms if _takes(self.atom[i], (k,))) for k in range(5)}
        # With chemistry: aliphatic atoms by the order of their first bond, and whether they must
        # keep room for one more; aromatic atoms by the order of their first bond and whether it is
        # aromatic. An aromatic atom needs two aromatic (ring) bonds: after an aromatic bond it
        # must have room for one more, after another bond for two more.
        self.aliphatic_atoms = {
            (k, room): frozenset(i for i in aliphatic if _takes(self.atom[i], (k, 1) if room else (k,)))
            for k in range(5)
            for room in (False, True)
        }
        self.aromatic_after_plain = {
            k: frozenset(i for i in aromatic if _takes(self.atom[i], (k, 1, 1))) for k in range(5)
        }
        # After an aromatic bond: the atoms that can take the double bond on it and still close
        # their ring (partners), and those that cannot (`o`, `[nH]`: donors).
        self.aromatic_partners = frozenset(i for i in aromatic if _takes(self.atom[i], (2, 1)))
        self.aromatic_donors = frozenset(
            i for i in aromatic if _takes(self.atom[i], (1, 1)) and not _takes(self.atom[i], (2, 1))
        )
        self._atoms_allowed: dict[tuple, bool] = {}

    def mask(self, key: tuple) -> Allowed:
        """The tokens allowed in a state of this key (see `SmilesState._key`)."""
        cached = self.masks.get(key)
        if cached is None:
            tokens = _build(self, key)
            cached = self.masks[key] = Allowed(torch.tensor(tokens), tokens, not any(tokens))
        return cached

    def allowed_atoms(self, atoms: tuple) -> frozenset[int]:
        """The atoms allowed by the atom part of a state's key (`SmilesState._atom_part`)."""
        order, aromatic_bond, can_take, need_room, aliphatic_ok, partner_ok, donor_ok = atoms
        if not can_take:
            return frozenset()
        if aromatic_bond is None:  # the syntax alone
            return self.atoms_taking[order]
        allowed = self.aliphatic_atoms[(order, need_room)] if aliphatic_ok else frozenset()
        if not aromatic_bond:
            return allowed | self.aromatic_after_plain[order] if aliphatic_ok else allowed
        if partner_ok:
            allowed |= self.aromatic_partners
        if donor_ok:
            allowed |= self.aromatic_donors
        return allowed

    def atoms_allowed(self, atoms: tuple) -> bool:
        known = self._atoms_allowed.get(atoms)
        if known is None:
            known = self._atoms_allowed[atoms] = bool(self.allowed_atoms(atoms))
        return known


def _takes(spec: AtomSpec, orders: tuple[int, ...], used: int = 0, has_double: bool = False) -> bool:
    """Whether an atom can take bonds of `orders`, one after another."""
    for order in orders:
        if not _fits(spec, used, has_double, order):
            return False
        used, has_double = used + order, has_double or order >= 2
    return True


def _fits(spec: AtomSpec, used: int, has_double: bool, order: int) -> bool:
    """Whether an atom with bonds of total order `used` can take one more bond of `order`. An
    aromatic carbon keeps one unit for its double bond, unless the new bond is that double bond
    or it has one already."""
    reserve = 1 if spec.carbon_like and not has_double and order < 2 else 0
    return used + order + reserve <= spec.max_valence


class GrammarError(ValueError):
    pass


class SmilesState:
    """The grammar state of one SMILES string, advanced token by token (`advance`), and the set of
    tokens that may come next (`allowed`)."""

    __slots__ = ("vocab", "chemistry", "specs", "used", "double", "aromatic_neighbours", "neighbours", "parent",
                 "ring_bond", "loose", "current", "stack", "rings", "bond", "expect_atom", "branch_start", "length",
                 "finishing", "_allowed", "_checked")  # fmt: skip

    def __init__(self, vocab: SmilesVocabulary, chemistry: bool = True):
        self.vocab, self.chemistry = vocab, chemistry
        self.reset()

    def reset(self) -> None:
        self.specs: list[AtomSpec] = []
        self.used: list[int] = []  # total bond order, aromatic bonds counted 1, open rings included
        self.double: list[bool] = []  # has a bond of order 2 or more
        self.aromatic_neighbours: list[list[int]] = []
        self.neighbours: list[set[int]] = []
        self.parent: list[int] = []  # the atom each one was written after (-1: none): ring closures aside, a tree
        # For the bond to the parent: None when it is not aromatic, else whether a ring closed so far
        # runs through it. An aromatic bond in no ring is single to RDKit; `loose` counts them.
        self.ring_bond: list[bool | None] = []
        self.loose = 0
        self.current = -1  # the last atom written
        self.stack: list[int] = []  # roots of the open branches
        self.rings: dict[int, tuple[int, int | None]] = {}  # label token -> (atom, bond token or None)
        self.bond: int | None = None  # a bond token waiting for its atom or ring label
        self.expect_atom = True
        self.branch_start = False  # between `(` and the branch's first atom: no ring label there
        self.length = 0
        self.finishing = False  # the model wanted to end here: close what is open, open nothing new
        self._allowed: Allowed | None = None  # what `allowed` found for this state
        self._checked: dict[tuple, bool] = {}  # `_finishing_ok` by its arguments, for this state

    def copy(self) -> SmilesState:
        other = SmilesState.__new__(SmilesState)
        other.vocab, other.chemistry = self.vocab, self.chemistry
        other.specs, other.used, other.double = list(self.specs), list(self.used), list(self.double)
        other.aromatic_neighbours = [list(n) for n in self.aromatic_neighbours]
        other.neighbours = [set(n) for n in self.neighbours]
        other.parent, other.ring_bond, other.loose = list(self.parent), list(self.ring_bond), self.loose
        other.current, other.stack, other.rings = self.current, list(self.stack), dict(self.rings)
        other.bond, other.expect_atom, other.length = self.bond, self.expect_atom, self.length
        other.branch_start, other.finishing = self.branch_start, self.finishing
        other._allowed, other._checked = self._allowed, {}
        return other

    # ---- reading tokens

    def advance(self, token: int) -> None:
        """Read `token`; GrammarError when the grammar does not allow it here."""
        kind = self.vocab.kind[token]
        if kind == RESET:  # a special token starts a new molecule wherever it stands (padding, <cls>)
            self.reset()
            return
        allowed = self._allowed or self.allowed()
        self._allowed = None
        if not allowed.tokens[token]:
            raise GrammarError(f"{self.vocab.text[token]!r} cannot follow here")
        self.length += 1
        self._checked = {}
        self._apply(token, kind)

    def _apply(self, token: int, kind: int) -> None:
        if kind == DOT:
            self.reset()
        elif kind == ATOM:
            self._add_atom(token)
        elif kind == BOND:
            self.bond = token
            self.expect_atom = True
        elif kind == OPEN:
            self.stack.append(self.current)
            self.expect_atom = self.branch_start = True
        elif kind == CLOSE:
            self.current = self.stack.pop()
        elif kind == RING:
            self._ring(token)

    def _bond_order(self, a: int, b_spec: AtomSpec, bond: int | None, closure: bool = False) -> tuple[int, bool]:
        """Order of a bond from atom `a` to an atom like `b_spec` written with `bond`, and whether it
        is aromatic. closure: the bond closes a ring."""
        if bond is None:
            # Between aromatic atoms, aromatic if it can lie in a ring: a bond to a new atom made
            # where no ring is open and no branch waits never will (RDKit makes it single).
            aromatic = self.specs[a].aromatic and b_spec.aromatic and (closure or not self._bridges())
            return 1, aromatic
        return self.vocab.order[bond], self.vocab.text[bond] == ":"

    def _bridges(self) -> bool:
        """Whether a bond from the current atom to a new one can never lie in a ring."""
        return not self.rings and not self.stack

    def _add_atom(self, token: int) -> None:
        spec = self.vocab.atom[token]
        index = len(self.specs)
        self.specs.append(spec)
        self.used.append(0)
        self.double.append(False)
        self.aromatic_neighbours.append([])
        self.neighbours.append(set())
        self.parent.append(self.current)
        aromatic = False
        if self.current >= 0:
            order, aromatic = self._bond_order(self.current, spec, self.bond)
            self._connect(self.current, index, order, aromatic)
        self.ring_bond.append(False if aromatic else None)
        self.loose += aromatic
        self.current, self.bond, self.expect_atom, self.branch_start = index, None, False, False

    def _connect(self, a: int, b: int, order: int, aromatic: bool, opened: int = 0) -> None:
        """Bond atoms a and b; `opened`: the order already counted on `a` when its ring label opened."""
        self.used[a] += order - opened
        self.used[b] += order
        if order >= 2:
            self.double[a] = self.double[b] = True
        if aromatic:
            self.aromatic_neighbours[a].append(b)
            self.aromatic_neighbours[b].append(a)
        self.neighbours[a].add(b)
        self.neighbours[b].add(a)

    def _ring(self, label: int) -> None:
        if label in self.rings:
            opener, opening_bond = self.rings.pop(label)
            bond = self.bond if self.bond is not None else opening_bond
            order, aromatic = self._bond_order(opener, self.specs[self.current], bond, closure=True)
            opened = self.vocab.order[opening_bond] if opening_bond is not None else 1
            self._connect(opener, self.current, order, aromatic, opened=opened)
            self._close_cycle(opener, self.current)
        else:
            order = self.vocab.order[self.bond] if self.bond is not None else 1
            self.rings[label] = (self.current, self.bond)
            self.used[self.current] += order
            if order >= 2:
                self.double[self.current] = True
        self.bond, self.expect_atom = None, False

    def _close_cycle(self, a: int, b: int) -> None:
        """Mark the written bonds on the path from `a` to `b` as ring bonds: the bond just made
        between them closes that path into a ring."""
        parent, ring_bond = self.parent, self.ring_bond
        ancestors, atom = set(), a
        while atom >= 0:
            ancestors.add(atom)
            atom = parent[atom]
        top = b
        while top not in ancestors:
            top = parent[top]
        for atom in (a, b):
            while atom != top:
                if ring_bond[atom] is False:
                    ring_bond[atom] = True
                    self.loose -= 1
                atom = parent[atom]

    # ---- what may come next

    def can_end(self) -> bool:
        return self._end_ok()

    def _syntax_can_end(self) -> bool:
        return self.current >= 0 and not self.expect_atom and not self.stack and not self.rings

    def _can_bond(self, atom: int, order: int) -> bool:
        return _fits(self.specs[atom], self.used[atom], self.double[atom], order)

    def allows(self, token: int) -> bool:
        """Whether `token` may come next."""
        return self.allowed().tokens[token]

    def allowed_mask(self) -> torch.Tensor:
        return self.allowed().mask

    def allowed(self) -> Allowed:
        key, checks = self._key()
        allowed = self.vocab.mask(key)
        if checks and allowed.none:
            # The checks are necessary conditions, not sufficient ones: a row can reach a state that
            # no token continues. No molecule can come of it any more: it keeps the syntax alone
            # and is steered to its end.
            allowed = self._syntax_only()
            self.finishing = True
        self._allowed = allowed
        return allowed

    def steered_to_the_end(self, allowed: torch.Tensor, preference: torch.Tensor, tries: int = 8) -> torch.Tensor:
        """`allowed` narrowed for a row that is to end soon: to the end where it may end, else to
        what closes an open ring or branch, else to those of the `tries` likeliest tokens by
        `preference` (scores; -inf: never) that open nothing new and after which one of these may
        come. Where none of them may, the row stops finishing and `allowed` is returned as it is. A
        narrowing that would leave nothing is skipped. (The token sets are Python's: a row steered
        costs a few torch calls, not one per set.)"""
        vocab = self.vocab
        tokens = allowed.nonzero().flatten().tolist()
        closing = {*self.rings, vocab.close} if self.stack else self.rings
        for narrower in (vocab.ends, closing):
            narrowed = [token for token in tokens if token in narrower]
            if narrowed:
                return _mask_like(allowed, narrowed)
        unopened = [label for label in vocab.ring_labels if label not in self.rings]
        opening = {vocab.open, vocab.dot, *vocab.ends, *unopened}
        scores = preference.tolist()
        candidates = [token for token in tokens if token not in opening and scores[token] > float("-inf")]
        if not candidates:
            return allowed
        ranked = preference[torch.tensor(candidates)].argsort(descending=True)[:tries].tolist()
        approaching = [candidates[i] for i in ranked if self._after(candidates[i], self._may_close_or_end)]
        if approaching:
            return _mask_like(allowed, approaching)
        # Nothing likely leads towards an end without opening something first (aromatic atoms in a
        # branch need their ring): held to what opens nothing, the row would only lengthen its chain
        # up to max_new_tokens. It goes on unsteered until its model wants to end again.
        self.finishing = False
        return allowed

    def _syntax_only(self) -> Allowed:
        chemistry, self.chemistry = self.chemistry, False
        try:
            return self.allowed()
        finally:
            self.chemistry = chemistry

    def _key(self) -> tuple[tuple, bool]:
        """Everything the mask depends on, in a hashable form (masks are cached by it), and whether
        chemistry checks went into it.

        With chemistry, a token after which no token could pass the checks is refused too (see
        `_continues_after`) where one can lead there: a bond or `(` after an aromatic atom, `)` to an
        aromatic or full root, a ring label that fills the atom or leaves an aromatic atom that must
        go on. Elsewhere an atom can always follow."""
        if self.current < 0:
            return ("start",), False
        atoms = self._atom_part()
        # after `(` no ring label; after a bond no other bond
        rings = () if self.expect_atom and self.branch_start else self._ring_part()
        bonds = () if self.bond is not None else self._bond_part(atoms)
        if self.expect_atom:
            return ("atom", atoms, rings, bonds), self.chemistry
        after = (self._branch_ok(atoms), self._close_ok(lookahead=True), self._end_ok())
        return ("after", atoms, rings, bonds, *after), self.chemistry

    def _leads_on(self) -> bool:
        """Whether `_key` without its lookahead at ring labels and `)` allows any token, asking the
        likeliest kinds first."""
        if self.current < 0:
            return True
        atoms = self._atom_part()
        if self.vocab.atoms_allowed(atoms):
            return True
        if self.expect_atom:
            if self.bond is None:  # right after `(`
                return any(self._bond_part(atoms))
            return not self.branch_start and self._ring_may_come()
        return (
            self._close_ok(lookahead=False) or self._end_ok() or self._ring_may_come() or any(self._bond_part(atoms))
            or self._branch_ok(atoms)
        )  # fmt: skip

    def _pending_order(self) -> int:
        return self.vocab.order[self.bond] if self.bond is not None else 1

    def _atom_part(self) -> tuple:
        """Which atoms may come next: (order of their bond, whether the bond to an aromatic atom is
        aromatic (None: the syntax alone), whether the current atom takes the bond, whether the atom
        must keep room for one more bond, whether an aliphatic atom, an aromatic partner, an
        aromatic donor may come (`SmilesVocabulary.aromatic_partners`))."""
        current, pending, order = self.current, self.bond, self._pending_order()
        if not self.chemistry:
            return (order, None, True, False, True, True, True)
        current_aromatic = self.specs[current].aromatic
        aromatic_bond = current_aromatic and not self._bridges() if pending is None else self.vocab.text[pending] == ":"
        aliphatic_ok = partner_ok = donor_ok = True
        if current_aromatic:
            # The next atom finishes the current one when it holds no ring label and roots no
            # branch. An aromatic bond to a new (open) atom only adds a neighbour: if the current
            # atom can be finished without it, it can with it.
            finished = {current} if self._finishes_current() else set()
            aliphatic_ok = self._finishing_ok(finished, extra=(current, order, False, False))
            if aromatic_bond and not aliphatic_ok:
                # a partner leaves more ways to pair the double bonds than a donor: try the donor first
                donor_ok = self._finishing_ok(finished, extra=(current, order, True, False))
                partner_ok = donor_ok or self._finishing_ok(finished, extra=(current, order, True, True))
        # An atom that is full where a ring is open and no branch root has room to go on leaves
        # nothing to write (no atom, no closure, no `)`, no end): there, every atom must keep room.
        need_room = bool(self.rings) and not self._escapes(order)
        return (order, aromatic_bond, self._can_bond(current, order), need_room, aliphatic_ok, partner_ok, donor_ok)

    def _ring_part(self) -> tuple[bool, ...]:
        """For each ring label (in vocabulary order), whether it may come next."""
        escapes = not self.chemistry or self._escapes(self._pending_order())
        opening_ok = self._opening_ok(escapes)
        rings = [
            self._ring_ok(label, escapes) if label in self.rings else opening_ok for label in self.vocab.ring_labels
        ]
        if self.chemistry:
            self._refuse_dead_end_rings(rings)
        return tuple(rings)

    def _ring_may_come(self) -> bool:
        """Whether some ring label may come next (without lookahead): a new ring (one check) asked
        before the closures."""
        escapes = not self.chemistry or self._escapes(self._pending_order())
        if len(self.rings) < len(self.vocab.ring_labels) and self._opening_ok(escapes):
            return True
        return any(self._ring_ok(label, escapes) for label in self.rings)

    def _opening_ok(self, escapes: bool) -> bool:
        """Whether a new ring label may open here. escapes: see `_escapes`."""
        if not self.chemistry:
            return True
        current, order = self.current, self._pending_order()
        if not self._can_bond(current, order) or not (escapes or self._room(current, order)):
            return False
        if not self.specs[current].aromatic:
            return True
        # the ring bond counts towards the two aromatic bonds an aromatic atom needs only if aromatic
        aromatic = self.bond is None or self.vocab.text[self.bond] == ":"
        if aromatic and self._partner(current, 0) == self._partner(current, order):
            return True  # the atom stays open, and what it can give its neighbours is the same
        return self._finishing_ok(set(), opening=(order, aromatic))

    def _partner(self, atom: int, added: int) -> bool:
        """Whether `atom`, given `added` more bond order, could still take a double bond."""
        return not self.double[atom] and self.used[atom] + added + 1 <= self.specs[atom].max_valence

    def _bond_part(self, atoms: tuple) -> tuple[bool, ...]:
        """For each bond token, whether it may come next. From an aromatic atom, a bond can lead
        where no atom may follow; a single bond cannot where an aliphatic atom may follow now
        (`atoms`, this state's `_atom_part`): the bond changes nothing that decides it."""
        if not self.chemistry:
            return (True,) * len(self.vocab.bonds)
        current, vocab = self.current, self.vocab
        if not self.specs[current].aromatic:
            return tuple(self._can_bond(current, vocab.order[bond]) for bond in vocab.bonds)
        single_leads_on = atoms[2] and atoms[4]
        # `-`, `/` and `\` lead to the same states unless an open ring was opened with one of them
        grouped = all(bond is None for _, bond in self.rings.values())
        answers: dict = {}
        allowed = []
        for bond in vocab.bonds:
            order, aromatic = vocab.order[bond], vocab.text[bond] == ":"
            if not self._can_bond(current, order):
                allowed.append(False)
            elif order == 1 and not aromatic and single_leads_on:
                allowed.append(True)
            else:
                group = (order, aromatic) if grouped else bond
                if group not in answers:
                    answers[group] = self._continues_after(bond)
                allowed.append(answers[group])
        return tuple(allowed)

    def _branch_ok(self, atoms: tuple) -> bool:
        """Whether `(` may come next. From an aromatic atom, it can lead where no atom may follow;
        not where an aliphatic atom or an aromatic donor may follow now (`atoms`) and the atom has
        room for the branch and one more bond: as a branch root, it stays open."""
        current = self.current
        if not self.chemistry:
            return True
        if not self._can_bond(current, 1):
            return False
        if not self.specs[current].aromatic:
            return True
        _, aromatic_bond, can_take, _, aliphatic_ok, _, donor_ok = atoms
        if can_take and (aliphatic_ok or (aromatic_bond and donor_ok and self._room(current, 1))):
            return True
        return self._continues_after(self.vocab.open)

    def _close_ok(self, lookahead: bool) -> bool:
        if not self.stack:
            return False
        if not self.chemistry:
            return True
        current, root = self.current, self.stack[-1]
        if self.specs[current].aromatic and self._finishes_current(closing=True) and not self._finishing_ok({current}):
            return False
        if self.rings and len(self.stack) == 1 and not self._room(root, 0):
            return False  # back at the top level with a ring open, the root must be able to go on
        if lookahead and (self.specs[root].aromatic or not self._can_bond(root, 1)):
            return self._continues_after(self.vocab.close)
        return True

    def _end_ok(self) -> bool:
        if not self._syntax_can_end():
            return False
        if not self.chemistry:
            return True
        if self.loose:  # some aromatic bond lies in no ring: check the whole molecule as RDKit reads it
            known = self._checked.get("whole")
            if known is None:
                known = self._checked["whole"] = self._whole_molecule_kekulizable()
            return known
        return self._finishing_ok(set(), everything=True)

    def _whole_molecule_kekulizable(self) -> bool:
        """Whether the molecule, ending here, has a Kekulé form as RDKit reads it: an aromatic bond
        in no ring is single there, and every aromatic atom needs two aromatic ring bonds."""
        parent, ring_bond = self.parent, self.ring_bond

        def in_ring(a: int, b: int) -> bool:
            if parent[a] == b:
                return ring_bond[a]
            return ring_bond[b] if parent[b] == a else True  # else a ring closure

        around, needs = {}, []
        for atom, spec in enumerate(self.specs):
            if not spec.aromatic:
                continue
            around[atom] = [other for other in self.aromatic_neighbours[atom] if in_ring(atom, other)]
            need = _needs_double(spec, self.used[atom], self.double[atom])
            if len(around[atom]) < 2 or need is None:
                return False
            if need:
                needs.append(atom)
        return _matched(needs, set(needs), around.__getitem__)

    def _escapes(self, order: int) -> bool:
        """Whether a row whose current atom is full can go on: some open branch's root has room for
        the bond after its branch. order: the bond that the next atom takes, counted on the root
        when it is the current atom (right after `(`)."""
        at_root = self.expect_atom and self.stack and self.stack[-1] == self.current
        return any(self._room(root, order if at_root and root == self.current else 0) for root in self.stack)

    def _room(self, atom: int, order: int) -> bool:
        """Whether `atom` can take a bond of `order` and still one more single bond after it."""
        return _takes(self.specs[atom], (order, 1), self.used[atom], self.double[atom])

    def _refuse_dead_end_rings(self, rings: list[bool]) -> None:
        """Refuse the ring labels (`rings`, in vocabulary order) after which no token could pass the
        checks. Two cases can lead there: the ring bond fills the current atom, or the current atom
        is aromatic and the row must go on from it (a ring stays open and no branch is left to
        close), so that its next bond can take away the double bond a neighbour needs from it.
        Every label not yet open leads to the same state, so one stands for them all."""
        current, pending = self.current, self.bond
        goes_on = self.specs[current].aromatic and not self.stack
        unopened = None
        for index, label in enumerate(self.vocab.ring_labels):
            if not rings[index]:
                continue
            if label in self.rings:
                bond = pending if pending is not None else self.rings[label][1]
                order = self.vocab.order[bond] if bond is not None else 1
                if not self._room(current, order) or (goes_on and len(self.rings) > 1):
                    rings[index] = self._continues_after(label)
            else:
                if unopened is None:
                    safe = self._room(current, self._pending_order()) and not goes_on
                    unopened = safe or self._continues_after(label)
                rings[index] = unopened

    def _continues_after(self, token: int) -> bool:
        """Whether some token may follow `token` written next. The chemistry checks are necessary
        conditions, not sufficient ones, and a token can lead into a state that no token passes:
        looking one token ahead refuses it before it is written."""
        return self._after(token, self._leads_on)

    def _may_close_or_end(self) -> bool:
        """Whether an end, `)` or the closure of an open ring may come next (without lookahead)."""
        if self.expect_atom:
            if self.branch_start:
                return False
        elif self._end_ok() or self._close_ok(lookahead=False):
            return True
        escapes = not self.chemistry or self._escapes(self._pending_order())
        return any(self._ring_ok(label, escapes) for label in self.rings)

    def _after(self, token: int, question: Callable[[], bool]) -> bool:
        """The answer to `question` with `token` written next: the token is tried in place and taken back."""
        kind = self.vocab.kind[token]
        if kind in (BOND, OPEN):
            # these bond nothing yet and keep the live atoms: what was found for this state holds
            saved = self.bond, self.expect_atom, self.branch_start
            self._apply(token, kind)
            try:
                return question()
            finally:
                if kind == OPEN:
                    self.stack.pop()
                self.bond, self.expect_atom, self.branch_start = saved
        # A ring closure marks bonds along the ring (ring_bond); an atom or a ring label bonds the
        # current atom and the ring's opener.
        ring_bond = list(self.ring_bond) if token in self.rings else self.ring_bond
        saved = (self.current, self.bond, self.expect_atom, self.branch_start, list(self.stack), dict(self.rings),
                 len(self.specs), self.loose, ring_bond, self._checked)  # fmt: skip
        touched = {self.current, self.rings.get(token, (-1,))[0]} - {-1}
        bonds = [
            (a, self.used[a], self.double[a], list(self.aromatic_neighbours[a]), set(self.neighbours[a]))
            for a in touched
        ]
        self._checked = {}  # the token bonds atoms or moves to another one: what was found here may not hold
        self._apply(token, kind)
        try:
            return question()
        finally:
            (self.current, self.bond, self.expect_atom, self.branch_start, self.stack, self.rings, count, self.loose,
             self.ring_bond, self._checked) = saved  # fmt: skip
            for a, *atom_bonds in bonds:
                self.used[a], self.double[a], self.aromatic_neighbours[a], self.neighbours[a] = atom_bonds
            for per_atom in (self.specs, self.used, self.double, self.aromatic_neighbours, self.neighbours):
                del per_atom[count:]
            del self.parent[count:], self.ring_bond[count:]

    def _finishes_current(self, closing: bool = False) -> bool:
        current = self.current
        held = any(atom == current for atom, _ in self.rings.values())
        rooted = current in (self.stack[:-1] if closing else self.stack)
        return not held and not rooted

    def _ring_ok(self, label: int, escapes: bool) -> bool:
        """Whether the open ring `label` may close here. escapes: see `_escapes`."""
        current, pending, chemistry = self.current, self.bond, self.chemistry
        opener, opening_bond = self.rings[label]
        if opener == current or opener in self.neighbours[current]:
            return False  # a second bond between two atoms
        if pending is not None and opening_bond is not None and pending != opening_bond:
            return False
        if not chemistry:
            return True
        bond = pending if pending is not None else opening_bond
        if bond is None:
            order, aromatic = 1, self.specs[opener].aromatic and self.specs[current].aromatic
        else:
            order, aromatic = self.vocab.order[bond], self.vocab.text[bond] == ":"
        opened = self.vocab.order[opening_bond] if opening_bond is not None else 1
        if not self._can_bond(current, order) or not _fits(
            self.specs[opener], self.used[opener] - opened, self.double[opener], order
        ):
            return False
        if len(self.rings) > 1 and not escapes and not self._room(current, order):
            return False  # full after this closure, with another ring still open: a dead end
        if not (self.specs[opener].aromatic or self.specs[current].aromatic):
            return True
        # The opener is finished once its label closes, unless it is live for another reason.
        others = [atom for other, (atom, _) in self.rings.items() if other != label]
        opener_finished = opener != current and opener not in self.stack and opener not in others
        finished = {opener} if opener_finished and self.specs[opener].aromatic else set()
        return self._finishing_ok(finished, ring=(opener, current, order, aromatic, opened), closed=label)

    def _live(self, closed: int | None = None) -> set[int]:
        live = {atom for label, (atom, _) in self.rings.items() if label != closed}
        live.update(self.stack)
        live.add(self.current)
        return live

    def _finishing_ok(
        self, finished: set[int], extra=None, ring=None, closed=None, everything=False, opening=None
    ) -> bool:
        """`_kekulizable`, remembered for this state: the lookahead asks the same of it again."""
        arguments = (frozenset(finished), extra, ring, closed, everything, opening)
        known = self._checked.get(arguments)
        if known is None:
            known = self._checked[arguments] = self._kekulizable(finished, extra, ring, closed, everything, opening)
        return known

    def _kekulizable(
        self, finished: set[int], extra=None, ring=None, closed=None, everything=False, opening=None
    ) -> bool:
        """Whether the aromatic atoms that the next token finishes (`finished`; all, with
        `everything`) leave every aromatic system kekulizable, and every open aromatic atom can
        still get two aromatic bonds. extra: (atom, order, aromatic, partner) of a bond to a new atom
        (partner: whether the new atom can take a double bond on it, see
        `SmilesVocabulary.aromatic_partners`); ring:
        (a, b, order, aromatic, opened) of a ring bond being closed; opening: (order, aromatic) of a
        ring bond that the current atom opens."""
        specs, used, double, vocab = self.specs, self.used, self.double, self.vocab
        added: dict[int, int] = {}  # bond order the next token adds to an atom
        doubled: set[int] = set()
        new_edges: dict[int, list[int]] = {}  # aromatic bonds the next token makes
        new_atom = len(specs)
        if opening is not None:
            added[self.current] = opening[0]
            if opening[0] >= 2:
                doubled.add(self.current)
        if extra is not None:
            atom, order, aromatic, _ = extra
            added[atom] = order
            if order >= 2:
                doubled.add(atom)
            if aromatic:
                new_edges[atom], new_edges[new_atom] = [new_atom], [atom]
        if ring is not None:
            a, b, order, aromatic, opened = ring
            added[a] = order - opened  # its label counted `opened` already
            added[b] = order
            if order >= 2:
                doubled.update((a, b))
            if aromatic:
                new_edges[a], new_edges[b] = [b], [a]
        neighbours = self.aromatic_neighbours
        adjacency = {
            atom: (neighbours[atom] if atom < new_atom else []) + edges for atom, edges in new_edges.items()
        }

        def around(atom: int) -> list[int]:
            return adjacency[atom] if atom in adjacency else neighbours[atom]

        if any(len(around(atom)) < 2 for atom in finished):
            return False  # an aromatic atom outside any ring: the cheap refusal first
        if everything:
            finished = {i for i in self._live() if specs[i].aromatic}
            live = set()
        else:
            live = self._live(closed) - finished
            # A live atom that holds no open ring label and has no room for another bond gets no
            # further bond either: the next token finishes it too.
            holding = {atom for label, (atom, _) in self.rings.items() if label != closed}
            settled = {
                atom for atom in live - holding if specs[atom].aromatic
                and not _fits(specs[atom], used[atom] + added.get(atom, 0), double[atom] or atom in doubled, 1)
            }  # fmt: skip
            finished, live = finished | settled, live - settled
            if extra is not None:
                live.add(new_atom)
        # Ring bonds still to close that will be aromatic (no bond symbol at the opening, or `:`),
        # and the atoms that may still take new bonds: the branch roots, and the current atom
        # unless the next token bonds it to a new one.
        aromatic_rings: dict[int, int] = {}
        for label, (atom, bond) in self.rings.items():
            if label != closed and (bond is None or vocab.text[bond] == ":"):
                aromatic_rings[atom] = aromatic_rings.get(atom, 0) + 1
        if opening is not None and opening[1]:
            aromatic_rings[self.current] = aromatic_rings.get(self.current, 0) + 1
        growing = set(self.stack) if extra is not None else {*self.stack, self.current}

        def can_get_two_aromatic_bonds(atom: int, bonded: int) -> bool:
            """bonded: the aromatic bonds it has."""
            if atom not in live:
                return bonded >= 2
            have = bonded + aromatic_rings.get(atom, 0)
            if have >= 2 or atom not in growing:
                return have >= 2
            spec, bonds, has_double = specs[atom], used[atom] + added.get(atom, 0), double[atom] or atom in doubled
            return have + _fits(spec, bonds, has_double, 1) + _fits(spec, bonds + 1, has_double, 1) >= 2

        # the aromatic systems that hold a newly finished atom, or an atom that the next token bonds
        # (a live atom that takes a double bond, or fills up, can no longer give one to a neighbour)
        starts = finished | {atom for atom in added if atom < new_atom and specs[atom].aromatic}
        if not all(can_get_two_aromatic_bonds(atom, len(around(atom))) for atom in starts):
            return False  # the cheap refusal first
        if not starts:
            return True
        needs, partners = [], set()
        seen, system = set(starts), list(starts)
        for atom in system:  # grows as it goes: a breadth-first walk, each atom weighed as it comes
            bonded = around(atom)
            for other in bonded:
                if other not in seen:
                    seen.add(other)
                    system.append(other)
            if atom == new_atom:
                if extra[3]:
                    partners.add(atom)
                continue
            spec, bonds, has_double = specs[atom], used[atom] + added.get(atom, 0), double[atom] or atom in doubled
            if atom in live:
                if not can_get_two_aromatic_bonds(atom, len(bonded)):
                    return False  # it cannot close its ring any more
                # an open atom may take a double bond later, if its valence leaves room for one
                if not has_double and bonds + 1 <= spec.max_valence:
                    partners.add(atom)
                continue
            if len(bonded) < 2:
                return False  # an aromatic atom outside any ring
            need = _needs_double(spec, bonds, has_double)
            if need is None:
                return False
            if need:
                needs.append(atom)
                partners.add(atom)
        return not needs or _matched(needs, partners, around)


def _needs_double(spec: AtomSpec, bonds: int, has_double: bool) -> bool | None:
    """Whether a finished aromatic atom with bonds of total order `bonds` (aromatic ones counted 1)
    needs one of them to be double to reach an allowed valence; None when no valence fits."""
    total = bonds + spec.hydrogens
    for valence in spec.valences:
        if valence >= total:
            return valence > total and not has_double
    return None


def _matched(needs: list[int], partners: set[int], around) -> bool:
    """Whether every atom of `needs` can be paired with a distinct neighbour in `partners` (each
    atom in at most one pair): a double bond for each. Backtracking over a few dozen atoms; it
    almost always succeeds on its first path, which is tried without recursion first."""
    mate: dict[int, int] = {}
    for atom in needs:
        if atom in mate:
            continue
        for other in around(atom):
            if other in partners and other not in mate:
                mate[atom], mate[other] = other, atom
                break
        else:
            return _backtracked(needs, partners, around)
    return True


def _backtracked(needs: list[int], partners: set[int], around) -> bool:
    """`_matched` by backtracking from the start, its first path again included: the budget of
    tries counts as it does for any pairing."""
    mate: dict[int, int] = {}
    budget = [20000]

    def solve(i: int) -> bool:
        while i < len(needs) and needs[i] in mate:
            i += 1
        if i == len(needs):
            return True
        budget[0] -= 1
        if budget[0] < 0:
            return True  # too many tries: do not refuse on a guess
        atom = needs[i]
        for other in around(atom):
            if other in partners and other not in mate:
                mate[atom], mate[other] = other, atom
                if solve(i + 1):
                    return True
                del mate[atom], mate[other]
        return False

    return solve(0)


def _mask_like(mask: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """A mask of `mask`'s shape that allows `tokens` only."""
    narrowed = torch.zeros_like(mask)
    narrowed[tokens] = True
    return narrowed


def _build(vocab: SmilesVocabulary, key: tuple) -> list[bool]:
    """The tokens allowed in a state of `key`, one bool each."""
    mask = [False] * vocab.size
    if key[0] == "start":
        for atom in vocab.atoms_taking[0]:
            mask[atom] = True
        return mask
    kind, atoms, rings, bonds, *after = key
    for atom in vocab.allowed_atoms(atoms):
        mask[atom] = True
    for label, ok in zip(vocab.ring_labels, rings):
        mask[label] = ok
    for bond, ok in zip(vocab.bonds, bonds):
        mask[bond] = ok
    if kind == "atom":
        return mask
    branch_ok, close_ok, end_ok = after
    if vocab.open is not None:
        mask[vocab.open] = branch_ok
    if vocab.close is not None:
        mask[vocab.close] = close_ok
    if end_ok:
        for end in vocab.ends:
            mask[end] = True
        if vocab.dot is not None:
            mask[vocab.dot] = True
    return mask


def grammar_for(
    model, tokenizer: PreTrainedTokenizerBase, ends: list[int], enabled: bool = True, max_new_tokens: int | None = None
) -> SmilesGrammar | None:
    """The grammar that `model`'s samples follow: a `SmilesGrammar` for a SMILES model unless
    `enabled` is False; None (no constraint) for any other model."""
    from ..domains import SMILES

    if not enabled or getattr(model.config, "domain", None) != SMILES.name:
        return None
    if not atom_level(tokenizer):
        return None  # e.g. a converted Chem-xLSTM model: it writes `[C@@H]` character by character
    return SmilesGrammar(tokenizer, ends, max_new_tokens=max_new_tokens)


def atom_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` writes every bracket atom as one token, as the grammar reads SMILES; a
    vocabulary with `[` and `]` as tokens of their own spells them out, and gets no grammar."""
    vocab = tokenizer.get_vocab()
    return "[" not in vocab and "]" not in vocab


class SmilesGrammar(LogitsProcessor):
    """A `transformers` logits processor that keeps every row a SMILES string that can still become a
    molecule (see the module docstring). `ends`: the token ids that end a molecule (default the
    tokenizer's eos); `chemistry=False` keeps the syntax only. max_new_tokens: the generate call's
    limit; near it, rows with rings or branches open are steered to close them and end.

    Use it with `generate(..., logits_processor=LogitsProcessorList([SmilesGrammar(tokenizer)]))`
    (sampling, greedy or beam search) or pass that list to a `text-generation` pipeline call."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, ends: list[int] | None = None, chemistry: bool = True,
        max_new_tokens: int | None = None,
    ):  # fmt: skip
        self.vocab = SmilesVocabulary(tokenizer, ends)
        self.chemistry = chemistry
        self.max_new_tokens = max_new_tokens
        self._prompt_length = 0
        self._states: list[SmilesState] = []
        self._hashes: list[int] = []
        self._length = 0
        self._rows: torch.Tensor | None = None  # the previous step's input_ids

    def start(self, tokens: list[int]) -> SmilesState:
        """The state after `tokens` (a prompt); ValueError naming the first token the grammar refuses."""
        state = SmilesState(self.vocab, self.chemistry)
        for position, token in enumerate(tokens):
            try:
                state.advance(token)
            except GrammarError as error:
                raise ValueError(
                    f"the SMILES grammar cannot read the prompt at token {position + 1}: {error} "
                    "(turn the grammar off to sample after it)"
                ) from None
        return state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        continuing = bool(self._states) and self._length == length - 1
        parent_hashes, hashes = self._row_hashes(input_ids, continuing)
        if continuing:
            states = self._continue(input_ids, parent_hashes)
        else:  # the first step of a generate call: read the prompts
            states = [self.start(row) for row in input_ids.tolist()]
            self._prompt_length = length
        self._states, self._hashes, self._length, self._rows = states, hashes, length, input_ids.clone()
        allowed = [state.allowed() for state in states]
        self._mark_rows_that_want_to_end(states, allowed, scores)
        masks = torch.stack([row.mask for row in allowed])
        remaining = None if self.max_new_tokens is None else self.max_new_tokens - (length - self._prompt_length)
        self._steer_to_the_end(states, masks, remaining, scores)
        masks = masks.to(scores.device)
        if masks.shape[1] != scores.shape[1]:  # tokens the vocabulary lacks are never allowed
            width = min(scores.shape[1], masks.shape[1])
            fitted = masks.new_zeros(scores.shape)
            fitted[:, :width] = masks[:, :width]
            masks = fitted
        masked = scores.masked_fill(~masks, float("-inf"))
        stuck = ~(masked > float("-inf")).any(dim=1)
        if stuck.any():  # a processor must never make sampling fail: such a row is left unconstrained
            masked[stuck] = scores[stuck]
        return masked

    def _mark_rows_that_want_to_end(
        self, states: list[SmilesState], allowed: list[Allowed], scores: torch.Tensor
    ) -> None:
        """A row whose model likes an end token best where the grammar cannot end yet (a ring or
        branch open, an aromatic ring unfinished) is finishing from then on. Left alone it would
        wander on under the grammar, the model having nothing it wants to say there, for up to
        max_new_tokens of text that rarely becomes a molecule. (Before its first atom a row has
        nothing to finish.)"""
        ends = [end for end in self.vocab.ends if end < scores.shape[1]]
        unable = [
            row for row, state in enumerate(states)
            if state.current >= 0 and not any(allowed[row].tokens[end] for end in ends)
        ]  # fmt: skip
        if not (ends and unable):
            return
        wanted = (scores[:, ends].amax(dim=1) >= scores.amax(dim=1)).tolist()
        for row in unable:
            if wanted[row]:
                states[row].finishing = True

    def _steer_to_the_end(
        self, states: list[SmilesState], masks: torch.Tensor, remaining: int | None, scores: torch.Tensor
    ) -> None:
        """A finishing row, and near max_new_tokens any row with rings or branches open, is steered to
        the end (`SmilesState.steered_to_the_end`, the model's likeliest tokens first): it ends as a
        molecule rather than being cut off mid-string."""
        steered = [
            row for row, state in enumerate(states)
            if state.finishing or (remaining is not None and remaining <= 2 * (len(state.rings) + len(state.stack)) + 4)
        ]  # fmt: skip
        if not steered:
            return
        width = min(scores.shape[1], self.vocab.size)
        preferences = torch.full((len(states), self.vocab.size), float("-inf"))
        preferences[:, :width] = scores[:, :width].float().cpu()
        for row in steered:
            masks[row] = states[row].steered_to_the_end(masks[row], preferences[row])

    def _continue(self, input_ids: torch.LongTensor, parent_hashes: list[int]) -> list[SmilesState]:
        """Each row's state: its parent's (the previous step's row that holds the same tokens but the
        last one), advanced by the last token. Rows keep their order in sampling; beam search reorders
        and repeats them."""
        by_hash = {h: row for row, h in enumerate(self._hashes)}
        parents = [by_hash.get(h) for h in parent_hashes]
        uses = {}
        for parent in parents:
            uses[parent] = uses.get(parent, 0) + 1
        last = input_ids[:, -1].tolist()
        states = []
        for row, parent in enumerate(parents):
            if parent is None:
                states.append(self.start(input_ids[row].tolist()))
                continue
            uses[parent] -= 1
            # the parent's own state is advanced in place by its last user only
            state = self._states[parent].copy() if uses[parent] else self._states[parent]
            self._advance(state, last[row])
            states.append(state)
        return states

    def _row_hashes(self, input_ids: torch.LongTensor, continuing: bool) -> tuple[list[int], list[int]]:
        """A hash of each row without its last token, and of the whole row: rows are matched to the
        previous step's rows by these, so beam search, which reorders rows, keeps their states. Where
        every row continues the previous step's row in its place (sampling), the hashes without the
        last token are the previous whole ones, and the new ones take one term each."""
        if not (continuing and torch.equal(input_ids[:, :-1], self._rows)):
            prefix, whole = _prefix_hashes(input_ids).T.tolist()
            return prefix, whole
        power = _power(input_ids.shape[1] - 1)
        last = input_ids[:, -1].tolist()
        whole = [(prefix + (token + 1) * power) % _HASH_MODULUS for prefix, token in zip(self._hashes, last)]
        return self._hashes, whole

    @staticmethod
    def _advance(state: SmilesState, token: int) -> None:
        try:
            state.advance(token)
        except GrammarError:
            # A token the grammar refused can only be here if the fallback let it through, or the
            # row has ended and holds padding: the row carries on as a new molecule.
            state.reset()


_HASH_MODULUS = 2_147_483_647
_HASH_BASE = 1_000_003
_powers: list[int] = [1]


def _power(position: int) -> int:
    """The hash's factor for the token at `position`."""
    while len(_powers) <= position:
        _powers.append(_powers[-1] * _HASH_BASE % _HASH_MODULUS)
    return _powers[position]


def _prefix_hashes(input_ids: torch.Tensor) -> torch.Tensor:
    """(rows, 2): a hash of each row without its last token, and of the whole row (see
    `SmilesGrammar._row_hashes`)."""
    powers = torch.tensor([_power(i) for i in range(input_ids.shape[1])], dtype=torch.int64, device=input_ids.device)
    # every term is below 2^31 * vocabulary size, and a sum of a few thousand of them fits in int64
    terms = (input_ids.to(torch.int64) + 1) * powers % _HASH_MODULUS
    whole = terms.sum(dim=1) % _HASH_MODULUS
    prefix = terms[:, :-1].sum(dim=1) % _HASH_MODULUS
    return torch.stack([prefix, whole], dim=1).cpu()
