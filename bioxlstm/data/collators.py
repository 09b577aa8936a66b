"""Collators: lists of `input_ids` examples -> model batches, one per training objective."""

from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening, PreTrainedTokenizerBase


def causal_lm_collator(tokenizer: PreTrainedTokenizerBase, packing: bool):
    """Next-token prediction batches.

    packing: all examples of a batch side by side in one row, with `seq_idx` telling the model
    where each starts; it resets every recurrent state (mLSTM memory, sLSTM cell, conv window) there,
    and no label crosses a boundary, so the loss is that of the examples run one by one, with no
    compute spent on padding. Otherwise the examples are right-padded to the longest, with
    `attention_mask` making the padding invisible and its labels ignored.
    """
    if packing:
        # The model has no position embeddings; position_ids would only ride along unused.
        return DataCollatorWithFlattening(return_seq_idx=True, return_position_ids=False)
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)
