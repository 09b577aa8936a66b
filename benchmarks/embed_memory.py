"""Peak memory of `bioxlstm embed` as the genome grows: it should stay flat.

Embeds the first 1 Mbp and the whole 4.9 Mbp of the bundled E. coli genome (one FASTA record
each) with the same model, each run in a fresh process, and reports the peak resident set size
(RSS) of each run, the ratio, and the throughput. The recurrent state is carried from window to
window, so only one window of tokens and hidden states is ever held.

    python benchmarks/embed_memory.py [--model DIR] [--window 4096] [--out benchmarks/results]

Without --model a small random DNA model is used (memory does not depend on the weights).
"""

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import bioxlstm

ROOT = Path(__file__).resolve().parents[1]
GENOME = ROOT / "data" / "ecoli_536_NC_008253.fna.gz"


def random_dna_model(directory: Path) -> Path:
    tokenizer = bioxlstm.load_tokenizer("dna")
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_heads=4, domain="dna",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return bioxlstm.export.export(bioxlstm.BioXLSTMForCausalLM(config), directory / "dna-model", tokenizer)


def measure(command: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time (s) of `command`, run in its own measuring process so that
    the children's maximum RSS is this command's alone."""
    probe = (
        "import resource, subprocess, sys, time; start = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - start)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True)
    peak_kib, seconds = out.stdout.split()
    return int(peak_kib) / 1024, float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="saved DNA model (default: a small random one)")
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    (genome,) = bioxlstm.io.read_records(GENOME, domain="dna")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or random_dna_model(tmp)
        for megabases in (1.0, len(genome.sequence) / 1e6):
            length = int(megabases * 1e6)
            fasta = tmp / f"genome_{length}.fa"
            bioxlstm.io.write_records([bioxlstm.io.Record("ecoli", genome.sequence[:length])], fasta)
            command = [sys.executable, str(ROOT / "cli.py"), "embed", "--model", str(model), "--input", str(fasta),
                       "--window", str(args.window), "--output", str(tmp / "out.npy")]
            started = time.perf_counter()
            peak, seconds = measure(command)
            rows.append({"bases": length, "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1),
                         "bases_per_s": round(length / seconds), "wall_s_total": round(time.perf_counter() - started, 1)})
            print(rows[-1], file=sys.stderr)
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "embed_memory.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "ratio_to_1mbp"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "ratio_to_1mbp": round(row["peak_rss_mib"] / rows[0]["peak_rss_mib"], 3)})
    print(f"peak RSS 4.9 Mbp / 1 Mbp = {ratio:.3f} (target: within 10%, i.e. <= 1.10)")


if __name__ == "__main__":
    main()
