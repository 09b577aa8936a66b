"""Conversion of foreign checkpoints into Bio-xLSTM model directories.

One module per format, each with `FORMAT`, `matches(directory)` and `convert(directory)`:
`prot_xlstm` (Prot-xLSTM's `save_pretrained` directories), `dna_xlstm` (DNA-xLSTM's Lightning
checkpoints), `chem_xlstm` (Chem-xLSTM's `model.pt` + `init_arguments.json`); `xlstm` converts a
live model of the official `xlstm` package. The converters build models only; `convert(source,
output)` detects the format and writes the converted model as one of our model directories.
"""

import importlib
from pathlib import Path

from ..export import CardInfo, export
from ..io import atomic_directory
from .common import ConversionError, Converted
from .xlstm import config_from_xlstm, from_xlstm

# Format name -> module; imported when asked for, so `import bioxlstm` stays light.
FORMATS = {"prot-xlstm": "prot_xlstm", "dna-xlstm": "dna_xlstm", "chem-xlstm": "chem_xlstm"}
_EXPECTED_FILES = {
    "prot-xlstm": "config.json + pytorch_model.bin",
    "dna-xlstm": "model_config.json + a Lightning .ckpt below it",
    "chem-xlstm": "model.pt + init_arguments.json",
}


def format_module(name: str):
    if name not in FORMATS:
        raise ConversionError(f"unknown checkpoint format {name!r} (known: {', '.join(FORMATS)})")
    return importlib.import_module(f".{FORMATS[name]}", __name__)


def detect_format(source: Path) -> str:
    """The format of a checkpoint directory, from the files in it."""
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: {'not a directory' if source.exists() else 'no such directory'} "
                              "(give the checkpoint directory as the project publishes it)")
    found = [name for name in FORMATS if format_module(name).matches(source)]
    if len(found) != 1:
        expected = "; ".join(f"{name}: {files}" for name, files in _EXPECTED_FILES.items())
        what = "none of the known layouts" if not found else f"several layouts ({', '.join(found)}); pass --from"
        raise ConversionError(f"{source}: {what} ({expected})")
    return found[0]


def convert(source: str | Path, output: str | Path, source_format: str | None = None) -> Path:
    """Convert the checkpoint directory `source` into a model directory at `output` (which must
    not exist yet, or be empty) and return its path. Nothing is downloaded and no pickled code runs."""
    source = Path(source)
    name = source_format or detect_format(source)
    module = format_module(name)
    if not source.is_dir() or not module.matches(source):
        raise ConversionError(f"{source}: not a {name} checkpoint directory (expected {_EXPECTED_FILES[name]})")
    return write_model_directory(module.convert(source), output)


def write_model_directory(converted: Converted, output: Path) -> Path:
    """Write the converted model as a self-contained model directory (safetensors, config, model
    code, tokenizer, card). Nothing appears at `output` unless the whole directory was written."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConversionError(f"{output}: already exists; give a new directory (or remove it first)")
    with atomic_directory(output) as staging:
        export(converted.model, staging, converted.tokenizer, _card(converted))
    return output


def _card(converted: Converted) -> CardInfo:
    notes = "".join(f"\n- {note}" for note in converted.notes)
    description = (
        f"Converted by `bioxlstm convert` from a {converted.source} checkpoint "
        f"(published at {converted.homepage}; license: {converted.license}). "
        f"Token ids are the reference's own, so logits compare one to one with its code."
        + (f"\n\nHow the conversion represents the reference:{notes}" if notes else "")
    )
    return CardInfo(description=description, license=converted.license)


__all__ = ["ConversionError", "Converted", "FORMATS", "config_from_xlstm", "convert", "detect_format", "from_xlstm"]
