"""`realm-ict`: Inverse Cloze Task warm start of the retriever towers.

  realm-ict --config=configs/ict.py:tiny --workdir=WORKDIR

Reads the blocks prepared in WORKDIR/corpus (realm-prepare-corpus), trains
the query/document towers with in-batch negatives, writes orbax checkpoints
to WORKDIR/checkpoints (the index builder and realm-pretrain start from
them) and TensorBoard metrics to WORKDIR/logs. Killed, it resumes from the
latest checkpoint and the next unseen batch.

With `config.init.bert_checkpoint` (a Hugging Face BERT directory) the
towers start from that checkpoint (bert_import.init_from_bert) and take its
sizes; the corpus must be tokenized with its vocab.txt.
"""
import functools

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from realm_jax import bert_import
from realm_jax import checkpointing
from realm_jax import cli
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import ict_input
from realm_jax import metrics as metrics_lib
from realm_jax import models
from realm_jax import optim
from realm_jax import sharding
from realm_jax import train_lib

class RetrieverModel(nnx.Module):
  """The retriever alone, under the same names as in models.REALM."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.retriever = models.Retriever(config, rngs=rngs)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  config_lib.validate_model(config.model)
  config_lib.validate_lengths(config.lengths,
                              config.model.max_position_embeddings)
  mesh = sharding.mesh_shape(config.mesh, num_devices)
  config_lib.validate_batch(config.batch_size, 'batch_size', mesh['data'])
  config_lib.check(config.num_train_steps >= 1, 'num_train_steps',
                   'must be >= 1')
  config_lib.check(0.0 <= config.remove_sentence_rate <= 1.0,
                   'remove_sentence_rate', 'must be in [0, 1]')
  checkpointing.validate(config.checkpoint)


def validate_against_corpus(config, corpus: corpus_lib.Corpus) -> None:
  config_lib.check(config.lengths.block_len == corpus.block_len,
                   'lengths.block_len',
                   f'{config.lengths.block_len} != the corpus block length '
                   f'{corpus.block_len}')
  config_lib.check(config.model.vocab_size >= corpus.tokenizer.vocab_size,
                   'model.vocab_size',
                   f'{config.model.vocab_size} < the corpus tokenizer\'s '
                   f'{corpus.tokenizer.vocab_size} word pieces')
  if config.init.bert_checkpoint:
    bert_import.check_vocab(corpus.tokenizer, config.init.bert_checkpoint)


def ict_loss(params, batch, dropout_key, graphdef):
  """In-batch softmax: query i's positive is block i (ORQA ict_model.py).

  dropout_key None means no dropout (evaluation).
  """
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  queries = model.retriever.embed_queries(
      batch['query_ids'], jnp.zeros_like(batch['query_ids']),
      batch['query_mask'], rngs=rngs)
  blocks = model.retriever.embed_blocks(
      batch['block_ids'], batch['block_segments'], batch['block_mask'],
      rngs=rngs)
  # Over the global batch: under jit the matmul gathers across data shards.
  logits = jnp.einsum('qd,bd->qb', queries, blocks,
                      preferred_element_type=jnp.float32)
  labels = jnp.arange(logits.shape[0])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = (jnp.argmax(logits, axis=-1) == labels).mean()
  return loss, dict(loss=loss, accuracy=accuracy)


def train_step(state, batch, rng, *, graphdef, tx):
  dropout_key = jax.random.fold_in(rng, state['step'])
  grads, metrics = jax.grad(ict_loss, has_aux=True)(
      state['params'], batch, dropout_key, graphdef)
  state = train_lib.apply_gradients(state, grads, tx)
  return state, metrics | dict(l2_grads=optax.tree.norm(grads))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains ICT; returns the metrics of the last logged step."""
  config = bert_import.apply_init_config(config)
  validate(config, jax.device_count())
  workdir = epath.Path(workdir)
  corpus = corpus_lib.Corpus(config.corpus_dir or workdir / 'corpus')
  validate_against_corpus(config, corpus)
  train_lib.start_job(workdir, config)

  mesh = sharding.make_mesh(config.mesh)
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       config.checkpoint)
  graphdef, state, shardings, position = train_lib.init_train_state(
      lambda: RetrieverModel(config.model, rngs=nnx.Rngs(config.seed)),
      tx, mesh, config.axis_rules, manager)
  if position is None and config.init.bert_checkpoint:
    state = dict(state, params=bert_import.init_job_params(
        state['params'], shardings['params'], config))
  logging.info('Parameters:\n%s', sharding.describe(state['params']))
  start_step = position['next_step'] if position else 0

  inputs = ict_input.IctInput(
      corpus, global_batch_size=config.batch_size,
      query_len=config.lengths.query_len,
      remove_sentence_rate=config.remove_sentence_rate, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  batch_sharding = sharding.batch_sharding(mesh, config.axis_rules)
  step_fn = train_lib.jit_train_step(
      functools.partial(train_step, graphdef=graphdef, tx=tx),
      shardings, batch_sharding, mesh)
  rng = jax.random.PRNGKey(config.seed)

  writer = metrics_lib.MetricWriter(workdir / 'logs' / 'ict')
  last = {}
  for step in tqdm.trange(start_step, config.num_train_steps, desc='ict',
                          initial=start_step, total=config.num_train_steps,
                          disable=jax.process_index() > 0):
    batch = sharding.global_batch(inputs.batch(step), batch_sharding)
    state, metrics = step_fn(state, batch, rng)
    done = step + 1
    if done % config.log_every_steps == 0 or done == config.num_train_steps:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      writer.write(done, last)
    checkpointing.save(manager, done, state, dict(next_step=done),
                       force=done == config.num_train_steps)
  manager.wait_until_finished()
  train_lib.finish_job(workdir)
  writer.close()
  return last


def run():
  cli.run_job(train_and_evaluate)


if __name__ == '__main__':
  run()
