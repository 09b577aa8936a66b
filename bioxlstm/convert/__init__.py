"""Conversion of foreign checkpoints into Bio-xLSTM model directories.

One module per format, each with `FORMAT`, `matches(directory)` and `convert(directory)`:
`prot_xlstm` (Prot-xLSTM's `save_pretrained` directories), `dna_xlstm` (DNA-xLSTM's Lightning
checkpoints), `chem_xlstm` (Chem-xLSTM's `model.pt` + `init_arguments.json`); `xlstm` converts a
live model of the official `xlstm` package. `convert(source, output)` detects the format.
"""

import importlib
from pathlib import Path

from .common import ConversionError, Converted, write_model_directory
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


__all__ = ["ConversionError", "Converted", "FORMATS", "config_from_xlstm", "convert", "detect_format", "from_xlstm"]
