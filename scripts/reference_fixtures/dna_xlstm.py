"""Regenerate the DNA-xLSTM parity fixtures under tests/fixtures/reference/dna_xlstm/.

Every case is a small random-weight model built with the reference code (ml-jku/DNA-xLSTM, shaped
like a published variant but scaled down), its weights moved away from their initialisation, and
written exactly as the reference training writes a run: `model_config.json` (the model section of
the hydra config, as `src/utils/train.py:print_config` dumps it) and a PyTorch Lightning checkpoint
`checkpoints/test/loss.ckpt` (weights under `state_dict` with `model.backbone...` keys and the whole
hydra config, an omegaconf DictConfig, under `hyper_parameters`). The published models were trained
with the sLSTM cuda backend, so the sLSTM cells are stored in its internal layout (converted here
from the vanilla parameters with the reference's own int2ext/ext2int), while the expected logits
come from the vanilla backend on CPU. `expected.safetensors` holds the input ids and the logits.

Usage (in an environment with torch, omegaconf, dacite and pytorch-lightning):

    python scripts/reference_fixtures/dna_xlstm.py --reference /path/to/DNA-xLSTM

The reference is imported from the checkout; nothing of it is copied into bioxlstm.
"""

import argparse
import copy
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "fixtures" / "reference" / "dna_xlstm"

# The 12-token vocabulary of the reference's character tokenizer; complements A<->T, C<->G.
COMPLEMENT = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 10, 8: 9, 9: 8, 10: 7, 11: 11}

# Published settings (scripts_pretrain/run_pretrain_xlstm.sh), scaled down to d_model 48.
PUBLISHED = dict(
    vocab_size=12,
    pad_vocab_size_multiple=8,
    m_conv1d_kernel_size=4,
    m_conv1d_causal=True,
    m_qkv_proj_blocksize=4,
    m_num_heads=4,
    m_proj_factor=2.0,
    m_backend="parallel",
    m_chunk_size=64,
    m_backend_bidirectional=False,
    m_position_embeddings=True,
    m_bias=True,
    s_num_heads=4,
    s_conv1d_kernel_size=4,
    s_conv1d_causal=True,
    s_proj_factor=1.1,
    s_round_proj_up_dim_up=False,
    s_round_proj_up_to_multiple_of=8,
    s_position_embeddings=False,
    dropout=0.0,
    bidirectional=False,
    bidirectional_alternating=False,
    rcps=False,
    complement_map=None,
)

# name -> (config overrides, sequence length, masked LM); lengths are not multiples of any chunk size.
CASES = {
    # Causal sLSTM stack (CLM), the published block type.
    "clm_slstm": (dict(d_model=48, n_layer=2, s_lstm_at=[0, 1]), 37, False),
    # Causal mLSTM stack with per-head RoPE; 2 * 48 rounds DOWN to an inner width of 64.
    "clm_mlstm_rope": (dict(d_model=48, n_layer=2, s_lstm_at=[]), 37, False),
    # Causal mixed stack: mLSTM (RoPE, biases from m_bias) and sLSTM (feed-forward without bias).
    "clm_mixed": (dict(d_model=48, n_layer=3, s_lstm_at=[1]), 41, False),
    # Blockwise bidirectional MLM, sLSTM (the published "ph" architecture before conjoining).
    "mlm_bidir_slstm": (dict(d_model=48, n_layer=2, s_lstm_at=[0, 1], bidirectional=True), 37, True),
    # Blockwise bidirectional MLM with mLSTM blocks (RoPE in both directions) and an sLSTM block.
    "mlm_bidir_mixed": (dict(d_model=48, n_layer=2, s_lstm_at=[1], bidirectional=True), 29, True),
    # Alternating bidirectional MLM (even blocks read the sequence reversed).
    "mlm_alternating": (
        dict(d_model=48, n_layer=3, s_lstm_at=[1], bidirectional=True, bidirectional_alternating=True),
        29,
        True,
    ),
    # Causal mLSTM with RoPE at a long context, where float rounding of the rotary frequencies
    # shows (logits kept at every 40th position to stay small).
    "clm_mlstm_rope_long": (dict(d_model=32, n_layer=1, s_lstm_at=[], m_num_heads=1), 2003, False),
    # Parameter-shared RC-PS MLM (the published "ps" architecture: sLSTM only).
    "mlm_rcps_slstm": (
        dict(d_model=24, n_layer=2, s_lstm_at=[0, 1], bidirectional=True, rcps=True, complement_map=COMPLEMENT),
        37,
        True,
    ),
}


def import_reference(reference: Path):
    # The sLSTM module asks cpp_extension for CUDA include paths at import time (an argument newer
    # torch lacks); the cuda kernel itself is never built here.
    import torch.utils.cpp_extension as cpp_extension

    include_paths = cpp_extension.include_paths
    cpp_extension.include_paths = lambda *args, **kwargs: include_paths()
    # models/__init__.py imports Caduceus, which needs mamba_ssm: load the package without it.
    package = types.ModuleType("models")
    package.__path__ = [str(reference / "models")]
    sys.modules["models"] = package
    sys.path.insert(0, str(reference))
    from models.dna_xlstm import modelling_xlstm
    from models.dna_xlstm.xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCell_vanilla

    return modelling_xlstm, sLSTMCell_cuda, sLSTMCell_vanilla


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Move every parameter away from its initialisation (zeros, ones, linspaces), so that a
    mismatch in any of them shows in the logits."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.3 if ("norm" in name or "bias" in name or "skip" in name) else 0.1
            if "_recurrent_kernel_" in name:
                scale = 0.2
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def cuda_layout_state(model: torch.nn.Module, cuda_cell, vanilla_cell) -> dict:
    """The model's state dict with every sLSTM cell in the cuda backend's internal layout."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, vanilla_cell):
            converter = cuda_cell(copy.deepcopy(module.config), skip_backend_init=True)
            prefix = f"{name}."
            kernel = module._recurrent_kernel_int2ext(module._recurrent_kernel_.data)
            bias = module._bias_int2ext(module._bias_.data)
            state[prefix + "_recurrent_kernel_"] = converter._recurrent_kernel_ext2int(kernel).contiguous()
            state[prefix + "_bias_"] = converter._bias_ext2int(bias).contiguous()
    return state


def hydra_config(model_section: dict, seq_len: int, mlm: bool):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "model": model_section,
            "dataset": {
                "_name_": "hg38",
                "max_length": seq_len,
                "tokenizer_name": "char",
                "add_eos": True,
                "mlm": mlm,
                "mlm_probability": 0.15 if mlm else 0.0,
                "rc_aug": False,
            },
            "task": {"_name_": "lm", "loss": {"_name_": "cross_entropy", "ignore_index": 4}},
            "train": {"seed": 0, "monitor": "test/loss", "mode": "min"},
            "trainer": {"max_steps": 0, "precision": "bf16"},
        }
    )


def write_checkpoint(path: Path, state: dict, hyper_parameters) -> None:
    """A Lightning checkpoint written by Lightning itself, holding the given model state."""
    import pytorch_lightning as pl

    class SequenceLightningModule(pl.LightningModule):
        def __init__(self, config):
            super().__init__()
            self.save_hyperparameters(config, logger=False)
            self.model = torch.nn.Module()

    module = SequenceLightningModule(hyper_parameters)
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1,
    )
    trainer.strategy.connect(module)
    checkpoint_state = {f"model.{name}": tensor.detach().clone() for name, tensor in state.items()}
    original = module.state_dict
    module.state_dict = lambda *args, **kwargs: checkpoint_state  # the tensors as the cuda backend stores them
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    module.state_dict = original


def input_ids(seq_len: int, mlm: bool, generator: torch.Generator) -> torch.Tensor:
    """Two rows: bases (and an N), [MASK] at some positions of an MLM row, and an [SEP] ending an
    MLM row. The hg38 pipeline reads N as [PAD] and never feeds [SEP] (`mlm_getitem` drops the one
    `add_eos` appends); these rows only need to be inputs the model accepts."""
    ids = torch.randint(7, 11, (2, seq_len), generator=generator)
    ids[1, 5] = 11  # N
    if mlm:
        ids[:, -1] = 1  # [SEP]: a special token at a position the parity covers too
        ids[0, [3, 10, 17]] = 3  # [MASK]
        ids[1, [2, 8]] = 3
    return ids


def build_case(name: str, reference, seed: int) -> None:
    modelling_xlstm, cuda_cell, vanilla_cell = reference
    overrides, seq_len, mlm = CASES[name]
    config_fields = {**PUBLISHED, **overrides, "max_length": seq_len}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = modelling_xlstm.xLSTMConfig(**config_fields)
    if config.xlstm_cfg.slstm_block is not None:
        config.xlstm_cfg.slstm_block.slstm.backend = "vanilla"  # CPU; stored in the cuda layout below
    model = modelling_xlstm.xLSTMLMHeadModel(config).eval()
    perturb(model, generator)
    ids = input_ids(seq_len, mlm, generator)
    with torch.no_grad():
        logits = model(ids).logits.float()
    expected = {"input_ids": ids.contiguous()}
    if seq_len > 1000:
        ids, logits = ids[:1], logits[:1]
        positions = torch.arange(0, seq_len, 40)
        expected = {"input_ids": ids.contiguous(), "positions": positions, "logits": logits[:, positions].contiguous()}
    else:
        expected["logits"] = logits.contiguous()

    directory = OUTPUT / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    # model_config.json is written before the model exists, so its complement_map is still null;
    # the training module then fills it in from the tokenizer (it is in hyper_parameters).
    model_fields = {"_target_": "models.dna_xlstm.modelling_xlstm.xLSTMConfig", **config_fields, "complement_map": None}
    (directory / "model_config.json").write_text(json.dumps({"config": model_fields}, indent=4))
    section = {"_name_": "xlstm_lm", "config": {**model_fields, "complement_map": COMPLEMENT}}
    write_checkpoint(
        directory / "checkpoints" / "test" / "loss.ckpt",
        cuda_layout_state(model, cuda_cell, vanilla_cell),
        hydra_config(section, seq_len, mlm),
    )
    from safetensors.torch import save_file

    save_file(expected, str(directory / "expected.safetensors"))
    print(f"{name}: logits {tuple(logits.shape)}, |logits| max {logits.abs().max():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of ml-jku/DNA-xLSTM")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    reference = import_reference(args.reference.resolve())
    commit = subprocess.run(
        ["git", "-C", str(args.reference), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"reference {args.reference} at {commit or 'unknown commit'}")
    for name in args.cases:
        build_case(name, reference, seed=list(CASES).index(name))


if __name__ == "__main__":
    main()
