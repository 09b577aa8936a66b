"""Finding and loading saved models: a directory written by `save_pretrained` or `bioxlstm export`."""

from pathlib import Path

from transformers import AutoConfig, PreTrainedTokenizerFast

from . import models
from .tokenization import load_tokenizer


class ModelNotFoundError(ValueError):
    """The name or path given for a model leads nowhere; the message says what exists."""


def load_pretrained(name_or_path: str | Path, **kwargs):
    """Load a saved Bio-xLSTM model with the head it was saved with, and its tokenizer.

    The tokenizer is the one saved beside the weights, else the bundled one of the model's domain
    (None for a domain-free model without saved tokenizer). Keyword arguments go to `from_pretrained`.
    """
    directory = Path(name_or_path)
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"{directory}: no saved model here (expected a directory with config.json)")
    config = AutoConfig.from_pretrained(directory)
    if config.model_type != models.BioXLSTMConfig.model_type:
        raise ModelNotFoundError(f"{directory}: a {config.model_type!r} model, not a Bio-xLSTM model")
    architecture = (config.architectures or ["BioXLSTMModel"])[0]
    model_class = getattr(models, architecture, None)
    if model_class is None:
        raise ModelNotFoundError(f"{directory}: unknown Bio-xLSTM architecture {architecture!r}")
    model = model_class.from_pretrained(directory, **kwargs).eval()
    if (directory / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    else:
        tokenizer = load_tokenizer(config.domain) if config.domain else None
    return model, tokenizer
