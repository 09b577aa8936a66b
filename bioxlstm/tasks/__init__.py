"""The jobs the command line runs; they use models only through the Hugging Face interfaces."""

from .embed import POOLINGS, embed_records
from .generate import GeneratedSequence, generate_sequences
from .score import SequenceScore, score_records

__all__ = [
    "POOLINGS",
    "GeneratedSequence",
    "SequenceScore",
    "embed_records",
    "generate_sequences",
    "score_records",
]
