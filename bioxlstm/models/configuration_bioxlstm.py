"""Configuration of the Bio-xLSTM block stack: every field is part of the architecture."""

import functools
import inspect
import typing

from transformers import PretrainedConfig

from .layers import round_up
from .mixers import MIXERS, mixer_setting_types, mixer_settings
# Importing the built-in mixers registers them (and makes `save_pretrained` ship their files).
from .mlstm import inner_size as mlstm_inner_size
from .slstm import SLSTMLayer  # noqa: F401

KERNEL_CHOICES = ("auto", "native", "triton")
BIDIRECTIONAL_COMBINE_CHOICES = ("add", "mean")
BIDIRECTIONAL_MODES = ("mixer", "block", "alternating")
POOLING_CHOICES = ("mean", "max", "first", "last")
POSITION_EMBEDDINGS = ("none", "rotary")
# Fields that configs saved before `block_types` was stored hold instead (migrated on read), by type.
LEGACY_FIELDS = {"slstm_layers": list[int]}
ROPE_PAIRINGS = ("half", "interleaved")
ROPE_SPANS = ("head", "inner")
# The Auto class that loads each head (the classes of modeling_bioxlstm.py); `auto_map` lists the ones
# that make sense for a config, so that an export also loads for fine-tuning with the others.
HEADS = {
    "AutoModel": "BioXLSTMModel",
    "AutoModelForCausalLM": "BioXLSTMForCausalLM",
    "AutoModelForMaskedLM": "BioXLSTMForMaskedLM",
    "AutoModelForSequenceClassification": "BioXLSTMForSequenceClassification",
    "AutoModelForTokenClassification": "BioXLSTMForTokenClassification",
}


class BioXLSTMConfig(PretrainedConfig):
    r"""Configuration of a Bio-xLSTM model: a stack of blocks, each around the sequence mixer its
    entry of `block_types` names (mLSTM and sLSTM, xLSTM v1 structure; `mixers.MIXERS` lists them).

    The fields below are shared by all blocks. Each mixer's own settings are keyword arguments too,
    documented with the mixer and stored in config.json beside these: the mLSTM's `proj_factor`,
    `qkv_proj_blocksize`, `chunk_size` and `mlstm_inner_width` (`models/mlstm.py`), the sLSTM's
    `slstm_num_heads`, `slstm_conv1d_kernel_size` and `rcps_slstm_head_flip` (`models/slstm.py`).
    A config saved before `block_types` was stored lists its sLSTM blocks as `slstm_layers`; that
    is read as the same `block_types`.

    Args:
        vocab_size: number of token ids.
        hidden_size: width of the residual stream (the embedding dimension). With `rcps` this is
            the doubled width: each block runs at `hidden_size / 2` (`block_width`) on each of the
            two strand views.
        num_hidden_layers: number of blocks.
        num_heads: heads of the cells (the sLSTM's unless `slstm_num_heads` is set).
        block_types: the kind of every block, in order (as `layer_types` in transformers' hybrid
            configs), e.g. ["mlstm", "slstm", "mlstm"]; default: all "mlstm".
        conv1d_kernel_size: width of the causal depthwise convolution in every block (the sLSTM's
            unless `slstm_conv1d_kernel_size` is set).
        ffn_proj_factor: up-projection factor of the gated feed-forward of blocks whose mixer has one
            (the sLSTM), rounded up to a multiple of `proj_round_multiple`.
        dropout: dropout on the block outputs (and on the embeddings if `embedding_dropout`).
        kernel: `"auto"` (Triton on CUDA when available, native PyTorch otherwise), `"native"` or
            `"triton"`. Only `models/kernels.py` reads it.
        tie_word_embeddings: share the input embedding with the LM head.
        ffn_activation: activation of the gated feed-forward (`"gelu"`, `"swish"`, `"relu"`).
        bias: bias terms in the up/down and q/k/v projections.
        proj_round_multiple: the up-projection widths (mLSTM, feed-forward) are rounded up to a multiple of this.
        add_post_blocks_norm: layer norm after the last block.
        embedding_dropout: apply `dropout` to the token embeddings.
        norm_eps: epsilon of all layer and group norms.
        domain: the name of the sequence domain the model was trained on (a record of
            `bioxlstm.domains`), used to pick its tokenizer and describe it; None for a domain-free model.
        bidirectional: every block also runs its layer, with the same weights, on the sequence
            reversed within its valid span, and combines the two outputs before the residual (the
            weight tying of Caduceus; `bidirectional_mode` chooses DNA-xLSTM's schemes). The model
            then sees the whole sequence at every position: it has no recurrent decoding (no cache,
            no `generate`, no causal LM head).
        bidirectional_combine: how the two directions are combined: `"add"` (forward output plus the
            flipped-back output on the reversal) or `"mean"` (half of that sum, so that the update
            has the scale of a one-directional block).
        rcps: reverse-complement parameter sharing (see `rc.py`): the hidden state holds a forward
            and a reverse-complement view, every block is shared between them, and the model is
            reverse-complement equivariant. For bidirectional/masked models and encoders; the
            reverse-complement view reads the sequence backwards, so it cannot serve a causal LM.
        complement_map: for every token id, the id of its complement (an involution), e.g.
            `bioxlstm.complement_map(tokenizer)`; required by `rcps` and `conjoin`.
        conjoin: run the model on the sequence and on its reverse complement (within the valid
            span) and average the hidden states, the second flipped back: every output is then
            invariant to the strand (token outputs up to the flip of positions). Not for LM heads,
            which must tell a base from its complement.
        strand_delimiter_ids: tokens that `conjoin` leaves in place when it reverse-complements a
            row, as a tokenizer writes them around either strand (`<cls> ACG <eos>` -> `<cls> CGT
            <eos>`); None: `bos_token_id` and `eos_token_id`. DNA-xLSTM's conjoined models
            reverse the whole row, its `[SEP]` included: [].
        pooling: how `BioXLSTMForSequenceClassification` pools the token states of each sequence,
            over valid tokens only: `"mean"`, `"max"`, `"first"` or `"last"`.
        classifier_dropout: dropout before the classification layers.
        bidirectional_mode: what runs in both directions when `bidirectional`: `"mixer"` (the
            default: the mLSTM/sLSTM layer runs on the normed input and on its reversal, combined
            before one residual; the feed-forward runs once), `"block"` (the whole block, residual
            and feed-forward included, runs on x and on its reversal and the two results are
            combined, so the residual counts twice: DNA-xLSTM's blockwise bidirectional models) or
            `"alternating"` (no weight-shared second pass: blocks 0, 2, 4, ... read the sequence
            reversed and the others forward, DNA-xLSTM's `bidirectional_alternating`).
        ffn_inner_width: the feed-forward's inner width itself, overriding `ffn_proj_factor` and its
            rounding (checkpoints whose width was rounded otherwise, e.g. DNA-xLSTM's rounding down).
        ffn_bias: bias terms in the feed-forward projections (default: `bias`); DNA-xLSTM gives
            the mLSTM projections biases but not the feed-forward.
        rope_reciprocal_frequencies: compute the rotary frequencies as 1 / rope_theta^(2i/D)
            (DNA-xLSTM, Llama) instead of rope_theta^(-2i/D) (Prot-xLSTM, the default). Equal up to
            float rounding, whose effect grows with the position (about 1e-3 on logits at 8k).

    Classification heads also read the standard `num_labels` and `problem_type` (regression when
    `num_labels == 1`).
        position_embedding: `"none"` (the recurrence alone orders the tokens) or `"rotary"`: q and k
            of every mLSTM cell are rotated by the token's position id (see `models/positions.py`),
            so that positions can restart at every sequence of a homolog context and jump back
            after a fill-in-the-middle sentinel. Position ids are the `position_ids` argument of
            `forward`; without it they count on from the tokens already in the cache.
        rope_theta: base of the rotary frequencies (the slowest pair turns by 1/rope_theta radians per
            position).
        rope_sequence_index: 2-D rotary: the first half of each head's rotary channel pairs turn
            with the position in the sequence, the second half with the index of the sequence in
            the context, which counts the tokens whose position id is 0 (a sequence starts there).
            Needs a head dimension divisible by 4.
        rope_pairing: which channels of q and k turn together: `"half"` (channel i with i + D/2, as
            Llama does) or `"interleaved"` (2i with 2i + 1, as Prot-xLSTM and DNA-xLSTM do).
        rope_span: the width one frequency ladder covers: `"head"` (each head turns on its own) or
            `"inner"` (the whole mLSTM inner width, before the head split, as Prot-xLSTM does).
        rope_gates_read_rotated: the input and forget gates read the rotated q and k (Prot-xLSTM)
            instead of the unrotated ones (default: gates that do not depend on position).
        position_restart_token_id: when `position_ids` are not passed, the model numbers the
            positions itself: 0 at every token with this id (e.g. `<cls>`, which begins each
            sequence of a homolog context, as Prot-xLSTM numbers them), counting on after it; the
            count carries through the recurrent cache. None: positions count on from the cache.
        max_position_id: position ids above it are clamped to it (Prot-xLSTM clamps to its
            `max_position_embeddings - 1`); None: no clamping.
    """

    model_type = "bioxlstm"
    # save_pretrained ships this file as remote code, for users without bioxlstm installed.
    _auto_class = "AutoConfig"

    def __init__(
        self,
        vocab_size: int = 32,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_heads: int = 4,
        block_types: list[str] | None = None,
        conv1d_kernel_size: int = 4,
        ffn_proj_factor: float = 1.3,
        dropout: float = 0.0,
        kernel: str = "auto",
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        ffn_activation: str = "gelu",
        bias: bool = False,
        proj_round_multiple: int = 64,
        add_post_blocks_norm: bool = True,
        embedding_dropout: bool = False,
        norm_eps: float = 1e-5,
        domain: str | None = None,
        bidirectional: bool = False,
        bidirectional_combine: str = "add",
        rcps: bool = False,
        complement_map: list[int] | None = None,
        conjoin: bool = False,
        strand_delimiter_ids: list[int] | None = None,
        pooling: str = "mean",
        classifier_dropout: float = 0.0,
        bidirectional_mode: str = "mixer",
        ffn_inner_width: int | None = None,
        ffn_bias: bool | None = None,
        rope_reciprocal_frequencies: bool = False,
        position_embedding: str = "none",
        rope_theta: float = 10000.0,
        rope_sequence_index: bool = False,
        rope_pairing: str = "half",
        rope_span: str = "head",
        rope_gates_read_rotated: bool = False,
        position_restart_token_id: int | None = None,
        max_position_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.block_types = _block_types(block_types, kwargs.pop("slstm_layers", None), num_hidden_layers)
        for name, default in mixer_settings().items():
            if name in self.shared_field_names():
                raise ValueError(f"a mixer's setting {name!r} is already a shared field of the config")
            setattr(self, name, kwargs.pop(name, default))
        self.conv1d_kernel_size = conv1d_kernel_size
        self.ffn_proj_factor = ffn_proj_factor
        self.dropout = dropout
        self.kernel = kernel
        self.ffn_activation = ffn_activation
        self.bias = bias
        self.proj_round_multiple = proj_round_multiple
        self.add_post_blocks_norm = add_post_blocks_norm
        self.embedding_dropout = embedding_dropout
        self.norm_eps = norm_eps
        self.domain = domain
        self.position_embedding = position_embedding
        self.rope_theta = rope_theta
        self.rope_sequence_index = rope_sequence_index
        self.rope_pairing = rope_pairing
        self.rope_span = rope_span
        self.rope_gates_read_rotated = rope_gates_read_rotated
        self.position_restart_token_id = position_restart_token_id
        # Not named max_position_embeddings: generate() caps its default max_length to that field.
        self.max_position_id = max_position_id
        self.bidirectional = bidirectional
        self.bidirectional_combine = bidirectional_combine
        self.rcps = rcps
        self.complement_map = None if complement_map is None else [int(i) for i in complement_map]
        self.conjoin = conjoin
        self.strand_delimiter_ids = strand_delimiter_ids
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        self.bidirectional_mode = bidirectional_mode
        self.ffn_inner_width = ffn_inner_width
        self.ffn_bias = ffn_bias
        self.rope_reciprocal_frequencies = rope_reciprocal_frequencies
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._validate()

    def _validate(self) -> None:
        if self.kernel not in KERNEL_CHOICES:
            raise ValueError(f"kernel must be one of {KERNEL_CHOICES}, got {self.kernel!r}")
        if self.bidirectional_combine not in BIDIRECTIONAL_COMBINE_CHOICES:
            raise ValueError(
                f"bidirectional_combine must be one of {BIDIRECTIONAL_COMBINE_CHOICES}, got {self.bidirectional_combine!r}"
            )
        if self.bidirectional_mode not in BIDIRECTIONAL_MODES:
            raise ValueError(f"bidirectional_mode must be one of {BIDIRECTIONAL_MODES}, got {self.bidirectional_mode!r}")
        if self.bidirectional_mode != "mixer" and not self.bidirectional:
            raise ValueError(f"bidirectional_mode={self.bidirectional_mode!r} needs bidirectional=True")
        value = self.ffn_inner_width
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"ffn_inner_width must be a positive integer or None, got {value!r}")
        if self.pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {self.pooling!r}")
        if self.rcps and self.hidden_size % 2:
            raise ValueError(f"rcps splits hidden_size in two strand views; hidden_size={self.hidden_size} is odd")
        if (self.rcps or self.conjoin) and self.complement_map is None:
            raise ValueError("rcps and conjoin need complement_map, e.g. bioxlstm.complement_map(tokenizer)")
        if self.complement_map is not None:
            self._validate_complement_map()
        if len(self.block_types) != self.num_hidden_layers:
            raise ValueError(f"block_types has {len(self.block_types)} entries for num_hidden_layers={self.num_hidden_layers}")
        for kind in dict.fromkeys(self.block_types):
            if kind not in MIXERS:
                raise ValueError(f"unknown block type {kind!r} in block_types; known: {', '.join(MIXERS)}")
            MIXERS[kind].check_config(self)
        if self.domain is not None and not isinstance(self.domain, str):
            raise ValueError(f"domain must be a domain name (see bioxlstm.domains) or None, got {self.domain!r}")
        self._validate_positions()

    def _validate_positions(self) -> None:
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding!r}")
        if self.rope_sequence_index and self.position_embedding != "rotary":
            raise ValueError("rope_sequence_index needs position_embedding='rotary'")
        if self.position_embedding == "rotary" and self.rcps:
            raise ValueError("rotary positions are not supported with rcps; RC-PS models read order from the recurrence")
        if self.rope_pairing not in ROPE_PAIRINGS:
            raise ValueError(f"rope_pairing must be one of {ROPE_PAIRINGS}, got {self.rope_pairing!r}")
        for name in ("position_restart_token_id", "max_position_id"):
            value = getattr(self, name)
            if value is not None and self.position_embedding != "rotary":
                raise ValueError(f"{name} needs position_embedding='rotary'")
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        if self.position_restart_token_id is not None and self.position_restart_token_id >= self.vocab_size:
            raise ValueError(
                f"position_restart_token_id={self.position_restart_token_id} is not a token id (vocab_size={self.vocab_size})"
            )
        if self.rope_span not in ROPE_SPANS:
            raise ValueError(f"rope_span must be one of {ROPE_SPANS}, got {self.rope_span!r}")
        if self.position_embedding == "rotary":
            multiple = 4 if self.rope_sequence_index else 2
            if self.rotary_width % multiple:
                raise ValueError(
                    f"rotary embeddings need a rotated width ({self.rope_span}) divisible by {multiple}, got {self.rotary_width}"
                )

    def _validate_complement_map(self) -> None:
        complement = self.complement_map
        if len(complement) != self.vocab_size:
            raise ValueError(f"complement_map has {len(complement)} entries for vocab_size={self.vocab_size}")
        if any(not 0 <= c < self.vocab_size or complement[c] != t for t, c in enumerate(complement)):
            raise ValueError("complement_map must be an involution on the token ids (the complement of a complement is the token)")

    @property
    def strand_delimiters(self) -> list[int]:
        """The token ids that conjoining keeps in place (see `strand_delimiter_ids`)."""
        if self.strand_delimiter_ids is not None:
            return list(self.strand_delimiter_ids)
        return [i for i in (self.bos_token_id, self.eos_token_id) if i is not None]

    @property
    def non_causal_settings(self) -> list[str]:
        """The settings, as `name=True`, that let a position see later ones (no recurrent decoding)."""
        return [f"{name}=True" for name in ("bidirectional", "rcps", "conjoin") if getattr(self, name)]

    @property
    def heads(self) -> dict[str, str]:
        """The heads that make sense for this architecture, by the Auto class that loads them: the
        backbone and both classifiers always; the causal LM only without a non-causal setting; the
        masked LM only with one (a causal LM's head predicts the next token, so it would load as a
        masked LM without complaint and fill in every mask with the token after it), and not with
        `conjoin`, which cannot tell a base from its complement. A head the config was saved with
        (`architectures`) is listed whatever the settings, so that it loads as itself."""
        excluded = {"AutoModelForMaskedLM"} if not self.non_causal_settings else {"AutoModelForCausalLM"}
        if self.conjoin:
            excluded.add("AutoModelForMaskedLM")
        saved_as = set(self.architectures or ())
        return {auto: name for auto, name in HEADS.items() if auto not in excluded or name in saved_as}

    # Derived from the settings instead of stored: a config built from another's dict, or whose
    # settings changed after it was made, would otherwise advertise the other one's heads. What is
    # assigned (a config.json's copy, transformers' save adding the saved head) is therefore ignored.
    @property
    def auto_map(self) -> dict[str, str]:
        """Where remote code finds the config and every head in `heads` (the files save_pretrained
        writes beside config.json)."""
        classes = {auto: f"modeling_bioxlstm.{name}" for auto, name in self.heads.items()}
        return {"AutoConfig": f"configuration_bioxlstm.{type(self).__name__}", **classes}

    @auto_map.setter
    def auto_map(self, value) -> None:
        pass

    def to_dict(self) -> dict:
        return {**super().to_dict(), "auto_map": self.auto_map}

    @property
    def block_width(self) -> int:
        """Width at which the blocks run: `hidden_size`, or half of it with `rcps`."""
        return self.hidden_size // 2 if self.rcps else self.hidden_size

    @property
    def rotary_width(self) -> int:
        """The width one rotary frequency ladder covers (`rope_span`): the mLSTM's q and k, across
        the inner width or per head."""
        inner = mlstm_inner_size(self)
        return inner if self.rope_span == "inner" else inner // self.num_heads

    @property
    def ffn_inner_size(self) -> int:
        if self.ffn_inner_width is not None:
            return self.ffn_inner_width
        return round_up(self.ffn_proj_factor * self.block_width, self.proj_round_multiple)

    @property
    def ffn_has_bias(self) -> bool:
        return self.bias if self.ffn_bias is None else self.ffn_bias

    @property
    def block_names(self) -> list[str]:
        """Every block's kind as people write it (cards, `bioxlstm info`)."""
        return [MIXERS[kind].display_name for kind in self.block_types]

    @classmethod
    @functools.cache
    def shared_field_names(cls) -> frozenset[str]:
        """The fields every block shares (this class's own arguments)."""
        parameters = inspect.signature(cls.__init__).parameters.items()
        return frozenset(name for name, p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD) - {"self"}

    @classmethod
    def field_names(cls) -> set[str]:
        """Every field a config can be built from: the shared ones, every registered mixer's
        settings and the legacy fields that are migrated on read."""
        return set(cls.field_types())

    @classmethod
    def field_types(cls) -> dict[str, object]:
        """The type of every field `field_names` lists (recipes check a value against it)."""
        shared = {name: kind for name, kind in typing.get_type_hints(cls.__init__).items() if name in cls.shared_field_names()}
        return {**shared, **mixer_setting_types(), **LEGACY_FIELDS}


def block_types_with_slstm_at(indices, num_hidden_layers: int) -> list[str]:
    """The block types of a stack whose sLSTM blocks are at `indices` and whose others are mLSTM
    blocks: how `xlstm` configs (`slstm_at`) and our configs saved before `block_types` was stored
    (`slstm_layers`) say it."""
    indices = sorted(int(i) for i in indices)
    bad = [i for i in indices if not 0 <= i < num_hidden_layers]
    if bad:
        raise ValueError(f"sLSTM block indices {bad} out of range for num_hidden_layers={num_hidden_layers}")
    return ["slstm" if i in indices else "mlstm" for i in range(num_hidden_layers)]


def _block_types(block_types: list[str] | None, slstm_layers, num_hidden_layers: int) -> list[str]:
    """`block_types` as given, or migrated from a saved config's `slstm_layers`, or all mLSTM."""
    if slstm_layers is None:
        return ["mlstm"] * num_hidden_layers if block_types is None else [str(kind) for kind in block_types]
    migrated = block_types_with_slstm_at(slstm_layers, num_hidden_layers)
    if block_types is not None and list(block_types) != migrated:
        raise ValueError(f"block_types {list(block_types)} and slstm_layers {slstm_layers} disagree; give block_types only")
    return migrated
