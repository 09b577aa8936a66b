"""Prefill of a 131,072-token homolog context on CPU: peak memory and finiteness.

Builds a context of 131,072 tokens from the homologs of the bundled A0A1C5UJ41 family (each
homolog as `<cls>` + residues, positions restarting at every sequence, the last homolog cut to
fit), reads it with a small random protein model with rotary positions, and checks that the state
and the last logits hold no NaN or infinity. The prefill runs in a fresh process, whose peak
resident set size (RSS) is read with `resource`; the state is carried from window to window.

    python benchmarks/long_context_prefill.py [--tokens 131072] [--window 8192] [--out benchmarks/results]
"""

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "data" / "A0A1C5UJ41.a3m.gz"

PREFILL = """
import json, resource, sys, time
import torch
import bioxlstm
from bioxlstm.tasks.protein import context_state
sys.path.insert(0, {benchmarks!r})
from variant_scoring import random_protein_model

tokens, window = {tokens}, {window}
tokenizer = bioxlstm.load_tokenizer("protein")
model = random_protein_model(tokenizer)
homologs, used = [], 0
for record in bioxlstm.io.read_records({family!r}, domain="protein"):
    room = tokens - used - 1
    if room < 1:
        break
    homologs.append(record.sequence[:room])
    used += len(homologs[-1]) + 1
started = time.perf_counter()
cache, logits = context_state(model, tokenizer, homologs, window=window)
seconds = time.perf_counter() - started
finite = bool(torch.isfinite(logits).all()) and all(bool(torch.isfinite(t).all()) for t in cache.tensors())
print(json.dumps(dict(context_tokens=cache.seen_tokens, homologs=len(homologs), window=window,
                      seconds=round(seconds, 1), tokens_per_s=round(cache.seen_tokens / seconds),
                      finite=finite, peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=131_072)
    parser.add_argument("--window", type=int, default=8192, help="tokens per forward pass")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    script = PREFILL.format(benchmarks=str(ROOT / "benchmarks"), tokens=args.tokens, window=args.window, family=str(FAMILY))
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result, file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "long_context_prefill.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(result))
        writer.writeheader()
        writer.writerow(result)
    if not result["finite"]:
        sys.exit("the prefill produced NaN or infinite values")


if __name__ == "__main__":
    main()
