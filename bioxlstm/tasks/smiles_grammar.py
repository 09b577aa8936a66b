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
  atom, `)`, a ring closure, the end) the processor checks that every finished aromatic atom that
  needs a double bond (a `c`, an `n` with two bonds, `[nH+]`, ...) can get one from a neighbour
  across an aromatic bond: a matching in which still-open atoms may take part. A finished aromatic
  atom with fewer than two aromatic bonds is refused too (RDKit calls it a non-ring aromatic atom).

These are necessary conditions, not RDKit's whole sanitisation: the grammar never refuses a molecule
RDKit accepts (tested on the MOSES test set), and a few invalid ones still pass (an aromatic bond
outside any ring that the matching uses, unusual charges). When the checks leave a row no token at
all, the row falls back to syntax alone, and if even that leaves nothing, to no constraint: a
processor must never make sampling fail.

Special tokens (`<cls>`, `<pad>`, the end tokens) and `.` start a new molecule, so prompts with
molecules in context, padding and the rows that already ended need nothing special. Rows are
followed by the tokens they hold, not by their position, so beam search, which reorders rows
between steps, is followed too. A prompt that the grammar cannot read raises ValueError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

    @property
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
        self.masks: dict[tuple, tuple[torch.Tensor, bool]] = {}  # by state key: (allowed tokens, none allowed)
        self.dot = vocab.get(".")
        self.ring_labels = [i for i in range(self.size) if self.kind[i] == RING]
        self.bonds = [i for i in range(self.size) if self.kind[i] == BOND]
        self.open = vocab.get("(")
        self.close = vocab.get(")")
        atoms = [i for i in range(self.size) if self.kind[i] == ATOM]
        # Atoms that can take a first bond of order k (k = 0: a molecule's first atom), split into
        # aromatic and aliphatic ones, because an aromatic neighbour makes the bond aromatic.
        self.atoms_taking = {
            (k, aromatic): self._ids(
                i for i in atoms if self.atom[i].aromatic == aromatic and _fits(self.atom[i], 0, False, k)
            )
            for k in range(5)
            for aromatic in (False, True)
        }
        self.atoms_with_room = {
            (k, aromatic): self._ids(
                i for i in atoms if self.atom[i].aromatic == aromatic and _fits(self.atom[i], 0, False, k)
                and _fits(self.atom[i], k, k >= 2, 1)
            )
            for k in range(5)
            for aromatic in (False, True)
        }

    def _ids(self, ids) -> torch.Tensor:
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[list(ids)] = True
        return mask


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

    __slots__ = ("vocab", "chemistry", "specs", "used", "double", "aromatic_neighbours", "neighbours",
                 "current", "stack", "rings", "bond", "expect_atom", "branch_start", "length", "finishing", "_mask")  # fmt: skip

    def __init__(self, vocab: SmilesVocabulary, chemistry: bool = True):
        self.vocab, self.chemistry = vocab, chemistry
        self.reset()

    def reset(self) -> None:
        self.specs: list[AtomSpec] = []
        self.used: list[int] = []  # total bond order, aromatic bonds counted 1, open rings included
        self.double: list[bool] = []  # has a bond of order 2 or more
        self.aromatic_neighbours: list[list[int]] = []
        self.neighbours: list[set[int]] = []
        self.current = -1  # the last atom written
        self.stack: list[int] = []  # roots of the open branches
        self.rings: dict[int, tuple[int, int | None]] = {}  # label token -> (atom, bond token or None)
        self.bond: int | None = None  # a bond token waiting for its atom or ring label
        self.expect_atom = True
        self.branch_start = False  # between `(` and the branch's first atom: no ring label there
        self.length = 0
        self.finishing = False  # the model wanted to end here: close what is open, open nothing new
        self._mask: torch.Tensor | None = None  # what `allowed_mask` found for this state

    def copy(self) -> SmilesState:
        other = SmilesState.__new__(SmilesState)
        other.vocab, other.chemistry = self.vocab, self.chemistry
        other.specs, other.used, other.double = list(self.specs), list(self.used), list(self.double)
        other.aromatic_neighbours = [list(n) for n in self.aromatic_neighbours]
        other.neighbours = [set(n) for n in self.neighbours]
        other.current, other.stack, other.rings = self.current, list(self.stack), dict(self.rings)
        other.bond, other.expect_atom, other.length = self.bond, self.expect_atom, self.length
        other.branch_start, other.finishing = self.branch_start, self.finishing
        other._mask = self._mask
        return other

    # ---- reading tokens

    def advance(self, token: int) -> None:
        """Read `token`; GrammarError when the grammar does not allow it here."""
        kind = self.vocab.kind[token]
        if kind == RESET:  # a special token starts a new molecule wherever it stands (padding, <cls>)
            self.reset()
            return
        allowed = self._mask if self._mask is not None else self.allowed_mask()
        self._mask = None
        if not allowed[token]:
            raise GrammarError(f"{self.vocab.text[token]!r} cannot follow here")
        self.length += 1
        if kind in (RESET, DOT):
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

    def _bond_order(self, a: int, b_spec: AtomSpec, bond: int | None) -> tuple[int, bool]:
        """Order of a bond from atom `a` to an atom like `b_spec` written with `bond`, and whether it is aromatic."""
        if bond is None:
            aromatic = self.specs[a].aromatic and b_spec.aromatic
            return 1, aromatic
        return self.vocab.order[bond], self.vocab.text[bond] == ":"

    def _add_atom(self, token: int) -> None:
        spec = self.vocab.atom[token]
        index = len(self.specs)
        self.specs.append(spec)
        self.used.append(0)
        self.double.append(False)
        self.aromatic_neighbours.append([])
        self.neighbours.append(set())
        if self.current >= 0:
            order, aromatic = self._bond_order(self.current, spec, self.bond)
            self._connect(self.current, index, order, aromatic)
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
            order, aromatic = self._bond_order(opener, self.specs[self.current], bond)
            opened = self.vocab.order[opening_bond] if opening_bond is not None else 1
            self._connect(opener, self.current, order, aromatic, opened=opened)
        else:
            order = self.vocab.order[self.bond] if self.bond is not None else 1
            self.rings[label] = (self.current, self.bond)
            self.used[self.current] += order
            if order >= 2:
                self.double[self.current] = True
        self.bond, self.expect_atom = None, False

    # ---- what may come next

    def can_end(self) -> bool:
        return self._syntax_can_end() and (not self.chemistry or self._finishing_ok(set(), everything=True))

    def _syntax_can_end(self) -> bool:
        return self.current >= 0 and not self.expect_atom and not self.stack and not self.rings

    def _can_bond(self, atom: int, order: int) -> bool:
        return _fits(self.specs[atom], self.used[atom], self.double[atom], order)

    def allows(self, token: int) -> bool:
        """Whether `token` may come next (slow path: one token; `allowed_mask` is what sampling uses)."""
        return bool(self.allowed_mask()[token])

    def allowed_mask(self) -> torch.Tensor:
        vocab = self.vocab
        key, checks = self._key()
        mask, empty = vocab.masks.get(key) or (None, None)
        if mask is None:
            mask = _build(vocab, key)
            empty = not mask.any()
            vocab.masks[key] = mask, empty
        if checks and empty:
            # The checks are necessary conditions, not sufficient ones: a row can reach a state that
            # no token continues. It then keeps the syntax alone.
            mask = self._syntax_only_mask()
        self._mask = mask
        return mask

    def closing_mask(self) -> torch.Tensor:
        """The tokens that close an open ring or branch."""
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        mask[list(self.rings)] = True
        if self.stack and self.vocab.close is not None:
            mask[self.vocab.close] = True
        return mask

    def ending_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        mask[self.vocab.ends] = True
        return mask

    def continuing_mask(self) -> torch.Tensor:
        """Everything but what opens something new (a branch, a ring)."""
        mask = torch.ones(self.vocab.size, dtype=torch.bool)
        if self.vocab.open is not None:
            mask[self.vocab.open] = False
        mask[[label for label in self.vocab.ring_labels if label not in self.rings]] = False
        return mask

    def _syntax_only_mask(self) -> torch.Tensor:
        chemistry, self.chemistry = self.chemistry, False
        try:
            return self.allowed_mask()
        finally:
            self.chemistry = chemistry

    def _key(self) -> tuple[tuple, bool]:
        """Everything the mask depends on, in a hashable form (masks are cached by it), and whether
        chemistry checks went into it."""
        vocab = self.vocab
        if self.current < 0:
            return ("start",), False
        current = self.current
        chemistry = self.chemistry
        pending = self.bond
        order = vocab.order[pending] if pending is not None else 1
        fits = self._fits_current()
        can_take = fits[order]
        # The next atom finishes the current one when it holds no ring label and roots no branch.
        finishes = chemistry and self.specs[current].aromatic and self._finishes_current()
        if finishes:
            # An aromatic bond to a new (open) atom only adds a partner: if the current atom can be
            # finished without it, it can with it.
            aliphatic_ok = self._finishing_ok({current}, extra=(current, order, False))
            aromatic_ok = aliphatic_ok or (
                pending is None and self._finishing_ok({current}, extra=(current, order, True))
            )
            atom_ok = (aromatic_ok, aliphatic_ok)
        else:
            atom_ok = (True, True)
        # With a ring open and no branch to return to, every atom must keep room for one more bond:
        # an atom that is full there leaves nothing to write (no atom, no closure, no end), a dead end.
        need_room = chemistry and bool(self.rings) and not self.stack
        opening_ok = fits[order] and (not chemistry or bool(self.stack) or self._room(current, order))
        rings = tuple(
            self._ring_ok(label, pending, chemistry) if label in self.rings else opening_ok
            for label in vocab.ring_labels
        )
        can_take = (can_take, need_room)
        if self.expect_atom:
            # after a bond or `(`: an atom; after a bond also a ring label; after `(` also a bond
            after_open = pending is None
            return ("atom", order, can_take, atom_ok, () if self.branch_start else rings, after_open,
                    self._bond_fits(fits) if after_open else ()), chemistry  # fmt: skip
        close_ok = bool(self.stack) and (
            not chemistry or not self.specs[current].aromatic or not self._finishes_current(closing=True)
            or self._finishing_ok({current})
        )
        if close_ok and chemistry and self.rings and len(self.stack) == 1:
            close_ok = self._room(self.stack[-1], 0)
        end_ok = self._syntax_can_end() and (not chemistry or self._finishing_ok(set(), everything=True))
        return ("after", can_take, atom_ok, rings, self._bond_fits(fits), fits[1], close_ok, end_ok), chemistry

    def _room(self, atom: int, order: int) -> bool:
        """Whether `atom` can take a bond of `order` and still one more single bond after it."""
        spec, used, double = self.specs[atom], self.used[atom], self.double[atom]
        return _fits(spec, used, double, order) and _fits(spec, used + order, double or order >= 2, 1)

    def _fits_current(self) -> tuple[bool, ...]:
        """Whether the current atom can take one more bond of order 0, 1, ..., 4."""
        if not self.chemistry:
            return (True,) * 5
        current = self.current
        spec, used, double = self.specs[current], self.used[current], self.double[current]
        return tuple(_fits(spec, used, double, order) for order in range(5))

    def _bond_fits(self, fits: tuple[bool, ...]) -> tuple[bool, ...]:
        return tuple(fits[self.vocab.order[bond]] for bond in self.vocab.bonds)

    def _finishes_current(self, closing: bool = False) -> bool:
        current = self.current
        held = any(atom == current for atom, _ in self.rings.values())
        rooted = current in (self.stack[:-1] if closing else self.stack)
        return not held and not rooted

    def _ring_ok(self, label: int, pending: int | None, chemistry: bool) -> bool:
        current = self.current
        if label not in self.rings:
            order = self.vocab.order[pending] if pending is not None else 1
            return not chemistry or self._can_bond(current, order)
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
        if len(self.rings) > 1 and not self.stack and not self._room(current, order):
            return False  # full after this closure, with another ring still open: a dead end
        if not (self.specs[opener].aromatic or self.specs[current].aromatic):
            return True
        # The opener is finished once its label closes, unless it is live for another reason.
        others = [atom for other, (atom, _) in self.rings.items() if other != label]
        opener_finished = opener != current and opener not in self.stack and opener not in others
        finished = {opener} if opener_finished and self.specs[opener].aromatic else set()
        if not finished:
            return True
        return self._finishing_ok(finished, ring=(opener, current, order, aromatic, opened), closed=label)

    def _live(self, closed: int | None = None) -> set[int]:
        live = {atom for label, (atom, _) in self.rings.items() if label != closed}
        live.update(self.stack)
        live.add(self.current)
        return live

    def _finishing_ok(self, finished: set[int], extra=None, ring=None, closed=None, everything=False) -> bool:
        """Whether the aromatic atoms that the next token finishes (`finished`; all, with
        `everything`) leave every aromatic system kekulizable. extra: (atom, order, aromatic) of a
        bond to a new atom; ring: (a, b, order, aromatic) of a ring bond being closed."""
        specs = self.specs
        added: dict[int, int] = {}  # bond order the next token adds to an atom
        doubled: set[int] = set()
        neighbours = {}

        def around(atom):
            if atom not in neighbours:
                neighbours[atom] = list(self.aromatic_neighbours[atom]) if atom < len(specs) else []
            return neighbours[atom]

        new_atom = len(specs)
        if extra is not None:
            atom, order, aromatic = extra
            added[atom] = order
            if order >= 2:
                doubled.add(atom)
            if aromatic:
                around(atom).append(new_atom)
                around(new_atom).append(atom)
        if ring is not None:
            a, b, order, aromatic, opened = ring
            added[a] = order - opened  # its label counted `opened` already
            added[b] = order
            if order >= 2:
                doubled.update((a, b))
            if aromatic:
                around(a).append(b)
                around(b).append(a)
        if everything:
            finished = {i for i in self._live() if specs[i].aromatic}
            live = set()
        else:
            live = self._live(closed) - finished
            if extra is not None:
                live.add(new_atom)
        if not finished:
            return True
        # the aromatic systems that hold a newly finished atom
        seen, order_ = set(), []
        for start in finished:
            if start in seen:
                continue
            seen.add(start)
            queue = [start]
            while queue:
                atom = queue.pop()
                order_.append(atom)
                for other in around(atom):
                    if other not in seen:
                        seen.add(other)
                        queue.append(other)
        needs, partners = [], set()
        for atom in order_:
            if atom == new_atom:
                partners.add(atom)
                continue
            if atom in live:
                # an open atom may take a double bond later, if its valence leaves room for one
                spec = specs[atom]
                if not (self.double[atom] or atom in doubled) and (
                    self.used[atom] + added.get(atom, 0) + 1 <= spec.max_valence
                ):
                    partners.add(atom)
                continue
            if len(around(atom)) < 2:
                return False  # an aromatic atom outside any ring
            spec = specs[atom]
            total = self.used[atom] + added.get(atom, 0) + spec.hydrogens
            target = next((v for v in spec.valences if v >= total), None)
            if target is None:
                return False
            if target - total >= 1 and not (self.double[atom] or atom in doubled):
                needs.append(atom)
                partners.add(atom)
        return _matched(needs, partners, around)


def _matched(needs: list[int], partners: set[int], around) -> bool:
    """Whether every atom of `needs` can be paired with a distinct neighbour in `partners` (each
    atom in at most one pair): a double bond for each. Backtracking over a few dozen atoms."""
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


def _build(vocab: SmilesVocabulary, key: tuple) -> torch.Tensor:
    mask = torch.zeros(vocab.size, dtype=torch.bool)
    if key[0] == "start":
        mask |= vocab.atoms_taking[(0, False)] | vocab.atoms_taking[(0, True)]
        return mask
    if key[0] == "atom":
        _, order, can_take, atom_ok, rings, after_open, bonds = key
        rings_allowed = rings
    else:
        _, can_take, atom_ok, rings_allowed, bonds, branch_ok, close_ok, end_ok = key
        order = 1
    can_take, need_room = can_take
    atoms = vocab.atoms_with_room if need_room else vocab.atoms_taking
    if can_take:
        for aromatic, ok in zip((True, False), atom_ok):
            if ok:
                mask |= atoms[(order, aromatic)]
    for label, ok in zip(vocab.ring_labels, rings_allowed):
        mask[label] = ok
    if key[0] == "atom":
        if after_open:
            for bond, ok in zip(vocab.bonds, bonds):
                mask[bond] = ok
        return mask
    for bond, ok in zip(vocab.bonds, bonds):
        mask[bond] = ok
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
        hashes = _prefix_hashes(input_ids)
        if self._states and self._length == length - 1:
            states = self._continue(input_ids, hashes[:, 0].tolist())
        else:  # the first step of a generate call: read the prompts
            states = [self.start(row) for row in input_ids.tolist()]
            self._prompt_length = length
        self._states, self._hashes, self._length = states, hashes[:, 1].tolist(), length
        masks = torch.stack([state.allowed_mask() for state in states])
        self._mark_rows_that_want_to_end(states, masks, scores)
        remaining = None if self.max_new_tokens is None else self.max_new_tokens - (length - self._prompt_length)
        self._steer_to_the_end(states, masks, remaining)
        masks = masks.to(scores.device)
        width = min(scores.shape[1], masks.shape[1])
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        allowed[:, :width] = masks[:, :width]
        return scores.masked_fill(~allowed, float("-inf"))

    def _mark_rows_that_want_to_end(self, states: list[SmilesState], masks: torch.Tensor, scores: torch.Tensor) -> None:
        """A row whose model likes an end token best where the grammar cannot end yet (a ring or
        branch open, an aromatic ring unfinished) is finishing from then on. Left alone it would
        wander on under the grammar, the model having nothing it wants to say there, for up to
        max_new_tokens of text that rarely becomes a molecule."""
        ends = [end for end in self.vocab.ends if end < scores.shape[1]]
        if not ends:
            return
        wanted = (scores[:, ends].max(dim=1).values >= scores.max(dim=1).values).tolist()
        for row, state in enumerate(states):
            if wanted[row] and not masks[row, ends].any():
                state.finishing = True

    @staticmethod
    def _steer_to_the_end(states: list[SmilesState], masks: torch.Tensor, remaining: int | None) -> None:
        """A finishing row, and near max_new_tokens any row with rings or branches open, may only end
        if it can, else close a ring or branch if it can, else go on without opening anything new:
        it ends as a molecule rather than being cut off mid-string."""
        for row, state in enumerate(states):
            late = remaining is not None and remaining <= 2 * (len(state.rings) + len(state.stack)) + 4
            if not (state.finishing or late):
                continue
            allowed = masks[row]
            for narrower in (state.ending_mask(), state.closing_mask(), state.continuing_mask()):
                narrowed = allowed & narrower
                if narrowed.any():
                    masks[row] = narrowed
                    break

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


def _prefix_hashes(input_ids: torch.Tensor) -> torch.Tensor:
    """(rows, 2): a hash of each row without its last token, and of the whole row. Rows are matched
    to the previous step's rows by these, so beam search, which reorders rows, keeps their states."""
    length = input_ids.shape[1]
    while len(_powers) < length:
        _powers.append(_powers[-1] * _HASH_BASE % _HASH_MODULUS)
    powers = torch.tensor(_powers[:length], dtype=torch.int64, device=input_ids.device)
    # every term is below 2^31 * vocabulary size, and a sum of a few thousand of them fits in int64
    terms = (input_ids.to(torch.int64) + 1) * powers % _HASH_MODULUS
    whole = terms.sum(dim=1) % _HASH_MODULUS
    prefix = terms[:, :-1].sum(dim=1) % _HASH_MODULUS
    return torch.stack([prefix, whole], dim=1).cpu()
