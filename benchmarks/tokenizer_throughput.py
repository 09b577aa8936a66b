"""Tokenizer throughput: the Rust-backed tokenizers against pure-Python loops doing the same mapping.

Workloads: the E. coli 536 genome (4.9 Mbp, cut into chunks) and the 50,000 ChEMBL training SMILES.
Every method is checked to produce exactly the ids of the Hugging Face tokenizer before it is timed.
Writes benchmarks/results/tokenizer_throughput.csv and prints a Markdown table.

    python benchmarks/tokenizer_throughput.py [--chunk-length 1000] [--repeats 3]
"""

import argparse
import csv
import os
import platform
import re
import time
from pathlib import Path

from bioxlstm import load_tokenizer
from bioxlstm.io import read_records
from bioxlstm.domains import IUPAC_AMBIGUITY_CODES, SMILES_TOKEN_PATTERN

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "tokenizer_throughput.csv"


def python_dna_loop(tokenizer):
    vocab = tokenizer.get_vocab()
    base_ids = {letter: vocab[letter] for letter in "ACGTN"}
    base_ids.update({code: vocab["N"] for code in IUPAC_AMBIGUITY_CODES})
    bos, eos, unk = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id

    def encode(chunks):
        encoded = []
        for chunk in chunks:
            ids = [bos]
            for character in chunk:
                ids.append(base_ids.get(character.upper(), unk))
            ids.append(eos)
            encoded.append(ids)
        return encoded

    return encode


def python_smiles_loop(tokenizer):
    """A hand-written per-character SMILES scanner, the loop a pure-Python tokenizer would run."""
    vocab = tokenizer.get_vocab()
    bos, eos, unk = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    two_letter_atoms = {"Br", "Cl"}

    def encode(molecules):
        encoded = []
        for smiles in molecules:
            ids, position = [bos], 0
            while position < len(smiles):
                if smiles[position] == "[":
                    end = smiles.index("]", position) + 1
                elif smiles[position] == "%":
                    end = position + 3
                elif smiles[position : position + 2] in two_letter_atoms:
                    end = position + 2
                else:
                    end = position + 1
                ids.append(vocab.get(smiles[position:end], unk))
                position = end
            ids.append(eos)
            encoded.append(ids)
        return encoded

    return encode


def python_smiles_regex(tokenizer):
    """Python's C regex engine splits, a Python loop maps tokens to ids."""
    vocab = tokenizer.get_vocab()
    bos, eos, unk = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    pattern = re.compile(SMILES_TOKEN_PATTERN)
    return lambda molecules: [[bos, *(vocab.get(t, unk) for t in pattern.findall(s)), eos] for s in molecules]


def hugging_face(tokenizer):
    return lambda texts: tokenizer(texts)["input_ids"]


def rust_only(tokenizer):
    backend = tokenizer.backend_tokenizer
    return lambda texts: [encoding.ids for encoding in backend.encode_batch_fast(texts)]


def best_time(encode, texts, repeats):
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts)
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-length", type=int, default=1000, help="genome chunk length in bases")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest counts")
    args = parser.parse_args()

    (genome,) = (r.sequence for r in read_records(REPO / "data" / "ecoli_536_NC_008253.fna.gz", domain="dna"))
    chunks = [genome[start : start + args.chunk_length] for start in range(0, len(genome), args.chunk_length)]
    molecules = [r.sequence for r in read_records(REPO / "data" / "chembl31_train_50k.smi.gz", domain="smiles")]
    dna, smiles = load_tokenizer("dna"), load_tokenizer("smiles")
    workloads = {
        f"E. coli genome, {len(genome):,} bp in {args.chunk_length:,}-bp chunks": (
            chunks,
            {
                "pure-Python per-character loop": python_dna_loop(dna),
                "transformers PreTrainedTokenizerFast": hugging_face(dna),
                "tokenizers encode_batch_fast (Rust)": rust_only(dna),
            },
        ),
        f"ChEMBL SMILES, {len(molecules):,} molecules": (
            molecules,
            {
                "pure-Python per-character loop": python_smiles_loop(smiles),
                "Python re.findall + dict": python_smiles_regex(smiles),
                "transformers PreTrainedTokenizerFast": hugging_face(smiles),
                "tokenizers encode_batch_fast (Rust)": rust_only(smiles),
            },
        ),
    }

    rows = []
    for workload, (texts, methods) in workloads.items():
        reference = hugging_face(dna if "genome" in workload else smiles)(texts)
        tokens = sum(map(len, reference))
        baseline = None
        for method, encode in methods.items():
            if encode(texts) != reference:
                raise AssertionError(f"{method} disagrees with the Hugging Face tokenizer on {workload}")
            seconds = best_time(encode, texts, args.repeats)
            baseline = baseline or seconds
            rows.append(
                {
                    "workload": workload,
                    "method": method,
                    "tokens": tokens,
                    "seconds": round(seconds, 4),
                    "million_tokens_per_second": round(tokens / seconds / 1e6, 2),
                    "speedup_vs_python_loop": round(baseline / seconds, 2),
                }
            )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| workload | method | tokens | s | M tokens/s | vs Python loop |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")


if __name__ == "__main__":
    main()
