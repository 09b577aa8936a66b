#!/usr/bin/env bash
# The base install as a user gets it: `pip install .` without extras, in a fresh virtual environment
# under .venv-base/. Checks that no optional dependency came with it (bioxlstm/extras.py lists them;
# xlstm is a test oracle only) and that generate, score and embed run on the bundled DNA and protein
# models. The chem model generates with --grammar none; its default SMILES grammar needs RDKit, so
# there it must refuse in one line naming the [chem] extra.
#   bash scripts/test_base_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$PWD/.venv-base
python -m venv --clear "$venv"
py=$venv/bin/python
# torch first, from the CPU wheel (see scripts/install.sh).
"$py" -m pip install -q "torch==2.13.0" ${BIOXLSTM_TORCH_INDEX:+--index-url "$BIOXLSTM_TORCH_INDEX"}
"$py" -m pip install -q .
"$py" -m pip check

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Outside the source tree, so that `bioxlstm` is the installed package, not the checkout.
cd "$work"
"$py" - <<'PY'
import importlib.util

from bioxlstm.extras import EXTRA_OF_MODULE

present = [module for module in [*EXTRA_OF_MODULE, "xlstm"] if importlib.util.find_spec(module) is not None]
if present:
    raise SystemExit(f"the base install brought optional dependencies: {', '.join(present)}")
print(f"base install: none of {', '.join([*EXTRA_OF_MODULE, 'xlstm'])}")
PY

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
bioxlstm=$venv/bin/bioxlstm
run() {  # a command's progress bars are noise, unless it fails
    echo "+ bioxlstm $*"
    "$bioxlstm" "$@" 2>stderr.txt || { cat stderr.txt; return 1; }
}
for model in dna protein; do
    run generate --model "$model" -n 2 --max-new-tokens 40 --seed 0 --output "$model.fasta"
    run score --model "$model" --input "$model.fasta" --output "$model.scores.csv"
    run embed --model "$model" --input "$model.fasta" --output "$model.parquet"
    [ "$(grep -c '^>' "$model.fasta")" = 2 ] && [ "$(wc -l < "$model.scores.csv")" = 3 ] && [ -s "$model.parquet" ] \
        || { echo "$model: an output is missing or incomplete"; exit 1; }
done
run score --model dna --input dna.fasta --rc-invariant --output dna.rc.csv
run generate --model chem -n 2 --max-new-tokens 40 --seed 0 --grammar none --output molecules.smi
[ "$(wc -l < molecules.smi)" = 2 ] || { echo "chem: expected 2 molecules"; exit 1; }

echo "+ bioxlstm generate --model chem (default grammar: needs RDKit)"
status=0
"$bioxlstm" generate --model chem -n 2 --max-new-tokens 40 --seed 0 --output refused.smi 2>refused.err || status=$?
cat refused.err
[ "$status" = 1 ] && [ "$(wc -l < refused.err)" = 1 ] && grep -q 'pip install "bioxlstm\[chem\]"' refused.err \
    && [ ! -e refused.smi ] || { echo "chem: expected one line naming the [chem] extra, exit status 1, no output"; exit 1; }
echo "base install: generate, score and embed work without extras"
