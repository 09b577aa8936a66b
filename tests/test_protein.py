"""Prot-xLSTM: positions inside homolog contexts, fill-in-the-middle, and the protein tasks."""

import random
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

import bioxlstm
from bioxlstm.data.protein import (
    IGNORE_INDEX,
    HomologContextCollator,
    fill_in_the_middle,
    sample_spans,
    sentinel_ids,
    undo_fill_in_the_middle,
)
from bioxlstm.models.positions import apply_rotary, rotary_angles, rotation

# --- rotary position embeddings ---------------------------------------------------------------


def rotary_reference(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as complex multiplication: channel i and channel i + DH/2 form one complex
    number, which turns by its angle."""
    half = x.shape[-1] // 2
    pairs = torch.complex(x[..., :half].double(), x[..., half:].double())
    turned = pairs * torch.polar(torch.ones_like(angles.double()), angles.double())[:, None]
    return torch.cat([turned.real, turned.imag], dim=-1)


@pytest.mark.parametrize("with_sequence_index", [False, True])
def test_rotary_matches_the_complex_number_formulation(with_sequence_index):
    x = torch.randn(2, 3, 7, 16)
    positions = torch.randint(0, 500, (2, 7))
    sequence_index = torch.randint(0, 9, (2, 7)) if with_sequence_index else None
    angles = rotary_angles(positions, 16, 10000.0, sequence_index)
    torch.testing.assert_close(apply_rotary(x, rotation(angles)).double(), rotary_reference(x, angles), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_sequence_index", [False, True])
def test_rotary_scores_depend_only_on_position_differences(with_sequence_index):
    q, k = torch.randn(1, 2, 6, 32), torch.randn(1, 2, 6, 32)
    positions = torch.tensor([[1, 2, 3, 40, 41, 42]])
    sequence_index = torch.tensor([[0, 0, 0, 1, 1, 2]]) if with_sequence_index else None

    def scores(shift: int) -> torch.Tensor:
        index = None if sequence_index is None else sequence_index + shift
        angles = rotary_angles(positions + 100 * shift, 32, 10000.0, index)
        return apply_rotary(q, rotation(angles)) @ apply_rotary(k, rotation(angles)).transpose(-1, -2)

    torch.testing.assert_close(scores(0), scores(7), atol=1e-3, rtol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-2)


# --- positions in the model: prefill, decoding, padding -----------------------------------------

# Two homologs and a query with a fill-in-the-middle suffix: positions restart at every <cls>
# (here token 0 plays <cls>) and jump back to a span's start after its sentinel (token 11).
TOKENS = torch.tensor([[0, 5, 6, 7, 8, 0, 5, 9, 7, 0, 5, 11, 8, 11, 6, 7, 2]])
POSITIONS = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 4, 2, 2, 3, 5]])


def rotary_model(**overrides):
    return tiny_model(position_embedding="rotary", **overrides)


@pytest.mark.parametrize("sequence_index", [False, True])
def test_prefill_then_stepwise_decoding_with_position_ids_equals_the_full_forward(sequence_index):
    model = rotary_model(rope_sequence_index=sequence_index)
    with torch.no_grad():
        full = model(TOKENS, position_ids=POSITIONS).logits
        split = 7
        out = model(TOKENS[:, :split], position_ids=POSITIONS[:, :split], use_cache=True)
        logits, cache = [out.logits], out.cache
        for t in range(split, TOKENS.shape[1]):
            out = model(TOKENS[:, t : t + 1], position_ids=POSITIONS[:, t : t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-4, rtol=1e-4)
    # Positions matter: the same tokens numbered 0, 1, 2, ... give other predictions.
    assert not torch.allclose(model(TOKENS).logits, full, atol=1e-3)


def test_without_position_ids_positions_count_on_from_the_cache():
    model = rotary_model()
    with torch.no_grad():
        full = model(TOKENS, position_ids=torch.arange(TOKENS.shape[1])[None]).logits
        prefill = model(TOKENS[:, :9], use_cache=True)
        rest = model(TOKENS[:, 9:], cache=prefill.cache)
    torch.testing.assert_close(torch.cat([prefill.logits, rest.logits], dim=1), full, atol=1e-4, rtol=1e-4)


def test_generate_advances_given_position_ids_and_left_padding_changes_nothing():
    """`generate` continues the numbering of the prompt's last token (the new sequence started by
    the final <cls> counts 1, 2, ...), and a left-padded batch decodes each row as it would alone."""
    model = rotary_model(rope_sequence_index=True)
    prompt, positions = TOKENS[:, :10], POSITIONS[:, :10]
    kwargs = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=1)
    alone = model.generate(prompt, position_ids=positions, attention_mask=torch.ones_like(prompt), **kwargs)
    continued = torch.cat([positions, positions[:, -1:] + torch.arange(1, 6)], dim=1)
    with torch.no_grad():
        full = model(alone.sequences, position_ids=continued).logits[:, 9:-1]
    torch.testing.assert_close(torch.stack(alone.logits, dim=1), full, atol=1e-4, rtol=1e-4)

    short = TOKENS[:, 5:10]  # the last homolog and the query's <cls>, alone in a row
    batch = torch.stack([prompt[0], torch.cat([torch.ones(5, dtype=torch.long), short[0]])])
    mask = (torch.arange(10) >= torch.tensor([[0], [5]])).long()
    padded_positions = torch.stack([positions[0], torch.cat([torch.zeros(5, dtype=torch.long), POSITIONS[0, 5:10]])])
    together = model.generate(batch, attention_mask=mask, position_ids=padded_positions, **kwargs)
    short_alone = model.generate(short, position_ids=POSITIONS[:, 5:10], attention_mask=torch.ones_like(short), **kwargs)
    torch.testing.assert_close(torch.stack(together.logits, 1)[:1], torch.stack(alone.logits, 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(together.logits, 1)[1:], torch.stack(short_alone.logits, 1), atol=1e-4, rtol=1e-4)


def test_repeated_cache_rows_continue_like_the_original():
    model = rotary_model(rope_sequence_index=True)
    with torch.no_grad():
        prefill = model(TOKENS[:, :9], position_ids=POSITIONS[:, :9], use_cache=True)
        repeated = prefill.cache.repeat_interleave(3)
        assert repeated.seen_tokens == prefill.cache.seen_tokens
        assert all(t.shape[0] == 3 for t in repeated.tensors())
        rest = TOKENS[:, 9:].expand(3, -1)
        out = model(rest, position_ids=POSITIONS[:, 9:].expand(3, -1), cache=repeated)
        single = model(TOKENS[:, 9:], position_ids=POSITIONS[:, 9:], cache=prefill.cache)
    torch.testing.assert_close(out.logits, single.logits.expand(3, -1, -1), atol=1e-5, rtol=1e-5)


# --- fill-in-the-middle and homolog contexts on real families ------------------------------------

DATA = Path(__file__).resolve().parents[1] / "data"
FN3 = DATA / "fn3.sto.gz"
PROTMAMBA = DATA / "protmamba_example.a3m"


@pytest.fixture(scope="module")
def tokenizer():
    return bioxlstm.load_tokenizer("protein")


@pytest.fixture(scope="module")
def fn3_family():
    return [record.sequence for record in bioxlstm.io.read_records(FN3, domain="protein")]


def fim_of(tokenizer, sequence, spans):
    residues = tokenizer(sequence, add_special_tokens=False)["input_ids"]
    return residues, fill_in_the_middle(
        tokenizer.cls_token_id, tokenizer.eos_token_id, residues, spans, sentinel_ids(tokenizer)
    )


def test_fim_round_trip_sentinels_and_positions_on_real_sequences(tokenizer, fn3_family):
    rng = random.Random(0)
    sentinels = sentinel_ids(tokenizer)
    for sequence in fn3_family:
        spans = sample_spans(len(sequence), rng, max_spans=5, max_span_length=12)
        assert 1 <= len(spans) <= 5
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), "spans are ordered, disjoint, not touching"
        residues, row = fim_of(tokenizer, sequence, spans)
        assert row.input_ids[0] == tokenizer.cls_token_id and row.input_ids[-1] == tokenizer.eos_token_id
        body = row.input_ids[1:-1]
        assert undo_fill_in_the_middle(body, sentinels) == residues
        # Every sentinel appears twice: once in the sequence, once opening its span in the suffix.
        used = [token for token in body if token in sentinels]
        assert used == sentinels[: len(spans)] * 2
        # Every residue, in the sequence or in the suffix, keeps its original position; a sentinel
        # takes the position of its span's first residue; <eos> follows the last residue.
        original_position = {}
        for token, position in zip(row.input_ids, row.position_ids):
            if token not in sentinels and token != tokenizer.cls_token_id and token != tokenizer.eos_token_id:
                assert residues[position - 1] == token
                original_position.setdefault(position, 0)
                original_position[position] += 1
        assert sorted(original_position) == list(range(1, len(residues) + 1))
        for index, token in enumerate(row.input_ids):
            if token in sentinels:
                assert row.position_ids[index] == spans[sentinels.index(token)][0] + 1
        assert row.position_ids[-1] == len(residues) + 1
        suffix = [i for i, infill in enumerate(row.infill) if infill]
        assert row.input_ids[suffix[0]] == sentinels[0] and suffix[-1] == len(row) - 1


def test_fim_spans_are_reproducible_from_a_seed(fn3_family):
    draw = lambda seed: [sample_spans(len(s), random.Random(seed)) for s in fn3_family]  # noqa: E731
    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_collator_puts_the_query_last_within_the_cap_with_restarting_positions(tokenizer):
    family = [record.sequence for record in bioxlstm.io.read_records(PROTMAMBA, domain="protein")]
    collator = HomologContextCollator(tokenizer, max_tokens=2000, fim_probability=0.0, seed=0)
    batch = collator([{"sequences": family}, {"sequences": family[:3]}])
    cls_id = tokenizer.cls_token_id
    for row in range(2):
        length = int(batch["attention_mask"][row].sum())
        assert length <= 2000
        ids, positions = batch["input_ids"][row, :length], batch["position_ids"][row, :length]
        starts = (ids == cls_id).nonzero().flatten().tolist()
        assert (positions[starts] == 0).all()
        for start, end in zip(starts, starts[1:] + [length]):
            assert positions[start:end].tolist() == list(range(end - start))
        query = tokenizer.decode(ids[starts[-1] :], skip_special_tokens=True)
        assert query == family[0]
        assert ids[-1] == tokenizer.eos_token_id
        homologs = [tokenizer.decode(ids[a:b], skip_special_tokens=True) for a, b in zip(starts, starts[1:])]
        assert set(homologs) <= set(family[1:])
    assert len(family) > 20 and int(batch["attention_mask"][0].sum()) > 2000 - 450, "the cap is filled"
    assert (batch["labels"][1, int(batch["attention_mask"][1].sum()) :] == IGNORE_INDEX).all()


def test_collator_shuffle_is_seeded_and_infill_loss_covers_only_the_suffix(tokenizer, fn3_family):
    feature = [{"sequences": fn3_family}]
    first = HomologContextCollator(tokenizer, max_tokens=600, fim_probability=1.0, loss_on="infill", seed=1)(feature)
    again = HomologContextCollator(tokenizer, max_tokens=600, fim_probability=1.0, loss_on="infill", seed=1)(feature)
    other = HomologContextCollator(tokenizer, max_tokens=600, fim_probability=1.0, loss_on="infill", seed=2)(feature)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["input_ids"], other["input_ids"])
    ids, labels = first["input_ids"][0], first["labels"][0]
    sentinels = sentinel_ids(tokenizer)
    mask_positions = [i for i, token in enumerate(ids.tolist()) if token in sentinels]
    suffix_start = mask_positions[len(mask_positions) // 2]
    assert (labels[:suffix_start] == IGNORE_INDEX).all()
    assert torch.equal(labels[suffix_start:], ids[suffix_start:])


# --- the protein tasks on a real family ----------------------------------------------------------

from bioxlstm.tasks.protein import (  # noqa: E402
    apply_mutant,
    held_out_perplexity,
    identity_to_context,
    load_context,
    sequence_log_likelihoods,
)
from bioxlstm.tokenization import sequence_token_ids  # noqa: E402


def protein_model(tokenizer, **overrides):
    """A small random mLSTM-only protein model with rotary positions (like Prot-xLSTM)."""
    return tiny_model(
        slstm_layers=(),
        vocab_size=len(tokenizer),
        domain="protein",
        position_embedding="rotary",
        chunk_size=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return protein_model(tokenizer)


@pytest.fixture(scope="module")
def family():
    """The ProtMamba example family: the query first, then its homologs."""
    return [record.sequence for record in bioxlstm.io.read_records(PROTMAMBA, domain="protein")]


def test_reusing_the_context_state_gives_the_scores_of_recomputing_it(model, tokenizer, family):
    wildtype = family[0]
    mutants = [f"{wildtype[9]}10A", f"{wildtype[19]}20W:{wildtype[29]}30K", wildtype[:5] + "W" + wildtype[6:], wildtype]
    context = family[1:3]
    assert sum(map(len, context)) > 500
    reused = bioxlstm.score_variants(model, tokenizer, wildtype, mutants, context=context, batch_size=3)
    recomputed = bioxlstm.score_variants(model, tokenizer, wildtype, mutants, context=context, reuse_context_state=False)
    assert max(abs(a - b) for a, b in zip(reused, recomputed)) <= 1e-4
    assert reused[-1] == pytest.approx(0.0, abs=1e-6), "the wild type itself scores 0"
    alone = bioxlstm.score_variants(model, tokenizer, wildtype, mutants[:1])
    assert abs(alone[0] - reused[0]) > 1e-3, "the context changes the score"


def test_a_variant_score_is_the_difference_of_log_likelihoods(model, tokenizer, family):
    wildtype, context = family[0], family[1:2]
    mutant = apply_mutant(wildtype, f"{wildtype[0]}1W")
    assert mutant == "W" + wildtype[1:]
    wt_ll, mutant_ll = sequence_log_likelihoods(model, tokenizer, [wildtype, mutant], context)
    (score,) = bioxlstm.score_variants(model, tokenizer, wildtype, [f"{wildtype[0]}1W"], context=context)
    assert score == pytest.approx(mutant_ll - wt_ll, abs=1e-6)


@pytest.mark.parametrize(
    "code, message",
    [
        ("W3A", "the wild type has V at position 3, not W"),
        ("M1A:V400C", "position 400 is outside the wild type (1..334)"),
        ("M1", "'M1' is neither a substitution like A24C nor a full sequence of length 334"),
        ("MKV", "neither a substitution"),
        ("M1J", "'J' is not an amino acid"),
    ],
)
def test_mutant_codes_that_do_not_match_the_wild_type_are_reported(model, tokenizer, family, code, message):
    assert family[0].startswith("MIV")
    with pytest.raises(ValueError) as error:
        bioxlstm.score_variants(model, tokenizer, family[0], ["M1A", code])
    assert message in str(error.value) and repr(code) in str(error.value)


def test_inpainting_fills_spans_with_amino_acids_and_keeps_the_rest(model, tokenizer, family):
    sequence, spans = family[0][:80], [(10, 18), (40, 44)]
    result = bioxlstm.inpaint(model, tokenizer, sequence, spans, context=family[1:2], max_fill_length=6, seed=0)
    assert result.fill_lengths == [len(fill) for fill in result.fills]
    assert all(length <= 6 for length in result.fill_lengths)
    amino_acids = set(tokenizer.convert_ids_to_tokens(sequence_token_ids(tokenizer, "protein")))
    assert all(set(fill) <= amino_acids for fill in result.fills)
    first, second = result.fills
    assert result.sequence == sequence[:10] + first + sequence[18:40] + second + sequence[44:]
    assert result.log_likelihood < 0 and len(result.finished) == 2
    greedy = [bioxlstm.inpaint(model, tokenizer, sequence, spans, max_fill_length=3, temperature=0) for _ in range(2)]
    assert greedy[0] == greedy[1]


@pytest.mark.parametrize("max_fill_length", [3, 40], ids=["capped", "closed by the model"])
def test_an_inpainting_log_likelihood_is_that_of_its_fill_read_in_the_trained_fim_form(model, tokenizer, family, max_fill_length):
    """The fill is scored where training put it: after the sentinel, which shares the position of
    the span's first residue; with the token that closed it, if the model closed it."""
    sequence, span = family[0][:60], (20, 30)
    result = bioxlstm.inpaint(model, tokenizer, sequence, [span], max_fill_length=max_fill_length, seed=2)
    (finished,) = result.finished
    sentinel = sentinel_ids(tokenizer)[0]
    query = fill_in_the_middle(tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(list(sequence)), [span], [sentinel])
    masked = query.infill.index(True)
    fill = tokenizer.convert_tokens_to_ids(list(result.fills[0])) + ([tokenizer.eos_token_id] if finished else [])
    ids = query.input_ids[:masked] + [sentinel] + fill
    positions = query.position_ids[:masked] + [span[0] + 1] + [span[0] + 1 + i for i in range(len(fill))]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), position_ids=torch.tensor([positions])).logits[0]
    scored = logits[masked : masked + len(fill)].log_softmax(-1)[torch.arange(len(fill)), torch.tensor(fill)].sum()
    assert result.log_likelihood == pytest.approx(scored.item(), abs=1e-3)


def test_family_generation_samples_amino_acids_with_likelihood_and_similarity(model, tokenizer, family):
    members = bioxlstm.generate_family(model, tokenizer, PROTMAMBA, 3, context_sequences=2, max_new_tokens=12, seed=0)
    assert [m.id for m in members] == ["generated_1", "generated_2", "generated_3"]
    amino_acids = set(tokenizer.convert_ids_to_tokens(sequence_token_ids(tokenizer, "protein")))
    for member in members:
        assert set(member.sequence) <= amino_acids and 0 < len(member.sequence) <= 12
        predicted = len(member.sequence) + member.finished
        assert member.perplexity == pytest.approx(torch.tensor(-member.log_likelihood / predicted).exp().item())
        assert (member.max_identity, member.min_hamming) == identity_to_context(member.sequence, family[:2])
    again = bioxlstm.generate_family(model, tokenizer, PROTMAMBA, 3, context_sequences=2, max_new_tokens=12, seed=0)
    assert [m.sequence for m in again] == [m.sequence for m in members]


def test_identity_and_hamming_distance_to_the_context(family):
    query = family[0]
    assert identity_to_context(query, [query, family[1]]) == (1.0, 0)
    changed = query[:50] + ("A" if query[50] != "A" else "G") + query[51:]
    identity, hamming = identity_to_context(changed, [query])
    assert hamming == 1 and identity == pytest.approx(1 - 1 / len(query))
    assert identity_to_context(query, []) == (0.0, None)


def test_context_is_capped_in_whole_sequences(family):
    capped = load_context(PROTMAMBA, max_tokens=1000)
    assert capped == family[: len(capped)]
    assert sum(len(s) + 1 for s in capped) <= 1000 < sum(len(s) + 1 for s in family[: len(capped) + 1])
    assert load_context(PROTMAMBA, max_sequences=2) == family[:2]


def test_held_out_perplexity_is_measured_alone_and_in_context(model, tokenizer, family):
    rows = held_out_perplexity(model, tokenizer, PROTMAMBA, held_out=2, max_context_tokens=600)
    assert len(rows) == 2 and {row.id for row in rows} <= {r.id for r in bioxlstm.io.read_records(PROTMAMBA)}
    for row in rows:
        assert row.perplexity_alone > 1 and row.perplexity_in_context > 1
        assert row.perplexity_alone != pytest.approx(row.perplexity_in_context)
    records = list(bioxlstm.io.read_records(PROTMAMBA))
    named = held_out_perplexity(model, tokenizer, PROTMAMBA, held_out=[2, 5], max_context_tokens=600)
    assert [row.id for row in named] == [records[1].id, records[4].id]  # record numbers, from 1


# --- the command line ------------------------------------------------------------------------------

import pandas as pd  # noqa: E402

from bioxlstm.cli import main  # noqa: E402
from bioxlstm.export import export  # noqa: E402
from bioxlstm.pretrained import load_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def saved(tokenizer, model, tmp_path_factory):
    return str(export(model, tmp_path_factory.mktemp("protein") / "model", tokenizer))


@pytest.fixture
def variant_files(tmp_path, family):
    wildtype = family[0]
    bioxlstm.io.write_records([bioxlstm.io.Record("query", wildtype)], tmp_path / "wt.fasta")
    codes = [f"{wildtype[3]}4A", f"{wildtype[9]}10W:{wildtype[11]}12K", wildtype[:-1] + "W"]
    pd.DataFrame({"mutant": codes, "assay": [0.1, 0.2, 0.3]}).to_csv(tmp_path / "variants.csv", index=False)
    return tmp_path, codes


def test_cli_scores_variants_with_a_homolog_context(saved, variant_files, family):
    directory, codes = variant_files
    common = ["score", "--model", saved, "--wildtype", str(directory / "wt.fasta"), "--mutants",
              str(directory / "variants.csv"), "--context", str(PROTMAMBA), "--max-context-tokens", "700"]
    main([*common, "--output", str(directory / "scores.csv")])
    main([*common, "--no-reuse-context-state", "--output", str(directory / "recomputed.csv")])
    scores, recomputed = pd.read_csv(directory / "scores.csv"), pd.read_csv(directory / "recomputed.csv")
    assert list(scores.columns) == ["mutant", "assay", "score"] and list(scores.mutant) == codes
    assert (scores.score - recomputed.score).abs().max() <= 1e-4
    model, tokenizer = load_pretrained(saved)
    expected = bioxlstm.score_variants(model, tokenizer, family[0], codes, context=PROTMAMBA, max_context_tokens=700)
    assert scores.score.tolist() == pytest.approx(expected, abs=1e-5)


def test_cli_reports_a_bad_mutant_file_in_one_line_and_scores_nothing(saved, variant_files, capsys, family):
    directory, codes = variant_files
    pd.DataFrame({"mutant": [codes[0], "W3A", "M999A"]}).to_csv(directory / "bad.csv", index=False)
    with pytest.raises(SystemExit) as stop:
        main(["score", "--model", saved, "--wildtype", str(directory / "wt.fasta"), "--mutants",
              str(directory / "bad.csv"), "--output", str(directory / "scores.csv")])
    assert stop.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert f"{directory / 'bad.csv'}: line 3: mutant 'W3A'" in error and "1 more rows" in error
    assert not (directory / "scores.csv").exists()


def test_cli_generates_family_members_with_likelihood_and_identity(saved, tmp_path):
    output = tmp_path / "family.fasta"
    main(["generate", "--model", saved, "--context", str(PROTMAMBA), "--context-sequences", "2", "-n", "2",
          "--max-new-tokens", "8", "--seed", "0", "--output", str(output)])
    records = list(bioxlstm.io.read_records(output, domain="protein"))
    assert [r.id for r in records] == ["generated_1", "generated_2"]
    for record in records:
        fields = dict(item.split("=") for item in record.description.split()[1:])
        assert float(fields["log_likelihood"]) < 0 and 0 <= float(fields["max_identity"]) <= 1
        assert set(fields) == {"log_likelihood", "perplexity", "max_identity", "min_hamming", "finished"}


def test_cli_inpaints_spans_given_one_based(saved, tmp_path, family):
    query = family[0][:60]
    bioxlstm.io.write_records([bioxlstm.io.Record("query", query)], tmp_path / "query.fasta")
    main(["inpaint", "--model", saved, "--input", str(tmp_path / "query.fasta"), "--span", "11-20",
          "--max-fill-length", "4", "--seed", "0", "--output", str(tmp_path / "filled.fasta")])
    (record,) = bioxlstm.io.read_records(tmp_path / "filled.fasta", domain="protein")
    length = int(record.description.split("fill_lengths=")[1].split()[0])
    assert record.sequence[:10] == query[:10] and record.sequence[10 + length :] == query[20:]
