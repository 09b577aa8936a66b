"""The sLSTM scan on the CPU: ours (`kernels.slstm_scan`, hand-written backward) against the plain
loop it replaced, the official `xlstm` package's vanilla sLSTM and `flashrnn`'s vanilla backends;
then all-sLSTM against all-mLSTM models of the same shape, today's and as filed (the code when the
sLSTM work began: the plain loop and the layers that work made faster, see `AsFiled`); then the
shapes of the published DNA-xLSTM 500k and 2M models (all four blocks sLSTM, blockwise bidirectional
masked LMs, as `bioxlstm convert` builds them; random weights) scoring 1k and 32k tokens.

One torch thread, fp32. Every timing is CPU time of the benchmark's thread (`time.thread_time`),
best of `--repeats`, the implementations alternating in one process: on a shared machine wall-clock
time measures the other jobs. Inference is a forward pass under `torch.no_grad`; training is forward
and backward (for the scans, of the sum of outputs and final state; for the models, of the causal
LM loss). Also reported: how far our scan and the plain loop, both in fp32, are from the plain
loop in float64 at the benchmark's length (outputs, final state and gradients, relative to each
tensor's largest value where that exceeds 1).

    python benchmarks/slstm_speed.py [--length 1024] [--batches 1 8] [--repeats 3] [--threads 1]
                                     [--dna-lengths 1024 32768]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bioxlstm
from bioxlstm.convert import dna_xlstm
from bioxlstm.models import kernels
from bioxlstm.models.blocks import GatedFeedForward
from bioxlstm.models.layers import CausalConv1d, MultiHeadLayerNorm
from bioxlstm.models.modeling_bioxlstm import BioXLSTMModel
from bioxlstm.models.slstm import SLSTMLayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_slstm_kernel import slstm_scan_reference  # noqa: E402  (the plain loop, kept as the tests' oracle)

HEADS, HEAD_DIM, BLOCKS, VOCAB = 4, 32, 4, 64
# model_config.json fields of the published DNA-xLSTM sLSTM models ("ph": post-hoc conjoined masked LMs);
# d_model 128 and 256 are the 500k and 2M sizes.
DNA_XLSTM_SIZES = {"500k": 128, "2M": 256}
DNA_XLSTM_FIELDS = dict(n_layer=4, s_lstm_at=[0, 1, 2, 3], s_num_heads=4, bidirectional=True, vocab_size=len(dna_xlstm.VOCAB))


def scan_inputs(batch: int, length: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    preacts = torch.randn(batch, length, 4, HEADS, HEAD_DIM)
    kernel = torch.randn(HEADS, HEAD_DIM, 4, HEAD_DIM) * HEAD_DIM**-0.5
    bias = torch.randn(HEADS, 4, HEAD_DIM)
    return preacts, kernel, bias


def ours(preacts, kernel, bias):
    return kernels.slstm_scan(preacts, kernel, bias, None, None)


def plain_loop(preacts, kernel, bias):
    return slstm_scan_reference(preacts, kernel, bias, None, None)


def xlstm_vanilla(preacts, kernel, bias):
    """`xlstm`'s vanilla sLSTM (autograd through a loop over its pointwise step), in its layouts."""
    from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry

    batch, length = preacts.shape[:2]
    states = preacts.new_zeros(4, batch, HEADS * HEAD_DIM)
    all_states, last, _ = slstm_forward(
        preacts.transpose(0, 1).reshape(length, batch, -1),
        states,
        kernel.permute(0, 2, 3, 1).reshape(HEADS, 4 * HEAD_DIM, HEAD_DIM),
        bias.transpose(0, 1).reshape(-1),
        slstm_pointwise_function_registry["slstm"],
    )
    return all_states[0, 1:], last


def flashrnn_backend(backend: str):
    def run(preacts, kernel, bias):
        from flashrnn import flashrnn

        states, last = flashrnn(
            preacts, kernel.permute(2, 0, 3, 1), bias.transpose(0, 1), function="slstm", backend=backend,
            dtype="float32",
        )  # fmt: skip
        return states[0], last

    return run


def available_peers() -> dict:
    peers = {"plain loop (before)": plain_loop}
    try:
        import xlstm.blocks.slstm.src.vanilla  # noqa: F401

        peers["xlstm vanilla"] = xlstm_vanilla
    except ImportError:
        print("xlstm is not installed: skipped")
    try:
        import flashrnn  # noqa: F401

        peers["flashrnn vanilla"] = flashrnn_backend("vanilla")
        peers["flashrnn vanilla_fwbw"] = flashrnn_backend("vanilla_fwbw")
    except ImportError:
        print("flashrnn is not installed: skipped")
    return peers


def scan_seconds(scan, inputs, training: bool) -> float:
    if not training:
        start = time.thread_time()
        with torch.no_grad():
            scan(*inputs)
        return time.thread_time() - start
    leaves = [t.clone().requires_grad_() for t in inputs]
    start = time.thread_time()
    outputs, final = scan(*leaves)
    (outputs.sum() + final.sum()).backward()
    return time.thread_time() - start


def scan_differences(inputs) -> dict[str, dict[str, float]]:
    """Largest difference from the plain loop in float64 (the exact values, to fp32 resolution) of
    our scan and of the plain loop, both in fp32: outputs, final state, and the gradients of a
    random-weighted loss on both (relative to each tensor's largest value where that exceeds 1)."""

    def run(scan, dtype):
        torch.manual_seed(1)
        leaves = [t.to(dtype).clone().requires_grad_() for t in inputs]
        initial = torch.zeros(inputs[0].shape[0], 4, HEADS, HEAD_DIM, dtype=dtype, requires_grad=True)
        outputs, final = scan(*leaves, initial, None)
        weights = (torch.randn(t.shape).to(dtype) for t in (outputs, final))
        ((outputs * next(weights)).sum() + (final * next(weights)).sum()).backward()
        return outputs.detach(), final.detach(), [t.grad for t in (*leaves, initial)]

    def difference(a, b):
        return ((a.double() - b).abs().max() / b.abs().max().clamp(min=1.0)).item()

    exact = run(slstm_scan_reference, torch.float64)
    differences = {}
    for name, scan in (("ours", kernels.slstm_scan), ("plain loop", slstm_scan_reference)):
        got = run(scan, torch.float32)
        differences[name] = {
            "outputs": difference(got[0], exact[0]),
            "final state": difference(got[1], exact[1]),
            "gradients": max(difference(a, b) for a, b in zip(got[2], exact[2])),
        }
    return differences


def model(slstm: bool) -> bioxlstm.BioXLSTMForCausalLM:
    torch.manual_seed(0)
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=VOCAB, hidden_size=HEADS * HEAD_DIM, num_hidden_layers=BLOCKS, num_heads=HEADS,
        block_types=["slstm" if slstm else "mlstm"] * BLOCKS, chunk_size=64, kernel="native",
    )  # fmt: skip
    return bioxlstm.BioXLSTMForCausalLM(config)


def model_seconds(network, ids: torch.Tensor, training: bool) -> float:
    start = time.thread_time()
    if training:
        network.train()
        network(ids, labels=ids).loss.backward()
        network.zero_grad(set_to_none=True)
    else:
        network.eval()
        with torch.no_grad():
            network(ids)
    return time.thread_time() - start


def group_norm(self, x):
    """The multi-head norm as filed: F.group_norm over batch x length rows."""
    batch, seq_len, heads, head_dim = x.shape
    y = F.group_norm(x.reshape(batch * seq_len, heads * head_dim), heads, weight=1.0 + self.weight, eps=self.eps)
    return y.view(batch, seq_len, heads * head_dim)


def feed_forward_out_of_place(self, x):
    """The feed-forward as filed: the gating written to a new tensor, with or without autograd."""
    gate, up = self.proj_up(x).chunk(2, dim=-1)
    return self.dropout(self.proj_down(self.act_fn(gate) * up))


def gates_stacked_by_position(self, x, x_conv, out=None):
    """The sLSTM gate inputs as filed: four head-wise projections stacked as (B, S, 4, NH, DH).
    (`out` came later, for blocks run diagonally, which the code as filed did not do.)"""
    batch, seq_len, dim = x.shape
    preacts = torch.stack([self.igate(x_conv), self.fgate(x_conv), self.zgate(x), self.ogate(x)], dim=2)
    return preacts.view(batch, seq_len, 4, self.num_heads, dim // self.num_heads)


def causal_conv1d(self, x, state, reset=None):
    """The causal convolution as filed (without packed rows, which the benchmark does not read):
    conv1d over the window, channels first."""
    if reset is not None:
        raise NotImplementedError("the benchmark reads no packed rows")
    if state is None:
        state = x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])
    window = torch.cat([state.to(x.dtype), x], dim=1)
    new_state = window[:, window.shape[1] - (self.kernel_size - 1) :]
    if x.shape[1] == 1:
        return (window * self.conv.weight[:, 0].T).sum(1, keepdim=True) + self.conv.bias, new_state
    y = F.conv1d(window.transpose(1, 2), self.conv.weight, self.conv.bias, groups=x.shape[2])
    return y.transpose(1, 2), new_state


class AsFiled:
    """The models as they were when the sLSTM work began (4a3858d): the plain loop as
    `kernels.slstm_scan`, and the layers this work made faster put back, each reproduced above:
    the multi-head norm, the feed-forward's gating, the causal convolution, the sLSTM's gate inputs,
    inference in segments of 1,024 tokens whatever the batch, and block after block on each segment.
    Everything else is today's code."""

    def __init__(self):
        self.patches = [
            (kernels, "slstm_scan", self.counted),
            (kernels, "NATIVE_INFERENCE_ROWS", 1 << 40),
            (MultiHeadLayerNorm, "forward", group_norm),
            (GatedFeedForward, "forward", feed_forward_out_of_place),
            (CausalConv1d, "forward", causal_conv1d),
            (SLSTMLayer, "gate_preactivations", gates_stacked_by_position),
            (BioXLSTMModel, "_shares_work_across_blocks", lambda model: False),
        ]

    def counted(self, *args, **kwargs):
        self.calls += 1
        return slstm_scan_reference(*args, **kwargs)

    def __enter__(self):
        self.calls = 0
        self.saved = [(owner, name, getattr(owner, name)) for owner, name, _ in self.patches]
        for owner, name, value in self.patches:
            setattr(owner, name, value)
        return self

    def __exit__(self, *exc):
        for owner, name, value in self.saved:
            setattr(owner, name, value)


def best_of(repeats: int, runs: dict) -> dict[str, float]:
    """Each run once as warm-up, then `repeats` rounds of all of them in turn; the best per run."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dna-lengths", type=int, nargs="+", default=[1024, 32768])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peers = available_peers()

    print(f"\nScan alone: {HEADS} heads x {HEAD_DIM}, {args.length} tokens; tokens/s (CPU time); ours / peer\n")
    print("| batch | mode | ours tok/s | " + " | ".join(f"vs {name}" for name in peers) + " |")
    print("| ---: | --- | ---: | " + " | ".join("---:" for _ in peers) + " |")
    for batch in args.batches:
        inputs = scan_inputs(batch, args.length)
        for training in (False, True):
            runs = {"ours": ours, **peers}
            best = best_of(args.repeats, {n: (lambda s=s: scan_seconds(s, inputs, training)) for n, s in runs.items()})
            ratios = " | ".join(f"{best[name] / best['ours']:.2f}x" for name in peers)
            mode = "training" if training else "inference"
            print(f"| {batch} | {mode} | {batch * args.length / best['ours']:,.0f} | {ratios} |", flush=True)

    print(f"\nLargest difference from the plain loop in float64, batch {max(args.batches)}, fp32:")
    for name, differences in scan_differences(scan_inputs(max(args.batches), args.length)).items():
        print(f"- {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()))

    print(f"\nModels: {BLOCKS} blocks, hidden {HEADS * HEAD_DIM}, {HEADS} heads, {args.length} tokens; tokens/s (CPU time);")
    print("'as filed': the code when the sLSTM work began (plain loop, and the layers it made faster; see AsFiled)\n")
    print("| batch | mode | all-mLSTM as filed | all-mLSTM | all-sLSTM as filed | all-sLSTM | sLSTM/mLSTM as filed | now | sLSTM speed-up |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    networks = {"mlstm": model(slstm=False), "slstm": model(slstm=True)}
    for batch in args.batches:
        ids = torch.randint(0, VOCAB, (batch, args.length), generator=torch.Generator().manual_seed(0))
        for training in (False, True):
            runs = {}
            for kind, network in networks.items():
                runs[kind] = lambda network=network: model_seconds(network, ids, training)
                runs[f"{kind} as filed"] = lambda network=network: as_filed_seconds(network, ids, training)
            rate = {name: batch * args.length / seconds for name, seconds in best_of(args.repeats, runs).items()}
            mode = "training" if training else "inference"
            print(
                f"| {batch} | {mode} | {rate['mlstm as filed']:,.0f} | {rate['mlstm']:,.0f} | "
                f"{rate['slstm as filed']:,.0f} | {rate['slstm']:,.0f} | "
                f"{rate['slstm as filed'] / rate['mlstm as filed']:.2f}x | {rate['slstm'] / rate['mlstm']:.2f}x | "
                f"{rate['slstm'] / rate['slstm as filed']:.2f}x |",
                flush=True,
            )

    dna_scoring(args.dna_lengths, args.repeats)


def dna_scoring(lengths: list[int], repeats: int) -> None:
    """Scoring (one masked-LM forward pass, batch 1) with the DNA-xLSTM shapes: ours against the code
    as filed. A 32k-token pass of the plain loop takes about a minute, so lengths above 1k run once."""
    print("\nDNA-xLSTM shapes (4 sLSTM blocks, blockwise bidirectional), scoring one sequence; tokens/s (CPU time)\n")
    print("| model | parameters | tokens | as filed | ours | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, d_model in DNA_XLSTM_SIZES.items():
        config = dna_xlstm.config_from_dump({"config": {**DNA_XLSTM_FIELDS, "d_model": d_model}}, Path("benchmark"))
        torch.manual_seed(0)
        network = bioxlstm.BioXLSTMForMaskedLM(config).eval()
        parameters = sum(p.numel() for p in network.parameters())
        for length in lengths:
            ids = torch.randint(0, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))

            runs = {
                "before": lambda: as_filed_seconds(network, ids, training=False),
                "after": lambda: model_seconds(network, ids, training=False),
            }
            best = best_of(repeats, runs) if length <= 1024 else once(runs)
            rate = {key: length / seconds for key, seconds in best.items()}
            print(
                f"| DNA-xLSTM {name} | {parameters:,} | {length:,} | {rate['before']:,.0f} | {rate['after']:,.0f} | "
                f"{rate['after'] / rate['before']:.2f}x |",
                flush=True,
            )


def as_filed_seconds(network, ids: torch.Tensor, training: bool) -> float:
    with AsFiled() as as_filed:
        seconds = model_seconds(network, ids, training)
    if "slstm" in network.config.block_types and not as_filed.calls:
        raise RuntimeError("the sLSTM blocks did not call kernels.slstm_scan: the comparison would be void")
    return seconds


def once(runs: dict) -> dict[str, float]:
    return {name: run() for name, run in runs.items()}


if __name__ == "__main__":
    main()
