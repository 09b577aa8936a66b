"""Conversion of checkpoints of the official `xlstm` package (`xLSTMLMModel`, the format of the
Chem-xLSTM and DNA-xLSTM checkpoints) into `BioXLSTMForCausalLM`."""

import torch

from .models import BioXLSTMConfig, BioXLSTMForCausalLM

_ACTIVATIONS = {"gelu": "gelu", "swish": "swish", "relu": "relu"}


def config_from_xlstm(xlstm_config, **overrides) -> BioXLSTMConfig:
    """Translate an `xLSTMLMModelConfig` into a `BioXLSTMConfig`; raise on features we lack."""
    mlstm = xlstm_config.mlstm_block.mlstm if xlstm_config.mlstm_block is not None else None
    slstm_block = xlstm_config.slstm_block if xlstm_config.slstm_at else None
    fields = dict(
        vocab_size=xlstm_config.vocab_size,
        hidden_size=xlstm_config.embedding_dim,
        num_hidden_layers=xlstm_config.num_blocks,
        slstm_layers=list(xlstm_config.slstm_at),
        dropout=xlstm_config.dropout,
        bias=xlstm_config.bias,
        add_post_blocks_norm=xlstm_config.add_post_blocks_norm,
        embedding_dropout=xlstm_config.add_embedding_dropout,
        tie_word_embeddings=xlstm_config.tie_weights,
    )
    round_multiples = set()
    if mlstm is not None:
        if not mlstm.round_proj_up_dim_up:
            raise ValueError("xlstm mLSTM configs that round the up-projection down are not supported")
        round_multiples.add(mlstm.round_proj_up_to_multiple_of)
        fields.update(
            num_heads=mlstm.num_heads,
            proj_factor=mlstm.proj_factor,
            conv1d_kernel_size=mlstm.conv1d_kernel_size,
            qkv_proj_blocksize=mlstm.qkv_proj_blocksize,
        )
    if slstm_block is not None:
        slstm, ffn = slstm_block.slstm, slstm_block.feedforward
        if slstm.function != "slstm":
            raise ValueError(f"xlstm sLSTM function {slstm.function!r} is not supported (only 'slstm')")
        if ffn is None or ffn.ff_type != "ffn_gated" or ffn.act_fn not in _ACTIVATIONS:
            raise ValueError("xlstm sLSTM blocks need a gated feed-forward with gelu, swish or relu")
        if not ffn.round_proj_up_dim_up:
            raise ValueError("xlstm feed-forward configs that round the up-projection down are not supported")
        round_multiples.add(ffn.round_proj_up_to_multiple_of)
        fields.update(
            slstm_num_heads=slstm.num_heads,
            slstm_conv1d_kernel_size=slstm.conv1d_kernel_size,
            ffn_proj_factor=ffn.proj_factor,
            ffn_activation=_ACTIVATIONS[ffn.act_fn],
        )
        if mlstm is None:
            fields.update(num_heads=slstm.num_heads, conv1d_kernel_size=slstm.conv1d_kernel_size)
    if len(round_multiples) > 1:
        raise ValueError(f"mLSTM and feed-forward round their widths differently: {sorted(round_multiples)}")
    if round_multiples:
        fields["proj_round_multiple"] = round_multiples.pop()
    fields.update(overrides)
    return BioXLSTMConfig(**fields)


def _block_state(block, is_slstm: bool) -> dict[str, torch.Tensor]:
    """One block's weights under our names; the only changes are the sLSTM cell's parameters
    (read in the backend-independent layout) and the reference's swapped i/f gate projections."""
    state = {k: v for k, v in block.state_dict().items() if not k.startswith("xlstm.slstm_cell.")}
    if is_slstm:
        cell = block.xlstm.slstm_cell
        state["xlstm.recurrent_kernel"] = cell._recurrent_kernel_int2ext(cell._recurrent_kernel_.data)
        state["xlstm.bias"] = cell._bias_int2ext(cell._bias_.data)
        # The reference computes the input gate with `fgate` and the forget gate with `igate`.
        state["xlstm.igate.weight"], state["xlstm.fgate.weight"] = (
            state["xlstm.fgate.weight"],
            state["xlstm.igate.weight"],
        )
    else:
        for name in ("igate.weight", "igate.bias", "fgate.weight", "fgate.bias", "outnorm.weight"):
            state[f"xlstm.{name}"] = state.pop(f"xlstm.mlstm_cell.{name}")
    return state


def from_xlstm(lm_model, **config_overrides) -> BioXLSTMForCausalLM:
    """Convert an `xlstm.xLSTMLMModel` into a `BioXLSTMForCausalLM` with identical outputs."""
    config = config_from_xlstm(lm_model.config, **config_overrides)
    model = BioXLSTMForCausalLM(config)
    state = {
        "backbone.embeddings.weight": lm_model.token_embedding.weight.data,
        "lm_head.weight": lm_model.lm_head.weight.data,
    }
    stack = lm_model.xlstm_block_stack
    if config.add_post_blocks_norm:
        state["backbone.post_blocks_norm.weight"] = stack.post_blocks_norm.weight.data
    for i, block in enumerate(stack.blocks):
        for name, tensor in _block_state(block, config.is_slstm(i)).items():
            state[f"backbone.blocks.{i}.{name}"] = tensor
    model.load_state_dict({k: v.detach().clone().float() for k, v in state.items()}, strict=True)
    return model.eval()
