"""The command line, end to end on bundled data: every subcommand, piping, and user errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from Bio.Seq import reverse_complement
from helpers import tiny_model

import bioxlstm
from bioxlstm.cli import main
from bioxlstm.export import export

ROOT = Path(__file__).resolve().parents[1]
GLOBINS = ROOT / "data" / "globins45.fa"
GENOME = ROOT / "data" / "ecoli_536_NC_008253.fna.gz"


def saved_model(directory: Path, domain: str) -> Path:
    tokenizer = bioxlstm.load_tokenizer(domain)
    model = tiny_model(
        vocab_size=len(tokenizer), domain=domain, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    return export(model, directory / domain, tokenizer)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {domain: saved_model(directory, domain) for domain in ("dna", "protein", "smiles")}


@pytest.fixture(scope="module")
def dna_windows(tmp_path_factory):
    """Three 600-bp windows of the E. coli genome, as FASTA."""
    (genome,) = bioxlstm.io.read_records(GENOME, domain="dna")
    records = [bioxlstm.io.Record(f"ecoli_{start}", genome.sequence[start : start + 600]) for start in (0, 100_000, 2_000_000)]
    path = tmp_path_factory.mktemp("dna") / "windows.fa"
    bioxlstm.io.write_records(records, path)
    return path


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, input=stdin)


def test_root_shim_runs_from_the_repository_root():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bioxlstm {bioxlstm.__version__}"


def test_without_a_command_prints_help_and_fails():
    result = run()
    assert result.returncode == 1
    assert "usage: bioxlstm" in result.stderr


def test_generate_writes_reproducible_fasta_with_log_likelihoods(models, tmp_path):
    args = ["generate", "--model", str(models["protein"]), "-n", "5", "--max-new-tokens", "30", "--seed", "7",
            "--prompt", "MKV", "--top-k", "10", "--temperature", "0.9", "--batch-size", "2"]
    main([*args, "--output", str(tmp_path / "a.fa")])
    main([*args, "--output", str(tmp_path / "b.fa")])
    records = list(bioxlstm.io.read_records(tmp_path / "a.fa", domain="protein"))
    assert (tmp_path / "a.fa").read_text() == (tmp_path / "b.fa").read_text()
    assert [r.id for r in records] == [f"generated_{i}" for i in range(1, 6)]
    assert all(r.sequence.startswith("MKV") for r in records)
    assert all("log_likelihood=" in r.description for r in records)


def test_generate_molecules_as_csv(models, tmp_path):
    main(["generate", "--model", str(models["smiles"]), "-n", "4", "--max-new-tokens", "20", "--seed", "1",
          "--output", str(tmp_path / "mols.csv")])
    table = pd.read_csv(tmp_path / "mols.csv", keep_default_na=False)
    assert list(table.columns) == ["id", "sequence", "log_likelihood", "finished"] and len(table) == 4
    assert (table.log_likelihood < 0).all()


def test_score_matches_the_model_loss_and_does_not_depend_on_the_window(models, tmp_path):
    main(["score", "--model", str(models["protein"]), "--input", str(GLOBINS), "--output", str(tmp_path / "s.csv")])
    main(["score", "--model", str(models["protein"]), "--input", str(GLOBINS), "--window", "16",
          "--batch-size", "3", "--output", str(tmp_path / "w.csv")])
    whole, windowed = pd.read_csv(tmp_path / "s.csv"), pd.read_csv(tmp_path / "w.csv")
    assert len(whole) == 45 and list(whole.id) == list(windowed.id)
    assert np.allclose(whole.log_likelihood, windowed.log_likelihood, atol=1e-3)

    model, tokenizer = bioxlstm.pretrained.load_pretrained(models["protein"])
    first = next(iter(bioxlstm.io.read_records(GLOBINS)))
    ids = torch.tensor([tokenizer(first.sequence)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        expected = -model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
    assert whole.log_likelihood[0] == pytest.approx(expected, abs=1e-3)
    assert whole.perplexity[0] == pytest.approx(np.exp(-expected / (len(first.sequence) + 1)), rel=1e-4)


def test_embed_parquet_and_npy_keep_ids_and_windows_do_not_change_vectors(models, dna_windows, tmp_path):
    common = ["embed", "--model", str(models["dna"]), "--input", str(dna_windows)]
    main([*common, "--output", str(tmp_path / "e.parquet")])
    main([*common, "--window", "50", "--output", str(tmp_path / "e.npy")])
    table = pd.read_parquet(tmp_path / "e.parquet")
    vectors = np.load(tmp_path / "e.npy")
    assert list(table.id) == ["ecoli_0", "ecoli_100000", "ecoli_2000000"]
    assert (tmp_path / "e.ids.txt").read_text().split() == list(table.id)
    assert vectors.shape == (3, 64)
    assert np.allclose(np.stack(table.embedding), vectors, atol=1e-4)


def test_rc_invariant_embeddings_and_scores_agree_across_strands(models, dna_windows, tmp_path):
    reverse = tmp_path / "reverse.fa"
    bioxlstm.io.write_records(
        [bioxlstm.io.Record(r.id, reverse_complement(r.sequence)) for r in bioxlstm.io.read_records(dna_windows)], reverse
    )
    outputs = {}
    for name, path in (("forward", dna_windows), ("reverse", reverse)):
        main(["embed", "--model", str(models["dna"]), "--input", str(path), "--rc-invariant", "--pooling", "none",
              "--output", str(tmp_path / f"{name}.parquet")])
        main(["score", "--model", str(models["dna"]), "--input", str(path), "--rc-invariant",
              "--output", str(tmp_path / f"{name}.csv")])
        outputs[name] = (pd.read_parquet(tmp_path / f"{name}.parquet"), pd.read_csv(tmp_path / f"{name}.csv"))
    for forward, reverse_ in zip(outputs["forward"][0].embedding, outputs["reverse"][0].embedding):
        forward, reverse_ = np.stack(forward), np.stack(reverse_)
        assert forward.shape == (600, 64)
        assert np.allclose(forward, reverse_[::-1], atol=1e-4)
    assert np.allclose(outputs["forward"][1].log_likelihood, outputs["reverse"][1].log_likelihood, atol=1e-3)


def test_info_json(models, capsys):
    main(["info", "--model", str(models["dna"]), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "BioXLSTMForCausalLM" and info["domain"] == "dna"
    assert info["blocks"] == ["mLSTM", "sLSTM", "mLSTM"]


def test_generate_pipes_into_score_through_stdin(models):
    generated = run("generate", "--model", str(models["protein"]), "-n", "3", "--max-new-tokens", "15", "--seed", "3")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.count(">") == 3
    scored = run("score", "--model", str(models["protein"]), "--input", "-", "--format", "fasta", "--json",
                 stdin=generated.stdout)
    assert scored.returncode == 0, scored.stderr
    rows = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["generated_1", "generated_2", "generated_3"]


BAD_INPUTS = [
    (["score", "--model", "{protein}", "--input", "no_such.fa"], "no_such.fa: no such file"),
    (["score", "--model", "{dna}", "--input", str(GLOBINS)], "invalid character"),
    (["score", "--model", "{dna}", "--input", "-"], "standard input: name its text format"),
    (["score", "--model", "no/such/model", "--input", str(GLOBINS)], "no/such/model: no saved model here"),
    (["embed", "--model", "{protein}", "--input", str(GLOBINS), "--output", "x.txt"], "written as .parquet or .npy"),
    (["embed", "--model", "{protein}", "--input", str(GLOBINS), "--pooling", "cls", "--output", "x.npy"],
     "--pooling cls reads the <cls> token"),
    (["score", "--model", "{protein}", "--input", str(GLOBINS), "--rc-invariant"], "--rc-invariant needs a DNA model"),
    (["generate", "--model", "{protein}", "-n", "0"], "argument -n: expected a whole number of at least 1, not '0'"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_user_errors_exit_non_zero_with_one_line(models, args, message):
    args = [a.format(**{k: str(v) for k, v in models.items()}) for a in args]
    result = run(*args, stdin="")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bioxlstm: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_invalid_character_error_names_file_record_and_position(models, tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nACGT\n>broken\nACGTJACG\n")
    result = run("score", "--model", str(models["dna"]), "--input", str(bad))
    assert result.returncode == 1
    assert f"{bad}: record 'broken': invalid character 'J' at position 5" in result.stderr


def test_debug_shows_the_traceback(models):
    result = run("--debug", "score", "--model", str(models["protein"]), "--input", "no_such.fa")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_generate_molecules_like_examples_and_until_unique_valid(models, tmp_path):
    examples = tmp_path / "examples.smi"
    examples.write_text("CC(=O)Nc1ccc(O)cc1\nCC(=O)Nc1ccc(OC)cc1\nCC(=O)Nc1ccc(Cl)cc1\n")
    common = ["generate", "--model", str(models["smiles"]), "-n", "6", "--max-new-tokens", "20", "--seed", "2"]
    main([*common, "--context", str(examples), "--output", str(tmp_path / "like.csv")])
    like = pd.read_csv(tmp_path / "like.csv", keep_default_na=False)
    assert list(like.columns) == ["id", "sequence", "valid"] and len(like) == 6
    result = run(*common, "--unique-valid", "--max-draws", "12", "--output", str(tmp_path / "unique.smi"))
    assert result.returncode == 0, result.stderr
    assert "drawn" in result.stderr and "valid" in result.stderr  # the sampling report
    molecules = (tmp_path / "unique.smi").read_text().split()
    assert len(molecules) == len(set(molecules)) <= 6
    assert all(bioxlstm.chem.is_valid(m) for m in molecules)


def test_context_needs_a_protein_or_molecule_model(models):
    result = run("generate", "--model", str(models["dna"]), "--context", str(GLOBINS), "-n", "1")
    assert result.returncode == 1
    assert "bioxlstm: error: --context needs a protein or molecule model; this one is for dna" in result.stderr
