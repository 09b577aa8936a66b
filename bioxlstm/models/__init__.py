"""The Hugging Face-facing models. Self-contained (relative imports only) so that
`save_pretrained` can ship this package as remote code."""

from .blocks import XLSTMBlock
from .configuration_bioxlstm import BioXLSTMConfig
from .mixers import MIXERS, Mixer, register_mixer
from .modeling_bioxlstm import (
    BioXLSTMCache,
    BioXLSTMForCausalLM,
    BioXLSTMForMaskedLM,
    BioXLSTMForSequenceClassification,
    BioXLSTMForTokenClassification,
    BioXLSTMModel,
    BioXLSTMPreTrainedModel,
)

__all__ = [
    "BioXLSTMCache",
    "BioXLSTMConfig",
    "BioXLSTMForCausalLM",
    "BioXLSTMForMaskedLM",
    "BioXLSTMForSequenceClassification",
    "BioXLSTMForTokenClassification",
    "BioXLSTMModel",
    "BioXLSTMPreTrainedModel",
    "MIXERS",
    "Mixer",
    "XLSTMBlock",
    "register_mixer",
]
