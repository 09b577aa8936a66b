"""`bioxlstm info`: a model's architecture, size, domain, the heads and pipelines it serves, and its card."""

import argparse


def add_parser(commands) -> None:
    info = commands.add_parser(
        "info",
        help="describe a model",
        description="Show a model's architecture, size, domain, the heads and pipelines it loads as, and its card.",
    )
    info.add_argument("--model", required=True, help="a saved model directory (or a bundled default)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import json

    from ..pretrained import load_pretrained, resolve_model, supported_heads

    model, tokenizer = load_pretrained(args.model)
    config = model.config
    card = resolve_model(args.model) / "README.md"  # a bundled model's name is not a path
    summary = {
        "model": str(args.model),
        "architecture": type(model).__name__,
        "domain": config.domain,
        "parameters": sum(p.numel() for p in model.parameters()),
        "blocks": config.block_names,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
        # What it can be loaded as (AutoModelFor... / pipeline task), e.g. a causal LM as a classifier to fine-tune.
        "heads": supported_heads(config),
        "config": config.to_diff_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for key, value in summary.items():
        if key == "heads":
            print("heads: " + ", ".join(f"{head} (pipeline {task})" for head, task in value.items()))
        elif key != "config":
            print(f"{key}: {value}")
    if card.is_file():
        print()
        print(card.read_text())
