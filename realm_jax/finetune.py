"""`realm-finetune`: Open-QA fine-tuning, ORQA's recipe on REALM's model.

  realm-finetune --config=configs/finetune.py:tiny --workdir=WORKDIR \
    --config.init_from=REALM_OR_ICT_WORKDIR --config.train_data=train.jsonl

Starts from a REALM (or ICT) run's latest checkpoint: its document tower is
frozen and embeds the corpus once into WORKDIR/index (the builder's code,
run in-process); the question tower (a copy of the retriever when REALM
shared them) and the reader are trained. Each step, per question: retrieve
the top N blocks from the fixed index, gather their embeddings, mark the
ones whose text holds an answer; read the top K; loss = the retriever's and
the reader's marginal log-likelihoods (openqa_model.py). A batch holds many
questions (ORQA and the HF port read one). With `closed_book`, the reader
alone learns to fill answer slots: the no-retrieval baseline.

Checkpoints, resume and TensorBoard work as in the other trainers; with
`eval_data`, the last step is evaluated (realm-evaluate's code) and EM and
recall@k are logged.
"""
import functools

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax
import tqdm

from realm_jax import answers
from realm_jax import bert_import
from realm_jax import checkpointing
from realm_jax import cli
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import evaluate
from realm_jax import index_store
from realm_jax import metrics as metrics_lib
from realm_jax import models
from realm_jax import openqa_data
from realm_jax import openqa_input
from realm_jax import openqa_model
from realm_jax import optim
from realm_jax import sharding
from realm_jax import train_lib
from index_builder import main as index_builder

# Architecture fields a fine-tune must share with the run it starts from.
_NOT_ARCHITECTURE = ('share_towers', 'dropout_rate', 'attention_dropout_rate',
                     'dtype')


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  config_lib.validate_model(config.model)
  mesh = sharding.mesh_shape(config.mesh, num_devices)
  config_lib.validate_batch(config.batch_size, 'batch_size', mesh['data'])
  config_lib.check(config.train_data != '', 'train_data',
                   'name the training questions (a .jsonl path or '
                   'tfds:NAME:SPLIT)')
  config_lib.check(
      1 <= config.reader_beam_size <= config.retriever_beam_size,
      'reader_beam_size', f'must be in [1, retriever_beam_size '
      f'{config.retriever_beam_size}]')
  config_lib.check(config.lengths.reader_len
                   <= config.model.max_position_embeddings,
                   'lengths.reader_len', 'exceeds max_position_embeddings')
  config_lib.check(config.num_train_steps >= 1, 'num_train_steps',
                   'must be >= 1')
  checkpointing.validate(config.checkpoint)


def check_architecture(model: ml_collections.ConfigDict,
                       init: ml_collections.ConfigDict, init_from) -> None:
  for field, value in init.items():
    if field not in _NOT_ARCHITECTURE and field in model:
      config_lib.check(model[field] == value, f'model.{field}',
                       f'{model[field]!r} != {value!r} of the run in '
                       f'{init_from}')


def default_corpus_dir(config) -> str:
  """config.corpus_dir, else the corpus of the run fine-tuning starts from."""
  if config.corpus_dir or not config.init_from:
    return config.corpus_dir
  init = evaluate.read_workdir_config(config.init_from)
  return init.get('corpus_dir') or str(epath.Path(config.init_from) / 'corpus')


def frozen(path, closed_book: bool) -> bool:
  """The document tower never trains; closed book uses no retriever."""
  keys = tuple(getattr(p, 'key', p) for p in path)
  return keys[:2] == ('retriever', 'doc_tower') or (
      closed_book and keys[0] == 'retriever')


def make_optimizer(config) -> optax.GradientTransformation:
  """BERT's AdamW whose final updates of frozen parameters are zero.

  Frozen parameters get zero gradients (the loss does not read them), so
  their moments stay zero; the last step also cancels weight decay on them.
  (optax.multi_transform would skip their moments, but its masked states
  do not map onto parameter shardings.)
  """
  def zero_frozen(updates, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: jnp.zeros_like(u) if frozen(path, config.closed_book)
        else u, updates)
  return optax.chain(
      optim.make_optimizer(config.optimizer, config.num_train_steps),
      optax.stateless(zero_frozen))


def init_from_run(state, config, shardings) -> dict:
  """The params of `config.init_from`'s latest checkpoint, in the layout of
  a REALM with separate towers: its (document) tower -> doc_tower and
  query_tower, its reader if it has one (ICT runs have none)."""
  init_from = epath.Path(config.init_from)
  manager = checkpointing.make_manager(init_from / 'checkpoints',
                                       read_only=True)
  step = manager.latest_step()
  config_lib.check(step is not None, 'init_from',
                   f'no checkpoint in {init_from}/checkpoints')
  saved = manager.item_metadata(step)['state'].tree['params']
  params = state['params']
  abstract = lambda tree: checkpointing.abstract(tree)
  tower = lambda name: checkpointing.restore_subtree(
      manager, step, ('params', 'retriever', name),
      abstract(params['retriever']['doc_tower']))
  retriever = dict(doc_tower=tower('doc_tower'), query_tower=tower(
      'query_tower' if 'query_tower' in saved['retriever'] else 'doc_tower'))
  reader = params['reader']
  if 'reader' in saved:
    reader = checkpointing.restore_subtree(manager, step, ('params', 'reader'),
                                           abstract(reader))
  else:
    logging.info('%s has no reader (an ICT run): the reader starts fresh',
                 init_from)
  logging.info('Initialised from %s step %d', init_from, step)
  params = jax.device_put(dict(params, retriever=retriever, reader=reader),
                          shardings['params'])
  return dict(state, params=params)


def build_fixed_index(config, workdir: epath.Path, corpus_dir: str):
  """Embeds the corpus once with the (frozen) document tower of the latest
  checkpoint into WORKDIR/index, unless done; returns the loaded index."""
  store = index_store.IndexStore(workdir / 'index')
  if store.latest_step() is None:
    builder_config = ml_collections.ConfigDict(config.index_builder.to_dict())
    builder_config.corpus_dir = corpus_dir
    index_builder.Builder(builder_config, workdir).run(once=True)
  multihost_utils.sync_global_devices('fine-tuning index')
  store = index_store.IndexStore(workdir / 'index')
  index, _ = store.load(store.pointer()['version'],
                        devices=jax.local_devices())
  return index


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


def train_step(state, batch, rng, *, graphdef, tx, loss_fn):
  dropout_key = jax.random.fold_in(rng, state['step'])
  grads, metrics = jax.grad(loss_fn, has_aux=True)(
      state['params'], batch, dropout_key, graphdef)
  state = train_lib.apply_gradients(state, grads, tx)
  return state, metrics | dict(l2_grads=optax.tree.norm(grads))


def jit_embed_queries(graphdef, param_shardings, batch_sharding, mesh):
  """Question vectors of the global batch, replicated to every host."""
  return jax.jit(
      lambda params, q: nnx.merge(graphdef, params).retriever.embed_queries(
          q['query_ids'], jnp.zeros_like(q['query_ids']), q['query_mask']),
      in_shardings=(param_shardings, batch_sharding),
      out_shardings=sharding.replicated(mesh))


def openqa_batch(examples, params, embed_queries, index, corpus, config,
                 batch_sharding) -> dict[str, np.ndarray]:
  """Retrieves for this host's questions and featurizes them (host side)."""
  query = openqa_input.question_inputs(
      corpus.tokenizer, [e['question'] for e in examples],
      config.lengths.query_len)
  vectors = np.asarray(embed_queries(
      params, sharding.global_batch(query, batch_sharding)))
  first = jax.process_index() * len(examples)
  ids, _ = index.search(vectors[first:first + len(examples)],
                        config.retriever_beam_size)
  ids = np.maximum(ids, 0)  # an approximate index may leave a slot empty
  texts = [[r['text'] for r in corpus.records(row)] for row in ids]
  top = ids[:, :config.reader_beam_size]
  reader = openqa_input.reader_inputs(corpus, query['query_ids'], top,
                                      config.lengths.reader_len)
  gold = openqa_input.gold_span_mask(
      corpus, examples, top, texts, reader, config.model.max_span_width,
      config.regex_answers)
  has_answer = np.array([[answers.has_answer(t, e['answer'],
                                             config.regex_answers)
                          for t in row] for e, row in zip(examples, texts)])
  return dict(query, retrieved_vectors=index.vectors(ids),
              has_answer=has_answer, gold_spans=gold,
              **{k: reader[k] for k in openqa_input.READER_KEYS})


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Fine-tunes; returns the last logged metrics (and eval results)."""
  config = bert_import.apply_init_config(config)
  validate(config, jax.device_count())
  if config.init_from:
    check_architecture(config.model, evaluate.read_workdir_config(
        config.init_from).model, config.init_from)
  workdir = epath.Path(workdir)
  corpus_dir = default_corpus_dir(config) or str(workdir / 'corpus')
  corpus = corpus_lib.Corpus(corpus_dir)
  config_lib.check(config.model.vocab_size >= corpus.tokenizer.vocab_size,
                   'model.vocab_size', f'{config.model.vocab_size} < the '
                   f'corpus vocabulary {corpus.tokenizer.vocab_size}')
  if config.init.bert_checkpoint:
    bert_import.check_vocab(corpus.tokenizer, config.init.bert_checkpoint)
  examples = openqa_data.load(config.train_data, config.regex_answers,
                              config.tfds_data_dir)
  config.corpus_dir = corpus_dir  # realm-evaluate and realm-answer read it
  train_lib.start_job(workdir, config)

  mesh = sharding.make_mesh(config.mesh)
  tx = make_optimizer(config)
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       config.checkpoint)
  model_config = evaluate.finetune_model_config(config.model)
  graphdef, state, shardings, position = train_lib.init_train_state(
      lambda: models.REALM(model_config, rngs=nnx.Rngs(config.seed)),
      tx, mesh, config.axis_rules, manager)
  if position is None:  # a fresh start: BERT first, then the run's params
    if config.init.bert_checkpoint:
      state = dict(state, params=bert_import.init_job_params(
          state['params'], shardings['params'], ml_collections.ConfigDict(
              dict(model=model_config, init=config.init))))
    if config.init_from:
      state = init_from_run(state, config, shardings)
    # Step 0 holds the frozen document tower the index is built with.
    checkpointing.save(manager, 0, state, dict(next_step=0), force=True)
    manager.wait_until_finished()
  start_step = position['next_step'] if position else 0

  batch_sharding = sharding.batch_sharding(mesh, config.axis_rules)
  if config.closed_book:
    loss_fn, index = openqa_model.closed_book_loss, None
  else:
    loss_fn = openqa_model.openqa_loss
    index = build_fixed_index(config, workdir, corpus_dir)
    embed_queries = jit_embed_queries(graphdef, shardings['params'],
                                      batch_sharding, mesh)
  step_fn = train_lib.jit_train_step(
      functools.partial(train_step, graphdef=graphdef, tx=tx,
                        loss_fn=loss_fn), shardings, batch_sharding, mesh)
  rng = jax.random.PRNGKey(config.seed)
  questions = QuestionBatches(examples, config.batch_size, config.seed)

  writer = metrics_lib.MetricWriter(workdir / 'logs' / 'finetune')
  last = {}
  for step in tqdm.trange(start_step, config.num_train_steps,
                          desc='finetune', initial=start_step,
                          total=config.num_train_steps,
                          disable=jax.process_index() > 0):
    host_examples = questions.batch(step)
    if config.closed_book:
      batch = openqa_input.closed_book_inputs(
          corpus.tokenizer, [e['question'] for e in host_examples],
          config.lengths.reader_len, config.answer_slots,
          None if config.regex_answers else
          [e['answer'] for e in host_examples])
    else:
      batch = openqa_batch(host_examples, state['params'], embed_queries,
                           index, corpus, config, batch_sharding)
    state, metrics = step_fn(state, sharding.global_batch(
        batch, batch_sharding), rng)
    done = step + 1
    if done % config.log_every_steps == 0 or done == config.num_train_steps:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      writer.write(done, last)
    checkpointing.save(manager, done, state, dict(next_step=done),
                       force=done == config.num_train_steps)
  manager.wait_until_finished()
  train_lib.finish_job(workdir)

  if config.eval_data:
    results = evaluate.evaluate_workdir(
        workdir, config.eval_data, regex_answers=config.regex_answers,
        output=workdir / 'eval' / 'predictions.jsonl',
        batch_size=config.eval_batch_size, tfds_data_dir=config.tfds_data_dir)
    writer.write(config.num_train_steps,
                 {f'eval/{k}': v for k, v in results.items()})
    last |= {f'eval/{k}': v for k, v in results.items()}
  writer.close()
  return last


def run():
  cli.run_job(train_and_evaluate)


if __name__ == '__main__':
  run()
