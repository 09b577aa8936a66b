"""In-context protein tasks: a model reads a family's homologs, then generates, completes or scores
a member of that family.

The context is laid out as in training (`bioxlstm.data.protein`): every homolog as `<cls>` +
residues with positions restarting at 0, and the sequence of interest last. Its recurrent state is
computed once; every continuation (a mutant, a new family member, a fill) starts from a copy.
"""

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import torch
from Bio.Align import PairwiseAligner, substitution_matrices
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.protein import context_row, fill_in_the_middle, sentinel_ids, undo_fill_in_the_middle
from ..domains import PROTEIN, allows
from ..io import Record, read_records
from ..token_rows import TokenRow
from .likelihood import perplexity, require_causal_lm, row_log_likelihoods
from .sampling import SamplingOptions, sample_continuations

ContextSource = str | Path | Iterable[str | Record] | None

# A substitution: wild-type residue, 1-based position, new residue (ProteinGym's `A24C`).
_SUBSTITUTION = re.compile(r"([A-Z])(\d+)([A-Z])")


# --- the homolog context --------------------------------------------------------------------------


def load_context(
    context: ContextSource, max_sequences: int | None = None, max_tokens: int | None = None
) -> list[str]:
    """The homolog sequences of `context`: a file (A3M, Stockholm, FASTA, ...; read with
    `bioxlstm.io.read_records`, aligned files as full sequences) or sequences / Records; None is no
    context. Sequences are taken in order, the first `max_sequences`, while the context stays within
    `max_tokens` tokens (each sequence costs its length + 1 for its `<cls>`)."""
    if context is None:
        return []
    if isinstance(context, (str, Path)):
        context = read_records(context, domain=PROTEIN.name)
    sequences, tokens = [], 0
    for item in context:
        sequence = item.sequence if isinstance(item, Record) else item
        if max_sequences is not None and len(sequences) >= max_sequences:
            break
        if max_tokens is not None and tokens + len(sequence) + 1 > max_tokens:
            break
        sequences.append(sequence)
        tokens += len(sequence) + 1
    return sequences


def require_protein_model(model: PreTrainedModel, task: str) -> None:
    require_causal_lm(model, task)
    if not allows(model.config.domain, "reads_homologs"):
        raise ValueError(f"{task} needs a protein model; this one is for {model.config.domain}")


def _residue_ids(tokenizer: PreTrainedTokenizerBase, sequence: str) -> list[int]:
    return tokenizer(sequence, add_special_tokens=False)["input_ids"]


def _context_row(tokenizer: PreTrainedTokenizerBase, sequences: Sequence[str]) -> TokenRow:
    return context_row(tokenizer.cls_token_id, [_residue_ids(tokenizer, s) for s in sequences])


def _tensor(values: list[int], model: PreTrainedModel) -> torch.Tensor:
    return torch.tensor([values], device=model.device)


@torch.no_grad()
def _read(model: PreTrainedModel, row: TokenRow, cache=None, window: int = 8192):
    """Run the model over `row` from `cache`, `window` tokens per call with the state carried (so
    a context of any length needs the memory of one window); returns the logits of its last token
    and the new cache (None and the old cache for an empty row)."""
    logits = None
    for start in range(0, len(row), window):
        out = model(
            _tensor(row.input_ids[start : start + window], model),
            position_ids=_tensor(row.position_ids[start : start + window], model),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits, cache = out.logits[:, -1], out.cache
    return logits, cache


def context_state(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, homologs: Sequence[str], window: int = 8192
):
    """The model's recurrent state (a `BioXLSTMCache`) after reading `homologs` as a context, and
    the logits of its last token; (None, None) for no homologs."""
    logits, cache = _read(model, _context_row(tokenizer, homologs), window=window)
    return cache, logits


# --- log-likelihoods given a context ---------------------------------------------------------------


def sequence_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sequences: Sequence[str],
    context: Sequence[str] = (),
    reuse_context_state: bool = True,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """log p(residues + `<eos>` | context, `<cls>`) of every sequence (natural log).

    reuse_context_state: read the context once and start every sequence from a copy of its state;
    False reads context + sequence from scratch for every sequence (same numbers, for checking and
    benchmarking). progress: told the number of tokens scored after every batch."""
    require_protein_model(model, "scoring with homologs")
    rows = [
        TokenRow([tokenizer.cls_token_id, *ids, tokenizer.eos_token_id], list(range(len(ids) + 2)), [])
        for ids in (_residue_ids(tokenizer, s) for s in sequences)
    ]
    if reuse_context_state:
        cache = context_state(model, tokenizer, context)[0]
        return row_log_likelihoods(model, rows, tokenizer.pad_token_id, cache, batch_size=batch_size, progress=progress)
    context_tokens = _context_row(tokenizer, context)
    rows = [context_tokens + row for row in rows]
    return row_log_likelihoods(
        model, rows, tokenizer.pad_token_id, skip=len(context_tokens), batch_size=batch_size, progress=progress
    )


@dataclass
class HeldOutPerplexity:
    id: str
    length: int  # residues; perplexities are per predicted token (residues and <eos>)
    perplexity_alone: float = field(metadata={"format": ".3f"})
    perplexity_in_context: float = field(metadata={"format": ".3f"})


def held_out_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    family: str | Path | Iterable[str | Record],
    held_out: int | Sequence[int] = 8,
    max_context_tokens: int = 4096,
    seed: int = 0,
) -> list[HeldOutPerplexity]:
    """Perplexity of held-out family members without and with homologs in context: the held-out
    members (`held_out` drawn at random, seeded; or a list of record numbers, from 1, such as a
    recipe's `data.held_out_records`) are scored alone and after as many of the remaining members
    as fit in `max_context_tokens`. One result per held-out member. A model that uses its context has the second lower than the first."""
    if isinstance(family, (str, Path)):
        family = read_records(family, domain=PROTEIN.name)
    records = [r if isinstance(r, Record) else Record(f"sequence_{i + 1}", r) for i, r in enumerate(family)]
    if isinstance(held_out, int):
        if len(records) < 2 or not 1 <= held_out < len(records):
            raise ValueError(f"held_out must be between 1 and {len(records) - 1} for a family of {len(records)}")
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        query_indices = order[:held_out]
    else:
        query_indices = [number - 1 for number in held_out if 1 <= number <= len(records)]
        if not query_indices or len(query_indices) == len(records):
            raise ValueError(f"held-out records {list(held_out)} leave no member to score or none for context")
    chosen = set(query_indices)
    queries = [records[i].sequence for i in query_indices]
    context = load_context([r.sequence for i, r in enumerate(records) if i not in chosen], max_tokens=max_context_tokens)
    alone = sequence_log_likelihoods(model, tokenizer, queries)
    in_context = sequence_log_likelihoods(model, tokenizer, queries, context)
    return [
        HeldOutPerplexity(
            id=records[i].id,
            length=len(sequence),
            perplexity_alone=perplexity(without, len(sequence) + 1),
            perplexity_in_context=perplexity(with_context, len(sequence) + 1),
        )
        for i, sequence, without, with_context in zip(query_indices, queries, alone, in_context)
    ]


# --- variant effects -------------------------------------------------------------------------------


class MutantError(ValueError):
    """A mutant code that cannot be applied to the wild type; `kind` says why, in a few words."""

    NOT_A_CODE = "not a substitution code"
    MISMATCH = "does not match the wild type"
    REPEATED_POSITION = "changes one position twice"

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def apply_mutant(wildtype: str, mutant: str) -> str:
    """The sequence of `mutant`: ProteinGym-style substitutions (`A24C`, several joined by `:`,
    1-based positions, each naming the wild-type residue) or a full sequence of the wild type's
    length. Raises MutantError naming the code and what does not match."""
    code = mutant.strip().upper()
    if PROTEIN.alphabet.invalid_position(code) is None and len(code) == len(wildtype):
        return code
    residues, changed = list(wildtype), set()
    for substitution in code.split(":"):
        match = _SUBSTITUTION.fullmatch(substitution)
        if match is None:
            raise MutantError(
                f"mutant {mutant!r}: {substitution!r} is neither a substitution like A24C nor a full sequence of "
                f"length {len(wildtype)}",
                MutantError.NOT_A_CODE,
            )
        before, position, after = match[1], int(match[2]), match[3]
        if not 1 <= position <= len(wildtype):
            raise MutantError(
                f"mutant {mutant!r}: position {position} is outside the wild type (1..{len(wildtype)})",
                MutantError.MISMATCH,
            )
        if wildtype[position - 1] != before:
            raise MutantError(
                f"mutant {mutant!r}: the wild type has {wildtype[position - 1]} at position {position}, not {before}",
                MutantError.MISMATCH,
            )
        if PROTEIN.alphabet.invalid_position(after) is not None:
            raise MutantError(f"mutant {mutant!r}: {after!r} is not an amino acid", MutantError.NOT_A_CODE)
        if position in changed:
            raise MutantError(f"mutant {mutant!r}: changes position {position} twice", MutantError.REPEATED_POSITION)
        changed.add(position)
        residues[position - 1] = after
    return "".join(residues)


def score_variants(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    wildtype: str,
    mutants: Sequence[str],
    context: ContextSource = None,
    reuse_context_state: bool = True,
    max_context_tokens: int | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Variant-effect scores: log p(mutant | context) - log p(wild type | context), one per mutant,
    in order. Mutants are ProteinGym codes (`A24C:D30E`) or full sequences (see `apply_mutant`);
    every code is checked before anything is scored, and the first that does not match the wild
    type raises ValueError. The context (homologs, see `load_context`) is read once and its state
    reused for every mutant unless `reuse_context_state=False`. progress: as for
    `sequence_log_likelihoods`."""
    require_protein_model(model, "variant-effect scoring")
    wildtype = wildtype.upper()
    sequences = [apply_mutant(wildtype, mutant) for mutant in mutants]
    homologs = load_context(context, max_tokens=max_context_tokens)
    log_likelihoods = sequence_log_likelihoods(
        model, tokenizer, [wildtype, *sequences], homologs, reuse_context_state, batch_size, progress
    )
    return [value - log_likelihoods[0] for value in log_likelihoods[1:]]


# --- sampling --------------------------------------------------------------------------------------


@dataclass
class Inpainting:
    sequence: str  # the whole sequence with every span filled
    fills: list[str] = field(metadata={"write": False})  # what was written into each span, in order
    fill_lengths: list[int] = field(metadata={"format": lambda lengths: ",".join(map(str, lengths))})
    # the model closed the fill itself (False: it reached max_fill_length)
    finished: list[bool] = field(metadata={"write": False})
    # of the fills and the tokens that closed them, under the unmodified model
    log_likelihood: float = field(metadata={"format": ".4f"})
    id: str = "inpainted"


@torch.no_grad()
def inpaint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sequence: str,
    spans: Sequence[tuple[int, int]],
    context: ContextSource = None,
    max_context_tokens: int | None = None,
    max_fill_length: int = 64,
    *,
    sampling: SamplingOptions | None = None,
    **overrides,
) -> Inpainting:
    """Fill the `spans` of `sequence` (0-based, end exclusive, as Python slices; at most five,
    disjoint), given optional homologs as context, by fill-in-the-middle decoding: the sequence is
    read with `<mask-i>` in place of span i, then each span is written after its sentinel, at its
    original positions, until the model writes the next sentinel (`<eos>` after the last span) or
    `max_fill_length` residues. Only amino-acid tokens go into a fill; the fill may be longer or
    shorter than the span it replaces.
    sampling: a `SamplingOptions` (default: its defaults); `overrides` replace its fields by name
    (temperature=1.0, 0 picks the likeliest token; top_k, top_p, seed). Each span is sampled alone,
    up to max_fill_length, so the options' batch_size and max_new_tokens do not apply."""
    # One token more than the longest fill lets a fill of full length close itself.
    options = replace(sampling or SamplingOptions(), **overrides, max_new_tokens=max_fill_length + 1, batch_size=1)
    require_protein_model(model, "inpainting")
    spans = sorted(spans)
    if not spans:
        raise ValueError("give at least one span to fill")
    sentinels = sentinel_ids(tokenizer)
    query = fill_in_the_middle(tokenizer.cls_token_id, tokenizer.eos_token_id, _residue_ids(tokenizer, sequence), spans, sentinels)
    masked = query.infill.index(True)
    prompt = _context_row(tokenizer, load_context(context, max_tokens=max_context_tokens)) + TokenRow(
        query.input_ids[:masked], query.position_ids[:masked], query.infill[:masked]
    )
    cache = _read(model, prompt)[1]
    options.apply_seed()
    suffix, fills, finished, total = [], [], [], 0.0
    for index, (start, _) in enumerate(spans):
        # A span opens with its sentinel at the position of its first residue, which shares it.
        opening = TokenRow([sentinels[index]], [start + 1], [True])
        closing = sentinels[index + 1] if index + 1 < len(spans) else tokenizer.eos_token_id
        (sample,) = sample_continuations(
            model, tokenizer, _tensor(opening.input_ids, model), 1, [closing], PROTEIN.name, options, cache=cache,
            position_ids=_tensor(opening.position_ids, model), generated_position_offset=-1,
        )  # fmt: skip
        fill = sample.body[:max_fill_length]
        total += sum(sample.token_log_likelihoods[: len(fill) + sample.finished])
        finished.append(sample.finished)
        fills.append(fill)
        suffix += [sentinels[index], *fill]
        if index + 1 < len(spans):
            cache = _read(model, opening + TokenRow(fill, [start + 1 + i for i in range(len(fill))], [True] * len(fill)), cache)[1]
    restored = undo_fill_in_the_middle(query.input_ids[1:masked] + suffix, sentinels)
    return Inpainting(
        sequence=tokenizer.decode(restored),
        fills=[tokenizer.decode(fill) for fill in fills],
        fill_lengths=[len(fill) for fill in fills],
        finished=finished,
        log_likelihood=total,
    )


# --- family generation -----------------------------------------------------------------------------


@dataclass
class FamilyMember:
    id: str
    sequence: str
    # of the residues and the end token, under the unmodified model
    log_likelihood: float = field(metadata={"format": ".4f"})
    perplexity: float = field(metadata={"format": ".3f"})  # per predicted token (residues and end token)
    # to the closest context sequence (see identity_to_context)
    max_identity: float = field(metadata={"format": ".3f"})
    min_hamming: int | None = field(metadata={"format": str})
    finished: bool  # the model ended the sequence itself


# A family member is a whole protein: longer continuations than other tasks allow by default.
FAMILY_SAMPLING = SamplingOptions(max_new_tokens=512)


@torch.no_grad()
def generate_family(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: ContextSource,
    n: int,
    context_sequences: int | None = None,
    max_context_tokens: int | None = None,
    *,
    id_prefix: str = "generated",
    progress: Callable[[int], None] | None = None,
    sampling: SamplingOptions | None = None,
    **overrides,
) -> list[FamilyMember]:
    """Sample `n` new members of the family whose homologs are `context` (a file or sequences; the
    first `context_sequences`, within `max_context_tokens`). Each is sampled with
    `transformers`' `generate` after the homologs and a fresh `<cls>`, with positions continuing
    the new sequence's own numbering, amino acids only, until `<eos>` (or a `<cls>` that would begin
    another homolog) or `max_new_tokens`. Each comes with its log-likelihood, perplexity and
    similarity to the context. progress: told the number of members of every batch once it is sampled.
    sampling: a `SamplingOptions` (default: its defaults with max_new_tokens 512); `overrides`
    replace its fields by name (max_new_tokens, temperature=1.0, top_k, top_p, seed, batch_size=16)."""
    options = replace(sampling or FAMILY_SAMPLING, **overrides)
    require_protein_model(model, "family generation")
    options.check(n)
    homologs = load_context(context, context_sequences, max_context_tokens)
    if not homologs:
        raise ValueError("the context holds no sequences: family generation needs homologs")
    prompt = _context_row(tokenizer, homologs) + TokenRow([tokenizer.cls_token_id], [0], [False])
    prompt_ids, prompt_positions = _tensor(prompt.input_ids, model), _tensor(prompt.position_ids, model)
    options.apply_seed()
    members = []
    for sample in sample_continuations(
        model, tokenizer, prompt_ids, n, [tokenizer.eos_token_id, tokenizer.cls_token_id], PROTEIN.name, options,
        position_ids=prompt_positions, progress=progress,
    ):  # fmt: skip
        residues = tokenizer.decode(sample.tokens, skip_special_tokens=True)
        identity, hamming = identity_to_context(residues, homologs)
        members.append(
            FamilyMember(
                id=f"{id_prefix}_{sample.index + 1}",
                sequence=residues,
                log_likelihood=sample.log_likelihood,
                perplexity=perplexity(sample.log_likelihood, len(sample.tokens)),
                finished=sample.finished,
                max_identity=identity,
                min_hamming=hamming,
            )
        )
    return members


# --- quality figures -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _aligner() -> PairwiseAligner:
    # EMBOSS needle's defaults: BLOSUM62, gap open 10, extend 0.5, global.
    return PairwiseAligner(
        mode="global",
        substitution_matrix=substitution_matrices.load("BLOSUM62"),
        open_gap_score=-10.0,
        extend_gap_score=-0.5,
    )


def _blosum_letters(sequence: str) -> str:
    # BLOSUM62 has no rows for selenocysteine and pyrrolysine; they align as their standard analogues.
    return sequence.translate(_RARE_RESIDUE_ANALOGUES)


_RARE_RESIDUE_ANALOGUES = str.maketrans({"U": "C", "O": "K"})


def identity_to_context(sequence: str, context: Sequence[str]) -> tuple[float, int | None]:
    """(maximum identity, minimum Hamming distance) of `sequence` to the context sequences, from
    global alignments (BLOSUM62, gap open 10, extend 0.5, as EMBOSS needle): identity is the
    fraction of alignment columns with identical residues, the Hamming distance the number of
    columns without (mismatches and gaps; for an ungapped alignment of equal lengths, the plain
    Hamming distance). An empty sequence or context gives (0.0, None)."""
    if not sequence or not context:
        return 0.0, None
    best_identity, best_hamming = 0.0, None
    for other in context:
        if not other:
            continue
        alignment = _aligner().align(_blosum_letters(sequence), _blosum_letters(other))[0]
        identities = alignment.counts().identities
        best_identity = max(best_identity, identities / alignment.length)
        hamming = alignment.length - identities
        best_hamming = hamming if best_hamming is None else min(best_hamming, hamming)
    return best_identity, best_hamming
