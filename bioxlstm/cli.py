"""The `bioxlstm` command line: a thin parser over the package's functions."""

import argparse
import sys
from pathlib import Path

from . import __version__

# Mistakes a user can make; they are reported in one line, without a traceback (unless --debug).
USER_ERRORS = (ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioxlstm",
        description="xLSTM language models for DNA, proteins and small molecules.",
    )
    parser.add_argument("--version", action="version", version=f"bioxlstm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    export = commands.add_parser(
        "export",
        help="write a model as a self-contained Hugging Face directory",
        description=(
            "Write a saved model as a Hugging Face model directory: safetensors weights, config.json with "
            "auto_map, the model code (so it loads with trust_remote_code=True where bioxlstm is not "
            "installed), the tokenizer and a model card (README.md with YAML metadata)."
        ),
    )
    export.add_argument("--model", required=True, help="directory of a saved Bio-xLSTM model")
    export.add_argument("--output", required=True, type=Path, help="directory to create (must not exist or be empty)")
    export.add_argument(
        "--data-card", action="append", type=Path, default=[], metavar="FILE",
        help="data card (markdown) of the training data; repeat for several; default: the model's own card",
    )
    export.add_argument(
        "--metrics", type=Path, metavar="FILE.json",
        help='held-out numbers for the card, a JSON object such as {"eval_perplexity": 3.7}',
    )
    export.add_argument("--description", default=None, help="a paragraph describing the model for its card")
    export.set_defaults(run=run_export)

    train = commands.add_parser(
        "train",
        help="train or fine-tune a model from a recipe",
        description=(
            "Train a model from a YAML recipe (see recipes/). Runs on one CPU or GPU as is, and as DDP under "
            "`torchrun --nproc_per_node N -m bioxlstm.cli train ...` or `accelerate launch`. Writes checkpoints, "
            "log.csv, TensorBoard logs, loss_curve.png and the final model (OUTPUT_DIR/model) with its card."
        ),
    )
    train.add_argument("recipe", type=Path, help="recipe file, e.g. recipes/chem-clm-tiny.yaml")
    train.add_argument("--output-dir", type=Path, help="where the run writes (default: runs/RECIPE_NAME)")
    train.add_argument(
        "--resume", action="store_true",
        help="continue from the newest checkpoint in the output directory, with the same data order",
    )
    train.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE",
        help="change the recipe, e.g. training.max_steps=20 model.hidden_size=64 data.packing=false",
    )
    train.set_defaults(run=run_train)
    return parser


def run_export(args: argparse.Namespace) -> None:
    import json

    from .export import CARD_INFO_FILE, CardInfo, export
    from .pretrained import load_pretrained

    if args.output.exists() and any(args.output.iterdir()):
        raise FileExistsError(f"{args.output}: exists and is not empty; choose a new directory")
    own_card = Path(args.model) / CARD_INFO_FILE
    card = CardInfo.from_file(own_card) if own_card.is_file() else CardInfo()
    if args.data_card:
        card.training_data = {path.stem: path.read_text() for path in args.data_card}
    if args.metrics:
        metrics = json.loads(args.metrics.read_text())
        if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
            raise ValueError(f"{args.metrics}: expected a JSON object of metric names to numbers")
        card.metrics = metrics
    if args.description:
        card.description = args.description
    model, tokenizer = load_pretrained(args.model)
    export(model, args.output, tokenizer, card)
    print(f"exported {type(model).__name__} to {args.output}", file=sys.stderr)


def run_train(args: argparse.Namespace) -> None:
    from .training import load_recipe, train

    recipe = load_recipe(args.recipe, args.overrides)
    trainer = train(recipe, args.output_dir, resume=args.resume)
    if trainer.is_world_process_zero():
        print(f"trained {recipe.name}: model in {Path(trainer.args.output_dir) / 'model'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse reads a positional list only up to the first option; overrides may also follow one.
    if extras and hasattr(args, "overrides") and not any(e.startswith("-") for e in extras):
        args.overrides += extras
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(2)
    from transformers.utils import logging as transformers_logging

    # Loading a small model is quick; its per-tensor progress bars would only bury our messages.
    transformers_logging.disable_progress_bar()
    try:
        args.run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"bioxlstm: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)


def one_line(error: Exception) -> str:
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file or directory"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    main()
