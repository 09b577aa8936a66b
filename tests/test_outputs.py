"""What a user's files can count on: an output appears whole or not at all, an existing file is never
emptied or cut short by a bad record, and embeddings are written as compact, standard Parquet."""

import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
GLOBINS = ROOT / "data" / "globins45.fa"


def cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def globins_with_a_bad_record(tmp_path: Path, position: int = 30) -> Path:
    """The 45 globins with a stop codon `*` inside record number `position`, after the first batch."""
    lines = GLOBINS.read_text().splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith(">")]
    lines[headers[position - 1] + 1] = lines[headers[position - 1] + 1][:5] + "*" + lines[headers[position - 1] + 1][6:]
    path = tmp_path / "globins_bad.fa"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command, output", [("embed", "kept.parquet"), ("score", "kept.csv")])
def test_a_bad_record_halfway_leaves_an_existing_output_untouched(tmp_path, command, output):
    existing = tmp_path / output
    existing.write_bytes(b"the user's earlier results")
    result = cli(command, "--model", "protein", "--input", globins_with_a_bad_record(tmp_path),
                 "--output", existing, "--batch-size", "8")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "globins_bad.fa" in result.stderr
    assert existing.read_bytes() == b"the user's earlier results"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([output, "globins_bad.fa"])  # no temporary left


def test_an_output_that_names_the_input_is_refused_before_anything_runs(tmp_path):
    source = tmp_path / "globins.fa"
    source.write_text(GLOBINS.read_text())
    result = cli("score", "--model", "protein", "--input", source, "--output", source)
    assert result.returncode == 1 and "is also the --input" in result.stderr
    assert source.read_text() == GLOBINS.read_text()


def test_inpainting_no_versions_is_refused_and_writes_nothing(tmp_path):
    kept = tmp_path / "keep.fa"
    kept.write_text(">mine\nMKV\n")
    result = cli("inpaint", "--model", "protein", "--input", GLOBINS, "--span", "3-5", "-n", "0", "--output", kept)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert kept.read_text() == ">mine\nMKV\n"


@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_embeddings_are_float32_lists_in_few_row_groups_readable_everywhere(tmp_path, pooling):
    output = tmp_path / "globins.parquet"
    result = cli("embed", "--model", "protein", "--input", GLOBINS, "--output", output, "--pooling", pooling, "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    parquet = pq.ParquetFile(output)
    assert parquet.metadata.num_row_groups == 1 and parquet.metadata.num_rows == 45
    vector_type = parquet.schema_arrow.field("embedding").type
    if pooling == "none":
        vector_type = vector_type.value_type
    assert str(vector_type.value_type) == "float" and vector_type.list_size > 0
    table = pd.read_parquet(output)
    assert list(table.columns) == ["id", "embedding"] and table["id"].is_unique
    assert len(datasets.Dataset.from_parquet(str(output), cache_dir=str(tmp_path / "cache"))) == 45
    assert output.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
