"""Chem-xLSTM checkpoints converted by `bioxlstm convert` compute what the reference code computes.

The fixtures (tests/fixtures/reference/chem_xlstm/, see its README) are random-weight models built and
saved by the reference's own classes, with the logits its `forward` and `recurrent_step` gave and the
ids its encoding gave; they were written by scripts/reference_fixtures/chem_xlstm.py.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from bioxlstm.convert import ConversionError, convert, detect_format
from bioxlstm.models import BioXLSTMForCausalLM

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "reference" / "chem_xlstm"
CASES = ["xlstm_chembl", "slstm_cuda_layout", "xlstm_icst"]
TOLERANCE = 1e-4
DECODE_AFTER_PREFILL = 12  # steps from a prefill cache; the empty-cache test decodes every position


def expected(case: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / case / "expected.safetensors"), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("converted")
    return {case: convert(FIXTURES / case / "checkpoint", directory / case) for case in CASES}


def load(directory: Path, **overrides) -> BioXLSTMForCausalLM:
    torch.manual_seed(0)
    return BioXLSTMForCausalLM.from_pretrained(directory, **overrides).eval()


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return (ours.float() - theirs.float()).abs().max().item()


def test_the_format_is_detected():
    for case in CASES:
        assert detect_format(FIXTURES / case / "checkpoint") == "chem-xlstm"


@pytest.mark.parametrize("case", CASES)
def test_config_reads_heads_and_slstm_from_the_weights(case, converted):
    arguments = json.loads((FIXTURES / case / "checkpoint" / "init_arguments.json").read_text())
    assert arguments["n_heads"] == 1  # what the reference's `save` always writes
    _, metadata = expected(case)
    config = load(converted[case]).config
    assert config.num_heads == int(metadata["n_heads"])
    slstm_blocks = [i for i, kind in enumerate(config.block_types) if kind == "slstm"]
    assert slstm_blocks == ([1] if metadata["slstm_layout"] == "cuda" else [])
    assert config.vocab_size == arguments["vocab_size"] > len(arguments["token2label"])


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_full_forward(case, converted):
    tensors, _ = expected(case)
    logits = load(converted[case])(tensors["input_ids"]).logits
    assert max_diff(logits, tensors["logits"]) <= TOLERANCE


@pytest.mark.parametrize("chunk_size", [64, 16])
@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_prefill_then_step_by_step(case, chunk_size, converted):
    """Chunkwise prefill of a prefix whose length is no multiple of the chunk, then decoding from its cache."""
    tensors, metadata = expected(case)
    model = load(converted[case], chunk_size=chunk_size)
    ids = tensors["input_ids"]
    for length in json.loads(metadata["prefill_lengths"]):
        assert length % chunk_size
        out = model(ids[:, :length], use_cache=True)
        assert max_diff(out.logits, tensors[f"prefill_{length}"]) <= TOLERANCE
        cache, steps = out.cache, []
        end = min(length + DECODE_AFTER_PREFILL, ids.shape[1])
        for t in range(length, end):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits[:, -1])
        assert max_diff(torch.stack(steps, dim=1), tensors["step_logits"][:, length:end]) <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_step_by_step_decoding_from_an_empty_cache(case, converted):
    tensors, _ = expected(case)
    model = load(converted[case])
    ids, cache, steps = tensors["input_ids"], None, []
    for t in range(ids.shape[1]):
        out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits[:, -1])
    assert max_diff(torch.stack(steps, dim=1), tensors["step_logits"]) <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_tokenizer_encodes_to_the_reference_ids(case, converted):
    """[BEG] + the reference segmentation + [END] (appended, as scoring does), for real SMILES with
    bracket atoms, and for stereo, backslash, Cs and %nn cases (`EXTRA_TOKENIZER_SMILES`)."""
    tensors, metadata = expected(case)
    tokenizer = AutoTokenizer.from_pretrained(converted[case])
    smiles = json.loads(metadata["tokenizer_smiles"])
    reference = tensors["tokenizer_ids"].split(tensors["tokenizer_lengths"].tolist())
    assert len(smiles) == len(reference) >= 2
    for text, ids in zip(smiles, reference):
        assert tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] == ids.tolist(), text
    assert tokenizer.pad_token_id == 0
    assert tokenizer.decode(tokenizer(smiles[0])["input_ids"], skip_special_tokens=True) == smiles[0]


def test_padded_batch_matches_the_reference_input_ids(converted):
    tensors, metadata = expected("xlstm_chembl")
    tokenizer = AutoTokenizer.from_pretrained(converted["xlstm_chembl"])
    texts = json.loads(metadata["inputs"])
    rows = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    width = max(map(len, rows))
    padded = [row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows]
    assert padded == tensors["input_ids"].tolist()


def test_in_context_prompt_is_the_icst_encoding(converted):
    """The ICST model reads `.`-joined molecules; our in-context sampler writes the same ids."""
    from bioxlstm.tasks.molecules import generate_molecules, in_context_prompt

    tensors, metadata = expected("xlstm_icst")
    tokenizer = AutoTokenizer.from_pretrained(converted["xlstm_icst"])
    text = json.loads(metadata["inputs"])[0]
    molecules = text.split(".")
    prompt_ids = [tokenizer.cls_token_id] + tokenizer(in_context_prompt(molecules[:-1]), add_special_tokens=False)["input_ids"]
    assert prompt_ids == tensors["input_ids"][0, : len(prompt_ids)].tolist()
    generated = generate_molecules(load(converted["xlstm_icst"]), tokenizer, molecules[:2], n=2, max_new_tokens=20, seed=0)
    assert len(generated) == 2 and all("." not in smiles for smiles in generated)


def test_generation_can_sample_bracket_atoms(converted):
    """Brackets, H and two-letter elements are separate tokens of this vocabulary; generation must
    not suppress them (only [PAD], [BEG] and the unused rows)."""
    from bioxlstm.tokenization import sequence_token_ids

    tokenizer = AutoTokenizer.from_pretrained(converted["xlstm_chembl"])
    allowed = {tokenizer.convert_ids_to_tokens(i) for i in sequence_token_ids(tokenizer, "smiles")}
    assert {"[", "]", "H", "+", "Br", "Cl"} <= allowed
    assert not {"[PAD]", "[BEG]", "[END]"} & allowed and not any(t.startswith("<unused") for t in allowed)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_cli_generate_on_a_converted_model(converted):
    result = run("generate", "--model", str(converted["slstm_cuda_layout"]), "-n", "3", "--max-new-tokens", "30", "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.strip()]) >= 3


def test_cli_score_is_the_reference_log_likelihood(converted, tmp_path):
    """`bioxlstm score` of [BEG] + SMILES + [END] against the log-probabilities of the reference's logits."""
    tensors, metadata = expected("xlstm_chembl")
    smiles = json.loads(metadata["inputs"])[0]
    ids = tensors["input_ids"][0]
    length = int((ids != 0).sum())
    log_probs = torch.log_softmax(tensors["logits"][0, : length - 1].double(), dim=-1)
    reference = log_probs.gather(-1, ids[1:length, None]).sum().item()
    (tmp_path / "one.smi").write_text(smiles + "\n")
    result = run("score", "--model", str(converted["xlstm_chembl"]), "--input", str(tmp_path / "one.smi"), "--json")
    assert result.returncode == 0, result.stderr
    (score,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert score["log_likelihood"] == pytest.approx(reference, abs=1e-3)


def reference_log_likelihoods(input_ids: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chem-xLSTM's `compute_molecule_loglikelihoods` on [BEG] + SMILES + [END] rows: every token
    after [BEG] predicted, [END] included; [PAD] targets (padding, and tokens outside its vocabulary,
    which it encodes as [PAD]) left out of the sum and the count. It reports the mean; the sum and
    the count are returned here."""
    targets = input_ids[:, 1:]
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1).gather(-1, targets[..., None])[..., 0]
    counted = targets != 0
    return (log_probs * counted).sum(dim=1), counted.sum(dim=1)


@pytest.mark.parametrize("case", CASES)
def test_score_is_the_reference_log_likelihood_of_every_input(case, converted):
    from bioxlstm.io import Record
    from bioxlstm.tasks.likelihood import score_records

    tensors, metadata = expected(case)
    reference, counted = reference_log_likelihoods(tensors["input_ids"], tensors["logits"])
    tokenizer = AutoTokenizer.from_pretrained(converted[case])
    records = [Record(str(i), smiles) for i, smiles in enumerate(json.loads(metadata["inputs"]))]
    scores = list(score_records(load(converted[case]), tokenizer, records))
    assert [s.log_likelihood for s in scores] == pytest.approx(reference.tolist(), abs=1e-3)
    assert [s.perplexity for s in scores] == pytest.approx((-reference / counted).exp().tolist(), rel=1e-4)


def test_score_leaves_out_tokens_outside_the_vocabulary_as_the_reference_does(converted):
    """The reference encodes an unknown token as [PAD] and its mask drops that target; the model's
    logits are the reference's (the parity tests above), so its rule applies to them."""
    from bioxlstm.io import Record
    from bioxlstm.tasks.likelihood import score_records

    model, tokenizer = load(converted["xlstm_chembl"]), AutoTokenizer.from_pretrained(converted["xlstm_chembl"])
    smiles = "C[Si](C)(C)OC1CC[Sn]CC1"
    ids = torch.tensor([tokenizer(smiles)["input_ids"] + [tokenizer.eos_token_id]])
    assert (ids == tokenizer.pad_token_id).sum() == 1  # Si is not in this vocabulary (Sn reads as S, n)
    with torch.no_grad():
        reference, counted = reference_log_likelihoods(ids, model(ids).logits)
    (score,) = score_records(model, tokenizer, [Record("organosilicon", smiles)])
    # Scoring reads with a cache, the reference without: fp32 logits that differ in their last bits,
    # a few 1e-6 over the sum. A target counted or dropped wrongly would move it by a whole log p.
    assert score.log_likelihood == pytest.approx(reference.item(), abs=1e-5)
    assert score.perplexity == pytest.approx(math.exp(-reference.item() / counted.item()), rel=1e-6)


def test_a_checkpoint_of_another_model_class_is_refused(tmp_path):
    source = tmp_path / "gpt"
    source.mkdir()
    arguments = json.loads((FIXTURES / "xlstm_chembl" / "checkpoint" / "init_arguments.json").read_text())
    arguments["model_class"] = "<class 'chemxlstm.model.GPTModel'>"
    (source / "init_arguments.json").write_text(json.dumps(arguments))
    (source / "model.pt").write_bytes((FIXTURES / "xlstm_chembl" / "checkpoint" / "model.pt").read_bytes())
    with pytest.raises(ConversionError, match="not a Chem-xLSTM xLSTM model"):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
