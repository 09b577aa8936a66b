"""`bioxlstm train`: train or fine-tune a model from a recipe."""

import argparse
import sys
from pathlib import Path


def add_parser(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train or fine-tune a model from a recipe",
        description=(
            "Train a model from a YAML recipe (see recipes/). Runs on one CPU or GPU as is, and as DDP under "
            "`torchrun --nproc_per_node N -m bioxlstm.cli train ...` or `accelerate launch --multi_gpu --num_processes N` "
            "(CPUs too), as FSDP2 (every block a shard unit) with --fsdp or a training.fsdp_config, on GPUs and "
            "CPUs alike; a run whose processes or sharding differ from "
            "what the launcher or recipe asked stops with an error. Writes checkpoints, "
            "log.csv, TensorBoard logs, loss_curve.png and the final model (OUTPUT_DIR/model) with its card."
        ),
        epilog=(
            "A recipe's objective: clm (next-token prediction, any domain), mlm (masked LM for bidirectional and "
            "RC-PS DNA models), fim-icl (protein homolog groups with fill-in-the-middle queries), molecule-icl "
            "(molecule sets, shuffled in every batch), and on labeled data sequence-classification, sequence-regression "
            "and token-classification (see evaluate finetune for their test metrics over seeds). A recipe's init_from (a model directory or bundled name) "
            "fine-tunes that model instead of starting from random weights; with init_blocks (e.g. "
            "[0, 1, slstm, 2, 3]) it first grows that model deeper, new blocks starting with a zero output; with a "
            "lora section (e.g. lora.r=8) it trains LoRA adapters instead of every weight (needs peft: "
            "pip install 'bioxlstm[train]')."
        ),
    )
    train.add_argument("recipe", type=Path, help="recipe file, e.g. recipes/chem-clm-tiny.yaml")
    train.add_argument("--output-dir", type=Path, help="where the run writes (default: runs/RECIPE_NAME)")
    train.add_argument(
        "--resume", action="store_true",
        help="continue from the newest checkpoint in the output directory, with the same data order",
    )
    train.add_argument(
        "--fsdp", action="store_true",
        help="shard the model with FSDP2 over the launched processes (as training.fsdp: true; "
        "training.fsdp_config sets reshard_after_forward, mixed_precision: bf16, cpu_offload)",
    )
    train.add_argument(
        "--activation-checkpointing", action="store_true",
        help="recompute each block's activations in backward instead of keeping them (as training.activation_checkpointing: true)",
    )
    train.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE",
        help="change the recipe, e.g. training.max_steps=20 model.hidden_size=64 data.packing=false",
    )
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..training import distribution, load_recipe, train

    overrides = list(args.overrides)
    overrides += ["training.fsdp=true"] * args.fsdp
    overrides += ["training.activation_checkpointing=true"] * args.activation_checkpointing
    recipe = load_recipe(args.recipe, overrides)
    trainer = train(recipe, args.output_dir, resume=args.resume)
    if trainer.is_world_process_zero():
        # The processes and sharding it really ran with: a launcher that falls back is refused, and this says so.
        model = Path(trainer.args.output_dir) / "model"
        print(f"trained {recipe.name} on {distribution(trainer)}: model in {model}", file=sys.stderr)
