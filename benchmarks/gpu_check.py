"""What a GPU has to confirm about the Triton paths: parity on the hardware, then speed.

Every Triton path is tested against the native one on a CPU, in Triton's interpreter
(tests/test_triton_interpreter.py). On a GPU the kernels are compiled (TF32 matrix products unless
TRITON_F32_DEFAULT=ieee), so this checks parity once more, then times them:

1. parity, fp32, against the native path on the same inputs: the fused sLSTM (flashrnn) against the
   scan, on plain, left-padded and packed rows, outputs, final state and gradients; mLSTM_kernels'
   chunkwise prefill and step against ours; a mixed mLSTM/sLSTM model's logits, decoding and one
   training step (tests/test_gpu_kernels.py runs after this script in benchmarks/gpu_check.sh);
2. speed: the sLSTM layer's recurrence, fused kernel against the scan (the loop), training
   (forward + backward) and decoding (one token at a time with the state carried) in tokens/s; and
   a mixed model's training step and greedy decoding, kernel="triton" against kernel="native".

Results: printed, and written to benchmarks/results/gpu_check.csv.

    python benchmarks/gpu_check.py [--smoke]   # --smoke: tiny sizes, on a CPU under TRITON_INTERPRET=1
"""

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARITY_TOLERANCE = 5e-3  # TF32 products (10-bit mantissa) over a few hundred steps; measured figures are printed


def sync(device):
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(function, device, repeats):
    function()  # compile and warm up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    sync(device)
    return (time.perf_counter() - start) / repeats


def parity(device, smoke: bool) -> list[dict]:
    import torch

    from bioxlstm.models import kernels

    rows = []
    batch, seq_len, heads = (3, 13, 2) if smoke else (8, 300, 4)
    generator = torch.Generator().manual_seed(0)
    for head_dim in (16,) if smoke else (16, 32, 64):
        preacts = torch.randn(batch, seq_len, 4, heads, head_dim, generator=generator)
        kernel = torch.randn(heads, head_dim, 4, head_dim, generator=generator) * head_dim**-0.5
        bias = torch.randn(heads, 4, head_dim, generator=generator)
        keep = torch.arange(seq_len)[None] >= torch.randint(0, seq_len // 2, (batch, 1), generator=generator)
        reset = torch.rand(batch, seq_len, generator=generator) < 0.02
        for rows_kind, masks in (("plain", (None, None)), ("left-padded", (keep, None)), ("packed", (None, reset))):
            results = {}
            for name, function, where in (
                ("fused", kernels.slstm_fused_triton, device),
                ("scan", kernels.slstm_scan, torch.device("cpu")),
            ):
                leaves = [t.to(where).requires_grad_() for t in (preacts, kernel, bias)]
                h, final = function(*leaves, None, *(m if m is None else m.to(where) for m in masks))
                weights = torch.linspace(-1, 1, h.numel(), device=where).view_as(h)
                grads = torch.autograd.grad((h * weights).sum(), leaves)
                results[name] = [t.detach().cpu().double() for t in (h, final, *grads)]
            for label, got, expected in zip(("h", "final state", "d preacts", "d kernel", "d bias"), *results.values()):
                error = ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()
                check = f"sLSTM fused, DH {head_dim}, {rows_kind}: {label}"
                rows.append(dict(check=check, value=error, ok=error < PARITY_TOLERANCE))
    length, dim, chunk = seq_len + 37, 16 if smoke else 64, 16 if smoke else 64
    q, k, v = (torch.randn(2, heads, length, dim, generator=generator) for _ in range(3))
    igate = torch.randn(2, heads, length, generator=generator)
    fgate = torch.randn(2, heads, length, generator=generator) + 2
    with torch.no_grad():
        for tokens in (slice(0, length), slice(length - 1, length)):
            inputs = [t[:, :, tokens] for t in (q, k, v, igate, fgate)]
            got, _ = kernels.mlstm_recurrence(*(t.to(device) for t in inputs), None, chunk, "triton")
            expected, _ = kernels.mlstm_recurrence(*inputs, None, chunk, "native")
            error = ((got.cpu() - expected).abs().max() / expected.abs().max()).item()
            label = "step" if tokens.stop - tokens.start == 1 else "chunkwise prefill"
            rows.append(dict(check=f"mLSTM Triton {label}: h", value=error, ok=error < PARITY_TOLERANCE))
    return rows


def slstm_speed(device, smoke: bool) -> list[dict]:
    import torch

    from bioxlstm.models import kernels

    rows = []
    sizes = [(2, 13, 2, 16)] if smoke else [(16, 1024, 4, 32), (16, 4096, 4, 32), (16, 1024, 8, 64)]
    repeats = 1 if smoke else 5
    for batch, seq_len, heads, head_dim in sizes:
        preacts = torch.randn(batch, seq_len, 4, heads, head_dim, device=device, requires_grad=True)
        kernel = (torch.randn(heads, head_dim, 4, head_dim, device=device) * head_dim**-0.5).requires_grad_()
        bias = torch.randn(heads, 4, head_dim, device=device, requires_grad=True)
        for name, function in (("fused", kernels.slstm_fused_triton), ("scan", kernels.slstm_scan)):

            def train():
                h, _ = function(preacts, kernel, bias, None, None, None)
                h.sum().backward()

            state = torch.zeros(batch, 4, heads, head_dim, device=device)
            steps = preacts.detach()[:, : min(seq_len, 64)]

            def decode():
                current = state
                with torch.no_grad():
                    for t in range(steps.shape[1]):
                        _, current = function(steps[:, t : t + 1], kernel.detach(), bias.detach(), current, None, None)

            shape = f"B{batch} S{seq_len} NH{heads} DH{head_dim}"
            training = batch * seq_len / timed(train, device, repeats)
            decoding = batch * steps.shape[1] / timed(decode, device, repeats)
            rows.append(dict(check=f"sLSTM {name} training tokens/s, {shape}", value=training))
            rows.append(dict(check=f"sLSTM {name} decoding tokens/s, {shape}", value=decoding))
    return rows


def model_speed(device, smoke: bool) -> list[dict]:
    import torch

    import bioxlstm

    rows = []
    settings = dict(vocab_size=64, hidden_size=32 if smoke else 512, num_hidden_layers=3 if smoke else 6)
    settings.update(num_heads=2 if smoke else 8)
    block_types = ["mlstm", "slstm", "mlstm"] if smoke else ["mlstm", "slstm", "mlstm", "slstm", "mlstm", "mlstm"]
    settings.update(block_types=block_types, chunk_size=16 if smoke else 64, pad_token_id=0)
    batch, seq_len, new_tokens = (2, 21, 2) if smoke else (8, 2048, 64)
    tokens = torch.randint(1, 64, (batch, seq_len), device=device)
    for kernel in ("triton", "native"):
        torch.manual_seed(0)
        model = bioxlstm.BioXLSTMForCausalLM(bioxlstm.BioXLSTMConfig(**settings, kernel=kernel)).to(device)

        def train():
            model.zero_grad()
            model(tokens, labels=tokens).loss.backward()

        def decode():
            prompt = tokens[:, :16]
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

        training = batch * seq_len / timed(train, device, 1 if smoke else 3)
        rows.append(dict(check=f"model training tokens/s, kernel={kernel}, B{batch} S{seq_len}", value=training))
        model.eval()
        decoding = batch * new_tokens / timed(decode, device, 1)
        rows.append(dict(check=f"model decoding tokens/s, kernel={kernel}, B{batch}", value=decoding))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU under the Triton interpreter")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.csv")
    args = parser.parse_args()
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit(subprocess.call([sys.executable, *sys.argv], env={**os.environ, "TRITON_INTERPRET": "1"}))
    import torch

    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("needs a CUDA device (or --smoke for a CPU run under the Triton interpreter)")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"{name}, torch {torch.__version__}, TRITON_F32_DEFAULT={os.environ.get('TRITON_F32_DEFAULT', 'tf32')}")
    rows = parity(device, args.smoke)
    rows += slstm_speed(device, args.smoke)
    rows += model_speed(device, args.smoke)
    for row in rows:
        flag = "" if "ok" not in row else ("  ok" if row["ok"] else "  FAILED")
        print(f"{row['check']}: {row['value']:.4g}{flag}")
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["device", "check", "value", "ok"])
            writer.writeheader()
            writer.writerows({"device": name, "ok": "", **row} for row in rows)
    sys.exit(0 if all(row.get("ok", True) for row in rows) else 1)


if __name__ == "__main__":
    main()
