"""DNA-xLSTM checkpoints convert into our model with the reference's logits.

The fixtures (tests/fixtures/reference/dna_xlstm/, see its README) were written by the reference
code itself (scripts/reference_fixtures/dna_xlstm.py): each case is a training-run directory as
DNA-xLSTM writes it (`model_config.json` and the Lightning checkpoint `checkpoints/test/loss.ckpt`,
sLSTM cells in the cuda backend's layout) plus the reference's logits. The reference code is not
needed here.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from bioxlstm.convert import ConversionError, convert, detect_format
from bioxlstm.convert import dna_xlstm
from bioxlstm.models import BioXLSTMForCausalLM, BioXLSTMForMaskedLM, BioXLSTMModel

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "reference" / "dna_xlstm"
CAUSAL = ["clm_slstm", "clm_mlstm_rope", "clm_mixed"]
LONG = "clm_mlstm_rope_long"  # 2003 tokens, logits kept at every 40th position
MASKED = ["mlm_bidir_slstm", "mlm_bidir_mixed", "mlm_alternating", "mlm_rcps_slstm"]
TOLERANCE = 1e-4


def expected(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / case / "expected.safetensors"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    return {case: convert(FIXTURES / case, root / case) for case in CAUSAL + MASKED + [LONG]}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_the_format_is_detected():
    for case in CAUSAL + MASKED + [LONG]:
        assert detect_format(FIXTURES / case) == "dna-xlstm"


@pytest.mark.parametrize("case", CAUSAL + MASKED)
def test_full_forward_matches_the_reference(converted, case):
    tensors = expected(case)
    model_class = BioXLSTMForCausalLM if case in CAUSAL else BioXLSTMForMaskedLM
    model = model_class.from_pretrained(converted[case]).eval()
    with torch.no_grad():
        logits = model(tensors["input_ids"]).logits
    assert logits.shape[-1] == 12
    assert max_diff(logits, tensors["logits"]) <= TOLERANCE


@pytest.mark.parametrize("chunk_size", [16, 5])
@pytest.mark.parametrize("case", CAUSAL)
def test_chunkwise_prefill_then_step_by_step_decoding(converted, case, chunk_size):
    tensors = expected(case)
    ids, reference = tensors["input_ids"], tensors["logits"]
    model = BioXLSTMForCausalLM.from_pretrained(converted[case], chunk_size=chunk_size).eval()
    prefill = 23  # off the chunk grid for both chunk sizes
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        assert max_diff(out.logits, reference[:, :prefill]) <= TOLERANCE
        cache = out.cache
        for t in range(prefill, ids.shape[1]):
            step = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = step.cache
            assert max_diff(step.logits[:, 0], reference[:, t]) <= TOLERANCE, t


def test_generate_continues_with_the_reference_prediction(converted):
    tensors = expected("clm_mixed")
    model = BioXLSTMForCausalLM.from_pretrained(converted["clm_mixed"]).eval()
    prompt = tensors["input_ids"][:, :20]
    out = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=dna_xlstm.PAD_ID)
    assert torch.equal(out[:, 20], tensors["logits"][:, 19].argmax(-1))


def test_long_context_prefill_in_two_calls_and_the_rotary_rounding(converted):
    """At 2k positions the float rounding of the rotary frequencies shows: the reference's formula
    (1 / base^(2i/D)) matches, the default one (base^(-2i/D)) lands several times further off."""
    tensors = expected(LONG)
    ids, positions, reference = tensors["input_ids"], tensors["positions"], tensors["logits"]
    model = BioXLSTMForCausalLM.from_pretrained(converted[LONG], chunk_size=64).eval()
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :1001], use_cache=True)
        rest = model(ids[:, 1001:], cache=first.cache, use_cache=True)
        default_formula = BioXLSTMForCausalLM.from_pretrained(converted[LONG], rope_reciprocal_frequencies=False).eval()
        other = default_formula(ids).logits
    assert max_diff(full[:, positions], reference) <= TOLERANCE
    assert max_diff(torch.cat([first.logits, rest.logits], dim=1)[:, positions], reference) <= TOLERANCE
    assert max_diff(other[:, positions], reference) > 3 * max_diff(full[:, positions], reference)


def test_padded_batch_gives_each_row_its_own_logits(converted):
    tensors = expected("mlm_bidir_mixed")
    model = BioXLSTMForMaskedLM.from_pretrained(converted["mlm_bidir_mixed"]).eval()
    ids = tensors["input_ids"]
    padded = torch.cat([torch.full((2, 4), dna_xlstm.PAD_ID), ids], dim=1)  # the reference's left padding
    mask = torch.cat([torch.zeros(2, 4, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        logits = model(padded, attention_mask=mask).logits[:, 4:]
    assert max_diff(logits, tensors["logits"]) <= TOLERANCE


def test_the_traps_matter_so_the_parity_checks_them(converted, monkeypatch):
    """The cuda layout of the sLSTM and the reference's RC-view head flip each move the logits."""
    tensors = expected("mlm_rcps_slstm")
    model = BioXLSTMForMaskedLM.from_pretrained(converted["mlm_rcps_slstm"], rcps_slstm_head_flip=False).eval()
    with torch.no_grad():
        assert max_diff(model(tensors["input_ids"]).logits, tensors["logits"]) > 1e-2
    monkeypatch.setattr(dna_xlstm, "SLSTM_LAYOUT", "vanilla")
    model = dna_xlstm.convert(FIXTURES / "clm_slstm").model
    tensors = expected("clm_slstm")
    with torch.no_grad():
        assert max_diff(model(tensors["input_ids"]).logits, tensors["logits"]) > 1e-2


def test_converted_configs_say_what_the_reference_computes(converted):
    bidirectional = json.loads((converted["mlm_bidir_mixed"] / "config.json").read_text())
    assert bidirectional["bidirectional_mode"] == "block"
    assert bidirectional["position_embedding"] == "rotary" and bidirectional["rope_pairing"] == "interleaved"
    assert bidirectional["mlstm_inner_width"] == 64  # 2 * 48 rounded down to a multiple of 64
    assert bidirectional["ffn_inner_width"] == 48  # 1.1 * 48 rounded down to a multiple of 8
    assert bidirectional["bias"] is True and bidirectional["ffn_bias"] is False
    rcps = json.loads((converted["mlm_rcps_slstm"] / "config.json").read_text())
    assert rcps["rcps"] and rcps["rcps_slstm_head_flip"] and rcps["hidden_size"] == 48
    card = (converted["mlm_rcps_slstm"] / "README.md").read_text()
    assert "DNA-xLSTM" in card and "not exactly RC-equivariant" in card


def test_tokenizer_encodes_as_the_reference_pipeline(converted):
    """Neither kind of model reads a special token: the hg38 data's [SEP] is dropped from the input
    of both (`seq[:-1]`, `mlm_getitem(contains_eos=True)`); it is only a causal model's last target."""
    masked = AutoTokenizer.from_pretrained(converted["mlm_bidir_slstm"])
    causal = AutoTokenizer.from_pretrained(converted["clm_slstm"])
    assert masked("ACGTN")["input_ids"] == [7, 8, 9, 10, 11]
    assert causal("ACGTN")["input_ids"] == [7, 8, 9, 10, 11]
    assert masked("AC[MASK]a", add_special_tokens=False)["input_ids"] == [7, 8, 3, 6]  # lower case is [UNK]
    assert (masked.pad_token_id, masked.mask_token_id, masked.eos_token_id, masked.cls_token_id, masked.unk_token_id) == (4, 3, 1, 0, 6)
    assert len(masked) == 12


@pytest.mark.parametrize("case", CAUSAL)
def test_score_counts_what_the_reference_loss_counts(converted, case):
    """The reference's hg38 data reads the bases and predicts every base after the first, then the
    [SEP] it appended (`add_eos`), with [PAD] ignored (`ignore_index: 4`); `score` gives that sum."""
    from bioxlstm.io import Record
    from bioxlstm.tasks.likelihood import score_records

    tensors = expected(case)
    ids, logits = tensors["input_ids"], tensors["logits"].double()
    targets = torch.cat([ids[:, 1:], torch.full((len(ids), 1), dna_xlstm.SEP_ID)], dim=1)
    token_log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    counted = targets != dna_xlstm.PAD_ID
    reference = (token_log_probs * counted).sum(dim=1)
    reference_mean_loss = -reference / counted.sum(dim=1)

    model = BioXLSTMForCausalLM.from_pretrained(converted[case]).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted[case])
    records = [Record(f"row{i}", "".join(dna_xlstm.VOCAB[t] for t in row)) for i, row in enumerate(ids.tolist())]
    scores = list(score_records(model, tokenizer, records))
    assert [s.length for s in scores] == [ids.shape[1]] * len(ids)
    assert [s.log_likelihood for s in scores] == pytest.approx(reference.tolist(), abs=1e-3)
    assert [s.perplexity for s in scores] == pytest.approx(reference_mean_loss.exp().tolist(), rel=1e-4)


def test_fill_mask_pipeline_and_auto_class(converted):
    directory = converted["mlm_bidir_mixed"]
    model = AutoModelForMaskedLM.from_pretrained(directory, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tensors = expected("mlm_bidir_mixed")
    with torch.no_grad():
        assert max_diff(model(tensors["input_ids"]).logits, tensors["logits"]) <= TOLERANCE
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=3)
    predictions = fill("ACGTAC[MASK]GTTGCA")
    assert len(predictions) == 3 and all(p["token"] in range(12) for p in predictions)
    ids = tokenizer("ACGTAC[MASK]GTTGCA", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, 6]
    assert predictions[0]["token"] == int(logits.argmax())


def test_post_hoc_conjoined_use_is_strand_invariant(converted):
    model = BioXLSTMModel.from_pretrained(converted["mlm_bidir_slstm"], conjoin=True).eval()
    ids = torch.tensor([[7, 8, 8, 9, 10, 7, 9, 1]])
    rc = torch.tensor([[1, 8, 10, 7, 8, 9, 9, 10]])  # reverse complement within the span, [SEP] included
    with torch.no_grad():
        forward, reverse = model(ids).last_hidden_state, model(rc).last_hidden_state
    assert max_diff(forward, reverse.flip(1)) <= 1e-5


def test_bad_sources_fail_with_one_clear_line(tmp_path):
    source = tmp_path / "run"
    shutil.copytree(FIXTURES / "clm_slstm", source)
    (source / "checkpoints" / "test" / "loss.ckpt").rename(source / "checkpoints" / "a.ckpt")
    shutil.copy(source / "checkpoints" / "a.ckpt", source / "checkpoints" / "b.ckpt")
    with pytest.raises(ConversionError, match="several checkpoints"):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    (source / "checkpoints" / "b.ckpt").unlink()
    config = json.loads((source / "model_config.json").read_text())
    config["config"]["n_layer"] = 3  # a block the weights lack
    (source / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="missing"):
        convert(source, tmp_path / "out")

    config["config"].update(n_layer=2, s_position_embeddings=True)
    (source / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="s_position_embeddings"):
        convert(source, tmp_path / "out")

    config["config"].update(s_position_embeddings=False, d_model=64)
    (source / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="config does not match the weights"):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_converted_masked_lm_fine_tunes_as_a_conjoined_classifier(converted, tmp_path):
    """The published "ph" models are used this way: the pretrained backbone, a new classification
    head, both strands averaged; the Trainer takes it as any Hugging Face classifier."""
    import gzip

    from Bio import SeqIO
    from transformers import Trainer, TrainingArguments

    from bioxlstm.models import BioXLSTMForSequenceClassification

    with gzip.open(ROOT / "data" / "ecoli_536_NC_008253.fna.gz", "rt") as handle:
        genome = str(next(SeqIO.parse(handle, "fasta")).seq)
    windows = [genome[i : i + 40] for i in range(0, 8 * 40, 40)]
    gc = [sum(base in "GC" for base in w) for w in windows]
    labels = [int(value > sorted(gc)[len(gc) // 2 - 1]) for value in gc]  # GC-richer half: a real, derived label
    tokenizer = AutoTokenizer.from_pretrained(converted["mlm_bidir_slstm"])
    encoded = [{**tokenizer(w), "labels": label} for w, label in zip(windows, labels)]
    model = BioXLSTMForSequenceClassification.from_pretrained(converted["mlm_bidir_slstm"], num_labels=2, conjoin=True)
    before = model.classifier.weight.detach().clone()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
            report_to=[], save_strategy="no", use_cpu=True,
        ),
        train_dataset=encoded,
    )
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))
    assert not torch.equal(model.classifier.weight, before)
    model.eval()
    ids = torch.tensor([tokenizer("ACGGTACCAT")["input_ids"]])
    rc = torch.tensor([tokenizer("ATGGTACCGT")["input_ids"]])
    with torch.no_grad():
        forward, reverse = model(ids).logits, model(rc).logits
    torch.testing.assert_close(forward, reverse, rtol=1e-5, atol=1e-5)


def test_post_hoc_conjoining_a_rotary_model_averages_both_strands_read_with_their_positions(converted):
    """Conjoined = the mean of the model on x and, flipped back, on rc(x), each strand read from its
    own start with its rotary positions (mlm_bidir_mixed has rotary mLSTM blocks)."""
    plain = BioXLSTMModel.from_pretrained(converted["mlm_bidir_mixed"]).eval()
    conjoined = BioXLSTMModel.from_pretrained(converted["mlm_bidir_mixed"], conjoin=True).eval()
    ids = torch.tensor([[7, 8, 8, 9, 10, 7, 9, 1]])
    rc = torch.tensor([[1, 8, 10, 7, 8, 9, 9, 10]])
    with torch.no_grad():
        expected_state = (plain(ids).last_hidden_state + plain(rc).last_hidden_state.flip(1)) / 2
        assert max_diff(conjoined(ids).last_hidden_state, expected_state) <= 1e-5
