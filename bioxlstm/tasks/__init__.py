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
from .sampling import SamplingOptions
from .variant_benchmark import AssayResult, VariantScore, evaluate_variants, prepare_assay, score_assay
from .downstream import classification_metrics, linear_probe, regression_metrics

__all__ = [
    "POOLINGS",
    "AssayResult",
    "GeneratedSequence",
    "InContextResult",
    "MoleculeSample",
    "SamplingOptions",
    "SamplingReport",
    "SequenceScore",
    "VariantScore",
    "classification_metrics",
    "embed_records",
    "evaluate_in_context",
    "evaluate_variants",
    "generate_molecules",
    "generate_sequences",
    "linear_probe",
    "prepare_assay",
    "regression_metrics",
    "sample_molecules",
    "score_assay",
    "score_records",
]
