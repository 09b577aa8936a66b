"""What a user gets for a mistake: exit status 1, one line that names the file, record and position
(1-based, as the user counts), and every output file that existed before left as it was. Also the
inputs that used to give a silently wrong answer and are now either honoured or refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bioxlstm import progress
from bioxlstm.cli import main

ROOT = Path(__file__).resolve().parents[1]
GLOBINS = ROOT / "data" / "globins45.fa"
GENOME = ROOT / "data" / "ecoli_536_NC_008253.fna.gz"
KEEP = "an output file from an earlier run\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def files(tmp_path):
    """Small inputs, each with one mistake, and an output file that must survive every error."""
    texts = {
        "wt.fa": ">wt\nMKVLA\n",
        "ok.fa": ">a\nACGTACGT\n>b\nACGT\n",
        "duplicate_ids.fa": ">x\nACGT\n>y\nACGA\n>x\nACGG\n",
        "no_header.fa": "ACGT\nACGT\n",
        "unquoted.csv": "mutant\nK2Q\nM1A,K2Q\n",
        "same_position.csv": "mutant\nM1A:M1C\n",
        "header_only.csv": "mutant\n",
        "blank_lines.csv": "mutant\n\nK2Q\n\nW1Q\n",
        "mutants.csv": "mutant\nK2Q\n",
        "columns.a3m": ">query\nMKVLA\n>homolog\nMK-LA\n>short\nMKV\n",
        "no_end.sto": "# STOCKHOLM 1.0\nquery MKVLA\nhomolog MKILA\n",
        "table.csv": "id,sequence\nfirst,ACGT\nsecond,ACGA\n",
        "named.csv": "name,sequence\nfirst,ACGT\nsecond,ACGA\n",
        "blank_row.csv": "id,sequence\nfirst,ACGT\n\nsecond,ACGA\n",
        "blank_line.smi": "CCO\n\nCCN\n",
        "plain.fa.gz": ">a\nACGT\n",
        "seqs.xyz": ">a\nACGT\n",
        "iron.smi": "CCO\nC[Fe]\n",
        "long_wt.fa": ">titanic\n" + "M" * 150_000 + "\n",
        "long_mutants.csv": "mutant,DMS_score\nM1A,0.5\n",
        "twice.csv": "mutant,DMS_score\nM1A,0.5\nK2Q,0.1\nM1A,0.9\n",
        "out.csv": KEEP,
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def fails(arguments: list[str], capsys) -> str:
    """The one error line of a command that must fail with status 1."""
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert exit_.value.code == 1, error
    assert len(lines) == 1 and lines[0].startswith("bioxlstm: error: "), error
    return lines[0]


BAD_INPUTS = [
    # (arguments, what the one line says); {d} is the folder of `files`, out.csv the output that must survive
    (["generate", "--model", "dna", "--prompt", "ACGUXZ"], "prompt 'ACGUXZ': 'U' at position 4 is not allowed"),
    (["generate", "--model", "dna", "--prompt", "AC GT"], "prompt 'AC GT': ' ' at position 3 is not allowed"),
    (["generate", "--model", "dna", "--top-p", "0"], "argument --top-p: expected a probability mass above 0 and at most 1, not '0'"),
    (["generate", "--model", "dna", "--top-p", "1.5"], "not '1.5'"),
    (["generate", "--model", "dna", "--top-p", "nan"], "not 'nan'"),
    (["generate", "--model", "dna", "--top-k", "0"], "argument --top-k: expected a whole number of at least 1, not '0'"),
    (["generate", "--model", "dna", "--temperature", "inf"], "argument --temperature: expected a temperature above 0 and at most 100, not 'inf'"),
    (["generate", "--model", "dna", "--temperature", "1e308"], "argument --temperature: expected a temperature above 0 and at most 100, not '1e308'"),
    (["generate", "--model", "dna", "--temperature", "nan"], "not 'nan'"),
    # generate samples; only inpaint's greedy fill takes 0, and the message says the rule it applies
    (["generate", "--model", "dna", "--temperature", "0"], "argument --temperature: expected a temperature above 0 and at most 100, not '0'"),
    (["inpaint", "--model", "protein", "--input", str(GLOBINS), "--span", "2-5", "--temperature", "-1"],
     "argument --temperature: expected a temperature from 0 to 100, not '-1'"),
    (["generate", "--model", "dna", "--max-new-tokens", "99999999999999999999"],
     "argument --max-new-tokens: expected a whole number from 1 to 1,000,000, not '99999999999999999999'"),
    (["generate", "--model", "dna", "--batch-size", "0"], "argument --batch-size: expected a whole number of at least 1"),
    (["generate", "--model", "dna", "--bogus"], "unrecognized arguments: --bogus"),
    (["inpaint", "--model", "protein", "--input", str(GLOBINS), "--span", "2-5", "--max-fill-length", "-4"],
     "argument --max-fill-length: expected a whole number of at least 1, not '-4'"),
    (["inpaint", "--model", "protein", "--input", str(GLOBINS), "--span", "2-5", "--max-fill-length", "0"], "not '0'"),
    (["inpaint", "--model", "protein", "--input", str(GLOBINS), "--span", "150-160"],
     f"--span 150-160: {GLOBINS}: record 'MYG_ESCGI' has 153 residues, so a span ends at 153 at most"),
    (["inpaint", "--model", "protein", "--input", str(GLOBINS), "--span", "10-20", "--span", "15-25"],
     "--span 10-20 and --span 15-25 overlap"),
    (["inpaint", "--model", "protein", "--input", str(GLOBINS), "--span", "20-10"],
     "--span '20-10': the start 20 is after the end 10; write START-END, e.g. 10-20"),
    (["inpaint", "--model", "protein", "--input", str(GLOBINS), "--span", "0-5"],
     "--span '0-5': positions start at 1 (the first residue), not 0"),
    (["score", "--model", "dna", "--input", "{d}/ok.fa", "--window", "-5"], "argument --window: expected a whole number"),
    (["score", "--model", "dna", "--input", "{d}/ok.fa", "--device", "bogus"], "device 'bogus': not a device name"),
    (["score", "--model", "dna", "--input", "{d}/ok.fa", "--device", "cuda:7"], "device 'cuda:7': this machine has"),
    (["score", "--model", "dna", "--input", "{d}"], "{d}: is a directory, not a sequence file"),
    (["score", "--model", "dna", "--input", "{d}/plain.fa.gz"],
     "{d}/plain.fa.gz: not a gzip file (it lacks the gzip signature), although its name ends in .gz"),
    (["score", "--model", "dna", "--input", "{d}/seqs.xyz"], "or name the format with --format"),
    (["score", "--model", "dna", "--input", "{d}/blank_row.csv"],
     "{d}/blank_row.csv: line 3 has no sequence in column 'sequence' (a blank line is an empty record)"),
    (["score", "--model", "chem", "--input", "{d}/blank_line.smi"], "{d}/blank_line.smi: record 'line_2' is empty"),
    (["score", "--model", "chem", "--input", "{d}/iron.smi"],
     "{d}/iron.smi: record 'line_2': token '[Fe]' at position 2 is not in the model's vocabulary"),
    (["evaluate", "variants", "--model", "protein", "--assay", "{d}/long_mutants.csv", "--wildtype", "{d}/long_wt.fa"],
     "{d}/long_wt.fa: record 'titanic': the wild type has 150,000 residues; variants are scored as whole sequences of at most 100,000"),
    (["score", "--model", "protein", "--wildtype", "{d}/long_wt.fa", "--mutants", "{d}/long_mutants.csv"],
     "{d}/long_wt.fa: record 'titanic': the wild type has 150,000 residues"),
    (["evaluate", "variants", "--model", "protein", "--assay", "{d}/twice.csv", "--wildtype", "{d}/wt.fa"],
     "{d}/twice.csv: lines 2 and 4 hold the same mutant 'M1A' (measured 0.5 and 0.9); keep one row per variant"),
    (["score", "--model", "dna", "--input", "{d}/duplicate_ids.fa"],
     "{d}/duplicate_ids.fa: records 1 and 3 share the id 'x'"),
    (["score", "--model", "dna", "--input", "{d}/no_header.fa"],
     "{d}/no_header.fa: not valid fasta: the first line is not a FASTA header: a record starts with '>'"),
    (["score", "--model", "protein", "--input", "{d}/columns.a3m"],
     "{d}/columns.a3m: not valid a3m: record 'short' has 3 match columns (upper-case letters and '-'), the query 5"),
    (["score", "--model", "protein", "--input", "{d}/no_end.sto"], "{d}/no_end.sto: not valid stockholm: the alignment does not end with its '//' line"),
    (["score", "--model", "protein", "--wildtype", "{d}/wt.fa", "--mutants", "{d}/unquoted.csv"],
     "{d}/unquoted.csv: line 3: 2 fields, the header has 1 (quote a value that holds the separator)"),
    (["score", "--model", "protein", "--wildtype", "{d}/wt.fa", "--mutants", "{d}/same_position.csv"],
     "{d}/same_position.csv: line 2: mutant 'M1A:M1C': changes position 1 twice"),
    (["score", "--model", "protein", "--wildtype", "{d}/wt.fa", "--mutants", "{d}/header_only.csv"],
     "{d}/header_only.csv: no mutants (a header and no rows)"),
    (["score", "--model", "protein", "--wildtype", "{d}/wt.fa", "--mutants", "{d}/blank_lines.csv"],
     "{d}/blank_lines.csv: line 5: mutant 'W1Q': the wild type has M at position 1, not W"),
    (["score", "--model", "dna", "--wildtype", "{d}/wt.fa", "--mutants", "{d}/mutants.csv"],
     "variant-effect scoring needs a protein model; this one is for dna"),
    (["embed", "--model", "dna", "--input", "{d}/ok.fa", "--layer", "99"],
     "layer 99: the model has 5 hidden states, 0 (token embeddings) to 4"),
]


@pytest.mark.parametrize("arguments, message", BAD_INPUTS, ids=lambda value: None if isinstance(value, list) else value[:40])
def test_a_mistake_is_one_line_and_leaves_the_output_untouched(files, capsys, arguments, message):
    arguments = [argument.format(d=files) for argument in arguments]
    output = files / ("out.parquet" if arguments[0] == "embed" else "out.csv")
    output.write_text(KEEP)
    error = fails([*arguments, "--output", str(output)], capsys)
    assert message.format(d=files) in error
    assert output.read_text() == KEEP
    assert sorted(path.name for path in files.iterdir() if path.name.startswith(".")) == []  # no temporary left


def test_closed_standard_input_is_a_user_error(files):
    result = subprocess.run(
        [sys.executable, "cli.py", "score", "--model", "dna", "--input", "-", "--format", "fasta"],
        cwd=ROOT, capture_output=True, text=True, preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "bioxlstm: error: standard input: it is closed; pipe the records in or give a file"


def test_ctrl_c_ends_with_one_line_and_leaves_the_existing_output(tmp_path):
    """Interrupted while a genome is embedded, halfway through writing its Parquet file."""
    output = tmp_path / "genome.parquet"
    output.write_text(KEEP)
    command = [sys.executable, "cli.py", "embed", "--model", "dna", "--input", str(GENOME), "--window", "2048",
               "--output", str(output)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".genome.parquet.*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)  # the temporary output exists once the first windows are embedded
    assert process.poll() is None, "the genome was embedded before it could be interrupted"
    process.send_signal(signal.SIGINT)
    error = process.communicate(timeout=60)[1]
    assert process.returncode == 130
    assert error.strip() == "bioxlstm: interrupted; no output file was left half-written"
    assert output.read_text() == KEEP and list(tmp_path.iterdir()) == [output]


# --- inputs that used to give a silently wrong answer, now honoured ---------------------------------


def test_score_writes_json_lines_to_the_output_it_is_given(files, capsys):
    output = files / "scores.jsonl"
    main(["score", "--model", "dna", "--input", str(files / "ok.fa"), "--json", "--output", str(output)])
    assert capsys.readouterr().out == ""
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(row["id"], row["length"]) for row in rows] == [("a", 8), ("b", 4)]


def test_table_inputs_keep_their_own_ids(files, capsys):
    main(["score", "--model", "dna", "--input", str(files / "table.csv"), "--json"])
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["first", "second"]
    main(["score", "--model", "dna", "--input", str(files / "named.csv"), "--id-column", "name", "--json"])
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["first", "second"]


def test_molecule_perplexity_is_per_token_not_per_character(files, capsys):
    """CCl is three characters, but two tokens (C, Cl) and the end token are predicted."""
    (files / "molecule.smi").write_text("CCl\n")
    main(["score", "--model", "chem", "--input", str(files / "molecule.smi"), "--json"])
    row = json.loads(capsys.readouterr().out)
    assert row["length"] == 3
    assert row["perplexity"] == pytest.approx(2.718281828 ** (-row["log_likelihood"] / 3))


def test_long_jobs_report_progress_in_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0.0)
    with progress.token_progress("scoring") as bar:
        for _ in range(3):
            bar.update(1_000_000)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all("\r" not in line for line in lines)
    assert lines[-1].startswith("scoring: 3.00Mtok")


def _capped_memory(gigabytes: int):
    def cap():
        import resource

        limit = gigabytes * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


def test_a_genome_too_long_for_a_bidirectional_model_in_memory_says_what_to_do(tmp_path):
    """A 2 Mb record into a bidirectional model, under a 4 GB memory cap: it must be read whole, which
    does not fit; the user learns that and how to split it, and the existing output stays."""
    import bioxlstm
    from bioxlstm.export import export

    tokenizer = bioxlstm.load_tokenizer("dna")
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_heads=2, bidirectional=True,
        pad_token_id=tokenizer.pad_token_id, domain="dna", kernel="native",
    )  # fmt: skip
    model = export(bioxlstm.BioXLSTMModel(config), tmp_path / "bidirectional", tokenizer)
    (genome,) = bioxlstm.io.read_records(GENOME, domain="dna")
    bioxlstm.io.write_records([bioxlstm.io.Record("chromosome", genome.sequence[:2_000_000])], tmp_path / "long.fa")
    output = tmp_path / "out.parquet"
    output.write_text(KEEP)
    result = subprocess.run(
        [sys.executable, "cli.py", "embed", "--model", str(model), "--input", str(tmp_path / "long.fa"), "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, preexec_fn=_capped_memory(4),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("bioxlstm: error: not enough memory for 1 sequence(s) of up to 2,000,001 tokens")
    assert "split the sequence into shorter pieces" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert output.read_text() == KEEP


def test_a_truncated_weights_file_is_named_in_one_line(tmp_path, capsys):
    import shutil

    from bioxlstm.pretrained import resolve_model

    model = tmp_path / "model"
    shutil.copytree(resolve_model("dna"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    error = fails(["score", "--model", str(model), "--input", str(GLOBINS)], capsys)
    assert error.startswith(f"bioxlstm: error: {model}: its weights cannot be read (")
    assert error.endswith("the file may be truncated: copy it again")


def test_a_broken_metrics_file_is_named_with_its_line_and_column(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"perplexity": 3.2,\n oops}')
    error = fails(["export", "--model", "dna", "--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json")], capsys)
    assert error == f"bioxlstm: error: {tmp_path / 'metrics.json'}: not valid JSON (Expecting property name enclosed in double quotes at line 2, column 2)"
    assert not (tmp_path / "out").exists()


# --- issue 31: outputs, models, checkpoints and inputs that used to end in a traceback or silence ----


def test_scores_are_refused_as_fasta_before_anything_is_scored(files, capsys):
    output = files / "scores.fa"
    output.write_text(KEEP)
    error = fails(["score", "--model", "dna", "--input", str(files / "ok.fa"), "--output", str(output)], capsys)
    assert error == f"bioxlstm: error: --output {output}: scores are a table; name the file .csv, .tsv, .parquet, .jsonl (or give --json)"
    assert output.read_text() == KEEP


def test_an_output_in_a_missing_directory_or_onto_a_directory_names_the_users_path(files, capsys):
    arguments = ["score", "--model", "dna", "--input", str(files / "ok.fa"), "--output"]
    missing = files / "nodir" / "x.csv"
    error = fails([*arguments, str(missing)], capsys)
    assert error == f"bioxlstm: error: {missing}: cannot be written: the directory {missing.parent} does not exist"
    directory = files / "outdir.csv"
    directory.mkdir()
    (directory / "kept.txt").write_text(KEEP)
    error = fails([*arguments, str(directory)], capsys)
    assert error == f"bioxlstm: error: {directory}: is a directory; name a file to write the output to"
    assert [path.name for path in directory.iterdir()] == ["kept.txt"]
    assert not [path.name for path in files.iterdir() if path.name.startswith(".")]  # no temporary file left, none named


def test_a_model_whose_config_does_not_fit_its_weights_is_one_line_naming_the_tensor(tmp_path, capsys):
    import shutil

    from bioxlstm.pretrained import resolve_model

    model = tmp_path / "model"
    shutil.copytree(resolve_model("dna"), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_size": config["hidden_size"] // 2}))
    error = fails(["score", "--model", str(model), "--input", str(GLOBINS)], capsys)
    assert error.startswith(f"bioxlstm: error: {model}: config.json does not match the weights: backbone.")
    assert f"is ({config['hidden_size'] * 2},) in the weights but ({config['hidden_size']},) by config.json" in error
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}))
    error = fails(["score", "--model", str(model), "--input", str(GLOBINS)], capsys)
    assert error == f"bioxlstm: error: {model / 'config.json'}: block_types has 4 entries for num_hidden_layers=5"
    one_more_block = {"num_hidden_layers": config["num_hidden_layers"] + 1, "block_types": config["block_types"] + ["mlstm"]}
    (model / "config.json").write_text(json.dumps({**config, **one_more_block}))
    error = fails(["score", "--model", str(model), "--input", str(GLOBINS)], capsys)
    assert f"config.json asks for backbone.blocks.{config['num_hidden_layers']}." in error  # not random weights


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_foreign_checkpoint_holding_an_object_is_refused_as_such_not_as_truncated(tmp_path, protocol):
    import shutil

    import torch

    source, output = tmp_path / "checkpoint", tmp_path / "converted"
    shutil.copytree(ROOT / "tests" / "fixtures" / "reference" / "prot_xlstm" / "homologs", source)
    weights = source / "pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "optimizer": Exception("an object")}, weights, pickle_protocol=protocol)
    result = subprocess.run(
        [sys.executable, "cli.py", "convert", str(source), "--output", str(output)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr  # no pickle-protocol warning from torch
    assert f"{weights}: holds pickled objects other than tensors (" in result.stderr
    assert "Exception" in result.stderr and "never loaded here" in result.stderr and "truncated" not in result.stderr
    assert not output.exists()


def test_a_checkpoint_of_tensors_in_a_newer_pickle_protocol_converts(tmp_path):
    import shutil

    import torch

    source, output = tmp_path / "checkpoint", tmp_path / "converted"
    shutil.copytree(ROOT / "tests" / "fixtures" / "reference" / "prot_xlstm" / "homologs", source)
    weights = source / "pytorch_model.bin"
    torch.save(torch.load(weights, weights_only=True), weights, pickle_protocol=4)
    result = subprocess.run(
        [sys.executable, "cli.py", "convert", str(source), "--output", str(output)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "pickle protocol" not in result.stderr and (output / "config.json").is_file()


def test_molecule_scores_flag_what_rdkit_cannot_read(files, capsys):
    (files / "molecules.smi").write_text("C1CC ring\nCCO ethanol\n")
    main(["score", "--model", "chem", "--input", str(files / "molecules.smi"), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["id"], row["valid"]) for row in rows] == [("ring", "no"), ("ethanol", "yes")]


def test_training_for_zero_steps_is_refused_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    error = fails(["train", str(ROOT / "recipes" / "chem-clm-tiny.yaml"), "--output-dir", str(run), "training.max_steps=0"], capsys)
    assert error.endswith("chem-clm-tiny.yaml: training.max_steps must be at least 1 (or -1 to train for num_train_epochs), got 0")
    assert not run.exists()


def test_a_regression_probe_names_the_file_row_and_record_of_a_label_that_is_no_number(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"seq{i}" for i in range(6)]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array([float(i % 3) for i in range(12)], pa.float32()), 2)
    pq.write_table(pa.table({"id": ids, "embedding": vectors}), tmp_path / "embeddings.parquet")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},{'high' if i == 'seq3' else 1.5}\n" for i in ids))
    error = fails(["evaluate", "probe", "--embeddings", str(tmp_path / "embeddings.parquet"), "--labels", str(labels),
                   "--task", "regression", "--folds", "2"], capsys)  # fmt: skip
    assert error == (
        f"bioxlstm: error: {labels}: row 4: record 'seq3': label 'high' in 'label' is not a finite number, "
        "which --task regression needs"
    )
