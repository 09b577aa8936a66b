"""What every converter of a foreign checkpoint shares: safe reading, key and shape checks, and
the mapping of official-xLSTM block parameters onto ours.

A converter turns a directory as a research project publishes it into a `Converted` (our model,
a tokenizer that encodes to the project's token ids, and what the model card should say).
Everything a user can get wrong (a wrong directory, a truncated or unsafe file, weights that do
not fit the config) is a `ConversionError` with a one-line message naming the file.
"""

import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..models.mixers import mixer_class
from .errors import ConversionError
from .safe_pickle import load_archive, non_tensor_entries


@dataclass
class Converted:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    source: str  # the project, e.g. "Prot-xLSTM (ml-jku/Prot-xLSTM)"
    homepage: str  # where the project publishes its checkpoints
    license: str  # as the project states it, e.g. "apache-2.0"
    notes: list[str] = field(default_factory=list)  # how the conversion represents the reference


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def load_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with `torch.save`, read without running any pickled code: `weights_only`
    builds tensors and plain containers and refuses every other object."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            # torch warns of every pickle protocol above 2 and then fails on it; the fallback below reads
            # such files, so the warning would only mislead.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:
            raise ConversionError(
                f"{path}: holds pickled objects other than tensors ({unsafe.group(1)}), which are never loaded here"
            ) from None
        if not zipfile.is_zipfile(path):
            raise ConversionError(f"{path}: not a complete PyTorch checkpoint (truncated or another format)") from None
        # torch's weights-only reader knows only the opcodes of pickle protocol 2; a checkpoint saved
        # with a newer protocol is read by our restricted unpickler, which also names what is not a tensor.
        state = _restricted_state(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(f"{path}: not a complete PyTorch checkpoint (truncated or another format: {reason})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(state)


def _restricted_state(path: Path) -> dict[str, torch.Tensor]:
    state = load_archive(path)
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected a mapping of parameter names to tensors")
    bad = non_tensor_entries(state)
    if bad:
        raise ConversionError(
            f"{path}: holds pickled objects other than tensors ({', '.join(bad[:5])}), which are never loaded here"
        )
    return dict(state)


def check_keys(state: Mapping[str, torch.Tensor], expected: Iterable[str], path: Path) -> None:
    """One error listing every unknown and every missing key, so a user sees the whole mismatch."""
    expected = set(expected)
    unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {len(unknown)} key(s): {', '.join(unknown)}")
        raise ConversionError(f"{path}: the weights do not match the config: {'; '.join(parts)}")


def load_state(model: PreTrainedModel, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load a complete state dict of our names into `model`; shapes must match the config exactly."""
    own = model.state_dict()
    check_keys(state, own, path)
    wrong = [
        f"{name} {tuple(tensor.shape)} (config: {tuple(own[name].shape)})"
        for name, tensor in state.items()
        if tuple(tensor.shape) != tuple(own[name].shape)
    ]
    if wrong:
        raise ConversionError(f"{path}: the config does not match the weights: {', '.join(wrong)}")
    model.load_state_dict({name: tensor.detach().to(torch.float32) for name, tensor in state.items()}, strict=True)
    model.eval()


def xlstm_block_state(
    state: Mapping[str, torch.Tensor], prefix: str, config, layer_idx: int, layout: str | None = None
) -> dict[str, torch.Tensor]:
    """Block `layer_idx`'s parameters under our names (relative to the block), from a state dict with
    official-`xlstm` names under `prefix` (e.g. "xlstm_block_stack.blocks.0.").

    The block's norms and feed-forward keep their names; the mixer's parameters (`xlstm.`) are
    mapped by the mixer `config.block_types` names (`Mixer.from_xlstm`), with `layout` the parameter
    layout of the backend the checkpoint was trained with, where the library has several.
    """
    block = {name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)}
    layer = {name[len("xlstm.") :]: tensor for name, tensor in block.items() if name.startswith("xlstm.")}
    converted = {name: tensor for name, tensor in block.items() if not name.startswith("xlstm.")}
    try:
        mixer = mixer_class(config.block_types[layer_idx]).from_xlstm(layer, layout, config)
    except KeyError as error:
        raise KeyError(", ".join(f"{prefix}xlstm.{name}" for name in error.args[0])) from None
    converted.update({f"xlstm.{name}": tensor for name, tensor in mixer.items()})
    return converted
