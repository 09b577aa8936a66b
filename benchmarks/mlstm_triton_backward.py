"""Minimal reproduction: the gradients of `mlstm_kernels`' custom mLSTM backwards (docs/mlstm_triton_backward.md).

Compares, on one set of fp32 inputs, the gradients of q, k, v and the input and forget gate
pre-activations from each kernel against two fp64 references written here in the parallel form:
the mLSTM itself (autograd through everything), and the mLSTM with the normaliser
max(|q.n|, exp(-m)) and the stabiliser m held constant (detached). Prints the largest error of each
gradient against each reference, next to the gradient's largest value.

On a CUDA machine it runs the kernels on the GPU; elsewhere it re-runs itself under Triton's
interpreter (TRITON_INTERPRET=1, on the CPU; about a minute per Triton kernel at these sizes).

    python benchmarks/mlstm_triton_backward.py [--seq-len 128] [--chunk-size 64] [--head-dim 32]
"""

import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

KERNELS = [
    "chunkwise--triton_xl_chunk",
    "chunkwise--triton_limit_chunk",
    "chunkwise--native_custbw",
    "chunkwise--native_autograd",
]


def parallel_mlstm(q, k, v, igate, fgate, constant_normaliser=False, eps=1e-6):
    """h of the mLSTM (B, NH, S, DH) in fp64, from all positions at once."""
    seq_len, dim = q.shape[-2:]
    log_f = F.logsigmoid(fgate.double()).cumsum(-1)
    log_d = log_f[..., :, None] - log_f[..., None, :] + igate.double()[..., None, :]
    future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(1)
    log_d = log_d.masked_fill(future, float("-inf"))
    m = log_d.amax(-1, keepdim=True)
    if constant_normaliser:
        m = m.detach()
    scores = (q.double() @ k.double().transpose(-1, -2)) * dim**-0.5 * torch.exp(log_d - m)
    normaliser = torch.maximum(scores.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
    if constant_normaliser:
        normaliser = normaliser.detach()
    return (scores @ v.double()) / normaliser


def gradients(function, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    h = function(*leaves)
    weights = torch.linspace(-1, 1, h.numel(), device=h.device).view_as(h)
    return torch.autograd.grad((h.double() * weights.double()).sum(), leaves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads the variable when a kernel is defined, i.e. before mlstm_kernels is imported.
        sys.exit(subprocess.call([sys.executable, *sys.argv], env={**os.environ, "TRITON_INTERPRET": "1"}))
    from mlstm_kernels.torch import get_mlstm_kernel

    generator = torch.Generator().manual_seed(0)
    shape = (1, args.heads, args.seq_len)
    q, k, v = (torch.randn(*shape, args.head_dim, generator=generator) for _ in range(3))
    igate = torch.randn(*shape, generator=generator)
    fgate = torch.randn(*shape, generator=generator) + 3
    inputs = [t.to(device) for t in (q, k, v, igate, fgate)]
    exact = gradients(parallel_mlstm, inputs)
    constant = gradients(lambda *x: parallel_mlstm(*x, constant_normaliser=True), inputs)
    print(f"device {device}, torch {torch.__version__}, B=1 NH={args.heads} S={args.seq_len} DH={args.head_dim}")
    print("kernel | grad | max |grad| | max error vs the mLSTM | vs normaliser and stabiliser held constant")
    for name in KERNELS:
        kernel = get_mlstm_kernel(name)
        chunk = args.chunk_size

        def run(q, k, v, i, f):
            return kernel(q, k, v, i, f, chunk_size=chunk, eps=1e-6)

        try:
            got = gradients(run, inputs)
        except Exception as error:  # a kernel that does not run on this device or size
            print(f"{name} | - | - | {type(error).__name__}: {str(error).splitlines()[0][:80]} |")
            continue
        for label, grad, true, held in zip("qkvif", got, exact, constant):
            true_error = (grad.double() - true).abs().max().item()
            held_error = (grad.double() - held).abs().max().item()
            print(f"{name} | {label} | {true.abs().max().item():.3g} | {true_error:.3g} | {held_error:.3g}")


if __name__ == "__main__":
    main()
