"""Regenerate the Chem-xLSTM parity fixtures (tests/fixtures/reference/chem_xlstm/) with the reference code.

Needs a checkout of ml-jku/Chem-xLSTM and a Python in which it imports, with the `xlstm` version it
was written against (1.0.8; our own environment has xlstm 2.x, whose sLSTM and config differ):

    python -m venv .venv-chem-xlstm --system-site-packages
    .venv-chem-xlstm/bin/pip install xlstm==1.0.8 omegaconf dacite opt_einsum einops scikit-learn pandas
    .venv-chem-xlstm/bin/python scripts/reference_fixtures/chem_xlstm.py --reference /path/to/Chem-xLSTM

Every model is built by the reference's own classes (`xLSTMforNTP`, `sLSTMforNTP`), given a vocabulary
the way its training does (`learn_label_encoding` over `[BEG]` + `segment_smiles` + `[END]`), moved
away from its initialisation, and written by its own `save` (model.pt + init_arguments.json, with the
`n_heads: 1` that `save` always writes). Inputs are encoded with the reference's functions; logits come
from its `forward` (full and on prefixes) and its `recurrent_step` (one token at a time from an
empty state). The reference hard-codes the sLSTM `cuda` backend, which cannot run on a CPU: the cell
is computed with the `vanilla` backend, and the checkpoint then stores the cell's parameters in the
`cuda` internal layout, converted with xlstm's own ext2int/int2ext, as a GPU-trained model holds them.
Only tensors go into expected.safetensors (no pickles in test data).
"""

import argparse
import dataclasses
import gzip
import json
import shutil
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
CHEMBL = ROOT / "data" / "chembl31_valid_50k.smi.gz"

# Shapes of the published models scaled down: Chem-xLSTM-14.8M is 9 mLSTM blocks of width 512 with
# 8 heads and vocab_size 37 for sequence_length 100; the ICST model the same with vocab_size 100 and
# sequence_length 2048, trained from scratch on the ICST data (so its token ids are its own).
CASES = {
    "xlstm_chembl": dict(model_class="xLSTMforNTP", model_dim=64, n_layers=3, n_heads=4, vocab_size=37, sequence_length=100),
    "slstm_cuda_layout": dict(model_class="sLSTMforNTP", model_dim=64, n_layers=3, n_heads=4, vocab_size=40, sequence_length=100),
    "xlstm_icst": dict(model_class="xLSTMforNTP", model_dim=64, n_layers=2, n_heads=2, vocab_size=100, sequence_length=2048),
}
PREFILL_LENGTHS = {"xlstm_chembl": [5, 37], "slstm_cuda_layout": [7, 45], "xlstm_icst": [23, 131]}


def _cpu_slstm_backend():
    """The reference configures `backend: cuda`; on a CPU build the same cell with the vanilla backend."""
    from xlstm.blocks.slstm import cell as slstm_cell

    original = slstm_cell.sLSTMCell.__new__

    def new(cls, config, skip_backend_init=False):
        if config.backend == "cuda":
            config = dataclasses.replace(config, backend="vanilla")
        return original(cls, config, skip_backend_init=skip_backend_init)

    slstm_cell.sLSTMCell.__new__ = new


def _chembl(count: int) -> list[str]:
    with gzip.open(CHEMBL, "rt") as handle:
        return [line.split()[0] for _, line in zip(range(count), handle) if line.strip()]


def _icst(reference: Path, count: int) -> list[str]:
    with zipfile.ZipFile(reference / "data" / "icst" / "valid.zip") as archive:
        lines = archive.read(archive.namelist()[0]).decode().splitlines()
    return lines[:count]


# Not in the ChEMBL file (its SMILES carry no stereochemistry): chirality, a backslash bond (the
# reference's pattern matches only a double backslash, so `findall` drops a single one), two-letter
# elements in and out of brackets, Cs (matched only inside brackets) and %nn ring closures.
EXTRA_TOKENIZER_SMILES = ["C[C@@H](N)C(=O)O", "F/C=C\\Cl", "[Cs+].[Na+].[Cl-]", "C[Si](C)(C)OC1CC[Sn]CC1", "C%10CCCCC%10"]


def _tokenizer_smiles(molecules: list[str]) -> list[str]:
    """Real SMILES whose tokenization is tricky: bracket atoms (charges, explicit H, isotopes),
    two-letter elements, %nn ring closures."""
    wanted = ["[nH]", "[N+](=O)[O-]", "[n+]", "[S+]", "[2H]", "[18F]", "[11CH3]", "[PH]", "[C-]", "%1", "Br", "Cl"]
    chosen = []
    for marker in wanted:
        found = next((m for m in molecules if marker in m and m not in chosen), None)
        if found:
            chosen.append(found)
    return chosen


def _perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    # Away from the initialisation, where zero norm weights and constant gate biases could hide
    # a misplaced parameter; small enough that exponential gates stay finite.
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.15 * torch.randn(parameter.shape, generator=generator))


def build_case(name: str, spec: dict, reference: Path, output: Path, chembl: list[str]) -> None:
    from chemxlstm import model as reference_model, smiles_utils

    torch.manual_seed(sum(map(ord, name)))
    generator = torch.Generator().manual_seed(sum(map(ord, name)) + 1)
    if name == "xlstm_icst":
        corpus = _icst(reference, 40)
        inputs = [".".join(line.split(".")[:k]) for line, k in zip(corpus[:2], (4, 3))]
    else:
        corpus = chembl[:20000]
        inputs = _tokenizer_smiles(chembl)[:4]
    # As create_dataloader learns the vocabulary of a training run.
    tokenized_corpus = [["[BEG]"] + smiles_utils.segment_smiles(s) + ["[END]"] for s in corpus]
    token2label = smiles_utils.learn_label_encoding(tokenized_corpus)
    if name == "xlstm_icst":
        vocab_size = spec["vocab_size"]
    else:
        vocab_size = max(spec["vocab_size"], len(token2label) + 3)
    assert vocab_size > len(token2label), "the published models have unused vocabulary rows; so must the fixture"

    cls = getattr(reference_model, spec["model_class"])
    instance = cls(
        mode="smiles", model_dim=spec["model_dim"], state_dim=64, n_layers=spec["n_layers"], n_heads=spec["n_heads"],
        dropout=0.25, vocab_size=vocab_size, sequence_length=spec["sequence_length"], device="cpu",
    )  # fmt: skip
    instance.token2label = token2label
    instance.label2token = {v: k for k, v in token2label.items()}
    net = instance.model
    _perturb(net, generator)
    net.eval()

    tokenized = [["[BEG]"] + smiles_utils.segment_smiles(s) + ["[END]"] for s in inputs]
    length = max(map(len, tokenized))
    padded = smiles_utils.pad_sequences(tokenized, length, padding_value="[PAD]")
    input_ids = torch.tensor([[token2label.get(t, 0) for t in row] for row in padded], dtype=torch.long)

    tensors = {"input_ids": input_ids}
    with torch.no_grad():
        tensors["logits"] = net(input_ids).float().contiguous()
        for prefix in PREFILL_LENGTHS[name]:
            tensors[f"prefill_{prefix}"] = net(input_ids[:, :prefix]).float().contiguous()
        net.reset_state(input_ids.shape[0], device="cpu")
        steps = [net.recurrent_step(input_ids[:, t]) for t in range(input_ids.shape[1])]
        tensors["step_logits"] = torch.stack(steps, dim=1).float().contiguous()

    # Tokenizer parity: several real SMILES, each encoded the reference way (ids concatenated).
    token_smiles = inputs if name == "xlstm_icst" else _tokenizer_smiles(chembl) + EXTRA_TOKENIZER_SMILES
    encoded = [[token2label.get(t, 0) for t in ["[BEG]"] + smiles_utils.segment_smiles(s) + ["[END]"]] for s in token_smiles]
    tensors["tokenizer_ids"] = torch.tensor([i for row in encoded for i in row], dtype=torch.long)
    tensors["tokenizer_lengths"] = torch.tensor([len(row) for row in encoded], dtype=torch.long)

    case_dir = output / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    checkpoint = case_dir / "checkpoint"
    if spec["model_class"] == "sLSTMforNTP":
        _store_cuda_layout(net)
    instance.device = "cuda:0"  # as in a real run's init_arguments.json
    instance.save(str(checkpoint))
    metadata = {
        "inputs": json.dumps(inputs),
        "tokenizer_smiles": json.dumps(token_smiles),
        "prefill_lengths": json.dumps(PREFILL_LENGTHS[name]),
        "slstm_layout": "cuda" if spec["model_class"] == "sLSTMforNTP" else "none",
        "n_heads": str(spec["n_heads"]),
    }
    save_file(tensors, str(case_dir / "expected.safetensors"), metadata=metadata)
    print(f"{name}: vocab {vocab_size} (token2label {len(token2label)}), inputs {tuple(input_ids.shape)}")


def _store_cuda_layout(net: torch.nn.Module) -> None:
    """Rewrite every sLSTM cell's kernel and bias into the cuda backend's internal layout, in place
    (after the logits were computed with the vanilla layout)."""
    from xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCell_vanilla

    for module in net.modules():
        if isinstance(module, sLSTMCell_vanilla):
            cuda_cell = sLSTMCell_cuda(dataclasses.replace(module.config, backend="cuda"), skip_backend_init=True)
            with torch.no_grad():
                kernel = cuda_cell._recurrent_kernel_ext2int(module._recurrent_kernel_int2ext(module._recurrent_kernel_.data))
                bias = cuda_cell._bias_ext2int(module._bias_int2ext(module._bias_.data))
                assert kernel.numel() == module._recurrent_kernel_.numel() and bias.numel() == module._bias_.numel()
                module._recurrent_kernel_.data = kernel.contiguous()
                module._bias_.data = bias.contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of ml-jku/Chem-xLSTM")
    parser.add_argument("--output", type=Path, default=ROOT / "tests" / "fixtures" / "reference" / "chem_xlstm")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference.resolve()))
    _cpu_slstm_backend()
    torch.set_num_threads(1)
    chembl = _chembl(20000)
    args.output.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        build_case(name, CASES[name], args.reference, args.output, chembl)


if __name__ == "__main__":
    main()
