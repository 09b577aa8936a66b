"""Generating molecules: unconditional samples, and molecules like a few examples placed in context.

The in-context format is that of In-Context Style Transfer (ICST, Chem-xLSTM): a set of molecules is
written as their SMILES joined by `.`, in random order. To generate molecules like a set, the prompt
is `<cls>` + the examples joined by `.` + a trailing `.`, and every new molecule ends at the next `.`
or `<eos>`. Without examples the prompt is `<cls>` alone and the same rule applies. The format cannot
tell a salt (`CCN.Cl`) from two molecules: a generated salt is cut at its first `.`, and a domain of
the ICST data is split into molecules at every `.`.

The prompt goes through the model once; its recurrent state is copied for every sample, so k
molecules cost one prefill plus k continuations, whatever k is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..chem import MoleculeSet, canonicalize, is_valid
from ..domains import MOLECULE_SEPARATOR, SMILES
from ..progress import progress as progress_bar
from ..tokenization import vocabulary_id
from .likelihood import require_causal_lm
from .sampling import SamplingOptions, sample_continuations
from .smiles_grammar import grammar_for


@dataclass
class SamplingReport:
    """How a set of molecules came about. `drawn` samples were generated, `valid` of them RDKit-valid,
    and they hold `unique` distinct molecules. `cap_reached` says that sampling stopped at the draw
    limit with fewer than `requested` valid unique molecules."""

    requested: int
    drawn: int = 0
    valid: int = 0
    unique: int = 0
    cap_reached: bool = False

    def __str__(self) -> str:
        text = f"{self.drawn} drawn, {self.valid} valid, {self.unique} unique"
        if self.cap_reached:
            text += f": only {self.unique} of the {self.requested} requested, the draw limit was reached"
        return text


@dataclass
class MoleculeSample:
    molecules: list[str]
    report: SamplingReport


@dataclass
class GeneratedMolecule:
    id: str
    sequence: str  # SMILES, as generated
    valid: bool  # RDKit parses it


def numbered_molecules(molecules: Iterable[str], id_prefix: str = "generated") -> list[GeneratedMolecule]:
    return [GeneratedMolecule(f"{id_prefix}_{i}", s, is_valid(s)) for i, s in enumerate(molecules, start=1)]


@dataclass
class InContextResult:
    """One held-out domain: FCD to the rest of the domain of molecules generated with `context` of
    its molecules as examples, and of unconditional samples (the baseline)."""

    context: int  # molecules placed in context
    reference: int  # the rest of the domain, compared with
    valid_in_context: int
    valid_unconditional: int
    fcd_in_context: float
    fcd_unconditional: float


def in_context_prompt(context: Sequence[str], rng: random.Random | None = None) -> str:
    """The ICST text of a set of example molecules: their SMILES joined by `.`, in an order drawn
    from `rng` (kept when None), with the trailing `.` after which the next molecule begins."""
    for index, smiles in enumerate(context, start=1):
        if not smiles:
            raise ValueError(f"context molecule {index} is empty")
        position = SMILES.alphabet.invalid_position(smiles)
        if position is not None:
            raise ValueError(
                f"context molecule {index} ({smiles!r}): character {smiles[position]!r} at position "
                f"{position + 1} starts no SMILES token"
            )
    ordered = rng.sample(list(context), len(context)) if rng is not None else list(context)
    return "".join(smiles + MOLECULE_SEPARATOR for smiles in ordered)


class _ContinuationSampler:
    """Samples molecules after one prompt, whose state is computed once, in `__init__`."""

    def __init__(self, model, tokenizer, prompt: str, options: SamplingOptions):
        require_causal_lm(model, "molecule generation")
        separator_id = vocabulary_id(tokenizer, MOLECULE_SEPARATOR)
        if prompt and separator_id is None:
            raise ValueError(
                f"the tokenizer has no token for the molecule separator {MOLECULE_SEPARATOR!r}: "
                "its model cannot read molecules in context"
            )
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.stop_ids = [tokenizer.eos_token_id] + ([] if separator_id is None else [separator_id])
        self.grammar = grammar_for(model, tokenizer, self.stop_ids, options.grammar, options.max_new_tokens)
        prompt_ids = [tokenizer.cls_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        self.prompt_ids = torch.tensor([prompt_ids], device=model.device)
        self.state = None
        if len(prompt_ids) > 1:
            with torch.no_grad():
                self.state = model(self.prompt_ids[:, :-1], use_cache=True, logits_to_keep=1).cache

    def draw(self, rows: int) -> list[str]:
        samples = sample_continuations(
            self.model, self.tokenizer, self.prompt_ids, rows, self.stop_ids, SMILES.name,
            replace(self.options, batch_size=rows), cache=self.state, logits_processor=self.grammar,
        )  # fmt: skip
        return [self.tokenizer.decode(sample.body, skip_special_tokens=True) for sample in samples]


# Molecules are short: many are sampled at once.
MOLECULE_SAMPLING = SamplingOptions(batch_size=64)


def sample_molecules(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    context: Sequence[str] | None = None,
    unique_valid: bool = True,
    max_draws: int | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    sampling: SamplingOptions | None = None,
    **overrides,
) -> MoleculeSample:
    """Sample molecules from a SMILES model, unconditionally or like the `context` examples.

    unique_valid=True: keep sampling, `batch_size` at a time, until `n` distinct valid molecules exist
    or `max_draws` samples (default 10 n) have been drawn; returns their canonical SMILES in the
    order found. When the cap stops it early, fewer than `n` come back and `report.cap_reached` says so.
    unique_valid=False: exactly `n` samples, as generated (invalid ones and repeats included).
    A sample that reaches `max_new_tokens` without ending is kept as it is.
    progress: told the number of samples of every batch once it is drawn.
    sampling: a `SamplingOptions` (default: its defaults with batch_size 64); `overrides` replace its
    fields by name (temperature=1.0, top_k, top_p, max_new_tokens=256, seed: also the order of the
    context, batch_size, grammar=True: sample only what can still become a molecule, see
    `tasks.smiles_grammar`: SMILES syntax, valence and kekulizable aromatic rings).
    """
    options = replace(sampling or MOLECULE_SAMPLING, **overrides)
    options.check(n)
    max_draws = n if not unique_valid else (10 * n if max_draws is None else max_draws)
    if max_draws < n:
        raise ValueError(f"max_draws ({max_draws}) must be at least n ({n})")
    rng = random.Random(options.seed)
    options.apply_seed()
    sampler = _ContinuationSampler(model, tokenizer, in_context_prompt(context or [], rng), options)
    report = SamplingReport(requested=n)
    drawn, distinct = [], {}
    while report.drawn < max_draws and (not unique_valid or report.unique < n):
        batch = sampler.draw(min(options.batch_size, max_draws - report.drawn))
        drawn += batch
        for canonical in filter(None, map(canonicalize, batch)):
            report.valid += 1
            distinct.setdefault(canonical)
        report.drawn, report.unique = len(drawn), len(distinct)
        if progress is not None:
            progress(len(batch))
    if not unique_valid:
        return MoleculeSample(drawn, report)
    report.cap_reached = report.unique < n
    return MoleculeSample(list(distinct)[:n], report)


def generate_molecules(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: Sequence[str] | None = None,
    n: int = 10,
    **options,
) -> list[str]:
    """`n` molecules sampled after the `context` examples (in-context format, order shuffled with
    `seed`), or unconditionally without them; as generated, so some may be invalid or repeated.
    The context is run through the model once per call. Options: those of `sample_molecules`."""
    return sample_molecules(model, tokenizer, n, context=context, unique_valid=False, **options).molecules


def domain_molecules(domain: str) -> list[str]:
    """The molecules of one ICST line (split at every `.`, salts included; see the module docstring)."""
    return [smiles for smiles in domain.strip().split(MOLECULE_SEPARATOR) if smiles]


def evaluate_in_context(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    domains: Iterable[str],
    n_context: int = 20,
    n_generate: int = 100,
    seed: int = 0,
    **options,
) -> list[InContextResult]:
    """The in-context protocol on held-out ICST domains (one line, molecules joined by `.`, each).

    For each domain, `n_context` of its molecules (drawn with `seed`) are the context, `n_generate`
    molecules are sampled after them, and their FCD to the rest of the domain is compared with that
    of `n_generate` unconditional samples, drawn once for all domains. FCD counts only valid
    molecules, and with a hundred of them it is noisy: look at many domains. Options: those of
    `sample_molecules`.
    """
    domains = list(domains)
    rng = random.Random(seed)
    splits = []
    for index, domain in enumerate(domains, start=1):
        molecules = domain_molecules(domain)
        if len(molecules) < n_context + 2:
            raise ValueError(
                f"domain {index} holds {len(molecules)} molecules: too few for {n_context} in context "
                "and at least two to compare with"
            )
        shuffled = rng.sample(molecules, len(molecules))
        splits.append((shuffled[:n_context], shuffled[n_context:]))
    # Each set is parsed, and its ChemNet statistics computed, once: the unconditional set's serve every
    # domain. The domains' own bar is the progress shown.
    unconditional = MoleculeSet.from_smiles(
        generate_molecules(model, tokenizer, None, n_generate, seed=seed, **options), progress=False
    )
    results = []
    for index, (context, rest) in enumerate(progress_bar(splits, desc="domains", unit="domain"), start=1):
        in_context = MoleculeSet.from_smiles(
            generate_molecules(model, tokenizer, context, n_generate, seed=seed + index, **options), progress=False
        )
        reference = MoleculeSet.from_smiles(rest, progress=False).fcd_statistics
        results.append(
            InContextResult(
                context=len(context),
                reference=len(rest),
                valid_in_context=in_context.valid,
                valid_unconditional=unconditional.valid,
                fcd_in_context=in_context.fcd(reference),
                fcd_unconditional=unconditional.fcd(reference),
            )
        )
    return results
