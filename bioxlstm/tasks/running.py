"""Running a model over many sequences of any length, in constant memory per sequence.

Short sequences go through the model in padded batches; a sequence longer than the window goes
window by window with the recurrent state carried from one window to the next, so a whole genome
needs the memory of one window. Consumers receive pieces of per-token outputs and reduce them.
"""

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..token_rows import reverse_complement_ids, right_padded


@dataclass
class Piece:
    """Consecutive positions of one sequence: its token ids, hidden states at the requested
    layer and, for language models, the logits at those positions."""

    key: object
    token_ids: torch.Tensor  # (n,)
    hidden: torch.Tensor  # (n, hidden_size)
    logits: torch.Tensor | None  # (n, vocab)
    is_first: bool
    is_last: bool
    strand: int = 0  # 1: the reverse complement of the text


def pick_device(name: str) -> torch.device:
    """The device `name` names (auto: CUDA when present), or ValueError when there is no such device here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ValueError(f"device {name!r}: this machine has no CUDA device; use cpu (or auto)")
        if device.index is not None and device.index >= available:
            raise ValueError(f"device {name!r}: this machine has {available} CUDA device(s), cuda:0 to cuda:{available - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: this machine has no Apple GPU; use cpu (or auto)")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"device {name!r}: not supported; use auto, cpu, cuda or mps")
    return device


def is_bidirectional(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "bidirectional", False))


def run_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[tuple[object, str]],
    layer: int = -1,
    window: int = 4096,
    batch_size: int = 16,
    logits: bool = False,
    append_eos: bool = False,
    complement: list[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Piece]:
    """Yield the outputs of `model` over `(key, text)` pairs as pieces, in input order.

    Each text is tokenised with its leading `<cls>` (and a final `<eos>` if `append_eos`). A text
    longer than `window` is tokenised and run one window at a time, so neither its tokens nor its
    outputs are ever held whole.
    layer: index into the hidden states (0: embeddings, -1: the final normed output).
    logits: also return the language-model logits (the model must have an LM head).
    complement: a complement map of token ids; every text is followed by its reverse complement
    (pieces with `strand` 1), special tokens in place.
    A bidirectional model sees each sequence whole: it cannot carry a state across windows.
    progress: told the number of tokens of every piece as it is yielded.
    """
    pieces = _run_texts(model, tokenizer, texts, layer, window, batch_size, logits, append_eos, complement)
    if progress is None:
        return pieces
    return _reporting(pieces, progress)


def _reporting(pieces: Iterator[Piece], progress: Callable[[int], None]) -> Iterator[Piece]:
    for piece in pieces:
        progress(len(piece.token_ids))
        yield piece


@torch.no_grad()  # on the generator itself: it runs the model only while it is iterated
def _run_texts(model, tokenizer, texts, layer, window, batch_size, logits, append_eos, complement) -> Iterator[Piece]:
    if is_bidirectional(model):
        window = None
    eos = [tokenizer.eos_token_id] if append_eos else []
    batch = []
    for key, text in texts:
        for strand in (0, 1) if complement is not None else (0,):
            windows = _token_windows(tokenizer, text, window or len(text) + 1, eos, complement if strand else None)
            if window is None or len(text) < window:
                batch.append((key, strand, next(windows)))
                if len(batch) == batch_size:
                    yield from _run_batch(model, batch, layer, logits)
                    batch = []
                continue
            yield from _run_batch(model, batch, layer, logits)
            batch = []
            yield from _run_windows(model, key, strand, windows, layer, logits)
    yield from _run_batch(model, batch, layer, logits)


def _token_windows(
    tokenizer, text: str, window: int, eos: list[int], complement: list[int] | None = None
) -> Iterator[list[int]]:
    """Token ids of `text` (of its reverse complement, with a `complement` map: the sequence tokens
    reversed and complemented, special tokens in place) in windows of `window` characters,
    tokenising one window of characters at a time; a text split into windows must have one token
    per character (DNA and proteins). The first window has the tokenizer's special tokens, the last
    ends with `eos`."""
    # An empty text still makes one window: its special tokens and `eos`.
    starts = (range(0, len(text), window) if complement is None else range(len(text), 0, -window)) or [0]
    for number, start in enumerate(starts):
        piece = text[start : start + window] if complement is None else text[max(start - window, 0) : start]
        encoded = tokenizer(piece, add_special_tokens=number == 0, return_special_tokens_mask=True)
        ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
        if len(ids) - sum(special) != len(piece) and len(piece) < len(text):
            raise ValueError(
                f"a sequence of {len(text)} characters is longer than the window of {window}, and its tokens "
                "are not one per character, so it cannot be split; use a larger window"
            )
        if complement is not None:
            tokens, specials = right_padded([ids, special], 0)[0]  # as tensors; both have the window's length
            ids = reverse_complement_ids(tokens[None], specials[None] == 0, complement)[0].tolist()
        yield ids + (eos if number == len(starts) - 1 else [])


def _outputs(model, ids, attention_mask, cache, layer, logits):
    """Hidden states at `layer`, logits (or None) and the new cache for one model call."""
    device = model.device
    kwargs = dict(input_ids=ids.to(device))
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(device)
    if not is_bidirectional(model):
        kwargs.update(cache=cache, use_cache=True)
    want_hidden = layer != -1 or logits
    if logits:
        out = model(**kwargs, output_hidden_states=want_hidden)
        hidden = out.hidden_states[layer]
        return hidden, out.logits, getattr(out, "cache", None)
    out = model.base_model(**kwargs, output_hidden_states=layer != -1)
    hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    return hidden, None, getattr(out, "cache", None)


@contextlib.contextmanager
def _enough_memory(model, tokens: int, rows: int):
    """Turn the allocator's failure on a too-long input into one line that says what was asked for
    and what to do instead."""
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not (isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(error)):
            raise
        asked = re.search(r"allocate (\d+(?:\.\d+)? ?[KMG]?i?B|\d+ bytes)", str(error))
        what = f" (one allocation alone of {asked[1]})" if asked else ""
        advice = (
            "a bidirectional model reads every sequence whole and cannot carry a state between windows: "
            "split the sequence into shorter pieces"
            if is_bidirectional(model)
            else "use a smaller window or batch size"
        )
        raise ValueError(
            f"not enough memory for {rows} sequence(s) of up to {tokens:,} tokens at once{what}; {advice}"
        ) from None


def _run_batch(model, batch, layer, logits) -> Iterator[Piece]:
    if not batch:
        return
    # Padded with id 0: the attention mask hides the padding, whatever its id.
    ids, mask = right_padded([token_ids for *_, token_ids in batch], 0)
    with _enough_memory(model, ids.shape[1], len(batch)):
        hidden, lm_logits, _ = _outputs(model, ids, mask, None, layer, logits)
    for row, (key, strand, token_ids) in enumerate(batch):
        n = len(token_ids)
        yield Piece(
            key,
            ids[row, :n],
            hidden[row, :n].float().cpu(),
            None if lm_logits is None else lm_logits[row, :n].float().cpu(),
            is_first=True,
            is_last=True,
            strand=strand,
        )


def _run_windows(model, key, strand: int, windows: Iterator[list[int]], layer, logits) -> Iterator[Piece]:
    cache, is_first = None, True
    upcoming = next(windows)
    while upcoming is not None:
        chunk = torch.tensor(upcoming)
        upcoming = next(windows, None)
        with _enough_memory(model, len(chunk), 1):
            hidden, lm_logits, cache = _outputs(model, chunk[None], None, cache, layer, logits)
        yield Piece(
            key,
            chunk,
            hidden[0].float().cpu(),
            None if lm_logits is None else lm_logits[0].float().cpu(),
            is_first=is_first,
            is_last=upcoming is None,
            strand=strand,
        )
        is_first = False
