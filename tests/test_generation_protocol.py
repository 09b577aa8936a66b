"""Generation follows transformers' cache protocol on every version our pins allow.

The recurrent cache is handed to `generate` the way transformers expects any cache to be: either
with the whole prompt (the cache has read its first tokens) or with only the new tokens and an
attention mask over all of them. Every generation path then gives the same tokens on the lowest and
the newest transformers: `GOLDEN` holds what each path sampled once, and `scripts/test_versions.sh`
runs this file on both ends of the range.
"""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from helpers import tiny_model
from transformers import AutoTokenizer, pipeline

import bioxlstm
from bioxlstm.cli import main
from bioxlstm.export import export
from bioxlstm.pretrained import DEFAULT_MODELS_DIRECTORY, load_pretrained
from bioxlstm.tasks.molecules import sample_molecules
from bioxlstm.tasks.sampling import SamplingOptions, sample_continuations

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "fixtures" / "generation_golden.json"
# Set to write GOLDEN anew (after a deliberate change of what the models or the sampler compute).
WRITE_GOLDEN = os.environ.get("BIOXLSTM_WRITE_GOLDEN") == "1"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_cache_reports_the_positions_it_has_read_and_cannot_be_cropped():
    model = tiny_model()
    cache = model(torch.randint(1, 12, (2, 7)), use_cache=True).cache
    assert cache.get_seq_length() == 7 and cache.is_croppable is False and cache.is_compileable is False
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(3)


def test_assisted_decoding_is_refused_in_one_line_since_a_recurrent_state_cannot_roll_back():
    model = tiny_model()
    with pytest.raises(ValueError, match="cannot be cropped"):
        model.generate(torch.randint(1, 12, (1, 5)), assistant_model=tiny_model(), max_new_tokens=3)
    with pytest.raises(ValueError, match="cannot be cropped"):
        model.generate(torch.randint(1, 12, (1, 5)), prompt_lookup_num_tokens=2, max_new_tokens=3)


@pytest.mark.parametrize("variant", [{}, {"position_embedding": "rotary"}])
def test_generate_from_a_given_cache_equals_generating_from_scratch(variant):
    """Both ways transformers lets a caller pass a cache: the whole prompt (the cache read its first
    7 tokens), or the 5 new tokens with a mask over all 12. The cache passed in is left as it was."""
    model = tiny_model(**variant)
    prompt = torch.randint(1, 12, (2, 12))
    options = dict(do_sample=False, max_new_tokens=8, pad_token_id=0)
    expected = model.generate(prompt, **options)
    cache = model(prompt[:, :7], use_cache=True).cache
    before = [t.clone() for t in cache.tensors()]
    whole_prompt = model.generate(prompt, cache=cache, **options)
    new_tokens_only = model.generate(prompt[:, 7:], attention_mask=torch.ones_like(prompt), cache=cache, **options)
    assert torch.equal(whole_prompt, expected)
    assert torch.equal(new_tokens_only, expected[:, 7:])
    assert all(torch.equal(a, b) for a, b in zip(before, cache.tensors()))


def test_an_exported_causal_model_pads_prompts_on_the_left_so_a_batch_generates_as_one_by_one(tmp_path):
    tokenizer = bioxlstm.load_tokenizer("protein")
    model = tiny_model(
        vocab_size=len(tokenizer), domain="protein", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    directory = export(model, tmp_path / "lm", tokenizer)
    exported = AutoTokenizer.from_pretrained(directory)
    assert exported.padding_side == "left"
    prompts = ["MKTAYIAKQRQISF", "MKV", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]
    options = dict(do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    batch = exported(prompts, padding=True, return_tensors="pt")
    together = model.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
    for row, prompt in enumerate(prompts):
        alone = model.generate(**exported([prompt], return_tensors="pt"), **options)[:, -6:]
        assert torch.equal(together[row], alone[0]), prompt


def test_every_bundled_causal_model_pads_on_the_left():
    for name in ("dna", "protein", "chem", "chem-icl"):
        _, tokenizer = load_pretrained(name)
        assert tokenizer.padding_side == "left", name


def test_exported_files_get_the_permissions_of_the_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    directory = export(tiny_model(), tmp_path / "lm", bioxlstm.load_tokenizer("dna"))
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
    assert "model.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_base_model_must_be_a_hub_id_a_bundled_model_or_a_model_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", "--model", "chem-icl", "--output", str(tmp_path / "out"), "--base-model", "notanid"])
    error = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and error.count("\n") == 0 and "'notanid'" in error and "Hub model id" in error
    assert not (tmp_path / "out").exists()
    main(["export", "--model", "chem-icl", "--output", str(tmp_path / "hub"), "--base-model", "someone/chem-xlstm"])
    assert "base_model: someone/chem-xlstm" in (tmp_path / "hub" / "README.md").read_text()


# --- the same tokens on every transformers version -------------------------------------------------


def _chem_samples():
    model, tokenizer = load_pretrained("chem")
    torch.manual_seed(0)
    prompt = torch.tensor([[tokenizer.cls_token_id]])
    samples = sample_continuations(
        model, tokenizer, prompt, 4, [tokenizer.eos_token_id], "smiles",
        SamplingOptions(max_new_tokens=30, temperature=1.0, top_k=None, top_p=None, batch_size=4),
    )  # fmt: skip
    return [sample.tokens for sample in samples]


def _chem_in_context():
    model, tokenizer = load_pretrained("chem-icl")
    torch.manual_seed(0)
    context = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1"]
    # the model's own sampling, as recorded before the SMILES grammar (on by default since) existed
    return sample_molecules(
        model, tokenizer, 3, context=context, unique_valid=False, max_new_tokens=40, seed=0, grammar=False
    ).molecules


def _chem_beam_search():
    model, tokenizer = load_pretrained("chem")
    out = model.generate(
        torch.tensor([[tokenizer.cls_token_id]]), num_beams=3, num_return_sequences=3, do_sample=False,
        max_new_tokens=12, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return out.tolist()


def _protein_pipeline():
    generator = pipeline("text-generation", model=str(DEFAULT_MODELS_DIRECTORY / "protein"), trust_remote_code=True)
    torch.manual_seed(0)
    outputs = generator(["MKT", "MSTNPKPQ"], max_new_tokens=8, do_sample=True)
    return [output[0]["generated_text"] for output in outputs]


def _protein_family(tmp_path):
    output = tmp_path / "family.fasta"
    main(["generate", "--model", "protein", "--context", str(ROOT / "data" / "protmamba_example.a3m"),
          "--context-sequences", "3", "-n", "2", "--max-new-tokens", "20", "--seed", "0", "--output", str(output)])  # fmt: skip
    return output.read_text()


def _protein_inpainting(tmp_path):
    query = tmp_path / "query.fasta"
    query.write_text(">query\nMSTNPKPQRKTKRNTNRRPQDVKFPGGGQIVGGVYLLPRRGPRLGVRATRKTSERSQPRG\n")
    output = tmp_path / "filled.fasta"
    main(["inpaint", "--model", "protein", "--input", str(query), "--span", "11-20", "--span", "31-35",
          "--max-fill-length", "8", "--seed", "0", "--output", str(output)])  # fmt: skip
    return output.read_text()


PATHS = {
    "chem sampling": lambda tmp_path: _chem_samples(),
    "chem in-context": lambda tmp_path: _chem_in_context(),
    "chem beam search": lambda tmp_path: _chem_beam_search(),
    "protein text-generation pipeline": lambda tmp_path: _protein_pipeline(),
    "protein family generation": _protein_family,
    "protein inpainting": _protein_inpainting,
}


@pytest.mark.parametrize("path", PATHS)
def test_every_generation_path_gives_the_recorded_tokens_on_this_transformers_version(path, tmp_path):
    result = PATHS[path](tmp_path)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if WRITE_GOLDEN:
        golden[path] = result
        GOLDEN.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in golden.items()) + "\n}\n")
    assert result == golden[path]

