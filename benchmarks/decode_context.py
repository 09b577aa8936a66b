"""Decoding speed and memory against the context length: Bio-xLSTM against transformers' xLSTM and
Llama with a KV cache (CPU).

For each model size (about 2.4M, 10M and 21M parameters, random weights, fp32; the 10M models are those
of `core_speed.py`), batch size (1 and 16) and context length (1k, 4k, 16k, 64k tokens):

- `bioxlstm` and `transformers-xlstm` (`transformers.xLSTMForCausalLM`, its native kernels, 3 layers)
  read the context window by window (8,192 tokens at a time, the state carried, so the prefill itself
  stays in bounded memory) and then decode from their recurrent state. At batch > 1 every row starts
  from a copy of that one state: a step costs the same whatever the state holds, and B prefills of
  64k tokens would only lengthen the run;
- `llama` (`transformers.LlamaForCausalLM`, SDPA) decodes from a KV cache holding the context. The
  cache is filled with random keys and values instead of a prefill: a step costs the same whatever
  the cached values are, and an exact prefill of 64k tokens costs O(n^2) attention on a CPU.
  A configuration whose KV cache would exceed `--max-cache-gb` is skipped (and listed as skipped).

Reported per row: decoding tokens/s summed over the batch (greedy, timed from the first chosen token
on by a logits processor, so the prefill is excluded; best of 2), the bytes of the state or KV cache
the step reads, and the growth of the resident set while decoding. Results in
`benchmarks/results/decode_context_cpu.csv` and `.png`; the table is in `benchmarks/README.md`.

    python benchmarks/decode_context.py [--threads 1] [--sizes 2.4M 10M 21M] [--batches 1 16]
                                        [--contexts 1024 4096 16384 65536] [--max-cache-gb 4] [--out DIR]
"""

import argparse
import copy
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from core_speed import FULL, VOCAB_SIZE, Clock, PeakRss, Settings, ours_config, transformers_xlstm  # noqa: E402
from transformers import DynamicCache, LogitsProcessorList  # noqa: E402

import bioxlstm  # noqa: E402

NEW_TOKENS = 32
PREFILL_WINDOW = 8192
# Hidden size and Llama feed-forward width per size; the three models have about that many parameters
# (6 mLSTM blocks against 3 layers, as in core_speed.py). Hidden sizes are multiples of 256: at others
# (288, 832) transformers' xLSTMCache rounds the head dimensions up and no longer fits its own layers.
SIZES = {
    "2.4M": dataclasses.replace(FULL, hidden=256, llama_intermediate=688),
    "10M": FULL,
    "21M": dataclasses.replace(FULL, hidden=768, llama_intermediate=2064),
}


def decode_rate(model, **inputs) -> float:
    clock = Clock()
    model.generate(
        **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
        pad_token_id=0, logits_processor=LogitsProcessorList([clock]),
        disable_compile=True,  # transformers' xLSTMCache, passed in, lacks the attribute generate asks for
    )
    return (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])


def state_tensors(cache) -> list[torch.Tensor]:
    if isinstance(cache, bioxlstm.BioXLSTMCache):
        return cache.tensors()
    return [t for state in cache.rnn_state.values() for t in state]


def rows_of(cache, batch: int):
    """A new cache whose `batch` rows all start from the one row of `cache` (left unchanged)."""
    if isinstance(cache, bioxlstm.BioXLSTMCache):
        return cache.repeat_interleave(batch)
    copied = copy.copy(cache)  # transformers' xLSTMCache, which its generate updates in place
    copied.rnn_state = {layer: tuple(t.repeat_interleave(batch, dim=0) for t in state)
                        for layer, state in cache.rnn_state.items()}
    copied.seqlen_offset = cache.seqlen_offset.clone()
    return copied


@torch.no_grad()
def measure_recurrent(model, context: int, batch: int) -> dict:
    """Bio-xLSTM or transformers' xLSTM: read the context window by window with the state carried,
    give every row of the batch a copy of that state, decode."""
    prompt = torch.randint(1, VOCAB_SIZE, (1, context))
    cache = None
    for start in range(0, context - 1, PREFILL_WINDOW):
        window = prompt[:, start : min(start + PREFILL_WINDOW, context - 1)]
        cache = model(window, cache=cache, use_cache=True).cache
    last = prompt[:, -1:].expand(batch, 1)
    state_bytes = batch * sum(t.numel() * t.element_size() for t in state_tensors(cache))
    rates = []
    with PeakRss() as rss:
        for _ in range(2):
            rates.append(batch * decode_rate(model, input_ids=last, attention_mask=torch.ones_like(last),
                                             cache=rows_of(cache, batch)))
    return dict(tokens_per_s=max(rates), cache_mb=state_bytes / 2**20, decode_rss_growth_mb=rss.growth_mb)


def llama_cache_bytes(config, context: int, batch: int) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * batch * config.num_key_value_heads * (context - 1) * head_dim * 4


@torch.no_grad()
def measure_llama(model, context: int, batch: int) -> dict:
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    prompt = torch.randint(1, VOCAB_SIZE, (batch, context))

    def filled_cache() -> DynamicCache:
        cache = DynamicCache(config=config)
        for layer in range(config.num_hidden_layers):
            keys, values = (torch.randn(batch, config.num_key_value_heads, context - 1, head_dim) for _ in range(2))
            cache.update(keys, values, layer)
        return cache

    kv_bytes = llama_cache_bytes(config, context, batch)
    rates = []
    with PeakRss() as rss:
        for _ in range(2):
            rates.append(batch * decode_rate(model, input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                             past_key_values=filled_cache()))
    return dict(tokens_per_s=max(rates), cache_mb=kv_bytes / 2**20, decode_rss_growth_mb=rss.growth_mb)


def build_models(settings: Settings, max_context: int) -> dict[str, torch.nn.Module]:
    """Bio-xLSTM, transformers' xLSTM and Llama of about the same size, by name."""
    torch.manual_seed(0)
    ours = bioxlstm.BioXLSTMForCausalLM(ours_config(settings, [])).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=settings.hidden, intermediate_size=settings.llama_intermediate,
        num_hidden_layers=settings.peer_layers, num_attention_heads=8, num_key_value_heads=8,
        max_position_embeddings=2 * max_context, attn_implementation="sdpa",
    )).eval()
    return {"bioxlstm": ours, "transformers-xlstm": transformers_xlstm(settings, "inference").eval(), "llama": llama}


LINE_STYLES = {"bioxlstm": "-", "transformers-xlstm": ":", "llama": "--"}


def plot(table: pd.DataFrame, path: Path) -> None:
    batches = sorted(table["batch"].unique())
    fig, axes = plt.subplots(2, len(batches), figsize=(5 * len(batches), 8), squeeze=False)
    for column, batch in enumerate(batches):
        for (size, name), part in table[table.batch == batch].groupby(["size", "model"], sort=False):
            style = dict(marker="o", linestyle=LINE_STYLES[name], label=f"{name} {size}")
            axes[0, column].plot(part["context"], part["tokens_per_s"], **style)
            axes[1, column].plot(part["context"], part["cache_mb"], **style)
        for ax, label in zip(axes[:, column], ("decoding tokens/s (all rows)", "state / KV cache (MB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context tokens")
            ax.set_ylabel(label)
            ax.set_title(f"batch {batch}")
            ax.legend(fontsize=7)
    fig.suptitle("Decoding after a long context, fp32, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--max-cache-gb", type=float, default=4.0,
                        help="skip configurations whose Llama KV cache would be larger (default: 4)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, skipped = [], []
    for size in args.sizes:
        models = build_models(SIZES[size], max(args.contexts))
        for batch in args.batches:
            for context in args.contexts:
                if llama_cache_bytes(models["llama"].config, context, batch) > args.max_cache_gb * 2**30:
                    skipped.append(f"{size} batch {batch} context {context}")
                    continue
                for name, model in models.items():
                    measure = measure_llama if name == "llama" else measure_recurrent
                    result = measure(model, context, batch)
                    params = sum(p.numel() for p in model.parameters())
                    rows.append(dict(model=name, size=size, params=params, batch=batch, context=context, **result))
                    print(f"{size:4s} batch {batch:3d} {context:6d} {name:9s} {result['tokens_per_s']:8.1f} tokens/s  "
                          f"cache {result['cache_mb']:8.1f} MB  decode RSS +{result['decode_rss_growth_mb']:.0f} MB",
                          flush=True)
    table = pd.DataFrame(rows)
    keys = ["size", "batch", "context"]
    llama_rate = table[table.model == "llama"].set_index(keys)["tokens_per_s"].rename("llama_tokens_per_s")
    table = table.join(llama_rate, on=keys)
    table["ratio_vs_llama"] = table["tokens_per_s"] / table.pop("llama_tokens_per_s")
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "decode_context_cpu.csv", index=False, float_format="%.4g")
    plot(table, args.out / "decode_context_cpu.png")
    print("| size | batch | model | params | context | tokens/s | vs Llama | state or KV cache (MB) | RSS growth while decoding (MB) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table.itertuples():
        print(f"| {r.size} | {r.batch} | {r.model} | {r.params / 1e6:.1f}M | {r.context} | {r.tokens_per_s:.1f} | "
              f"{r.ratio_vs_llama:.2f}x | {r.cache_mb:.1f} | {r.decode_rss_growth_mb:.0f} |")
    if skipped:
        print(f"skipped (Llama KV cache over {args.max_cache_gb} GB): {'; '.join(skipped)}")


if __name__ == "__main__":
    main()
