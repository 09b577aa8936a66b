"""`bioxlstm generate`: sample sequences, free, prompted or after a context (homologs, molecules)."""

import argparse
import sys

from ..domains import DOMAINS, SMILES, allows
from .options import add_grammar_option, chosen_sampling, load_model, model_options, new_token_count, positive_int, sampling_options


def add_parser(commands) -> None:
    generate = commands.add_parser(
        "generate", parents=[model_options(), sampling_options()], help="sample new sequences",
        description="Sample new sequences from a causal model, each with the model's log-likelihood of it.",
    )
    generate.add_argument("--prompt", default="", help="start of every sequence (default: empty)")
    generate.add_argument("-n", type=positive_int, default=10, help="number of sequences")
    generate.add_argument("--max-new-tokens", type=new_token_count, default=256, help="longest continuation")
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
    family.add_argument("--context-sequences", type=positive_int, default=None, help="read only the first N homologs")
    family.add_argument("--max-context-tokens", type=positive_int, default=None, help="read homologs while the context stays within N tokens")
    molecules = generate.add_argument_group("molecules")
    molecules.add_argument(
        "--unique-valid", action="store_true",
        help="keep sampling until -n distinct valid molecules exist (or --max-draws samples were drawn); "
        "a report of how many were drawn goes to stderr",
    )
    add_grammar_option(molecules, "molecules")
    molecules.add_argument("--max-draws", type=positive_int, default=None, help="sampling cap for --unique-valid (default 10 n)")
    generate.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..io import STANDARD_STREAM, write_results
    from ..progress import progress

    model, tokenizer = load_model(args)
    domain = DOMAINS.get(model.config.domain)
    molecules = allows(model.config.domain, "molecule_sets") and (args.context or args.unique_valid)
    with progress(desc="sampling", unit="seq", total=None if args.unique_valid else args.n) as bar:
        options = dict(sampling=chosen_sampling(args), progress=bar.update)
        generated = _generated(args, model, tokenizer, options, molecules)
    if args.output == STANDARD_STREAM:
        write_results(generated, args.output, domain.output_format if domain else "fasta")
    else:
        write_results(generated, args.output)


def _generated(args: argparse.Namespace, model, tokenizer, options: dict, molecules: bool) -> list:
    """The sampled results; `options`: the sampling options and the progress callback, as every task takes them."""
    from ..tasks import generate_sequences

    if molecules:
        return _sample_molecules(args, model, tokenizer, options)
    if args.context:
        if not allows(model.config.domain, "reads_homologs"):
            raise ValueError(f"--context needs a protein or molecule model; this one is for {model.config.domain}")
        return _family_members(args, model, tokenizer, options)
    return generate_sequences(model, tokenizer, args.n, prompt=args.prompt, **options)


def _sample_molecules(args: argparse.Namespace, model, tokenizer, options: dict) -> list:
    from ..io import read_records
    from ..tasks.molecules import numbered_molecules, sample_molecules

    context = [r.sequence for r in read_records(args.context, domain=SMILES.name)] if args.context else None
    sample = sample_molecules(
        model, tokenizer, args.n, context=context, unique_valid=args.unique_valid, max_draws=args.max_draws, **options
    )
    print(f"molecules: {sample.report}", file=sys.stderr)
    return numbered_molecules(sample.molecules)


def _family_members(args: argparse.Namespace, model, tokenizer, options: dict) -> list:
    from ..tasks.protein import generate_family

    return generate_family(
        model, tokenizer, args.context, args.n, context_sequences=args.context_sequences,
        max_context_tokens=args.max_context_tokens, **options,
    )
