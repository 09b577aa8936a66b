"""Collators: lists of `input_ids` examples -> model batches, one per training objective."""

import random
import zlib

from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening, PreTrainedTokenizerBase

from ..tokenization import MOLECULE_SEPARATOR, vocabulary_id


def causal_lm_collator(tokenizer: PreTrainedTokenizerBase, packing: bool):
    """Next-token prediction batches.

    packing: all examples of a batch side by side in one row, with `seq_idx` telling the model
    where each starts; it resets every recurrent state (mLSTM memory, sLSTM cell, conv window) there
    and numbers rotary positions from 0 again, as it does for the example read alone; no label
    crosses a boundary, so the loss is that of the examples run one by one, with no compute spent on
    padding. No `position_ids` are sent: the model numbers each example itself, restart tokens
    (`config.position_restart_token_id`) included. Otherwise the examples are right-padded to the
    longest, with `attention_mask` making the padding invisible and its labels ignored.
    """
    if packing:
        return DataCollatorWithFlattening(return_seq_idx=True, return_position_ids=False)
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def batch_seed(seed: int, epoch: int, features: list[dict]) -> int:
    """The seed of one batch's random draws: a function of the collator's seed, the epoch and the
    batch's own tokens, never of a shared random stream.

    So a run resumed from a checkpoint collates every batch exactly as the uninterrupted run did
    (the `Trainer` restores the order of the examples, but data loaders fetch batches ahead of the
    step, which a restored global random state cannot account for), and an evaluation, run at a
    fixed epoch, sees the same batches every time. The epoch (set by the trainer) gives an example
    new draws on every pass over the data.
    """
    content = [feature.get("input_ids", feature.get("sequences")) for feature in features]
    return zlib.crc32(repr(content).encode(), zlib.crc32(f"{seed}:{epoch}".encode()))


class MoleculeSetCollator:
    """Next-token prediction on molecule sets, in a fresh order every time (permutation augmentation).

    An example is `<cls> m1 . m2 . ... mk` (a set of molecules of one domain, in the in-context
    format of `bioxlstm.generate_molecules`), optionally closed by `<eos>` or a trailing `.`. Its
    molecules are shuffled, with the delimiters kept in place, before `causal_lm_collator` batches
    it. The orders are drawn as `batch_seed` describes.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, packing: bool, seed: int = 0):
        self.seed, self.epoch = seed, 0
        self.separator_id = vocabulary_id(tokenizer, MOLECULE_SEPARATOR)
        if self.separator_id is None:
            raise ValueError(f"the tokenizer has no token for the molecule separator {MOLECULE_SEPARATOR!r}")
        self.delimiters = {tokenizer.cls_token_id, tokenizer.eos_token_id}
        self.batches = causal_lm_collator(tokenizer, packing)

    def permuted(self, input_ids: list[int], rng: random.Random) -> list[int]:
        start = 1 if input_ids and input_ids[0] in self.delimiters else 0
        end = len(input_ids) - 1 if len(input_ids) > start and input_ids[-1] in self.delimiters else len(input_ids)
        trailing = end > start and input_ids[end - 1] == self.separator_id
        molecules, current = [], []
        for token in input_ids[start : end - trailing]:
            if token == self.separator_id:
                molecules.append(current)
                current = []
            else:
                current.append(token)
        molecules.append(current)
        rng.shuffle(molecules)
        body = [token for index, molecule in enumerate(molecules) for token in ([self.separator_id] * (index > 0) + molecule)]
        return [*input_ids[:start], *body, *([self.separator_id] * trailing), *input_ids[end:]]

    def __call__(self, features: list[dict]) -> dict:
        rng = random.Random(batch_seed(self.seed, self.epoch, features))
        return self.batches([{**feature, "input_ids": self.permuted(list(feature["input_ids"]), rng)} for feature in features])
