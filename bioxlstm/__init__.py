"""Bio-xLSTM: xLSTM language models for DNA, proteins and small molecules."""

__version__ = "0.1.0"

from . import chem, io
from .tokenization import complement_map, load_tokenizer
