"""Converted Prot-xLSTM against the reference implementation (ml-jku/Prot-xLSTM) on CPU, same weights.

What it measures, in one process, the two implementations interleaved per context length so that
machine noise hits them alike (the ratios are the robust result, the absolute numbers are not):

- training tokens/s: forward + backward of the next-token loss over one row of `context` tokens (a
  homolog context of `<cls>`-separated random sequences, with the reference's position ids), batch 1;
  one warm-up step at the first length, then `--train-steps` timed steps;
- decoding tokens/s: after a prompt of `context` tokens read in one pass (the reference: its
  `chunkwise_variable` backend returning the state, as its `generate_sequence` encodes a context;
  ours: the forward pass with `use_cache=True`), `--new-tokens` tokens fed one at a time (the
  reference: its `step`; ours: the model with its cache, as `generate` steps), timing the steps only.

The model: random weights made with the reference code in the published 26M shape (width 512,
16 mLSTM blocks, 4 heads, rot_1d with base 500000, max_position_embeddings 2048), written with
its `save_pretrained`, then converted by `bioxlstm.convert`; both run fp32 with the same weights.
The reference trains with its `chunkwise` backend at the published chunk size 1024 (the lengths
are multiples of it); ours uses its native chunkwise kernel.

Run from the repository root, with the reference's Python dependencies importable (dacite, omegaconf,
biopython, rich):

    python benchmarks/reference_speed_protein.py --reference /path/to/Prot-xLSTM
    python benchmarks/reference_speed_protein.py --reference ... --contexts 2048 8192 --blocks 4 \
        --threads 1 --clock cpu --out benchmarks/results/reference_speed_protein_4blocks_cpu.csv

At the full 26M shape, 8k-token training of both models in one process needs more memory than a
23 GB machine shared with other jobs had (the run was killed); `--blocks 4` keeps the published
width and heads, so per-block costs and ratios are those of the 26M model.

Writes benchmarks/results/reference_speed_protein_cpu.csv: one row per implementation, task and
context with tokens_per_s and the ratio to the reference. `--clock cpu --threads 1` times CPU
seconds instead of wall seconds: on a machine shared with other jobs, waiting for a core then
counts for neither implementation.
"""

import argparse
import gc
import os
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bioxlstm.convert import convert  # noqa: E402
from bioxlstm.models import BioXLSTMForCausalLM  # noqa: E402

OURS, REFERENCE = "bioxlstm", "prot-xlstm"


def import_reference(reference: Path):
    """The reference's model classes; its generation module (an old `transformers` API, unused by
    the model) and `wandb` are stubbed, and its CUDA placement is skipped."""
    sys.path.insert(0, str(reference))
    generation = types.ModuleType("protxlstm.generation")
    generation.GenerationMixinSafe = object
    sys.modules["protxlstm.generation"] = generation
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    from protxlstm.models import xlstm as model_module

    class CPUModel(model_module.xLSTMLMHeadModel):
        def setup(self):
            pass

    return model_module.xLSTMConfig, CPUModel


def reference_config(width: int, blocks: int, backend: str, return_last_state: bool) -> dict:
    return {
        "vocab_size": 38,
        "mlstm_block": {"mlstm": {
            "conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "num_heads": 4, "proj_factor": 2.0,
            "round_proj_up_to_multiple_of": 64, "round_proj_up_dim_up": True, "backend": backend,
            "chunk_size": 1024, "return_last_state": return_last_state,
        }},
        "checkpoint_blocks": False, "context_length": 131072, "position_embeddings": "rot_1d",
        "max_seq_position_embeddings": 512, "num_blocks": blocks, "dropout": 0.0, "embedding_dim": width,
        "bias": False, "max_position_embeddings": 2048, "rope_base_frequency": 500000,
    }


def homolog_context(length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A row of `<cls>` + ~300 random amino acids, repeated to `length` tokens, with the reference
    pipeline's position ids (0 at each `<cls>`)."""
    ids = torch.randint(4, 24, (length,), generator=generator)
    ids[::300] = 0
    positions = torch.empty(length, dtype=torch.long)
    for start in range(0, length, 300):
        positions[start : start + 300] = torch.arange(min(300, length - start))
    return ids[None], positions[None]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(fn) -> float:
    start = clock()
    fn()
    return clock() - start


def train_step_reference(model, ids, positions):
    logits = model(ids, position_ids=positions).logits
    F.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    model.zero_grad(set_to_none=True)


def train_step_ours(model, ids, positions):
    model(ids, labels=ids).loss.backward()  # positions: computed by the model from the <cls> tokens
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def decode_reference(model, ids, positions, new_tokens: int) -> float:
    state = model(ids, position_ids=positions).state
    token, position = ids[:, -1:], positions[:, -1:]

    def steps():
        nonlocal state, position
        for _ in range(new_tokens):
            position = position + 1
            _, state = model.step(token, state, position_ids=position)

    return new_tokens / timed(steps)


@torch.no_grad()
def decode_ours(model, ids, new_tokens: int) -> float:
    cache = model(ids, use_cache=True).cache
    token = ids[:, -1:]

    def steps():
        nonlocal cache
        for _ in range(new_tokens):
            cache = model(token, cache=cache, use_cache=True).cache

    return new_tokens / timed(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of ml-jku/Prot-xLSTM")
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: process CPU time, robust on a machine shared with other jobs (use with --threads 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reference_speed_protein_cpu.csv"))
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    Config, Model = import_reference(args.reference.resolve())

    torch.manual_seed(0)
    reference_train = Model(Config().init_from_dict(reference_config(args.width, args.blocks, "chunkwise", False)))
    with torch.no_grad():  # away from the initial values, so that no gate is trivially closed
        for parameter in reference_train.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    reference_decode = Model(Config().init_from_dict(reference_config(args.width, args.blocks, "chunkwise_variable", True)))
    reference_decode.load_state_dict(reference_train.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        reference_train.save_pretrained(f"{tmp}/reference")
        ours = BioXLSTMForCausalLM.from_pretrained(convert(f"{tmp}/reference", f"{tmp}/ours", "prot-xlstm"))
    parameters = sum(p.numel() for p in ours.parameters())
    print(f"{parameters / 1e6:.1f}M parameters, threads={torch.get_num_threads()}", flush=True)

    generator = torch.Generator().manual_seed(0)
    rows = []
    warmed = False
    for context in args.contexts:
        ids, positions = homolog_context(context, generator)
        for model in (reference_train, ours):
            model.train()
        if not warmed:
            train_step_reference(reference_train, ids, positions)
            train_step_ours(ours, ids, positions)
            warmed = True
        times = {REFERENCE: [], OURS: []}
        for _ in range(args.train_steps):  # interleaved
            times[REFERENCE].append(timed(lambda: train_step_reference(reference_train, ids, positions)))
            times[OURS].append(timed(lambda: train_step_ours(ours, ids, positions)))
        for name, seconds in times.items():
            rows.append(dict(implementation=name, task="train", context=context, tokens_per_s=context / min(seconds)))
            print(f"train  {context:>6} {name:<11} {rows[-1]['tokens_per_s']:10.1f} tokens/s", flush=True)
        gc.collect()
        for model in (reference_decode, ours):
            model.eval()
        rows.append(dict(implementation=REFERENCE, task="decode", context=context,
                         tokens_per_s=decode_reference(reference_decode, ids, positions, args.new_tokens)))
        print(f"decode {context:>6} {REFERENCE:<11} {rows[-1]['tokens_per_s']:10.1f} tokens/s", flush=True)
        rows.append(dict(implementation=OURS, task="decode", context=context,
                         tokens_per_s=decode_ours(ours, ids, args.new_tokens)))
        print(f"decode {context:>6} {OURS:<11} {rows[-1]['tokens_per_s']:10.1f} tokens/s", flush=True)
        gc.collect()

    table = pd.DataFrame(rows)
    reference_speed = table[table.implementation == REFERENCE].set_index(["task", "context"]).tokens_per_s
    table["ratio_to_reference"] = [
        row.tokens_per_s / reference_speed[(row.task, row.context)] for row in table.itertuples()
    ]
    table["parameters"] = parameters
    table["threads"] = torch.get_num_threads()
    table["clock"] = args.clock
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(table[table.implementation == OURS][["task", "context", "tokens_per_s", "ratio_to_reference"]].to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
