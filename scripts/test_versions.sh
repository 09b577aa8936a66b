#!/usr/bin/env bash
# Tests pyproject.toml's dependency ranges at both ends: `lowest` installs the lowest version each
# fast-moving dependency allows (read from pyproject.toml, so raising a bound there moves this test),
# `newest` the newest the resolver picks; each in a fresh virtual environment under .venv-versions/,
# then runs the tests that touch those dependencies' APIs. Extra arguments go to pytest.
#   bash scripts/test_versions.sh lowest|newest [pytest options]
set -euo pipefail
end=${1:-}
case "$end" in
    lowest|newest) shift ;;
    *) echo "usage: $0 lowest|newest [pytest options]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
# The dependencies whose APIs move from release to release; the others change little between majors.
fast_moving="transformers accelerate datasets huggingface_hub tokenizers safetensors torch"
# Generation (every path's recorded tokens), export, training (sharded and LoRA too), model cards,
# conversion and tokenizers: the code that calls into them.
tests=(tests/test_model.py tests/test_generation_protocol.py tests/test_export.py tests/test_training.py
       tests/test_scale.py tests/test_cards.py tests/test_tokenization.py tests/test_convert_common.py
       tests/test_convert_prot_xlstm.py tests/test_convert_dna_xlstm.py tests/test_convert_chem_xlstm.py)

venv=.venv-versions/$end
python -m venv --clear "$venv"
py=$venv/bin/python
# torch first, from the CPU wheel (see scripts/install.sh): 2.13.0 is also the lowest torch pyproject.toml allows.
"$py" -m pip install -q "torch==2.13.0" ${BIOXLSTM_TORCH_INDEX:+--index-url "$BIOXLSTM_TORCH_INDEX"}
pins=()
if [ "$end" = lowest ]; then
    mapfile -t pins < <(FAST_MOVING="$fast_moving" "$py" - <<'PY'
import os, re, tomllib

wanted = set(os.environ["FAST_MOVING"].split())
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
# Some of them (accelerate, datasets) come with an extra rather than the base install.
requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
for requirement in dict.fromkeys(requirements):
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group()
    lowest = re.search(r">=\s*([^,;\s]+)", requirement)
    if name in wanted and lowest:
        print(f"{name}=={lowest.group(1)}")
PY
    )
    echo "lowest allowed: ${pins[*]}"
fi
"$py" -m pip install -q -e ".[all,test]" "${pins[@]}"
"$py" -m pip check
"$py" -m pip list 2>/dev/null | grep -iE "^($(echo "$fast_moving" | sed 's/ /|/g')) " || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The long tests (marked slow) exercise the same APIs at length; the whole suite runs them on the newest set.
exec "$py" -m pytest -q -m "not slow" "${tests[@]}" "$@"
