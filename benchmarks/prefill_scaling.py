"""Prefill time against the context length, up to 131k tokens: Bio-xLSTM against transformers' xLSTM
and Llama (CPU).

Reading a long context (a genome region, a homolog family) before scoring or generating is the
prefill. A recurrent model should do it in time linear in the length, in bounded memory; attention
costs O(n^2) time. For each length (1k ... 131k tokens), batch 1, fp32, the ~10M-parameter models of
`core_speed.py` with random weights:

- `bioxlstm` and `transformers-xlstm` (`transformers.xLSTMForCausalLM`, native kernels) read the
  context 8,192 tokens at a time with the state carried (what `bioxlstm.tasks` do with long inputs)
  and end with the recurrent state;
- `llama` (`transformers.LlamaForCausalLM`, SDPA) runs one forward over the context and ends with
  its KV cache, up to `--llama-max-context` tokens (default 16k: beyond it a CPU run takes too long).

Reported: seconds (best of `--repeats`), tokens/s, and the peak growth of the resident set; the
exponent `a` of a power-law fit `seconds ~ tokens^a` over each model's lengths of 4k and more
(1 = linear, 2 = quadratic) is printed. Results in `benchmarks/results/prefill_scaling_cpu.csv`
and `.png`; the table is in `benchmarks/README.md`.

    python benchmarks/prefill_scaling.py [--threads 1] [--contexts 1024 ... 131072] [--out DIR]
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from core_speed import FULL, VOCAB_SIZE, PeakRss  # noqa: E402
from decode_context import PREFILL_WINDOW, build_models  # noqa: E402

FIT_FROM = 4096  # shorter contexts are dominated by fixed per-call costs


@torch.no_grad()
def prefill_recurrent(model, prompt: torch.Tensor) -> None:
    cache = None
    for start in range(0, prompt.shape[1], PREFILL_WINDOW):
        window = prompt[:, start : start + PREFILL_WINDOW]
        cache = model(window, cache=cache, use_cache=True).cache


@torch.no_grad()
def prefill_llama(model, prompt: torch.Tensor) -> None:
    model(prompt, use_cache=True, logits_to_keep=1)


def measure(prefill, model, context: int, repeats: int) -> dict:
    prompt = torch.randint(1, VOCAB_SIZE, (1, context))
    times = []
    with PeakRss() as rss:
        for _ in range(repeats):
            start = time.perf_counter()
            prefill(model, prompt)
            times.append(time.perf_counter() - start)
    return dict(seconds=min(times), tokens_per_s=context / min(times), rss_growth_mb=rss.growth_mb)


def scaling_exponent(part: pd.DataFrame) -> float:
    fitted = part[part.context >= FIT_FROM]
    if len(fitted) < 2:
        return float("nan")
    return float(np.polyfit(np.log(fitted.context), np.log(fitted.seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768, 65536, 131072])
    parser.add_argument("--llama-max-context", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = build_models(FULL, max(args.contexts))
    rows = []
    for context in args.contexts:
        for name, model in models.items():
            if name == "llama" and context > args.llama_max_context:
                continue
            prefill = prefill_llama if name == "llama" else prefill_recurrent
            result = measure(prefill, model, context, args.repeats)
            rows.append(dict(model=name, params=sum(p.numel() for p in model.parameters()), context=context, **result))
            print(f"{context:7d} {name:9s} {result['seconds']:8.2f} s  {result['tokens_per_s']:8.1f} tokens/s  "
                  f"RSS +{result['rss_growth_mb']:.0f} MB", flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "prefill_scaling_cpu.csv", index=False, float_format="%.4g")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, part in table.groupby("model", sort=False):
        exponent = scaling_exponent(part)
        axes[0].plot(part.context, part.seconds, marker="o", label=f"{name} (time ~ n^{exponent:.2f})")
        axes[1].plot(part.context, part.tokens_per_s, marker="o", label=name)
        print(f"{name}: seconds ~ tokens^{exponent:.2f} over contexts >= {FIT_FROM}")
    for ax, label in zip(axes, ("prefill seconds", "prefill tokens/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("Prefill against context length, batch 1, fp32, CPU")
    fig.tight_layout()
    fig.savefig(args.out / "prefill_scaling_cpu.png", dpi=120)
    print("| model | context | seconds | tokens/s | RSS growth (MB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in table.itertuples():
        print(f"| {r.model} | {r.context} | {r.seconds:.2f} | {r.tokens_per_s:.0f} | {r.rss_growth_mb:.0f} |")


if __name__ == "__main__":
    main()
