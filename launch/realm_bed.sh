#!/usr/bin/env bash
# REALM learning at small scale, on the CPU (README, "The learning test
# bed"): the synthetic encyclopedia (no download) in one-sentence blocks of
# 32 pieces -> realm-mlm's linked pairs (a reader taught to copy a salient
# span from another block) -> realm-ict from scratch (mean pooling) ->
# realm-pretrain from both beside a real index builder process, which
# publishes fresher indices that the trainer hot-swaps. Prints a summary:
# the reader's copying, ICT, REALM's retrieval utility (mean +- SE), its
# MLM accuracy vs the same reader given only the null document, and the
# fact recall of held-out queries at the ICT start and every 100 steps.
# Usage: bash launch/realm_bed.sh WORKDIR [RUN_NAME [realm-pretrain flags]]
#   e.g. bash launch/realm_bed.sh /tmp/bed frozen --config.freeze_retriever=true
# Needs ./.venv (launch/install.sh; launch/local_smoke.sh does both). A
# rerun resumes every stage; SEED (default 0) seeds all of them (the world
# too); DOCS (default 500) is the number of synthetic articles.
set -euo pipefail
cd "$(dirname "$0")/.."
W="$(realpath -m "$1")"; RUN="${2:-realm}"; shift $(( $# < 2 ? $# : 2 ))
SEED="${SEED:-0}"; DOCS="${DOCS:-500}"
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
  --config.eval_blocks=128 --config.eval_every_steps=150 \
  --config.log_every_steps=150 --config.seed="$SEED" "${NO_DROPOUT[@]}"
.venv/bin/realm-ict --config=configs/ict.py:tiny --workdir="$W/ict" \
  --config.corpus_dir="$W/corpus" --config.model.pooling=mean \
  "${LENGTHS[@]}" --config.lengths.query_len=40 --config.num_train_steps=300 \
  --config.seed="$SEED" "${NO_DROPOUT[@]}"
REALM="$W/$RUN"
mkdir -p "$REALM"
# The builder embeds the corpus with each new REALM checkpoint (the first
# one is step 0, the ICT retriever) and exits after TRAINING_DONE. The
# index is refreshed in lockstep (index.refresh_every_steps): every 20
# steps (each checkpoint) the trainer waits for the index of its own
# checkpoint, so a run searches the same indices however busy the machine
# (an asynchronous run's staleness, and so its result, depends on the
# builder's speed); held-out evaluation also waits for its step's index.
.venv/bin/realm-index-builder --config=configs/index_builder.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$W/corpus" \
  --config.poll_seconds=0.2 \
  > "$REALM/index_builder.log" 2>&1 &
BUILDER=$!
trap 'kill $BUILDER 2>/dev/null || true' EXIT
.venv/bin/realm-pretrain --config=configs/pretrain.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$W/corpus" \
  --config.init_from="$W/ict" --config.init.reader_from="$W/mlm" \
  --config.model.pooling=mean "${LENGTHS[@]}" --config.lengths.query_len=40 \
  --config.lengths.joint_len=72 --config.batch_size=16 \
  --config.num_train_steps=600 --config.eval_batches=64 \
  --config.index.refresh_every_steps=20 --config.index.poll_seconds=0.2 \
  --config.index.fresh_eval=true --config.eval_every_steps=100 \
  --config.seed="$SEED" "${NO_DROPOUT[@]}" "$@"
wait $BUILDER
trap - EXIT
.venv/bin/python launch/bed_summary.py "$W" "$RUN"
