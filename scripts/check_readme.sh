#!/usr/bin/env bash
# Runs the README's first set-up command (the main job on the bundled default models) the way a new
# user would: in a fresh clone, inside a fresh virtual environment, offline for models and data.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
# The first fenced block of the README's "Set-up" section is the main job; the second runs the tests.
main_job=$(awk '/^## Set-up/{in_setup=1} in_setup && /^```bash/{block++; next} in_setup && /^```/{if (block==1) exit; next} in_setup && block==1' "$repo/README.md")
[ -n "$main_job" ] || { echo "README.md: no main-job command in the Set-up section"; exit 1; }
python -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
cd "$work/clone"
echo "+ $main_job"
HF_HUB_OFFLINE=1 bash -c "$main_job"
