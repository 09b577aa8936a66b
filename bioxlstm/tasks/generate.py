"""Sampling new sequences from a causal language model."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..tokenization import sequence_token_ids
from .score import require_causal_lm


@dataclass
class GeneratedSequence:
    id: str
    sequence: str  # the prompt followed by the generated continuation, special tokens removed
    log_likelihood: float  # of the generated tokens (and the final <eos>, if one was generated)
    finished: bool  # True when the model ended the sequence with <eos>


@torch.no_grad()
def generate_sequences(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    prompt: str = "",
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    id_prefix: str = "generated",
) -> list[GeneratedSequence]:
    """Sample `n` sequences after `<cls>` + `prompt`, each scored by the model's own log-likelihood
    of what it generated (the unmodified distribution, not the tempered or truncated one).

    For a model of a known domain, only tokens of that domain's sequences (and `<eos>`) are sampled:
    no gaps, sentinels or special tokens end up inside a generated sequence."""
    require_causal_lm(model, "generation")
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("-n, --max-new-tokens and --batch-size must be positive")
    if temperature <= 0:
        raise ValueError("--temperature must be positive")
    if seed is not None:
        torch.manual_seed(seed)
    prompt_ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=model.device)
    suppressed = None
    if model.config.domain is not None:
        allowed = set(sequence_token_ids(tokenizer, model.config.domain)) | {tokenizer.eos_token_id}
        suppressed = [i for i in range(model.config.vocab_size) if i not in allowed]
    results = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        out = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            do_sample=True,
            temperature=temperature,
            top_k=top_k or 0,
            top_p=top_p or 1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=rows,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=suppressed,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, prompt_ids.shape[1] :]
        log_probs = F.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        token_log_probs = log_probs.gather(-1, new_tokens[..., None])[..., 0]
        for row in range(rows):
            tokens = new_tokens[row].tolist()
            finished = tokenizer.eos_token_id in tokens
            length = tokens.index(tokenizer.eos_token_id) + 1 if finished else len(tokens)
            results.append(
                GeneratedSequence(
                    id=f"{id_prefix}_{start + row + 1}",
                    sequence=tokenizer.decode(out.sequences[row, : prompt_ids.shape[1] + length], skip_special_tokens=True),
                    log_likelihood=token_log_probs[row, :length].sum().item(),
                    finished=finished,
                )
            )
    return results
