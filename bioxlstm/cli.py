"""The `bioxlstm` command line: a thin parser over the package's functions."""

import argparse
import os
import sys
from pathlib import Path

from . import __version__

# Mistakes a user can make; they are reported in one line, without a traceback (unless --debug).
USER_ERRORS = (ValueError, OSError)


def _input_options(input_required: bool) -> argparse.ArgumentParser:
    input_options = argparse.ArgumentParser(add_help=False)
    input_options.add_argument("--input", required=input_required, help="sequence file (FASTA, FASTQ, GenBank, A3M, SMILES, CSV, ...; .gz ok) or - for stdin")
    input_options.add_argument("--format", help="input format when the extension does not say it (required for stdin)")
    input_options.add_argument("--column", default="sequence", help="sequence column of a CSV/TSV/Parquet input")
    input_options.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    input_options.add_argument(
        "--window", type=int, default=4096,
        help="tokens per forward pass for long sequences; the recurrent state is carried between windows",
    )
    input_options.add_argument(
        "--rc-invariant", action="store_true",
        help="DNA: average over both strands, so a sequence and its reverse complement get the same result",
    )
    return input_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioxlstm",
        description="xLSTM language models for DNA, proteins and small molecules.",
    )
    parser.add_argument("--version", action="version", version=f"bioxlstm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument(
        "--model", required=True, help="a saved model directory (or a bundled default: dna, protein, chem, chem-icl)"
    )
    model_options.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    input_options = _input_options(input_required=True)

    generate = commands.add_parser(
        "generate", parents=[model_options], help="sample new sequences",
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
    generate.set_defaults(run=run_generate)

    embed = commands.add_parser(
        "embed", parents=[model_options, input_options], help="embed sequences as vectors",
        description=(
            "Embed every sequence of a file. Long sequences are processed window by window with the "
            "recurrent state carried, so a whole genome embeds in the memory of one window."
        ),
    )
    embed.add_argument("--output", required=True, help="out.parquet (columns id, embedding) or out.npy (ids in out.ids.txt)")
    embed.add_argument("--pooling", default="mean", choices=["mean", "max", "last", "cls", "none"],
                       help="how token vectors become one vector; none keeps one per token (Parquet only)")
    embed.add_argument("--layer", type=int, default=-1, help="hidden-state index: 0 token embeddings, -1 final output")
    embed.set_defaults(run=run_embed)

    score = commands.add_parser(
        "score", parents=[model_options, _input_options(input_required=False)],
        help="log-likelihood and perplexity of sequences, or variant effects",
        description=(
            "Score every sequence of --input by its log-likelihood (natural log, including its end) and perplexity, "
            "optionally after homologs (--context). With --wildtype and --mutants, score variant effects instead: "
            "log p(mutant | context) - log p(wild type | context) per mutant. A mutant that does not match the wild "
            "type stops the run before anything is scored, with one line naming its row."
        ),
    )
    variants = score.add_argument_group("variant effects and homolog context (protein models)")
    variants.add_argument("--wildtype", help="sequence file holding the one wild-type sequence (FASTA, ...)")
    variants.add_argument("--mutants", help="CSV or TSV with one mutant per row: codes like A24C:D30E (1-based) or full sequences")
    variants.add_argument("--mutant-column", default="mutant", help="the column of --mutants holding them (default: mutant)")
    variants.add_argument("--context", help="homologs read before every scored sequence: A3M, Stockholm or FASTA (.gz ok)")
    variants.add_argument("--max-context-tokens", type=int, default=None, help="read homologs while the context stays within N tokens")
    variants.add_argument(
        "--no-reuse-context-state", action="store_true",
        help="read the context again for every sequence instead of copying its state (same scores, slower; for checking)",
    )
    score.add_argument("--output", default="-", help="table: .csv, .tsv or .parquet; - for stdout (default)")
    score.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    score.set_defaults(run=run_score)

    inpaint = commands.add_parser(
        "inpaint", parents=[model_options], help="fill spans of a protein sequence",
        description=(
            "Rewrite spans of a protein sequence by fill-in-the-middle decoding, optionally given homologs. "
            "Writes FASTA; each record's description gives the fill lengths and their log-likelihood."
        ),
    )
    inpaint.add_argument("--input", required=True, help="sequence file; its first record is filled")
    inpaint.add_argument(
        "--span", action="append", required=True, metavar="START-END",
        help="residues to rewrite, 1-based and inclusive (e.g. 10-20); repeat for up to five spans",
    )
    inpaint.add_argument("--context", help="homologs: A3M, Stockholm or FASTA (.gz ok)")
    inpaint.add_argument("--max-context-tokens", type=int, default=None, help="read homologs while the context stays within N tokens")
    inpaint.add_argument("-n", type=int, default=1, help="number of inpainted versions")
    inpaint.add_argument("--max-fill-length", type=int, default=64, help="longest fill of one span")
    inpaint.add_argument("--temperature", type=float, default=1.0, help="0 picks the likeliest residue")
    inpaint.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    inpaint.add_argument("--top-p", type=float, default=None, help="sample within this probability mass")
    inpaint.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    inpaint.add_argument("--output", default="-", help="FASTA file; - for stdout (default)")
    inpaint.set_defaults(run=run_inpaint)

    info = commands.add_parser("info", help="describe a model", description="Show a model's architecture, size, domain and card.")
    info.add_argument("--model", required=True, help="a saved model directory (or a bundled default)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=run_info)

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

    evaluate = commands.add_parser(
        "evaluate", help="measure generated sequences",
        description="Measure generated sequences against reference data.",
    )
    evaluations = evaluate.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    chem = evaluations.add_parser(
        "chem", help="validity, uniqueness, novelty, internal diversity and FCD of generated molecules",
        description=(
            "Measure a file of generated SMILES with RDKit and the fcd package. validity: fraction that RDKit "
            "parses (empty entries count as invalid). uniqueness: distinct canonical molecules among the valid "
            "ones. novelty: fraction of those not in --train. internal diversity: 1 - mean pairwise Tanimoto "
            "similarity of Morgan fingerprints (radius 2, 2048 bits) of the valid ones. FCD: Frechet ChemNet "
            "Distance between the valid generated and the --reference molecules, both canonicalised; lower is "
            "closer. Undefined values (e.g. no valid molecule) show as n/a, or null in JSON."
        ),
    )
    chem.add_argument(
        "--generated", required=True,
        help="generated SMILES, one per line (.smi, .txt; .gz ok) or a --column of a CSV/TSV/Parquet file; "
        "invalid ones are counted, not rejected",
    )
    chem.add_argument("--reference", required=True, help="reference molecules for FCD, e.g. data/chembl31_valid_50k.smi.gz")
    chem.add_argument("--train", help="the training molecules, for novelty (left out without it)")
    chem.add_argument("--column", default="sequence", help="SMILES column of CSV/TSV/Parquet inputs")
    chem.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    chem.set_defaults(run=run_evaluate_chem)

    in_context = evaluations.add_parser(
        "chem-in-context", parents=[model_options],
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
    in_context.add_argument("--n-context", type=int, default=20, help="molecules of a domain placed in context")
    in_context.add_argument("--n-generate", type=int, default=100, help="molecules sampled per domain, and unconditionally")
    in_context.add_argument("--temperature", type=float, default=1.0)
    in_context.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    in_context.add_argument("--top-p", type=float, default=None, help="sample within this probability mass")
    in_context.add_argument("--max-new-tokens", type=int, default=256, help="longest molecule, in tokens")
    in_context.add_argument("--batch-size", type=int, default=64, help="molecules sampled at once")
    in_context.add_argument("--seed", type=int, default=0, help="chooses the context molecules and the samples")
    in_context.add_argument("--json", action="store_true", help="print one JSON object per domain instead of a table")
    in_context.set_defaults(run=run_evaluate_chem_in_context)
    train = commands.add_parser(
        "train",
        help="train or fine-tune a model from a recipe",
        description=(
            "Train a model from a YAML recipe (see recipes/). Runs on one CPU or GPU as is, and as DDP under "
            "`torchrun --nproc_per_node N -m bioxlstm.cli train ...` or `accelerate launch`. Writes checkpoints, "
            "log.csv, TensorBoard logs, loss_curve.png and the final model (OUTPUT_DIR/model) with its card."
        ),
        epilog=(
            "A recipe's objective: clm (next-token prediction, any domain), mlm (masked LM for bidirectional and "
            "RC-PS DNA models), fim-icl (protein homolog groups with fill-in-the-middle queries), molecule-icl "
            "(molecule sets, shuffled in every batch). A recipe's init_from (a model directory or bundled name) "
            "fine-tunes that model instead of starting from random weights; with init_blocks (e.g. "
            "[0, 1, slstm, 2, 3]) it first grows that model deeper, new blocks starting with a zero output."
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


def _line_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive line numbers separated by commas, not {text!r}")
    return numbers


def _molecules(path: str, column: str) -> list[str]:
    """The molecules of a reference or training file, each of which must be valid."""
    from tqdm import tqdm

    from .chem import is_valid
    from .io import InputError, read_records

    molecules = []
    for record in tqdm(read_records(path, domain="smiles", column=column), desc=path, unit="mol", file=sys.stderr, disable=None):
        if not is_valid(record.sequence):
            raise InputError(f"{path}: record {record.id!r} is not a valid molecule: {record.sequence!r}")
        molecules.append(record.sequence)
    return molecules


def run_evaluate_chem(args: argparse.Namespace) -> None:
    import json

    from .chem import chem_metrics
    from .io import read_records

    # Generated entries are taken as they are: RDKit judges them, and empty ones (skipped by the
    # reader) are generated molecules too, invalid ones.
    reader = read_records(args.generated, on_invalid="skip", column=args.column)
    generated = [record.sequence for record in reader] + [""] * reader.summary.skipped
    metrics = chem_metrics(
        generated,
        reference=_molecules(args.reference, args.column),
        training=None if args.train is None else _molecules(args.train, args.column),
    )
    if args.json:
        print(json.dumps(metrics.as_dict()))
        return
    values = metrics.as_dict()
    rows = [
        ("generated", f"{metrics.generated}", args.generated),
        ("valid", f"{metrics.valid}", ""),
        ("unique", f"{metrics.unique}", ""),
        ("validity", _number(values["validity"]), "valid / generated"),
        ("uniqueness", _number(values["uniqueness"]), "unique / valid"),
        ("novelty", _number(values["novelty"]), f"not in {args.train}" if args.train else "needs --train"),
        ("internal diversity", _number(values["internal_diversity"]), "1 - mean pairwise Tanimoto"),
        ("FCD", _number(values["fcd"]), f"to {args.reference}"),
    ]
    for name, value, note in rows:
        print(f"{name:<20}{value:>10}  {note}".rstrip())


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_evaluate_chem_in_context(args: argparse.Namespace) -> None:
    import json
    import math

    from .io import read_records
    from .tasks import evaluate_in_context

    records = list(read_records(args.domains, format="smiles", domain="smiles"))
    lines = args.lines or range(1, len(records) + 1)
    beyond = [line for line in lines if line > len(records)]
    if beyond:
        raise ValueError(f"{args.domains}: has {len(records)} domains, no line {beyond[0]}")
    model, tokenizer = _load(args)
    results = evaluate_in_context(
        model, tokenizer, [records[line - 1].sequence for line in lines], n_context=args.n_context,
        n_generate=args.n_generate, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )  # fmt: skip
    if args.json:
        for line, result in zip(lines, results):
            values = {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in vars(result).items()}
            print(json.dumps({"line": line, **values}))
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


def _load(args: argparse.Namespace):
    from .pretrained import load_pretrained
    from .tasks.running import pick_device

    model, tokenizer = load_pretrained(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model}: the model has no tokenizer and no domain to choose one")
    return model.to(pick_device(args.device)), tokenizer


def _records(args: argparse.Namespace, model):
    from tqdm import tqdm

    from .io import read_records

    reader = read_records(args.input, format=args.format, domain=model.config.domain, column=args.column)
    return tqdm(reader, desc="sequences", unit="seq", file=sys.stderr, disable=None)


def run_generate(args: argparse.Namespace) -> None:
    import pandas as pd

    from .io import STANDARD_STREAM, TABLE_FORMATS, Record, format_from_path, write_records, write_table
    from .tasks import generate_sequences

    model, tokenizer = _load(args)
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
    from .chem import is_valid
    from .io import Record, read_records
    from .tasks.molecules import sample_molecules

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
    from .io import Record
    from .tasks.protein import generate_family

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


def run_inpaint(args: argparse.Namespace) -> None:
    from .io import Record, read_records, write_records
    from .tasks.protein import inpaint

    spans = [_span(text) for text in args.span]
    model, tokenizer = _load(args)
    record = next(read_records(args.input, domain="protein"))
    results = []
    for index in range(args.n):
        result = inpaint(
            model, tokenizer, record.sequence, spans, context=args.context, max_context_tokens=args.max_context_tokens,
            max_fill_length=args.max_fill_length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed if index == 0 else None,
        )
        lengths = ",".join(map(str, result.fill_lengths))
        results.append(
            Record(f"{record.id}_inpainted_{index + 1}", result.sequence,
                   f"fill_lengths={lengths} log_likelihood={result.log_likelihood:.4f}")
        )
    write_records(results, args.output, "fasta" if args.output == "-" else None)


def _span(text: str) -> tuple[int, int]:
    """A 1-based inclusive `START-END` as a 0-based slice."""
    start, separator, end = text.partition("-")
    if not (separator and start.isdigit() and end.isdigit() and 1 <= int(start) <= int(end)):
        raise ValueError(f"--span {text!r}: expected START-END, 1-based and inclusive, e.g. 10-20")
    return int(start) - 1, int(end)


def run_embed(args: argparse.Namespace) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .tasks import embed_records

    output = Path(args.output)
    if output.suffix not in (".parquet", ".npy"):
        raise ValueError(f"{output}: embeddings are written as .parquet or .npy")
    if output.suffix == ".npy" and args.pooling == "none":
        raise ValueError("--pooling none gives one vector per token, of varying count: write a .parquet file")
    model, tokenizer = _load(args)
    embeddings = embed_records(
        model, tokenizer, _records(args, model), pooling=args.pooling, layer=args.layer,
        rc_invariant=args.rc_invariant, window=args.window, batch_size=args.batch_size,
    )
    if output.suffix == ".npy":
        ids, vectors = [], []
        for record_id, vector in embeddings:
            ids.append(record_id)
            vectors.append(vector)
        np.save(output, np.stack(vectors).astype(np.float32))
        output.with_suffix(".ids.txt").write_text("".join(f"{i}\n" for i in ids))
        return
    writer = None
    try:
        for record_id, vector in embeddings:  # one row group per sequence: memory stays flat
            table = pa.table({"id": [record_id], "embedding": [vector.astype(np.float32).tolist()]})
            writer = writer or pq.ParquetWriter(output, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def run_score(args: argparse.Namespace) -> None:
    import json

    import pandas as pd

    from .io import write_table
    from .tasks import score_records

    if args.wildtype or args.mutants:
        run_variant_scoring(args)
        return
    if args.input is None:
        raise ValueError("score needs --input (sequences to score) or --wildtype and --mutants (variant effects)")
    if args.context:
        run_context_scoring(args)
        return
    model, tokenizer = _load(args)
    scores = score_records(
        model, tokenizer, _records(args, model), rc_invariant=args.rc_invariant,
        window=args.window, batch_size=args.batch_size,
    )
    if args.json:
        for score in scores:
            print(json.dumps(vars(score)))
        return
    write_table(pd.DataFrame([vars(score) for score in scores], columns=["id", "length", "log_likelihood", "perplexity"]), args.output)


def run_context_scoring(args: argparse.Namespace) -> None:
    import pandas as pd

    from .io import write_table
    from .tasks.protein import load_context, perplexity, sequence_log_likelihoods

    model, tokenizer = _load(args)
    records = list(_records(args, model))
    context = load_context(args.context, max_tokens=args.max_context_tokens)
    log_likelihoods = sequence_log_likelihoods(
        model, tokenizer, [r.sequence for r in records], context,
        reuse_context_state=not args.no_reuse_context_state, batch_size=args.batch_size,
    )
    rows = [
        (r.id, len(r.sequence), value, perplexity(value, len(r.sequence) + 1)) for r, value in zip(records, log_likelihoods)
    ]
    write_table(pd.DataFrame(rows, columns=["id", "length", "log_likelihood", "perplexity"]), args.output)


def run_variant_scoring(args: argparse.Namespace) -> None:
    import pandas as pd

    from .io import InputError, format_from_path, read_records, write_table
    from .tasks.protein import apply_mutant, score_variants

    if not (args.wildtype and args.mutants):
        raise ValueError("variant-effect scoring needs both --wildtype and --mutants")
    wildtypes = list(read_records(args.wildtype, domain="protein"))
    if len(wildtypes) != 1:
        raise InputError(f"{args.wildtype}: expected one wild-type sequence, found {len(wildtypes)}")
    wildtype = wildtypes[0].sequence
    separator = {"csv": ",", "tsv": "\t"}.get(format_from_path(args.mutants))
    if separator is None:
        raise InputError(f"{args.mutants}: mutants are read from a CSV or TSV file")
    table = pd.read_csv(args.mutants, sep=separator, dtype=str, keep_default_na=False)
    if args.mutant_column not in table.columns:
        raise InputError(
            f"{args.mutants}: no column {args.mutant_column!r} (available: {', '.join(map(str, table.columns))})"
        )
    problems = []
    for row, code in enumerate(table[args.mutant_column], start=2):  # line 1 is the header
        try:
            apply_mutant(wildtype, code)
        except ValueError as problem:
            problems.append(f"line {row}: {problem}")
    if problems:
        more = f" ({len(problems) - 1} more rows do not match the wild type)" if len(problems) > 1 else ""
        raise InputError(f"{args.mutants}: {problems[0]}{more}; nothing was scored")
    model, tokenizer = _load(args)
    table["score"] = score_variants(
        model, tokenizer, wildtype, list(table[args.mutant_column]), context=args.context,
        reuse_context_state=not args.no_reuse_context_state, max_context_tokens=args.max_context_tokens,
        batch_size=args.batch_size,
    )
    write_table(table, args.output)


def run_info(args: argparse.Namespace) -> None:
    import json

    from .pretrained import load_pretrained

    model, tokenizer = load_pretrained(args.model)
    config = model.config
    card = Path(args.model) / "README.md"
    summary = {
        "model": str(args.model),
        "architecture": type(model).__name__,
        "domain": config.domain,
        "parameters": sum(p.numel() for p in model.parameters()),
        "blocks": ["sLSTM" if config.is_slstm(i) else "mLSTM" for i in range(config.num_hidden_layers)],
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
        "config": config.to_diff_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for key, value in summary.items():
        if key != "config":
            print(f"{key}: {value}")
    if card.is_file():
        print()
        print(card.read_text())
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
    except BrokenPipeError:
        # The reader of our output (e.g. `head`) has had enough; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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
