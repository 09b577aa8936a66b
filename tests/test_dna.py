"""The DNA members of the suite: bidirectional and reverse-complement equivariant models, the masked
LM and its collator, post-hoc conjoining, classification heads and strand-symmetric scoring.

Inputs are windows of the bundled E. coli genome."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from Bio.Seq import Seq
from helpers import dna_model, ecoli_genome

import bioxlstm
from bioxlstm.data.dna import DNADataCollatorForLanguageModeling
from bioxlstm.models.sequence_ops import reversal_index, reverse_complement
from bioxlstm.tasks.likelihood import rc_invariant_log_likelihood, sequence_log_likelihood

TOKENIZER = bioxlstm.load_tokenizer("dna")
COMPLEMENT = torch.tensor(bioxlstm.complement_map(TOKENIZER))
STACKS = {"mlstm-only": (), "slstm-only": (0, 1, 2), "mixed": (1,)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def genome_ids(length: int, start: int = 100_000, special_tokens: bool = False) -> torch.Tensor:
    return torch.tensor(TOKENIZER(ecoli_genome()[start : start + length], add_special_tokens=special_tokens)["input_ids"])


def padded(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = TOKENIZER.pad({"input_ids": [r.tolist() for r in rows]}, padding_side=side, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def rc(ids: torch.Tensor) -> torch.Tensor:
    """Reverse complement of unpadded rows, written out plainly."""
    return COMPLEMENT[ids.flip(-1)]


def real_rows(out: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    return out[row][mask[row].bool()]


# --- reversal within the valid span -------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_reversal_reverses_each_valid_span_and_is_its_own_inverse(side):
    rows = [genome_ids(n, start=s) for n, s in ((7, 0), (3, 50), (5, 90))]
    ids, mask = padded(rows, side)
    index = reversal_index(mask.bool())
    reversed_ids = ids.gather(1, index)
    for row, seq in enumerate(rows):
        assert torch.equal(real_rows(reversed_ids, mask, row), seq.flip(0))
    assert torch.equal(reversed_ids[~mask.bool()], ids[~mask.bool()])  # padding stays in place
    assert torch.equal(reversed_ids.gather(1, index), ids)


# --- bidirectional ------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_bidirectional_outputs_depend_on_both_sides_causal_only_on_the_past(stack):
    ids = genome_ids(24)[None]
    j = 11
    changed = ids.clone()
    changed[0, j] = COMPLEMENT[changed[0, j]]
    bidirectional = dna_model(slstm_layers=STACKS[stack], bidirectional=True)
    causal = dna_model(bioxlstm.BioXLSTMForCausalLM, slstm_layers=STACKS[stack])
    with torch.no_grad():
        for model, affected_before_j in ((bidirectional, True), (causal, False)):
            difference = (model(ids).logits - model(changed).logits).abs().amax(dim=-1)[0]
            if affected_before_j:
                assert (difference[:j] > 1e-6).all()
            else:
                assert (difference[:j] == 0).all()
            assert (difference[j:] > 1e-6).all()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("stack", ["mlstm-only", "mixed"])
def test_bidirectional_padded_batch_equals_each_sequence_alone(side, stack):
    model = dna_model(slstm_layers=STACKS[stack], bidirectional=True)
    rows = [genome_ids(n, start=s, special_tokens=True) for n, s in ((37, 0), (9, 500), (20, 900))]
    ids, mask = padded(rows, side)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for row, seq in enumerate(rows):
            assert (real_rows(batch, mask, row) - model(seq[None]).logits[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("stack", ["mlstm-only", "slstm-only"])
def test_bidirectional_block_matches_a_plain_two_pass_reference(stack):
    """Block output == x + layer(norm x) + flip(layer(flip(norm x))) (+ feed-forward for sLSTM),
    written with torch.flip on one unpadded sequence, on the same weights."""
    block = dna_model(bioxlstm.BioXLSTMModel, slstm_layers=STACKS[stack], bidirectional=True).blocks[0]
    x = torch.randn(1, 29, 64)
    with torch.no_grad():
        normed = block.xlstm_norm(x)
        expected = x + block.xlstm(normed, None, None)[0] + block.xlstm(normed.flip(1), None, None)[0].flip(1)
        if block.ffn is not None:
            expected = expected + block.ffn(block.ffn_norm(expected))
        assert (block(x)[0] - expected).abs().max() <= 1e-5


def test_rcps_wrapper_matches_a_plain_reference():
    """Wrapped block on [a, b] == [f(a), flip_c(flip_s(f(flip_s(flip_c(b)))))], with torch.flip."""
    wrapped = dna_model(bioxlstm.BioXLSTMModel, slstm_layers=(1,), rcps=True).blocks[1]
    x = torch.randn(2, 23, 64)
    forward_view, rc_half = x.chunk(2, dim=-1)

    def f(h):
        return wrapped.block(h)[0]

    with torch.no_grad():
        expected = torch.cat([f(forward_view), f(rc_half.flip(-1).flip(1)).flip(1).flip(-1)], dim=-1)
        assert (wrapped(x)[0] - expected).abs().max() <= 1e-5


def test_combine_rules_add_and_mean_differ_by_the_update_scale():
    ids = genome_ids(20)[None]
    torch.manual_seed(1)
    added = dna_model(bioxlstm.BioXLSTMModel, bidirectional=True, num_hidden_layers=1, add_post_blocks_norm=False)
    torch.manual_seed(1)
    mean = dna_model(bioxlstm.BioXLSTMModel, bidirectional=True, num_hidden_layers=1, add_post_blocks_norm=False,
                     bidirectional_combine="mean")
    with torch.no_grad():
        embedded = added.embeddings(ids)
        update_add = added(ids).last_hidden_state - embedded
        update_mean = mean(ids).last_hidden_state - embedded
    assert torch.allclose(update_mean, update_add / 2, atol=1e-6)


def test_models_that_see_the_future_refuse_recurrent_decoding():
    for variant in ({"bidirectional": True}, {"rcps": True}, {"conjoin": True}):
        with pytest.raises(ValueError, match="BioXLSTMForCausalLM needs a causal model"):
            dna_model(bioxlstm.BioXLSTMForCausalLM, **variant)
        with pytest.raises(ValueError, match="no recurrent cache"):
            dna_model(bioxlstm.BioXLSTMModel, **variant)(genome_ids(8)[None], use_cache=True)


# --- reverse-complement parameter sharing -------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("stack", STACKS)
def test_rcps_logits_of_the_reverse_complement_are_flipped_and_complement_permuted(stack, bidirectional):
    """logits(rc(x))[t, v] == logits(x)[S-1-t, comp(v)] for any block stack."""
    model = dna_model(slstm_layers=STACKS[stack], rcps=True, bidirectional=bidirectional)
    x = torch.stack([genome_ids(40, start=s) for s in (0, 70_000)])
    with torch.no_grad():
        logits, logits_rc = model(x).logits, model(rc(x)).logits
    assert (logits_rc - logits.flip(1)[..., COMPLEMENT]).abs().max() <= 1e-5
    assert (logits_rc - logits).abs().max() > 1e-2  # the relation is not trivially satisfied


@pytest.mark.parametrize("stack", STACKS)
def test_rcps_hidden_states_satisfy_the_channel_flip_relation(stack):
    """H(rc(x))[t, c] == H(x)[S-1-t, D-1-c] for the embeddings and after every block."""
    model = dna_model(bioxlstm.BioXLSTMModel, slstm_layers=STACKS[stack], rcps=True)
    x = genome_ids(33, start=4000)[None]
    with torch.no_grad():
        states = model(x, output_hidden_states=True).hidden_states
        states_rc = model(rc(x), output_hidden_states=True).hidden_states
    assert len(states) == model.config.num_hidden_layers + 1
    for h, h_rc in zip(states, states_rc):
        assert h.shape[-1] == model.config.hidden_size == 2 * model.config.block_width
        assert (h_rc - h.flip(1).flip(-1)).abs().max() <= 1e-5


@pytest.mark.parametrize("side", ["left", "right"])
def test_rcps_padded_batch_equals_each_sequence_alone_and_stays_equivariant(side):
    model = dna_model(slstm_layers=(1,), rcps=True, bidirectional=True)
    rows = [genome_ids(n, start=s) for n, s in ((30, 0), (11, 300), (19, 600))]
    ids, mask = padded(rows, side)
    rc_ids, _ = padded([rc(r) for r in rows], side)
    with torch.no_grad():
        batch, batch_rc = model(ids, attention_mask=mask).logits, model(rc_ids, attention_mask=mask).logits
        for row, seq in enumerate(rows):
            alone = model(seq[None]).logits[0]
            assert (real_rows(batch, mask, row) - alone).abs().max() <= 1e-5
            assert (real_rows(batch_rc, mask, row) - alone.flip(0)[:, COMPLEMENT]).abs().max() <= 1e-5


def test_rcps_config_needs_an_involutive_complement_map():
    with pytest.raises(ValueError, match="need complement_map"):
        bioxlstm.BioXLSTMConfig(vocab_size=11, rcps=True)
    with pytest.raises(ValueError, match="involution"):
        bioxlstm.BioXLSTMConfig(vocab_size=3, rcps=True, complement_map=[1, 2, 0])
    with pytest.raises(ValueError, match="odd"):
        bioxlstm.BioXLSTMConfig(vocab_size=11, hidden_size=63, rcps=True, complement_map=COMPLEMENT.tolist())


@pytest.mark.parametrize("tie", [False, True])
def test_rcps_masked_lm_save_and_load_round_trip(tmp_path, tie):
    model = dna_model(rcps=True, bidirectional=True, tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, bioxlstm.BioXLSTMForMaskedLM)
    x = genome_ids(25)[None]
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert (loaded.lm_head.weight.data_ptr() == loaded.backbone.embeddings.weight.data_ptr()) == tie


# --- conjoining ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_conjoined_embeddings_of_a_sequence_and_its_reverse_complement_are_equal(side):
    model = dna_model(bioxlstm.BioXLSTMModel, slstm_layers=(1,), bidirectional=True, conjoin=True)
    plain = dna_model(bioxlstm.BioXLSTMModel, slstm_layers=(1,), bidirectional=True)
    rows = [genome_ids(n, start=s) for n, s in ((26, 0), (13, 2000))]
    ids, mask = padded(rows, side)
    rc_ids, _ = padded([rc(r) for r in rows], side)
    with torch.no_grad():
        embedded, embedded_rc = (model(i, attention_mask=mask).last_hidden_state for i in (ids, rc_ids))
        for row, seq in enumerate(rows):
            alone = model(seq[None]).last_hidden_state[0]
            assert (real_rows(embedded, mask, row) - alone).abs().max() <= 1e-5
            assert (real_rows(embedded_rc, mask, row) - alone.flip(0)).abs().max() <= 1e-5
            assert (real_rows(embedded_rc, mask, row).mean(0) - alone.mean(0)).abs().max() <= 1e-5
        # Without conjoining the two strands are embedded differently.
        assert (plain(rc(rows[0])[None]).last_hidden_state.mean(1) - plain(rows[0][None]).last_hidden_state.mean(1)).abs().max() > 1e-3


def test_conjoining_keeps_the_delimiters_a_tokenizer_writes_around_either_strand():
    """`<cls> ACG <eos>` and `<cls> CGT <eos>`, as the tokenizer writes a sequence and its reverse
    complement, get one pooled embedding, and the same token states with the bases reversed."""
    model = dna_model(bioxlstm.BioXLSTMModel, bidirectional=True, conjoin=True,
                      bos_token_id=TOKENIZER.cls_token_id, eos_token_id=TOKENIZER.eos_token_id)  # fmt: skip
    sequence = ecoli_genome()[5000:5040]
    rows = [TOKENIZER(s)["input_ids"] + [TOKENIZER.eos_token_id] for s in (sequence, str(Seq(sequence).reverse_complement()))]
    assert rows[0][0] == rows[1][0] == TOKENIZER.cls_token_id
    with torch.no_grad():
        forward, reverse = (model(torch.tensor([row])).last_hidden_state[0] for row in rows)
    assert (forward.mean(0) - reverse.mean(0)).abs().max() <= 1e-5
    assert (forward[1:-1] - reverse[1:-1].flip(0)).abs().max() <= 1e-5
    assert (forward[[0, -1]] - reverse[[0, -1]]).abs().max() <= 1e-5


# --- masked LM and its collator -----------------------------------------------------------------


def _genome_examples(count: int, length: int) -> list[dict]:
    """Training examples as the data pipeline makes them: `<cls>` + bases + `<eos>`."""
    genome = ecoli_genome()
    examples = [TOKENIZER(genome[i * 997 : i * 997 + length - (i % 5)]) for i in range(count)]
    for example in examples:
        example["input_ids"] = example["input_ids"] + [TOKENIZER.eos_token_id]
        example["attention_mask"] = example["attention_mask"] + [1]
    return examples


def test_mlm_collator_selects_15_percent_of_bases_and_replaces_80_10_10():
    collator = DNADataCollatorForLanguageModeling(TOKENIZER, seed=0)
    examples = _genome_examples(64, 400)
    original, _ = padded([torch.tensor(e["input_ids"]) for e in examples], "right")
    batch = collator(examples)
    ids, labels = batch["input_ids"], batch["labels"]
    special = torch.isin(original, torch.tensor(TOKENIZER.all_special_ids))
    selected = labels != -100
    assert not (selected & special).any()  # delimiters and padding are never selected
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(ids[~selected], original[~selected])  # loss positions are the only changed ones
    assert abs(selected.sum() / (~special).sum() - 0.15) < 0.01
    masked = ids[selected] == TOKENIZER.mask_token_id
    unchanged = ids[selected] == original[selected]
    replaced = ~masked & ~unchanged
    bases = torch.tensor(TOKENIZER.convert_tokens_to_ids(list("ACGT")))
    assert torch.isin(ids[selected][replaced], bases).all()  # random replacements are bases only
    assert abs(masked.float().mean() - 0.8) < 0.02
    # A random base equals the original one time in four: 10% + 10% * 1/4 look unchanged.
    assert abs(unchanged.float().mean() - 0.125) < 0.015
    assert abs(replaced.float().mean() - 0.075) < 0.015


def test_rc_augmentation_reverse_complements_bases_between_fixed_delimiters():
    examples = _genome_examples(4, 30)
    always = DNADataCollatorForLanguageModeling(TOKENIZER, mlm=False, rc_probability=1.0, seed=0)(examples)
    never = DNADataCollatorForLanguageModeling(TOKENIZER, mlm=False, rc_probability=0.0, seed=0)(examples)
    for row, example in enumerate(examples):
        ids = example["input_ids"]
        expected = [ids[0], *rc(torch.tensor(ids[1:-1])).tolist(), ids[-1]]
        assert always["input_ids"][row, : len(ids)].tolist() == expected
        assert never["input_ids"][row, : len(ids)].tolist() == ids
    assert torch.equal(always["labels"][always["attention_mask"].bool()], always["input_ids"][always["attention_mask"].bool()])
    many = _genome_examples(200, 20)
    half = DNADataCollatorForLanguageModeling(TOKENIZER, mlm=False, rc_probability=0.5, seed=0)(many)
    unflipped = DNADataCollatorForLanguageModeling(TOKENIZER, mlm=False)(many)
    flipped = (half["input_ids"] != unflipped["input_ids"]).any(dim=1).float().mean()
    assert 0.4 < flipped < 0.6


def test_mlm_rc_augmentation_keeps_labels_aligned_with_inputs():
    collator = DNADataCollatorForLanguageModeling(TOKENIZER, rc_probability=1.0, seed=0)
    examples = _genome_examples(8, 120)
    batch = collator(examples)
    for row, example in enumerate(examples):
        ids = torch.tensor(example["input_ids"])
        target = torch.cat([ids[:1], rc(ids[1:-1]), ids[-1:]])
        labels = batch["labels"][row, : len(ids)]
        selected = labels != -100
        assert selected.any() and torch.equal(labels[selected], target[selected])
        kept = ~selected
        assert torch.equal(batch["input_ids"][row, : len(ids)][kept], target[kept])


def test_masked_lm_loss_is_cross_entropy_on_selected_positions_only():
    model = dna_model(bidirectional=True)
    batch = DNADataCollatorForLanguageModeling(TOKENIZER, seed=0)(_genome_examples(4, 60))
    out = model(**batch)
    selected = batch["labels"] != -100
    expected = F.cross_entropy(out.logits[selected], batch["labels"][selected])
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_rcps_masked_lm_learns_from_genome_batches_with_the_trainer(tmp_path):
    """The collator (with RC augmentation) feeds the Trainer; a few steps of masked-LM training on
    genome windows lower the held-out masked-LM loss."""
    model = dna_model(rcps=True, bidirectional=True, slstm_layers=(1,), perturb=0.0)
    collator = DNADataCollatorForLanguageModeling(TOKENIZER, rc_probability=0.5, seed=0)
    train = _genome_examples(96, 64)
    held_out = collator([TOKENIZER(ecoli_genome()[3_000_000 + i * 500 : 3_000_000 + i * 500 + 64]) for i in range(32)])
    with torch.no_grad():
        before = model(**held_out).loss
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=15, per_device_train_batch_size=16, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", seed=0, use_cpu=True, disable_tqdm=True,
    )
    transformers.Trainer(model=model, args=args, train_dataset=train, data_collator=collator).train()
    with torch.no_grad():
        after = model.eval()(**held_out).loss
    assert after < before - 0.3


def test_fill_mask_pipeline_ranks_bases_for_a_masked_position():
    model = dna_model(rcps=True, bidirectional=True)
    fill = transformers.pipeline("fill-mask", model=model, tokenizer=TOKENIZER)
    window = ecoli_genome()[10_000:10_040]
    masked = window[:20] + TOKENIZER.mask_token + window[21:]
    predictions = fill(masked, targets=list("ACGT"))
    scores = [p["score"] for p in predictions]
    assert sorted(p["token_str"] for p in predictions) == list("ACGT")
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert [p["sequence"] for p in predictions] == [window[:20] + p["token_str"] + window[21:] for p in predictions]
    assert len(fill(masked, top_k=3)) == 3


# --- classification heads -----------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_classifier_pools_valid_tokens_and_ignores_padding(pooling, side):
    model = dna_model(bioxlstm.BioXLSTMForSequenceClassification, bidirectional=True, pooling=pooling, num_labels=3)
    rows = [genome_ids(n, start=s, special_tokens=True) for n, s in ((21, 0), (8, 3000), (14, 7000))]
    ids, mask = padded(rows, side)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for row, seq in enumerate(rows):
            tokens = model.backbone(seq[None]).last_hidden_state[0]
            pooled = {"mean": tokens.mean(0), "max": tokens.amax(0), "first": tokens[0], "last": tokens[-1]}[pooling]
            assert (batch[row] - model.classifier(pooled)).abs().max() <= 1e-5


@pytest.mark.parametrize("auto_class", ["AutoModelForSequenceClassification", "AutoModelForTokenClassification"])
def test_classifiers_load_with_the_auto_classes(tmp_path, auto_class):
    head = {"AutoModelForSequenceClassification": bioxlstm.BioXLSTMForSequenceClassification,
            "AutoModelForTokenClassification": bioxlstm.BioXLSTMForTokenClassification}[auto_class]
    model = dna_model(head, rcps=True, conjoin=True, num_labels=3, pooling="max")
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, auto_class).from_pretrained(tmp_path).eval()
    assert type(loaded) is head and loaded.config.pooling == "max"
    x = genome_ids(20)[None]
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_sequence_classifier_losses_follow_the_problem_type():
    ids = torch.stack([genome_ids(16, start=s) for s in (0, 100, 200)])
    classifier = dna_model(bioxlstm.BioXLSTMForSequenceClassification, bidirectional=True, num_labels=2)
    labels = torch.tensor([0, 1, 1])
    out = classifier(ids, labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    regressor = dna_model(bioxlstm.BioXLSTMForSequenceClassification, bidirectional=True, num_labels=1)
    targets = torch.tensor([0.5, -1.0, 2.0])
    out = regressor(ids, labels=targets)
    assert regressor.config.problem_type == "regression"
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), targets))


@pytest.mark.parametrize("variant", [{"conjoin": True}, {"rcps": True}])
def test_strand_symmetric_classifiers_give_the_same_output_for_both_strands(variant):
    """conjoin (any model) and RC-PS (by construction) give RC-invariant sequence predictions and
    token predictions that follow the flip of positions."""
    rows = [genome_ids(n, start=s) for n, s in ((24, 0), (15, 5000))]
    ids, mask = padded(rows, "left")
    rc_ids, _ = padded([rc(r) for r in rows], "left")
    sequence = dna_model(bioxlstm.BioXLSTMForSequenceClassification, bidirectional=True, num_labels=2, **variant)
    token = dna_model(bioxlstm.BioXLSTMForTokenClassification, bidirectional=True, num_labels=3, **variant)
    with torch.no_grad():
        assert (sequence(ids, attention_mask=mask).logits - sequence(rc_ids, attention_mask=mask).logits).abs().max() <= 1e-5
        per_token, per_token_rc = (token(i, attention_mask=mask).logits for i in (ids, rc_ids))
    for row in range(len(rows)):
        assert (real_rows(per_token_rc, mask, row) - real_rows(per_token, mask, row).flip(0)).abs().max() <= 1e-5


def test_token_classifier_trains_with_the_trainer(tmp_path):
    """Per-base labels from the sequence itself (is the base a purine, A or G?): a few Trainer
    steps on genome windows drive the token-level loss down."""
    purines = torch.tensor(TOKENIZER.convert_tokens_to_ids(["A", "G"]))
    genome = ecoli_genome()
    data = []
    for i in range(64):
        encoded = TOKENIZER(genome[200_000 + i * 301 : 200_000 + i * 301 + 48 - i % 7])
        ids = torch.tensor(encoded["input_ids"])
        labels = torch.isin(ids, purines).long()
        labels[[0, -1]] = -100
        data.append({**encoded, "labels": labels.tolist()})
    model = dna_model(bioxlstm.BioXLSTMForTokenClassification, bidirectional=True, num_labels=2, perturb=0.0)
    collator = transformers.DataCollatorForTokenClassification(TOKENIZER)
    batch = collator(data[:16])
    with torch.no_grad():
        before = model(**batch).loss
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=16, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", seed=0, use_cpu=True, disable_tqdm=True,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    with torch.no_grad():
        after = model.eval()(**batch).loss
    assert after < 0.5 * before


# --- strand-symmetric scoring with a causal model -----------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_rc_invariant_log_likelihood_is_strand_symmetric_and_padding_aware(side):
    model = dna_model(bioxlstm.BioXLSTMForCausalLM, slstm_layers=(1,))
    genome = ecoli_genome()
    windows = [genome[s : s + n] for s, n in ((0, 30), (9000, 12), (40_000, 21))]
    rc_windows = [str(Seq(w).reverse_complement()) for w in windows]
    score = lambda seqs: rc_invariant_log_likelihood(  # noqa: E731
        model, *TOKENIZER(seqs, padding=True, padding_side=side, return_tensors="pt").values(),
        complement_map=COMPLEMENT.tolist(), special_ids=TOKENIZER.all_special_ids,
    )
    forward_strand, reverse_strand = score(windows), score(rc_windows)
    assert torch.allclose(forward_strand, reverse_strand, atol=1e-5)
    for row, (window, rc_window) in enumerate(zip(windows, rc_windows)):
        alone = [sequence_log_likelihood(model, TOKENIZER(w, return_tensors="pt")["input_ids"]) for w in (window, rc_window)]
        assert torch.allclose(forward_strand[row], (alone[0] + alone[1])[0] / 2, atol=1e-5)
        assert abs(alone[0] - alone[1]) > 1e-3  # the causal model alone is not strand-symmetric


def test_sequence_log_likelihood_sums_next_token_log_probabilities():
    model = dna_model(bioxlstm.BioXLSTMForCausalLM)
    ids = TOKENIZER(ecoli_genome()[:25], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
    expected = log_probs.gather(-1, ids[0, 1:, None]).sum()
    assert torch.allclose(sequence_log_likelihood(model, ids), expected.double()[None], atol=1e-5)
    index = reversal_index(torch.ones_like(ids, dtype=torch.bool))
    assert torch.equal(reverse_complement(ids, COMPLEMENT, index), rc(ids))
