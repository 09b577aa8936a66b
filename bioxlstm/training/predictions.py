"""A fine-tuned head's predictions on a labeled split, measured with the metrics of `bioxlstm.tasks.downstream`."""

from __future__ import annotations

import numpy as np

from ..data.labeled import IGNORED_LABEL, SEQUENCE_REGRESSION, TOKEN_CLASSIFICATION
from ..tasks.downstream import CLASSIFICATION, REGRESSION, Metrics, classification_metrics, regression_metrics


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def flat_predictions(kind: str, logits, label_ids) -> tuple[np.ndarray, np.ndarray]:
    """(measured, predicted) of a fine-tuned head's outputs: labels and values for regression;
    class indices and probabilities for classification, every labeled token one example."""
    logits, label_ids = np.asarray(logits, dtype=float), np.asarray(label_ids)
    if kind == SEQUENCE_REGRESSION:
        return label_ids.reshape(-1).astype(float), logits.reshape(-1)
    if kind == TOKEN_CLASSIFICATION:
        labeled = label_ids != IGNORED_LABEL
        return label_ids[labeled].astype(int), softmax(logits[labeled])
    return label_ids.astype(int), softmax(logits)


def prediction_metrics(kind: str, logits, label_ids, positive: int = 1) -> Metrics:
    """The metrics of a fine-tuned head's outputs (as `Trainer.predict` returns them) for a
    labeled-data objective `kind` (`bioxlstm.data.labeled.LABEL_KINDS`)."""
    measured, predicted = flat_predictions(kind, logits, label_ids)
    if kind == SEQUENCE_REGRESSION:
        return regression_metrics(measured, predicted)
    return classification_metrics(measured, predicted, positive)


def task_of(kind: str) -> str:
    """classification or regression, for a labeled-data objective."""
    return REGRESSION if kind == SEQUENCE_REGRESSION else CLASSIFICATION
