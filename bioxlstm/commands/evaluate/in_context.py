"""`bioxlstm evaluate chem-in-context`: FCD of in-context versus unconditional samples, per molecular domain."""

import argparse

from ...domains import SMILES
from ..options import add_grammar_option, chosen_sampling, load_model, model_options, new_token_count, positive_int, print_json, sampling_options


def add_parser(evaluations) -> None:
    in_context = evaluations.add_parser(
        "chem-in-context", parents=[model_options(), sampling_options(batch_size=64, seed=0)],
        help="FCD of in-context versus unconditional samples on held-out molecular domains",
        description=(
            "The in-context protocol: for each domain (a line of molecules joined by '.', the ICST format), "
            "--n-context of its molecules are placed in context and --n-generate molecules sampled after them; "
            "their FCD to the rest of the domain is compared with that of --n-generate unconditional samples. "
            "On a hundred molecules FCD is noisy: judge by how many domains improve."
        ),
    )
    in_context.add_argument("--domains", required=True, help="ICST file, one domain per line, e.g. data/icst_valid_50_domains.txt.gz")
    in_context.add_argument(
        "--lines", type=_line_numbers, default=None, metavar="1,3,4",
        help="which domains (1-based line numbers) to evaluate; default: all",
    )
    in_context.add_argument("--n-context", type=positive_int, default=20, help="molecules of a domain placed in context")
    in_context.add_argument("--n-generate", type=positive_int, default=100, help="molecules sampled per domain, and unconditionally")
    in_context.add_argument("--max-new-tokens", type=new_token_count, default=256, help="longest molecule, in tokens")
    add_grammar_option(in_context, "both the in-context and the unconditional molecules")
    in_context.add_argument("--json", action="store_true", help="print one JSON object per domain instead of a table")
    in_context.set_defaults(run=run)


def _line_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive line numbers separated by commas, not {text!r}")
    return numbers


def run(args: argparse.Namespace) -> None:
    from ...io import read_records
    from ...tasks import evaluate_in_context

    records = list(read_records(args.domains, format="smiles", domain=SMILES.name))
    lines = args.lines or range(1, len(records) + 1)
    beyond = [line for line in lines if line > len(records)]
    if beyond:
        raise ValueError(f"{args.domains}: has {len(records)} domains, no line {beyond[0]}")
    model, tokenizer = load_model(args)
    results = evaluate_in_context(
        model, tokenizer, [records[line - 1].sequence for line in lines], n_context=args.n_context,
        n_generate=args.n_generate, seed=args.seed, sampling=chosen_sampling(args),
    )  # fmt: skip
    if args.json:
        for line, result in zip(lines, results):
            print_json({"line": line, **vars(result)})
        return
    print(f"{'line':>5} {'context':>8} {'reference':>10} {'valid':>6} {'FCD in-context':>15} {'FCD unconditional':>18}")
    for line, r in zip(lines, results):
        print(
            f"{line:>5} {r.context:>8} {r.reference:>10} {r.valid_in_context:>6} "
            f"{r.fcd_in_context:>15.3f} {r.fcd_unconditional:>18.3f}"
        )
    better = sum(r.fcd_in_context < r.fcd_unconditional for r in results)
    print(f"in-context FCD below unconditional on {better} of {len(results)} domains")
    if results:
        valid = results[0].valid_unconditional
        print(f"unconditional samples: {valid} of {args.n_generate} valid ({valid / args.n_generate:.1%})")
