"""`bioxlstm generate`: sample sequences, free, prompted or after a context (homologs, molecules)."""

import argparse
import sys

from .options import load_model, model_options


def add_parser(commands) -> None:
    generate = commands.add_parser(
        "generate", parents=[model_options()], help="sample new sequences",
        description="Sample new sequences from a causal model, each with the model's log-likelihood of it.",
    )
    generate.add_argument("--prompt", default="", help="start of every sequence (default: empty)")
    generate.add_argument("-n", type=int, default=10, help="number of sequences")
    generate.add_argument("--max-new-tokens", type=int, default=256, help="longest continuation")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    generate.add_argument("--top-p", type=float, default=None, help="sample within this probability mass")
    generate.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    generate.add_argument("--batch-size", type=int, default=16, help="sequences sampled at once")
    generate.add_argument(
        "--output", default="-",
        help="FASTA for DNA and proteins; .smi or .csv for molecules; - for stdout (default)",
    )
    family = generate.add_argument_group(
        "in-context generation (protein and molecule models)",
        "with --context, a protein model reads a family's homologs and samples new members (each FASTA "
        "record's description gives its log-likelihood, perplexity and identity to the context); a molecule "
        "model reads example molecules and samples molecules like them (the context is read once)",
    )
    family.add_argument(
        "--context", help="protein: homologs (A3M, Stockholm or FASTA, the query first); molecules: a SMILES file of examples"
    )
    family.add_argument("--context-sequences", type=int, default=None, help="read only the first N homologs")
    family.add_argument("--max-context-tokens", type=int, default=None, help="read homologs while the context stays within N tokens")
    molecules = generate.add_argument_group("molecules")
    molecules.add_argument(
        "--unique-valid", action="store_true",
        help="keep sampling until -n distinct valid molecules exist (or --max-draws samples were drawn); "
        "a report of how many were drawn goes to stderr",
    )
    molecules.add_argument("--max-draws", type=int, default=None, help="sampling cap for --unique-valid (default 10 n)")
    generate.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import pandas as pd

    from ..io import STANDARD_STREAM, TABLE_FORMATS, Record, format_from_path, write_records, write_table
    from ..tasks import generate_sequences

    model, tokenizer = load_model(args)
    domain = model.config.domain
    if args.output == STANDARD_STREAM:
        output_format = "smiles" if domain == "smiles" else "fasta"
    else:
        output_format = format_from_path(args.output)
    sampling = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, batch_size=args.batch_size,
    )
    if domain == "smiles" and (args.context or args.unique_valid):
        generated = _sample_molecules(args, model, tokenizer, sampling)
    elif args.context:
        if domain != "protein":
            raise ValueError(f"--context needs a protein or molecule model; this one is for {domain}")
        generated = _family_members(args, model, tokenizer, sampling)
    else:
        generated = [
            Record(g.id, g.sequence, f"log_likelihood={g.log_likelihood:.4f} finished={'yes' if g.finished else 'no'}")
            for g in generate_sequences(model, tokenizer, args.n, prompt=args.prompt, **sampling)
        ]
    if output_format in TABLE_FORMATS:
        table = pd.DataFrame([{"id": r.id, "sequence": r.sequence, **_fields(r.description)} for r in generated])
        write_table(table, args.output, output_format)
    else:
        write_records(generated, args.output, output_format)


def _fields(description: str) -> dict:
    """The `key=value` pairs of a generated record's description, as table columns."""
    return dict(item.split("=", 1) for item in description.split())


def _sample_molecules(args: argparse.Namespace, model, tokenizer, sampling: dict) -> list:
    from ..chem import is_valid
    from ..io import Record, read_records
    from ..tasks.molecules import sample_molecules

    context = [r.sequence for r in read_records(args.context, domain="smiles")] if args.context else None
    sample = sample_molecules(
        model, tokenizer, args.n, context=context, unique_valid=args.unique_valid, max_draws=args.max_draws, **sampling
    )
    print(f"molecules: {sample.report}", file=sys.stderr)
    return [
        Record(f"generated_{i}", smiles, f"valid={'yes' if is_valid(smiles) else 'no'}")
        for i, smiles in enumerate(sample.molecules, start=1)
    ]


def _family_members(args: argparse.Namespace, model, tokenizer, sampling: dict) -> list:
    from ..io import Record
    from ..tasks.protein import generate_family

    members = generate_family(
        model, tokenizer, args.context, args.n, context_sequences=args.context_sequences,
        max_context_tokens=args.max_context_tokens, **sampling,
    )
    return [
        Record(
            m.id, m.sequence,
            f"log_likelihood={m.log_likelihood:.4f} perplexity={m.perplexity:.3f} max_identity={m.max_identity:.3f} "
            f"min_hamming={m.min_hamming} finished={'yes' if m.finished else 'no'}",
        )
        for m in members
    ]
