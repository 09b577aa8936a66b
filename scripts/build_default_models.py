"""Train the tiny recipes and install the results as the bundled default models.

    OMP_NUM_THREADS=1 python scripts/build_default_models.py dna protein chem chem-icl

Each name trains its recipe (see DEFAULT_RECIPES) into runs/default-<name>/, then any further stages
(CONTINUATIONS) into runs/default-<name>-stage<k>/, and copies the last run's exported model into
bioxlstm/default_models/<name>/, where `load_pretrained(name)` and `--model name` find it.
`--resume-to-steps N` continues the first run to N steps instead (the learning-rate schedule is then
stretched to N steps from where it stood; later stages run afresh); `--from-run DIR` installs a run
trained by other means; `--cards-only` rewrites the installed models' cards and configs (after a change
to how cards are written) and leaves their weights untouched.
The protein card also reports the perplexity of never-trained family members alone and with homologs in
context; the chem card, the RDKit validity and uniqueness of 1,000 unconditional samples; the chem-icl
card, the in-context evaluation on the ICST domains its recipe held out.
"""

import argparse
import json
import shutil
from pathlib import Path

from bioxlstm.export import CARD_INFO_FILE, CardInfo, drop_tokenizer_loader_settings, write_card
from bioxlstm.io import read_records
from bioxlstm.pretrained import DEFAULT_MODELS_DIRECTORY, load_pretrained
from bioxlstm.tasks.molecules import evaluate_in_context, sample_molecules
from bioxlstm.tasks.protein import held_out_perplexity
from bioxlstm.training import Recipe, load_recipe, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = {
    "dna": "dna-clm-tiny",
    "protein": "protein-fim-icl-tiny",
    "chem": "chem-clm-tiny",
    "chem-icl": "chem-icl-tiny",
}
# Bundled models trained in more than one run: after the recipe as written, each stage continues the
# previous run's model with a fresh optimizer and schedule, with these overrides of the same recipe.
CONTINUATIONS = {
    # chem: held-out loss 0.633 -> 0.630 and 86.6% -> 88.1% valid samples (the recipe's comment has more)
    "chem": [["training.max_steps=5000", "training.learning_rate=5.0e-4", "training.warmup_steps=100", "training.seed=1"]],
}
STAGES_NOTE = (
    "\n\nBuilt in {runs} runs by `scripts/build_default_models.py {name}`: the recipe as written{resumed}, then "
    "{stages}, each continuing the previous run's model with a fresh optimizer; the numbers above are "
    "those of the last run."
)
VALIDITY_SAMPLES = 1000
# The package's license (pyproject.toml) covers the weights it ships; the data they were trained on
# keep their own terms, which the data cards on each model card state.
BUNDLED_LICENSE = "apache-2.0"
RESUMED_NOTE = (
    "\n\nThe run was resumed from its last checkpoint and continued to {steps} steps in all (the time "
    "above is that of the continuation), its cosine learning-rate schedule stretched to the new length from where it stood "
    "(`scripts/build_default_models.py {name} --resume-to-steps {steps}`)."
)


def add_unconditional_metrics(card: CardInfo, model, tokenizer, recipe: Recipe) -> None:
    sample = sample_molecules(
        model, tokenizer, VALIDITY_SAMPLES, unique_valid=False, temperature=1.0,
        max_new_tokens=recipe.data.max_length, batch_size=250, seed=0,
        grammar=False,  # the card gives the model's own validity; the SMILES grammar would hide it
    )
    card.metrics[f"validity_of_{VALIDITY_SAMPLES}_samples"] = sample.report.valid / VALIDITY_SAMPLES
    card.metrics[f"unique_valid_of_{VALIDITY_SAMPLES}_samples"] = sample.report.unique / VALIDITY_SAMPLES
    card.description += (
        f"\n\nValidity: the fraction of {VALIDITY_SAMPLES} molecules, sampled at temperature 1.0 from `<cls>` "
        "with `bioxlstm.sample_molecules`, that RDKit parses; unique: the distinct canonical ones among them."
    )


def add_in_context_metrics(card: CardInfo, model, tokenizer, recipe: Recipe) -> None:
    (domain_file,) = recipe.data.train
    held_out = recipe.data.held_out_records
    domains = [r.sequence for number, r in enumerate(read_records(domain_file), start=1) if number in held_out]
    results = evaluate_in_context(model, tokenizer, domains, n_context=20, n_generate=100, max_new_tokens=128)
    rows = []
    for line, result in zip(held_out, results):
        card.metrics[f"fcd_in_context_domain_{line}"] = result.fcd_in_context
        card.metrics[f"fcd_unconditional_domain_{line}"] = result.fcd_unconditional
        rows.append(f"| {line} | {result.fcd_in_context:.2f} | {result.fcd_unconditional:.2f} | "
                    f"{result.valid_in_context} | {result.valid_unconditional} |")
    better = sum(r.fcd_in_context < r.fcd_unconditional for r in results)
    card.description += (
        "\n\nIn-context evaluation on the held-out ICST domains (lines "
        f"{', '.join(map(str, held_out))} of `{Path(domain_file).name}`, never trained on): 20 molecules of "
        "a domain in context, 100 sampled after them, and their Frechet ChemNet Distance to the rest of the "
        "domain, against 100 samples without context (`bioxlstm evaluate chem-in-context`). In-context "
        f"samples are closer on {better} of {len(results)} domains.\n\n"
        "| domain line | FCD in context | FCD unconditional | valid of 100 in context | valid of 100 unconditional |\n"
        "| ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows)
    )


def add_homolog_context_metrics(card: CardInfo, model, tokenizer, recipe: Recipe) -> None:
    """Perplexity of the never-trained members of every family file, alone and after its other members."""
    rows = []
    for path in recipe.data.train:
        measured = held_out_perplexity(
            model, tokenizer, path, held_out=recipe.data.held_out_records, max_context_tokens=recipe.data.max_length
        )
        alone = sum(row.perplexity_alone for row in measured) / len(measured)
        in_context = sum(row.perplexity_in_context for row in measured) / len(measured)
        family = Path(path).name.split(".")[0]
        card.metrics[f"held_out_perplexity_alone_{family}"] = alone
        card.metrics[f"held_out_perplexity_in_context_{family}"] = in_context
        rows.append(f"| {Path(path).name} | {len(measured)} | {alone:.2f} | {in_context:.2f} |")
    card.description += (
        "\n\nIn-context gain: the members numbered "
        f"{', '.join(map(str, recipe.data.held_out_records))} of every family file are never trained on; their mean "
        f"perplexity alone and after the family's other members (up to {recipe.data.max_length} tokens of context), "
        "from `bioxlstm.tasks.protein.held_out_perplexity`:\n\n"
        "| family file | members | perplexity alone | perplexity with homologs in context |\n"
        "| --- | ---: | ---: | ---: |\n" + "\n".join(rows)
    )


EXTRA_METRICS = {
    "protein": add_homolog_context_metrics,
    "chem": add_unconditional_metrics,
    "chem-icl": add_in_context_metrics,
}


def default_recipe(name: str, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    return load_recipe(ROOT / "recipes" / f"{DEFAULT_RECIPES[name]}.yaml", overrides)


def build(name: str, resume_to_steps: int | None = None) -> Path:
    overrides = [] if resume_to_steps is None else [f"training.max_steps={resume_to_steps}"]
    recipe = default_recipe(name, overrides)
    run_dir = ROOT / "runs" / f"default-{name}"
    if resume_to_steps is None and run_dir.exists():
        shutil.rmtree(run_dir)
    train(recipe, run_dir, resume=resume_to_steps is not None)
    continuations = CONTINUATIONS.get(name, [])
    for stage, stage_overrides in enumerate(continuations, start=2):
        previous, run_dir = run_dir, ROOT / "runs" / f"default-{name}-stage{stage}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        recipe = default_recipe(name, [f"init_from={previous / 'model'}", "model={}", *stage_overrides])
        train(recipe, run_dir)
    if continuations:
        resumed = "" if resume_to_steps is None else f" (resumed to {resume_to_steps} steps)"
        stages = "; ".join(f"`{' '.join(stage_overrides)}`" for stage_overrides in continuations)
        note = STAGES_NOTE.format(runs=len(continuations) + 1, name=name, resumed=resumed, stages=stages)
    elif resume_to_steps is not None:
        note = RESUMED_NOTE.format(steps=resume_to_steps, name=name)
    else:
        note = ""
    return install(name, recipe, run_dir, note)


def install(name: str, recipe: Recipe, run_dir: Path, note: str = "") -> Path:
    """Copy a finished run's model into the package, with the name's extra metrics and `note` on its card."""
    target = DEFAULT_MODELS_DIRECTORY / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(run_dir / "model", target)
    model, tokenizer = load_pretrained(target)
    card = CardInfo.from_file(target / CARD_INFO_FILE)
    card.description += note
    if name in EXTRA_METRICS:
        EXTRA_METRICS[name](card, model, tokenizer, recipe)
    bundle(name, model, card, recipe)
    return target


def rewrite_card(name: str) -> Path:
    """Write an installed model's card and config again as `install` would, without its weights."""
    target = DEFAULT_MODELS_DIRECTORY / name
    model, _ = load_pretrained(target)
    bundle(name, model, CardInfo.from_file(target / CARD_INFO_FILE), default_recipe(name))
    return target


def bundle(name: str, model, card: CardInfo, recipe: Recipe) -> None:
    """Make an installed model's directory package data: no model code, a card that says how to use it."""
    target = DEFAULT_MODELS_DIRECTORY / name
    # The installed package is the code of its bundled models; a copy beside the weights would fall
    # out of step with it, and an auto_map would point at files that are not there.
    # `bioxlstm export --model NAME` writes a self-contained directory.
    for code in target.glob("*.py"):
        code.unlink()
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("auto_map", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    drop_tokenizer_loader_settings(target)
    card.license = card.license or BUNDLED_LICENSE
    # A bundled model's base is another bundled model; a continued stage's run directory is none.
    card.base_model = recipe.init_from if recipe.init_from in DEFAULT_RECIPES else ""
    write_card(model, target, card, bundled_name=name)
    for path in target.iterdir():
        path.chmod(0o644)  # safetensors writes owner-only files; an installed package is read by all users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(DEFAULT_RECIPES))
    parser.add_argument(
        "--resume-to-steps", type=int, metavar="N",
        help="continue the previous run of each name (runs/default-NAME) to N steps in all, instead of starting afresh",
    )
    parser.add_argument(
        "--cards-only", action="store_true",
        help="rewrite the installed models' cards, configs and tokenizer configs; weights stay as they are",
    )
    parser.add_argument(
        "--from-run", type=Path, metavar="DIR",
        help="install the model of a finished run of the name's recipe (e.g. one trained elsewhere with "
        "`bioxlstm train`) instead of training; one name only",
    )
    args = parser.parse_args()
    if args.cards_only:
        if args.from_run is not None or args.resume_to_steps is not None:
            parser.error("--cards-only takes names only")
        for name in args.names:
            print(f"rewrote the card of {rewrite_card(name)}")
        return
    if args.from_run is not None:
        if len(args.names) != 1 or args.resume_to_steps is not None:
            parser.error("--from-run takes one name and no --resume-to-steps")
        (name,) = args.names
        if not (args.from_run / "model").is_dir():
            parser.error(f"{args.from_run}: no finished run (no model/ directory)")
        print(f"installed {install(name, default_recipe(name), args.from_run)}")
        return
    for name in args.names:
        print(f"built {build(name, args.resume_to_steps)}")


if __name__ == "__main__":
    main()
