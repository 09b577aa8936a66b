"""Exported models behave like any model on the Hub, also for people without bioxlstm."""

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_model
from packaging.requirements import Requirement

import bioxlstm
from bioxlstm.export import CardInfo, export

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "MKTAYIAKQR"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small protein causal LM exported with its tokenizer, card data and metrics."""
    torch.manual_seed(0)
    tokenizer = bioxlstm.load_tokenizer("protein")
    model = tiny_model(
        vocab_size=len(tokenizer), domain="protein", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    card = CardInfo(
        training_data={"protmamba_example": (ROOT / "data_cards" / "protmamba_example.md").read_text()},
        metrics={"eval_perplexity": 12.5},
    )
    directory = export(model, tmp_path_factory.mktemp("export") / "protein-lm", tokenizer, card)
    return model, tokenizer, directory


# What a user of an export installs (the README's line): an export must run with these alone.
PLAIN_TRANSFORMERS = ("torch", "transformers", "safetensors", "tokenizers")
OUR_PACKAGES = ("bioxlstm", "mlstm_kernels", "xlstm")


def runtime_distributions(names: tuple[str, ...]) -> dict[str, metadata.Distribution]:
    """The installed distributions `names` need at run time: themselves and their requirements,
    recursively, without extras (environment markers evaluated for this machine)."""
    found, pending = {}, list(names)
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if name in found:
            continue
        try:
            found[name] = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # required only where it is not needed, e.g. CUDA libraries
            continue
        for line in found[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


@pytest.fixture(scope="module")
def plain_transformers(tmp_path_factory) -> Path:
    """A folder holding only PLAIN_TRANSFORMERS and their runtime requirements: links to their
    top-level modules and metadata, built offline from this environment's installed copies."""
    folder = tmp_path_factory.mktemp("plain-transformers")
    for distribution in runtime_distributions(PLAIN_TRANSFORMERS).values():
        for top in {Path(file).parts[0] for file in distribution.files or []}:
            source = Path(distribution.locate_file(top))
            if top not in ("..", "__pycache__") and not top.endswith(".pth") and source.exists():
                if not (folder / top).exists():
                    (folder / top).symlink_to(source)
    return folder


def run_on_plain_transformers(code: str, tmp_path: Path, packages: Path) -> dict:
    """Run `code` in a fresh interpreter whose path holds the standard library and `packages` only
    (`-I -S`: no site-packages, no user site, no PYTHONPATH); it prints one JSON object. The run
    stops first if one of OUR_PACKAGES can be imported there."""
    preamble = f"""import sys
sys.path.insert(0, {str(packages)!r})
for name in {OUR_PACKAGES!r}:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(name + " is importable on plain transformers")
"""
    env = {
        "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
        # CPU kernels split sums by thread count; identical outputs need this process's count.
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", preamble + code],
        capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_plain_transformers_environment_has_only_those_packages(plain_transformers, tmp_path):
    """The clean environment of the export tests: our packages and the kernels library are absent,
    and torch and transformers come from the linked folder, not from this environment's site-packages."""
    result = run_on_plain_transformers(
        f"""
import json, importlib.util, torch, transformers
print(json.dumps({{"importable": [n for n in {OUR_PACKAGES!r} if importlib.util.find_spec(n)],
                  "paths": [torch.__file__, transformers.__file__], "site": "site" in sys.modules}}))
""",
        tmp_path,
        plain_transformers,
    )
    assert result["importable"] == [] and not result["site"]
    assert all(path.startswith(str(plain_transformers)) for path in result["paths"])


def test_export_writes_weights_code_tokenizer_and_card(exported):
    _, _, directory = exported
    files = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files
    assert {"modeling_bioxlstm.py", "blocks.py", "kernels.py", "configuration_bioxlstm.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_bioxlstm.BioXLSTMForCausalLM"
    assert auto_map["AutoModel"] == "modeling_bioxlstm.BioXLSTMModel"
    assert auto_map["AutoConfig"] == "configuration_bioxlstm.BioXLSTMConfig"

    card = (directory / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "text-generation"
    assert metadata["library_name"] == "transformers"
    assert metadata["bioxlstm"]["domain"] == "protein"
    assert metadata["bioxlstm"]["parameters"] == sum(p.numel() for p in exported[0].parameters())
    assert metadata["datasets"] == ["protmamba_example"]
    assert metadata["model-index"][0]["results"][0]["metrics"] == [{"type": "eval_perplexity", "value": 12.5}]
    assert "ProtMamba" in card  # the training data card is part of the model card


@pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only contend
def test_exported_model_loads_without_bioxlstm_with_identical_outputs(exported, tmp_path, plain_transformers):
    """On plain transformers (no bioxlstm, no mlstm_kernels) the shipped code gives the same logits,
    features and greedy continuation, by `generate` and by the pipeline."""
    model, tokenizer, directory = exported
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids  # `<cls>` + prompt, as the pipeline tokenises
    with torch.no_grad():
        logits = model(ids).logits
        hidden = model.backbone(ids).last_hidden_state
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False)
    result = run_on_plain_transformers(
        f"""
import json, torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline
directory = {str(directory)!r}
# The tokenizer needs no remote code; saying so skips the question about the model code.
tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
ids = tokenizer({PROMPT!r}, return_tensors="pt").input_ids
model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(ids).logits
greedy = model.generate(ids, max_new_tokens=8, do_sample=False)
generator = pipeline("text-generation", model=directory, trust_remote_code=True)
text = generator({PROMPT!r}, max_new_tokens=8, do_sample=False, return_full_text=True)[0]["generated_text"]
features = pipeline("feature-extraction", model=directory, trust_remote_code=True)({PROMPT!r}, return_tensors=True)
print(json.dumps({{"module": type(model).__module__, "ids": ids.tolist(), "logits": logits.tolist(),
                  "text": text, "features": features[0].tolist(), "greedy": greedy.tolist()}}))
""",
        tmp_path,
        plain_transformers,
    )
    assert not result["module"].startswith("bioxlstm")
    assert result["ids"] == ids.tolist()
    assert torch.equal(torch.tensor(result["logits"]), logits)
    assert result["greedy"] == greedy.tolist()
    assert result["text"] == tokenizer.decode(greedy[0], skip_special_tokens=True)
    features = torch.tensor(result["features"])
    assert features.shape == hidden[0].shape and torch.allclose(features, hidden[0], atol=1e-6)


def test_pickled_weights_are_refused_unless_the_user_opts_in(tmp_path):
    model = tiny_model()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="holds only pickled weights .*load them in Python with use_safetensors=False"):
        bioxlstm.BioXLSTMForCausalLM.from_pretrained(tmp_path)
    loaded = bioxlstm.BioXLSTMForCausalLM.from_pretrained(tmp_path, use_safetensors=False)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_cli_export_writes_a_loadable_directory_with_card(tmp_path):
    model = tiny_model(domain="dna", vocab_size=len(bioxlstm.load_tokenizer("dna")))
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "metrics.json").write_text(json.dumps({"eval_perplexity": 3.9}))
    result = cli(
        "export", "--model", str(tmp_path / "saved"), "--output", str(tmp_path / "out"),
        "--data-card", str(ROOT / "data_cards" / "ecoli_536_NC_008253.md"), "--metrics", str(tmp_path / "metrics.json"),
    )
    assert result.returncode == 0, result.stderr
    metadata = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---")[1])
    assert metadata["bioxlstm"]["domain"] == "dna" and metadata["datasets"] == ["ecoli_536_NC_008253"]
    reloaded, tokenizer = bioxlstm.pretrained.load_pretrained(tmp_path / "out")
    assert tokenizer.get_vocab() == bioxlstm.load_tokenizer("dna").get_vocab()
    tokens = torch.randint(6, 11, (1, 20))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, model.eval()(tokens).logits)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "no/such/dir", "--output", "x"],
            "no/such/dir: no saved model here (expected a directory with config.json, or a bundled default: "
            + ", ".join(bioxlstm.pretrained.default_model_names())
            + ")",
        ),
        (["--model", "{saved}", "--output", "{saved}"], "{saved}: exists and is not empty; choose a new directory"),
        (
            ["--model", "{saved}", "--output", "{tmp}/new", "--metrics", "{tmp}/bad.json"],
            "{tmp}/bad.json: expected a JSON object of metric names to numbers",
        ),
        (
            ["--model", "{saved}", "--output", "{tmp}/new", "--data-card", "{tmp}/missing.md"],
            "{tmp}/missing.md: no such file or directory",
        ),
    ],
)
def test_cli_export_user_errors_are_one_line(tmp_path, args, message):
    tiny_model().save_pretrained(tmp_path / "saved")
    (tmp_path / "bad.json").write_text("[1, 2]")
    args = [a.format(saved=tmp_path / "saved", tmp=tmp_path) for a in args]
    message = message.format(saved=tmp_path / "saved", tmp=tmp_path)
    result = cli("export", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"bioxlstm: error: {message}", result.stderr


HEADS = {
    "BioXLSTMForMaskedLM": ("AutoModelForMaskedLM", {"bidirectional": True}),
    "BioXLSTMForSequenceClassification": ("AutoModelForSequenceClassification", {"num_labels": 2}),
    "BioXLSTMForTokenClassification": ("AutoModelForTokenClassification", {"num_labels": 3}),
    "BioXLSTMModel": ("AutoModel", {}),
}


@pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only contend
def test_every_head_loads_without_bioxlstm_and_runs_its_pipeline(tmp_path, plain_transformers):
    """Each head, and a reverse-complement-equivariant masked LM (which also ships `rc.py`), exported,
    gives identical outputs from the shipped code on plain transformers, and its pipeline runs."""
    tokenizer = bioxlstm.load_tokenizer("dna")
    text = "ACGTTGCAAGGCTTA"
    ids = tokenizer(text, return_tensors="pt").input_ids
    exports = {name: (name, auto, overrides) for name, (auto, overrides) in HEADS.items()}
    rc_settings = {"bidirectional": True, "rcps": True, "complement_map": bioxlstm.complement_map(tokenizer)}
    exports["BioXLSTMForMaskedLM-rcps"] = ("BioXLSTMForMaskedLM", "AutoModelForMaskedLM", rc_settings)
    expected, directories = {}, {}
    for name, (head, _, overrides) in exports.items():
        config = tiny_model(vocab_size=len(tokenizer), domain="dna", pad_token_id=tokenizer.pad_token_id).config
        config = bioxlstm.BioXLSTMConfig(**{**config.to_dict(), **overrides})
        torch.manual_seed(1)
        model = getattr(bioxlstm, head)(config).eval()
        with torch.no_grad():
            output = model(ids)[0]
        expected[name] = output
        directories[name] = str(export(model, tmp_path / name, tokenizer))
    result = run_on_plain_transformers(
        f"""
import json, torch, transformers
from transformers import AutoTokenizer, pipeline
heads = {json.dumps({name: auto for name, (_, auto, _) in exports.items()})}
directories = {json.dumps(directories)}
tokenizer = AutoTokenizer.from_pretrained(directories["BioXLSTMModel"], trust_remote_code=False)
ids = tokenizer({text!r}, return_tensors="pt").input_ids
outputs = {{}}
for name, auto in heads.items():
    model = getattr(transformers, auto).from_pretrained(directories[name], trust_remote_code=True).eval()
    with torch.no_grad():
        outputs[name] = model(ids)[0].tolist()
fill = pipeline("fill-mask", model=directories["BioXLSTMForMaskedLM"], trust_remote_code=True)
filled = fill("ACGT<mask>GCA", targets=list("ACGT"))
classify = pipeline("text-classification", model=directories["BioXLSTMForSequenceClassification"], trust_remote_code=True)
print(json.dumps({{"outputs": outputs, "filled": [f["token_str"] for f in filled],
                  "scores": [f["score"] for f in filled], "label": classify({text!r})[0]["label"]}}))
""",
        tmp_path,
        plain_transformers,
    )
    for name in exports:
        assert torch.equal(torch.tensor(result["outputs"][name]), expected[name]), name
    assert sorted(result["filled"]) == list("ACGT")
    assert result["scores"] == sorted(result["scores"], reverse=True)
    assert result["label"] in ("LABEL_0", "LABEL_1")


def test_a_bundled_model_is_described_and_exported_with_its_own_card(tmp_path):
    """`--model protein` names a bundled model, not a folder of the working directory: `info` and
    `export` must find its card wherever they run."""
    card = (bioxlstm.pretrained.resolve_model("chem-icl") / "README.md").read_text()
    result = cli("info", "--model", "chem-icl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert card.strip().splitlines()[-1] in result.stdout
    result = cli("export", "--model", "chem-icl", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    own = json.loads((bioxlstm.pretrained.resolve_model("chem-icl") / "bioxlstm_card.json").read_text())
    exported = json.loads((tmp_path / "out" / "bioxlstm_card.json").read_text())
    assert exported["training_data"] == own["training_data"] and exported["metrics"] == own["metrics"]
