"""Why a 30,000-molecule sample of the MOSES training set cannot reach the published Train row's
FCD/Test (0.008) and Scaf/Test (0.991): both are whole-set statistics whose value depends on how
many molecules are compared, and the published row matches the whole training set.

1. FCD floor. FCD compares the mean and covariance of ChemNet activations; estimated from n
   molecules they carry sampling error even when the two sets come from one distribution. This
   draws Gaussian activations with the MOSES test set's ChemNet mean and covariance (shipped in
   data/moses/test_fcd.npz), n for the "generated" side and the test set's size (176,074) for the
   reference side, and reports the FCD between the two estimates: the value a perfect generator
   reaches at that n, up to the activations not being Gaussian (the mean and covariance are drawn
   from their exact sampling distributions, so the cost does not grow with n).
2. Scaf over the whole training set. The Bemis-Murcko scaffold counts (>= 2 rings) of all
   1,584,663 training molecules against the test set's, beside those of a `--sample` draw
   (the same seed as moses_train_row.py).
3. With --whole-set-fcd, FCD/Test and FCD/TestSF of the whole training set itself (ChemNet over
   1.6M molecules: about an hour on 2 CPU cores).

    nice -n 10 python benchmarks/moses_sample_size.py --workers 2 [--whole-set-fcd]

Writes benchmarks/results/moses_sample_size.csv: quantity, molecules, value, published Train.
"""

import argparse
import gzip
import json
import os
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bioxlstm import chem, moses  # noqa: E402
from moses_train_row import PUBLISHED_TRAIN_ROW, training_molecules, training_sample  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "moses_sample_size.csv"


def gaussian_statistics(mean: np.ndarray, covariance: np.ndarray, size: int, rng: np.random.Generator):
    """Sample mean and covariance of `size` draws from N(mean, covariance), drawn from their exact
    distributions (normal and Wishart) rather than from `size` activations."""
    sample_mean = rng.multivariate_normal(mean, covariance / size)
    scatter = stats.wishart(df=size - 1, scale=covariance).rvs(random_state=rng)
    return sample_mean, scatter / (size - 1)


def fcd_floor(directory: Path, size: int, reference_size: int, repeats: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation over `repeats` of the FCD between the estimates from `size` and
    from `reference_size` Gaussian activations with the test set's ChemNet statistics."""
    statistics = np.load(directory / "test_fcd.npz")
    mean, covariance = statistics["mean"], statistics["covariance"]
    rng = np.random.default_rng(seed)
    values = [
        chem.frechet_distance(
            gaussian_statistics(mean, covariance, size, rng), gaussian_statistics(mean, covariance, reference_size, rng)
        )
        for _ in range(repeats)
    ]
    return float(np.mean(values)), float(np.std(values))


def _scaffolds_of_chunk(chunk: list[str]) -> list[str | None]:
    molecules = [chem.molecule_from_smiles(smiles) for smiles in chunk]
    return [None if molecule is None else moses.murcko_scaffold(molecule) for molecule in molecules]


def scaffold_counts(smiles: list[str], workers: int, description: str) -> Counter:
    counts: Counter = Counter()
    chunks = [smiles[start : start + 2000] for start in range(0, len(smiles), 2000)]
    with get_context("fork").Pool(workers) as pool, tqdm(total=len(smiles), desc=description, unit="mol") as bar:
        for scaffolds in pool.imap(_scaffolds_of_chunk, chunks):
            counts.update(scaffold for scaffold in scaffolds if scaffold is not None)
            bar.update(len(scaffolds))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10, help="Gaussian draws per FCD floor")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--whole-set-fcd", action="store_true", help="also the FCD of the whole training set (ChemNet over 1.6M molecules: about an hour on 2 CPU cores)")
    args = parser.parse_args()
    directory = moses.bundled_moses_directory()
    training = training_molecules(directory)
    sample = training_sample(training, args.sample, args.seed)

    test_size = len(moses.read_smiles_column(directory / "test.csv.gz"))

    rows = []
    for size in (args.sample, test_size, len(training)):
        mean, spread = fcd_floor(directory, size, test_size, args.repeats, args.seed)
        rows.append({"quantity": "FCD/Test floor (Gaussian)", "molecules": size, "value": mean, "spread": spread})
    with gzip.open(directory / "test_counts.json.gz", "rt") as handle:
        test_scaffolds = Counter(json.load(handle)["scaffolds"])
    for name, molecules in (("sample", sample), ("whole training set", training)):
        counts = scaffold_counts(molecules, args.workers, f"scaffolds ({name})")
        rows.append({"quantity": "Scaf/Test", "molecules": len(molecules),
                     "value": moses.cosine_similarity(counts, test_scaffolds), "spread": float("nan")})  # fmt: skip
    if args.whole_set_fcd:
        statistics = chem.chemnet_statistics(training)
        for suffix, name in moses.REFERENCE_SETS.items():
            reference = np.load(directory / f"{name}_fcd.npz")
            value = chem.frechet_distance(statistics, (reference["mean"], reference["covariance"]))
            rows.append({"quantity": f"FCD/{suffix}", "molecules": len(training), "value": value, "spread": float("nan")})
    for row in rows:
        row["published Train"] = PUBLISHED_TRAIN_ROW[row["quantity"].split(" ")[0]]
    RESULTS.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print("| quantity | molecules | value | published Train |\n| --- | ---: | ---: | ---: |")
    for row in rows:
        spread = "" if np.isnan(row["spread"]) else f" ± {row['spread']:.4f}"
        print(f"| {row['quantity']} | {row['molecules']:,} | {row['value']:.4f}{spread} | {row['published Train']:.4f} |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
