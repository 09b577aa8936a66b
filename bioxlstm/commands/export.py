"""`bioxlstm export`: a saved model as a self-contained Hugging Face model directory."""

import argparse
import sys
from pathlib import Path


def add_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a model as a self-contained Hugging Face directory",
        description=(
            "Write a saved model as a Hugging Face model directory: safetensors weights, config.json with "
            "auto_map, the model code (so it loads with trust_remote_code=True where bioxlstm is not "
            "installed), the tokenizer and a model card (README.md with YAML metadata)."
        ),
    )
    export.add_argument(
        "--model", required=True,
        help="the model to export: a bundled default's name (dna, protein, chem, chem-icl), a saved model "
        "directory (save_pretrained, `bioxlstm convert`, a run's model/) or a training checkpoint "
        "(a run's checkpoint-N/)",
    )
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
    export.add_argument(
        "--base-model", metavar="ID",
        help="the model this one was fine-tuned from: a Hub id (owner/name), which goes into the card's "
        "base_model, or a bundled model's name or a model directory, which the card names in its text; "
        "default: what the model's own card records",
    )
    export.add_argument(
        "--license", metavar="ID", help="a Hub license identifier (e.g. apache-2.0); default: the model's own card's"
    )
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import json

    from ..export import CARD_INFO_FILE, LOSS_CURVE_FILE, CardInfo, checked_base_model, export
    from ..io import atomic_directory, require_new_directory
    from ..pretrained import load_pretrained, resolve_model

    require_new_directory(args.output)  # before the model loads
    source = resolve_model(args.model)  # a bundled model's name is not a path
    card = CardInfo.from_file(source / CARD_INFO_FILE) if (source / CARD_INFO_FILE).is_file() else CardInfo()
    if args.data_card:
        card.training_data = {path.stem: path.read_text() for path in args.data_card}
    if args.metrics:
        try:
            metrics = json.loads(args.metrics.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{args.metrics}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
        if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
            raise ValueError(f"{args.metrics}: expected a JSON object of metric names to numbers")
        card.metrics = metrics
    if args.description:
        card.description = args.description
    if args.base_model:
        card.base_model = checked_base_model(args.base_model)
    if args.license:
        card.license = args.license
    model, tokenizer = load_pretrained(source)
    loss_curve = source / LOSS_CURVE_FILE
    with atomic_directory(args.output) as staging:
        export(model, staging, tokenizer, card, loss_curve=loss_curve if loss_curve.is_file() else None)
    print(f"exported {type(model).__name__} to {args.output}", file=sys.stderr)
