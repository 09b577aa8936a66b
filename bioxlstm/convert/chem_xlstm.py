"""Chem-xLSTM checkpoints (ml-jku/Chem-xLSTM): a directory with `model.pt` (the state dict of the
project's model wrapper: `model.` + the names of an official `xlstm.xLSTMLMModel`) and
`init_arguments.json` (its hyperparameters and its vocabulary, `token2label`).

What the files do not say, and how the conversion finds it:
- the head count: the project's `save` writes `n_heads: 1` whatever the model was built with, so
  the heads are read from the weights (the mLSTM and sLSTM gate projections have one row block
  per head);
- the sLSTM block: the project builds an sLSTM at block 1 for its `sLSTM` model class
  (`model_class` in the json) and none otherwise; the weights show which blocks are sLSTM blocks,
  and the two must agree;
- the sLSTM layout: the project hard-codes xlstm's `cuda` backend, so a checkpoint's sLSTM
  `_recurrent_kernel_` and `_bias_` are in that backend's internal layout;
- the vocabulary: the model has `vocab_size` rows, more than `token2label` names; the rows without
  a token keep their ids and get placeholder tokens that are never sampled.

The converted tokenizer encodes a SMILES to the project's ids: its pattern splits bracket atoms
into characters (`[C@@H]` -> `[`, `C`, `@`, `@`, `H`, `]`), characters the pattern does not match
are dropped as its `findall` drops them, and a token outside `token2label` becomes `[PAD]` (0),
as the project's data loader encodes it. A sequence starts with `[BEG]`; like every tokenizer of
ours it appends no end token (scoring and training append `[END]`, the eos token), so the project's
`[BEG] ... [END]` is `tokenizer(smiles).input_ids + [eos_token_id]`. Scoring then counts what the
project's `compute_molecule_loglikelihoods` counts: every token after `[BEG]`, `[END]` included, and
no `[PAD]` (an unknown token) among the predictions.
"""

import re
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..domains import SMILES
from ..models import BioXLSTMConfig, BioXLSTMForCausalLM
from ..models.configuration_bioxlstm import block_types_with_slstm_at
from .common import ConversionError, Converted, check_keys, load_state, load_torch_weights, read_json, xlstm_block_state

FORMAT = "chem-xlstm"
ARGUMENTS, WEIGHTS = "init_arguments.json", "model.pt"
SOURCE = "Chem-xLSTM (ml-jku/Chem-xLSTM)"
# The project hard-codes xlstm's sLSTM `cuda` backend, whose parameter layout its checkpoints hold.
SLSTM_LAYOUT = "cuda"
HOMEPAGE = "https://github.com/ml-jku/Chem-xLSTM (weights: https://cloud.ml.jku.at/s/qpAS9iftYCN95by)"
LICENSE = "apache-2.0"

PAD, BEGIN, END = "[PAD]", "[BEG]", "[END]"
# The project's SMILES segmentation with square brackets as tokens of their own (its default).
# Alternatives are tried in order, so the two-letter elements come before the one-letter ones; Cs
# only counts between brackets (else it is aliphatic C and aromatic s); a backslash bond matches
# only doubled, so a single one is dropped.
_TWO_LETTER_ELEMENTS = (
    "Si Xe Ba Rb Ra Sr Dy Li Kr Bi Mn He Am Pu Cm Pm Ne Th Ni Pr Fe Lu Pa Fm Tm Tb Er Be Al Gd Eu te "
    "As Pt Lr Sm Ca La Ti Te Ac Cf Rf Na Cu Au Nd Ag Se se Zn Mg Br Cl Pb Sb"
).split()
TOKEN_PATTERN = (
    r"\[|\]|(?<=\[)Cs(?=\])|" + "|".join(_TWO_LETTER_ELEMENTS)
    + r"|[UVKCBHNOSPFIbcnosp]|[()\.=#\-+]|\\\\|[/:~@?>*$]|%\d{2}|\d"
)  # fmt: skip
_SLSTM_CLASS, _MLSTM_CLASS = "sLSTMModel", "xLSTMModel"
# The project's xLSTM configuration (`chemxlstm/model.py`): only these vary between its models.
_FIXED = dict(
    proj_factor=2.0, ffn_proj_factor=1.3, ffn_activation="gelu", bias=False, proj_round_multiple=64,
    add_post_blocks_norm=True, embedding_dropout=False, tie_word_embeddings=False, dropout=0.0,
)  # fmt: skip


def matches(source: Path) -> bool:
    """A directory holding `model.pt` and an `init_arguments.json` with the project's vocabulary."""
    source = Path(source)
    if not (source / ARGUMENTS).is_file() or not (source / WEIGHTS).is_file():
        return False
    try:
        arguments = read_json(source / ARGUMENTS)
    except ConversionError:
        return False
    return isinstance(arguments.get("token2label"), dict) and "model_dim" in arguments


def _block_indices(state: dict) -> list[int]:
    found = set()
    for name in state:
        match = re.match(r"model\.xlstm_block_stack\.blocks\.(\d+)\.", name)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def _shape(state: dict, name: str, path: Path, dims: int) -> tuple[int, ...]:
    if name not in state:
        raise ConversionError(f"{path}: missing key {name}; not the weights of a Chem-xLSTM xLSTM model")
    shape = tuple(state[name].shape)
    if len(shape) != dims:
        raise ConversionError(f"{path}: {name} has shape {shape}, expected {dims} dimensions")
    return shape


def config_from_checkpoint(arguments: dict, state: dict, arguments_path: Path, weights: Path) -> BioXLSTMConfig:
    """Our config from the json and the shapes of the weights (see the module docstring)."""
    model_class = str(arguments.get("model_class", ""))
    if _SLSTM_CLASS not in model_class and _MLSTM_CLASS not in model_class:
        raise ConversionError(
            f"{arguments_path}: model_class {model_class or '(none)'!r} is not a Chem-xLSTM xLSTM model "
            f"(only {_MLSTM_CLASS} and {_SLSTM_CLASS} are xLSTM models; S4, LSTM, GPT, Mamba and Llama are not)"
        )
    blocks = _block_indices(state)
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError(f"{weights}: no consecutive xlstm blocks under model.xlstm_block_stack.blocks")
    stack = "model.xlstm_block_stack.blocks."
    slstm_layers = [i for i in blocks if f"{stack}{i}.xlstm.slstm_cell._recurrent_kernel_" in state]
    expected_slstm = [1] if _SLSTM_CLASS in model_class else []
    if slstm_layers != expected_slstm:
        raise ConversionError(
            f"{weights}: sLSTM blocks at {slstm_layers} but {model_class} builds them at {expected_slstm}"
        )
    if "n_layers" in arguments and arguments["n_layers"] != len(blocks):
        raise ConversionError(f"{weights}: {len(blocks)} blocks, but {arguments_path} says n_layers {arguments['n_layers']}")
    vocab_size, hidden_size = _shape(state, "model.token_embedding.weight", weights, 2)
    head_rows = _shape(state, "model.lm_head.weight", weights, 2)
    if head_rows != (vocab_size, hidden_size):
        raise ConversionError(
            f"{weights}: model.lm_head.weight {head_rows} does not match model.token_embedding.weight "
            f"{(vocab_size, hidden_size)} (a fine-tuned model with a resized vocabulary is not supported)"
        )
    mlstm = [i for i in blocks if i not in slstm_layers]
    fields = dict(_FIXED)
    if mlstm:
        # `save` writes n_heads 1 whatever was built: the gate projections have one row per head.
        fields["num_heads"] = _shape(state, f"{stack}{mlstm[0]}.xlstm.mlstm_cell.igate.weight", weights, 2)[0]
        qkv = _shape(state, f"{stack}{mlstm[0]}.xlstm.q_proj.weight", weights, 3)
        fields["qkv_proj_blocksize"] = qkv[1]
        fields["conv1d_kernel_size"] = _shape(state, f"{stack}{mlstm[0]}.xlstm.conv1d.conv.weight", weights, 3)[2]
    if slstm_layers:
        i = slstm_layers[0]
        fields["slstm_num_heads"] = _shape(state, f"{stack}{i}.xlstm.igate.weight", weights, 3)[0]
        fields["slstm_conv1d_kernel_size"] = _shape(state, f"{stack}{i}.xlstm.conv1d.conv.weight", weights, 3)[2]
        fields.setdefault("num_heads", fields["slstm_num_heads"])
    token2label = _token2label(arguments, arguments_path)
    if max(token2label.values()) >= vocab_size:
        raise ConversionError(
            f"{arguments_path}: token2label uses ids up to {max(token2label.values())}, "
            f"but {weights} has a vocabulary of {vocab_size}"
        )
    try:
        return BioXLSTMConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=len(blocks),
            block_types=block_types_with_slstm_at(slstm_layers, len(blocks)),
            domain=SMILES.name,
            pad_token_id=token2label[PAD],
            bos_token_id=token2label[BEGIN],
            eos_token_id=token2label[END],
            **fields,
        )
    except (ValueError, TypeError) as error:
        raise ConversionError(f"{arguments_path}: {error}") from None


def _token2label(arguments: dict, path: Path) -> dict[str, int]:
    token2label = arguments.get("token2label")
    if not isinstance(token2label, dict) or not all(isinstance(v, int) for v in token2label.values()):
        raise ConversionError(f"{path}: token2label is not a mapping of tokens to integer ids")
    missing = [token for token in (PAD, BEGIN, END) if token not in token2label]
    if missing:
        raise ConversionError(f"{path}: token2label lacks {', '.join(missing)}")
    if token2label[PAD] != 0:
        raise ConversionError(f"{path}: token2label gives [PAD] the id {token2label[PAD]}; the project always uses 0")
    if len(set(token2label.values())) != len(token2label):
        raise ConversionError(f"{path}: token2label gives two tokens the same id")
    return token2label


def build_tokenizer(token2label: dict[str, int], vocab_size: int) -> PreTrainedTokenizerFast:
    """A tokenizer that encodes SMILES to the project's ids (see the module docstring)."""
    vocab = dict(token2label)
    used = set(vocab.values())
    # Unused model rows keep their ids under tokens no SMILES produces, so every id decodes.
    placeholders = [f"<unused-{i}>" for i in range(vocab_size) if i not in used]
    vocab.update({name: int(name[len("<unused-") : -1]) for name in placeholders})
    # The project's data loader encodes a token outside its vocabulary as [PAD].
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    # `invert=True` keeps the matches and removes what lies between them: the project's `findall`.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="removed", invert=True)
    tokenizer.add_special_tokens([PAD, BEGIN, END, *placeholders])
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN} $A",
        pair=f"{BEGIN} $A {END} $B:1",
        special_tokens=[(BEGIN, token2label[BEGIN]), (END, token2label[END])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BEGIN,
        cls_token=BEGIN,
        eos_token=END,
        pad_token=PAD,
        unk_token=PAD,
        extra_special_tokens=placeholders,
        clean_up_tokenization_spaces=False,
        model_max_length=2**31 - 1,
    )


def _our_state(state: dict, config: BioXLSTMConfig, path: Path) -> dict[str, torch.Tensor]:
    """Their state dict under our names; every key of theirs is used exactly once."""
    stack = "model.xlstm_block_stack."
    top = {"model.token_embedding.weight", "model.lm_head.weight", stack + "post_blocks_norm.weight"}
    check_keys({k: v for k, v in state.items() if not k.startswith(stack + "blocks.")}, top, path)
    ours = {
        "backbone.embeddings.weight": state["model.token_embedding.weight"],
        "lm_head.weight": state["model.lm_head.weight"],
        "backbone.post_blocks_norm.weight": state[stack + "post_blocks_norm.weight"],
    }
    for i in range(config.num_hidden_layers):
        try:
            block = xlstm_block_state(state, f"{stack}blocks.{i}.", config, i, SLSTM_LAYOUT)
        except (KeyError, ValueError) as error:
            raise ConversionError(f"{path}: block {i}: {error}") from None
        for name, tensor in block.items():
            ours[f"backbone.blocks.{i}.{name}"] = tensor
    return ours


def convert(source: Path) -> Converted:
    source = Path(source)
    arguments_path, weights = source / ARGUMENTS, source / WEIGHTS
    arguments = read_json(arguments_path)
    state = load_torch_weights(weights)
    config = config_from_checkpoint(arguments, state, arguments_path, weights)
    model = BioXLSTMForCausalLM(config)
    load_state(model, _our_state(state, config, weights), weights)
    tokenizer = build_tokenizer(_token2label(arguments, arguments_path), config.vocab_size)
    notes = [
        f"Heads taken from the weights ({config.num_heads}); Chem-xLSTM's init_arguments.json always says n_heads 1.",
        "Tokenizer: Chem-xLSTM's SMILES segmentation (bracket atoms split into characters, unmatched "
        "characters dropped, unknown tokens encoded as [PAD] = 0) and its token ids; [BEG] starts a "
        "sequence, [END] ends it (appended by scoring and training, not by the tokenizer).",
        f"The model has {config.vocab_size} token rows, of which token2label names "
        f"{len(arguments['token2label'])}; the others are `<unused-N>` tokens and are never sampled.",
    ]
    if "slstm" in config.block_types:
        notes.append(
            "sLSTM cell parameters read from the layout of xlstm's cuda backend, which Chem-xLSTM "
            "hard-codes; the input and forget gate projections are swapped back to their roles."
        )
    notes.append("Chem-xLSTM runs the official xlstm 1.0.x (quadratic parallel mLSTM); this model uses its own kernels.")
    return Converted(model=model.eval(), tokenizer=tokenizer, source=SOURCE, homepage=HOMEPAGE, license=LICENSE, notes=notes)
