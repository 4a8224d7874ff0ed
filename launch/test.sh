#!/usr/bin/env bash
# Sets up ./.venv and runs the whole test suite (slow end-to-end tests too).
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
exec .venv/bin/pytest -n 2 --durations=15 "$@" tests
