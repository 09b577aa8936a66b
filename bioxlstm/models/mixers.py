"""The sequence mixers a block can hold, by the name `config.block_types` gives them.

A mixer is one module that owns everything about its kind of layer: the config fields only it reads
(`settings`, with their defaults), its parameters and their initialisation, its recurrent state and
how a call advances it (a call with one token is a decoding step), what makes its output zero for
function-preserving growth, and how a converted `xlstm` checkpoint's parameters map onto it. A
subclass registered with `register_mixer` is accepted by `BioXLSTMConfig` (its settings are stored
in config.json beside the shared ones), built into blocks, trained, decoded, saved and named in
model cards, with no other change.
"""

import dataclasses
import typing
from typing import Any, ClassVar

import torch
from torch import nn

# Every mixer kind, by the name config.json's `block_types` uses.
MIXERS: dict[str, type["Mixer"]] = {}


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The settings of a mixer that has none of its own."""


class Mixer(nn.Module):
    """The layer at the heart of a block: it reads the normed block input and returns what the block
    adds to the residual stream, with its new recurrent state.

    Class attributes a subclass sets:
        kind: its name in `config.block_types`.
        display_name: how cards and `bioxlstm info` write it.
        settings: a dataclass whose fields are the config fields only this mixer reads, with their
            types and defaults.
        feed_forward: whether its block adds the shared gated feed-forward after it.
    """

    kind: ClassVar[str]
    display_name: ClassVar[str]
    settings: ClassVar[type] = NoSettings
    feed_forward: ClassVar[bool] = False

    def forward(
        self,
        x: torch.Tensor,
        state: Any,
        keep: torch.Tensor | None,
        reset: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        overwrite_state: bool = False,
        rc_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """x: (B, S, D), the normed block input. state: what the previous call returned for these rows
        (a tensor or nested tuples of batch-first tensors), or None where the sequences start.
        keep: (B, S) bool, the real (non-padding) positions, whose state a padding position must not
        change; None: all real. reset: (B, S) bool, where a sequence packed into a row starts afresh.
        rotary: the (cos, sin) rotation of each position (`positions.py`), or None. overwrite_state:
        the caller discards `state`, whose tensors may then hold the new one. rc_rows: (B,) bool, the
        rows that hold the reverse-complement view of an RC-PS model."""
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def stages(self, *args, **kwargs):
        """`forward` (same arguments and result) as a generator that may yield work a model can run
        together with that of other blocks (an object with `run()` and a static `run_together(works)`,
        as `kernels.SLSTMRecurrence`) and is sent back its result. The default yields nothing. A mixer
        that yields defines `forward` as `complete(self.stages(...))`; on a model's path through
        `stages`, hooks on the mixer are not called (the model checks that there are none)."""
        yield from ()
        return self(*args, **kwargs)

    def init_parameters(self) -> None:
        """Set every parameter to its initial value, with `transformers.initialization`'s functions
        (which leave weights loaded from a checkpoint alone)."""
        raise NotImplementedError(f"{type(self).__name__} must define init_parameters")

    @torch.no_grad()
    def zero_output_(self) -> None:
        """Make the mixer's output exactly zero whatever its input (function-preserving growth)."""
        raise NotImplementedError(f"{type(self).__name__} must define zero_output_")

    @classmethod
    def check_config(cls, config) -> None:
        """Raise ValueError if `config` cannot build this mixer (called for kinds the config uses)."""

    @classmethod
    def from_xlstm(cls, parameters: dict[str, torch.Tensor], layout: str | None, config) -> dict[str, torch.Tensor]:
        """This mixer's parameters under our names, from an official-`xlstm` block's layer
        parameters (names relative to the layer); `layout`: how the checkpoint's backend stored them,
        where the library has several. A missing parameter raises KeyError with the list of their names."""
        return dict(parameters)


def complete(stages):
    """Run a generator of `Mixer.stages` to its end, doing each piece of work it yields at once."""
    try:
        work = next(stages)
        while True:
            work = stages.send(work.run())
    except StopIteration as end:
        return end.value


def complete_together(all_stages: list) -> list:
    """Run generators of `Mixer.stages` side by side to their ends and return their results. The work
    they wait on at the same time runs together, kind by kind (`run_together`): several sLSTM blocks'
    recurrences as one scan over all their heads, whose steps cost about what one block's do."""
    results, waiting = {}, {}

    def advance(index, value):
        try:
            waiting[index] = all_stages[index].send(value)
        except StopIteration as end:
            results[index] = end.value

    for index in range(len(all_stages)):
        advance(index, None)
    while waiting:
        works, by_kind = dict(waiting), {}
        waiting.clear()
        for index, work in works.items():
            by_kind.setdefault(type(work), []).append(index)
        for kind, indices in by_kind.items():
            for index, result in zip(indices, kind.run_together([works[index] for index in indices])):
                advance(index, result)
    return [results[index] for index in range(len(all_stages))]


def register_mixer(mixer: type[Mixer]) -> type[Mixer]:
    """Make `mixer` a block type (usable as a class decorator). Its settings must not reuse a field
    of another mixer (the config refuses those that reuse one of its own)."""
    if not getattr(mixer, "kind", None) or not getattr(mixer, "display_name", None):
        raise ValueError(f"{mixer.__name__} needs a `kind` and a `display_name`")
    taken = {name: other.kind for other in MIXERS.values() if other is not mixer for name in _setting_names(other)}
    clashes = [f"{name} (of {taken[name]!r})" for name in _setting_names(mixer) if name in taken]
    if clashes:
        raise ValueError(f"mixer {mixer.kind!r}: settings {', '.join(clashes)} belong to another mixer")
    MIXERS[mixer.kind] = mixer
    return mixer


def mixer_class(kind: str) -> type[Mixer]:
    if kind not in MIXERS:
        raise ValueError(f"unknown block type {kind!r}; known: {', '.join(MIXERS)}")
    return MIXERS[kind]


def mixer_settings() -> dict[str, Any]:
    """Every registered mixer's settings with their defaults."""
    return {field.name: field.default for mixer in MIXERS.values() for field in dataclasses.fields(mixer.settings)}


def mixer_setting_types() -> dict[str, Any]:
    """Every registered mixer's settings with their types (recipes check a value against them)."""
    return {name: kind for mixer in MIXERS.values() for name, kind in typing.get_type_hints(mixer.settings).items()}


def _setting_names(mixer: type[Mixer]) -> list[str]:
    return [field.name for field in dataclasses.fields(mixer.settings)]
