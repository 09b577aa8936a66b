"""What the launcher (torchrun, accelerate launch, mpirun) asked for against what the Trainer runs:
process counts, CPU DDP settings and FSDP, each mismatch refused in one line."""

from __future__ import annotations

import os

import torch
from transformers import Trainer


# Who may ask for FSDP, and how to stop asking.
RECIPE_FSDP, ACCELERATE_FSDP = "the recipe's training.fsdp_config", "accelerate launch's FSDP config"
FSDP_REMOVAL = {
    RECIPE_FSDP: "remove training.fsdp_config",
    ACCELERATE_FSDP: "give accelerate launch a config with distributed_type: MULTI_GPU",
}


def launched_processes() -> int | None:
    """How many processes the launcher started (torchrun and accelerate set WORLD_SIZE, mpirun its own
    variable); None when no launcher started this one."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def training_settings(recipe_training: dict) -> tuple[dict, str | None]:
    """The recipe's TrainingArguments fields completed for the launcher, and who asks for FSDP (None: nobody)."""
    training = dict(recipe_training)
    fsdp_asked_by = None
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        fsdp_asked_by = ACCELERATE_FSDP
    if training.get("fsdp") or training.get("fsdp_config") is not None:
        fsdp_asked_by = RECIPE_FSDP
        training["fsdp"] = True  # transformers silently ignores an fsdp_config without it
    launched = launched_processes()
    if launched is not None and launched > 1 and not torch.cuda.is_available():
        # Accelerate runs DDP over gloo on CPUs only in its CPU mode; otherwise every process would
        # silently train a model of its own.
        training.setdefault("use_cpu", True)
    # Every objective's model uses all its parameters in every forward pass (tests/test_launchers.py
    # checks each objective), so DDP need not search the autograd graph for unused ones at every step.
    training.setdefault("ddp_find_unused_parameters", False)
    return training, fsdp_asked_by


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
            "started this one; run it under `torchrun --nproc_per_node N` on N GPUs"
        )


def check_sharding(trainer: Trainer, fsdp_asked_by: str | None) -> None:
    """accelerate shards a model only over processes on GPUs (or other accelerators); elsewhere it runs
    the model whole, in DDP or in a single process, without a word."""
    if fsdp_asked_by is None or trainer.is_fsdp_enabled:
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
    sharding = "FSDP" if trainer.is_fsdp_enabled else "DDP"
    return f"{processes} processes ({sharding} over {trainer.accelerator.state.backend})"
