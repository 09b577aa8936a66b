"""The `Trainer` every recipe runs (perplexity beside every evaluation loss, atomic checkpoints) and
the callbacks that tell collators the epoch and write `log.csv` and `loss_curve.png`."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .sharding import load_shards, save_shards


class RecipeTrainer(Trainer):
    """`Trainer` with perplexity beside every evaluation loss, and atomic checkpoints.

    Collators with random draws (masked positions, FIM spans, molecule orders) take them from their
    seed, the epoch and each batch's content (`bioxlstm.data.collators.batch_seed`): the trainer
    tells them the epoch, and evaluation always runs at epoch -1, so it sees the same batches
    every time. A labeled-data objective's loss is no per-token cross-entropy: it gets no perplexity.

    sharded: the model is already sharded with FSDP2 (`sharding.shard_model`) and reduces its own
    gradients. The Trainer then runs it as it is (no DDP, no device move) and its checkpoints hold
    the model's and optimizer's shards (`sharding.save_shards`) instead of whole state dicts."""

    reports_perplexity = True

    def __init__(self, *args, sharded: bool = False, **kwargs):
        self.sharded = sharded
        super().__init__(*args, **kwargs)
        if sharded:
            # transformers' own switch for a model that owns its placement and gradient reduction
            # (one sharded by `from_pretrained(distributed_config=...)`); set after __init__, which
            # would refuse to checkpoint such a model: the overrides below do.
            self.is_distributed_loading_by_transformers = True

    def _move_model_to_device(self, model, device):
        if not self.sharded:  # `.to()` on FSDP2's sharded parameters raises; shard_model placed them
            super()._move_model_to_device(model, device)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.sharded:
            return super().save_model(output_dir, _internal_call)
        output_dir = Path(output_dir or self.args.output_dir)
        save_shards(self.model, output_dir)
        if self.args.should_save:
            self.model.config.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.sharded:
            return super()._save_optimizer_and_scheduler(output_dir)
        save_shards(self.model, Path(output_dir), self.optimizer, model_too=False)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self.sharded:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_shards(self.model, Path(resume_from_checkpoint))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.sharded or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_shards(self.model, Path(checkpoint), self.optimizer)
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))

    def evaluation_loop(self, *args, **kwargs):
        training_epoch = getattr(self.data_collator, "epoch", None)
        if training_epoch is not None:
            self.data_collator.epoch = -1
        try:
            output = super().evaluation_loop(*args, **kwargs)
        finally:
            if training_epoch is not None:
                self.data_collator.epoch = training_epoch
        for key, value in list(output.metrics.items()):
            if key.endswith("_loss") and self.reports_perplexity:
                output.metrics[key.removesuffix("_loss") + "_perplexity"] = math.exp(min(value, 700.0))
        return output

    def _save_checkpoint(self, model, trial) -> None:
        """Let the Trainer write checkpoint-N into a staging directory, then rename it into place:
        `--resume` picks the highest checkpoint-N, which must never be one cut short by a crash."""
        run_dir = Path(self._get_output_dir(trial))
        staging = run_dir / ".checkpoint-staging"
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        # Every rank writes its RNG state there, possibly before rank 0 has created the directory.
        (staging / name).mkdir(parents=True, exist_ok=True)
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            final = run_dir / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / name, final)
            shutil.rmtree(staging)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_dir", None)
        return str(staging) if staging is not None else super()._get_output_dir(trial)


class CollatorEpochCallback(TrainerCallback):
    """Tells a collator with per-epoch random draws which pass over the data begins."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the fraction done; a run resumed mid-epoch begins with a fractional one.
        self.collator.epoch = int(state.epoch + 1e-6)


class LogFilesCallback(TrainerCallback):
    """`log.csv` with every logged number, rewritten from the trainer state at each log (so a
    resumed run drops the rows of the interrupted one past its checkpoint), and `loss_curve.png`."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            write_log_csv(state.log_history, self.output_dir / "log.csv")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss_curve(state.log_history, self.output_dir / "loss_curve.png")


def write_log_csv(log_history: list[dict], path: Path) -> None:
    import pandas as pd

    partial = path.with_suffix(".csv.partial")
    pd.DataFrame(log_history).to_csv(partial, index=False)
    os.replace(partial, path)


def plot_loss_curve(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("eval_loss", "held-out")):
        points = [(row["step"], row[key]) for row in log_history if key in row]
        if points:
            axes.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats per token)")
    if axes.lines:  # a run shorter than logging_steps logs no loss
        axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
