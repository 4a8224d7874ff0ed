r"""Zero-shot recall@k of the gold paragraph on SQuAD-open, by retriever.

  .venv/bin/python bench/squad_recall.py --corpus=W/ict/corpus \
      --run=ict=W/ict --run=realm=W/realm \
      --questions=../shared/data/squad_open/dev.jsonl

Rows: BM25 (bm25s) over the same blocks, an untrained (freshly initialised)
retriever of the runs' size, and each --run (the retriever of its latest
checkpoint). Exact inner-product search over every block.
"""
import argparse
import json
import os
import pathlib
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import ml_collections  # pylint: disable=g-import-not-at-top

from realm_jax import corpus as corpus_lib
import retrieval_eval  # bench/retrieval_eval.py
from realm_jax.inputs import questions as questions_lib

KS = (1, 5, 20)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--corpus', required=True)
  parser.add_argument('--questions', required=True)
  parser.add_argument('--run', action='append', default=[],
                      help='NAME=WORKDIR of a trainer run')
  args = parser.parse_args()
  corpus = corpus_lib.Corpus(args.corpus)
  questions = questions_lib.load(args.questions)
  texts = [q['question'] for q in questions]
  runs = dict(r.split('=', 1) for r in args.run)

  rows = []
  start = time.time()
  rows.append(('bm25', retrieval_eval.recall_at_k(
      retrieval_eval.bm25_retrieve(corpus, texts, max(KS)), corpus,
      questions, KS), time.time() - start))
  if runs:
    first = pathlib.Path(next(iter(runs.values())))
    model_config = ml_collections.ConfigDict(
        json.loads((first / 'config.json').read_text())['model'])
    candidates = [('untrained', retrieval_eval.load_retriever(
        None, model_config))]
    candidates += [(name, retrieval_eval.load_retriever(path))
                   for name, path in runs.items()]
    for name, retriever in candidates:
      start = time.time()
      ids = retrieval_eval.dense_retrieve(retriever, corpus, texts,
                                          max(KS))
      rows.append((name, retrieval_eval.recall_at_k(ids, corpus, questions,
                                                    KS), time.time() - start))

  print(f'\n{len(questions)} questions from {args.questions}; '
        f'{len(corpus)} blocks from {args.corpus}')
  print(f'{"retriever":12s}' + ''.join(f'{f"recall@{k}":>11s}' for k in KS)
        + f'{"seconds":>9s}')
  for name, recall, seconds in rows:
    print(f'{name:12s}' + ''.join(f'{recall[f"recall@{k}"]:11.3f}'
                                  for k in KS) + f'{seconds:9.1f}')


if __name__ == '__main__':
  main()
