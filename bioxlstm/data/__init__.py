"""Data sets and collators that turn tokenized sequences into training batches."""
