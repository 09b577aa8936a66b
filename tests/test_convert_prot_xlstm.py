"""Prot-xLSTM checkpoints convert into our model with the reference's logits.

The fixtures (tests/fixtures/reference/prot_xlstm/, see its README) were written by the reference
code itself (scripts/reference_fixtures/prot_xlstm.py): each case is a directory exactly as
Prot-xLSTM's `save_pretrained` writes it, plus the reference's logits for a homolog context of
several `<cls>`-separated sequences. The reference code is not needed here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

import bioxlstm
from bioxlstm.convert import ConversionError, convert
from bioxlstm.convert import prot_xlstm
from bioxlstm.models import BioXLSTMForCausalLM

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "reference" / "prot_xlstm"
CASES = ["homologs", "wide_heads"]
TOLERANCE = 1e-4


def expected(case: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = FIXTURES / case / "expected.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    return {case: convert(FIXTURES / case, root / case, "prot-xlstm") for case in CASES}


def load(directory: Path, **overrides) -> BioXLSTMForCausalLM:
    return BioXLSTMForCausalLM.from_pretrained(directory, **overrides).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("case", CASES)
def test_full_forward_matches_the_reference_with_positions_computed_from_the_tokens(converted, case):
    tensors, metadata = expected(case)
    model = load(converted[case])
    length = int(metadata["full_length"])
    ids = tensors["input_ids"][:, :length]
    with torch.no_grad():
        computed = model(ids).logits  # no position_ids: the model numbers them from the <cls> tokens
        given = model(ids, position_ids=tensors["position_ids"][:, :length]).logits
    assert max_diff(computed, tensors["logits_full"]) <= TOLERANCE
    assert max_diff(given, tensors["logits_full"]) <= TOLERANCE


def test_positions_matter_so_the_parity_checks_them(converted):
    tensors, metadata = expected("homologs")
    model = load(converted["homologs"])
    length = int(metadata["full_length"])
    with torch.no_grad():
        counting = model(tensors["input_ids"][:, :length], position_ids=torch.arange(length)[None]).logits
    assert max_diff(counting, tensors["logits_full"]) > 0.1


@pytest.mark.parametrize("chunk_size", [64, 16, 7])
@pytest.mark.parametrize("case", CASES)
def test_prefill_at_lengths_off_the_chunk_grid(converted, case, chunk_size):
    tensors, metadata = expected(case)
    model = load(converted[case], chunk_size=chunk_size)
    for length in json.loads(metadata["prefill_lengths"]):
        assert length % chunk_size
        with torch.no_grad():
            logits = model(tensors["input_ids"][:, :length]).logits
        assert max_diff(logits, tensors[f"logits_prefill_{length}"]) <= TOLERANCE, length


@pytest.mark.parametrize("case", CASES)
def test_step_by_step_decoding_after_a_cached_context(converted, case):
    """The reference's chunkwise prefill then its `step`, one token at a time; here our cache, with
    the positions carried in it (the decoded tokens of `homologs` cross a `<cls>`)."""
    tensors, metadata = expected(case)
    model = load(converted[case])
    start, steps = int(metadata["decode_start"]), int(metadata["decode_steps"])
    ids = tensors["input_ids"]
    if case == "homologs":
        assert (ids[0, start : start + steps] == 0).any()
    with torch.no_grad():
        cache = model(ids[:, :start], use_cache=True).cache
        logits = []
        for t in range(start, start + steps):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits)
    assert max_diff(torch.cat(logits, dim=1), tensors["logits_decode"]) <= TOLERANCE


class ForceTokens(LogitsProcessor):
    """Teacher forcing inside `generate`: the next token is always the given one."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens.pop(0)] = 0.0
        return forced


@pytest.mark.parametrize("case", CASES)
def test_generate_decodes_with_the_reference_logits(converted, case):
    """`generate` prefills the prompt and then steps; its raw logits are the reference's step logits."""
    tensors, metadata = expected(case)
    model = load(converted[case])
    start, steps = int(metadata["decode_start"]), int(metadata["decode_steps"])
    ids = tensors["input_ids"]
    prompt = ids[:, : start + 1]  # the last prompt token is the reference's first step
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=steps,
        do_sample=False,
        logits_processor=LogitsProcessorList([ForceTokens(ids[0, start + 1 : start + steps + 1].tolist())]),
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=1,
        eos_token_id=None,
    )
    assert torch.equal(out.sequences[0, : start + steps + 1], ids[0, : start + steps + 1])
    assert max_diff(torch.stack(out.logits, dim=1), tensors["logits_decode"][:, :steps]) <= TOLERANCE


def test_left_padded_batch_numbers_each_row_like_alone(converted):
    tensors, _ = expected("homologs")
    model = load(converted["homologs"])
    short = tensors["input_ids"][:, 22:63]  # from the second <cls>
    long = tensors["input_ids"][:, :63]
    batch = torch.cat([torch.cat([torch.ones(1, 22, dtype=torch.long), short], dim=1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 22, dtype=torch.long), torch.ones_like(short)], dim=1), torch.ones_like(long)])
    with torch.no_grad():
        batched = model(batch, attention_mask=mask).logits
        alone = model(short).logits
        full = model(long).logits
    assert max_diff(batched[0:1, 22:], alone) <= TOLERANCE
    assert max_diff(batched[1:2], full) <= TOLERANCE


def test_cache_rows_carry_their_positions_through_beam_reordering(converted):
    """Row selection and repetition of the cache keep each row's own position count."""
    tensors, _ = expected("homologs")
    model = load(converted["homologs"])
    ids = tensors["input_ids"]
    prompts = [ids[:, :30], ids[:, 22:52]]  # two rows at different positions of their sequence
    with torch.no_grad():
        cache = model(torch.cat(prompts), use_cache=True).cache
        cache.reorder_cache(torch.tensor([1, 0]))
        repeated = cache.repeat_interleave(2)
        step = model(torch.tensor([[5], [5], [5], [5]]), cache=repeated, use_cache=True).logits
        alone = [model(torch.cat([p, torch.tensor([[5]])], dim=1)).logits[:, -1:] for p in prompts]
    # Row 0 read <cls> at 0 and 22 (next position 8); row 1 one sequence from its <cls> (next 30).
    assert repeated.next_positions.tolist() == [30, 30, 8, 8]
    assert max_diff(step[0:2], alone[1].expand(2, -1, -1)) <= TOLERANCE
    assert max_diff(step[2:4], alone[0].expand(2, -1, -1)) <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_the_tokenizer_encodes_the_reference_ids(converted, case):
    tensors, metadata = expected(case)
    tokenizer = AutoTokenizer.from_pretrained(converted[case])
    ids = [i for sequence in json.loads(metadata["sequences"]) for i in tokenizer(sequence)["input_ids"]]
    assert ids == tensors["tokenizer_ids"][0].tolist()
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids(["<mask>", "<mask-1>", "<mask-5>"]) == [32, 33, 37]


def test_converted_directory_names_the_source_and_its_settings(converted):
    directory = converted["homologs"]
    config = json.loads((directory / "config.json").read_text())
    assert config["domain"] == "protein"
    assert config["position_restart_token_id"] == 0 and config["max_position_id"] == 31
    assert (config["rope_pairing"], config["rope_span"], config["rope_gates_read_rotated"]) == ("interleaved", "inner", True)
    card = (directory / "README.md").read_text()
    assert "Prot-xLSTM" in card and "apache-2.0" in card


def test_matches_only_prot_xlstm_directories(tmp_path):
    assert all(prot_xlstm.matches(FIXTURES / case) for case in CASES)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert not prot_xlstm.matches(tmp_path)
    assert not prot_xlstm.matches(tmp_path / "missing")


def copy_fixture(tmp_path: Path, case: str = "homologs") -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (source / name).write_bytes((FIXTURES / case / name).read_bytes())
    return source


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(position_embeddings="rot_2d"), "position_embeddings='rot_2d' is not supported"),
        (lambda c: c.update(position_embeddings="abs_1d"), "position_embeddings='abs_1d' is not supported"),
        (lambda c: c.update(embedding_dim=48), "does not match the weights"),
        (lambda c: c.update(num_blocks=3), "missing"),
        (lambda c: c.update(num_blocks=1), "unknown"),
        (lambda c: c.pop("num_blocks"), "not a Prot-xLSTM model config"),
    ],
)
def test_bad_configs_fail_with_one_line_and_write_nothing(tmp_path, edit, message):
    source = copy_fixture(tmp_path)
    config = json.loads((source / "config.json").read_text())
    edit(config)
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=message) as error:
        convert(source, tmp_path / "out", "prot-xlstm")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_truncated_weights_fail_with_one_line(tmp_path):
    source = copy_fixture(tmp_path)
    data = (source / "pytorch_model.bin").read_bytes()
    (source / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="pytorch_model.bin") as error:
        convert(source, tmp_path / "out", "prot-xlstm")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


# --- the published 26M shape, end to end through the command line ---------------------------------

PUBLISHED_26M = dict(embedding_dim=512, num_blocks=16, num_heads=4, max_position_embeddings=2048)


def reference_format_directory(directory: Path, embedding_dim: int, num_blocks: int, num_heads: int,
                               max_position_embeddings: int, seed: int = 0) -> Path:
    """A directory as Prot-xLSTM's `save_pretrained` writes it (its config dump and state-dict
    names), with random weights, built from the published config alone."""
    inner = -(-2 * embedding_dim // 64) * 64
    mlstm = {
        "proj_factor": 2.0, "round_proj_up_dim_up": True, "round_proj_up_to_multiple_of": 64, "_proj_up_dim": inner,
        "conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "num_heads": num_heads, "embedding_dim": embedding_dim,
        "bias": False, "dropout": 0.0, "context_length": 131072, "backend": "chunkwise", "chunk_size": 1024,
        "return_last_state": False, "_num_blocks": num_blocks, "_inner_embedding_dim": inner,
    }
    config = {
        "mlstm_block": {"mlstm": mlstm}, "context_length": 131072, "num_blocks": num_blocks,
        "embedding_dim": embedding_dim, "add_post_blocks_norm": True, "bias": False, "dropout": 0.0,
        "checkpoint_blocks": True, "_block_map": ",".join("0" * num_blocks), "vocab_size": 38, "tie_weights": False,
        "weight_decay_on_embedding": False, "add_embedding_dropout": False, "position_embeddings": "rot_1d",
        "max_position_embeddings": max_position_embeddings, "max_seq_position_embeddings": 512,
        "rope_base_frequency": 500000,
    }
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape, std):
        return torch.randn(*shape, generator=generator) * std

    std = (2 / (5 * embedding_dim)) ** 0.5
    state = {"backbone.token_embedding.weight": normal(38, embedding_dim, std=std)}
    for i in range(num_blocks):
        p = f"backbone.xlstm_block_stack.blocks.{i}."
        state.update({
            p + "xlstm_norm.weight": normal(embedding_dim, std=0.1),
            p + "xlstm.proj_up.weight": normal(2 * inner, embedding_dim, std=std),
            **{p + f"xlstm.{n}_proj.weight": normal(inner // 4, 4, 4, std=std) for n in "qkv"},
            p + "xlstm.conv1d.conv.weight": normal(inner, 1, 4, std=0.5),
            p + "xlstm.conv1d.conv.bias": normal(inner, std=0.1),
            p + "xlstm.mlstm_cell.igate.weight": normal(num_heads, 3 * inner, std=0.01),
            p + "xlstm.mlstm_cell.igate.bias": normal(num_heads, std=0.1),
            p + "xlstm.mlstm_cell.fgate.weight": normal(num_heads, 3 * inner, std=0.01),
            p + "xlstm.mlstm_cell.fgate.bias": torch.linspace(3.0, 6.0, num_heads),
            p + "xlstm.mlstm_cell.outnorm.weight": normal(inner, std=0.1),
            p + "xlstm.learnable_skip": 1 + normal(inner, std=0.1),
            p + "xlstm.proj_down.weight": normal(embedding_dim, inner, std=std / num_blocks),
        })
    state["backbone.xlstm_block_stack.post_blocks_norm.weight"] = normal(embedding_dim, std=0.1)
    state["backbone.lm_head.weight"] = normal(38, embedding_dim, std=std)
    directory.mkdir(parents=True)
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_published_26m_shape_scores_variants_and_generates_with_context(tmp_path):
    source = reference_format_directory(tmp_path / "protxlstm_26M", **PUBLISHED_26M)
    model_dir = convert(source, tmp_path / "converted")
    model = load(model_dir)
    assert 25e6 < sum(p.numel() for p in model.parameters()) < 27e6
    del model

    context = ROOT / "data" / "protmamba_example.a3m"
    records = list(bioxlstm.io.read_records(context, domain="protein"))
    wildtype = records[0].sequence.replace("-", "").upper()
    (tmp_path / "wt.fasta").write_text(f">wt\n{wildtype}\n")
    mutants = [f"{wildtype[i]}{i + 1}{'A' if wildtype[i] != 'A' else 'G'}" for i in (0, 4, 9)]
    (tmp_path / "m.csv").write_text("mutant\n" + "\n".join(mutants) + "\n")

    scored = run("score", "--model", str(model_dir), "--wildtype", str(tmp_path / "wt.fasta"),
                 "--mutants", str(tmp_path / "m.csv"), "--context", str(context), "--max-context-tokens", "400",
                 "--output", str(tmp_path / "scores.csv"))
    assert scored.returncode == 0, scored.stderr
    table = (tmp_path / "scores.csv").read_text().splitlines()
    assert len(table) == 1 + len(mutants)

    generated = run("generate", "--model", str(model_dir), "--context", str(context), "-n", "2",
                    "--max-new-tokens", "20", "--max-context-tokens", "400", "--seed", "0",
                    "--output", str(tmp_path / "new.fa"))
    assert generated.returncode == 0, generated.stderr
    assert (tmp_path / "new.fa").read_text().count(">") == 2
