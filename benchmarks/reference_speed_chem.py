"""Speed on CPU: a converted Chem-xLSTM model against the reference implementation's own path.

A model of the published Chem-xLSTM-14.8M shape (9 mLSTM blocks, width 512, 8 heads, vocabulary
37; random weights moved off their initialisation) is built with the reference code
(ml-jku/Chem-xLSTM's `xLSTMforNTP`), written by its own `save`, converted with `bioxlstm.convert`,
and both run on the same weights in one process. The reference runs the official `xlstm` 1.0.8,
the version its code is written against: its mLSTM forward is the quadratic parallel
("parallel_stabilized_simple") form, its step the recurrent one; the 14.8M model has no sLSTM block.

- training tokens/s: forward + backward of the cross-entropy over all positions, batch 1, at each
  length; one warm-up step at 256 tokens, then the mean of `--steps` timed steps. A length whose
  quadratic matrices would not fit in `--max-reference-gb` is not run for the reference (the row
  says how much it would need).
- prefill tokens/s: how each reaches the state after a prompt of that length. Ours: one chunkwise
  forward. The reference has no state-returning forward; its in-context generation
  (`design_molecules`) feeds the context through `recurrent_step` token by token, so that is timed.
- decoding tokens/s: 64 greedy steps after that prompt (`recurrent_step` for the reference, our
  cache for ours).

Run it with a Python in which the reference imports (see scripts/reference_fixtures/chem_xlstm.py):

    .venv-chem-xlstm/bin/python benchmarks/reference_speed_chem.py --reference /path/to/Chem-xLSTM
    .venv-chem-xlstm/bin/python benchmarks/reference_speed_chem.py --reference /path/to/Chem-xLSTM --lengths 256 --steps 1  # smoke

Writes benchmarks/results/reference_speed_chem.csv: task, tokens, implementation, tokens_per_s,
ratio (ours / reference), note.
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bioxlstm.convert import convert  # noqa: E402
from training_speed import training_tokens_per_s  # noqa: E402
from bioxlstm.models import BioXLSTMForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(model_dim=512, n_layers=9, n_heads=8, vocab_size=37)  # Chem-xLSTM-14.8M
DECODE_STEPS = 64


def fixture_module():
    spec = importlib.util.spec_from_file_location("chem_fixtures", ROOT / "scripts" / "reference_fixtures" / "chem_xlstm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(fixtures, length: int, workdir: Path):
    """The reference model (as its training builds it), saved by its own `save`, and ours converted from that."""
    from chemxlstm import model as reference_model, smiles_utils

    torch.manual_seed(0)
    instance = reference_model.xLSTMforNTP(
        mode="smiles", state_dim=64, dropout=0.25, sequence_length=length, device="cpu", **SHAPE
    )
    corpus = fixtures._chembl(5000)
    instance.token2label = smiles_utils.learn_label_encoding([["[BEG]"] + smiles_utils.segment_smiles(s) + ["[END]"] for s in corpus])
    instance.label2token = {v: k for k, v in instance.token2label.items()}
    perturb(instance.model, torch.Generator().manual_seed(1))
    instance.save(str(workdir / "checkpoint"))
    ours = BioXLSTMForCausalLM.from_pretrained(convert(workdir / "checkpoint", workdir / "converted"))
    return instance.model, ours


def perturb(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.02) -> None:
    # Off the initialisation, but small: at width 512 the fixtures' larger noise makes the model so
    # ill-conditioned that fp32 and fp64 runs of the reference itself differ by 1e-2, which would
    # hide a wrong conversion in the parity check printed here.
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


@torch.no_grad()
def ours_prefill_and_decode(model, ids: torch.Tensor) -> tuple[float, float]:
    start = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    prefill = ids.shape[1] / (time.perf_counter() - start)
    cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(DECODE_STEPS):
        out = model(token, cache=cache, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    return prefill, DECODE_STEPS / (time.perf_counter() - start)


@torch.no_grad()
def reference_prefill_and_decode(net, ids: torch.Tensor) -> tuple[float, float]:
    net.reset_state(ids.shape[0], device="cpu")
    start = time.perf_counter()
    for t in range(ids.shape[1]):
        logits = net.recurrent_step(ids[:, t])
    prefill = ids.shape[1] / (time.perf_counter() - start)
    token = logits.argmax(-1)
    start = time.perf_counter()
    for _ in range(DECODE_STEPS):
        token = net.recurrent_step(token).argmax(-1)
    return prefill, DECODE_STEPS / (time.perf_counter() - start)


def reference_training_gb(length: int) -> float:
    # parallel_stabilized_simple keeps about six (heads, S, S) fp32 matrices per block for backward.
    return 6 * SHAPE["n_heads"] * length**2 * 4 * SHAPE["n_layers"] / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of ml-jku/Chem-xLSTM")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-reference-gb", type=float, default=12.0, help="skip reference training that needs more")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reference_speed_chem.csv")
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference.resolve()))
    import xlstm

    torch.set_num_threads(args.threads)
    fixtures = fixture_module()
    print(f"torch {torch.__version__}, xlstm {getattr(xlstm, '__version__', '?')}, {torch.get_num_threads()} threads")
    rows = []

    def record(task, length, speeds, note=""):
        ratio = speeds["bioxlstm"] / speeds["reference"] if speeds.get("reference") else None
        for implementation, speed in speeds.items():
            rows.append(dict(task=task, tokens=length, implementation=implementation,
                             tokens_per_s=None if speed is None else round(speed, 1),
                             ratio=None if ratio is None else round(ratio, 2), note=note))
        reference = "n/a" if speeds.get("reference") is None else f"{speeds['reference']:.1f}"
        print(f"{task} {length}: reference {reference} tok/s, bioxlstm {speeds['bioxlstm']:.1f} tok/s"
              + ("" if ratio is None else f", ratio {ratio:.2f}") + (f" ({note})" if note else ""), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            workdir = Path(tmp) / str(length)
            workdir.mkdir()
            ref, ours = build(fixtures, length, workdir)
            ids = torch.randint(1, 34, (1, length), generator=torch.Generator().manual_seed(length))
            ref.eval(), ours.eval()
            with torch.no_grad():
                check = (ours(ids[:, :128]).logits - ref(ids[:, :128])).abs().max().item()
            params = sum(p.numel() for p in ours.parameters())
            print(f"{length} tokens: {params / 1e6:.1f}M parameters, max logit diff at 128 tokens {check:.1e}", flush=True)
            ref.train(), ours.train()
            need = reference_training_gb(length)
            speeds = {"bioxlstm": training_tokens_per_s(lambda x: ours(x).logits, list(ours.parameters()), ids, args.steps)}
            note = f"logit diff {check:.1e}"
            if need <= args.max_reference_gb:
                speeds["reference"] = training_tokens_per_s(lambda x: ref(x), list(ref.parameters()), ids, args.steps)
            else:
                speeds["reference"] = None
                note += f"; reference not run: its quadratic mLSTM needs about {need:.0f} GB for backward"
            record("train", length, speeds, note)
            ref.eval(), ours.eval()
            ours_prefill, ours_decode = ours_prefill_and_decode(ours, ids)
            ref_prefill, ref_decode = reference_prefill_and_decode(ref, ids)
            record("prefill", length, {"reference": ref_prefill, "bioxlstm": ours_prefill},
                   "reference: recurrent_step per prompt token, as its in-context generation reads a context")
            record("decode", length, {"reference": ref_decode, "bioxlstm": ours_decode}, f"{DECODE_STEPS} greedy steps after the prompt")
            del ref, ours
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
