"""What a user and a batch job see besides the results: one error line per `torchrun` job, not one per
process; a log file that says what each job started, how far it got and how fast; no deprecation
warnings from inside `fcd`; and a README whose tested versions are pyproject.toml's."""

import os
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
from helpers import ecoli_genome

from bioxlstm import chem, progress
from bioxlstm.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST_MOVING = ("torch", "transformers", "accelerate", "datasets", "huggingface_hub", "tokenizers", "safetensors")
MOLECULES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "C1CC"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("rank, says_it", [("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_reports_a_user_error(tmp_path, rank, says_it):
    """Every process of a `torchrun` job makes the same mistake; the user reads about it once, and
    every process still fails with status 1."""
    reads = tmp_path / "dna.fa"
    reads.write_text(">a\nACGT\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "score", "--model", "dna", "--input", str(reads), "--output", str(reads)],
        capture_output=True, text=True, env={**os.environ, "RANK": rank}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    if says_it:
        assert result.stderr.splitlines() == [f"bioxlstm: error: {reads}: is also the --input; write the results to another file"]
    else:
        assert result.stderr == ""


def test_under_torchrun_only_rank_0_reports_a_mistyped_option():
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "score", "--no-such-option"],
        capture_output=True, text=True, env={**os.environ, "RANK": "3"}, timeout=300,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (1, "")


def test_a_short_job_logged_to_a_file_says_what_it_started_and_ends_with_count_and_rate(tmp_path, monkeypatch):
    """A 5 kb genome scores in well under the logging interval; the log still gets a first line
    naming the job and a last line with the tokens read and the rate."""
    genome = tmp_path / "genome.fa"
    genome.write_text(">genome\n" + ecoli_genome()[:5000] + "\n")
    log = tmp_path / "job.log"
    with log.open("w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        main(["score", "--model", "dna", "--input", str(genome), "--output", str(tmp_path / "scores.csv")])
    lines = log.read_text().splitlines()
    assert len(lines) >= 2 and all("\r" not in line for line in lines)
    assert lines[0].startswith("scoring: 0")
    assert re.fullmatch(r"scoring: 5\.0\dktok \[[\d:]+, [\d.]+[kM]?tok/s\]", lines[-1]), lines[-1]


def test_off_a_terminal_lines_between_the_first_and_last_come_at_most_once_per_interval(capsys):
    """With the default interval (a minute), a job of a moment logs its start and its end, no more."""
    with progress.progress(total=3, desc="folds", unit="fold") as bar:
        for _ in range(3):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("folds:   0%") and "0/3" in lines[0]
    assert lines[1].startswith("folds: 100%") and "3/3" in lines[1] and "fold/s]" in lines[1]


def test_off_a_terminal_a_job_that_fails_at_once_prints_no_progress_line(capsys):
    """Its error, printed by the command line, stays the one line it prints: no count that reads like a
    finished job."""
    with pytest.raises(ValueError):
        with progress.token_progress("scoring") as bar:
            bar.update(10)
            raise ValueError("a bad record")
    assert capsys.readouterr().err == ""


def _fcd_deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        f"{w.filename}:{w.lineno}: {w.message}" for w in caught
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))
        and "fcd" in Path(w.filename).parts
    ]  # fmt: skip


def test_evaluating_molecules_shows_no_deprecation_warning_from_inside_fcd(tmp_path, capsys):
    generated, reference = tmp_path / "generated.smi", tmp_path / "reference.smi"
    generated.write_text("\n".join(MOLECULES) + "\n")
    reference.write_text("CCC\nc1ccncc1\nCCOC\nCC(=O)N\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["evaluate", "chem", "--generated", str(generated), "--reference", str(reference)])
    assert "FCD" in capsys.readouterr().out
    assert _fcd_deprecations(caught) == []


def test_moses_fcd_shows_no_deprecation_warning_from_inside_fcd():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        statistics = chem.chemnet_statistics(MOLECULES[:4])
        assert chem.frechet_distance(statistics, statistics) == pytest.approx(0.0, abs=1e-3)
    assert _fcd_deprecations(caught) == []


def test_silencing_fcd_leaves_the_same_warnings_from_other_code_alone():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with chem.fcd_warnings_silenced():
            warnings.warn("ours, not fcd's", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["ours, not fcd's"]


def test_the_readme_states_the_tested_range_of_each_fast_moving_dependency():
    """scripts/test_versions.sh tests pyproject.toml's lower bounds; the README says which they are."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["train"]]
    ranges = {re.match(r"[A-Za-z0-9_.-]+", r).group(): re.sub(r"^[A-Za-z0-9_.-]+", "", r) for r in requirements}
    readme = (ROOT / "README.md").read_text()
    for name in FAST_MOVING:
        assert re.search(rf"^\| `{name}` \| `{re.escape(ranges[name])}` \|", readme, re.MULTILINE), name


def test_export_help_names_every_kind_of_model_it_accepts(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bundled default's name" in text and "saved model directory" in text and "training checkpoint" in text
