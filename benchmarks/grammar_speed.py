"""Sampling speed of the bundled chem model with and without the SMILES grammar (`--grammar none`).

Samples the same molecules' worth of batches both ways, alternating, and reports generated tokens per
second (the best of `--repeats` rounds, since a shared machine only ever slows a round down), the
time spent inside the grammar's logits processor as a share of the constrained run (the issue's bar:
under 25%) and per generated token, and the steps taken. A batch takes as many steps as its longest
row, and the grammar changes which rows are long (a row it keeps from ending invalid early goes on):
tokens per second move with the samples drawn as well as with the processor's cost.

    python benchmarks/grammar_speed.py [--n 64] [--batch-size 16] [--repeats 3] [--threads 2]
"""

import argparse
import time

import torch

from bioxlstm.pretrained import load_pretrained
from bioxlstm.tasks.generate import generate_sequences
from bioxlstm.tasks.smiles_grammar import SmilesGrammar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_pretrained("chem")

    inside = [0.0]
    original = SmilesGrammar.__call__

    def timed(self, input_ids, scores):
        start = time.perf_counter()
        try:
            return original(self, input_ids, scores)
        finally:
            inside[0] += time.perf_counter() - start

    SmilesGrammar.__call__ = timed
    best = {}
    for repeat in range(args.repeats):
        for grammar in (False, True):
            inside[0] = 0.0
            start = time.perf_counter()
            samples = generate_sequences(
                model, tokenizer, args.n, max_new_tokens=args.max_new_tokens, seed=repeat,
                batch_size=args.batch_size, grammar=grammar,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            lengths = [len(tokenizer(s.sequence, add_special_tokens=False)["input_ids"]) + s.finished for s in samples]
            tokens, rate = sum(lengths), sum(lengths) / seconds
            steps = sum(max(lengths[b : b + args.batch_size]) for b in range(0, len(lengths), args.batch_size))
            print(f"round {repeat} grammar={'smiles' if grammar else 'none'}: {tokens} tokens in {steps} steps, "
                  f"{seconds:.1f} s, {rate:.0f} tokens/s, {1000 * seconds / steps:.1f} ms/step, "
                  f"{inside[0]:.2f} s in the grammar ({inside[0] / seconds:.1%}, "
                  f"{1e6 * inside[0] / tokens:.0f} us/token)")  # fmt: skip
            if rate > best.get(grammar, (0,))[0]:
                best[grammar] = (rate, inside[0] / seconds, inside[0] / tokens)
    plain, constrained = best[False][0], best[True][0]
    print(f"best tokens/s: none {plain:.0f}, smiles {constrained:.0f} ({constrained / plain - 1:+.1%} with the grammar); "
          f"the grammar's own share of the constrained run: {best[True][1]:.1%} ({1e6 * best[True][2]:.0f} us/token)")


if __name__ == "__main__":
    main()
