"""What every converter relies on: safe reading of checkpoints, the sLSTM layouts of the `xlstm`
backends, and a model directory that appears whole or not at all."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCell_vanilla, sLSTMCellConfig

import bioxlstm
from bioxlstm.convert.common import ConversionError, load_torch_weights
from bioxlstm.models.slstm import slstm_cell_from_internal

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cell_class", [sLSTMCell_vanilla, sLSTMCell_cuda])
def test_slstm_layouts_match_the_backends_own_conversion(cell_class):
    """Each backend stores the same recurrent matrices and biases in its own order; ours is the
    backends' external layout, whatever the backend that wrote the checkpoint."""
    cell = cell_class(sLSTMCellConfig(hidden_size=48, num_heads=3), skip_backend_init=True)
    internal_kernel, internal_bias = torch.randn_like(cell._recurrent_kernel_), torch.randn_like(cell._bias_)
    layout = "cuda" if cell_class is sLSTMCell_cuda else "vanilla"
    kernel, bias = slstm_cell_from_internal(internal_kernel, internal_bias, layout, num_heads=3)
    assert torch.equal(kernel, cell._recurrent_kernel_int2ext(internal_kernel).reshape(3, 16, 4, 16))
    assert torch.equal(bias, cell._bias_int2ext(internal_bias).reshape(3, 4, 16))


def test_the_two_layouts_differ_for_the_same_stored_numbers():
    """Why a converter must know the backend: the sizes agree, so the file alone cannot tell."""
    kernel, bias = torch.randn(3 * 16 * 4 * 16), torch.randn(3 * 4 * 16)
    cuda = slstm_cell_from_internal(kernel, bias, "cuda", 3)
    vanilla = slstm_cell_from_internal(kernel, bias, "vanilla", 3)
    assert not torch.equal(cuda[0], vanilla[0]) and not torch.equal(cuda[1], vanilla[1])


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_load_without_running_pickled_code(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2), "extra": Payload()}, path)
    with pytest.raises(ConversionError, match="model.pt: holds pickled objects other than tensors"):
        load_torch_weights(path)
    assert "pwned" not in capsys.readouterr().out


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.randn(100, 100)}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ConversionError, match="model.pt: not a complete PyTorch checkpoint"):
        load_torch_weights(path)
    path.write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="model.pt: not a complete PyTorch checkpoint"):
        load_torch_weights(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ConversionError, match="model.pt"):
        load_torch_weights(path)


def _cli(*args, cwd=REPOSITORY):
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_convert_refuses_a_directory_of_the_wrong_kind(tmp_path):
    output = tmp_path / "converted"
    result = _cli("convert", REPOSITORY / "data", "--output", output)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "none of the known layouts" in result.stderr
    assert not output.exists()
    result = _cli("convert", tmp_path / "missing", "--output", output)
    assert result.returncode == 1 and "no such directory" in result.stderr
    assert not output.exists()


PROT_XLSTM = REPOSITORY / "tests" / "fixtures" / "reference" / "prot_xlstm" / "homologs"


def _truncate(weights: Path, config: Path) -> None:
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _smuggle_an_object(weights: Path, config: Path) -> None:
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "backbone.payload": Payload()}, weights)


def _widen_the_config(weights: Path, config: Path) -> None:
    import json

    dump = json.loads(config.read_text())
    dump["embedding_dim"] *= 2
    config.write_text(json.dumps(dump))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, "pytorch_model.bin: not a complete PyTorch checkpoint"),
        (_smuggle_an_object, "pytorch_model.bin: holds pickled objects other than tensors"),
        (_widen_the_config, "pytorch_model.bin: the config does not match the weights"),
    ],
)
def test_convert_refuses_a_damaged_checkpoint_in_one_line_and_writes_nothing(tmp_path, damage, message):
    import shutil

    source, output = tmp_path / "checkpoint", tmp_path / "converted"
    shutil.copytree(PROT_XLSTM, source)
    damage(source / "pytorch_model.bin", source / "config.json")
    result = _cli("convert", source, "--output", output)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "pwned" not in result.stdout
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_convert_writes_a_model_directory_and_never_over_an_existing_one(tmp_path):
    from huggingface_hub import ModelCard

    output = tmp_path / "converted"
    result = _cli("convert", PROT_XLSTM, "--output", output)
    assert result.returncode == 0, result.stderr
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in output.iterdir()}
    card = ModelCard.load(output / "README.md")
    assert card.data.license == "apache-2.0" and "Prot-xLSTM" in card.text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left behind

    (output / "notes.txt").write_text("mine")
    result = _cli("convert", PROT_XLSTM, "--output", output)
    assert result.returncode == 1 and "already exists" in result.stderr
    assert (output / "notes.txt").read_text() == "mine"
