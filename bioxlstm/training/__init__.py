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
    training            fields of `transformers.TrainingArguments` (output_dir comes from the command);
                        fsdp_config is read by `sharding` (FSDP2), not by accelerate
    lora                optional, with init_from: LoRA adapters (r, alpha, dropout, target_modules)

`load_recipe(path, ["training.max_steps=20", ...])` applies key=value overrides (values parsed as
YAML) and rejects unknown keys and values of the wrong type; `train(recipe, output_dir, resume)` runs
it. The same call runs on one CPU or, under `torchrun --nproc_per_node N` / `accelerate launch`, as DDP
(or FSDP2 through `training.fsdp_config`), because `Trainer` reads the launcher's environment;
when the processes or the sharding the Trainer ends up with differ from what was asked, it refuses.
A script of one's own under such a launcher ends with `end_launched_process()`, as `bioxlstm` does.

What a run leaves in its output directory: `checkpoint-N/` every `save_steps` (each appears
complete or not at all), TensorBoard events (with `report_to: [tensorboard]`), `log.csv` (every
logged train and eval number), `loss_curve.png`, and `model/`, the final model exported with
`bioxlstm.export` (weights, code, tokenizer and a card with held-out loss and perplexity).

Labeled-data objectives (`bioxlstm.data.labeled`) read a label with every record, train a
classification or regression head on `init_from`'s backbone (any model: causal, bidirectional,
RC-PS, or conjoined with `model: {conjoin: true}`), report accuracy / MCC / F1 / AUROC or
Spearman / Pearson / R² on the validation split, and hold the test split out for
`finetune_over_seeds`, which fine-tunes such a recipe once per seed and measures every run on it.

A recipe's `training.fsdp_config` (or `training.fsdp: true`, `bioxlstm train --fsdp`) shards the
model with FSDP2 under any launcher, CPUs included (`sharding`); its `lora` section trains LoRA
adapters through peft (`adapters`); `training.activation_checkpointing` recomputes each block in
backward.

Modules: `objectives` (what each objective trains and how it batches), `recipes` (reading and
checking recipe files), `runs` (building the Trainer, running, exporting), `trainer` (the Trainer
and its log files), `launchers` (what a launcher asked for against what runs), `sharding` (FSDP2),
`adapters` (LoRA), `finetune` (fine-tuning over seeds), `predictions` (the metrics of a fine-tuned
head's predictions).
"""

from .finetune import FinetuneResult, SeedRun, finetune_over_seeds
from .launchers import distribution, end_launched_process
from .objectives import OBJECTIVES, Objective
from .recipes import Recipe, load_recipe
from .runs import build_trainer, grown_model, starting_model, train

__all__ = [
    "OBJECTIVES",
    "FinetuneResult",
    "Objective",
    "Recipe",
    "SeedRun",
    "build_trainer",
    "distribution",
    "end_launched_process",
    "finetune_over_seeds",
    "grown_model",
    "load_recipe",
    "starting_model",
    "train",
]
