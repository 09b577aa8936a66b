"""Core model speed on CPU: Bio-xLSTM against transformers' xLSTM and Llama of the same size.

What it measures, in one process, with the models interleaved per configuration so that machine
noise hits them alike (the ratios are the robust result, the absolute numbers are not):

- training tokens/s: forward + backward (`labels=input_ids`, gradients zeroed every step), batch 1,
  at 1k and 8k tokens of context; one warm-up step, then enough timed steps for ~15 s (at least 2);
- decoding tokens/s after a 1k and an 8k prompt: greedy `generate()` of N new tokens, batch 1, timed
  by a logits processor that notes the clock each time a token is chosen: the first note comes right
  after the prompt's prefill, so (N - 1) / (last - first) counts decoding steps only; the fastest of
  a few repetitions after one warm-up. (Subtracting a 1-token `generate()` instead leaves the
  prefill's run-to-run noise in the result, which at 8k tokens was larger than the decoding time.)
- the peak growth of the resident set (psutil) during the warm-up call, a rough memory reading.

The models, built from configs with random weights (no download), fp32, vocabulary 64, each
about 10M parameters (counts printed and written out; ~25M made one 8k training step of
Bio-xLSTM take over a minute on 2 cores):

- `bioxlstm`: `BioXLSTMForCausalLM`, mLSTM blocks only, native PyTorch kernels (chunkwise for
  training and prefill, recurrent step for decoding);
- `transformers-xlstm`: `transformers.xLSTMForCausalLM` with its native chunkwise kernels
  (`mode="train"` for training, `mode="inference"` for generation, fp32 kernels and states);
- `llama`: `transformers.LlamaForCausalLM`, SDPA attention, the default KV cache (DynamicCache).
- with `--slstm`, one more row: `bioxlstm` with block 1 an sLSTM block (its scan is a Python loop
  over time steps on CPU).

Run from the repository root (the full run takes about 15-25 minutes on 2 CPU cores):

    python benchmarks/core_speed.py                # writes benchmarks/results/core_speed_cpu.{csv,png}
    python benchmarks/core_speed.py --quick        # tiny models and contexts, < 1 min smoke run
    python benchmarks/core_speed.py --out /tmp/r   # elsewhere
    python benchmarks/core_speed.py --train-contexts 32768 --decode-contexts --gradient-checkpointing \
        --out benchmarks/results/training_32k       # training at 32k tokens only

The CSV has one row per model, task and context: tokens_per_s, the ratios to Llama and to the
transformers xLSTM, the parameter count and the peak RSS growth. Results: benchmarks/README.md.
"""

import argparse
import ctypes
import gc
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

import bioxlstm  # noqa: E402

VOCAB_SIZE = 64
OURS, OURS_SLSTM, TRANSFORMERS_XLSTM, LLAMA = "bioxlstm", "bioxlstm+sLSTM", "transformers-xlstm", "llama"


@dataclass(frozen=True)
class Settings:
    """Sizes and measurement lengths of one run (full or --quick)."""

    hidden: int
    ours_blocks: int
    peer_layers: int
    llama_intermediate: int
    contexts: tuple[int, ...]
    new_tokens: int
    train_seconds: float  # time budget of the timed training steps per configuration
    repeats: int  # generate() calls of each length per decode measurement; the fastest counts


FULL = Settings(
    hidden=512, ours_blocks=6, peer_layers=3, llama_intermediate=1376,
    contexts=(1024, 8192), new_tokens=64, train_seconds=15.0, repeats=3,
)
QUICK = Settings(
    hidden=128, ours_blocks=4, peer_layers=2, llama_intermediate=344,
    contexts=(128, 512), new_tokens=8, train_seconds=0.3, repeats=1,
)


@dataclass
class Peer:
    name: str
    train_model: torch.nn.Module
    generate_model: torch.nn.Module

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.train_model.parameters())


def ours_config(s: Settings, slstm_blocks: list[int]) -> bioxlstm.BioXLSTMConfig:
    # mLSTM blocks have no feed-forward, so at equal width they take twice the blocks of a
    # transformer layer for the same parameter count (as in the xLSTM paper).
    return bioxlstm.BioXLSTMConfig(
        vocab_size=VOCAB_SIZE, hidden_size=s.hidden, num_hidden_layers=s.ours_blocks, num_heads=4,
        block_types=["slstm" if i in slstm_blocks else "mlstm" for i in range(s.ours_blocks)],
        proj_factor=2.0, conv1d_kernel_size=4, qkv_proj_blocksize=4, chunk_size=64, kernel="native", dropout=0.0,
    )


def transformers_xlstm(s: Settings, mode: str) -> transformers.xLSTMForCausalLM:
    torch.manual_seed(0)
    config = transformers.xLSTMConfig(
        vocab_size=VOCAB_SIZE, hidden_size=s.hidden, num_hidden_layers=s.peer_layers, num_heads=4,
        chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
        step_kernel="native", mode=mode, chunk_size=64, autocast_kernel_dtype="float32",
        inference_state_dtype="float32",
    )
    return transformers.xLSTMForCausalLM(config)


def build_peers(s: Settings, with_slstm: bool, max_context: int) -> list[Peer]:
    torch.manual_seed(0)
    ours = bioxlstm.BioXLSTMForCausalLM(ours_config(s, []))
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB_SIZE, hidden_size=s.hidden, intermediate_size=s.llama_intermediate,
            num_hidden_layers=s.peer_layers, num_attention_heads=8, num_key_value_heads=8,
            max_position_embeddings=2 * max_context, attention_dropout=0.0,
            attn_implementation="sdpa",
        )
    )
    peers = [
        Peer(OURS, ours, ours),
        Peer(TRANSFORMERS_XLSTM, transformers_xlstm(s, "train"), transformers_xlstm(s, "inference")),
        Peer(LLAMA, llama, llama),
    ]
    if with_slstm:
        torch.manual_seed(0)
        ours_slstm = bioxlstm.BioXLSTMForCausalLM(ours_config(s, [1]))
        peers.append(Peer(OURS_SLSTM, ours_slstm, ours_slstm))
    return peers


class PeakRss:
    """Context manager: the peak growth of this process's resident set, sampled every 5 ms.

    Memory freed by earlier measurements is handed back to the OS first (glibc `malloc_trim`),
    so that a model measured after another one does not reuse its freed heap unseen.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.process = psutil.Process()

    def __enter__(self) -> "PeakRss":
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_training(model: torch.nn.Module, context: int, budget_s: float) -> tuple[float, float]:
    """Training tokens/s (forward + backward, batch 1) and the peak RSS growth of one step."""
    model.train()
    ids = torch.randint(VOCAB_SIZE, (1, context))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    with PeakRss() as rss:
        warm_up_s = timed(step)
    steps = max(2, round(budget_s / warm_up_s))
    elapsed = timed(lambda: [step() for _ in range(steps)])
    model.zero_grad(set_to_none=True)
    return steps * context / elapsed, rss.growth_mb


class Clock(LogitsProcessor):
    """Notes the time whenever `generate()` chooses a token; leaves the scores as they are."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


@torch.no_grad()
def measure_decoding(model: torch.nn.Module, prompt_len: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """Decode tokens/s after a prompt (prefill excluded) and the peak RSS growth of one generate()."""
    model.eval()
    prompt = torch.randint(1, VOCAB_SIZE, (1, prompt_len))

    def decode_rate() -> float:
        clock = Clock()
        out = model.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
            pad_token_id=0, logits_processor=LogitsProcessorList([clock]),
        )
        assert out.shape[1] == prompt_len + new_tokens, out.shape
        return (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])

    with PeakRss() as rss:
        decode_rate()
    return max(decode_rate() for _ in range(repeats)), rss.growth_mb


def run(s: Settings, peers: list[Peer], contexts: dict[str, list[int]]) -> pd.DataFrame:
    """contexts: the context lengths of each task ("training", "decoding")."""
    rows = []
    for task in ("training", "decoding"):
        for context in contexts[task]:
            for peer in peers:
                if task == "training":
                    tokens_per_s, rss_mb = measure_training(peer.train_model, context, s.train_seconds)
                else:
                    tokens_per_s, rss_mb = measure_decoding(peer.generate_model, context, s.new_tokens, s.repeats)
                print(f"{task:9s} {context:6d}  {peer.name:18s} {tokens_per_s:10.1f} tokens/s  "
                      f"peak RSS +{rss_mb:.0f} MB", flush=True)
                rows.append(dict(model=peer.name, params=peer.params, task=task, context=context,
                                 tokens_per_s=tokens_per_s, peak_rss_growth_mb=rss_mb))
    table = pd.DataFrame(rows)
    configs = pd.MultiIndex.from_frame(table[["task", "context"]])
    for peer, column in ((LLAMA, "ratio_vs_llama"), (TRANSFORMERS_XLSTM, "ratio_vs_transformers_xlstm")):
        reference = table[table["model"] == peer].set_index(["task", "context"])["tokens_per_s"]
        table[column] = table["tokens_per_s"].to_numpy() / reference.loc[configs].to_numpy()
    columns = ["model", "params", "task", "context", "tokens_per_s", "ratio_vs_llama",
               "ratio_vs_transformers_xlstm", "peak_rss_growth_mb"]
    return table[columns]


def plot(table: pd.DataFrame, path: Path) -> None:
    models = list(dict.fromkeys(table["model"]))
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        part = table[table["task"] == task]
        contexts = sorted(part["context"].unique())
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            values = [part[(part["model"] == model) & (part["context"] == c)]["tokens_per_s"].iloc[0] for c in contexts]
            bars = ax.bar([x + i * width for x in range(len(contexts))], values, width, label=model)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(contexts))])
        what = "context" if task == "training" else "prompt"
        ax.set_xticklabels([f"{c} {what}" for c in contexts])
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{task} (batch 1, fp32, CPU)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(table: pd.DataFrame) -> str:
    header = "| model | params | task | context | tokens/s | vs Llama | vs transformers xLSTM |"
    lines = [header, "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in table.itertuples():
        lines.append(f"| {r.model} | {r.params / 1e6:.1f}M | {r.task} | {r.context} | {r.tokens_per_s:.1f} "
                     f"| {r.ratio_vs_llama:.2f}x | {r.ratio_vs_transformers_xlstm:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Training and decoding tokens/s of Bio-xLSTM against transformers' xLSTM and Llama "
        "(~10M parameters each, random weights, fp32, CPU), measured in one process.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and contexts: a smoke run of under a minute (files get a _quick suffix)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="directory for core_speed_cpu.csv and .png (default: benchmarks/results)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument("--slstm", action="store_true",
                        help="add a row for bioxlstm with block 1 an sLSTM block (slow on CPU: a Python loop per step)")
    parser.add_argument("--train-contexts", type=int, nargs="*", metavar="N",
                        help="training context lengths (default: 1024 8192; none: skip training)")
    parser.add_argument("--decode-contexts", type=int, nargs="*", metavar="N",
                        help="prompt lengths before decoding (default: 1024 8192; none: skip decoding)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="train every model with gradient checkpointing (for long contexts: at 32k tokens "
                        "Bio-xLSTM's activations alone would take about 17 GB)")
    args = parser.parse_args()

    settings = QUICK if args.quick else FULL
    contexts = {
        "training": list(settings.contexts) if args.train_contexts is None else args.train_contexts,
        "decoding": list(settings.contexts) if args.decode_contexts is None else args.decode_contexts,
    }
    torch.set_num_threads(args.threads)
    peers = build_peers(settings, args.slstm, max(contexts["training"] + contexts["decoding"]))
    if args.gradient_checkpointing:
        for peer in peers:
            peer.train_model.activation_checkpointing_enable()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"{psutil.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    for peer in peers:
        print(f"{peer.name:18s} {peer.params:,} parameters")

    table = run(settings, peers, contexts)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "core_speed_cpu_quick" if args.quick else "core_speed_cpu"
    table.to_csv(args.out / f"{stem}.csv", index=False, float_format="%.4g")
    plot(table, args.out / f"{stem}.png")
    print(markdown(table))
    print(f"wrote {args.out / stem}.csv and .png")


if __name__ == "__main__":
    main()
