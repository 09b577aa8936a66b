"""The jobs the command line runs; they use models only through the Hugging Face interfaces."""

from .embed import POOLINGS, embed_records
from .generate import GeneratedSequence, generate_sequences
from .molecules import (
    InContextResult,
    MoleculeSample,
    SamplingReport,
    evaluate_in_context,
    generate_molecules,
    sample_molecules,
)
from .likelihood import SequenceScore, score_records

__all__ = [
    "POOLINGS",
    "GeneratedSequence",
    "InContextResult",
    "MoleculeSample",
    "SamplingReport",
    "SequenceScore",
    "embed_records",
    "evaluate_in_context",
    "generate_molecules",
    "generate_sequences",
    "sample_molecules",
    "score_records",
]
