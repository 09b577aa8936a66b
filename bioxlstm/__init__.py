"""Bio-xLSTM: xLSTM language models for DNA, proteins and small molecules."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from . import chem, convert, export, io, pretrained
from .models import BioXLSTMCache, BioXLSTMConfig, BioXLSTMForCausalLM, BioXLSTMModel
from .models import BioXLSTMForMaskedLM, BioXLSTMForSequenceClassification, BioXLSTMForTokenClassification
from .tasks.molecules import evaluate_in_context, generate_molecules, sample_molecules
from .tasks.protein import generate_family, inpaint, score_variants
from .tokenization import complement_map, load_tokenizer

__version__ = "0.1.0"

AutoConfig.register(BioXLSTMConfig.model_type, BioXLSTMConfig, exist_ok=True)
AutoModel.register(BioXLSTMConfig, BioXLSTMModel, exist_ok=True)
AutoModelForCausalLM.register(BioXLSTMConfig, BioXLSTMForCausalLM, exist_ok=True)
AutoModelForMaskedLM.register(BioXLSTMConfig, BioXLSTMForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(BioXLSTMConfig, BioXLSTMForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(BioXLSTMConfig, BioXLSTMForTokenClassification, exist_ok=True)

__all__ = [
    "BioXLSTMCache",
    "BioXLSTMConfig",
    "BioXLSTMForCausalLM",
    "BioXLSTMForMaskedLM",
    "BioXLSTMForSequenceClassification",
    "BioXLSTMForTokenClassification",
    "BioXLSTMModel",
    "complement_map",
    "evaluate_in_context",
    "generate_family",
    "generate_molecules",
    "inpaint",
    "load_tokenizer",
    "sample_molecules",
    "score_variants",
]
