"""LoRA fine-tuning through peft (an optional dependency: `pip install 'bioxlstm[train]'`).

A recipe's `lora` section trains low-rank adapters on the blocks' linear projections instead of
every weight. The run writes the adapter where peft users look for it (`OUTPUT_DIR/adapter`, for
`PeftModel.from_pretrained(base_model, OUTPUT_DIR/adapter)`) and, as every run does, an ordinary
model directory (`OUTPUT_DIR/model`) with the adapter merged into the weights, which plain
transformers loads and `bioxlstm export` ships.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from transformers import PreTrainedModel

# The blocks' projections LoRA can adapt (all `nn.Linear`): the up- and down-projections of mLSTM
# layers and feed-forwards, and the mLSTM input and forget gates. The head-wise q/k/v projections
# and the sLSTM's recurrent kernel are block-diagonal weights of their own, which peft cannot adapt.
# A gate has one output per head, so an adapter of rank r on it is about as large as the gate
# itself: the default adapts the projections only.
ADAPTABLE = ("proj_up", "proj_down", "igate", "fgate")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int = 8  # the rank of every adapter
    alpha: float = 16.0  # the adapter's output is scaled by alpha / r
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("proj_up", "proj_down")


def lora_settings(section) -> LoraSettings:
    """A recipe's `lora` section checked: known keys, types, and projections LoRA can adapt."""
    known = [f.name for f in dataclasses.fields(LoraSettings)]
    if not isinstance(section, dict):
        raise ValueError(f"section 'lora' must be a mapping with keys {', '.join(known)}")
    unknown = sorted(set(section) - set(known))
    if unknown:
        listed = ", ".join(f"lora.{key}" for key in unknown)
        raise ValueError(f"unknown recipe key(s) {listed}; lora takes {', '.join(sorted(known))}")
    rank = section.get("r", LoraSettings.r)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora.r must be a positive integer, got {rank!r}")
    for key in ("alpha", "dropout"):
        value = section.get(key, getattr(LoraSettings, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"lora.{key} must be a number, got {value!r}")
    targets = section.get("target_modules", list(LoraSettings.target_modules))
    if not isinstance(targets, list) or not targets or not all(isinstance(name, str) for name in targets):
        raise ValueError(f"lora.target_modules must be a list of projection names ({', '.join(ADAPTABLE)}), got {targets!r}")
    foreign = [name for name in targets if name not in ADAPTABLE]
    if foreign:
        raise ValueError(
            f"lora.target_modules: {', '.join(foreign)} is no projection LoRA can adapt; choose from {', '.join(ADAPTABLE)}"
        )
    return LoraSettings(
        r=rank, alpha=float(section.get("alpha", LoraSettings.alpha)), dropout=float(section.get("dropout", 0.0)),
        target_modules=tuple(targets),
    )


def with_lora(model: PreTrainedModel, settings: dict, trained_head: str | None = None) -> nn.Module:
    """`model` wrapped by peft with LoRA adapters as `settings` (a `LoraSettings` as a dict) say; only
    the adapters, and the head named `trained_head` (a new classifier), are trained."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("the recipe's lora section needs peft: pip install 'bioxlstm[train]'") from None
    settings = LoraSettings(**settings)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        modules_to_save=[trained_head] if trained_head else None,
    )
    return get_peft_model(model, config)


def is_adapted(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def describe(settings: dict) -> str:
    return f"LoRA adapters (rank {settings['r']}, alpha {settings['alpha']:g}) on {', '.join(settings['target_modules'])}"
