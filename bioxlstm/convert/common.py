"""What every converter of a foreign checkpoint shares: safe reading, key and shape checks, the
xLSTM parameter layouts, and writing the converted model as one of our model directories.

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

from ..export import CardInfo, export
from ..io import atomic_directory


class ConversionError(ValueError):
    """A source that cannot be converted; the message names the file and what is wrong."""


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
    from .safe_pickle import load_archive, non_tensor_entries

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


def slstm_cell_from_internal(
    recurrent_kernel: torch.Tensor, bias: torch.Tensor, layout: str, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sLSTM cell's recurrent matrices (NH, DH_in, 4, DH_out) and biases (NH, 4, DH) from the
    layout in which an `xlstm` backend stores them.

    The backends keep the same numbers in different orders: `cuda` stores the kernel as
    (NH, DH_in, 4 DH_out) and the bias in [head, gate, dim] order, `vanilla` the kernel as
    (NH, 4 DH_out, DH_in) and the bias in [gate, head, dim] order. The sizes agree, so a
    checkpoint does not say which one it holds: the caller must know the backend it was trained with.
    """
    size = recurrent_kernel.numel()
    head_dim = int(round((size / (4 * num_heads)) ** 0.5))
    if 4 * num_heads * head_dim * head_dim != size or bias.numel() != 4 * num_heads * head_dim:
        raise ValueError(
            f"sLSTM parameters of shapes {tuple(recurrent_kernel.shape)} and {tuple(bias.shape)} "
            f"do not fit {num_heads} heads"
        )
    if layout == "cuda":
        kernel = recurrent_kernel.reshape(num_heads, head_dim, 4, head_dim)
        bias = bias.reshape(num_heads, 4, head_dim)
    elif layout == "vanilla":
        kernel = recurrent_kernel.reshape(num_heads, 4, head_dim, head_dim).permute(0, 3, 1, 2)
        bias = bias.reshape(4, num_heads, head_dim).permute(1, 0, 2)
    else:
        raise ValueError(f"unknown sLSTM backend layout {layout!r} (expected 'cuda' or 'vanilla')")
    return kernel.contiguous(), bias.contiguous()


# Official-xlstm names of an mLSTM cell's parameters; our mLSTM layer holds them directly.
_MLSTM_CELL_PARAMETERS = ("igate.weight", "igate.bias", "fgate.weight", "fgate.bias", "outnorm.weight", "outnorm.bias")


def xlstm_block_state(
    state: Mapping[str, torch.Tensor], prefix: str, is_slstm: bool, slstm_layout: str | None, slstm_heads: int | None = None
) -> dict[str, torch.Tensor]:
    """One block's parameters under our names (relative to the block), from a state dict with
    official-`xlstm` names under `prefix` (e.g. "xlstm_block_stack.blocks.0.").

    The only changes: an mLSTM cell's gates and norm move up into the layer; an sLSTM cell's
    recurrent kernel and bias are read from `slstm_layout` (see `slstm_cell_from_internal`); and
    the sLSTM's `igate`/`fgate` projections swap names, since the reference computes the input gate
    with `fgate` and the forget gate with `igate`.
    """
    block = {name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)}
    converted = {}
    for name, tensor in block.items():
        if name.startswith("xlstm.mlstm_cell."):
            converted[f"xlstm.{name[len('xlstm.mlstm_cell.'):]}"] = tensor
        elif name.startswith("xlstm.slstm_cell."):
            continue  # converted below, from both tensors at once
        elif is_slstm and name in ("xlstm.igate.weight", "xlstm.fgate.weight"):
            converted["xlstm.fgate.weight" if name == "xlstm.igate.weight" else "xlstm.igate.weight"] = tensor
        else:
            converted[name] = tensor
    if is_slstm:
        kernel_name, bias_name = "xlstm.slstm_cell._recurrent_kernel_", "xlstm.slstm_cell._bias_"
        if kernel_name not in block or bias_name not in block:
            missing = [prefix + n for n in (kernel_name, bias_name) if n not in block]
            raise KeyError(", ".join(missing))
        converted["xlstm.recurrent_kernel"], converted["xlstm.bias"] = slstm_cell_from_internal(
            block[kernel_name], block[bias_name], slstm_layout or "vanilla", slstm_heads or block["xlstm.igate.weight"].shape[0]
        )
    return converted


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
