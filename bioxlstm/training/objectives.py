"""The objectives a recipe names: for each, the model head trained, the collator that makes batches,
the domains it applies to and the data settings it needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..data import DataSpec, causal_lm_collator
from ..data.collators import MoleculeSetCollator
from ..data.dna import DNADataCollatorForLanguageModeling
from ..data.labeled import SEQUENCE_CLASSIFICATION, SEQUENCE_REGRESSION, TOKEN_CLASSIFICATION
from ..data.protein import MAX_FIM_SPANS, HomologContextCollator
from ..domains import DNA, MOLECULE_SEPARATOR, PROTEIN, SMILES
from ..models import (
    BioXLSTMForCausalLM,
    BioXLSTMForMaskedLM,
    BioXLSTMForSequenceClassification,
    BioXLSTMForTokenClassification,
)


@dataclasses.dataclass(frozen=True)
class Objective:
    """What an objective name stands for: the model head trained, how examples become batches, the
    domains it applies to (None: all) and the data settings it needs (checked against the recipe)."""

    model_class: type[PreTrainedModel]
    # (tokenizer, data spec, model config) -> collator; the config says how the model numbers positions.
    collator: Callable[[PreTrainedTokenizerBase, DataSpec, PretrainedConfig], Callable]
    domains: tuple[str, ...] | None = None
    data_requirements: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    labels: str | None = None  # labeled-data objectives: the kind of label (`bioxlstm.data.labeled.LABEL_KINDS`)


def _masked_lm_collator(tokenizer: PreTrainedTokenizerBase, spec: DataSpec, config: PretrainedConfig):
    return DNADataCollatorForLanguageModeling(
        tokenizer, mlm=True, mlm_probability=spec.mlm_probability, rc_probability=spec.rc_probability, seed=spec.seed
    )


def _fim_collator(tokenizer: PreTrainedTokenizerBase, spec: DataSpec, config: PretrainedConfig):
    # A query may fill a whole example and, cut inside it, lack its <eos>: its row gains that <eos>
    # and, in FIM form, two sentinels per span (one in place of the span, one before it in the suffix).
    longest_query_row = spec.max_length + 1 + 2 * MAX_FIM_SPANS
    return HomologContextCollator(
        tokenizer, max_tokens=longest_query_row, fim_probability=spec.fim_probability, seed=spec.seed
    )


OBJECTIVES: dict[str, Objective] = {
    "clm": Objective(
        BioXLSTMForCausalLM,
        lambda tokenizer, spec, config: causal_lm_collator(tokenizer, spec.packing),
        description="next-token prediction on examples, packed or padded",
    ),
    "mlm": Objective(
        BioXLSTMForMaskedLM,
        _masked_lm_collator,
        domains=(DNA.name,),
        # A bidirectional model reverses each padded sequence within its own length; packed rows
        # would read across sequence boundaries backwards.
        data_requirements={"packing": False},
        description="masked language modelling (80/10/10) for bidirectional and RC-PS DNA models",
    ),
    "fim-icl": Objective(
        BioXLSTMForCausalLM,
        _fim_collator,
        domains=(PROTEIN.name,),
        data_requirements={"homologs_in_context": True, "packing": False},
        description="protein homolog groups, a random member last as the query, in fill-in-the-middle form "
        "with probability data.fim_probability",
    ),
    "molecule-icl": Objective(
        BioXLSTMForCausalLM,
        lambda tokenizer, spec, config: MoleculeSetCollator(tokenizer, spec.packing, seed=spec.seed),
        domains=(SMILES.name,),
        data_requirements={"cut_at": MOLECULE_SEPARATOR},
        description="next-token prediction on molecule sets joined by '.', shuffled in every batch",
    ),
    # Labeled examples are padded: a conjoined or bidirectional model reads each sequence within its
    # own length, and one label per sequence needs one row per sequence.
    SEQUENCE_CLASSIFICATION: Objective(
        BioXLSTMForSequenceClassification,
        lambda tokenizer, spec, config: DataCollatorWithPadding(tokenizer),
        data_requirements={"packing": False},
        description="a class per sequence (cross-entropy on pooled token states)",
        labels=SEQUENCE_CLASSIFICATION,
    ),
    SEQUENCE_REGRESSION: Objective(
        BioXLSTMForSequenceClassification,
        lambda tokenizer, spec, config: DataCollatorWithPadding(tokenizer),
        data_requirements={"packing": False},
        description="a number per sequence (mean squared error on pooled token states)",
        labels=SEQUENCE_REGRESSION,
    ),
    TOKEN_CLASSIFICATION: Objective(
        BioXLSTMForTokenClassification,
        lambda tokenizer, spec, config: DataCollatorForTokenClassification(tokenizer),
        # A label string holds one class per character, and only DNA and protein tokens are characters.
        domains=(DNA.name, PROTEIN.name),
        data_requirements={"packing": False},
        description="a class per residue (cross-entropy on every token state)",
        labels=TOKEN_CLASSIFICATION,
    ),
}
