"""Model cards the Hub accepts, `auto_map`s that offer every head that makes sense, and the command
line that tells a user what a model serves and what each option defaults to."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_model
from huggingface_hub import ModelCard

import bioxlstm
from bioxlstm.cli import build_parser, main
from bioxlstm.export import LOSS_CURVE_FILE, RUNTIME_PACKAGES, TOKENIZER_LOADER_SETTINGS, CardInfo, export
from bioxlstm.pretrained import default_model_names, resolve_model

ROOT = Path(__file__).resolve().parents[1]
HEAD_CLASSES = {
    "AutoModel": "BioXLSTMModel",
    "AutoModelForCausalLM": "BioXLSTMForCausalLM",
    "AutoModelForMaskedLM": "BioXLSTMForMaskedLM",
    "AutoModelForSequenceClassification": "BioXLSTMForSequenceClassification",
    "AutoModelForTokenClassification": "BioXLSTMForTokenClassification",
}
CLASSIFIERS = {"AutoModelForSequenceClassification", "AutoModelForTokenClassification"}
# The settings each head needs in a tiny DNA model (a masked LM reads both directions).
HEAD_SETTINGS = {
    "BioXLSTMModel": {},
    "BioXLSTMForCausalLM": {},
    "BioXLSTMForMaskedLM": {"bidirectional": True},
    "BioXLSTMForSequenceClassification": {"num_labels": 2},
    "BioXLSTMForTokenClassification": {"num_labels": 3},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dna_model(head: str, **settings):
    tokenizer = bioxlstm.load_tokenizer("dna")
    model = tiny_model(
        vocab_size=len(tokenizer), domain="dna", pad_token_id=tokenizer.pad_token_id,
        model_class=getattr(bioxlstm, head), **{**HEAD_SETTINGS[head], **settings},
    )
    return model, tokenizer


def advertised(directory: Path) -> dict[str, str]:
    return json.loads((Path(directory) / "config.json").read_text())["auto_map"]


def without_bioxlstm(code: str, tmp_path: Path) -> dict:
    """Run `code` where `import bioxlstm` fails, as for a user of an export; it prints one JSON object."""
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "import sys\nsys.modules['bioxlstm'] = None\n" + code],
        capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- auto_map -------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", list(HEAD_SETTINGS))
def test_an_export_advertises_every_head_that_makes_sense_for_its_model(head, tmp_path):
    model, tokenizer = dna_model(head)
    auto_map = advertised(export(model, tmp_path / head, tokenizer))
    language_model = "AutoModelForMaskedLM" if head == "BioXLSTMForMaskedLM" else "AutoModelForCausalLM"
    expected = {"AutoModel", language_model, *CLASSIFIERS}
    assert set(auto_map) == {"AutoConfig", *expected}
    assert auto_map["AutoConfig"] == "configuration_bioxlstm.BioXLSTMConfig"
    assert all(auto_map[auto] == f"modeling_bioxlstm.{HEAD_CLASSES[auto]}" for auto in expected)


def test_a_causal_export_loads_as_classifiers_to_fine_tune_without_bioxlstm(tmp_path):
    model, tokenizer = dna_model("BioXLSTMForCausalLM")
    directory = export(model, tmp_path / "causal", tokenizer)
    text = "ACGTTGCAAGGCTTA"
    with torch.no_grad():
        features = model.backbone(tokenizer(text, return_tensors="pt").input_ids).last_hidden_state
    result = without_bioxlstm(
        f"""
import json, torch, transformers
from transformers import AutoTokenizer
directory = {str(directory)!r}
ids = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)({text!r}, return_tensors="pt").input_ids
found = {{}}
for auto in ("AutoModelForSequenceClassification", "AutoModelForTokenClassification"):
    model = getattr(transformers, auto).from_pretrained(directory, num_labels=3, trust_remote_code=True).eval()
    with torch.no_grad():
        found[auto] = {{"module": type(model).__module__, "class": type(model).__name__,
                       "logits": list(model(ids).logits.shape),
                       "features": model.backbone(ids).last_hidden_state.tolist()}}
print(json.dumps(found))
""",
        tmp_path,
    )
    length = features.shape[1]
    for auto, shape in (("AutoModelForSequenceClassification", [1, 3]), ("AutoModelForTokenClassification", [1, length, 3])):
        loaded = result[auto]
        assert not loaded["module"].startswith("bioxlstm") and loaded["class"] == HEAD_CLASSES[auto]
        assert loaded["logits"] == shape
        # The classifier starts from the language model's backbone, not from random weights.
        assert torch.allclose(torch.tensor(loaded["features"]), features, atol=1e-5)


def test_a_config_built_from_another_advertises_its_own_heads(tmp_path):
    causal = dna_model("BioXLSTMForCausalLM")[0].config
    masked = bioxlstm.BioXLSTMConfig(**{**causal.to_dict(), "bidirectional": True})
    assert "AutoModelForMaskedLM" in masked.auto_map and "AutoModelForCausalLM" not in masked.auto_map
    assert masked.to_dict()["auto_map"] == masked.auto_map
    strands = {"conjoin": True, "complement_map": bioxlstm.complement_map(bioxlstm.load_tokenizer("dna"))}
    conjoined = bioxlstm.BioXLSTMConfig(**{**causal.to_dict(), **strands})
    assert set(conjoined.auto_map) == {"AutoConfig", "AutoModel", *CLASSIFIERS}

    # A masked LM saved and loaded again, turned into a causal one: the saved causal model offers no masked LM.
    bioxlstm.BioXLSTMForMaskedLM(masked).save_pretrained(tmp_path / "masked")
    loaded = bioxlstm.BioXLSTMConfig.from_pretrained(tmp_path / "masked")
    causal_again = bioxlstm.BioXLSTMConfig(**{**loaded.to_dict(), "bidirectional": False})
    bioxlstm.BioXLSTMForCausalLM(causal_again).save_pretrained(tmp_path / "causal")
    assert set(advertised(tmp_path / "causal")) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", *CLASSIFIERS}


# --- cards ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", list(HEAD_SETTINGS))
def test_every_head_exports_a_card_the_hub_accepts_with_its_metadata(head, tmp_path):
    model, tokenizer = dna_model(head)
    (tmp_path / "curve.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    card = CardInfo(
        training_data={"ecoli_536_NC_008253": (ROOT / "data_cards" / "ecoli_536_NC_008253.md").read_text()},
        metrics={"eval_loss": 1.25, "eval_perplexity": 3.49}, license="apache-2.0", base_model="someone/dna-base",
    )
    directory = export(model, tmp_path / "out", tokenizer, card, loss_curve=tmp_path / "curve.png")
    loaded = ModelCard.load(directory / "README.md")  # raises on metadata the Hub would refuse
    data = loaded.data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == getattr(bioxlstm, head).pipeline_tag
    assert data.base_model == "someone/dna-base"
    assert {"bioxlstm", "xlstm", "dna"} <= set(data.tags) and data.datasets == ["ecoli_536_NC_008253"]
    assert {(r.metric_type, r.metric_value, r.task_type) for r in data.eval_results} == {
        ("eval_loss", 1.25, data.pipeline_tag), ("eval_perplexity", 3.49, data.pipeline_tag),
    }
    for section in ("## Intended use", "## Limitations", "## Runtime requirements", "## Training data"):
        assert section in loaded.text
    assert f"pip install {RUNTIME_PACKAGES}" in loaded.text and "trust_remote_code=True" in loaded.text
    assert (directory / LOSS_CURVE_FILE).read_bytes() == (tmp_path / "curve.png").read_bytes()
    assert f"]({LOSS_CURVE_FILE})" in loaded.text


def test_a_local_base_model_is_recorded_but_not_given_to_the_hub(tmp_path):
    model, tokenizer = dna_model("BioXLSTMForCausalLM")
    directory = export(model, tmp_path / "out", tokenizer, CardInfo(base_model="chem"))
    loaded = ModelCard.load(directory / "README.md")
    assert loaded.data.base_model is None  # the Hub takes only its own model ids
    assert loaded.data.to_dict()["bioxlstm"]["base_model"] == "chem" and "Fine-tuned from `chem`" in loaded.text
    assert not (directory / LOSS_CURVE_FILE).exists() and LOSS_CURVE_FILE not in loaded.text


def test_saved_tokenizer_configs_carry_no_loader_settings(tmp_path):
    model, tokenizer = dna_model("BioXLSTMForCausalLM")
    settings = json.loads((export(model, tmp_path / "out", tokenizer) / "tokenizer_config.json").read_text())
    assert not set(settings) & set(TOKENIZER_LOADER_SETTINGS)
    for name in default_model_names():
        bundled = json.loads((resolve_model(name) / "tokenizer_config.json").read_text())
        assert not set(bundled) & set(TOKENIZER_LOADER_SETTINGS), name


@pytest.mark.parametrize("name", ["dna", "protein", "chem", "chem-icl"])
def test_bundled_models_have_hub_cards_and_no_auto_map_without_code(name):
    directory = resolve_model(name)
    card = ModelCard.load(directory / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    assert {r.metric_type for r in card.data.eval_results} >= {"eval_loss", "eval_perplexity"}
    assert f"]({LOSS_CURVE_FILE})" in card.text and (directory / LOSS_CURVE_FILE).is_file()
    assert f"bioxlstm export --model {name}" in card.text  # how to get the self-contained copy
    # No model code ships beside the bundled weights, so the config must not promise any.
    assert not list(directory.glob("*.py")) and "auto_map" not in json.loads((directory / "config.json").read_text())
    if name == "chem-icl":
        assert card.data.to_dict()["bioxlstm"]["base_model"] == "chem"


def test_a_bundled_model_exports_with_its_card_and_loss_curve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bundled model's name is not a folder here
    main(["export", "--model", "chem-icl", "--output", "out", "--base-model", "someone/chem"])
    out, bundled = tmp_path / "out", resolve_model("chem-icl")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "someone/chem" and card.data.license == "apache-2.0"
    assert (out / LOSS_CURVE_FILE).read_bytes() == (bundled / LOSS_CURVE_FILE).read_bytes()
    assert f"]({LOSS_CURVE_FILE})" in card.text and "path/to/this/directory" in card.text
    assert set(advertised(out)) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", *CLASSIFIERS}


def test_info_finds_a_bundled_model_from_any_directory_and_names_its_pipelines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["info", "--model", "protein"])
    shown = capsys.readouterr().out
    assert "BioXLSTMForCausalLM (pipeline text-generation)" in shown
    assert "BioXLSTMForSequenceClassification (pipeline text-classification)" in shown
    assert "## Runtime requirements" in shown  # the card follows
    main(["info", "--model", "protein", "--json"])
    assert json.loads(capsys.readouterr().out)["heads"] == {
        "BioXLSTMModel": "feature-extraction", "BioXLSTMForCausalLM": "text-generation",
        "BioXLSTMForSequenceClassification": "text-classification", "BioXLSTMForTokenClassification": "token-classification",
    }


def test_a_converted_model_has_a_card_the_hub_accepts(tmp_path):
    output = bioxlstm.convert.convert(ROOT / "tests" / "fixtures" / "reference" / "prot_xlstm" / "homologs", tmp_path / "out")
    card = ModelCard.load(output / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    assert "Prot-xLSTM" in card.text and "## Limitations" in card.text


def test_a_fine_tuned_model_has_a_card_the_hub_accepts_naming_its_base(tmp_path):
    run = tmp_path / "run"
    main([
        "train", str(ROOT / "recipes" / "chem-icl-tiny.yaml"), "--output-dir", str(run), "init_from=chem", "model={}",
        "training.max_steps=2", "training.logging_steps=1", "training.eval_steps=2", "training.save_steps=2",
        "data.max_records=20", "data.max_eval_examples=4", "data.max_length=128", "training.report_to=[]",
        f"data.cache_dir={tmp_path / 'cache'}",
    ])
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.to_dict()["bioxlstm"]["base_model"] == "chem"
    assert "eval_perplexity" in {r.metric_type for r in card.data.eval_results}
    assert (run / "model" / LOSS_CURVE_FILE).is_file() and f"]({LOSS_CURVE_FILE})" in card.text


# --- command line ---------------------------------------------------------------------------------


def subcommand_parsers(parser: argparse.ArgumentParser, name: str = "bioxlstm"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield f"{name} {command}", subparser
                yield from subcommand_parsers(subparser, f"{name} {command}")


def test_help_of_every_command_shows_its_defaults():
    """Walks the parser itself, so commands added later are checked too."""
    checked = 0
    for name, parser in subcommand_parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.default in (None, False, [], argparse.SUPPRESS) or action.help == argparse.SUPPRESS:
                continue
            said = action.help and "default" in action.help.lower()
            assert said or f"(default: {action.default})" in text, f"{name} {action.option_strings or action.dest}"
            checked += 1
    assert checked > 20
