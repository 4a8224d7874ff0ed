"""`realm-finetune`: Open-QA fine-tuning, ORQA's recipe on REALM's model.

  realm-finetune --config=configs/finetune.py:tiny --workdir=WORKDIR \
    --config.init_from=REALM_OR_ICT_WORKDIR --config.train_data=train.jsonl

Starts from a REALM (or ICT) run's latest checkpoint: its document tower is
frozen (no gradient, no optimizer state) and embeds the corpus once into
WORKDIR/index (the builder's code, run in-process); the question tower (a
copy of the retriever when REALM shared them) and the reader are trained.
Each step, per question: retrieve the top N blocks from the fixed index
(or BM25's, or both fused: `retrieval`, retrieval/lexical.py),
gather their embeddings, mark the ones whose text holds an answer; read the
top K; loss = the retriever's and the reader's marginal log-likelihoods
(objectives/openqa.py). A batch holds many questions (ORQA and the HF port
read one). With `closed_book`, the reader alone learns to fill answer
slots: the no-retrieval baseline.

Checkpoints, resume and TensorBoard work as in the other trainers; with
`eval_data`, the last step is evaluated (prediction.py) and EM and
recall@k are logged.
"""
import functools
import time

from absl import logging
from etils import epath
from flax import nnx
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from realm_jax import answers
from realm_jax import checkpointing
from realm_jax import cli
from realm_jax import config_lib
from realm_jax import models
from realm_jax import prediction
from realm_jax import sharding
from realm_jax import trainer as trainer_lib
from realm_jax.inputs import blocks as blocks_lib
from realm_jax.inputs import openqa as openqa_input
from realm_jax.inputs import questions as questions_lib
from realm_jax.objectives import openqa as openqa_objective
from realm_jax.retrieval import builder
from realm_jax.retrieval import embedding
from realm_jax.retrieval import index_store
from realm_jax.retrieval import lexical
from realm_jax.retrieval import workspace


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  trainer_lib.validate(config, num_devices)
  config_lib.check(config.train_data != '', 'train_data',
                   'name the training questions (a .jsonl path or '
                   'tfds:NAME:SPLIT)')
  config_lib.check(
      1 <= config.reader_beam_size <= config.retriever_beam_size,
      'reader_beam_size', f'must be in [1, retriever_beam_size '
      f'{config.retriever_beam_size}]')
  config_lib.check(config.retrieval in lexical.RETRIEVALS, 'retrieval',
                   f'{config.retrieval!r}: one of '
                   f'{", ".join(lexical.RETRIEVALS)}')
  config_lib.check(config.lengths.reader_len
                   <= config.model.max_position_embeddings,
                   'lengths.reader_len', 'exceeds max_position_embeddings')


def frozen(path: tuple, closed_book: bool) -> bool:
  """The document tower never trains; closed book uses no retriever."""
  return tuple(path[:2]) == ('retriever', 'doc_tower') or (
      closed_book and path[0] == 'retriever')


def params_from_run(init_from: str, params: dict) -> dict:
  """The params of `init_from`'s latest checkpoint, in the layout of a REALM
  with separate towers: its (document) tower -> doc_tower and query_tower,
  its reader if it has one (ICT runs have none)."""
  manager, step = checkpointing.latest(init_from, 'init_from')
  saved = manager.item_metadata(step)['state'].tree['params']
  abstract = checkpointing.abstract(params)
  tower = lambda name: checkpointing.restore_subtree(
      manager, step, ('params', 'retriever', name),
      abstract['retriever']['doc_tower'])
  retriever = dict(doc_tower=tower('doc_tower'), query_tower=tower(
      'query_tower' if 'query_tower' in saved['retriever'] else 'doc_tower'))
  reader = params['reader']
  if 'reader' in saved:
    reader = checkpointing.restore_subtree(manager, step, ('params', 'reader'),
                                           abstract['reader'])
  else:
    logging.info('%s has no reader (an ICT run): the reader starts fresh',
                 init_from)
  logging.info('Initialised from %s step %d', init_from, step)
  return dict(params, retriever=retriever, reader=reader)


def fixed_index(config, workdir: epath.Path, corpus_dir: str):
  """Embeds the corpus once with the (frozen) document tower of the latest
  checkpoint into WORKDIR/index, unless done or init_from's index can be
  taken (reuse_init_index); returns the loaded index."""
  store = index_store.IndexStore(workdir / 'index')
  missing = store.latest_step() is None
  reusable = (missing and config.reuse_init_index and
              _init_index(config.init_from, corpus_dir))
  if reusable and jax.process_index() == 0:
    theirs, version = reusable
    index, _ = theirs.load(version)
    store.publish(0, index, index.vectors(np.arange(
        min(16, index.num_vectors))), dict(copied_from=str(
            theirs.version_dir(version))))
    logging.info('Index: %s, init_from\'s (not embedded again)',
                 theirs.version_dir(version))
  elif missing and not reusable:
    builder_config = ml_collections.ConfigDict(config.index_builder.to_dict())
    builder_config.corpus_dir = corpus_dir
    builder.Builder(builder_config, workdir).run(once=True)
  multihost_utils.sync_global_devices('fine-tuning index')
  return prediction.load_index(workdir / 'index')


def _init_index(init_from: str, corpus_dir: str
                ) -> tuple[index_store.IndexStore, str] | None:
  """(init_from's index store, version) when its published index holds the
  embeddings of init_from's latest checkpoint (the document tower this run
  froze) over `corpus_dir`; else None."""
  if not init_from:
    return None
  init = workspace.read_config(init_from)
  init_corpus = init.get('corpus_dir') or str(
      epath.Path(init_from) / 'corpus')
  theirs = index_store.IndexStore(epath.Path(init_from) / 'index')
  pointer = theirs.pointer()
  _, step = checkpointing.latest(init_from, 'init_from')
  if (pointer is None or pointer['checkpoint_step'] != step or
      epath.Path(init_corpus).resolve() != epath.Path(corpus_dir).resolve()):
    return None
  return theirs, pointer['version']


class QuestionBatches:
  """Questions of step s: a fixed permutation per epoch, this host's rows."""

  def __init__(self, examples, global_batch_size: int, seed: int):
    self.examples = examples
    self.per_host = global_batch_size // jax.process_count()
    self.first = jax.process_index() * self.per_host
    self.global_batch_size = global_batch_size
    self.seed = seed

  @functools.lru_cache(maxsize=2)
  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(
        len(self.examples))

  def batch(self, step: int) -> list[dict]:
    positions = step * self.global_batch_size + self.first + np.arange(
        self.per_host)
    epochs, within = np.divmod(positions, len(self.examples))
    return [self.examples[self._order(e)[i]] for e, i in zip(epochs, within)]


def embed_questions(examples, params, embed_queries, index, corpus, config,
                    batch_sharding):
  """Question inputs, their embeddings and the dense search of them, all
  queued on the device (async). The search is None when the index searches
  on the host (ScaNN) or the candidates are BM25's alone."""
  query = openqa_input.question_inputs(
      corpus.tokenizer, [e['question'] for e in examples],
      config.lengths.query_len)
  vectors = embed_queries(params, sharding.global_batch(query, batch_sharding))
  search = None
  if config.retrieval != 'bm25':
    first = jax.process_index() * len(examples)  # replicated: local copy
    search = index.dispatch_search(
        vectors.addressable_data(0)[first:first + len(examples)],
        config.retriever_beam_size)
  return query, vectors, search


def openqa_batch(examples, query, vectors, dense_ids, index, corpus, config,
                 bm25=None) -> dict[str, np.ndarray]:
  """Retrieves for this host's questions and featurizes them (host side).

  dense_ids: the dense search's [Q, retriever_beam_size] ids if it was
  dispatched with the embedding (embed_questions), else None.
  """
  def dense_search(k):
    if dense_ids is not None:
      return dense_ids
    first = jax.process_index() * len(examples)
    return index.search(np.asarray(vectors)[first:first + len(examples)],
                        k)[0]

  ids = lexical.candidates(
      config.retrieval, [e['question'] for e in examples], dense_search,
      bm25, config.retriever_beam_size)
  ids = np.maximum(ids, 0)  # an approximate index may leave a slot empty
  texts = [[r['text'] for r in corpus.records(row)] for row in ids]
  top = ids[:, :config.reader_beam_size]
  reader = blocks_lib.reader_inputs(corpus, query['query_ids'],
                                    query['query_mask'], top,
                                    config.lengths.reader_len)
  gold = openqa_input.gold_span_mask(
      corpus, examples, top, texts, reader, config.model.max_span_width,
      config.regex_answers)
  has_answer = np.array([[answers.has_answer(t, e['answer'],
                                             config.regex_answers)
                          for t in row] for e, row in zip(examples, texts)])
  return dict(query, retrieved_vectors=index.vectors(ids),
              has_answer=has_answer, gold_spans=gold,
              **{k: reader[k] for k in blocks_lib.READER_KEYS})


def retrieve_ahead(questions, embed, featurize, num_steps: int,
                   checkpoint_every: int) -> trainer_lib.OneStepAhead:
  """The fine-tuning host_batch: retrieval for step s + 1 overlapped with
  the device's step s (trainer.OneStepAhead).

  The query tower that retrieves step s's candidates is the one entering
  step s - 1, except at checkpointed steps (where a restarted run begins):
  there it is the tower entering step s. The gradient always flows through
  the current tower (objectives/openqa.py re-embeds the questions in the
  step).

  embed(examples, params) -> (query inputs, device vectors, search): search
  is None or a function that waits for the queued search's (ids, scores);
  featurize(examples, query inputs, vectors, dense ids or None) -> batch.
  """
  def queue(step, params):
    examples = questions.batch(step)
    return (examples, *embed(examples, params))

  def finish(step, queued):
    del step
    examples, query, vectors, search = queued
    started = time.perf_counter()  # device work, queued behind the last step
    jax.block_until_ready(vectors)
    dense_ids = search()[0] if search is not None else None
    waited = time.perf_counter() - started
    return (featurize(examples, query, vectors, dense_ids),
            {trainer_lib.DEVICE_WAIT: waited})

  return trainer_lib.OneStepAhead(
      queue, finish, num_steps,
      resumes=lambda step: step % checkpoint_every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Fine-tunes; returns the last logged metrics (and eval results)."""
  config = trainer_lib.checked_config(config, validate)
  workdir = epath.Path(workdir)
  corpus_dir = config.corpus_dir
  if config.init_from:
    init = workspace.check_init_run(config.model, config.init_from)
    corpus_dir = corpus_dir or init.get('corpus_dir') or str(
        epath.Path(config.init_from) / 'corpus')
  config.corpus_dir = corpus_dir or str(workdir / 'corpus')  # for readers
  corpus = trainer_lib.open_corpus(config, config.corpus_dir)
  examples = questions_lib.load(config.train_data, config.regex_answers,
                                config.tfds_data_dir)

  model_config = models.with_separate_towers(config.model)
  trainer = trainer_lib.Trainer(
      config, workdir, 'finetune',
      lambda: models.REALM(model_config, rngs=nnx.Rngs(config.seed)),
      frozen=lambda path: frozen(path, config.closed_book),
      model_config=model_config)
  if trainer.fresh_start:  # BERT (in Trainer) first, then the run's params
    if config.init_from:
      trainer.params = params_from_run(config.init_from, trainer.params)
    if config.init.reader_from:  # e.g. the paper's retriever/reader swaps
      workspace.check_init_run(config.model, config.init.reader_from,
                               workspace.READER_FIELDS)
      trainer.params = dict(trainer.params, reader=(
          checkpointing.restore_from_run(
              config.init.reader_from, 'init.reader_from',
              ('params', 'reader'),
              checkpointing.abstract(trainer.params)['reader'])))
    trainer.save(wait=True)  # step 0: the frozen tower the index is built with

  questions = QuestionBatches(examples, config.batch_size, config.seed)
  if config.closed_book:
    loss_fn = openqa_objective.closed_book_loss

    def host_batch(step, params):
      del params  # the reader alone reads the question
      batch = questions.batch(step)
      return openqa_input.closed_book_inputs(
          corpus.tokenizer, [e['question'] for e in batch],
          config.lengths.reader_len, config.answer_slots,
          None if config.regex_answers else [e['answer'] for e in batch]), {}
  else:
    loss_fn = openqa_objective.loss
    index = fixed_index(config, workdir, config.corpus_dir)
    embed_queries = embedding.jit_embed_queries(
        trainer.graphdef, trainer.shardings['params'],
        trainer.batch_sharding, trainer.mesh)
    host_batch = retrieve_ahead(
        questions,
        functools.partial(embed_questions, embed_queries=embed_queries,
                          index=index, corpus=corpus, config=config,
                          batch_sharding=trainer.batch_sharding),
        functools.partial(openqa_batch, index=index, corpus=corpus,
                          config=config, bm25=lexical.Bm25(corpus)
                          if config.retrieval != 'dense' else None),
        config.num_train_steps, config.checkpoint.every_steps)
  last = trainer.train(loss_fn, host_batch)

  if config.eval_data:
    results = prediction.evaluate_workdir(
        workdir, config.eval_data, regex_answers=config.regex_answers,
        output=workdir / 'eval' / 'predictions.jsonl',
        batch_size=config.eval_batch_size, tfds_data_dir=config.tfds_data_dir)
    results = {f'eval/{k}': v for k, v in results.items()}
    trainer.writer.write(config.num_train_steps, results)
    last |= results
  trainer.close()
  return last


def run():
  cli.run_job(train_and_evaluate)


if __name__ == '__main__':
  run()
