"""DNA-xLSTM checkpoints (ml-jku/DNA-xLSTM): a training run directory with `model_config.json`
(the model section of the run's hydra config: `{"config": {...xLSTMConfig fields...}}`) and a
PyTorch Lightning checkpoint below it (`checkpoints/test/loss.ckpt` as published), whose
`state_dict` holds the model under `model.backbone.` with official-xlstm names (plus `.submodule.`
and `complement_map` buffers in RC-PS models).

What the converted model reproduces, each behind a config option of ours:
- blockwise bidirectional models compute `block(x) + flip(block(flip(x)))` with the residual and
  feed-forward inside the block (`bidirectional_mode="block"`); alternating models read the
  sequence reversed in even-numbered blocks (`bidirectional_mode="alternating"`);
- rotary positions per head, interleaved channel pairs, base 500000 with the frequencies computed
  as 1 / base^(2i/D) (`rope_reciprocal_frequencies`: the float rounding shows at long contexts),
  positions 0..L-1 in each direction, gates reading the unrotated q and k;
- widths rounded down (the mLSTM inner width to a multiple of 64, the feed-forward as the run
  says), given to our config as explicit widths; `m_bias` adds biases to the mLSTM projections only;
- RC-PS "ps" models: the reference's sLSTM reverses the heads of the reverse-complement view before
  its group norm (`rcps_slstm_head_flip`), so the reference is not exactly RC-equivariant.
The published models were trained with the sLSTM cuda backend, which stores the cell's recurrent
kernel and bias in its own layout; the checkpoint does not say so (the sizes are those of the
vanilla layout), and the reference's config hard-codes "cuda", so that is the layout read here.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from ..domains import DNA
from ..models import BioXLSTMConfig, BioXLSTMForCausalLM, BioXLSTMForMaskedLM
from ..models.configuration_bioxlstm import block_types_with_slstm_at
from .common import ConversionError, Converted, check_keys, load_state, read_json, xlstm_block_state
from .safe_pickle import load_lightning_state_dict

FORMAT = "dna-xlstm"
CONFIG = "model_config.json"
PUBLISHED_CHECKPOINT = Path("checkpoints") / "test" / "loss.ckpt"
SOURCE = "DNA-xLSTM (ml-jku/DNA-xLSTM)"
HOMEPAGE = "https://github.com/ml-jku/DNA-xLSTM (weights: https://ml.jku.at/research/Bio-xLSTM/downloads/DNA-xLSTM/checkpoints)"
LICENSE = "apache-2.0"

# The reference's character tokenizer (CaduceusTokenizer / CharacterTokenizer with A C G T N).
VOCAB = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N"]
SPECIAL_TOKENS = VOCAB[:7]
SEP_ID, PAD_ID = 1, 4
COMPLEMENT_MAP = [VOCAB.index(DNA.complementary_bases.get(token, token)) for token in VOCAB]
# The reference's sLSTM backend; see the module docstring.
SLSTM_LAYOUT = "cuda"
ROPE_THETA = 500000.0
MLSTM_ROUND_MULTIPLE = 64  # the reference's xLSTMConfig fixes it, rounding down


def matches(source: Path) -> bool:
    """A directory with model_config.json and at least one Lightning .ckpt below it."""
    source = Path(source)
    return (source / CONFIG).is_file() and any(path.is_file() for path in source.rglob("*.ckpt"))


def find_checkpoint(source: Path) -> Path:
    """The published checkpoint (checkpoints/test/loss.ckpt), else the only .ckpt below `source`."""
    source = Path(source)
    if (source / PUBLISHED_CHECKPOINT).is_file():
        return source / PUBLISHED_CHECKPOINT
    found = sorted(path for path in source.rglob("*.ckpt") if path.is_file())
    if not found:
        raise ConversionError(f"{source}: no Lightning checkpoint (.ckpt) below it (expected {PUBLISHED_CHECKPOINT})")
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(source)) for path in found[:6])
        raise ConversionError(f"{source}: several checkpoints ({names}) and no {PUBLISHED_CHECKPOINT}; keep only the one to convert")
    return found[0]


def _round(value: float, multiple: int, up: bool) -> int:
    quotient = value / multiple
    return int((-(-quotient // 1) if up else quotient // 1) * multiple)


class _Fields(dict):
    """The fields of a model_config.json; a field set to null counts as absent, as in the reference."""

    def get(self, name, default=None):
        value = super().get(name)
        return default if value is None else value


def config_from_dump(dump: dict, path: Path) -> BioXLSTMConfig:
    """Our config for a DNA-xLSTM model_config.json; one-line ConversionError for what we cannot
    represent exactly (or what the reference itself cannot run)."""
    fields = dump.get("config")
    if not isinstance(fields, dict) or "d_model" not in fields or "n_layer" not in fields:
        raise ConversionError(f"{path}: not a DNA-xLSTM model config (expected {{\"config\": {{\"d_model\", \"n_layer\", ...}}}})")
    target = str(fields.get("_target_", ""))
    if target and not target.endswith("xLSTMConfig"):
        raise ConversionError(f"{path}: a config of {target}, not of DNA-xLSTM's xLSTMConfig")
    fields = _Fields(fields)
    try:
        _refuse_what_we_cannot_represent(fields, path)
        return _config(fields, path)
    except ConversionError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise ConversionError(f"{path}: {error}") from None


def _has_mlstm(fields: _Fields) -> bool:
    return len(fields.get("s_lstm_at", [])) < int(fields["n_layer"])


def _refuse_what_we_cannot_represent(fields: _Fields, path: Path) -> None:
    for flag in ("m_conv1d_causal", "s_conv1d_causal"):
        if not bool(fields.get(flag, True)):
            raise ConversionError(f"{path}: {flag}=false (a non-causal convolution) is not supported")
    if bool(fields.get("s_position_embeddings", False)):
        raise ConversionError(f"{path}: s_position_embeddings=true (scaled sinusoidal positions) is not supported; no published model uses it")
    native_bidirectional = bool(fields.get("m_backend_bidirectional", False)) and not bool(fields.get("bidirectional_alternating", False))
    if _has_mlstm(fields) and bool(fields.get("bidirectional", False)) and native_bidirectional:
        raise ConversionError(f"{path}: m_backend_bidirectional=true (the non-causal parallel mLSTM) is not supported")
    if bool(fields.get("rcps", False)) and _has_mlstm(fields):
        raise ConversionError(f"{path}: rcps with mLSTM blocks, which the reference itself cannot run (its RC-PS wraps sLSTM blocks only)")
    vocab_size = int(fields.get("vocab_size", 16))
    if vocab_size != len(VOCAB):
        raise ConversionError(f"{path}: vocab_size={vocab_size}, but DNA-xLSTM's character vocabulary has {len(VOCAB)} tokens")


def _widths(fields: _Fields, path: Path) -> dict:
    """The inner widths as the reference rounds them (the mLSTM's down), given explicitly."""
    d_model, widths = int(fields["d_model"]), {}
    if _has_mlstm(fields):
        widths["mlstm_inner_width"] = _round(float(fields.get("m_proj_factor", 2.0)) * d_model, MLSTM_ROUND_MULTIPLE, up=False)
    if fields.get("s_lstm_at", []):
        widths["ffn_inner_width"] = _round(
            float(fields.get("s_proj_factor", 1.3)) * d_model,
            int(fields.get("s_round_proj_up_to_multiple_of", 64)),
            up=bool(fields.get("s_round_proj_up_dim_up", True)),
        )
    for name, width in widths.items():
        if width < 1:
            raise ConversionError(f"{path}: the reference's rounding leaves {name} at 0 for d_model={d_model}")
    return widths


def _config(fields: _Fields, path: Path) -> BioXLSTMConfig:
    d_model, n_layer = int(fields["d_model"]), int(fields["n_layer"])
    slstm_at = [int(i) for i in fields.get("s_lstm_at", [])]
    rcps, bidirectional = bool(fields.get("rcps", False)), bool(fields.get("bidirectional", False))
    positions = {}
    if _has_mlstm(fields) and bool(fields.get("m_position_embeddings", False)):
        positions = dict(
            position_embedding="rotary", rope_theta=ROPE_THETA, rope_pairing="interleaved",
            rope_span="head", rope_gates_read_rotated=False, rope_reciprocal_frequencies=True,
        )
    mode = "alternating" if bool(fields.get("bidirectional_alternating", False)) else "block"
    return BioXLSTMConfig(
        vocab_size=len(VOCAB),
        hidden_size=2 * d_model if rcps else d_model,
        num_hidden_layers=n_layer,
        num_heads=int(fields.get("m_num_heads", 4)) if _has_mlstm(fields) else int(fields.get("s_num_heads", 4)),
        block_types=block_types_with_slstm_at(slstm_at, n_layer),
        slstm_num_heads=int(fields.get("s_num_heads", 4)),
        conv1d_kernel_size=int(fields.get("m_conv1d_kernel_size", 4)),
        slstm_conv1d_kernel_size=int(fields.get("s_conv1d_kernel_size", 4)),
        qkv_proj_blocksize=int(fields.get("m_qkv_proj_blocksize", 4)),
        proj_factor=float(fields.get("m_proj_factor", 2.0)),
        ffn_proj_factor=float(fields.get("s_proj_factor", 1.3)),
        bias=bool(fields.get("m_bias", False)),
        ffn_bias=False,
        ffn_activation="gelu",
        dropout=float(fields.get("dropout", 0.0)),
        add_post_blocks_norm=True,
        norm_eps=1e-5,
        tie_word_embeddings=False,  # the reference computes but never applies tie_weights
        bidirectional=bidirectional,
        bidirectional_mode=mode if bidirectional else "mixer",
        bidirectional_combine="add",
        rcps=rcps,
        rcps_slstm_head_flip=rcps and bool(slstm_at),
        complement_map=COMPLEMENT_MAP,
        domain=DNA.name,
        pad_token_id=PAD_ID,
        eos_token_id=SEP_ID,
        # The reference reverse-complements the whole row when conjoined: [SEP] moves with the bases.
        strand_delimiter_ids=[],
        **_widths(fields, path),
        **positions,
    )


def _our_state(state: dict, config: BioXLSTMConfig, path: Path) -> dict:
    """Their state dict under our names; every key of theirs is used exactly once."""
    # RC-PS models wrap sub-layers in RCPSWrapper(submodule), whose weights are the submodule's; a
    # run with train.compile_model saves the model under torch.compile's `_orig_mod.`.
    state = {name.replace(".submodule.", ".").replace("_orig_mod.", ""): tensor for name, tensor in state.items()}
    backbone, stack = "model.backbone.", "model.backbone.xlstm_block_stack."
    if config.rcps:
        embedding, head = backbone + "token_embedding.embedding.weight", backbone + "lm_head.lm_head.weight"
        buffers = [backbone + "token_embedding.complement_map", backbone + "lm_head.complement_map"]
    else:
        embedding, head, buffers = backbone + "token_embedding.weight", backbone + "lm_head.weight", []
    blocks_prefix = stack + "blocks."

    def in_range(name: str) -> bool:
        index = name[len(blocks_prefix):].split(".")[0]
        return name.startswith(blocks_prefix) and index.isdigit() and int(index) < config.num_hidden_layers

    check_keys(
        {name: tensor for name, tensor in state.items() if not in_range(name)},
        {embedding, head, stack + "post_blocks_norm.weight", *buffers},
        path,
    )
    for name in buffers:
        if state[name].tolist() != COMPLEMENT_MAP:
            raise ConversionError(f"{path}: {name} is {state[name].tolist()}, not the complement map of DNA-xLSTM's vocabulary")
    ours = {
        "backbone.embeddings.weight": state[embedding],
        "lm_head.weight": state[head],
        "backbone.post_blocks_norm.weight": state[stack + "post_blocks_norm.weight"],
    }
    block_name = "backbone.blocks.{}.block.{}" if config.rcps else "backbone.blocks.{}.{}"
    for i in range(config.num_hidden_layers):
        try:
            block = xlstm_block_state(state, f"{blocks_prefix}{i}.", config, i, SLSTM_LAYOUT)
        except KeyError as error:
            raise ConversionError(f"{path}: the weights do not match the config: missing {error.args[0]}") from None
        except ValueError as error:
            raise ConversionError(f"{path}: the config does not match the weights: {error}") from None
        for name, tensor in block.items():
            ours[block_name.format(i, name)] = tensor
    return ours


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The reference's 12 token ids; a sequence encodes to one id per character, case-sensitive
    (lower case is [UNK], as in the reference), with no special token added, for both model kinds.

    That is what the reference's models read. Its hg38 dataset (`add_eos`) appends [SEP] to every
    window, but the input drops it again: a causal model reads `seq[:-1]` and is trained to predict
    the [SEP] after the last base, a masked model reads what `mlm_getitem(contains_eos=True)` keeps,
    the window without its [SEP]; the downstream datasets add nothing (`add_eos: False`). Scoring
    appends the eos token, [SEP], so a causal model's log-likelihood counts that prediction as the
    reference's loss does."""
    tokenizer = Tokenizer(models.BPE({token: i for i, token in enumerate(VOCAB)}, [], unk_token="[UNK]"))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="[BOS]",
        cls_token="[CLS]",
        eos_token="[SEP]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=2**31 - 1,
    )


def convert(source: Path) -> Converted:
    source = Path(source)
    config = config_from_dump(read_json(source / CONFIG), source / CONFIG)
    checkpoint = find_checkpoint(source)
    state = load_lightning_state_dict(checkpoint)
    masked = config.bidirectional or config.rcps
    model = (BioXLSTMForMaskedLM if masked else BioXLSTMForCausalLM)(config)
    load_state(model, _our_state(state, config, checkpoint), checkpoint)
    notes = [
        f"Token ids are those of DNA-xLSTM's character tokenizer ({' '.join(VOCAB)}); the tokenizer is "
        "case-sensitive like the reference's (lower-case bases encode as [UNK]); "
        + "it adds no special tokens, as the models read none in pretraining (the hg38 data's [SEP] is only a target, "
        "of causal models: scoring appends it, so a log-likelihood counts what the reference's loss counts)."
        + " The reference's hg38 pretraining data turned N into [PAD] (ignored by the loss); the tokenizer keeps N.",
        "12 logits: the reference computes a vocabulary padded to a multiple of 8 but never applies it; its tie_weights is ignored too.",
        "sLSTM cells read from the cuda backend's parameter layout, which the published models were trained with.",
    ]
    if config.bidirectional:
        notes.append(
            "Bidirectional as the reference computes it: "
            + ("each block runs, residual and feed-forward included, on the sequence and on its reversal, and the two "
               "results are added (the residual counts twice)" if config.bidirectional_mode == "block"
               else "even-numbered blocks read the sequence reversed, the others forward")
            + "."
        )
    if config.position_embedding == "rotary":
        notes.append(
            f"Rotary positions as the reference applies them: per mLSTM head, interleaved channel pairs, base {ROPE_THETA:g} "
            "with frequencies computed as 1 / base^(2i/D) like the reference (the rounding matters at long contexts), "
            "positions 0..L-1 in each direction; the gates read the unrotated q and k. Unlike the reference, "
            "which only runs at exactly its training context length, this model runs at any length."
        )
    if config.rcps:
        notes.append(
            "RC-PS as the reference computes it, quirk included (rcps_slstm_head_flip): in the reverse-complement "
            "view its sLSTM reverses the order of the heads before the group norm and keeps them so, which makes the "
            "model not exactly RC-equivariant. New Bio-xLSTM RC-PS models are exactly equivariant (the default)."
        )
    if "mlstm" in config.block_types:
        notes.append("Widths rounded as the reference rounds them (the mLSTM inner width down to a multiple of 64).")
    if masked and not config.rcps:
        notes.append(
            "Post-hoc conjoined (\"ph\") use: set conjoin=True in the config of an encoder/classifier built from this "
            "model to average over both strands at use time."
        )
    return Converted(
        model=model.eval(),
        tokenizer=build_tokenizer(),
        source=SOURCE,
        homepage=HOMEPAGE,
        license=LICENSE,
        notes=notes,
    )
