"""The command line entry points exist and agree (the subcommands arrive with their issues)."""

import subprocess
import sys
from pathlib import Path

import bioxlstm

ROOT = Path(__file__).resolve().parents[1]


def test_root_shim_runs_from_the_repository_root():
    result = subprocess.run([sys.executable, "cli.py", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bioxlstm {bioxlstm.__version__}"


def test_without_a_command_prints_help_and_fails():
    result = subprocess.run([sys.executable, "cli.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: bioxlstm" in result.stderr
