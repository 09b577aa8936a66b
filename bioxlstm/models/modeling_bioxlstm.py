"""Bio-xLSTM models for Hugging Face `transformers`: the block stack and its heads."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import ModelOutput

from .blocks import (
    GatedFeedForward,
    LayerNorm,
    MLSTMLayer,
    SLSTMLayer,
    XLSTMBlock,
    small_init_std,
    wang_init_std,
)
from .configuration_bioxlstm import BioXLSTMConfig
from .positions import rotary_angles, rotation


class BioXLSTMCache:
    """Recurrent state of every block: constant size, whatever the number of tokens seen.

    `states[i]` is block i's state, every tensor batch-first: (C, n, m, conv window) for an mLSTM
    block, and ((h, c, n, m) stacked on dim 1, conv window) for an sLSTM block. `seen_tokens` counts the positions
    consumed, padding included. `sequences_started` (B,) counts, per row, the sequences begun so far
    (tokens with position id 0), which 2-D rotary embeddings (`config.rope_sequence_index`) turn
    with; None for other models.
    """

    def __init__(self, states: list[tuple], seen_tokens: int = 0, sequences_started: torch.Tensor | None = None):
        self.states = states
        self.seen_tokens = seen_tokens
        self.sequences_started = sequences_started

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""

        def select(item):
            if isinstance(item, tuple):
                return tuple(select(x) for x in item)
            return None if item is None else item.index_select(0, beam_idx)

        self.states = [select(state) for state in self.states]
        self.sequences_started = select(self.sequences_started)

    def repeat_interleave(self, repeats: int) -> "BioXLSTMCache":
        """A new cache in which every row is repeated `repeats` times (row i becomes rows
        i*repeats .. i*repeats+repeats-1): a context is read once and many continuations start from it."""

        def repeat(item):
            if isinstance(item, tuple):
                return tuple(repeat(x) for x in item)
            return None if item is None else item.repeat_interleave(repeats, dim=0)

        return BioXLSTMCache([repeat(state) for state in self.states], self.seen_tokens, repeat(self.sequences_started))

    def tensors(self) -> list[torch.Tensor]:
        def flatten(item):
            if isinstance(item, tuple):
                for x in item:
                    yield from flatten(x)
            elif item is not None:
                yield item

        return [t for state in self.states for t in flatten(state)]


@dataclass
class BioXLSTMOutput(ModelOutput):
    """last_hidden_state: (B, S, hidden) after the final norm; hidden_states: the embeddings and
    the output of every block, the last one normed (so `hidden_states[-1] == last_hidden_state`)."""

    last_hidden_state: torch.FloatTensor | None = None
    cache_params: BioXLSTMCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BioXLSTMCausalLMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache_params: BioXLSTMCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class BioXLSTMPreTrainedModel(PreTrainedModel):
    config_class = BioXLSTMConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["XLSTMBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load safetensors weights only: unpickling a checkpoint can run arbitrary code. Pass
        `use_safetensors=False` to accept pickled weights you trust."""
        if kwargs.get("use_safetensors") is not False:
            directory = Path(pretrained_model_name_or_path)
            pickled = sorted(p.name for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in directory.glob(ext))
            if directory.is_dir() and pickled and not list(directory.glob("*.safetensors")):
                raise OSError(
                    f"{directory}: holds only pickled weights ({', '.join(pickled)}); Bio-xLSTM loads "
                    "safetensors only, since unpickling can run arbitrary code. If you trust these files, "
                    "pass use_safetensors=False."
                )
            kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The xLSTM initialisation: small init for input projections, Wang init for output
        projections, closed-ish input gates, forget gates biased open, norms at identity."""
        config = self.config
        dim, depth = config.hidden_size, config.num_hidden_layers
        small, wang = small_init_std(dim), wang_init_std(dim, depth)
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=small)
        elif isinstance(module, LayerNorm):
            init.zeros_(module.weight)
        elif isinstance(module, MLSTMLayer):
            for linear, std in ((module.proj_up, small), (module.proj_down, wang)):
                init.normal_(linear.weight, std=std)
                if linear.bias is not None:
                    init.zeros_(linear.bias)
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                init.normal_(proj.weight, std=small)
                if proj.bias is not None:
                    init.zeros_(proj.bias)
            _init_conv(module.conv1d.conv)
            init.zeros_(module.igate.weight)
            init.normal_(module.igate.bias, std=0.1)
            init.zeros_(module.fgate.weight)
            init.copy_(module.fgate.bias, torch.linspace(3.0, 6.0, module.fgate.bias.numel()))
            init.ones_(module.learnable_skip)
        elif isinstance(module, SLSTMLayer):
            for gate in (module.igate, module.fgate, module.zgate, module.ogate):
                init.normal_(gate.weight, std=small)
            if module.conv1d is not None:
                _init_conv(module.conv1d.conv)
            init.zeros_(module.recurrent_kernel)
            init.copy_(module.bias, _slstm_bias_init(module.bias.shape, module.layer_idx, depth))
        elif isinstance(module, GatedFeedForward):
            init.normal_(module.proj_up.weight, std=small)
            init.normal_(module.proj_down.weight, std=wang)
            for linear in (module.proj_up, module.proj_down):
                if linear.bias is not None:
                    init.zeros_(linear.bias)
        elif isinstance(module, BioXLSTMForCausalLM) and not config.tie_word_embeddings:
            init.normal_(module.lm_head.weight, std=small)


def _init_conv(conv: nn.Conv1d) -> None:
    bound = 1.0 / conv.kernel_size[0] ** 0.5  # PyTorch's default for a depthwise convolution
    init.uniform_(conv.weight, -bound, bound)
    init.uniform_(conv.bias, -bound, bound)


def _slstm_bias_init(shape: torch.Size, layer_idx: int, depth: int) -> torch.Tensor:
    """Forget-gate biases spread over a power law per head (deeper blocks remember longer); the
    other gates start at zero."""
    heads, _, head_dim = shape
    bias = torch.zeros(shape)
    ratio = layer_idx / (depth - 1) if depth > 1 else 0.0
    spread = torch.arange(head_dim) / max(head_dim - 1, 1)
    bias[:, 1, :] = 5.0 - 12.0 * spread ** (0.3 + 1.3 * ratio)
    return bias


class BioXLSTMModel(BioXLSTMPreTrainedModel):
    """Token embedding, the block stack and the final norm."""

    _auto_class = "AutoModel"

    def __init__(self, config: BioXLSTMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.dropout if config.embedding_dropout else 0.0)
        self.blocks = nn.ModuleList(XLSTMBlock(config, i) for i in range(config.num_hidden_layers))
        self.post_blocks_norm = (
            LayerNorm(config.hidden_size, config.norm_eps) if config.add_post_blocks_norm else nn.Identity()
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache_params: BioXLSTMCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        seq_idx: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BioXLSTMOutput | tuple:
        """attention_mask: 1 for real tokens, 0 for padding (left or right). Padding positions leave
        every recurrent state untouched, so a padded batch gives each sequence the result it gets
        alone. Only the last `S` columns are read, so the mask may cover earlier cached tokens.

        seq_idx: (B, S) index of the sequence each token belongs to, for rows that pack several
        sequences (as `transformers.DataCollatorWithFlattening(return_seq_idx=True)` makes them):
        where it changes, every state (mLSTM memory, sLSTM cell, conv window) starts afresh, so
        nothing leaks from one packed sequence into the next.

        position_ids: (B, S) position of every token within its own sequence, read only when
        `config.position_embedding == "rotary"`; by default the positions count on from
        `cache_params.seen_tokens` (the same for every row, so a left-padded batch must pass them,
        as `generate` does from the attention mask)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else (cache_params is not None)

        x = self.embedding_dropout(self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds)
        seq_len = x.shape[1]
        keep = None
        if attention_mask is not None:
            keep = attention_mask[:, -seq_len:].to(device=x.device, dtype=torch.bool)
            if bool(keep.all()):
                keep = None
        reset = None
        if seq_idx is not None:
            seq_idx = seq_idx.to(x.device)
            reset = torch.zeros_like(seq_idx, dtype=torch.bool)
            reset[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
        rotary, sequences_started = None, None
        if self.config.position_embedding == "rotary":
            rotary, sequences_started = self._rotation(position_ids, keep, cache_params, x)
        states = cache_params.states if cache_params is not None else [None] * len(self.blocks)
        new_states = []
        hidden_states = (x,) if output_hidden_states else None
        for block, state in zip(self.blocks, states):
            x, state = block(x, state, keep, reset, rotary)
            new_states.append(state)
            if output_hidden_states:
                hidden_states += (x,)
        x = self.post_blocks_norm(x)
        if output_hidden_states:
            hidden_states = hidden_states[:-1] + (x,)

        cache = None
        if use_cache:
            seen = cache_params.seen_tokens if cache_params is not None else 0
            cache = BioXLSTMCache(new_states, seen + seq_len, sequences_started)
        if not return_dict:
            return tuple(v for v in (x, cache, hidden_states) if v is not None)
        return BioXLSTMOutput(last_hidden_state=x, cache_params=cache, hidden_states=hidden_states)

    def _rotation(
        self,
        position_ids: torch.Tensor | None,
        keep: torch.Tensor | None,
        cache_params: BioXLSTMCache | None,
        x: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """The rotation (cos, sin) of q and k for this call and, for 2-D rotary, the per-row count of
        sequences started once it is done (to carry in the cache)."""
        batch, seq_len = x.shape[:2]
        if position_ids is None:
            seen = cache_params.seen_tokens if cache_params is not None else 0
            position_ids = torch.arange(seen, seen + seq_len, device=x.device).expand(batch, seq_len)
        position_ids = position_ids[:, -seq_len:].to(x.device)
        sequence_index, sequences_started = None, None
        if self.config.rope_sequence_index:
            starts = position_ids == 0
            if keep is not None:  # padding (position 0 under generate's numbering) starts nothing
                starts = starts & keep
            before = None if cache_params is None else cache_params.sequences_started
            before = before if before is not None else torch.zeros(batch, dtype=torch.long, device=x.device)
            started = before[:, None] + starts.long().cumsum(dim=1)
            sequence_index = (started - 1).clamp(min=0)
            sequences_started = started[:, -1]
        head_dim = self.config.mlstm_head_dim
        return rotation(rotary_angles(position_ids, head_dim, self.config.rope_theta, sequence_index)), sequences_started


class BioXLSTMForCausalLM(BioXLSTMPreTrainedModel, GenerationMixin):
    """Next-token language model with recurrent decoding: `generate()` prefills the prompt with
    the chunkwise kernel and then advances a constant-size state one token at a time."""

    _auto_class = "AutoModelForCausalLM"
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: BioXLSTMConfig):
        super().__init__(config)
        self.backbone = BioXLSTMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.backbone.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache_params: BioXLSTMCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> dict:
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache_params=cache_params, attention_mask=attention_mask, use_cache=use_cache, **kwargs
        )
        if cache_params is not None:
            # After the prefill every new token is real: the mask carries no information, and
            # dropping it avoids a host sync per decoding step.
            model_inputs["attention_mask"] = None
        return model_inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache_params: BioXLSTMCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        seq_idx: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BioXLSTMCausalLMOutput | tuple:
        """labels: token ids aligned with input_ids (-100 ignored); the loss is the mean
        next-token cross-entropy (labels are shifted inside)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache_params=cache_params,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            seq_idx=seq_idx,
            position_ids=position_ids,
        )
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if not return_dict:
            output = tuple(v for v in (logits, outputs.cache_params, outputs.hidden_states) if v is not None)
            return (loss, *output) if loss is not None else output
        return BioXLSTMCausalLMOutput(
            loss=loss, logits=logits, cache_params=outputs.cache_params, hidden_states=outputs.hidden_states
        )
