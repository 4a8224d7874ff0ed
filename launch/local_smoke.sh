#!/usr/bin/env bash
# One command from a fresh clone to REALM pre-training on the CPU, all of it:
# installs ./.venv, prepares the embedded synthetic corpus (no download),
# warm-starts the retriever with the Inverse Cloze Task, starts the
# asynchronous index builder in the background, pre-trains REALM while the
# builder publishes fresher indices that the trainer hot-swaps, stops both,
# and prints a summary. A few minutes on 2 cores.
# Usage: bash launch/local_smoke.sh [WORKDIR]   (default ./workdir_smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="$(realpath -m "${1:-workdir_smoke}")"
ICT="$WORKDIR/ict"
REALM="$WORKDIR/realm"
bash launch/install.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
mkdir -p "$REALM"

if [ ! -f "$ICT/corpus/manifest.json" ]; then
  .venv/bin/realm-prepare-corpus --config=configs/prepare_corpus.py:tiny \
    --workdir="$ICT"
fi
.venv/bin/realm-ict --config=configs/ict.py:tiny --workdir="$ICT"

# The builder embeds the corpus with each new REALM checkpoint (the first
# one is step 0, the ICT retriever) and exits after TRAINING_DONE.
.venv/bin/realm-index-builder --config=configs/index_builder.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$ICT/corpus" \
  > "$REALM/index_builder.log" 2>&1 &
BUILDER=$!
trap 'kill $BUILDER 2>/dev/null || true' EXIT

.venv/bin/realm-pretrain --config=configs/pretrain.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$ICT/corpus" \
  --config.init_from="$ICT" --config.num_train_steps=100
wait $BUILDER
trap - EXIT

.venv/bin/python - "$WORKDIR" <<'PY'
import json, pathlib, sys
workdir = pathlib.Path(sys.argv[1])
manifest = json.loads((workdir / 'ict/corpus/manifest.json').read_text())
def rows(job, sub):
  path = workdir / sub / 'logs' / job / 'metrics.jsonl'
  return [json.loads(l) for l in path.read_text().splitlines()]
ict, realm = rows('ict', 'ict'), rows('pretrain', 'realm')
print(f"corpus: {manifest['num_blocks']} blocks from "
      f"{manifest['num_documents']} documents")
print(f"ICT:  step {ict[0]['step']} loss {ict[0]['loss']:.3f} -> step "
      f"{ict[-1]['step']} loss {ict[-1]['loss']:.3f} "
      f"(in-batch accuracy {ict[-1]['accuracy']:.3f})")
first, last = realm[0], realm[-1]
print(f"REALM: step {first['step']} loss {first['loss']:.3f} -> step "
      f"{last['step']} loss {last['loss']:.3f}; MLM accuracy "
      f"{last['mlm_accuracy']:.3f}; retrieval utility "
      f"{last['retrieval_utility']:+.4f}; p(null) {last['p_null']:.3f}")
print(f"       source block retrieved in the top 8: "
      f"{sum(r['source_recall'] for r in realm[-10:]) / 10:.2f} "
      f"(last 10 steps)")
steps = sorted({int(r['index_step']) for r in realm})
print(f"index versions used: {len(steps)} (checkpoint steps {steps}); "
      f"max staleness {int(max(r['index_staleness'] for r in realm))} steps")
latest = json.loads((workdir / 'realm/index/LATEST').read_text())
print(f"newest index: {latest['version']}")
PY
