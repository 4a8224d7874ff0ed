#!/usr/bin/env bash
# One command from a fresh clone to a running tiny REALM on the CPU:
# installs ./.venv, prepares the embedded synthetic corpus, warm-starts the
# retriever with the Inverse Cloze Task, and builds the first MIPS index
# from the last ICT checkpoint with the index builder.
# Usage: bash launch/local_smoke.sh [WORKDIR]   (default ./workdir_smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-workdir_smoke}"
bash launch/install.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

if [ ! -f "$WORKDIR/corpus/manifest.json" ]; then
  .venv/bin/realm-prepare-corpus --config=configs/prepare_corpus.py:tiny \
    --workdir="$WORKDIR"
fi
.venv/bin/realm-ict --config=configs/ict.py:tiny --workdir="$WORKDIR"
.venv/bin/realm-index-builder --config=configs/index_builder.py:tiny \
  --workdir="$WORKDIR" --once

.venv/bin/python - "$WORKDIR" <<'PY'
import json, pathlib, sys
workdir = pathlib.Path(sys.argv[1])
manifest = json.loads((workdir / 'corpus' / 'manifest.json').read_text())
rows = [json.loads(l) for l in
        (workdir / 'logs' / 'ict' / 'metrics.jsonl').read_text().splitlines()]
print(f"corpus: {manifest['num_blocks']} blocks from "
      f"{manifest['num_documents']} documents")
print(f"ICT: step {rows[0]['step']} loss {rows[0]['loss']:.3f} "
      f"acc {rows[0]['accuracy']:.3f} -> step {rows[-1]['step']} "
      f"loss {rows[-1]['loss']:.3f} acc {rows[-1]['accuracy']:.3f}")
steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
               if p.name.isdigit())
print(f"checkpoints: {steps} in {workdir / 'checkpoints'}")
latest = json.loads((workdir / 'index' / 'LATEST').read_text())
index = json.loads(
    (workdir / 'index' / latest['version'] / 'manifest.json').read_text())
print(f"index: {latest['version']} ({index['kind']}, {index['num_blocks']} x "
      f"{index['dim']}) embedded at {index['embedded_blocks_per_s']:.0f} "
      f"blocks/s")
PY
