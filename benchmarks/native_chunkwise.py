"""Our native chunkwise mLSTM against `mlstm_kernels`' native chunkwise kernels, on the CPU.

Ours (`kernels.mlstm_chunkwise_native`) is what an exported model runs on plain `transformers`, and
what every model runs for CPU inference. The peers: the library's `chunkwise--native_autograd`
(its plain-PyTorch forward) for inference, and for training (forward + backward) both that and
`chunkwise--native_custbw` (its hand-written backward, which our models use to train on the CPU where
the library is installed). Same inputs, same chunk size, fp32, timed alternately in one process
(median of `--repeats`), so the ratios compare like with like on a shared machine. Also reported:
the largest difference between our outputs and the library's. Results in
`benchmarks/results/native_chunkwise.csv`.

    python benchmarks/native_chunkwise.py [--lengths 256 1024 4096] [--batch 4] [--heads 4] [--head-dim 64]
        [--threads 1]
"""

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from bioxlstm.models import kernels

RESULTS = Path(__file__).resolve().parent / "results" / "native_chunkwise.csv"


def inputs(batch: int, heads: int, length: int, head_dim: int, grad: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, head_dim, requires_grad=grad) for _ in range(3))
    igate = torch.randn(batch, heads, length, requires_grad=grad)
    fgate = (torch.randn(batch, heads, length) + 3).requires_grad_(grad)
    return [q, k, v, igate, fgate]


def ours(chunk: int):
    def run(q, k, v, igate, fgate):
        return kernels.mlstm_chunkwise_native(q, k, v, igate, fgate, kernels.fresh_mlstm_state(q, v), chunk)

    return run


def library(name: str, chunk: int):
    from mlstm_kernels.torch import get_mlstm_kernel

    kernel = get_mlstm_kernel(name)

    def run(q, k, v, igate, fgate):
        return kernel(q, k, v, igate, fgate, return_last_states=True, chunk_size=chunk, eps=kernels.MLSTM_EPS)

    return run


def seconds(function, tensors: list[torch.Tensor], backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        h, (c, n, m) = function(*tensors)
        (h.square().sum() + c.sum()).backward()
    else:
        with torch.no_grad():
            function(*tensors)
    return time.perf_counter() - start


def compare(runners: dict, tensors: list[torch.Tensor], backward: bool, repeats: int) -> dict[str, float]:
    times = {name: [] for name in runners}
    for _ in range(repeats + 1):  # the first round warms up the allocator
        for name, function in runners.items():
            times[name].append(seconds(function, tensors, backward))
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def max_difference(runners: dict, tensors: list[torch.Tensor]) -> float:
    with torch.no_grad():
        (h_ours, _), (h_theirs, _) = (runners[name](*tensors) for name in ("ours", "library autograd"))
    return (h_ours - h_theirs).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runners = {"ours": ours(args.chunk), "library autograd": library("chunkwise--native_autograd", args.chunk)}
    training = {**runners, "library custbw": library("chunkwise--native_custbw", args.chunk)}
    rows = []
    for length in args.lengths:
        for mode, backward, peers in (("forward", False, runners), ("forward+backward", True, training)):
            tensors = inputs(args.batch, args.heads, length, args.head_dim, grad=backward)
            times = compare(peers, tensors, backward, args.repeats)
            for peer in peers:
                if peer != "ours":
                    row = {
                        "mode": mode, "length": length, "peer": peer, "ours_ms": round(1e3 * times["ours"], 2),
                        "peer_ms": round(1e3 * times[peer], 2), "peer_over_ours": round(times[peer] / times["ours"], 2),
                    }  # fmt: skip
                    if not backward:
                        row["max_abs_diff"] = f"{max_difference(runners, tensors):.1e}"
                    rows.append(row)
                    print(row, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        fields = ["mode", "length", "peer", "ours_ms", "peer_ms", "peer_over_ours", "max_abs_diff"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"threads: {torch.get_num_threads()}, batch {args.batch}, heads {args.heads}, head dim {args.head_dim}")


if __name__ == "__main__":
    main()
