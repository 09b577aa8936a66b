"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for recipe runs: every xLSTM block its own shard unit,
then the whole model (embeddings, final norm and head), on CPUs over gloo as on GPUs over NCCL.

accelerate's FSDP plugin wants GPUs, so the recipe's sharding is done here instead: the model is
sharded before the `Trainer` sees it, and the Trainer is told that the model reduces its own
gradients (`RecipeTrainer(sharded=True)`), so that it neither moves it nor wraps it in DDP.
Checkpoints hold the model and optimizer shards in `torch.distributed.checkpoint` form (each rank
writes its own); the final model is gathered into an ordinary model directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

# Keys a recipe's training.fsdp_config may hold, with what each does.
FSDP_OPTIONS = {
    "reshard_after_forward": "free each block's gathered weights after its forward pass (true, the default) "
    "or keep them until backward",
    "mixed_precision": "bf16: compute in bfloat16, reduce gradients and keep the weights and optimizer in float32",
    "cpu_offload": "keep the sharded weights, gradients and optimizer state in CPU memory",
}
MIXED_PRECISION = ("bf16", "no")
MODEL_SHARDS, OPTIMIZER_SHARDS = "model_shards", "optimizer_shards"


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    reshard_after_forward: bool = True
    mixed_precision: str = "no"
    cpu_offload: bool = False

    def describe(self) -> str:
        extras = [
            name for name, on in (("bf16 compute", self.mixed_precision == "bf16"), ("CPU offload", self.cpu_offload)) if on
        ]
        return "FSDP2" + (f" with {', '.join(extras)}" if extras else "")


def sharding_plan(fsdp_config: dict | None) -> ShardingPlan:
    """The plan a recipe's training.fsdp_config asks for; unknown keys and values refused in one line."""
    config = dict(fsdp_config or {})
    unknown = sorted(set(config) - set(FSDP_OPTIONS))
    if unknown:
        known = "; ".join(f"{name}: {meaning}" for name, meaning in FSDP_OPTIONS.items())
        raise ValueError(f"training.fsdp_config: unknown key(s) {', '.join(unknown)}; Bio-xLSTM's FSDP2 reads {known}")
    for name in ("reshard_after_forward", "cpu_offload"):
        if name in config and not isinstance(config[name], bool):
            raise ValueError(f"training.fsdp_config.{name} must be true or false, got {config[name]!r}")
    if config.get("mixed_precision", "no") not in MIXED_PRECISION:
        raise ValueError(
            f"training.fsdp_config.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {config['mixed_precision']!r}"
        )
    return ShardingPlan(**config)


def shard_units(model: PreTrainedModel) -> list[nn.Module]:
    """The modules that become shard units of their own, in order: the xLSTM blocks (RC-PS wrappers
    included, so that both strands of a block share one gathered weight)."""
    return list(model.base_model.blocks)


def shard_model(model: PreTrainedModel, plan: ShardingPlan, device: torch.device) -> PreTrainedModel:
    """Shard `model` in place over all processes of the default process group: each block, then the
    rest. Every rank must hold the same weights (the same seed) beforehand."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    options = {"mesh": mesh, "reshard_after_forward": plan.reshard_after_forward}
    if plan.mixed_precision == "bf16":
        # FSDP2 keeps the sharded float32 weights as the optimizer's; only the gathered copies the
        # forward and backward passes read are bfloat16, and gradients are summed in float32.
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if plan.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    if not plan.cpu_offload:
        model.to(device)
    for block in shard_units(model):
        fully_shard(block, **options)
    # The root unit holds embeddings and head; keeping them gathered after forward saves one all-gather
    # in backward for a small share of the memory.
    fully_shard(model, **{**options, "reshard_after_forward": False})
    return model


def save_shards(
    model: nn.Module, directory: Path, optimizer: torch.optim.Optimizer | None = None, model_too: bool = True
) -> None:
    """Every rank writes its shards of the model and/or optimizer under `directory`; collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if model_too:
        dcp.save(get_model_state_dict(model), checkpoint_id=str(directory / MODEL_SHARDS))
    if optimizer is not None:
        dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=str(directory / OPTIMIZER_SHARDS))


def load_shards(model: nn.Module, directory: Path, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Read back what `save_shards` wrote, each rank its own shards; collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if optimizer is None:
        state = get_model_state_dict(model)
        dcp.load(state, checkpoint_id=str(directory / MODEL_SHARDS))
        set_model_state_dict(model, state)
        return
    # The template has the optimizer's state laid out (zeros, before a first step), for DCP to fill.
    state = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory / OPTIMIZER_SHARDS))
    set_optimizer_state_dict(model, optimizer, state)


def has_shards(directory: Path) -> bool:
    return (directory / MODEL_SHARDS).is_dir()


def unsharded_copy(model: PreTrainedModel) -> PreTrainedModel | None:
    """The sharded `model` gathered into an ordinary one on rank 0 (float32, on the CPU), None on the
    other ranks; collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    # fully_shard gave the model a class of its own (FSDP<class>); the copy is of the class it had.
    plain_class = next(c for c in type(model).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))
    plain = plain_class(model.config)
    plain.load_state_dict(full)
    return plain.eval()
