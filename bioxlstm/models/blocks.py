"""The residual block (xLSTM v1 structure) around a sequence mixer of `mixers.MIXERS`, and the
gated feed-forward that mixers asking for one (the sLSTM) get after them.

Module and parameter names and shapes follow the official `xlstm` package's `xLSTMLMModel`, so
its checkpoints convert one to one (see `bioxlstm.convert`). Every block takes an optional
recurrent state and returns its new one, so one code path serves training, prompt prefill and
token-by-token decoding; `keep` (B, S) marks the real (non-padding) positions and `reset` (B, S)
the first position of each sequence packed into a row, where every state starts afresh.
Bidirectional blocks reverse each row within its valid span with `sequence_ops`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .layers import LayerNorm, init_linear, small_init_std, wang_init_std
from .mixers import mixer_class
from .sequence_ops import reversal_index, reverse_positions, valid_positions

ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu, "relu": F.relu}
# How a bidirectional block merges the mixer output on the sequence with the one on its reversal.
DIRECTION_COMBINERS = {"add": torch.add, "mean": lambda forward, backward: (forward + backward) / 2}


class GatedFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.ffn_inner_size
        self.init_stds = small_init_std(config.block_width), wang_init_std(config.block_width, config.num_hidden_layers)
        self.proj_up = nn.Linear(config.block_width, 2 * inner, bias=config.ffn_has_bias)
        self.proj_down = nn.Linear(inner, config.block_width, bias=config.ffn_has_bias)
        self.act_fn = ACTIVATIONS[config.ffn_activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_up(x).chunk(2, dim=-1)
        hidden = self.act_fn(gate)
        # Without autograd in place: a second activation-sized tensor would cost a third of the layer's
        # time on a CPU. With it, not: relu's backward reads its own output.
        hidden = hidden * up if hidden.requires_grad else hidden.mul_(up)
        return self.dropout(self.proj_down(hidden))

    def init_parameters(self) -> None:
        small, wang = self.init_stds
        init_linear(self.proj_up, small)
        init_linear(self.proj_down, wang)


class XLSTMBlock(GradientCheckpointingLayer):
    """Pre-norm residual block around the mixer `config.block_types` names for it (`xlstm`); a mixer
    that asks for one (`Mixer.feed_forward`, the sLSTM) is followed by a gated feed-forward with its
    own pre-norm.

    Bidirectional blocks (`config.bidirectional_mode`): "mixer" runs the same layer (same
    weights) on the normed input and on its reversal within each row's valid span, flips the second
    output back and combines the two with `config.bidirectional_combine` before the residual (the
    feed-forward runs once); "block" does the same with the whole block, residual and feed-forward
    included; "alternating" runs the whole block once, on the reversal in even-numbered blocks.
    Rotary positions are the same in both directions: position t of the reversal turns by t. They
    have no recurrent state to carry, so `state` must be None.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        mixer = mixer_class(config.block_types[layer_idx])
        self.combine_directions = DIRECTION_COMBINERS[config.bidirectional_combine] if config.bidirectional else None
        self.bidirectional_mode = config.bidirectional_mode
        self.reversed_input = config.bidirectional and config.bidirectional_mode == "alternating" and layer_idx % 2 == 0
        self.xlstm_norm = LayerNorm(config.block_width, config.norm_eps)
        self.xlstm = mixer(config, layer_idx)
        if mixer.feed_forward:
            self.ffn_norm = LayerNorm(config.block_width, config.norm_eps)
            self.ffn = GatedFeedForward(config)
        else:
            self.ffn = None

    def forward(
        self,
        x: torch.Tensor,
        state=None,
        keep: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        overwrite_state: bool = False,
        rc_rows: torch.Tensor | None = None,
    ):
        """rc_rows: (B,) bool, the rows that hold the reverse-complement strand view (set by
        `rc.ReverseComplementShared`), for mixers that treat them differently."""
        if self.combine_directions is None:
            return self._body(x, state, keep, reset, rotary, overwrite_state, rc_rows)
        if state is not None:
            raise ValueError("a bidirectional block has no recurrent state to continue from")
        if reset is not None:
            raise ValueError("a bidirectional block cannot read packed rows (seq_idx); pad the sequences instead")
        index = reversal_index(valid_positions(keep, x))
        if self.bidirectional_mode == "alternating":
            if not self.reversed_input:
                return self._body(x, None, keep, None, rotary, False, rc_rows)
            y, _ = self._body(reverse_positions(x, index), None, keep, None, rotary, False, rc_rows)
            return reverse_positions(y, index), None
        both_keep = None if keep is None else keep.repeat(2, 1)
        both_rotary = None if rotary is None else tuple(t.repeat(2, *(1,) * (t.dim() - 1)) for t in rotary)
        both_rows = None if rc_rows is None else rc_rows.repeat(2)
        if self.bidirectional_mode == "block":
            both, _ = self._body(torch.cat([x, reverse_positions(x, index)]), None, both_keep, None, both_rotary, False, both_rows)
            forward, backward = both.chunk(2)
            return self.combine_directions(forward, reverse_positions(backward, index)), None
        normed = self.xlstm_norm(x)
        both, _ = self.xlstm(torch.cat([normed, reverse_positions(normed, index)]), None, both_keep, None, both_rotary, False, both_rows)
        forward, backward = both.chunk(2)
        return self._feed_forward(x + self.combine_directions(forward, reverse_positions(backward, index))), None

    @torch.no_grad()
    def zero_residual_(self) -> None:
        """Make the block add exactly zero to its input, whatever the input (function-preserving
        growth): the mixer's output and the feed-forward's output projection become zero."""
        self.xlstm.zero_output_()
        if self.ffn is not None:
            self.ffn.proj_down.weight.zero_()
            if self.ffn.proj_down.bias is not None:
                self.ffn.proj_down.bias.zero_()

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.ffn is None else x + self.ffn(self.ffn_norm(x))

    def _body(self, x, state, keep, reset, rotary, overwrite_state, rc_rows):
        """The block in one direction: residual mixer, then the residual feed-forward."""
        y, state = self.xlstm(self.xlstm_norm(x), state, keep, reset, rotary, overwrite_state, rc_rows)
        return self._feed_forward(x + y), state

    def stages(self, x, state=None, keep=None, reset=None, rotary=None, overwrite_state=False):
        """`forward` of a causal block as a generator of the work its mixer shares with other blocks
        (`Mixer.stages`), for a model that advances several blocks at once."""
        y, state = yield from self.xlstm.stages(self.xlstm_norm(x), state, keep, reset, rotary, overwrite_state)
        return self._feed_forward(x + y), state
