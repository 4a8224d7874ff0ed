#!/usr/bin/env bash
# One command from a fresh clone to REALM pre-training on the CPU, all of it,
# learning: installs ./.venv, then runs launch/realm_bed.sh - the embedded
# synthetic encyclopedia (no download) in one-sentence blocks, the reader
# taught to copy by realm-mlm's linked pairs, the retriever warm-started by
# ICT, the asynchronous index builder in the background and REALM
# pre-training from both while the builder publishes fresher indices that
# the trainer hot-swaps - and prints its summary: the reader's copying, the
# ICT curve, retrieval utility (mean +- standard error), the reader's
# accuracy against itself given only the null document, and how often the
# retrieved blocks state the masked fact of held-out queries, from the ICT
# start to the end.
# Usage: bash launch/local_smoke.sh [WORKDIR]   (default ./workdir_smoke)
# A rerun resumes: each stage continues from its checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
exec bash launch/realm_bed.sh "${1:-workdir_smoke}" realm
