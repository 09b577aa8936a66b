"""Recipes -> `transformers.Trainer`: how every Bio-xLSTM model is trained and fine-tuned.

A recipe is a YAML file with these sections (see `recipes/`):

    name, description   what it trains
    domain              dna | protein | smiles: the tokenizer, and the model's domain
    objective           a name in OBJECTIVES (clm, mlm, fim-icl, molecule-icl; on labeled data
                        sequence-classification, sequence-regression, token-classification): the
                        model head, the collator and the data settings it needs
    data                the fields of `bioxlstm.data.DataSpec`; paths relative to the recipe file
    init_from           optional: a saved model directory (relative to the recipe) or bundled model name
                        to fine-tune instead of starting from random weights
    init_blocks         optional, with init_from: the blocks of the model to train, each the index of one of
                        init_from's blocks or `mlstm` / `slstm` for a new block, e.g. [0, 1, slstm, 2, 3];
                        the model grows deeper and starts out computing what init_from does (`grown_model`)
    model               fields of `BioXLSTMConfig` (vocabulary and special tokens come from the tokenizer);
                        with init_from, only what may change on a trained model (e.g. dropout)
    training            fields of `transformers.TrainingArguments` (output_dir comes from the command)

`load_recipe(path, ["training.max_steps=20", ...])` applies key=value overrides (values parsed as
YAML) and rejects unknown keys and values of the wrong type; `train(recipe, output_dir, resume)` runs
it. The same call runs on one CPU or, under `torchrun --nproc_per_node N` / `accelerate launch`, as DDP
(or, on GPUs, FSDP through `training.fsdp_config`), because `Trainer` reads the launcher's environment;
when the processes or the sharding the Trainer ends up with differ from what was asked, it refuses.

What a run leaves in its output directory: `checkpoint-N/` every `save_steps` (each appears
complete or not at all), TensorBoard events (with `report_to: [tensorboard]`), `log.csv` (every
logged train and eval number), `loss_curve.png`, and `model/`, the final model exported with
`bioxlstm.export` (weights, code, tokenizer and a card with held-out loss and perplexity).

Labeled-data objectives (`bioxlstm.data.labeled`) read a label with every record, train a
classification or regression head on `init_from`'s backbone (any model: causal, bidirectional,
RC-PS, or conjoined with `model: {conjoin: true}`), report accuracy / MCC / F1 / AUROC or
Spearman / Pearson / R² on the validation split, and hold the test split out for
`bioxlstm.tasks.downstream.finetune_over_seeds`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import math
import os
import re
import shutil
import time
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from .data import DataSpec, build_datasets, causal_lm_collator
from .data.collators import MoleculeSetCollator
from .data.dna import DNADataCollatorForLanguageModeling
from .data.labeled import SEQUENCE_CLASSIFICATION, SEQUENCE_REGRESSION, TOKEN_CLASSIFICATION, build_labeled_datasets
from .data.protein import MAX_FIM_SPANS, HomologContextCollator
from .export import CardInfo, export
from .models import (
    BioXLSTMConfig,
    BioXLSTMForCausalLM,
    BioXLSTMForMaskedLM,
    BioXLSTMForSequenceClassification,
    BioXLSTMForTokenClassification,
)
from .pretrained import resolve_model, saved_tokenizer
from .domains import DNA, DOMAINS, MOLECULE_SEPARATOR, PROTEIN, SMILES, get_domain
from .tokenization import complement_map, load_tokenizer


@dataclasses.dataclass(frozen=True)
class Objective:
    """What an objective name stands for: the model head trained, how examples become batches, the
    domains it applies to (None: all) and the data settings it needs (checked against the recipe)."""

    model_class: type[PreTrainedModel]
    collator: Callable[[PreTrainedTokenizerBase, DataSpec], Callable]
    domains: tuple[str, ...] | None = None
    data_requirements: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    labels: str | None = None  # labeled-data objectives: the kind of label (`bioxlstm.data.labeled.LABEL_KINDS`)


def _masked_lm_collator(tokenizer: PreTrainedTokenizerBase, spec: DataSpec):
    return DNADataCollatorForLanguageModeling(
        tokenizer, mlm=True, mlm_probability=spec.mlm_probability, rc_probability=spec.rc_probability, seed=spec.seed
    )


def _fim_collator(tokenizer: PreTrainedTokenizerBase, spec: DataSpec):
    # A query may fill a whole example and, cut inside it, lack its <eos>: its row gains that <eos>
    # and, in FIM form, two sentinels per span (one in place of the span, one before it in the suffix).
    longest_query_row = spec.max_length + 1 + 2 * MAX_FIM_SPANS
    return HomologContextCollator(
        tokenizer, max_tokens=longest_query_row, fim_probability=spec.fim_probability, seed=spec.seed
    )


OBJECTIVES: dict[str, Objective] = {
    "clm": Objective(
        BioXLSTMForCausalLM,
        lambda tokenizer, spec: causal_lm_collator(tokenizer, spec.packing),
        description="next-token prediction on examples, packed or padded",
    ),
    "mlm": Objective(
        BioXLSTMForMaskedLM,
        _masked_lm_collator,
        domains=(DNA.name,),
        # A bidirectional model reverses each padded sequence within its own length; packed rows
        # would read across sequence boundaries backwards.
        data_requirements={"packing": False},
        description="masked language modelling (80/10/10) for bidirectional and RC-PS DNA models",
    ),
    "fim-icl": Objective(
        BioXLSTMForCausalLM,
        _fim_collator,
        domains=(PROTEIN.name,),
        data_requirements={"homologs_in_context": True, "packing": False},
        description="protein homolog groups, a random member last as the query, in fill-in-the-middle form "
        "with probability data.fim_probability",
    ),
    "molecule-icl": Objective(
        BioXLSTMForCausalLM,
        lambda tokenizer, spec: MoleculeSetCollator(tokenizer, spec.packing, seed=spec.seed),
        domains=(SMILES.name,),
        data_requirements={"cut_at": MOLECULE_SEPARATOR},
        description="next-token prediction on molecule sets joined by '.', shuffled in every batch",
    ),
    # Labeled examples are padded: a conjoined or bidirectional model reads each sequence within its
    # own length, and one label per sequence needs one row per sequence.
    SEQUENCE_CLASSIFICATION: Objective(
        BioXLSTMForSequenceClassification,
        lambda tokenizer, spec: DataCollatorWithPadding(tokenizer),
        data_requirements={"packing": False},
        description="a class per sequence (cross-entropy on pooled token states)",
        labels=SEQUENCE_CLASSIFICATION,
    ),
    SEQUENCE_REGRESSION: Objective(
        BioXLSTMForSequenceClassification,
        lambda tokenizer, spec: DataCollatorWithPadding(tokenizer),
        data_requirements={"packing": False},
        description="a number per sequence (mean squared error on pooled token states)",
        labels=SEQUENCE_REGRESSION,
    ),
    TOKEN_CLASSIFICATION: Objective(
        BioXLSTMForTokenClassification,
        lambda tokenizer, spec: DataCollatorForTokenClassification(tokenizer),
        # A label string holds one class per character, and only DNA and protein tokens are characters.
        domains=(DNA.name, PROTEIN.name),
        data_requirements={"packing": False},
        description="a class per residue (cross-entropy on every token state)",
        labels=TOKEN_CLASSIFICATION,
    ),
}


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 scalars on the safe loader: `5e-3` is a float and `no`/`off` are strings. YAML 1.1
    would read the first as text (a learning rate the optimiser rejects) and `eval_strategy: no` as
    False."""

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong, in one line, without the excerpt PyYAML prints below it."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if "'\\t'" in problem:
        problem += " (YAML indents with spaces, never tabs)"
    mark, context, context_mark = (getattr(error, name, None) for name in ("problem_mark", "context", "context_mark"))
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        problem += f", {context} opened on line {context_mark.line + 1}"
    return problem


def _yaml_place(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"


SECTIONS = ("name", "description", "domain", "objective", "init_from", "init_blocks", "data", "model", "training")
# The kinds of block `init_blocks` can add to a trained model.
NEW_BLOCKS = ("mlstm", "slstm")
# Set from the tokenizer and the recipe's domain, never by hand.
DERIVED_MODEL_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "domain", "complement_map")
# Data fields a recipe may give as one file or a list of files.
FILE_LISTS = ("train", "eval", "test", "cards")
# transformers' deprecated `fsdp` strings, as the `fsdp_config` entries that replace them.
LEGACY_FSDP_OPTIONS = {
    "full_shard": {"reshard_after_forward": True},
    "shard_grad_op": {"reshard_after_forward": False},
    "offload": {"cpu_offload": True},
    "auto_wrap": {},
}


def _model_fields() -> set[str]:
    parameters = inspect.signature(BioXLSTMConfig.__init__).parameters
    return {name for name, p in parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD} - {"self", *DERIVED_MODEL_FIELDS}


def _section_fields() -> dict[str, set[str]]:
    return {
        "data": {f.name for f in dataclasses.fields(DataSpec)},
        "model": _model_fields(),
        "training": {f.name for f in dataclasses.fields(TrainingArguments) if f.init} - {"output_dir"},
    }


@functools.cache
def _section_types() -> dict[str, dict[str, object]]:
    data = typing.get_type_hints(DataSpec)
    data.update({key: str | list[str] for key in FILE_LISTS})
    training = typing.get_type_hints(TrainingArguments)
    # transformers types `fsdp` as a string only for its deprecated form (`_check_fsdp`); a recipe turns
    # it on with true.
    training["fsdp"] = bool | None
    return {"data": data, "model": typing.get_type_hints(BioXLSTMConfig.__init__), "training": training}


def _fits(value, hint) -> bool:
    """Whether a YAML value is of a field's annotated type; a type no YAML value spells is left to its consumer."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in arguments)
    if origin is typing.Literal:
        return value in arguments
    if origin in (list, tuple):  # YAML has lists only; tuple[int, ...] is read as a list of int
        return isinstance(value, list) and (not arguments or all(_fits(item, arguments[0]) for item in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint in (int, float):  # YAML's true and false are no numbers, although Python's bool is an int
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint in (bool, str, list):
        return isinstance(value, hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str)
    return True


def _describe_type(hint) -> str:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe_type(arm) for arm in arguments))
    if origin is typing.Literal:
        return " or ".join(map(repr, arguments))
    if origin in (list, tuple) or hint is list:
        plurals = {int: "integers", float: "numbers", bool: "true or false values", str: "strings"}
        return f"a list of {plurals.get(arguments[0], _describe_type(arguments[0]))}" if arguments else "a list"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "a string"
    names = {
        int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping", type(None): "null"
    }
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _check_types(content: dict, path: Path) -> None:
    for section, types_of in _section_types().items():
        for key, value in (content.get(section) or {}).items():
            if key in types_of and not _fits(value, types_of[key]):
                raise ValueError(f"{path}: {section}.{key} must be {_describe_type(types_of[key])}, got {value!r}")


def _check_fsdp(training: dict, path: Path) -> None:
    """FSDP is asked for with `fsdp_config` (and optionally `fsdp: true`), as transformers now reads it."""
    fsdp = training.get("fsdp")
    if isinstance(fsdp, (str, list)):
        options = fsdp.split() if isinstance(fsdp, str) else fsdp
        if all(option in LEGACY_FSDP_OPTIONS for option in options):
            config = {key: value for option in options for key, value in LEGACY_FSDP_OPTIONS[option].items()}
            replacement = f"training.fsdp_config: {yaml.safe_dump(config, default_flow_style=True).strip()}"
        else:
            replacement = "a training.fsdp_config mapping (see transformers.TrainingArguments.fsdp_config)"
        raise ValueError(
            f"{path}: training.fsdp: {fsdp!r} is the string form transformers deprecated; write {replacement} instead"
        )
    if fsdp is False and training.get("fsdp_config") is not None:
        raise ValueError(f"{path}: training.fsdp is false but training.fsdp_config asks for FSDP; remove one of them")


@dataclasses.dataclass
class Recipe:
    name: str
    domain: str
    objective: str
    data: DataSpec
    model: dict
    training: dict
    description: str = ""
    path: Path | None = None
    init_from: str | None = None  # a model directory or bundled model name to fine-tune
    init_blocks: list[int | str] | None = None  # with init_from: the blocks of the grown model (`grown_model`)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe file and apply `section.key=value` overrides; every mistake is a ValueError
    (or FileNotFoundError) with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such recipe file", str(path))
    try:
        content = _parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a recipe: not a UTF-8 text file") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}{_yaml_place(error)}: not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with sections {', '.join(SECTIONS)}")
    for override in overrides:
        _apply_override(content, override, path)
    _check_keys(content, path)
    _check_fsdp(content.get("training") or {}, path)
    _check_types(content, path)
    if content.get("domain") not in DOMAINS:
        raise ValueError(f"{path}: domain must be one of {', '.join(DOMAINS)}, got {content.get('domain')!r}")
    objective = content.get("objective")
    if objective not in OBJECTIVES:
        raise ValueError(f"{path}: unknown objective {objective!r}; known objectives: {', '.join(sorted(OBJECTIVES))}")
    data = dict(content.get("data") or {})
    for key in FILE_LISTS:
        data[key] = [str(path.parent / p) for p in _as_list(data.get(key, []))]
    spec = DataSpec(**data)
    _check_objective(OBJECTIVES[objective], objective, content["domain"], spec, path)
    init_from = content.get("init_from")
    if init_from is not None and (path.parent / str(init_from) / "config.json").is_file():
        init_from = str(path.parent / str(init_from))
    init_blocks = content.get("init_blocks")
    if init_blocks is not None:
        if init_from is None:
            raise ValueError(f"{path}: init_blocks rearranges the blocks of a trained model; give init_from too")
        if not isinstance(init_blocks, list) or not init_blocks or not all(
            (isinstance(entry, int) and not isinstance(entry, bool) and entry >= 0) or entry in NEW_BLOCKS
            for entry in init_blocks
        ):
            raise ValueError(
                f"{path}: init_blocks must be a list whose entries are block indices of init_from (0, 1, ...) or "
                f"{' / '.join(NEW_BLOCKS)} for a new block, got {init_blocks!r}"
            )
    return Recipe(
        name=content.get("name", path.stem),
        domain=content["domain"],
        objective=objective,
        data=spec,
        model=dict(content.get("model") or {}),
        training=dict(content.get("training") or {}),
        description=content.get("description", ""),
        path=path,
        init_from=None if init_from is None else str(init_from),
        init_blocks=init_blocks,
    )


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _apply_override(content: dict, override: str, path: Path) -> None:
    key, separator, value = override.partition("=")
    if not separator or not key:
        raise ValueError(f"override {override!r} is not of the form section.key=value")
    *sections, leaf = key.split(".")
    target = content
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"override {override!r}: {section!r} in {path} is not a section")
    try:
        target[leaf] = _parse_yaml(value)
    except yaml.YAMLError as error:
        raise ValueError(
            f"{path}: override {override!r}: {value!r} is not a YAML value ({_yaml_problem(error)}); "
            "quote text, write lists as [a, b]"
        ) from None


def _check_keys(content: dict, path: Path) -> None:
    unknown = [key for key in content if key not in SECTIONS]
    fields = _section_fields()
    for section, allowed in fields.items():
        values = content.get(section) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping")
        unknown += [f"{section}.{key}" for key in values if key not in allowed]
    if unknown:
        raise ValueError(
            f"{path}: unknown recipe key(s) {', '.join(unknown)}; data, model and training take the fields of "
            "bioxlstm.data.DataSpec, BioXLSTMConfig and transformers.TrainingArguments"
        )


def _check_objective(objective: Objective, name: str, domain: str, data: DataSpec, path: Path) -> None:
    if objective.domains is not None and domain not in objective.domains:
        raise ValueError(f"{path}: objective {name!r} trains {' or '.join(objective.domains)} models, not {domain}")
    for key, value in objective.data_requirements.items():
        if getattr(data, key) != value:
            raise ValueError(f"{path}: objective {name!r} needs data.{key}: {value!r}, got {getattr(data, key)!r}")


class RecipeTrainer(Trainer):
    """`Trainer` with perplexity beside every evaluation loss, and atomic checkpoints.

    Collators with random draws (masked positions, FIM spans, molecule orders) take them from their
    seed, the epoch and each batch's content (`bioxlstm.data.collators.batch_seed`): the trainer
    tells them the epoch, and evaluation always runs at epoch -1, so it sees the same batches
    every time. A labeled-data objective's loss is no per-token cross-entropy: it gets no perplexity."""

    reports_perplexity = True

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
    `model`'s blocks to copy, or `mlstm` / `slstm` for a new block with fresh weights (the xLSTM
    initialisation at its depth).

    Function-preserving growth: a new block, and every copy of an old block after its first, starts
    with a zero contribution to the residual stream (`XLSTMBlock.zero_residual_`). A layout that keeps every old block in order, e.g. [0, 1, 1, 2, 3, slstm], thus
    computes exactly what `model` does, and training starts from its quality rather than from scratch.
    """
    config = model.config
    block_types = [entry if entry in NEW_BLOCKS else config.block_types[entry] for entry in layout]
    slstm = [i for i, kind in enumerate(block_types) if kind == "slstm"]
    grown_config = config.__class__.from_dict(
        {**config.to_dict(), "num_hidden_layers": len(layout), "slstm_layers": slstm}
    )
    grown = model.__class__(grown_config).to(device=model.device, dtype=model.dtype)
    outside_blocks = {key: value for key, value in model.state_dict().items() if not key.startswith("backbone.blocks.")}
    grown.load_state_dict(outside_blocks, strict=False)
    copied = set()
    for block, entry in zip(grown.backbone.blocks, layout):
        if isinstance(entry, int):
            block.load_state_dict(model.backbone.blocks[entry].state_dict())
        if entry in copied or entry in NEW_BLOCKS:
            block.zero_residual_()
        copied.add(entry)
    return grown


def build_trainer(recipe: Recipe, output_dir: str | Path) -> RecipeTrainer:
    """The Trainer of `recipe`, with its model, data and callbacks, ready for `.train()`."""
    objective = OBJECTIVES[recipe.objective]
    output_dir = Path(output_dir)
    training, fsdp_asked_by = _training_settings(recipe.training)
    _check_launcher(fsdp_asked_by)
    args = TrainingArguments(output_dir=str(output_dir), **training)
    launched = _launched_processes()
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
    collator = objective.collator(tokenizer, recipe.data)
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
    )
    trainer.reports_perplexity = labeled is None
    trainer.labeled_data = labeled  # the held-out test split, for `finetune_over_seeds`
    _check_sharding(trainer, fsdp_asked_by)
    return trainer


# Who may ask for FSDP, and how to stop asking.
RECIPE_FSDP, ACCELERATE_FSDP = "the recipe's training.fsdp_config", "accelerate launch's FSDP config"
FSDP_REMOVAL = {
    RECIPE_FSDP: "remove training.fsdp_config",
    ACCELERATE_FSDP: "give accelerate launch a config with distributed_type: MULTI_GPU",
}


def _launched_processes() -> int | None:
    """How many processes the launcher started (torchrun and accelerate set WORLD_SIZE, mpirun its own
    variable); None when no launcher started this one."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def _training_settings(recipe_training: dict) -> tuple[dict, str | None]:
    """The recipe's TrainingArguments fields completed for the launcher, and who asks for FSDP (None: nobody)."""
    training = dict(recipe_training)
    fsdp_asked_by = None
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        fsdp_asked_by = ACCELERATE_FSDP
    if training.get("fsdp") or training.get("fsdp_config") is not None:
        fsdp_asked_by = RECIPE_FSDP
        training["fsdp"] = True  # transformers silently ignores an fsdp_config without it
    launched = _launched_processes()
    if launched is not None and launched > 1 and not torch.cuda.is_available():
        # Accelerate runs DDP over gloo on CPUs only in its CPU mode; otherwise every process would
        # silently train a model of its own.
        training.setdefault("use_cpu", True)
    # Every objective's model uses all its parameters in every forward pass (tests/test_launchers.py
    # checks each objective), so DDP need not search the autograd graph for unused ones at every step.
    training.setdefault("ddp_find_unused_parameters", False)
    return training, fsdp_asked_by


def _check_launcher(fsdp_asked_by: str | None) -> None:
    """Refuse what no Trainer can honour in the processes the launcher started."""
    launched = _launched_processes()
    if launched is None and "ACCELERATE_USE_CPU" in os.environ and "MASTER_PORT" in os.environ:
        # accelerate's single-process launcher sets a rendezvous port only when told to start several
        # processes, and then starts just this one.
        raise ValueError(
            "accelerate launch was asked for several processes but started this one alone; on CPUs use "
            "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N` "
            "(README: Training on several processes)"
        )
    if launched is None and fsdp_asked_by is not None:
        raise ValueError(
            f"{fsdp_asked_by} asks for FSDP, which shards the model over launched processes, but no launcher "
            "started this one; run it under `torchrun --nproc_per_node N` on N GPUs"
        )


def _check_sharding(trainer: Trainer, fsdp_asked_by: str | None) -> None:
    """accelerate shards a model only over processes on GPUs (or other accelerators); elsewhere it runs
    the model whole, in DDP or in a single process, without a word."""
    if fsdp_asked_by is None or trainer.is_fsdp_enabled:
        return
    if trainer.args.world_size == 1:
        remedy = "FSDP shards a model over several processes: launch it with `torchrun --nproc_per_node N` on N GPUs"
    else:
        remedy = f"accelerate runs FSDP on GPUs only; to train with DDP, {FSDP_REMOVAL[fsdp_asked_by]}"
    raise ValueError(f"{fsdp_asked_by} asks for FSDP, but the Trainer runs {distribution(trainer)}; {remedy}")


def distribution(trainer: Trainer) -> str:
    """How a run is spread over processes, in words, for the command's last line and the model card."""
    processes = trainer.args.world_size
    if processes == 1:
        return "1 process"
    sharding = "FSDP" if trainer.is_fsdp_enabled else "DDP"
    return f"{processes} processes ({sharding} over {trainer.accelerator.state.backend})"


def _labeled_metrics(kind: str) -> Callable:
    from .tasks.downstream import prediction_metrics

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
            _check_checkpoint_fits(trainer.model, Path(last_checkpoint))
        trainer.train(resume_from_checkpoint=last_checkpoint)
        metrics = _final_evaluation(trainer)
        if trainer.is_world_process_zero():
            export_trained_model(trainer, recipe, output_dir / "model", metrics, time.monotonic() - started)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank closes the group while another still exports
    finally:
        # Left to interpreter shutdown, gloo's threads can abort a process, finished or refused (exit -6,
        # "terminate called without an active exception"), and torchrun then reports that instead.
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
    try:
        saved = json.loads((checkpoint / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return ""
    now = config.to_dict()
    changed = [
        f"model.{key}: {saved[key]!r} there, {now[key]!r} now"
        for key in sorted(_model_fields()) if key in saved and key in now and saved[key] != now[key]
    ]
    return ", ".join(changed)


def _held_out_numbers(recipe: Recipe) -> str:
    labels = OBJECTIVES[recipe.objective].labels
    if labels is None:
        return "The held-out numbers below are the mean token cross-entropy (nats) and its exponential on the recipe's eval split."
    measures = "Spearman, Pearson and R²" if labels == SEQUENCE_REGRESSION else "accuracy, MCC, F1 and AUROC"
    return f"The held-out numbers below are the loss and {measures} on the recipe's validation split."


def export_trained_model(trainer: Trainer, recipe: Recipe, directory: Path, metrics: dict, seconds: float) -> Path:
    """The final model as a self-contained directory whose card reports the data, the run and the
    held-out numbers."""
    reported = ["eval_loss", "eval_perplexity"]
    if OBJECTIVES[recipe.objective].labels is not None:
        reported += [f"eval_{name}" for name in ("accuracy", "mcc", "f1", "auroc", "spearman", "pearson", "r2")]
    # An undefined metric (None, e.g. AUROC of a one-class split) has no place in the card's YAML numbers.
    card_metrics = {key: value for key, value in metrics.items() if key in reported and value is not None}
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    grown = "" if recipe.init_blocks is None else f" grown to the blocks [{', '.join(map(str, recipe.init_blocks))}] (`init_blocks`)"
    starting_point = "" if recipe.init_from is None else f", starting from `{recipe.init_from}`{grown},"
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
    export(trainer.model, directory, trainer.processing_class, card, loss_curve=curve if curve.is_file() else None)
    return directory
