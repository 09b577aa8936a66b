"""Fine-tuning over seeds: the protocol of Genomic Benchmarks and the Nucleotide Transformer papers.

The recipe is fine-tuned once per random seed (the seed draws the new head's weights and the order
of the training examples; the test split stays the same), and each run is measured on the held-out
test split with the metrics of `bioxlstm.tasks.downstream`; their mean ± standard deviation is
what the field reports.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..tasks.downstream import Metrics, Summary
from .objectives import OBJECTIVES
from .predictions import flat_predictions, prediction_metrics, task_of
from .runs import build_trainer


@dataclass
class SeedRun:
    """One fine-tuning run: its seed, test metrics, optimiser steps and wall time."""

    seed: int
    metrics: Metrics
    steps: int
    seconds: float
    predicted: np.ndarray = field(repr=False)  # test predictions: values, or class probabilities


@dataclass
class FinetuneResult:
    recipe: str
    objective: str
    task: str  # classification | regression
    classes: list[str]
    test_size: int  # test sequences
    measured: np.ndarray = field(repr=False)  # test labels (per labeled token for token classification)
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def summary(self) -> Summary:
        return Summary.of([run.metrics for run in self.runs])


def finetune_over_seeds(recipe, seeds: Sequence[int], output_dir: str | Path | None = None, progress=None) -> FinetuneResult:
    """Fine-tune `recipe` (a `bioxlstm.training.Recipe` with a labeled-data objective) once per seed
    and measure each run on its held-out test split. Checkpoints are not written; with `output_dir`,
    each run's log.csv and loss curve go to `output_dir/seed-N`. progress: called with each SeedRun."""
    kind = OBJECTIVES[recipe.objective].labels
    if kind is None:
        raise ValueError(
            f"recipe {recipe.name}: objective {recipe.objective!r} trains on no labels; fine-tuning is evaluated "
            "with sequence-classification, sequence-regression or token-classification"
        )
    if not seeds:
        raise ValueError("no seeds to fine-tune with")
    result = None
    with tempfile.TemporaryDirectory(prefix="bioxlstm-finetune-") as scratch:
        for seed in seeds:
            seeded = dataclasses.replace(recipe, training={**recipe.training, "seed": seed, "save_strategy": "no"})
            started = time.monotonic()
            trainer = build_trainer(seeded, Path(output_dir or scratch) / f"seed-{seed}")
            test = trainer.labeled_data.test
            if test is None:
                raise ValueError(f"recipe {recipe.name} holds out no test split: give data.test files or a data.test_fraction")
            trainer.train()
            output = trainer.predict(test)
            measured, predicted = flat_predictions(kind, output.predictions, output.label_ids)
            if result is None:
                classes = trainer.labeled_data.classes
                result = FinetuneResult(recipe.name, recipe.objective, task_of(kind), classes, len(test), measured)
            run = SeedRun(seed, prediction_metrics(kind, output.predictions, output.label_ids), trainer.state.global_step,
                          time.monotonic() - started, predicted)  # fmt: skip
            result.runs.append(run)
            if progress is not None:
                progress(run)
    return result
