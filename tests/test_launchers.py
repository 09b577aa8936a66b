"""Launchers do what they say or refuse: the processes and the sharding a run really has are those the
launcher and the recipe asked for, and a mistake in a recipe, an override or a resumed run is one line,
exit status 1, with the run directory left as it was."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bioxlstm.cli import main
from bioxlstm.training import OBJECTIVES, build_trainer, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
CHEM_TINY = RECIPES / "chem-clm-tiny.yaml"
TINY_MODEL = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_heads=2", "model.chunk_size=16"]
SMALL = [
    "data.max_records=200", "data.max_eval_examples=8", "data.max_length=128", "training.per_device_train_batch_size=4",
    "training.report_to=[]", *TINY_MODEL,
]
# One recipe per objective (a new objective needs one here); the fine-tuning ones keep their init_from.
RECIPE_OF_OBJECTIVE = {
    "clm": "chem-clm-tiny",
    "mlm": "dna-mlm-rcps-tiny",
    "fim-icl": "protein-fim-icl-tiny",
    "molecule-icl": "chem-icl-tiny",
    "sequence-classification": "dna-classify-tiny",
    "sequence-regression": "chem-regress-tiny",
    "token-classification": "protein-token-tiny",
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(tmp_path, *overrides):
    return [*SMALL, f"data.cache_dir={tmp_path / 'cache'}", *overrides]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(launcher: list[str], *arguments, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [*launcher, str(ROOT / "cli.py"), "train", *map(str, arguments)]
    # In a session of its own, so that a launcher that times out takes its workers with it.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def accelerate(*options: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *options]


def snapshot(directory: Path) -> dict:
    """Every file and folder under `directory`, with its content and modification time."""
    return {
        str(path.relative_to(directory)): (path.stat().st_mtime_ns, path.read_bytes() if path.is_file() else None)
        for path in sorted(directory.rglob("*"))
    }


def assert_one_line_error(capsys, *messages: str) -> None:
    error = capsys.readouterr().err
    assert error.startswith("bioxlstm: error: ") and error.count("\n") == 1, error
    assert all(message in error for message in messages), error


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_every_parameter_so_ddp_need_not_look_for_unused_ones(tmp_path, objective):
    overrides = [
        "data.max_records=40", "data.max_eval_examples=4", "data.max_length=128", "training.report_to=[]",
        "training.per_device_train_batch_size=2", f"data.cache_dir={tmp_path / 'cache'}",
    ]
    if objective == "mlm":  # a few DNA windows rather than the windows of a whole genome
        genome = tmp_path / "genome.fa"
        genome.write_text(">genome\n" + "".join("ACGT"[(i * i + i // 7) % 4] for i in range(4000)) + "\n")
        overrides.append(f"data.train={genome}")
    recipe = load_recipe(RECIPES / f"{RECIPE_OF_OBJECTIVE[objective]}.yaml", overrides)
    assert recipe.objective == objective
    trainer = build_trainer(recipe, tmp_path / "run")
    assert trainer.args.ddp_find_unused_parameters is False
    trainer.model.train()
    trainer.model(**next(iter(trainer.get_train_dataloader()))).loss.backward()
    unused = [name for name, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{objective}: set ddp_find_unused_parameters for it; unused: {unused}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on GPUs the processes are GPU processes")
def test_torchrun_runs_two_ddp_processes_over_gloo_that_evaluate_once_at_the_end(tmp_path):
    # torchrun rather than `accelerate launch --config_file` (the README gives both): under a heavily
    # loaded CPU the accelerate launcher once left one of its two workers waiting for the other.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    output = tmp_path / "run"
    result = launch(launcher, CHEM_TINY, "--output-dir", output, *small(
        tmp_path, "training.max_steps=3", "training.eval_steps=3", "training.save_steps=3",
    ))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trained chem-clm-tiny on 2 processes (DDP over gloo): model in {output / 'model'}" in result.stderr
    assert "on 2 processes (DDP over gloo)" in (output / "model" / "README.md").read_text()
    assert "find_unused_parameters" not in result.stderr
    rows = (output / "log.csv").read_text().splitlines()
    eval_rows = [row for row in rows[1:] if row.split(",")[rows[0].split(",").index("eval_loss")]]
    assert len(eval_rows) == 1, rows  # the evaluation of step 3 is the final one, not run again


@pytest.mark.skipif(torch.cuda.is_available(), reason="with two GPUs accelerate starts two processes")
def test_accelerate_asked_for_two_processes_that_starts_one_is_refused(tmp_path):
    result = launch(
        accelerate("--quiet", "--num_processes", "2", "--main_process_port", str(free_port())),
        CHEM_TINY, "--output-dir", tmp_path / "run", *small(tmp_path, "training.max_steps=2"),
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("bioxlstm: error: ")]
    assert errors == [
        "bioxlstm: error: accelerate launch was asked for several processes but started this one alone; on CPUs use "
        "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N` "
        "(README: Training on several processes)"
    ]
    assert not (tmp_path / "run").exists()


def test_a_launched_process_ends_with_its_status_after_its_exit_handlers_and_with_its_output_flushed(tmp_path):
    handled = tmp_path / "handled"
    script = (
        "import atexit, pathlib\n"
        "from bioxlstm.training import end_launched_process\n"
        f"atexit.register(pathlib.Path({str(handled)!r}).touch)\n"
        "print('written', end='')\n"  # to a pipe, stdout keeps it in its buffer until flushed
        "end_launched_process(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert (result.returncode, result.stdout) == (3, "written"), result.stderr[-2000:]
    assert handled.exists()


@pytest.mark.parametrize(
    "arguments, status, stdout, stderr",
    [
        (["info", "--model", "chem"], 0, "model: chem\narchitecture: BioXLSTMForCausalLM\n", ""),
        (["train", "no/such/recipe.yaml"], 1, "", "bioxlstm: error: no/such/recipe.yaml: no such file or directory\n"),
        (["--no-such-option"], 1, "", "bioxlstm: error: unrecognized arguments: --no-such-option"),
    ],
    ids=["finished", "refused", "misspelled"],
)
def test_under_torchrun_the_command_line_exits_with_the_commands_status_and_output(arguments, status, stdout, stderr):
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "RANK": "0", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *arguments], capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == status, result.stderr[-2000:]
    assert result.stdout.startswith(stdout)
    assert result.stderr.startswith(stderr)


def test_a_world_size_the_trainer_does_not_run_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as a launcher of two processes sets it
    with pytest.raises(SystemExit) as exit:
        main(["train", str(CHEM_TINY), "--output-dir", str(tmp_path / "run"), *small(tmp_path, "training.use_cpu=false")])
    assert exit.value.code == 1
    assert_one_line_error(capsys, "launched as 2 processes, but the Trainer runs 1; check the recipe's training.use_cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["training.fsdp=full_shard"], "training.fsdp: 'full_shard' is the string form transformers deprecated; "
         "write training.fsdp_config: {reshard_after_forward: true} instead"),
        (["training.fsdp='shard_grad_op offload'"], "write training.fsdp_config: {cpu_offload: true, reshard_after_forward: false}"),
        (["training.fsdp=false", "training.fsdp_config={}"], "training.fsdp is false but training.fsdp_config asks for FSDP"),
        (["training.fsdp_config={}"], "the recipe's training.fsdp_config asks for FSDP, which shards the model over "
         "launched processes, but no launcher started this one; run it under `torchrun --nproc_per_node N` "
         "(N GPUs, or N CPU processes over gloo)"),
    ],
)
def test_fsdp_is_asked_for_with_an_fsdp_config_under_a_launcher(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit:
        main(["train", str(CHEM_TINY), "--output-dir", str(tmp_path / "run"), *small(tmp_path, *overrides)])
    assert exit.value.code == 1
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def bad_recipes(tmp_path):
    recipe = CHEM_TINY.read_text().replace("../data", str(ROOT / "data"))
    (tmp_path / "tab.yaml").write_text(recipe.replace("\n  max_steps:", "\n\tmax_steps:"))
    (tmp_path / "bracket.yaml").write_text(recipe.replace("num_hidden_layers: 4", "num_hidden_layers: [4"))
    return tmp_path


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{tmp}/tab.yaml"], "{tmp}/tab.yaml, line {tab_line}, column 1: not valid YAML: found character '\\t' "
         "that cannot start any token (YAML indents with spaces, never tabs)"),
        (["{tmp}/bracket.yaml"], "{tmp}/bracket.yaml, line {bracket_line}, column "),
        ([str(CHEM_TINY), "training.max_steps=["], f"{CHEM_TINY}: override 'training.max_steps=[': '[' is not a "
         "YAML value (expected the node content, but found '<stream end>'); quote text, write lists as [a, b]"),
        ([str(CHEM_TINY), "training.max_steps=abc"], f"{CHEM_TINY}: training.max_steps must be an integer, got 'abc'"),
        ([str(CHEM_TINY), "model.slstm_layers=[a]"], f"{CHEM_TINY}: model.slstm_layers must be a list of integers, got ['a']"),
        ([str(CHEM_TINY), "data.packing=maybe"], f"{CHEM_TINY}: data.packing must be true or false, got 'maybe'"),
    ],
    ids=["tab", "unclosed-bracket", "override-not-yaml", "override-wrong-type", "list-item-type", "bool-type"],
)
def test_malformed_recipes_and_overrides_are_one_line_errors_that_leave_the_run_alone(
    bad_recipes, capsys, arguments, message
):
    lines = (bad_recipes / "tab.yaml").read_text().splitlines()
    places = {
        "tmp": bad_recipes,
        "tab_line": next(i for i, line in enumerate(lines, 1) if line.startswith("\t")),
        "bracket_line": 1 + next(i for i, line in enumerate(lines, 1) if "num_hidden_layers" in line),
    }
    run = bad_recipes / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,loss\n1,2.0\n")
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit:
        main(["train", *[a.format(**places) for a in arguments], "--output-dir", str(run)])
    assert exit.value.code == 1
    assert_one_line_error(capsys, message.format(**places))
    assert snapshot(run) == before


def test_resuming_with_a_model_the_checkpoint_does_not_fit_names_it_and_leaves_the_run_alone(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", str(CHEM_TINY), "--output-dir", str(run), *small(
        tmp_path, "training.max_steps=2", "training.save_steps=2", "training.eval_steps=2",
    )])
    rows = (run / "log.csv").read_text().splitlines()
    assert sum(1 for row in rows[1:] if row.split(",")[rows[0].split(",").index("eval_loss")]) == 1, rows
    capsys.readouterr()
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit:
        main(["train", str(CHEM_TINY), "--output-dir", str(run), "--resume", *small(
            tmp_path, "training.max_steps=4", "training.save_steps=2", "model.hidden_size=64",
        )])
    assert exit.value.code == 1
    assert_one_line_error(
        capsys, f"{run / 'checkpoint-2' / 'model.safetensors'}: the checkpoint does not fit the model this recipe builds (",
        "model.hidden_size: 32 there, 64 now); resume with the model settings it was trained with",
    )
    assert snapshot(run) == before
