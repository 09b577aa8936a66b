"""Decoding speed and memory against the context length: Bio-xLSTM against Llama with a KV cache (CPU).

For each context length (1k, 4k, 16k, 64k tokens), batch 1, fp32, models of about 10M parameters with
random weights (the sizes of `core_speed.py`):

- `bioxlstm` reads the context window by window (8,192 tokens at a time, the state carried, so the
  prefill itself stays in bounded memory) and then decodes from its recurrent state;
- `llama` (`transformers.LlamaForCausalLM`, SDPA) decodes from a KV cache holding the context. The
  cache is filled with random keys and values instead of a prefill: a step costs the same whatever
  the cached values are, and an exact prefill of 64k tokens costs O(n^2) attention on a CPU.

Reported per model and context: decoding tokens/s (greedy, timed from the first chosen token on by a
logits processor, so the prefill is excluded; best of 2), the bytes of the state or KV cache the step
reads, and the growth of the resident set while decoding. Results in
`benchmarks/results/decode_context_cpu.csv` and `.png`; the table is in `benchmarks/README.md`.

    python benchmarks/decode_context.py [--threads 1] [--contexts 1024 4096 16384 65536] [--out DIR]
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from core_speed import FULL, VOCAB_SIZE, Clock, PeakRss, ours_config  # noqa: E402
from transformers import DynamicCache, LogitsProcessorList  # noqa: E402

import bioxlstm  # noqa: E402

NEW_TOKENS = 32
PREFILL_WINDOW = 8192


def decode_rate(model, **inputs) -> float:
    clock = Clock()
    model.generate(
        **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
        pad_token_id=0, logits_processor=LogitsProcessorList([clock]),
        disable_compile=True,  # a cache passed in from outside is not one of transformers' compilable caches
    )
    return (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])


@torch.no_grad()
def measure_ours(model, context: int) -> dict:
    prompt = torch.randint(1, VOCAB_SIZE, (1, context))
    cache = None
    for start in range(0, context - 1, PREFILL_WINDOW):
        window = prompt[:, start : min(start + PREFILL_WINDOW, context - 1)]
        cache = model(window, cache_params=cache, use_cache=True, logits_to_keep=1).cache_params
    last = prompt[:, -1:]
    state_bytes = sum(t.numel() * t.element_size() for state in cache.states for t in state if t is not None)
    rates = []
    with PeakRss() as rss:
        for _ in range(2):
            rates.append(decode_rate(model, input_ids=last, attention_mask=torch.ones_like(last),
                                     cache_params=cache.repeat_interleave(1)))
    return dict(tokens_per_s=max(rates), cache_mb=state_bytes / 2**20, decode_rss_growth_mb=rss.growth_mb)


@torch.no_grad()
def measure_llama(model, context: int) -> dict:
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    prompt = torch.randint(1, VOCAB_SIZE, (1, context))

    def filled_cache() -> DynamicCache:
        cache = DynamicCache(config=config)
        for layer in range(config.num_hidden_layers):
            keys, values = (torch.randn(1, config.num_key_value_heads, context - 1, head_dim) for _ in range(2))
            cache.update(keys, values, layer)
        return cache

    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * (context - 1) * head_dim * 4
    rates = []
    with PeakRss() as rss:
        for _ in range(2):
            rates.append(decode_rate(model, input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                     past_key_values=filled_cache()))
    return dict(tokens_per_s=max(rates), cache_mb=kv_bytes / 2**20, decode_rss_growth_mb=rss.growth_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = bioxlstm.BioXLSTMForCausalLM(ours_config(FULL, [])).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=FULL.hidden, intermediate_size=FULL.llama_intermediate,
        num_hidden_layers=FULL.peer_layers, num_attention_heads=8, num_key_value_heads=8,
        max_position_embeddings=2 * max(args.contexts), attn_implementation="sdpa",
    )).eval()
    rows = []
    for context in args.contexts:
        for name, model, measure in (("bioxlstm", ours, measure_ours), ("llama", llama, measure_llama)):
            result = measure(model, context)
            params = sum(p.numel() for p in model.parameters())
            rows.append(dict(model=name, params=params, context=context, **result))
            print(f"{context:6d} {name:9s} {result['tokens_per_s']:8.1f} tokens/s  cache {result['cache_mb']:8.1f} MB  "
                  f"decode RSS +{result['decode_rss_growth_mb']:.0f} MB", flush=True)
    table = pd.DataFrame(rows)
    llama_rate = table[table.model == "llama"].set_index("context")["tokens_per_s"]
    table["ratio_vs_llama"] = table["tokens_per_s"] / table["context"].map(llama_rate)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "decode_context_cpu.csv", index=False, float_format="%.4g")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, part in table.groupby("model", sort=False):
        axes[0].plot(part["context"], part["tokens_per_s"], marker="o", label=name)
        axes[1].plot(part["context"], part["cache_mb"], marker="o", label=name)
    for ax, label in zip(axes, ("decoding tokens/s", "state / KV cache (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context tokens")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("Decoding after a long context, batch 1, fp32, CPU")
    fig.tight_layout()
    fig.savefig(args.out / "decode_context_cpu.png", dpi=120)
    print("| model | context | tokens/s | vs Llama | state or KV cache (MB) | RSS growth while decoding (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in table.itertuples():
        print(f"| {r.model} | {r.context} | {r.tokens_per_s:.1f} | {r.ratio_vs_llama:.2f}x | {r.cache_mb:.1f} | "
              f"{r.decode_rss_growth_mb:.0f} |")


if __name__ == "__main__":
    main()
