"""Training data: sequence files -> `datasets` examples -> collated batches."""

from .collators import causal_lm_collator
from .datasets import DataSpec, build_datasets

__all__ = ["DataSpec", "build_datasets", "causal_lm_collator"]
