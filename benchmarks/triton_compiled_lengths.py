"""GPU training on packed rows: Triton kernels compiled per bucketed length against per exact length.

The Triton chunkwise kernels take the sequence length as a compile-time constant. A packed batch (all
its molecules in one row) has a new length almost every step, so without bucketing nearly every step
compiles a fresh set of kernels. `kernels.compiled_length` pads a row to one of four lengths per
doubling; the peer here is the same training with rows padded only to a multiple of the chunk size
(what `mlstm_kernels`' own wrapper does).

Each mode runs in a fresh process with an empty Triton cache, so both pay for every compile they
need: the chem model of the bundled recipe (hidden 256, 4 mLSTM blocks, 1.7M parameters), batches
of 256 real ChEMBL molecules from `data/`, AdamW, fp32. Reported per mode: seconds for the first
`--steps` steps (compiles included), steps/s over the last quarter, and the distinct row lengths
the kernels ran at. A mode that has not finished its steps after `--max-seconds` stops there and
reports the steps it made, so the per-step time compares the two either way. Results in
`benchmarks/results/triton_compiled_lengths.csv`.

    python benchmarks/triton_compiled_lengths.py [--steps 40] [--batch 256] [--max-seconds 120] [--out DIR]
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("bucketed", "per-length")


def run_mode(mode: str, steps: int, batch: int, max_seconds: float) -> dict:
    import torch

    from bioxlstm import BioXLSTMConfig, BioXLSTMForCausalLM, load_tokenizer
    from bioxlstm.data.collators import causal_lm_collator
    from bioxlstm.io import read_records
    from bioxlstm.models import kernels

    lengths_run = set()
    bucketed = kernels.compiled_length

    def chunk_multiple(seq_len: int, chunk_size: int) -> int:
        return -(-seq_len // chunk_size) * chunk_size

    def recorded(seq_len: int, chunk_size: int) -> int:
        length = (bucketed if mode == "bucketed" else chunk_multiple)(seq_len, chunk_size)
        lengths_run.add(length)
        return length

    kernels.compiled_length = recorded
    tokenizer = load_tokenizer("smiles")
    molecules = [r.sequence for r in read_records(ROOT / "data" / "chembl31_train_50k.smi.gz", domain="smiles")]
    config = BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4, num_heads=4,
        chunk_size=64, kernel="triton", pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = BioXLSTMForCausalLM(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    collate = causal_lm_collator(tokenizer, packing=True)
    generator = torch.Generator().manual_seed(0)
    times = []
    started = time.perf_counter()
    for _ in range(steps):
        picked = torch.randint(len(molecules), (batch,), generator=generator).tolist()
        features = [{"input_ids": tokenizer(molecules[i])["input_ids"]} for i in picked]
        rows = {key: value.cuda() for key, value in collate(features).items()}
        loss = model(**rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.cuda.synchronize()
        times.append(time.perf_counter())
        if times[-1] - started > max_seconds:
            break
    tail = times[-(len(times) // 4 + 1):]
    return {
        "mode": mode,
        "steps": len(times),
        "batch": batch,
        "seconds": round(times[-1] - started, 2),
        "seconds_per_step": round((times[-1] - started) / len(times), 3),
        "steady_steps_per_s": round((len(tail) - 1) / (tail[-1] - tail[0]), 2) if len(tail) > 1 else None,
        "distinct_lengths": len(lengths_run),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit of each mode's steps")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in a child process
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("triton_compiled_lengths.py measures the Triton kernels: it needs a CUDA GPU")
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.steps, args.batch, args.max_seconds)))
        return
    rows = []
    for mode in MODES:
        with tempfile.TemporaryDirectory() as cache:
            child = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--steps", str(args.steps), "--batch", str(args.batch),
                 "--max-seconds", str(args.max_seconds)],
                env={**os.environ, "TRITON_CACHE_DIR": cache}, capture_output=True, text=True,
            )
        if child.returncode != 0:
            sys.exit(f"{mode} run failed:\n{child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    peer = rows[1]["seconds_per_step"]
    for row in rows:
        row["time_per_step_vs_per_length"] = round(row["seconds_per_step"] / peer, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "triton_compiled_lengths.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"a step on bucketed rows took {rows[0]['time_per_step_vs_per_length']}x the time of one on per-length rows")


if __name__ == "__main__":
    main()
