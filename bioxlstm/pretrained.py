"""Finding and loading saved models: a directory written by `save_pretrained` or `bioxlstm export`,
or the name of a default model bundled with the package."""

from importlib import resources
from pathlib import Path

from safetensors import SafetensorError
from transformers import AutoConfig, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from . import models
from .tokenization import load_tokenizer


# Small models trained by the `-tiny` recipes (scripts/build_default_models.py), shipped in the package.
DEFAULT_MODELS_DIRECTORY = Path(str(resources.files("bioxlstm"))) / "default_models"


class ModelNotFoundError(ValueError):
    """The name or path given for a model leads nowhere; the message says what exists."""


def default_model_names() -> list[str]:
    if not DEFAULT_MODELS_DIRECTORY.is_dir():
        return []
    return sorted(p.name for p in DEFAULT_MODELS_DIRECTORY.iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """The directory of a saved model: `name_or_path` itself, or the bundled default of that name."""
    directory = Path(name_or_path)
    if (directory / "config.json").is_file():
        return directory
    if str(name_or_path) in default_model_names():
        return DEFAULT_MODELS_DIRECTORY / str(name_or_path)
    names = ", ".join(default_model_names()) or "none installed"
    raise ModelNotFoundError(
        f"{directory}: no saved model here (expected a directory with config.json, or a bundled default: {names})"
    )


def load_pretrained(name_or_path: str | Path, **kwargs):
    """Load a saved Bio-xLSTM model with the head it was saved with, and its tokenizer.

    `name_or_path`: a model directory, or the name of a bundled default model (`default_model_names()`).
    The tokenizer is the one saved beside the weights, else the bundled one of the model's domain
    (None for a domain-free model without saved tokenizer). Keyword arguments go to `from_pretrained`.
    """
    directory = resolve_model(name_or_path)
    try:
        config = AutoConfig.from_pretrained(directory)
    except ValueError as error:  # a setting out of range, or settings that contradict each other
        raise ValueError(f"{directory / 'config.json'}: {error}") from None
    if config.model_type != models.BioXLSTMConfig.model_type:
        raise ModelNotFoundError(f"{directory}: a {config.model_type!r} model, not a Bio-xLSTM model")
    architecture = (config.architectures or ["BioXLSTMModel"])[0]
    model_class = getattr(models, architecture, None)
    if model_class is None:
        raise ModelNotFoundError(f"{directory}: unknown Bio-xLSTM architecture {architecture!r}")
    checked = not {"ignore_mismatched_sizes", "output_loading_info"} & set(kwargs)
    if checked:
        # transformers would print a table of mismatched tensors and raise, or fill missing ones with
        # random numbers and only warn; either way the user is owed one line that names the problem.
        kwargs = dict(kwargs, ignore_mismatched_sizes=True, output_loading_info=True)
    verbosity = transformers_logging.get_verbosity()
    try:
        if checked:
            transformers_logging.set_verbosity_error()
        loaded = model_class.from_pretrained(directory, **kwargs)
    except SafetensorError as error:
        # The Rust error names neither the file nor what to do; a half-copied download is the usual cause.
        raise OSError(f"{directory}: its weights cannot be read ({error}); the file may be truncated: copy it again") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    if checked:
        loaded, info = loaded
        _require_matching_weights(directory, info)
    model = loaded.eval()
    tokenizer = saved_tokenizer(directory)
    if tokenizer is None and config.domain:
        tokenizer = load_tokenizer(config.domain)
    return model, tokenizer


def _require_matching_weights(directory: Path, info: dict) -> None:
    """ValueError naming the first tensor where config.json and the saved weights disagree."""
    problems = [
        f"{name} is {tuple(saved)} in the weights but {tuple(expected)} by config.json"
        for name, saved, expected in sorted(info.get("mismatched_keys") or ())
    ]
    problems += [f"config.json asks for {name}, which the weights lack" for name in sorted(info.get("missing_keys") or ())]
    problems += [f"the weights hold {name}, which config.json has no place for" for name in sorted(info.get("unexpected_keys") or ())]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"{directory}: config.json does not match the weights: {problems[0]}{more}")


def saved_tokenizer(directory: Path) -> PreTrainedTokenizerFast | None:
    """The tokenizer saved beside a model's weights, or None."""
    return PreTrainedTokenizerFast.from_pretrained(directory) if (directory / "tokenizer.json").is_file() else None


def supported_heads(config: models.BioXLSTMConfig) -> dict[str, str]:
    """The heads a saved model loads as (the ones its config.json's `auto_map` lists), each with its
    Hugging Face pipeline task."""
    return {name: getattr(models, name).pipeline_tag for name in config.heads.values()}
