"""Bio-xLSTM: xLSTM language models for DNA, proteins and small molecules."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from . import chem, convert, export, io, pretrained
from .models import BioXLSTMCache, BioXLSTMConfig, BioXLSTMForCausalLM, BioXLSTMModel
from .tasks.protein import generate_family, inpaint, score_variants
from .tokenization import complement_map, load_tokenizer

__version__ = "0.1.0"

AutoConfig.register(BioXLSTMConfig.model_type, BioXLSTMConfig, exist_ok=True)
AutoModel.register(BioXLSTMConfig, BioXLSTMModel, exist_ok=True)
AutoModelForCausalLM.register(BioXLSTMConfig, BioXLSTMForCausalLM, exist_ok=True)

__all__ = [
    "BioXLSTMCache",
    "BioXLSTMConfig",
    "BioXLSTMForCausalLM",
    "BioXLSTMModel",
    "complement_map",
    "generate_family",
    "inpaint",
    "load_tokenizer",
    "score_variants",
]
