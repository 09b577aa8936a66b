"""Conversion of a live model of the official `xlstm` package (`xLSTMLMModel`) into
`BioXLSTMForCausalLM`."""


from ..models import BioXLSTMConfig, BioXLSTMForCausalLM
from ..models.configuration_bioxlstm import block_types_with_slstm_at
from .common import xlstm_block_state

_ACTIVATIONS = {"gelu": "gelu", "swish": "swish", "relu": "relu"}


def config_from_xlstm(xlstm_config, **overrides) -> BioXLSTMConfig:
    """Translate an `xLSTMLMModelConfig` into a `BioXLSTMConfig`; raise on features we lack."""
    mlstm = xlstm_config.mlstm_block.mlstm if xlstm_config.mlstm_block is not None else None
    slstm_block = xlstm_config.slstm_block if xlstm_config.slstm_at else None
    fields = dict(
        vocab_size=xlstm_config.vocab_size,
        hidden_size=xlstm_config.embedding_dim,
        num_hidden_layers=xlstm_config.num_blocks,
        block_types=block_types_with_slstm_at(xlstm_config.slstm_at, xlstm_config.num_blocks),
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
    reference_state = stack.state_dict()
    for i, (block, kind) in enumerate(zip(stack.blocks, config.block_types)):
        # A live sLSTM cell keeps its parameters in the layout of its backend.
        layout = block.xlstm.slstm_cell.config.backend if kind == "slstm" else None
        for name, tensor in xlstm_block_state(reference_state, f"blocks.{i}.", config, i, layout).items():
            state[f"backbone.blocks.{i}.{name}"] = tensor
    model.load_state_dict({k: v.detach().clone().float() for k, v in state.items()}, strict=True)
    return model.eval()

