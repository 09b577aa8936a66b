"""Data sets and collators for training."""
