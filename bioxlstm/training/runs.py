"""A recipe run: the starting model (fresh, fine-tuned or grown), the Trainer with its data, the run
itself with resuming, and the exported model with its card."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from ..data import build_datasets
from ..data.labeled import SEQUENCE_REGRESSION, build_labeled_datasets
from ..domains import get_domain
from ..export import CardInfo, export
from ..models import BioXLSTMConfig
from ..pretrained import resolve_model, saved_tokenizer
from ..tokenization import complement_map, load_tokenizer
from .launchers import check_launcher, check_sharding, distribution, launched_processes, training_settings
from .objectives import OBJECTIVES, Objective
from .predictions import prediction_metrics
from .recipes import Recipe, model_fields
from .adapters import describe as describe_lora
from .adapters import is_adapted, with_lora
from .sharding import has_shards, shard_model, unsharded_copy
from .trainer import CollatorEpochCallback, LogFilesCallback, RecipeTrainer


def model_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> BioXLSTMConfig:
    """The recipe's model section completed by what the tokenizer and the domain decide."""
    return BioXLSTMConfig(
        **recipe.model,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id,
        domain=recipe.domain,
        # RC-PS layers, conjoined scoring and classifiers of DNA models all read it.
        complement_map=complement_map(tokenizer) if get_domain(recipe.domain).has_strands else None,
    )


def starting_model(
    recipe: Recipe, tokenizer: PreTrainedTokenizerBase, objective: Objective, head: dict | None = None
) -> PreTrainedModel:
    """A fresh model of the recipe's config or, with `init_from`, the saved model to fine-tune (its
    config updated by the recipe's model section, e.g. dropout), with the objective's head.
    head: config fields of a classifier head (`num_labels`, `problem_type`, class names)."""
    head = head or {}
    if recipe.init_from is None:
        config = model_config(recipe, tokenizer)
        config.update(head)
        return objective.model_class(config)
    directory = resolve_model(recipe.init_from)
    settings = {**head, **recipe.model}
    if get_domain(recipe.domain).has_strands and BioXLSTMConfig.from_pretrained(directory).complement_map is None:
        # A causal DNA model saved without one can still be fine-tuned conjoined (`model: {conjoin: true}`).
        settings.setdefault("complement_map", complement_map(tokenizer))
    model = objective.model_class.from_pretrained(directory, **settings)
    saved_vocabulary = saved_tokenizer(directory)
    if model.config.domain != recipe.domain or (
        saved_vocabulary is not None and saved_vocabulary.get_vocab() != tokenizer.get_vocab()
    ):
        raise ValueError(
            f"init_from {recipe.init_from}: a {model.config.domain} model whose vocabulary is not that of the "
            f"bundled {recipe.domain} tokenizer the recipe trains with"
        )
    if recipe.init_blocks is not None:
        depth = model.config.num_hidden_layers
        missing = [entry for entry in recipe.init_blocks if isinstance(entry, int) and entry >= depth]
        if missing:
            raise ValueError(
                f"init_blocks names block(s) {', '.join(map(str, missing))}, but init_from {recipe.init_from} "
                f"has {depth} blocks (0-{depth - 1})"
            )
        model = grown_model(model, recipe.init_blocks)
    return model


def grown_model(model: PreTrainedModel, layout: list[int | str]) -> PreTrainedModel:
    """A copy of `model` whose blocks are laid out as `layout` says: each entry is the index of one of
    `model`'s blocks to copy, or a block type (`mlstm`, `slstm`, any registered mixer) for a new block with fresh weights (the xLSTM
    initialisation at its depth).

    Function-preserving growth: a new block, and every copy of an old block after its first, starts
    with a zero contribution to the residual stream (`XLSTMBlock.zero_residual_`). A layout that keeps every old block in order, e.g. [0, 1, 1, 2, 3, slstm], thus
    computes exactly what `model` does, and training starts from its quality rather than from scratch.
    """
    config = model.config
    block_types = [entry if isinstance(entry, str) else config.block_types[entry] for entry in layout]
    grown_config = config.__class__.from_dict(
        {**config.to_dict(), "num_hidden_layers": len(layout), "block_types": block_types}
    )
    grown = model.__class__(grown_config).to(device=model.device, dtype=model.dtype)
    outside_blocks = {key: value for key, value in model.state_dict().items() if not key.startswith("backbone.blocks.")}
    grown.load_state_dict(outside_blocks, strict=False)
    copied = set()
    for block, entry in zip(grown.backbone.blocks, layout):
        if isinstance(entry, int):
            block.load_state_dict(model.backbone.blocks[entry].state_dict())
        if entry in copied or isinstance(entry, str):
            block.zero_residual_()
        copied.add(entry)
    return grown


def build_trainer(recipe: Recipe, output_dir: str | Path) -> RecipeTrainer:
    """The Trainer of `recipe`, with its model, data and callbacks, ready for `.train()`."""
    objective = OBJECTIVES[recipe.objective]
    output_dir = Path(output_dir)
    training, fsdp_asked_by, sharding = training_settings(recipe.training)
    if recipe.lora is not None and sharding is not None:
        raise ValueError(
            "lora trains small adapters, which FSDP need not shard; remove training.fsdp_config and run DDP "
            "(torchrun --nproc_per_node N)"
        )
    check_launcher(fsdp_asked_by)
    args = TrainingArguments(output_dir=str(output_dir), **training)
    if "tensorboard" in args.report_to:
        # Missing, it fails here as an import (one line naming the extra), not as transformers'
        # RuntimeError when the Trainer sets up its callbacks.
        import tensorboard  # noqa: F401
    launched = launched_processes()
    if launched is not None and args.world_size != launched:
        raise ValueError(
            f"launched as {launched} processes, but the Trainer runs {args.world_size}; "
            "check the recipe's training.use_cpu and training.ddp_backend"
        )
    tokenizer = load_tokenizer(recipe.domain)
    labeled, head = None, None
    with args.main_process_first(desc="building the datasets"):  # one rank fills the Arrow cache
        if objective.labels is None:
            train_dataset, eval_dataset = build_datasets(recipe.data, tokenizer, recipe.domain)
        else:
            labeled = build_labeled_datasets(recipe.data, tokenizer, recipe.domain, objective.labels)
            train_dataset, eval_dataset, head = labeled.train, labeled.validation, labeled.head_config(objective.labels)
    set_seed(args.seed)
    model = starting_model(recipe, tokenizer, objective, head)
    if objective.labels == SEQUENCE_REGRESSION:
        # The head starts at the training labels' mean, so the first steps learn how the labels vary
        # rather than spending themselves on the offset (an output near 0 against logPs near 3).
        with torch.no_grad():
            model.classifier.bias.fill_(float(torch.tensor(train_dataset["labels"]).mean()))
    if recipe.data.packing and getattr(model.config, "rope_sequence_index", False):
        raise ValueError(
            "model.rope_sequence_index numbers the sequences of a row, so a packed row would give each example "
            "after the first another sequence index than it has alone; set data.packing: false"
        )
    collator = objective.collator(tokenizer, recipe.data, model.config)
    if recipe.lora is not None:
        model = with_lora(model, recipe.lora, trained_head="classifier" if labeled is not None else None)
    if sharding is not None:
        model = shard_model(model, sharding, args.device)
    callbacks = [LogFilesCallback(output_dir)]
    if hasattr(collator, "epoch"):
        callbacks.append(CollatorEpochCallback(collator))
    trainer = RecipeTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        compute_metrics=None if labeled is None else _labeled_metrics(objective.labels),
        sharded=sharding is not None,
    )
    trainer.reports_perplexity = labeled is None
    trainer.sharding = sharding  # the FSDP2 plan, for `distribution`
    trainer.labeled_data = labeled  # the held-out test split, for `finetune_over_seeds`
    check_sharding(trainer, fsdp_asked_by)
    return trainer


def _labeled_metrics(kind: str) -> Callable:
    return lambda predictions: prediction_metrics(kind, predictions.predictions, predictions.label_ids).as_dict()


def train(recipe: Recipe, output_dir: str | Path | None = None, resume: bool = False) -> RecipeTrainer:
    """Run `recipe` to its last step, evaluate, and export the model to `output_dir/model`.

    resume: continue from the newest checkpoint in `output_dir`, with the same data order, optimiser
    and RNG states. Without it, an output directory that already holds checkpoints is refused.
    A distributed run's process group is closed before it returns.
    """
    output_dir = Path(output_dir or Path("runs") / recipe.name)
    last_checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if resume and last_checkpoint is None:
        raise ValueError(f"{output_dir}: no checkpoint to resume from")
    if not resume and last_checkpoint is not None:
        raise ValueError(f"{output_dir}: holds checkpoints; pass --resume to continue, or choose another --output-dir")
    started = time.monotonic()
    try:
        trainer = build_trainer(recipe, output_dir)
        if last_checkpoint is not None:
            _check_checkpoint_sharding(trainer.sharded, Path(last_checkpoint))
            _check_checkpoint_fits(trainer.model, Path(last_checkpoint))
        trainer.train(resume_from_checkpoint=last_checkpoint)
        metrics = _final_evaluation(trainer)
        # A sharded model is gathered on rank 0 (all ranks take part) into an ordinary one.
        trained = unsharded_copy(trainer.model) if trainer.sharded else trainer.model
        if trainer.is_world_process_zero():
            if is_adapted(trained):
                # The adapter as peft users load it, then the model every other tool reads.
                trained.save_pretrained(output_dir / "adapter")
                trained = trained.merge_and_unload()
            export_trained_model(trainer, recipe, output_dir / "model", metrics, time.monotonic() - started, trained)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank closes the group while another still exports
    finally:
        # A run leaves no process group behind, finished or refused. Ending the process without racing
        # the group's threads is `end_launched_process`'s concern.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return trainer


def _final_evaluation(trainer: Trainer) -> dict:
    """The held-out numbers of the trained model: those of the evaluation at the last step when
    training ended with one, rather than evaluating the same weights again."""
    last = next((row for row in reversed(trainer.state.log_history) if "eval_loss" in row), None)
    if last is None or last.get("step") != trainer.state.global_step or trainer.args.load_best_model_at_end:
        return trainer.evaluate()
    return {key: value for key, value in last.items() if key.startswith("eval_") or key == "epoch"}


def _check_checkpoint_sharding(sharded: bool, checkpoint: Path) -> None:
    """A sharded run resumes from shards and an unsharded one from whole weights, never across."""
    if sharded and not has_shards(checkpoint):
        raise ValueError(f"{checkpoint}: a checkpoint of an unsharded run; resume it without training.fsdp_config")
    if not sharded and has_shards(checkpoint):
        raise ValueError(
            f"{checkpoint}: a checkpoint of an FSDP2 run (model and optimizer shards); resume it with the recipe's "
            "training.fsdp_config under torchrun, with the number of processes it was saved with"
        )


def _check_checkpoint_fits(model: PreTrainedModel, checkpoint: Path) -> None:
    """Refuse to resume from a checkpoint whose weights do not fit the model the recipe builds now (e.g.
    after a change of model.hidden_size): the Trainer would stop with a traceback of every tensor."""
    weights = checkpoint / SAFE_WEIGHTS_NAME
    if not weights.is_file():
        return  # a sharded (FSDP) checkpoint: the Trainer checks it as it loads it
    with safe_open(weights, framework="pt") as saved:
        saved_shapes = {name: list(saved.get_slice(name).get_shape()) for name in saved.keys()}
    state = model.state_dict()
    # Tied weights are saved once, under one of their names.
    storage = {name: tensor.untyped_storage().data_ptr() for name, tensor in state.items()}
    saved_storage = {storage[name] for name in saved_shapes if name in storage}
    misfits = [
        f"{name} is {shape} there, {list(state[name].shape)} here"
        for name, shape in saved_shapes.items() if name in state and shape != list(state[name].shape)
    ]
    misfits += [f"{name} is not in this model" for name in saved_shapes if name not in state]
    misfits += [
        f"{name} is missing there" for name in state if name not in saved_shapes and storage[name] not in saved_storage
    ]
    if misfits:
        changed = _changed_model_settings(checkpoint, model.config)
        raise ValueError(
            f"{weights}: the checkpoint does not fit the model this recipe builds ({misfits[0]}"
            f"{f'; {changed}' if changed else ''}); resume with the model settings it was trained with"
        )


def _changed_model_settings(checkpoint: Path, config: BioXLSTMConfig) -> str:
    try:  # read as a config, so that a checkpoint saved in an older layout compares field by field
        saved = type(config).from_dict(json.loads((checkpoint / CONFIG_NAME).read_text())).to_dict()
    except (OSError, ValueError):
        return ""
    now = config.to_dict()
    changed = [
        f"model.{key}: {saved[key]!r} there, {now[key]!r} now"
        for key in sorted(model_fields()) if key in saved and key in now and saved[key] != now[key]
    ]
    return ", ".join(changed)


def _held_out_numbers(recipe: Recipe) -> str:
    labels = OBJECTIVES[recipe.objective].labels
    if labels is None:
        return "The held-out numbers below are the mean token cross-entropy (nats) and its exponential on the recipe's eval split."
    measures = "Spearman, Pearson and R²" if labels == SEQUENCE_REGRESSION else "accuracy, MCC, F1 and AUROC"
    return f"The held-out numbers below are the loss and {measures} on the recipe's validation split."


def export_trained_model(
    trainer: Trainer, recipe: Recipe, directory: Path, metrics: dict, seconds: float, model: PreTrainedModel | None = None
) -> Path:
    """The final model (`model`, default the trainer's) as a self-contained directory whose card
    reports the data, the run and the held-out numbers."""
    reported = ["eval_loss", "eval_perplexity"]
    if OBJECTIVES[recipe.objective].labels is not None:
        reported += [f"eval_{name}" for name in ("accuracy", "mcc", "f1", "auroc", "spearman", "pearson", "r2")]
    # An undefined metric (None, e.g. AUROC of a one-class split) has no place in the card's YAML numbers.
    card_metrics = {key: value for key, value in metrics.items() if key in reported and value is not None}
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    grown = "" if recipe.init_blocks is None else f" grown to the blocks [{', '.join(map(str, recipe.init_blocks))}] (`init_blocks`)"
    adapted = "" if recipe.lora is None else f" with {describe_lora(recipe.lora)}, merged into the weights"
    starting_point = "" if recipe.init_from is None else f", starting from `{recipe.init_from}`{grown}{adapted},"
    description = (
        f"{recipe.description.strip()}\n\n"
        f"Trained with the `{recipe.name}` recipe (objective `{recipe.objective}`) for "
        f"{trainer.state.global_step} steps{starting_point} of {batch} examples of at most {recipe.data.max_length} tokens "
        f"({'packed' if recipe.data.packing else 'padded'}), in {seconds / 60:.1f} minutes on "
        f"{distribution(trainer)}. {_held_out_numbers(recipe)}\n\n![loss curve](loss_curve.png)"
    )
    card = CardInfo(
        training_data={Path(card).stem: Path(card).read_text() for card in recipe.data.cards},
        metrics=card_metrics,
        description=description,
        base_model=recipe.init_from or "",
    )
    curve = Path(args.output_dir) / "loss_curve.png"
    model = trainer.model if model is None else model
    export(model, directory, trainer.processing_class, card, loss_curve=curve if curve.is_file() else None)
    return directory
