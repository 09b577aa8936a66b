"""Long-context training steps with and without per-block activation checkpointing: peak memory and tokens/s.

One training step (forward, backward, AdamW) on one row of L DNA tokens, for each L in `--lengths`
and each mode: `plain` keeps every block's activations for backward, `checkpointed` keeps only each
block's input and recomputes the block in backward (`training.activation_checkpointing: true`, the
model's `activation_checkpointing_enable`). The model is that of `recipes/dna-clm-tiny.yaml` (hidden
128, 4 mLSTM blocks) unless `--hidden`/`--blocks` say otherwise. Each (L, mode) runs in a fresh
process so that peaks do not carry over. Reported: peak memory of the step above what the process
held before it (CPU: the peak resident set from getrusage; GPU: torch.cuda.max_memory_allocated),
and tokens per second over the timed steps (after `--warmup` untimed ones). A run that fails (e.g.
out of memory) is reported with its error. Results in `benchmarks/results/long_context_training.csv`.

    python benchmarks/long_context_training.py [--lengths 8192 32768 131072] [--device cpu] [--steps 1] [--warmup 0]
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain", "checkpointed")


def run_one(length: int, mode: str, device: str, steps: int, warmup: int, hidden: int, blocks: int) -> dict:
    import resource
    import time

    import torch

    from bioxlstm import BioXLSTMConfig, BioXLSTMForCausalLM, load_tokenizer

    tokenizer = load_tokenizer("dna")
    config = BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=blocks, num_heads=4,
        chunk_size=64, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = BioXLSTMForCausalLM(config).to(device).train()
    if mode == "checkpointed":
        model.activation_checkpointing_enable({"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bases = [tokenizer.convert_tokens_to_ids(base) for base in "ACGT"]
    draws = torch.randint(0, 4, (1, length), generator=torch.Generator().manual_seed(0))
    ids = torch.tensor(bases, device=device)[draws.to(device)]

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    # The optimizer's state exists from the first step on; warm it (and the kernels) up outside the peak
    # only when asked, so that a single long step is not run twice.
    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _resident_bytes()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # Linux reports KiB
    seconds = time.perf_counter() - started
    return {
        "length": length, "mode": mode, "device": device, "parameters": sum(p.numel() for p in model.parameters()),
        "peak_mib": round(peak / 2**20, 1), "tokens_per_s": round(length * steps / seconds, 1),
        "step_s": round(seconds / steps, 2), "loss": round(loss, 4), "threads": torch.get_num_threads(), "error": "",
    }


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per (length, mode)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps before them")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "long_context_training.csv")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one (length, mode) and print JSON
    args = parser.parse_args()
    if args.one:
        length, mode = args.one.split(",")
        print(json.dumps(run_one(int(length), mode, args.device, args.steps, args.warmup, args.hidden, args.blocks)))
        return
    rows = []
    for length in args.lengths:
        for mode in args.modes:
            command = [
                sys.executable, __file__, "--one", f"{length},{mode}", "--device", args.device, "--steps", str(args.steps),
                "--warmup", str(args.warmup), "--hidden", str(args.hidden), "--blocks", str(args.blocks),
            ]
            result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if result.returncode == 0:
                row = json.loads(result.stdout.strip().splitlines()[-1])
            else:
                error = result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else f"exit {result.returncode}"
                row = {"length": length, "mode": mode, "device": args.device, "error": error}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["length", "mode", "device", "parameters", "peak_mib", "tokens_per_s", "step_s", "loss", "threads", "error"]
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
