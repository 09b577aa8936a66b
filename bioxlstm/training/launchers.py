"""What the launcher (torchrun, accelerate launch, mpirun) asked for against what the Trainer runs:
process counts, CPU DDP settings and FSDP, each mismatch refused in one line.

A recipe's training.fsdp_config is Bio-xLSTM's own FSDP2 (`sharding`), on CPUs and GPUs alike;
accelerate launch's FSDP config is accelerate's, which shards on GPUs only."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import sys
from typing import NoReturn

import torch
from transformers import Trainer, TrainingArguments

from .sharding import ShardingPlan, sharding_plan


# Who may ask for FSDP, and how to stop asking.
RECIPE_FSDP, ACCELERATE_FSDP = "the recipe's training.fsdp_config", "accelerate launch's FSDP config"
FSDP_REMOVAL = {
    RECIPE_FSDP: "remove training.fsdp_config",
    ACCELERATE_FSDP: "give accelerate launch a config with distributed_type: MULTI_GPU (or, to shard on CPUs, launch "
    "with torchrun and give the recipe a training.fsdp_config)",
}


TRAINING_FIELDS = {field.name for field in dataclasses.fields(TrainingArguments)}


def launched_processes() -> int | None:
    """How many processes the launcher started (torchrun and accelerate set WORLD_SIZE, mpirun its own
    variable); None when no launcher started this one."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def end_launched_process(status: int = 0) -> NoReturn:
    """End a process that torchrun or accelerate launch started, with exit `status`, after its exit
    handlers and with its output flushed, but without the interpreter's shutdown. `bioxlstm` ends
    every launched process this way; a script of one's own that such a launcher runs should too.

    Why: a gloo worker thread releases a finished collective's work a moment after the caller has
    been told it finished, and that release can take the GIL (a hung run's stack showed the thread
    destroying a barrier's work, waiting for it). If the interpreter is shutting down by then, the
    thread is unwound inside a destructor, which may not throw, and the process aborts (SIGABRT,
    "terminate called without an active exception"); if the group is destroyed at shutdown instead,
    its destructor can wait on that thread while holding the GIL, and the process hangs. Destroying
    the group first does not help (its threads live as long as any reference to it), and the
    launcher reports either outcome as a failed run after every file was written. Without the
    shutdown there is nothing left to race."""
    atexit._run_exitfuncs()  # what a normal exit runs first: logging's flush, trackers' final uploads
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away, a stream closed
            stream.flush()
    os._exit(status)


def training_settings(recipe_training: dict) -> tuple[dict, str | None, ShardingPlan | None]:
    """The recipe's TrainingArguments fields completed for the launcher, who asks for FSDP (None:
    nobody) and, when the recipe does, its FSDP2 plan (the fsdp fields are then taken out of the
    TrainingArguments, so that accelerate does not shard the model a second time)."""
    training = dict(recipe_training)
    fsdp_asked_by, plan = None, None
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        fsdp_asked_by = ACCELERATE_FSDP
    if training.get("fsdp") or training.get("fsdp_config") is not None:
        if fsdp_asked_by is not None:
            raise ValueError(
                f"both {RECIPE_FSDP} and {ACCELERATE_FSDP} ask for FSDP; launch with torchrun, or give accelerate "
                "launch a config with distributed_type: MULTI_GPU (MULTI_CPU on CPUs)"
            )
        fsdp_asked_by = RECIPE_FSDP
        plan = sharding_plan(training.pop("fsdp_config", None))
        training.pop("fsdp", None)
        if plan.mixed_precision == "bf16" and (training.get("bf16") or training.get("fp16")):
            raise ValueError(
                "training.fsdp_config.mixed_precision: bf16 already computes in bfloat16 with float32 weights; "
                "remove training.bf16 / training.fp16"
            )
    # transformers 5.25 renamed gradient_checkpointing to activation_checkpointing (and reads the old
    # names with a warning); a recipe may use either with either version.
    name = "activation_checkpointing" if "activation_checkpointing" in TRAINING_FIELDS else "gradient_checkpointing"
    renames = (("gradient_checkpointing", "activation_checkpointing"), ("activation_checkpointing", "gradient_checkpointing"))
    for old, new in renames:
        for suffix in ("", "_kwargs"):
            if new == name and old + suffix in training:
                training.setdefault(new + suffix, training.pop(old + suffix))
    if training.get(name):
        # Each block (a GradientCheckpointingLayer) recomputes its forward pass in backward; the
        # non-reentrant form does so inside FSDP2's gather of the block's weights, and needs no input
        # that requires grad.
        training.setdefault(f"{name}_kwargs", {"use_reentrant": False})
    launched = launched_processes()
    if launched is not None and launched > 1 and not torch.cuda.is_available():
        # Accelerate runs DDP over gloo on CPUs only in its CPU mode; otherwise every process would
        # silently train a model of its own.
        training.setdefault("use_cpu", True)
    # Every objective's model uses all its parameters in every forward pass (tests/test_launchers.py
    # checks each objective), so DDP need not search the autograd graph for unused ones at every step.
    training.setdefault("ddp_find_unused_parameters", False)
    return training, fsdp_asked_by, plan


def check_launcher(fsdp_asked_by: str | None) -> None:
    """Refuse what no Trainer can honour in the processes the launcher started."""
    launched = launched_processes()
    if launched is None and "ACCELERATE_USE_CPU" in os.environ and "MASTER_PORT" in os.environ:
        # accelerate's single-process launcher sets a rendezvous port only when told to start several
        # processes, and then starts just this one.
        raise ValueError(
            "accelerate launch was asked for several processes but started this one alone; on CPUs use "
            "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N` "
            "(README: Training on several processes)"
        )
    if launched is None and fsdp_asked_by is not None:
        raise ValueError(
            f"{fsdp_asked_by} asks for FSDP, which shards the model over launched processes, but no launcher "
            "started this one; run it under `torchrun --nproc_per_node N` (N GPUs, or N CPU processes over gloo)"
        )


def check_sharding(trainer: Trainer, fsdp_asked_by: str | None) -> None:
    """accelerate shards a model only over processes on GPUs (or other accelerators); elsewhere it runs
    the model whole, in DDP or in a single process, without a word."""
    if fsdp_asked_by is None or trainer.is_fsdp_enabled or getattr(trainer, "sharding", None) is not None:
        return
    if trainer.args.world_size == 1:
        remedy = "FSDP shards a model over several processes: launch it with `torchrun --nproc_per_node N` on N GPUs"
    else:
        remedy = f"accelerate runs FSDP on GPUs only; to train with DDP, {FSDP_REMOVAL[fsdp_asked_by]}"
    raise ValueError(f"{fsdp_asked_by} asks for FSDP, but the Trainer runs {distribution(trainer)}; {remedy}")


def distribution(trainer: Trainer) -> str:
    """How a run is spread over processes, in words, for the command's last line and the model card."""
    processes = trainer.args.world_size
    if processes == 1:
        return "1 process"
    plan = getattr(trainer, "sharding", None)
    sharding = plan.describe() if plan is not None else "FSDP" if trainer.is_fsdp_enabled else "DDP"
    return f"{processes} processes ({sharding} over {trainer.accelerator.state.backend})"
