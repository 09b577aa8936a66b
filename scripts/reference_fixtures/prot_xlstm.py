"""Regenerate the Prot-xLSTM parity fixtures under tests/fixtures/reference/prot_xlstm/ with the
reference code itself (ml-jku/Prot-xLSTM, Apache-2.0).

For each case it builds a small random-weight model with the reference classes (a config shaped
like the published `configs/xlstm_default_config.yaml`, scaled down), moves every parameter away
from its initial value (zero-initialised gates and norm offsets would otherwise hide mistakes),
writes it with the reference's own `xLSTMLMHeadModel.save_pretrained` (`config.json` +
`pytorch_model.bin`), and records inputs and reference logits in `expected.safetensors`:

- `input_ids`, `position_ids` (1, S): a homolog context of several `<cls>`-separated sequences,
  tokenized by the reference's `tokenizer`, with position ids made as its data pipeline makes them
  (`NoFIM` positions, restarting at each `<cls>`, clamped to `max_position_embeddings - 1`);
- `logits_full` (1, S, V): the full forward pass of the model as saved (its `chunkwise` backend;
  S is a multiple of the chunk size, which that backend needs);
- `logits_prefill_<P>` (1, P, V): the forward pass over the first P tokens, P not a multiple of
  the chunk size (the reference's `chunkwise_variable` backend, which its generation code uses
  for prompts);
- `logits_decode` (1, D, V): after the prefill of the first `decode_start` tokens, the reference's
  `step` fed the next D tokens one at a time (teacher forcing, the pipeline's position ids), as its
  `generate_sequence` does after encoding a context;
- `tokenizer_ids`: the reference tokenizer's ids for the context sequences (metadata
  `sequences`), so that the converted tokenizer can be checked without the reference code.

Usage (needs the reference's Python dependencies: torch, dacite, omegaconf, biopython, rich, transformers):

    python scripts/reference_fixtures/prot_xlstm.py --reference /path/to/Prot-xLSTM

The reference's CUDA placement in `xLSTMLMHeadModel.setup` is skipped (CPU only); nothing else
of it is changed. Two of its imports are stubbed: `protxlstm.generation` (imports a `transformers`
API that newer versions removed; only its mixin base class is used by the model) and `wandb`
(logging only).
"""

import argparse
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPOSITORY = "https://github.com/ml-jku/Prot-xLSTM"
OUTPUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference" / "prot_xlstm"

# Scaled-down copies of the published config (16 blocks, width 1024, 4 heads, rot_1d, base 500000,
# chunkwise backend). "homologs" keeps every published setting but the sizes and clamps positions
# (one homolog is longer than max_position_embeddings); "wide_heads" varies what a checkpoint may
# vary: two heads, a larger up-projection, biases, tied embeddings, a smaller chunk.
CASES = {
    "homologs": dict(
        model=dict(
            embedding_dim=32, num_blocks=2, num_heads=4, proj_factor=2.0, chunk_size=16,
            bias=False, tie_weights=False, max_position_embeddings=32,
        ),
        lengths=[21, 40, 14, 27, 10],  # residues per homolog, each after its <cls>: 117 tokens
        full_length=112,
        prefill_lengths=[37, 75],
        decode_start=75,
        decode_steps=14,  # crosses the <cls> of the fourth homolog at token 78
    ),
    "wide_heads": dict(
        model=dict(
            embedding_dim=32, num_blocks=1, num_heads=2, proj_factor=4.0, chunk_size=8,
            bias=True, tie_weights=True, max_position_embeddings=2048,
        ),
        lengths=[18, 25, 16],
        full_length=56,
        prefill_lengths=[13, 30],
        decode_start=30,
        decode_steps=12,
    ),
}


def import_reference(reference: Path):
    sys.path.insert(0, str(reference))
    generation = types.ModuleType("protxlstm.generation")
    generation.GenerationMixinSafe = object
    sys.modules["protxlstm.generation"] = generation
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    from protxlstm.fim import NoFIM
    from protxlstm.models import xlstm as model_module
    from protxlstm.utils import AA_TO_ID, tokenizer

    class CPUxLSTMLMHeadModel(model_module.xLSTMLMHeadModel):
        def setup(self):  # the reference moves the model to CUDA here
            pass

    return types.SimpleNamespace(
        NoFIM=NoFIM, xLSTMConfig=model_module.xLSTMConfig, Model=CPUxLSTMLMHeadModel, AA_TO_ID=AA_TO_ID, tokenizer=tokenizer
    )


def config_dict(model: dict, backend: str, return_last_state: bool) -> dict:
    """The `model:` section of a training config, as `xLSTMConfig.init_from_dict` reads it."""
    return {
        "vocab_size": 38,
        "mlstm_block": {
            "mlstm": {
                "conv1d_kernel_size": 4,
                "qkv_proj_blocksize": 4,
                "num_heads": model["num_heads"],
                "proj_factor": model["proj_factor"],
                "round_proj_up_to_multiple_of": 64,
                "round_proj_up_dim_up": True,
                "backend": backend,
                "chunk_size": model["chunk_size"],
                "return_last_state": return_last_state,
            }
        },
        "checkpoint_blocks": False,
        "context_length": 131072,
        "position_embeddings": "rot_1d",
        "max_seq_position_embeddings": 512,
        "num_blocks": model["num_blocks"],
        "dropout": 0.0,
        "embedding_dim": model["embedding_dim"],
        "bias": model["bias"],
        "tie_weights": model["tie_weights"],
        "max_position_embeddings": model["max_position_embeddings"],
        "rope_base_frequency": 500000,
    }


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            scale = 0.3 if parameter.dim() == 1 else 0.5 * max(parameter.std().item(), 0.05)
            parameter.add_(noise * scale)


def random_sequences(lengths: list[int], rng: np.random.Generator) -> list[str]:
    amino_acids = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return ["".join(rng.choice(amino_acids, size=n)) for n in lengths]


def pipeline_position_ids(ref, input_ids: np.ndarray, max_position_embeddings: int) -> np.ndarray:
    """Position ids as the reference's training data pipeline makes them: each sequence (from one
    `<cls>` to the next) numbered from 0 by `NoFIM`, then clamped."""
    starts = np.where(input_ids == ref.AA_TO_ID["<cls>"])[0]
    tuples = [(s, e) for s, e in zip(starts, list(starts[1:]) + [len(input_ids)])]
    _, positions = ref.NoFIM(add_position_ids=True).apply(input_ids, tuples)
    return torch.asarray(positions, dtype=torch.int64).clamp(0, max_position_embeddings - 1).numpy()


@torch.no_grad()
def build_case(ref, name: str, case: dict, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    saved_config = ref.xLSTMConfig().init_from_dict(config_dict(case["model"], "chunkwise", False))
    model = ref.Model(saved_config).eval()
    perturb(model, generator)

    directory = OUTPUT / name
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(str(directory))

    # The same weights behind the backend the reference uses for prompts of any length (and that
    # returns the recurrent state for decoding).
    prompt_config = ref.xLSTMConfig().init_from_dict(config_dict(case["model"], "chunkwise_variable", True))
    prompt_model = ref.Model(prompt_config).eval()
    prompt_model.load_state_dict(model.state_dict())

    sequences = random_sequences(case["lengths"], rng)
    tokens = ref.tokenizer(sequences, concatenate=True)[0].numpy().astype(np.int64)
    positions = pipeline_position_ids(ref, tokens, case["model"]["max_position_embeddings"])
    input_ids = torch.from_numpy(tokens)[None]
    position_ids = torch.from_numpy(positions)[None]

    tensors = {"input_ids": input_ids, "position_ids": position_ids, "tokenizer_ids": input_ids.clone()}
    length = case["full_length"]
    assert length % case["model"]["chunk_size"] == 0
    tensors["logits_full"] = model(input_ids[:, :length], position_ids=position_ids[:, :length]).logits
    for prefill in case["prefill_lengths"]:
        assert prefill % case["model"]["chunk_size"]
        tensors[f"logits_prefill_{prefill}"] = prompt_model(
            input_ids[:, :prefill], position_ids=position_ids[:, :prefill]
        ).logits

    start = case["decode_start"]
    state = prompt_model(input_ids[:, :start], position_ids=position_ids[:, :start]).state
    steps = []
    for t in range(start, start + case["decode_steps"]):
        logits, state = prompt_model.step(input_ids[:, t : t + 1], state, position_ids=position_ids[:, t : t + 1])
        steps.append(logits)
    tensors["logits_decode"] = torch.cat(steps, dim=1)

    metadata = {
        "sequences": json.dumps(sequences),
        "full_length": str(length),
        "prefill_lengths": json.dumps(case["prefill_lengths"]),
        "decode_start": str(start),
        "decode_steps": str(case["decode_steps"]),
        "seed": str(seed),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "expected.safetensors"), metadata=metadata)
    print(f"{name}: {len(tokens)} tokens, {sum(p.numel() for p in model.parameters())} parameters -> {directory}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of ml-jku/Prot-xLSTM")
    args = parser.parse_args()
    ref = import_reference(args.reference.resolve())
    for seed, (name, case) in enumerate(CASES.items()):
        build_case(ref, name, case, seed)


if __name__ == "__main__":
    main()
