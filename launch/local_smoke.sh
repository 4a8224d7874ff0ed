#!/usr/bin/env bash
# One command from a fresh clone to REALM pre-training on the CPU, all of it,
# learning: installs ./.venv, prepares the embedded synthetic encyclopedia
# (no download), pre-trains the reader with BERT's masked LM (realm-mlm),
# warm-starts the retriever with the Inverse Cloze Task from that encoder
# (realm-ict), starts the asynchronous index builder in the background,
# pre-trains REALM from both (realm-pretrain) while the builder publishes
# fresher indices that the trainer hot-swaps, stops both, and prints a
# summary: the masked-LM, ICT and REALM curves, retrieval utility over the
# last steps (mean +- standard error), the reader's accuracy against itself
# given only the null document, and how often the retrieved blocks state
# the masked fact at the ICT start and at the end.
# Usage: bash launch/local_smoke.sh [WORKDIR]   (default ./workdir_smoke)
# A rerun resumes: each stage continues from its checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="$(realpath -m "${1:-workdir_smoke}")"
CORPUS="$WORKDIR/corpus"
MLM="$WORKDIR/mlm"
ICT="$WORKDIR/ict"
REALM="$WORKDIR/realm"
bash launch/install.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
mkdir -p "$REALM"
# The small-scale recipe (configs' tiny variants, blocks of 128 pieces):
# see README "The learning test bed".
LENGTHS=(--config.lengths.block_len=128 --config.lengths.max_title_len=16)
NO_DROPOUT=(--config.model.dropout_rate=0 --config.model.attention_dropout_rate=0)

if [ ! -f "$CORPUS/manifest.json" ]; then
  .venv/bin/realm-prepare-corpus --config=configs/prepare_corpus.py:tiny \
    --workdir="$WORKDIR" "${LENGTHS[@]}"
fi
.venv/bin/realm-mlm --config=configs/mlm.py:tiny --workdir="$MLM" \
  --config.corpus_dir="$CORPUS" --config.seq_len=128 "${NO_DROPOUT[@]}"
.venv/bin/realm-ict --config=configs/ict.py:tiny --workdir="$ICT" \
  --config.corpus_dir="$CORPUS" --config.init_from="$MLM" \
  --config.model.pooling=mean "${LENGTHS[@]}" --config.lengths.query_len=40 \
  "${NO_DROPOUT[@]}"

# The builder embeds the corpus with each new REALM checkpoint (the first
# one is step 0, the ICT retriever) and exits after TRAINING_DONE.
.venv/bin/realm-index-builder --config=configs/index_builder.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$CORPUS" \
  > "$REALM/index_builder.log" 2>&1 &
BUILDER=$!
trap 'kill $BUILDER 2>/dev/null || true' EXIT
.venv/bin/realm-pretrain --config=configs/pretrain.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$CORPUS" \
  --config.init_from="$ICT" --config.init.reader_from="$MLM" \
  --config.model.pooling=mean "${LENGTHS[@]}" --config.lengths.query_len=40 \
  --config.lengths.joint_len=168 "${NO_DROPOUT[@]}"
wait $BUILDER
trap - EXIT

.venv/bin/python - "$WORKDIR" <<'PY'
import json, math, pathlib, sys
workdir = pathlib.Path(sys.argv[1])
manifest = json.loads((workdir / 'corpus/manifest.json').read_text())
def rows(run, job):
  path = workdir / run / 'logs' / job / 'metrics.jsonl'
  return [json.loads(l) for l in path.read_text().splitlines()]
def mean_se(values):
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
  return mean, math.sqrt(var / n)
mlm = [r for r in rows('mlm', 'mlm') if 'eval/mlm_accuracy' in r]
ict = rows('ict', 'ict')
realm = [r for r in rows('realm', 'pretrain') if 'loss' in r]
held_out = [r for r in rows('realm', 'pretrain') if 'eval/fact_recall' in r]
print(f"corpus: {manifest['num_blocks']} blocks from "
      f"{manifest['num_documents']} documents")
print(f"MLM:  held-out masked-LM accuracy {mlm[0]['eval/mlm_accuracy']:.3f} "
      f"(step {mlm[0]['step']}) -> {mlm[-1]['eval/mlm_accuracy']:.3f} (step "
      f"{mlm[-1]['step']}); always the most frequent piece: "
      f"{mlm[-1]['eval/unigram_accuracy']:.3f}")
print(f"ICT:  step {ict[0]['step']} loss {ict[0]['loss']:.3f} -> step "
      f"{ict[-1]['step']} loss {ict[-1]['loss']:.3f} "
      f"(in-batch accuracy {ict[-1]['accuracy']:.3f})")
first, last = realm[0], realm[-1]
n = max(len(realm) // 4, 1)
early, late = realm[:n], realm[-n:]
ru, ru_se = mean_se([r['retrieval_utility'] for r in late])
acc, acc_se = mean_se([r['mlm_accuracy'] for r in late])
null, null_se = mean_se([r['null_mlm_accuracy'] for r in late])
f0, f0_se = mean_se([r['fact_recall'] for r in early])
f1, f1_se = mean_se([r['fact_recall'] for r in late])
print(f"REALM: step {first['step']} loss {first['loss']:.3f} -> step "
      f"{last['step']} loss {last['loss']:.3f}; over the last {n} steps:")
print(f"       retrieval utility {ru:+.4f} +- {ru_se:.4f}; p(null) "
      f"{mean_se([r['p_null'] for r in late])[0]:.3f}")
print(f"       MLM accuracy {acc:.3f} +- {acc_se:.3f} vs the same reader "
      f"given the null document alone {null:.3f} +- {null_se:.3f}")
print(f"       a retrieved block states the masked fact: {f0:.3f} +- "
      f"{f0_se:.3f} (first {n} steps, ICT's retriever) -> {f1:.3f} +- "
      f"{f1_se:.3f} (last {n})")
print(f"       held-out queries ({held_out[0]['step']} -> "
      f"{held_out[-1]['step']}): a retrieved block states the masked fact "
      f"{held_out[0]['eval/fact_recall']:.3f} -> "
      f"{held_out[-1]['eval/fact_recall']:.3f}")
print(f"       source block retrieved in the top 8: "
      f"{mean_se([r['source_recall'] for r in late])[0]:.2f}")
steps = sorted({int(r['index_step']) for r in realm})
print(f"index versions used: {len(steps)} (checkpoint steps {steps}); "
      f"max staleness {int(max(r['index_staleness'] for r in realm))} steps")
latest = json.loads((workdir / 'realm/index/LATEST').read_text())
print(f"newest index: {latest['version']}")
PY
