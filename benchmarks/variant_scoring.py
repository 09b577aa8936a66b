"""Variant-effect scoring with a homolog context: the context state reused vs recomputed.

Scores 200 single-substitution mutants of the query of the bundled A0A1C5UJ41 family with at
least 4,000 tokens of its homologs in context, once reading the context a single time and
starting every mutant from a copy of its state (`reuse_context_state=True`), once reading
context + mutant from scratch for every mutant. Both in the same run, on the same weights; the
largest difference between the two sets of scores is reported beside the speed-up.

    python benchmarks/variant_scoring.py [--model DIR] [--mutants 200] [--context-tokens 4000] [--batch-size 64] [--out benchmarks/results]

Without --model a small random protein model with rotary positions is used (speed does not depend
on the weights).
"""

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import torch

import bioxlstm
from bioxlstm.tasks.protein import load_context
from bioxlstm.domains import PROTEIN_RESIDUES

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "data" / "A0A1C5UJ41.a3m.gz"


def random_protein_model(tokenizer) -> bioxlstm.BioXLSTMForCausalLM:
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_heads=2, domain="protein",
        position_embedding="rotary", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return bioxlstm.BioXLSTMForCausalLM(config).eval()


def single_substitutions(wildtype: str, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    codes = []
    for _ in range(count):
        position = rng.randrange(len(wildtype))
        new = rng.choice([r for r in PROTEIN_RESIDUES[:20] if r != wildtype[position]])
        codes.append(f"{wildtype[position]}{position + 1}{new}")
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="saved protein model (default: a small random one)")
    parser.add_argument("--mutants", type=int, default=200)
    parser.add_argument("--context-tokens", type=int, default=4000, help="the context holds at least this many tokens")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass, the same for both methods")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    if args.model:
        model, tokenizer = bioxlstm.pretrained.load_pretrained(args.model)
    else:
        tokenizer = bioxlstm.load_tokenizer("protein")
        model = random_protein_model(tokenizer)
    records = list(bioxlstm.io.read_records(FAMILY, domain="protein"))
    wildtype, homologs = records[0].sequence, [r.sequence for r in records[1:]]
    # The smallest prefix of homologs reaching the requested size.
    context = load_context(homologs, max_tokens=args.context_tokens)
    context = homologs[: len(context) + (sum(len(s) + 1 for s in context) < args.context_tokens)]
    context_tokens = sum(len(s) + 1 for s in context)
    mutants = single_substitutions(wildtype, args.mutants)

    rows, scores = [], {}
    for reuse in (True, False):
        started = time.perf_counter()
        scores[reuse] = bioxlstm.score_variants(
            model, tokenizer, wildtype, mutants, context=context, reuse_context_state=reuse, batch_size=args.batch_size
        )
        seconds = time.perf_counter() - started
        rows.append({"method": "reused context state" if reuse else "context recomputed per mutant",
                     "mutants": len(mutants), "context_tokens": context_tokens, "wildtype_length": len(wildtype),
                     "seconds": round(seconds, 2), "mutants_per_s": round(len(mutants) / seconds, 2)})
        print(rows[-1], file=sys.stderr)
    max_difference = max(abs(a - b) for a, b in zip(scores[True], scores[False]))
    speedup = rows[1]["seconds"] / rows[0]["seconds"]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "variant_scoring.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "speedup", "max_score_difference"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "speedup": round(speedup, 2), "max_score_difference": f"{max_difference:.2e}"})
    print(f"speed-up of reusing the context state: {speedup:.1f}x; largest score difference {max_difference:.2e}")


if __name__ == "__main__":
    main()
