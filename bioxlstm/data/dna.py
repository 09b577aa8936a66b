"""DNA batches for the Hugging Face `Trainer`: masked or causal LM with reverse-complement augmentation."""

from dataclasses import dataclass

import torch
from transformers import DataCollatorForLanguageModeling

from ..models.sequence_ops import reversal_index, reverse_complement, reverse_positions
from ..token_rows import strand_positions
from ..tokenization import complement_map
from .collators import batch_seed

BASES = "ACGT"


@dataclass
class DNADataCollatorForLanguageModeling(DataCollatorForLanguageModeling):
    """`DataCollatorForLanguageModeling` for DNA (tensors only).

    Masked LM (`mlm=True`): each sequence token is selected with `mlm_probability` (special and
    padding tokens never); of the selected ones `mask_replace_prob` become `<mask>`,
    `random_replace_prob` a base drawn uniformly from A, C, G, T (not from the whole vocabulary,
    which would put special tokens inside sequences) and the rest stay unchanged; labels are -100
    except at selected positions. Causal LM (`mlm=False`): labels are the inputs, padding -100.

    rc_probability: each sequence is replaced by its reverse complement with this probability; the
    bases are reversed and complemented between the delimiters, which stay where they are
    (`<cls> ACG <eos>` becomes `<cls> CGT <eos>`), and the labels follow.

    With a `seed`, the draws of a batch come from the seed, `epoch` and the batch's content (see
    `bioxlstm.data.collators.batch_seed`); without one, from torch's global generator.
    """

    rc_probability: float = 0.0
    epoch: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.whole_word_mask:
            raise ValueError("DNA tokens are single bases; whole_word_mask does not apply")
        if not 0.0 <= self.rc_probability <= 1.0:
            raise ValueError(f"rc_probability must be in [0, 1], got {self.rc_probability}")
        if self.return_tensors != "pt":
            raise ValueError("DNADataCollatorForLanguageModeling returns PyTorch tensors only")
        self.complement = torch.tensor(complement_map(self.tokenizer))
        self.base_ids = torch.tensor(self.tokenizer.convert_tokens_to_ids(list(BASES)))

    def torch_call(self, examples) -> dict:
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, examples))
        batch = super().torch_call(examples)
        if self.rc_probability > 0:
            self._reverse_complement_some(batch)
        return batch

    def create_rng(self, *args, **kwargs) -> None:
        """Keeps the generator torch_call made for the batch. The parent would replace it with one
        stream drawn from `seed` (transformers >= 5.24 does so before every batch), whose position a
        resumed run cannot recover."""

    def _reverse_complement_some(self, batch: dict) -> None:
        labels = batch["labels"]
        original = torch.where(labels == -100, batch["input_ids"], labels) if self.mlm else batch["input_ids"]
        index = reversal_index(strand_positions(original, self.tokenizer.all_special_ids))
        chosen = torch.rand(original.shape[0], generator=self.generator) < self.rc_probability
        flipped = reverse_complement(batch["input_ids"], self.complement, index)
        batch["input_ids"] = torch.where(chosen[:, None], flipped, batch["input_ids"])
        # -100 is no token id: route it around the complement table and put it back.
        flipped_labels = reverse_complement(labels.clamp(min=0), self.complement, index)
        flipped_labels = flipped_labels.masked_fill(reverse_positions(labels, index) == -100, -100)
        batch["labels"] = torch.where(chosen[:, None], flipped_labels, labels)

    def torch_mask_tokens(self, inputs: torch.Tensor, special_tokens_mask=None, offset_mapping=None):
        labels = inputs.clone()
        if special_tokens_mask is None:
            special_tokens_mask = ~strand_positions(inputs, self.tokenizer.all_special_ids)
        selectable = ~special_tokens_mask.bool()
        selected = (torch.rand(inputs.shape, generator=self.generator) < self.mlm_probability) & selectable
        labels[~selected] = -100
        # One uniform draw per position splits the selected ones into mask / random base / unchanged.
        action = torch.rand(inputs.shape, generator=self.generator)
        to_mask = selected & (action < self.mask_replace_prob)
        to_random = selected & ~to_mask & (action < self.mask_replace_prob + self.random_replace_prob)
        inputs = inputs.masked_fill(to_mask, self.tokenizer.mask_token_id)
        random_bases = self.base_ids[torch.randint(len(BASES), inputs.shape, generator=self.generator)]
        inputs = torch.where(to_random, random_bases, inputs)
        return inputs, labels

