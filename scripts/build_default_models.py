"""Train the tiny recipes and install the results as the bundled default models.

    OMP_NUM_THREADS=1 python scripts/build_default_models.py dna protein chem

Each name trains its recipe (see DEFAULT_RECIPES) into runs/default-<name>/ and copies the exported
model into bioxlstm/default_models/<name>/, where `load_pretrained(name)` and `--model name` find it.
The chem card also reports the RDKit validity of unconditional samples.
"""

import argparse
import shutil
from pathlib import Path

import torch

from bioxlstm.chem import is_valid
from bioxlstm.export import CARD_INFO_FILE, CardInfo, export
from bioxlstm.pretrained import DEFAULT_MODELS_DIRECTORY, load_pretrained
from bioxlstm.training import load_recipe, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = {"dna": "dna-clm-tiny", "protein": "protein-clm-tiny", "chem": "chem-clm-tiny"}
VALIDITY_SAMPLES = 200


def sample_validity(model, tokenizer, samples: int, max_new_tokens: int, seed: int = 0) -> float:
    """Fraction of `samples` molecules, sampled at temperature 1 from <cls> until <eos>, that RDKit parses."""
    torch.manual_seed(seed)
    prompt = torch.full((samples, 1), tokenizer.cls_token_id)
    with torch.no_grad():
        output = model.generate(
            prompt, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    smiles = tokenizer.batch_decode(output, skip_special_tokens=True)
    return sum(map(is_valid, smiles)) / samples


def build(name: str) -> Path:
    recipe = load_recipe(ROOT / "recipes" / f"{DEFAULT_RECIPES[name]}.yaml")
    run_dir = ROOT / "runs" / f"default-{name}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(recipe, run_dir)
    target = DEFAULT_MODELS_DIRECTORY / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(run_dir / "model", target)
    if name == "chem":
        model, tokenizer = load_pretrained(target)
        card = CardInfo.from_file(target / CARD_INFO_FILE)
        card.metrics[f"validity_of_{VALIDITY_SAMPLES}_samples"] = sample_validity(
            model, tokenizer, VALIDITY_SAMPLES, recipe.data.max_length
        )
        card.description += (
            f"\n\nValidity: the fraction of {VALIDITY_SAMPLES} molecules sampled at temperature 1.0 from `<cls>` "
            "(until `<eos>`) that RDKit parses."
        )
        export(model, target, tokenizer, card)
    # The installed package is the code of its bundled models; a copy beside the weights would fall
    # out of step with it. `bioxlstm export --model NAME` writes a self-contained directory.
    for code in target.glob("*.py"):
        code.unlink()
    for path in target.iterdir():
        path.chmod(0o644)  # safetensors writes owner-only files; an installed package is read by all users
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(DEFAULT_RECIPES))
    for name in parser.parse_args().names:
        print(f"built {build(name)}")


if __name__ == "__main__":
    main()
