"""Labeled-data objectives in recipes (sequence classification, regression, token classification)
fine-tuning the bundled models, and `bioxlstm evaluate finetune` over seeds."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from Bio.Seq import Seq
from helpers import dna_model

import bioxlstm
from bioxlstm.cli import main
from bioxlstm.data.labeled import IGNORED_LABEL
from bioxlstm.training import build_trainer, finetune_over_seeds, load_recipe
from bioxlstm.training.predictions import prediction_metrics

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
# A few steps on short examples: enough to see every part run, in seconds on a shared CPU.
FEW_STEPS = [
    "training.max_steps=2",
    "training.per_device_train_batch_size=4",
    "training.per_device_eval_batch_size=16",
    "training.disable_tqdm=true",
    "data.max_length=96",
]
DNA_SMALL = [*FEW_STEPS, "data.max_records=120"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "recipe_name, head, num_labels, classes",
    [
        ("protein-classify-tiny", bioxlstm.BioXLSTMForSequenceClassification, 2, ["soluble", "membrane"]),
        ("protein-token-tiny", bioxlstm.BioXLSTMForTokenClassification, 2, ["-", "M"]),
        ("chem-regress-tiny", bioxlstm.BioXLSTMForSequenceClassification, 1, []),
        ("dna-classify-tiny", bioxlstm.BioXLSTMForSequenceClassification, 2, ["intergenic", "coding"]),
    ],
)
def test_each_objective_fine_tunes_a_bundled_model(tmp_path, recipe_name, head, num_labels, classes):
    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml", DNA_SMALL if recipe_name.startswith("dna") else FEW_STEPS)
    start, _ = bioxlstm.pretrained.load_pretrained(recipe.init_from)
    trainer = build_trainer(recipe, tmp_path / "run")
    model = trainer.model
    assert type(model) is head and model.config.num_labels == num_labels
    assert trainer.labeled_data.classes == classes
    assert [model.config.id2label[i] for i in range(len(classes))] == classes
    assert torch.equal(model.backbone.embeddings.weight, start.backbone.embeddings.weight)  # the backbone is init_from's
    head_before = model.classifier.weight.detach().clone()
    trainer.train()
    losses = [row["train_loss"] for row in trainer.state.log_history if "train_loss" in row]
    assert trainer.state.global_step == 2 and losses and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(model.classifier.weight, head_before)
    output = trainer.predict(trainer.labeled_data.test)
    kind = "sequence-regression" if num_labels == 1 else recipe.objective
    metrics = prediction_metrics(kind, output.predictions, output.label_ids)
    assert metrics.count >= len(trainer.labeled_data.test) and set(metrics.values) <= {
        "accuracy", "mcc", "f1", "auroc", "spearman", "pearson", "r2"}  # fmt: skip


def _strand_gap(model, tokenizer, sequences, as_written: bool) -> float:
    """The largest change of the logits between each sequence and its reverse complement. as_written:
    the reverse strand as the tokenizer writes it (<cls> first), the symmetry of a conjoined model,
    which keeps delimiters in place; otherwise the whole token row reverse-complemented (<cls> moves
    to the end), the symmetry an RC-PS model has by construction."""
    ids = tokenizer(sequences, return_tensors="pt").input_ids
    if as_written:
        reverse = tokenizer([str(Seq(s).reverse_complement()) for s in sequences], return_tensors="pt").input_ids
    else:
        reverse = torch.tensor(bioxlstm.complement_map(tokenizer))[ids].flip(1)
    model.eval()
    with torch.no_grad():
        return (model(input_ids=ids).logits - model(input_ids=reverse).logits).abs().max().item()


def test_conjoined_and_rc_equivariant_dna_classifiers_give_both_strands_one_answer(tmp_path):
    windows = [r.sequence for r in bioxlstm.io.read_records(ROOT / "data" / "labeled" / "ecoli_coding_windows.fasta")][:4]
    conjoined = build_trainer(load_recipe(RECIPES / "dna-classify-tiny.yaml", DNA_SMALL), tmp_path / "conjoined")
    conjoined.train()
    assert conjoined.model.config.conjoin
    assert _strand_gap(conjoined.model, conjoined.processing_class, windows, as_written=True) < 1e-4

    bidirectional = tmp_path / "bidirectional-rcps"
    dna_model(bioxlstm.BioXLSTMForMaskedLM, hidden_size=32, num_hidden_layers=2, bidirectional=True, rcps=True,
              domain="dna", kernel="auto").save_pretrained(bidirectional)  # fmt: skip
    recipe = load_recipe(RECIPES / "dna-classify-tiny.yaml", [*DNA_SMALL, f"init_from={bidirectional}", "model={}"])
    trainer = build_trainer(recipe, tmp_path / "rcps")
    trainer.train()
    assert trainer.model.config.bidirectional and trainer.model.config.rcps
    assert _strand_gap(trainer.model, trainer.processing_class, windows, as_written=False) < 1e-4


def test_the_split_is_stratified_and_the_same_for_every_training_seed(tmp_path):
    def test_ids(*overrides):
        recipe = load_recipe(RECIPES / "protein-classify-tiny.yaml", [*FEW_STEPS, *overrides])
        trainer = build_trainer(recipe, tmp_path / "run")
        return trainer.labeled_data, recipe

    data, _ = test_ids("training.seed=0")
    again, _ = test_ids("training.seed=7")
    other, _ = test_ids("data.seed=1")
    assert data.test_ids == again.test_ids and data.test_ids != other.test_ids
    assert (len(data.train), len(data.validation), len(data.test)) == (37, 5, 14)  # of 56
    test_labels = list(data.test["labels"])
    assert (test_labels.count(1), test_labels.count(0)) == (5, 9)  # 20 membrane : 36 soluble, as in the whole set
    assert len(set(data.test_ids)) == 14


def test_token_labels_line_up_with_the_residues(tmp_path):
    trainer = build_trainer(load_recipe(RECIPES / "protein-token-tiny.yaml", FEW_STEPS), tmp_path / "run")
    table = pd.read_csv(ROOT / "data" / "labeled" / "swissprot_transmembrane.csv").set_index("id")
    tokenizer = trainer.processing_class
    membrane_examples = 0
    for record_id, example in zip(trainer.labeled_data.test_ids, trainer.labeled_data.test):
        labels, ids = example["labels"], example["input_ids"]
        expected = [IGNORED_LABEL] + ["-M".index(c) for c in table.loc[record_id, "label"]]
        assert labels == expected[: len(ids)] and len(labels) == len(ids) <= 96
        assert tokenizer.decode(ids[1:]).replace(" ", "") == table.loc[record_id, "sequence"][: len(ids) - 1]
        membrane_examples += 1 in labels
    assert membrane_examples > 0


def _table(tmp_path, name, rows) -> str:
    path = tmp_path / name
    pd.DataFrame(rows, columns=["id", "sequence", "label"]).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    "recipe_name, rows, extra, message",
    [
        ("protein-classify-tiny", [("a", "MKV", "x"), ("b", "MKW", ""), ("c", "MKL", "y")], [],
         "labels.csv: record 'b' has no label (column 'label' is missing, empty or NaN)"),
        ("protein-token-tiny", [("a", "MKV", "--M"), ("b", "MKWL", "--M")], [],
         "labels.csv: record 'b': its 'label' label string has 3 characters for 4 residues"),
        ("chem-regress-tiny", [("a", "CCO", "1.5"), ("b", "CCN", "high")], ["data.id_column=id"],
         "labels.csv: record 'b': label 'high' in 'label' is not a finite number"),
        ("chem-regress-tiny", [("a", "CCO", "1.5")], ["objective=token-classification"],
         "objective 'token-classification' trains dna or protein models, not smiles"),
        ("protein-classify-tiny", [("a", "MKV", "x")], ["data.label_column=class"],
         "labels.csv: no label column 'class' (available: id, sequence, label)"),
    ],
    ids=["empty-label", "label-string-length", "not-a-number", "token-on-smiles", "no-label-column"],
)
def test_labeled_data_mistakes_are_one_line_errors(tmp_path, capsys, recipe_name, rows, extra, message):
    data = _table(tmp_path, "labels.csv", rows)
    overrides = [*FEW_STEPS, f"data.train=[{data}]", "data.id_column=id", "data.classes=null", *extra]
    with pytest.raises(SystemExit) as exit:
        main(["train", str(RECIPES / f"{recipe_name}.yaml"), "--output-dir", str(tmp_path / "run"), *overrides])
    assert exit.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("bioxlstm: error: ") and message in error, error


def test_evaluate_finetune_refuses_a_recipe_without_labels_or_test_split(tmp_path, capsys):
    for recipe, overrides, message in (
        (RECIPES / "chem-clm-tiny.yaml", [], "objective 'clm' trains on no labels"),
        (RECIPES / "dna-classify-tiny.yaml", [*DNA_SMALL, "data.test_fraction=0"], "holds out no test split"),
    ):
        with pytest.raises(SystemExit):
            main(["evaluate", "finetune", str(recipe), *overrides, "--seeds", "1"])
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err.strip().splitlines()[-1]


def test_evaluate_finetune_reports_every_seed_and_repeats_a_seed_exactly(tmp_path, capsys):
    recipe_path = RECIPES / "dna-classify-tiny.yaml"
    plot = tmp_path / "seeds.png"
    main(["evaluate", "finetune", str(recipe_path), *DNA_SMALL, "--seeds", "2", "--json", "--plot", str(plot),
          "--output-dir", str(tmp_path / "runs")])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert [run["seed"] for run in result["runs"]] == [0, 1] and result["test_sequences"] == 30
    assert result["classes"] == ["intergenic", "coding"] and result["task"] == "classification"
    for name in ("accuracy", "mcc", "f1", "auroc"):
        values = [run[name] for run in result["runs"]]
        assert result["mean"][name] == pytest.approx(sum(values) / 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "runs" / "seed-1" / "log.csv").is_file() and not list((tmp_path / "runs").glob("*/checkpoint-*"))

    repeated = finetune_over_seeds(load_recipe(recipe_path, DNA_SMALL), [1])
    assert repeated.runs[0].metrics.as_dict() == {name: result["runs"][1][name] for name in ("accuracy", "mcc", "f1", "auroc")}
