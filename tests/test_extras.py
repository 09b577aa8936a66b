"""The base install and its extras: a command whose extra is missing says in one line which extra to
install and writes nothing; generate, score and embed need no extra at all.

A missing extra is played by a Python whose import system refuses that extra's modules exactly as it
refuses an absent one (ModuleNotFoundError on import, no spec for `find_spec`). The real base install,
built from PyPI in a fresh environment, is checked by scripts/test_base_install.sh."""

import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from bioxlstm.cli import main
from bioxlstm.extras import EXTRA_OF_MODULE, missing_optional_module

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS_OF_COMMANDS = ("chem", "train", "eval", "gpu")

# Python imports `sitecustomize` at start-up; a None entry in sys.modules reads as "not installed".
REFUSING_SITECUSTOMIZE = """\
import os
import sys

for name in os.environ["REFUSED_MODULES"].split():
    sys.modules[name] = None
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def modules_of(extra: str) -> list[str]:
    return [module for module, owner in EXTRA_OF_MODULE.items() if owner == extra]


def distribution(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()


@pytest.fixture
def without(tmp_path):
    """Runs `bioxlstm ARGUMENTS` in `tmp_path` in a Python where `modules` are not installed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(REFUSING_SITECUSTOMIZE)

    def run(modules, *arguments, code=None):
        environment = {
            **os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "REFUSED_MODULES": " ".join(modules),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        }
        command = ["-c", code] if code else ["-m", "bioxlstm.cli", *arguments]
        return subprocess.run(
            [sys.executable, *command], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
        )

    return run


def test_every_optional_module_comes_with_the_extra_its_message_names_and_not_with_the_base_install():
    extras = PROJECT["optional-dependencies"]
    base = {distribution(requirement) for requirement in PROJECT["dependencies"]}
    providers = packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        provided_by = {distribution(name) for name in providers[module]}
        assert provided_by & {distribution(requirement) for requirement in extras[extra]}, (module, extra)
        assert not provided_by & base, module
    # ... and every dependency of those extras is one the message knows.
    known = {distribution(name) for module in EXTRA_OF_MODULE for name in providers[module]}
    for extra in EXTRAS_OF_COMMANDS:
        assert {distribution(requirement) for requirement in extras[extra]} <= known, extra
    assert extras["all"] == [f"bioxlstm[{','.join(EXTRAS_OF_COMMANDS)}]"]
    # The package never imports xlstm: the tests use it as an oracle.
    assert "xlstm" not in base and any(distribution(r) == "xlstm" for r in extras["test"])


def test_a_missing_module_is_found_behind_the_error_a_library_wraps_it_in():
    """transformers reports a missing accelerate as "Could not import module 'Trainer'", from the original."""
    try:
        try:
            raise ModuleNotFoundError("No module named 'accelerate'", name="accelerate")
        except ModuleNotFoundError as missing:
            raise ModuleNotFoundError("Could not import module 'Trainer'") from missing
    except ModuleNotFoundError as wrapped:
        assert wrapped.name is None and missing_optional_module(wrapped) == "accelerate"
    assert missing_optional_module(ModuleNotFoundError("No module named 'pandas'", name="pandas")) is None


@pytest.fixture(scope="module")
def pooled_embeddings(tmp_path_factory):
    directory = tmp_path_factory.mktemp("probe")
    (directory / "windows.fasta").write_text("".join(f">w{i}\n{'ACGT' * (i + 2)}\n" for i in range(10)))
    (directory / "labels.csv").write_text("id,label\n" + "".join(f"w{i},{i % 2}\n" for i in range(10)))
    main(["embed", "--model", "dna", "--input", str(directory / "windows.fasta"),
          "--output", str(directory / "e.parquet")])  # fmt: skip
    return directory


@pytest.mark.parametrize(
    "extra, command, arguments, output",
    [
        ("chem", "generate", ["generate", "--model", "chem", "-n", "2", "--output", "molecules.smi"], "molecules.smi"),
        ("chem", "evaluate chem", ["evaluate", "chem", "--generated", "{data}/chembl31_valid_50k.smi.gz",
                                   "--reference", "{data}/chembl31_train_50k.smi.gz"], None),
        ("train", "train", ["train", "{recipes}/dna-clm-tiny.yaml", "--output-dir", "run"], "run"),
        ("eval", "evaluate probe", ["evaluate", "probe", "--embeddings", "{probe}/e.parquet",
                                    "--labels", "{probe}/labels.csv", "--plot", "folds.png"], "folds.png"),
    ],
    ids=["chem-generate", "chem-evaluate", "train", "eval-probe"],
)  # fmt: skip
def test_a_command_whose_extra_is_missing_names_it_in_one_line_and_writes_nothing(
    extra, command, arguments, output, without, pooled_embeddings, tmp_path
):
    places = {"data": ROOT / "data", "recipes": ROOT / "recipes", "probe": pooled_embeddings}
    result = without(modules_of(extra), *(argument.format(**places) for argument in arguments))
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    needed = re.fullmatch(
        rf'bioxlstm: error: {command} needs the optional dependency (\w+): pip install "bioxlstm\[{extra}\]"', line
    )
    assert needed and needed.group(1) in modules_of(extra), line
    assert result.stdout == ""
    assert output is None or not (tmp_path / output).exists()


def test_a_recipe_that_reports_to_tensorboard_without_it_names_the_extra_in_one_line(without, tmp_path):
    """Every other module of [train] installed: datasets, accelerate and peft are there."""
    result = without(["tensorboard"], "train", str(ROOT / "recipes" / "protein-clm-tiny.yaml"), "--output-dir", "run")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        'bioxlstm: error: train needs the optional dependency tensorboard: pip install "bioxlstm[train]"'
    ]
    assert not (tmp_path / "run").exists()


def test_generate_score_and_embed_need_no_extra(without, tmp_path):
    """With every optional module refused (the gpu extra's too: a CPU runs the package's own kernels)."""
    runs = [
        ["generate", "--model", model, "-n", "2", "--max-new-tokens", "12", "--seed", "0", "--output", f"{model}.fasta"]
        for model in ("dna", "protein")
    ] + [
        ["score", "--model", "dna", "--input", "dna.fasta", "--rc-invariant", "--output", "dna.csv"],
        ["score", "--model", "protein", "--input", "protein.fasta", "--output", "protein.csv"],
        ["embed", "--model", "dna", "--input", "dna.fasta", "--output", "dna.parquet"],
        ["embed", "--model", "protein", "--input", "protein.fasta", "--output", "protein.parquet"],
        ["generate", "--model", "chem", "-n", "2", "--max-new-tokens", "12", "--seed", "0", "--grammar", "none",
         "--output", "molecules.smi"],
    ]  # fmt: skip
    # One process runs them all: starting Python with torch costs more than a tiny model's work.
    code = f"from bioxlstm.cli import main\nfor arguments in {runs!r}:\n    main(arguments)"
    result = without(list(EXTRA_OF_MODULE), code=code)
    assert result.returncode == 0, result.stderr
    for model in ("dna", "protein"):
        assert (tmp_path / f"{model}.fasta").read_text().count(">") == 2
        assert len((tmp_path / f"{model}.csv").read_text().splitlines()) == 3
        assert (tmp_path / f"{model}.parquet").stat().st_size > 0
    assert len((tmp_path / "molecules.smi").read_text().splitlines()) == 2
