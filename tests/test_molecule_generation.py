"""Molecule generation: one prefill per in-context call, the state copied per sample, sampling until
enough valid unique molecules exist (or the draw limit says why not), and the in-context protocol."""

import gzip
import random
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

import bioxlstm
from bioxlstm.chem import canonicalize, is_valid
from bioxlstm.tasks.molecules import domain_molecules, in_context_prompt
from bioxlstm.tasks.sampling import SamplingOptions

ROOT = Path(__file__).resolve().parents[1]
CHEMBL_TRAIN = ROOT / "data" / "chembl31_train_50k.smi.gz"
ICST = ROOT / "data" / "icst_valid_50_domains.txt.gz"


def chembl_molecules(count: int) -> list[str]:
    with gzip.open(CHEMBL_TRAIN, "rt") as handle:
        return [line.strip() for line, _ in zip(handle, range(count))]


@pytest.fixture(scope="module")
def tokenizer():
    return bioxlstm.load_tokenizer("smiles")


@pytest.fixture(scope="module")
def untrained(tokenizer):
    torch.manual_seed(0)
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_heads=2, slstm_layers=[1],
        chunk_size=16, pad_token_id=tokenizer.pad_token_id, kernel="native",
    )  # fmt: skip
    model = bioxlstm.BioXLSTMForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def memorised(tokenizer):
    """A tiny model trained until it has learned 16 real ChEMBL molecules by heart: most of its
    samples are valid, and they hold about as many distinct molecules as it has learned."""
    torch.manual_seed(0)
    molecules = sorted(chembl_molecules(2000), key=len)[200:216]
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_heads=2, slstm_layers=[],
        chunk_size=16, pad_token_id=tokenizer.pad_token_id, kernel="native",
    )  # fmt: skip
    model = bioxlstm.BioXLSTMForCausalLM(config)
    rows = [
        [tokenizer.cls_token_id] + tokenizer(smiles, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for smiles in molecules
    ]
    ids = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
    mask = (ids != tokenizer.pad_token_id).long()
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(50):
        loss = model(ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# --- the recurrent state, copied -----------------------------------------------------------------


def test_repeat_interleave_copies_each_row_and_keeps_the_original(untrained):
    tokens = torch.randint(5, 60, (2, 21))
    with torch.no_grad():
        cache = untrained(tokens, use_cache=True).cache
    before = [tensor.clone() for tensor in cache.tensors()]
    repeated = cache.repeat_interleave(3)
    assert repeated is not cache and repeated.seen_tokens == cache.seen_tokens == 21
    for original, copied, kept in zip(cache.tensors(), repeated.tensors(), before):
        assert copied.shape[0] == 3 * original.shape[0]
        assert torch.equal(copied, original.repeat_interleave(3, dim=0))
        assert torch.equal(original, kept)
    # Each copy continues exactly like the state it was copied from.
    step = torch.randint(5, 60, (2, 1))
    with torch.no_grad():
        alone = untrained(step, cache=cache, use_cache=True).logits
        copies = untrained(step.repeat_interleave(3, dim=0), cache=repeated, use_cache=True).logits
    assert torch.allclose(copies, alone.repeat_interleave(3, dim=0), atol=1e-5)


# --- in-context generation -------------------------------------------------------------------------


def test_the_in_context_prompt_is_a_permutation_of_the_examples_each_followed_by_a_dot():
    examples = chembl_molecules(6)
    prompt = in_context_prompt(examples, random.Random(0))
    assert prompt.endswith(".")
    assert sorted(prompt[:-1].split(".")) == sorted(examples)
    assert prompt != in_context_prompt(examples)  # the order is drawn, not kept
    assert in_context_prompt(examples, random.Random(0)) == prompt


def test_the_bundled_tokenizer_has_a_token_for_the_molecule_separator(tokenizer):
    domain = gzip.open(ICST, "rt").readline().strip()
    tokens = tokenizer.tokenize(domain)
    assert tokens.count(".") == domain.count(".")


def test_a_vocabulary_without_the_separator_samples_unconditionally_but_refuses_a_context(untrained, tokenizer):
    vocab = {token: index for token, index in tokenizer.get_vocab().items() if token != "."}
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.model = models.WordLevel(vocab, unk_token="<unk>")
    stripped = PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer.special_tokens_map)
    assert stripped.convert_tokens_to_ids(".") == stripped.unk_token_id
    sample = bioxlstm.sample_molecules(untrained, stripped, 4, unique_valid=False, max_new_tokens=10, seed=0)
    assert len(sample.molecules) == 4
    with pytest.raises(ValueError, match="no token for the molecule separator '.': its model cannot read molecules"):
        bioxlstm.generate_molecules(untrained, stripped, chembl_molecules(2), n=2, max_new_tokens=10)


def _record_backbone_inputs(model):
    calls = []
    handle = model.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    return calls, handle


@pytest.mark.parametrize("k", [1, 5])
def test_in_context_generation_prefills_the_context_once_and_continues_it_like_the_full_prompt(untrained, tokenizer, k):
    context = chembl_molecules(4)
    calls, handle = _record_backbone_inputs(untrained)
    try:
        samples = bioxlstm.generate_molecules(
            untrained, tokenizer, context, n=k, top_k=1, max_new_tokens=12, seed=3, batch_size=2
        )
    finally:
        handle.remove()
    prefill, steps = calls[0], calls[1:]
    prompt = in_context_prompt(context, random.Random(3))
    prompt_ids = [tokenizer.cls_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # Once, for any k and over several batches: one row, all but the last token.
    assert prefill.tolist() == [prompt_ids[:-1]]
    assert all(step.shape[0] <= 2 and step.shape[1] == 1 for step in steps)  # then one token per sample and step
    assert len(samples) == k and len(set(samples)) == 1  # top_k=1 is greedy: every copy agrees

    dot, eos = tokenizer.convert_tokens_to_ids("."), tokenizer.eos_token_id
    suppressed = [i for i in tokenizer.all_special_ids if i != eos]
    full = untrained.generate(
        torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12, eos_token_id=[dot, eos],
        pad_token_id=tokenizer.pad_token_id, suppress_tokens=suppressed,
    )[0, len(prompt_ids) :].tolist()  # fmt: skip
    end = next((i for i, token in enumerate(full) if token in (dot, eos)), len(full))
    assert samples[0] == tokenizer.decode(full[:end])


def test_a_context_molecule_that_is_not_smiles_is_refused_by_its_position(untrained, tokenizer):
    with pytest.raises(ValueError, match=r"^context molecule 2 \('CC!O'\): character '!' at position 3"):
        bioxlstm.generate_molecules(untrained, tokenizer, ["CCO", "CC!O"], n=1)


# --- unconditional sampling until enough valid unique molecules exist ---------------------------


def test_sampling_until_n_valid_unique_molecules_returns_them_canonical_with_a_report(memorised, tokenizer):
    sample = bioxlstm.sample_molecules(memorised, tokenizer, 8, max_draws=64, batch_size=8, seed=0, max_new_tokens=40)
    assert len(sample.molecules) == 8 and len(set(sample.molecules)) == 8
    assert all(canonicalize(smiles) == smiles for smiles in sample.molecules)
    report = sample.report
    assert not report.cap_reached and report.unique >= 8
    assert report.requested == 8 and 8 <= report.drawn <= 64 and report.drawn % 8 == 0
    assert report.unique <= report.valid <= report.drawn


def test_sampling_stops_at_the_draw_limit_and_says_it_returned_fewer(memorised, tokenizer):
    sample = bioxlstm.sample_molecules(memorised, tokenizer, 40, max_draws=48, batch_size=16, seed=0, max_new_tokens=40)
    report = sample.report
    assert report.drawn == 48 and report.cap_reached
    assert len(sample.molecules) == report.unique < 40
    assert "only" in str(report) and "draw limit" in str(report)


def test_raw_samples_keep_invalid_and_repeated_molecules_and_are_reproducible(untrained, tokenizer):
    first = bioxlstm.sample_molecules(
        untrained, tokenizer, 12, unique_valid=False, batch_size=5, seed=7, max_new_tokens=15, temperature=1.2, top_p=0.95
    )
    again = bioxlstm.sample_molecules(
        untrained, tokenizer, 12, unique_valid=False, batch_size=5, seed=7, max_new_tokens=15, temperature=1.2, top_p=0.95
    )
    assert first.molecules == again.molecules and len(first.molecules) == 12
    assert first.report.drawn == 12 and first.report.valid == sum(map(is_valid, first.molecules))
    assert not any(token in smiles for smiles in first.molecules for token in ("<", ">"))


def test_sampling_options_as_one_object_sample_what_the_same_keywords_sample(untrained, tokenizer):
    options = SamplingOptions(batch_size=5, seed=7, max_new_tokens=15, temperature=1.2, top_p=0.95)
    as_object = bioxlstm.sample_molecules(untrained, tokenizer, 12, unique_valid=False, sampling=options)
    as_keywords = bioxlstm.sample_molecules(untrained, tokenizer, 12, unique_valid=False, **asdict(options))
    assert as_object.molecules == as_keywords.molecules
    # A keyword overrides the object's field of that name.
    reseeded = bioxlstm.sample_molecules(untrained, tokenizer, 12, unique_valid=False, sampling=replace(options, seed=0), seed=7)
    assert reseeded.molecules == as_object.molecules
    with pytest.raises(TypeError, match="temprature"):
        bioxlstm.generate_molecules(untrained, tokenizer, n=2, temprature=0.5)


def test_a_draw_limit_below_n_is_refused(untrained, tokenizer):
    with pytest.raises(ValueError, match=r"max_draws \(3\) must be at least n \(5\)"):
        bioxlstm.sample_molecules(untrained, tokenizer, 5, max_draws=3)


# --- the in-context protocol ------------------------------------------------------------------------


def test_in_context_protocol_compares_with_the_rest_of_each_domain(memorised, tokenizer):
    # The first 40 molecules of a real domain keep the FCD computations short.
    domain = ".".join(domain_molecules(gzip.open(ICST, "rt").readline())[:40])
    (result,) = bioxlstm.evaluate_in_context(memorised, tokenizer, [domain], n_context=3, n_generate=6, max_new_tokens=40)
    assert result.context == 3 and result.reference == 37
    assert result.valid_unconditional >= 2 and result.fcd_unconditional > 0
    assert 0 <= result.valid_in_context <= 6


def test_a_domain_too_small_for_its_context_is_refused(untrained, tokenizer):
    with pytest.raises(ValueError, match=r"^domain 1 holds 3 molecules: too few for 2 in context"):
        bioxlstm.evaluate_in_context(untrained, tokenizer, ["CCO.CCN.CCC"], n_context=2)
