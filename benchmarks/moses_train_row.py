"""Correctness of the MOSES metric set: the published "Train" row of the MOSES table, reproduced.

MOSES reports, beside its models, the metrics of its own training set against its test and
scaffold-test sets. This draws `--sample` molecules (30,000, the size MOSES evaluates its models at) from
the MOSES training set with `--seed`, runs `bioxlstm.moses.moses_metrics` against the bundled test
sets (the same path as `bioxlstm evaluate chem --benchmark moses`, whose valid, unique, FCD, SNN,
IntDiv and Novelty are `bioxlstm.chem`'s, the code plain `evaluate chem` reports them with) and
prints our row beside the published one (MOSES README, "Train"; its unrounded values in the MOSES
repository's data/samples/train_metrics.csv).

The published row matches the whole training set: the columns that are means over molecules (SNN,
IntDiv, Filters) or cosines of dense counts (Frag) hardly move with the sample's size and reproduce
at 30,000; FCD and Scaf move, and moses_sample_size.py shows them at the whole set's size.

Novelty is 0 here by definition (every molecule is a training molecule); the published row shows 1.0,
which the MOSES definition cannot give for training molecules, so that column is not compared.

    nice -n 10 python benchmarks/moses_train_row.py --workers 2
    python benchmarks/moses_train_row.py --sample 2000  # smoke

Writes benchmarks/results/moses_train_row.csv: metric, ours, published, difference.
"""

import argparse
import gzip
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from bioxlstm import moses  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "moses_train_row.csv"

# MOSES data/samples/train_metrics.csv (the README rounds these to four decimals).
PUBLISHED_TRAIN_ROW = {
    "valid": 1.0, "unique@1k": 1.0, "unique@10k": 1.0,
    "FCD/Test": 0.007976462128127082, "FCD/TestSF": 0.4755338128709923,
    "SNN/Test": 0.6419157421820585, "SNN/TestSF": 0.5858705935050414,
    "Frag/Test": 0.9999834247122634, "Frag/TestSF": 0.9985992940596576,
    "Scaf/Test": 0.9907434796042832, "Scaf/TestSF": 0.0,
    "IntDiv": 0.856675535150156, "IntDiv2": 0.8507542837548052,
    "Filters": 1.0, "Novelty": 1.0,
}  # fmt: skip


def training_molecules(directory: Path) -> list[str]:
    """The MOSES training set (RDKit-canonical SMILES) in `directory`, in file order."""
    with gzip.open(directory / moses.TRAIN_CANONICAL, "rt") as handle:
        return [line.rstrip("\n") for line in handle]


def training_sample(training: list[str], size: int, seed: int) -> list[str]:
    """`size` of the `training` molecules, drawn without replacement with `seed`."""
    return random.Random(seed).sample(training, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes for the per-molecule RDKit work")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--moses-dir", type=Path, default=None, help="default: the bundled data/moses")
    args = parser.parse_args()
    if args.threads:
        import torch

        # On a shared CPU one thread wastes less time waiting for the others than several do.
        torch.set_num_threads(args.threads)
    directory = args.moses_dir or moses.bundled_moses_directory()

    started = time.perf_counter()
    generated = training_sample(training_molecules(directory), args.sample, args.seed)
    references = {suffix: moses.load_reference_set(directory, name, args.workers) for suffix, name in moses.REFERENCE_SETS.items()}
    training = moses.load_training_set(directory)
    loaded = time.perf_counter()
    metrics = moses.moses_metrics(generated, references, training, directory, args.workers).values
    finished = time.perf_counter()

    rows = [
        {"metric": name, "ours": metrics[name], "published": PUBLISHED_TRAIN_ROW[name],
         "difference": metrics[name] - PUBLISHED_TRAIN_ROW[name]}
        for name in moses.COLUMNS
    ]  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print(f"sample {args.sample} (seed {args.seed}), workers {args.workers}: loading {loaded - started:.0f} s, "
          f"metrics {finished - loaded:.0f} s")  # fmt: skip
    print("| metric | ours | published Train | difference |\n| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['metric']} | {row['ours']:.4f} | {row['published']:.4f} | {row['difference']:+.4f} |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
