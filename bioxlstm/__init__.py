"""Bio-xLSTM: xLSTM language models for DNA, proteins and small molecules."""

__version__ = "0.1.0"
