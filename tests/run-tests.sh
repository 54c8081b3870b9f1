#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it. Brings up the local SLURM cluster when it can.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q "$@"
