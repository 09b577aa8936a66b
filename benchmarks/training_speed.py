"""Training tokens/s of any model given as a function from token ids to logits: what the
benchmarks against the reference implementations time, the same way for both sides."""

import time

import torch
import torch.nn.functional as F


def training_seconds(forward, parameters, ids: torch.Tensor) -> float:
    """One step: forward, next-token-style cross-entropy over all positions, backward."""
    start = time.perf_counter()
    logits = forward(ids)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1))
    loss.backward()
    for parameter in parameters:
        parameter.grad = None
    return time.perf_counter() - start


def training_tokens_per_s(forward, parameters, ids: torch.Tensor, steps: int, warmup_tokens: int = 256) -> float:
    """Mean tokens/s over `steps` timed steps, after one warm-up step on the first `warmup_tokens`."""
    training_seconds(forward, parameters, ids[:, :warmup_tokens])
    seconds = [training_seconds(forward, parameters, ids) for _ in range(steps)]
    return ids.numel() / (sum(seconds) / len(seconds))
