"""Prot-xLSTM checkpoints (ml-jku/Prot-xLSTM): a directory with `config.json` (the dump of the
project's `xLSTMLMModelConfig`) and `pytorch_model.bin` (its model's state dict: `backbone.` and
the official-xlstm names of an mLSTM-only block stack).

What the converted model reproduces, each behind a config option of ours:
- rotary positions over the whole mLSTM inner width before the head split, channels paired
  interleaved (2i, 2i+1), frequencies base^(-2i/inner) (`rope_span="inner"`,
  `rope_pairing="interleaved"`), with the input and forget gates reading the rotated q and k
  (`rope_gates_read_rotated`);
- the project's position ids: 0 at every `<cls>`, counting on after it, clamped to
  `max_position_embeddings - 1` (`position_restart_token_id`, `max_position_id`), which
  the model computes from the input ids when no `position_ids` are passed.
"""

from pathlib import Path

from ..domains import PROTEIN
from ..models import BioXLSTMConfig, BioXLSTMForCausalLM, mlstm
from ..tokenization import load_tokenizer
from .common import ConversionError, Converted, check_keys, load_state, load_torch_weights, read_json, xlstm_block_state

FORMAT = "prot-xlstm"
CONFIG, WEIGHTS = "config.json", "pytorch_model.bin"
SOURCE = "Prot-xLSTM (ml-jku/Prot-xLSTM)"
HOMEPAGE = "https://github.com/ml-jku/Prot-xLSTM (weights: https://ml.jku.at/research/Bio-xLSTM/downloads/Prot-xLSTM/data/)"
LICENSE = "apache-2.0"

# The project's token ids (its `AA_TO_ID`); our bundled protein tokenizer uses the same order.
CLS_ID, PAD_ID, EOS_ID, VOCAB_SIZE = 0, 1, 2, 38
# Fields of the dump that change what the model computes; everything else is training bookkeeping
# (context_length, checkpoint_blocks, weight decay, the backend and its chunk size, which only
# tile the same computation) or derived (`_`-prefixed).
_TOP_LEVEL = {"mlstm_block", "num_blocks", "embedding_dim", "vocab_size", "position_embeddings"}
_MLSTM = {"num_heads", "proj_factor", "conv1d_kernel_size", "qkv_proj_blocksize"}


def matches(source: Path) -> bool:
    """A directory holding the two files, whose config.json names the fields only an
    `xLSTMLMModelConfig` dump of Prot-xLSTM has (an mLSTM block config and its position scheme)."""
    source = Path(source)
    if not (source / CONFIG).is_file() or not (source / WEIGHTS).is_file():
        return False
    try:
        config = read_json(source / CONFIG)
    except ConversionError:
        return False
    return isinstance(config.get("mlstm_block"), dict) and "position_embeddings" in config and "rope_base_frequency" in config


def config_from_dump(dump: dict, path: Path) -> BioXLSTMConfig:
    """Our config for a Prot-xLSTM `config.json`; one-line ConversionError for what we cannot represent exactly."""
    missing = sorted(_TOP_LEVEL - set(dump))
    mlstm = dump.get("mlstm_block", {}).get("mlstm") if isinstance(dump.get("mlstm_block"), dict) else None
    if not isinstance(mlstm, dict):
        missing.append("mlstm_block.mlstm")
    else:
        missing += [f"mlstm_block.mlstm.{name}" for name in sorted(_MLSTM - set(mlstm))]
    if missing:
        raise ConversionError(f"{path}: not a Prot-xLSTM model config (missing {', '.join(missing)})")
    if dump.get("slstm_at") or dump.get("slstm_block"):
        raise ConversionError(f"{path}: sLSTM blocks are not part of Prot-xLSTM; this config is of another project")
    if not mlstm.get("round_proj_up_dim_up", True):
        raise ConversionError(f"{path}: round_proj_up_dim_up=false (rounding the inner width down) is not supported")
    scheme = dump["position_embeddings"]
    if scheme == "rot_1d":
        positions = dict(
            position_embedding="rotary",
            rope_theta=float(dump.get("rope_base_frequency", 10000)),
            rope_pairing="interleaved",
            rope_span="inner",
            rope_gates_read_rotated=True,
            position_restart_token_id=CLS_ID,
            max_position_id=max(int(dump.get("max_position_embeddings", 2048)) - 1, 0),
        )
    elif scheme == "none":
        positions = dict(position_embedding="none")
    else:
        raise ConversionError(
            f"{path}: position_embeddings={scheme!r} is not supported (only 'rot_1d', the published models' scheme, and 'none')"
        )
    if int(dump["vocab_size"]) != VOCAB_SIZE:
        raise ConversionError(f"{path}: vocab_size={dump['vocab_size']}, but Prot-xLSTM's vocabulary has {VOCAB_SIZE} tokens")
    try:
        return BioXLSTMConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=int(dump["embedding_dim"]),
            num_hidden_layers=int(dump["num_blocks"]),
            num_heads=int(mlstm["num_heads"]),
            proj_factor=float(mlstm["proj_factor"]),
            proj_round_multiple=int(mlstm.get("round_proj_up_to_multiple_of", 64)),
            conv1d_kernel_size=int(mlstm["conv1d_kernel_size"]),
            qkv_proj_blocksize=int(mlstm["qkv_proj_blocksize"]),
            bias=bool(dump.get("bias", False)),
            dropout=float(dump.get("dropout", 0.0)),
            embedding_dropout=bool(dump.get("add_embedding_dropout", False)),
            add_post_blocks_norm=bool(dump.get("add_post_blocks_norm", True)),
            tie_word_embeddings=bool(dump.get("tie_weights", False)),
            norm_eps=1e-5,
            domain=PROTEIN.name,
            pad_token_id=PAD_ID,
            bos_token_id=CLS_ID,
            eos_token_id=EOS_ID,
            **positions,
        )
    except (ValueError, TypeError) as error:
        raise ConversionError(f"{path}: {error}") from None


def _our_state(state: dict, config: BioXLSTMConfig, path: Path) -> dict:
    """Their state dict under our names."""
    stack = "backbone.xlstm_block_stack."
    outside_blocks = {"backbone.token_embedding.weight", "backbone.lm_head.weight"}
    if config.add_post_blocks_norm:
        outside_blocks.add(stack + "post_blocks_norm.weight")
    # The trailing dot keeps block 1 from claiming block 10's keys. The configured blocks' keys are
    # checked, by name and shape, when loaded; every other key must be one of `outside_blocks`.
    block_prefixes = tuple(f"{stack}blocks.{i}." for i in range(config.num_hidden_layers))
    check_keys({k: v for k, v in state.items() if not k.startswith(block_prefixes)}, outside_blocks, path)
    ours = {
        "backbone.embeddings.weight": state["backbone.token_embedding.weight"],
        "lm_head.weight": state["backbone.lm_head.weight"],
    }
    if config.add_post_blocks_norm:
        ours["backbone.post_blocks_norm.weight"] = state[stack + "post_blocks_norm.weight"]
    for i, prefix in enumerate(block_prefixes):
        for name, tensor in xlstm_block_state(state, prefix, config, i).items():
            ours[f"backbone.blocks.{i}.{name}"] = tensor
    return ours


def convert(source: Path) -> Converted:
    source = Path(source)
    config = config_from_dump(read_json(source / CONFIG), source / CONFIG)
    weights = source / WEIGHTS
    state = load_torch_weights(weights)
    model = BioXLSTMForCausalLM(config)
    load_state(model, _our_state(state, config, weights), weights)
    notes = []
    if config.position_embedding == "rotary":
        notes = [
            f"Rotary positions as Prot-xLSTM applies them: over the whole mLSTM inner width "
            f"({mlstm.inner_size(config)}) before the head split, interleaved channel pairs, base "
            f"{config.rope_theta:g}; the input and forget gates read the rotated q and k.",
            f"Position ids: 0 at every `<cls>`, counting on after it, clamped to "
            f"{config.max_position_id} (max_position_embeddings - 1, as Prot-xLSTM's data "
            f"pipeline clamps them); the model computes them from the input ids when none are passed, "
            f"and carries them through its recurrent cache. (Prot-xLSTM's own sampling loop leaves the "
            f"positions of generated tokens unclamped, so the two differ only within a sequence longer "
            f"than {config.max_position_id + 1} tokens.)",
        ]
    notes.append(
        "Prot-xLSTM's mLSTM backend and chunk size only tile the same computation; this model uses its own kernels."
    )
    return Converted(
        model=model.eval(),
        tokenizer=load_tokenizer(PROTEIN.name),
        source=SOURCE,
        homepage=HOMEPAGE,
        license=LICENSE,
        notes=notes,
    )
