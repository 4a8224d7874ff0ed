#!/usr/bin/env bash
# REALM on the one-sentence-block bed (README, The learning test bed):
# the synthetic encyclopedia in blocks of 32 pieces, a reader taught to copy
# by realm-mlm's linked pairs, an ICT retriever from scratch, then
# realm-pretrain beside a real index builder; prints retrieval utility,
# accuracy vs the null-document reader and fact recall per 50 steps.
# Usage: bash bench/realm_bed.sh WORKDIR [RUN_NAME [realm-pretrain flags]]
#   e.g. bash bench/realm_bed.sh /tmp/bed trained \
#          --config.optimizer.retriever_lr_scale=0.1
#        bash bench/realm_bed.sh /tmp/bed frozen --config.freeze_retriever=true
# A rerun resumes every stage; SEED (default 0) seeds all of them; DOCS
# (default 2000) is the number of synthetic articles.
set -euo pipefail
cd "$(dirname "$0")/.."
W="$(realpath -m "$1")"; RUN="${2:-realm}"; shift $(( $# < 2 ? $# : 2 ))
SEED="${SEED:-0}"; DOCS="${DOCS:-2000}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
LENGTHS=(--config.lengths.block_len=32 --config.lengths.max_title_len=16)
NO_DROPOUT=(--config.model.dropout_rate=0 --config.model.attention_dropout_rate=0)
[ -f "$W/corpus/manifest.json" ] || .venv/bin/realm-prepare-corpus \
  --config=configs/prepare_corpus.py:tiny --workdir="$W" "${LENGTHS[@]}" \
  --config.input.synthetic_seed="$SEED" --config.input.synthetic_docs="$DOCS"
.venv/bin/realm-mlm --config=configs/mlm.py:tiny --workdir="$W/mlm" \
  --config.corpus_dir="$W/corpus" --config.seq_len=32 \
  --config.pair_query_len=40 --config.pair_evidence=linked \
  --config.batch_size=128 --config.num_train_steps=600 \
  --config.eval_blocks=128 --config.eval_every_steps=150 --config.log_every_steps=150 \
  --config.seed="$SEED" "${NO_DROPOUT[@]}"
.venv/bin/realm-ict --config=configs/ict.py:tiny --workdir="$W/ict" \
  --config.corpus_dir="$W/corpus" --config.model.pooling=mean \
  "${LENGTHS[@]}" --config.lengths.query_len=40 --config.num_train_steps=300 \
  --config.seed="$SEED" "${NO_DROPOUT[@]}"
REALM="$W/$RUN"
mkdir -p "$REALM"
.venv/bin/realm-index-builder --config=configs/index_builder.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$W/corpus" \
  > "$REALM/index_builder.log" 2>&1 &
BUILDER=$!
trap 'kill $BUILDER 2>/dev/null || true' EXIT
.venv/bin/realm-pretrain --config=configs/pretrain.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$W/corpus" \
  --config.init_from="$W/ict" --config.init.reader_from="$W/mlm" \
  --config.model.pooling=mean "${LENGTHS[@]}" --config.lengths.query_len=40 \
  --config.lengths.joint_len=72 --config.batch_size=16 \
  --config.num_train_steps=300 --config.eval_batches=64 \
  --config.seed="$SEED" "${NO_DROPOUT[@]}" "$@"
wait $BUILDER
trap - EXIT
.venv/bin/python - "$REALM" <<'PY'
import json, math, pathlib, sys
path = pathlib.Path(sys.argv[1]) / 'logs/pretrain/metrics.jsonl'
rows = [r for r in map(json.loads, path.read_text().splitlines())
        if 'retrieval_utility' in r]
def cell(key, part):
  values = [r[key] for r in part]
  mean = sum(values) / len(values)
  var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
  return f'{mean:.3f} +- {math.sqrt(var / len(values)):.3f}'
keys = ('retrieval_utility', 'mlm_accuracy', 'null_mlm_accuracy',
        'fact_recall', 'source_recall', 'retrieval_entropy')
print('| steps | ' + ' | '.join(keys) + ' |')
print('|---' * (len(keys) + 1) + '|')
evals = [r for r in map(json.loads, path.read_text().splitlines())
         if 'eval/fact_recall' in r]
print('held-out queries (blocks no training query came from), step: '
      'eval/fact_recall, eval/source_recall')
for r in evals:
  print(f"  {r['step']}: {r['eval/fact_recall']:.3f}, "
        f"{r['eval/source_recall']:.3f}")
for first in range(0, len(rows), 50):
  part = rows[first:first + 50]
  print(f'| {part[0]["step"]}-{part[-1]["step"]} | '
        + ' | '.join(cell(k, part) for k in keys) + ' |')
PY
