"""Bio-xLSTM models for Hugging Face `transformers`: the block stack and its heads."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput, TokenClassifierOutput
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import ModelOutput, can_return_tuple
# transformers 5.24 renamed every model's cache argument from cache_params to cache; the old name still works.
from transformers.utils.deprecation import deprecate_kwarg

from .blocks import GatedFeedForward, XLSTMBlock
from .configuration_bioxlstm import BioXLSTMConfig
from .kernels import inference_segment_length, resolve_kernel
from .layers import LayerNorm, small_init_std
from .mixers import Mixer, complete_together
from .positions import rotary_angles, rotation
from .rc import ReverseComplementEmbedding, ReverseComplementLMHead, ReverseComplementShared, strand_average, strand_shared
from .sequence_ops import reversal_index, reverse_complement, reverse_positions, valid_positions


NO_ROLLBACK = (
    "a recurrent state cannot be cropped back to an earlier token, which assisted (speculative) decoding "
    "needs; generate without assistant_model or prompt_lookup_num_tokens"
)


class BioXLSTMCache:
    """Recurrent state of every block: constant size, whatever the number of tokens seen.

    `states[i]` is block i's state, every tensor batch-first: (C, n, m, conv window) for an mLSTM
    block, and ((h, c, n, m) stacked on dim 1, conv window) for an sLSTM block. `seen_tokens` counts the positions
    consumed, padding included. `sequences_started` (B,) counts, per row, the sequences begun so far
    (tokens with position id 0), which 2-D rotary embeddings (`config.rope_sequence_index`) turn
    with; None for other models. `next_positions` (B,) is, per row, the position id (before any
    clamping) the next token gets unless it restarts the numbering, for models that number positions
    themselves (`config.position_restart_token_id`); None for other models.
    """

    # The cache protocol of transformers' `generate` (5.24 onwards), which reads these of every cache:
    # a recurrent state is not one of its static (compilable) caches, and it cannot be cropped back
    # to an earlier token, since nothing of the tokens it has read is kept but their sum.
    is_compileable = False
    is_croppable = False

    @property
    def is_linear(self) -> list[bool]:
        return [True] * len(self.states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of positions this state has read (padding included). `generate` uses it to
        cut a prompt that repeats the tokens already read down to the new ones; a caller that
        passes only the new tokens gives an attention mask over all of them, read and new."""
        return self.seen_tokens

    def crop(self, max_length: int) -> None:
        raise ValueError(NO_ROLLBACK)

    def activate_past_recording(self, **kwargs) -> None:
        raise ValueError(NO_ROLLBACK)

    def __init__(
        self,
        states: list[tuple],
        seen_tokens: int = 0,
        sequences_started: torch.Tensor | None = None,
        next_positions: torch.Tensor | None = None,
    ):
        self.states = states
        self.seen_tokens = seen_tokens
        self.sequences_started = sequences_started
        self.next_positions = next_positions
        # True only for a cache that `generate` made and holds alone: its next step may then write the
        # new state into these tensors. Every other cache is left unchanged by a forward pass.
        self.owned_by_generation = False

    def _with_rows(self, rows) -> tuple[list[tuple], torch.Tensor | None, torch.Tensor | None]:
        """The states, sequence counts and next positions with `rows` (a function of a batch-first
        tensor) applied."""
        return (
            [_map_tensors(state, rows) for state in self.states],
            _map_tensors(self.sequences_started, rows),
            _map_tensors(self.next_positions, rows),
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""
        self.states, self.sequences_started, self.next_positions = self._with_rows(
            lambda t: t.index_select(0, beam_idx)
        )

    def repeat_interleave(self, repeats: int) -> "BioXLSTMCache":
        """A new cache in which every row is repeated `repeats` times (row i becomes rows
        i*repeats .. i*repeats+repeats-1, the layout of `num_return_sequences`): a context is read
        once and many continuations start from it. This cache is left unchanged."""
        states, sequences_started, next_positions = self._with_rows(lambda t: t.repeat_interleave(repeats, dim=0))
        return BioXLSTMCache(states, self.seen_tokens, sequences_started, next_positions)

    def tensors(self) -> list[torch.Tensor]:
        def flatten(item):
            if isinstance(item, tuple):
                for x in item:
                    yield from flatten(x)
            elif item is not None:
                yield item

        return [t for state in self.states for t in flatten(state)]


def _map_tensors(item, fn):
    """Apply `fn` to every tensor of a nested tuple (None stays None)."""
    if isinstance(item, tuple):
        return tuple(_map_tensors(x, fn) for x in item)
    return None if item is None else fn(item)


@dataclass
class BioXLSTMOutput(ModelOutput):
    """last_hidden_state: (B, S, hidden) after the final norm; hidden_states: the embeddings and
    the output of every block, the last one normed (so `hidden_states[-1] == last_hidden_state`)."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: BioXLSTMCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BioXLSTMCausalLMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: BioXLSTMCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class BioXLSTMPreTrainedModel(PreTrainedModel):
    config_class = BioXLSTMConfig
    # The Hub task of each head (`export` writes it into the model card).
    pipeline_tag: str
    base_model_prefix = "backbone"
    _no_split_modules = ["XLSTMBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    # The token embedding lives in the backbone (`base_model`, the model itself for BioXLSTMModel);
    # the output layer, where there is one, is `lm_head`, which transformers' defaults handle.
    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embeddings = value

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
                    "safetensors only, since unpickling can run arbitrary code. A published Prot-, DNA- or "
                    "Chem-xLSTM checkpoint: `bioxlstm convert`; other files you trust: load them in Python "
                    "with use_safetensors=False and save_pretrained them as safetensors."
                )
            kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The xLSTM initialisation: every mixer and feed-forward initialises its own parameters
        (small init for input projections, Wang init for output projections, gates as each cell
        wants them); embeddings and heads get the small init, norms start at identity."""
        config = self.config
        small = small_init_std(config.block_width)
        if isinstance(module, (ReverseComplementEmbedding, ReverseComplementLMHead)):
            init.copy_(module.complement, torch.tensor(config.complement_map))
        if isinstance(module, (Mixer, GatedFeedForward)):
            module.init_parameters()
        elif isinstance(module, (ReverseComplementLMHead, nn.Embedding, LanguageModelHead)):
            init.normal_(module.weight, std=small)
        elif isinstance(module, LayerNorm):
            init.zeros_(module.weight)
        elif module is getattr(self, "classifier", None):
            # A new head on a pretrained backbone (`from_pretrained(..., num_labels=2)`) is created
            # empty and filled only here: without this branch it would start as uninitialised memory.
            init.normal_(module.weight, std=small)
            init.zeros_(module.bias)


class LanguageModelHead(nn.Linear):
    """The output layer over the vocabulary (its own class so that initialisation can find it)."""


def _valid_mask(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """The last `seq_len` columns of the attention mask as bool, or None where nothing is padding."""
    if attention_mask is None:
        return None
    if attention_mask.shape[-1] < seq_len:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but the input has {seq_len}")
    keep = attention_mask[:, -seq_len:].to(dtype=torch.bool)
    return None if bool(keep.all()) else keep


def _sequence_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, S) bool, True where a packed row's sequence index changes."""
    reset = torch.zeros_like(seq_idx, dtype=torch.bool)
    reset[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return reset


def conjoined(
    model_call: Callable,
    input_ids: torch.Tensor,
    keep: torch.Tensor | None,
    complement_map: list[int],
    delimiter_ids: list[int] = (),
):
    """Run `model_call(ids, keep)` once on the sequences and their reverse complements (one batch of
    2B rows) and average the two strands: every tensor it returns (2B, S, ...), alone or in nested
    tuples, becomes the mean of the forward rows and the reverse-complement rows with their bases
    reversed back (None stays None). Delimiters (`delimiter_ids`, e.g. `<cls>`, `<eos>`) and padding
    stay where they are, as a tokenizer writes them around either strand: the result for the tokens
    of rc(x) is thus that for the tokens of x with their bases reversed, which makes any per-token
    or pooled output strand-invariant."""
    keep = None if keep is None else keep.to(input_ids.device)
    bases = valid_positions(keep, input_ids)
    if delimiter_ids:
        bases = bases & ~torch.isin(input_ids, torch.tensor(list(delimiter_ids), device=input_ids.device))
    index = reversal_index(bases)
    complement = torch.tensor(complement_map, device=input_ids.device)
    both_strands = torch.cat([input_ids, reverse_complement(input_ids, complement, index)])
    outputs = model_call(both_strands, None if keep is None else keep.repeat(2, 1))

    def average(both: torch.Tensor) -> torch.Tensor:
        forward_strand, rc_strand = both.chunk(2)
        return (forward_strand + reverse_positions(rc_strand, index)) / 2

    return _map_tensors(outputs, average)


class BioXLSTMModel(BioXLSTMPreTrainedModel):
    """Token embedding, the block stack and the final norm.

    With `config.rcps` the embedding, every block and the final norm are the reverse-complement
    equivariant versions of `rc.py`; with `config.conjoin` the outputs are averaged over both
    strands (see `BioXLSTMConfig`).
    """

    _auto_class = "AutoModel"
    pipeline_tag = "feature-extraction"

    def __init__(self, config: BioXLSTMConfig):
        super().__init__(config)
        if config.rcps:
            self.embeddings = ReverseComplementEmbedding(config.complement_map, config.block_width)
            self.blocks = nn.ModuleList(
                ReverseComplementShared(XLSTMBlock(config, i)) for i in range(config.num_hidden_layers)
            )
        else:
            self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
            self.blocks = nn.ModuleList(XLSTMBlock(config, i) for i in range(config.num_hidden_layers))
        self.embedding_dropout = nn.Dropout(config.dropout if config.embedding_dropout else 0.0)
        self.post_blocks_norm = (
            LayerNorm(config.block_width, config.norm_eps) if config.add_post_blocks_norm else nn.Identity()
        )
        self.gradient_checkpointing = False
        self.post_init()

    @can_return_tuple
    @deprecate_kwarg("cache_params", "6.0.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: BioXLSTMCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        seq_idx: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BioXLSTMOutput:
        """attention_mask: 1 for real tokens, 0 for padding (left or right). Padding positions leave
        every recurrent state untouched, so a padded batch gives each sequence the result it gets
        alone. Only the last `S` columns are read, so the mask may cover earlier cached tokens.

        seq_idx: (B, S) index of the sequence each token belongs to, for rows that pack several
        sequences (as `transformers.DataCollatorWithFlattening(return_seq_idx=True)` makes them):
        where it changes, every state (mLSTM memory, sLSTM cell, conv window) starts afresh, so
        nothing leaks from one packed sequence into the next.

        position_ids: (B, S) position of every token within its own sequence, read only when
        `config.position_embedding == "rotary"`; by default the positions count on from
        `cache.seen_tokens` (the same for every row, so a left-padded batch must pass them,
        as `generate` does from the attention mask)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (cache is not None)
        if use_cache or cache is not None:
            self._check_recurrent_decoding()
        batch, seq_len = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        keep = _valid_mask(attention_mask, seq_len)
        reset = None if seq_idx is None else _sequence_starts(seq_idx)
        states = cache.states if cache is not None else [None] * len(self.blocks)
        rotary, sequences_started, next_positions = None, None, None
        if self.config.position_embedding == "rotary":
            rotary, sequences_started, next_positions = self._rotary_angles(
                position_ids, keep, cache, batch, seq_len, input_ids, reset
            )
        if self.config.conjoin:
            if reset is not None:
                raise ValueError("conjoin cannot read packed rows (seq_idx); pad the sequences instead")
            if input_ids is None:
                raise ValueError("conjoin needs input_ids: the reverse complement is taken on token ids")
            # Each strand is read from its own start, so both take the same positions; a conjoined
            # model keeps no cache.
            both_rotary = None if rotary is None else tuple(t.repeat(2, *(1,) * (t.dim() - 1)) for t in rotary)
            x, hidden_states = conjoined(
                lambda ids, mask: self._run(ids, None, mask, None, both_rotary, states, output_hidden_states)[::2],
                input_ids, keep, self.config.complement_map,
                self.config.strand_delimiters,
            )
            new_states = sequences_started = next_positions = None
        else:
            x, new_states, hidden_states = self._run(
                input_ids, inputs_embeds, keep, reset, rotary, states, output_hidden_states,
                overwrite_state=cache is not None and cache.owned_by_generation,
            )
        new_cache = None
        if use_cache:
            seen = cache.seen_tokens if cache is not None else 0
            new_cache = BioXLSTMCache(new_states, seen + seq_len, sequences_started, next_positions)
        return BioXLSTMOutput(last_hidden_state=x, cache=new_cache, hidden_states=hidden_states)

    def _check_recurrent_decoding(self) -> None:
        if self.config.non_causal_settings:
            raise ValueError(
                f"a model with {' and '.join(self.config.non_causal_settings)} sees every position of the "
                "sequence at once and has no recurrent cache; call it without use_cache or cache"
            )

    def _segment_length(self, x: torch.Tensor) -> int:
        """How many tokens the blocks read at a time: all of them, except in causal inference on a
        kernel that is faster in segments (`kernels.inference_segment_length`)."""
        seq_len = x.shape[1]
        if torch.is_grad_enabled() or self.config.non_causal_settings:
            return seq_len
        segment = inference_segment_length(resolve_kernel(self.config.kernel, x.device), x.shape[0])
        return min(seq_len, segment or seq_len)

    def _run(self, input_ids, inputs_embeds, keep, reset, rotary, states, output_hidden_states, overwrite_state=False):
        x = self.embedding_dropout(self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds)
        if keep is not None:
            keep = keep.to(x.device)
        if reset is not None:
            reset = reset.to(x.device)
        states = list(states)
        segment = self._segment_length(x)
        parts = [slice(start, start + segment) for start in range(0, x.shape[1], segment)]
        if len(parts) > 1 and keep is None and reset is None and self._shares_work_across_blocks():
            pieces = self._run_diagonally(x, parts, rotary, states, overwrite_state, output_hidden_states)
        else:
            pieces = []  # per segment, the output of every layer (embeddings first) if asked for, else the last
            for part in parts:
                h = x[:, part]
                layer_outputs = [h]
                for index, block in enumerate(self.blocks):
                    h, states[index] = block(
                        h,
                        states[index],
                        None if keep is None else keep[:, part],
                        None if reset is None else reset[:, part],
                        None if rotary is None else tuple(t[:, :, part] for t in rotary),
                        overwrite_state=overwrite_state,
                    )
                    if output_hidden_states:
                        layer_outputs.append(h)
                pieces.append(layer_outputs if output_hidden_states else [h])
        layers = [torch.cat(layer, dim=1) if len(layer) > 1 else layer[0] for layer in zip(*pieces)]
        x = layers[-1]
        hidden_states = tuple(layers) if output_hidden_states else None
        if self.config.rcps:
            x = strand_shared(self.post_blocks_norm, x, reversal_index(valid_positions(keep, x)))
        else:
            x = self.post_blocks_norm(x)
        if output_hidden_states:
            hidden_states = hidden_states[:-1] + (x,)
        return x, states, hidden_states

    def _shares_work_across_blocks(self) -> bool:
        """Whether several blocks' mixers yield work they can run together (`Mixer.stages`: the sLSTM
        recurrences), and no hook waits on a block's or mixer's call, which `stages` does not make."""
        sharing = [type(block.xlstm).stages is not Mixer.stages for block in self.blocks if isinstance(block, XLSTMBlock)]
        hooked = any(
            module._forward_hooks or module._forward_pre_hooks
            for block in self.blocks
            for module in (block, getattr(block, "xlstm", block))
        )  # fmt: skip
        return len(sharing) == len(self.blocks) and sum(sharing) > 1 and not hooked

    def _run_diagonally(self, x, parts, rotary, states, overwrite_state, output_hidden_states) -> list[list[torch.Tensor]]:
        """The segment loop of `_run` (unmasked causal inference) in another order, with the same
        result: block i reads segment g once block i - 1 has read it and block i has read segment
        g - 1, so the blocks of one diagonal (i + g the same) wait on nothing from each other, and
        the work their mixers share (the sLSTM recurrences) runs as one (`complete_together`): at
        batch 8, 4 sLSTM blocks and 4 segments, 7 scans of 256 steps instead of 16."""
        layer_outputs = [[x[:, part]] for part in parts]  # per segment, the layers' outputs so far (or the last)
        for diagonal in range(len(self.blocks) + len(parts) - 1):
            on_diagonal = [(index, diagonal - index) for index in range(len(self.blocks)) if 0 <= diagonal - index < len(parts)]
            results = complete_together([
                self.blocks[index].stages(
                    layer_outputs[segment][-1], states[index],
                    rotary=None if rotary is None else tuple(t[:, :, parts[segment]] for t in rotary),
                    overwrite_state=overwrite_state,
                )
                for index, segment in on_diagonal
            ])  # fmt: skip
            for (index, segment), (h, states[index]) in zip(on_diagonal, results):
                layer_outputs[segment] = [*layer_outputs[segment], h] if output_hidden_states else [h]
        return layer_outputs

    def _rotary_angles(
        self,
        position_ids: torch.Tensor | None,
        keep: torch.Tensor | None,
        cache: BioXLSTMCache | None,
        batch: int,
        seq_len: int,
        input_ids: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """The rotation (cos, sin) of q and k for this call and, to carry in the cache once it is
        done: for 2-D rotary, the per-row count of sequences started; for models that number
        positions themselves (`config.position_restart_token_id`), the per-row next position.
        Without `position_ids`, each sequence packed into a row (`reset`, from `seq_idx`) is numbered
        from 0, as it is when read alone."""
        device = self.embeddings.weight.device
        restart_id = self.config.position_restart_token_id
        next_positions = None
        if position_ids is None and (restart_id is not None or reset is not None):
            position_ids, next_positions = self._restarting_positions(input_ids, keep, cache, batch, seq_len, device, reset)
            if restart_id is None:
                next_positions = None  # only models that number positions themselves carry them on
        elif position_ids is None:
            seen = cache.seen_tokens if cache is not None else 0
            position_ids = torch.arange(seen, seen + seq_len, device=device).expand(batch, seq_len)
        position_ids = position_ids[:, -seq_len:].to(device)
        if restart_id is not None and next_positions is None:
            # Positions given by the caller: a later call without them counts on from the last one.
            next_positions = position_ids[:, -1] + 1
        if self.config.max_position_id is not None:
            position_ids = position_ids.clamp(max=self.config.max_position_id)
        sequence_index, sequences_started = None, None
        if self.config.rope_sequence_index:
            starts = position_ids == 0
            if keep is not None:  # padding (position 0 under generate's numbering) starts nothing
                starts = starts & keep.to(device)
            before = None if cache is None else cache.sequences_started
            before = before if before is not None else torch.zeros(batch, dtype=torch.long, device=device)
            started = before[:, None] + starts.long().cumsum(dim=1)
            sequence_index = (started - 1).clamp(min=0)
            sequences_started = started[:, -1]
        width = self.config.rotary_width
        angles = rotary_angles(
            position_ids, width, self.config.rope_theta, sequence_index, self.config.rope_reciprocal_frequencies
        )
        return rotation(angles), sequences_started, next_positions

    def _restarting_positions(
        self,
        input_ids: torch.Tensor | None,
        keep: torch.Tensor | None,
        cache: BioXLSTMCache | None,
        batch: int,
        seq_len: int,
        device: torch.device,
        reset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids numbered afresh (0, counting on after it; padding does not count) at every
        token with `config.position_restart_token_id` and at every start of a packed sequence
        (`reset`), continuing the numbering carried in the cache, and the next position to carry on with."""
        carried = None if cache is None else cache.next_positions
        if carried is None:
            carried = torch.full((batch,), cache.seen_tokens if cache is not None else 0, dtype=torch.long)
        carried = carried.to(device)
        counted = torch.ones(batch, seq_len, dtype=torch.long, device=device) if keep is None else keep.to(device).long()
        count = counted.cumsum(dim=1)  # real tokens of this call up to each position, inclusive
        restarts = torch.zeros(batch, seq_len, dtype=torch.bool, device=device) if reset is None else reset.to(device)
        if input_ids is not None and self.config.position_restart_token_id is not None:
            restarts = restarts | (input_ids.to(device) == self.config.position_restart_token_id)
        restarts = restarts & counted.bool()
        count_at_restart = torch.where(restarts, count, 0).cummax(dim=1).values  # 0: none yet in this call
        positions = torch.where(count_at_restart > 0, count - count_at_restart, carried[:, None] + count - 1)
        # Padding before the first real token of a row would be numbered -1; it is never read.
        return positions.clamp(min=0), positions[:, -1] + 1


class BioXLSTMForCausalLM(BioXLSTMPreTrainedModel, GenerationMixin):
    """Next-token language model with recurrent decoding: `generate()` prefills the prompt with
    the chunkwise kernel and then advances a constant-size state one token at a time."""

    _auto_class = "AutoModelForCausalLM"
    pipeline_tag = "text-generation"
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: BioXLSTMConfig):
        if config.non_causal_settings:
            raise ValueError(
                f"BioXLSTMForCausalLM needs a causal model, but {', '.join(config.non_causal_settings)} lets every "
                "position see the future; use BioXLSTMForMaskedLM, or for a strand-symmetric causal DNA model "
                "train with reverse-complement augmentation and score with bioxlstm.tasks.likelihood"
            )
        super().__init__(config)
        self.backbone = BioXLSTMModel(config)
        self.lm_head = LanguageModelHead(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def generate(self, *args, **kwargs):
        # transformers refuses it in its own words, which differ from version to version.
        if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens"):
            raise ValueError(NO_ROLLBACK)
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: BioXLSTMCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        generated_position_offset: int = 0,
        **kwargs,
    ) -> dict:
        """generated_position_offset: added to the position id of every generated token (with
        `position_ids` given to `generate`, which numbers new tokens on from the prompt's last). -1 for
        fill-in-the-middle, where a span's first residue shares the position of its sentinel.

        A cache passed to `generate` follows transformers' protocol: the prompt is either the whole
        sequence, whose first `cache.get_seq_length()` tokens the cache has read (an attention mask,
        if any, as long as the prompt), or only the new tokens (a mask over the read and the new ones)."""
        first_call_on_given_cache = cache is not None and not cache.owned_by_generation
        if first_call_on_given_cache and kwargs.get("inputs_embeds") is None:
            # transformers 5.25 cuts the prompt itself, 5.24 never for a recurrent cache: decided here, the
            # same on both. A prompt no longer than what the cache read can only be new tokens.
            if attention_mask is None or attention_mask.shape[1] == input_ids.shape[1]:
                new_tokens = input_ids.shape[1] - cache.get_seq_length()
                kwargs["next_sequence_length"] = new_tokens if new_tokens > 0 else None
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, attention_mask=attention_mask, use_cache=use_cache, **kwargs
        )
        if cache is not None and cache.owned_by_generation:
            # After the prefill every new token is real: the mask carries no information, and
            # dropping it avoids a host sync per decoding step.
            model_inputs["attention_mask"] = None
        # A cache that generate made itself has read the prompt: what is read now was generated.
        if generated_position_offset and cache is not None and cache.owned_by_generation:
            if model_inputs.get("position_ids") is not None:
                model_inputs["position_ids"] = model_inputs["position_ids"] + generated_position_offset
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs: dict, *args, **kwargs) -> dict:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # The cache that generate's own forward pass just made is held by generate alone (a cache the
        # caller passed in never gets here), so decoding may advance it in place.
        if (cache := model_kwargs.get("cache")) is not None:
            cache.owned_by_generation = True
        return model_kwargs

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # generate numbers positions 0..L-1 from the attention mask when the caller passes none; a
        # model that numbers them itself (restarting at every `<cls>`) must get none instead.
        if self.config.position_restart_token_id is not None:
            return None
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    @can_return_tuple
    @deprecate_kwarg("cache_params", "6.0.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: BioXLSTMCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        seq_idx: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BioXLSTMCausalLMOutput:
        """labels: token ids aligned with input_ids (-100 ignored); the loss is the mean
        next-token cross-entropy (labels are shifted inside)."""
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
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
        return BioXLSTMCausalLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )


class BioXLSTMForMaskedLM(BioXLSTMPreTrainedModel):
    """Masked language model: predicts the token at every position from the whole sequence.

    Meant for `bidirectional=True` and/or `rcps=True` (with `rcps` the head is the reverse-complement
    equivariant one of `rc.py`). labels: token ids at the selected positions, -100 elsewhere; the
    loss is the mean cross-entropy over the selected positions only.
    """

    _auto_class = "AutoModelForMaskedLM"
    pipeline_tag = "fill-mask"
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: BioXLSTMConfig):
        if config.conjoin:
            raise ValueError(
                "conjoin makes every token state strand-invariant, so a masked LM could not tell a base from its "
                "complement; use rcps=True for a strand-aware masked LM"
            )
        super().__init__(config)
        self.backbone = BioXLSTMModel(config)
        if config.rcps:
            self.lm_head = ReverseComplementLMHead(config.complement_map, config.block_width)
        else:
            self.lm_head = LanguageModelHead(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class _BioXLSTMClassifierBase(BioXLSTMPreTrainedModel):
    """Backbone, dropout and a linear classifier on token features. The features are the final
    hidden states, or with `rcps` their strand average (`rc.strand_average`), which makes an RC-PS
    classifier strand-invariant without running the model twice."""

    def __init__(self, config: BioXLSTMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.backbone = BioXLSTMModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.block_width if config.rcps else config.hidden_size, config.num_labels)
        self.post_init()

    def _token_features(self, input_ids, attention_mask, inputs_embeds, output_hidden_states):
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        features = strand_average(hidden) if self.config.rcps else hidden
        return self.dropout(features), outputs.hidden_states


def pool(features: torch.Tensor, valid: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token features (B, S, F) over the valid positions (B, S) of each row."""
    if pooling == "mean":
        weights = valid.unsqueeze(-1).to(features.dtype)
        return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    if pooling == "max":
        return features.masked_fill(~valid.unsqueeze(-1), torch.finfo(features.dtype).min).amax(dim=1)
    positions = torch.arange(valid.shape[1], device=valid.device)
    if pooling == "first":
        chosen = torch.where(valid, -positions, -valid.shape[1]).argmax(dim=1)
    else:
        chosen = torch.where(valid, positions, -1).argmax(dim=1)
    return features[torch.arange(features.shape[0], device=features.device), chosen]


class BioXLSTMForSequenceClassification(_BioXLSTMClassifierBase):
    """One prediction per sequence: token features pooled over valid tokens (`config.pooling`),
    then a linear layer. Classification, multi-label or regression, following `problem_type` and
    `num_labels` as every Hugging Face sequence classifier does."""

    _auto_class = "AutoModelForSequenceClassification"
    pipeline_tag = "text-classification"

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        features, hidden_states = self._token_features(input_ids, attention_mask, inputs_embeds, output_hidden_states)
        valid = (
            attention_mask[:, -features.shape[1] :].to(device=features.device, dtype=torch.bool)
            if attention_mask is not None
            else torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        )
        logits = self.classifier(pool(features, valid, self.config.pooling)).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


class BioXLSTMForTokenClassification(_BioXLSTMClassifierBase):
    """One prediction per token (e.g. per-base annotation); labels -100 are ignored."""

    _auto_class = "AutoModelForTokenClassification"
    pipeline_tag = "token-classification"

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        features, hidden_states = self._token_features(input_ids, attention_mask, inputs_embeds, output_hidden_states)
        logits = self.classifier(features).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, config=self.config)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)
