"""`realm-pretrain`: REALM pre-training beside the asynchronous index builder.

  realm-pretrain --config=configs/pretrain.py:tiny --workdir=WORKDIR

Each step: embed the masked queries -> search the current index (on the
host, through the hot-swapped IndexHandle) -> drop the block the query came
from (trivial retrieval) -> prepend the null document -> K candidates ->
in the jitted step, re-embed the candidates with the current parameters (the
stale index only chooses them; the gradient reaches the retriever),
p(z|x) = softmax of the K scores, and the reader's masked-token marginal
likelihood sum_z p(z|x) p(y|z,x), per masked token (realm/model.py).

Starts from a BERT checkpoint (`config.init.bert_checkpoint`: every encoder
and, when it has one, the MLM head) and/or an ICT run (`config.init_from`:
the retriever, replacing BERT's), saves step 0 so the index builder can
embed the corpus with it, and waits for that first index.
"""
import functools
import json

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

from realm_jax import bert_import
from realm_jax import checkpointing
from realm_jax import cli
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import index_handle
from realm_jax import metrics as metrics_lib
from realm_jax import models
from realm_jax import optim
from realm_jax import pretrain_input
from realm_jax import sharding
from realm_jax import train_lib

QUERY_KEYS = ('query_ids', 'query_mask')


def realm_loss(params, batch, dropout_key, graphdef):
  """REALM's marginal MLM loss and metrics; candidate 0 is the null doc."""
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  b, k, block_len = batch['candidate_ids'].shape
  joint_len = batch['joint_ids'].shape[-1]
  flat = lambda x, n: x.reshape(b * k, n)

  queries = model.retriever.embed_queries(
      batch['query_ids'], jnp.zeros_like(batch['query_ids']),
      batch['query_mask'], rngs=rngs)
  docs = model.retriever.embed_blocks(
      flat(batch['candidate_ids'], block_len),
      flat(batch['candidate_segments'], block_len),
      flat(batch['candidate_mask'], block_len), rngs=rngs).reshape(b, k, -1)
  scores = jnp.einsum('bd,bkd->bk', queries, docs,
                      preferred_element_type=jnp.float32)
  log_p_z = jax.nn.log_softmax(scores, axis=-1)  # [B, K]

  sequence = model.reader(flat(batch['joint_ids'], joint_len),
                          flat(batch['joint_segments'], joint_len),
                          flat(batch['joint_mask'], joint_len), rngs=rngs)
  positions = jnp.repeat(batch['mlm_positions'], k, axis=0)  # [B*K, M]
  logits = model.reader.mlm_logits(sequence, positions)  # [B*K, M, V]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = jnp.repeat(batch['mlm_targets'], k, axis=0)
  log_p_y_given_z = jnp.take_along_axis(
      log_probs, targets[..., None], axis=-1)[..., 0].reshape(b, k, -1)

  # Each masked token is marginalised over the candidates independently.
  marginal = jax.nn.logsumexp(log_p_z[:, :, None] + log_p_y_given_z, axis=1)
  weights = batch['mlm_weights']
  num_targets = jnp.maximum(weights.sum(), 1.0)
  loss = -(marginal * weights).sum() / num_targets

  # Mixture prediction for accuracy: argmax_y sum_z p(z|x) p(y|z,x).
  mixture = jax.nn.logsumexp(
      log_p_z[:, :, None, None] + log_probs.reshape(b, k, *log_probs.shape[1:]),
      axis=1)
  correct = jnp.argmax(mixture, axis=-1) == batch['mlm_targets']
  p_z = jnp.exp(log_p_z)
  metrics = dict(
      loss=loss,
      mlm_accuracy=(correct * weights).sum() / num_targets,
      # The paper's retrieval utility: how much the retrieved documents help
      # over the null document alone (App. D).
      retrieval_utility=((marginal - log_p_y_given_z[:, 0]) * weights).sum()
      / num_targets,
      p_null=p_z[:, 0].mean(),
      retrieval_entropy=-(p_z * log_p_z).sum(-1).mean())
  return loss, metrics


def train_step(state, batch, rng, *, graphdef, tx):
  dropout_key = jax.random.fold_in(rng, state['step'])
  grads, metrics = jax.grad(realm_loss, has_aux=True)(
      state['params'], batch, dropout_key, graphdef)
  state = train_lib.apply_gradients(state, grads, tx)
  # Norms read every gradient once more; two of them give the third.
  retriever, reader = (optax.tree.norm(grads[k]) for k in ('retriever',
                                                           'reader'))
  return state, metrics | dict(
      l2_grads_retriever=retriever, l2_grads_reader=reader,
      l2_grads=jnp.sqrt(retriever**2 + reader**2))


def null_document(tokenizer, block_len: int) -> dict[str, np.ndarray]:
  """Empty title and body: [CLS] [SEP] [SEP], scored by the same tower."""
  ids = np.zeros(block_len, np.int32)
  ids[:3] = tokenizer.cls_id, tokenizer.sep_id, tokenizer.sep_id
  segments = np.zeros(block_len, np.int32)
  segments[2] = 1
  mask = (np.arange(block_len) < 3).astype(np.int32)
  return dict(token_ids=ids, segment_ids=segments, input_mask=mask)


def choose_candidates(retrieved: np.ndarray, retrieved_uid64: np.ndarray,
                      source_uid64: np.ndarray, num_candidates: int
                      ) -> np.ndarray:
  """Block ids of the K - 1 best retrieved blocks that are not the query's
  own block (trivial retrieval, compared by uid as REALM does); the null
  document takes slot 0 (id -1)."""
  chosen = np.full((len(retrieved), num_candidates), -1, np.int64)
  for row, (ids, uids) in enumerate(zip(retrieved, retrieved_uid64)):
    kept = ids[(uids != source_uid64[row]) & (ids >= 0)][:num_candidates - 1]
    if len(kept) < num_candidates - 1:
      raise ValueError(f'search returned {len(kept)} usable blocks; need '
                       f'{num_candidates - 1} (is the corpus that small?)')
    chosen[row, 1:] = kept
  return chosen


def candidate_inputs(corpus: corpus_lib.Corpus, query_batch: dict,
                     chosen: np.ndarray, joint_len: int
                     ) -> dict[str, np.ndarray]:
  """Retriever inputs [B, K, L] and reader inputs [B, K, J] of candidates.

  The reader sees `[CLS] query [SEP] body [SEP]`: the title is dropped and
  the body truncated to fit joint_len (realm/featurization.py).
  """
  b, k = chosen.shape
  real = chosen >= 0
  blocks = corpus.blocks(chosen[real])
  null = null_document(corpus.tokenizer, corpus.block_len)
  cand = {key: np.broadcast_to(null[key], (b, k, corpus.block_len)).copy()
          for key in null}
  for key in cand:
    cand[key][real] = blocks[key]

  joint_ids = np.zeros((b, k, joint_len), np.int32)
  joint_segments = np.zeros_like(joint_ids)
  joint_mask = np.zeros_like(joint_ids)
  query_lens = query_batch['query_mask'].sum(1)
  title_lens = np.zeros((b, k), np.int32)
  body_lens = np.zeros((b, k), np.int32)
  title_lens[real], body_lens[real] = blocks['title_len'], blocks['body_len']
  sep = corpus.tokenizer.sep_id
  for i in range(b):
    query = query_batch['query_ids'][i, :query_lens[i]]
    for j in range(k):
      start = title_lens[i, j] + 2
      body = cand['token_ids'][i, j, start:start + body_lens[i, j]]
      body = body[:joint_len - len(query) - 1]
      row = np.concatenate([query, body, [sep]])
      joint_ids[i, j, :len(row)] = row
      joint_segments[i, j, len(query):len(row)] = 1
      joint_mask[i, j, :len(row)] = 1
  return dict(candidate_ids=cand['token_ids'],
              candidate_segments=cand['segment_ids'],
              candidate_mask=cand['input_mask'], joint_ids=joint_ids,
              joint_segments=joint_segments, joint_mask=joint_mask)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  config_lib.validate_model(config.model)
  config_lib.validate_lengths(config.lengths,
                              config.model.max_position_embeddings)
  mesh = sharding.mesh_shape(config.mesh, num_devices)
  config_lib.validate_batch(config.batch_size, 'batch_size', mesh['data'])
  config_lib.check(config.num_candidates >= 2, 'num_candidates',
                   'needs the null document and at least one block')
  config_lib.check(config.num_train_steps >= 1, 'num_train_steps',
                   'must be >= 1')
  config_lib.check(config.masking.kind in pretrain_input.MASKINGS,
                   'masking.kind', f'{config.masking.kind!r} is not one of '
                   f'{pretrain_input.MASKINGS}')
  config_lib.check(1 <= config.masking.max_masks < config.lengths.query_len,
                   'masking.max_masks', 'must be in [1, query_len)')
  checkpointing.validate(config.checkpoint)


# Model fields the retriever's parameters or outputs depend on: an init_from
# run must agree on them.
_RETRIEVER_FIELDS = (*bert_import.ARCHITECTURE_FIELDS, 'pooling',
                     'projection_size', 'share_towers')


def _init_retriever_from(state, init_from: str, mesh, axis_rules, config):
  """Copies the retriever of another run's (e.g. ICT's) latest checkpoint."""
  workdir = epath.Path(init_from)
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  step = manager.latest_step()
  config_lib.check(step is not None, 'init_from',
                   f'no checkpoint in {init_from}/checkpoints')
  theirs = json.loads((workdir / 'config.json').read_text())['model']
  theirs.setdefault('pooling', 'cls')  # runs from before the field existed
  for field in _RETRIEVER_FIELDS:
    config_lib.check(
        theirs.get(field) == config.model[field], f'model.{field}',
        f'{config.model[field]} != {theirs.get(field)} of the init_from run '
        f'{init_from}')
  _, abstract = sharding.abstract_model(
      lambda: models.REALM(config.model, rngs=nnx.Rngs(0)), mesh, axis_rules)
  retriever = checkpointing.restore_subtree(
      manager, step, ('params', 'retriever'), abstract['retriever'])
  logging.info('Retriever initialised from %s step %d', init_from, step)
  return dict(state, params=dict(state['params'], retriever=retriever))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Pre-trains REALM; returns the metrics of the last logged step."""
  config = bert_import.apply_init_config(config)
  validate(config, jax.device_count())
  workdir = epath.Path(workdir)
  corpus = corpus_lib.Corpus(config.corpus_dir or workdir / 'corpus')
  config_lib.check(config.model.vocab_size >= corpus.tokenizer.vocab_size,
                   'model.vocab_size', f'{config.model.vocab_size} < the '
                   f'corpus vocabulary {corpus.tokenizer.vocab_size}')
  if config.init.bert_checkpoint:
    bert_import.check_vocab(corpus.tokenizer, config.init.bert_checkpoint)
  config_lib.check(config.lengths.block_len == corpus.block_len,
                   'lengths.block_len', f'!= corpus block_len '
                   f'{corpus.block_len}')
  train_lib.start_job(workdir, config)

  mesh = sharding.make_mesh(config.mesh)
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       config.checkpoint)
  create = lambda: models.REALM(config.model, rngs=nnx.Rngs(config.seed))
  graphdef, state, shardings, position = train_lib.init_train_state(
      create, tx, mesh, config.axis_rules, manager)
  if position is None:  # a fresh start: BERT first, then ICT's retriever
    if config.init.bert_checkpoint:
      state = dict(state, params=bert_import.init_job_params(
          state['params'], shardings['params'], config))
    if config.init_from:
      state = _init_retriever_from(state, config.init_from, mesh,
                                   config.axis_rules, config)
    # Step 0 gives the index builder a document tower for the first index.
    checkpointing.save(manager, 0, state, dict(next_step=0), force=True)
  start_step = position['next_step'] if position else 0

  examples = workdir / 'examples'
  if config.masking.kind == 'salient' and not (
      examples / pretrain_input.MANIFEST).exists():
    if jax.process_index() == 0:  # one offline pass, as REALM did
      pretrain_input.prepare_examples(
          corpus, examples, annotator=config.masking.annotator,
          query_len=config.lengths.query_len,
          max_masks=config.masking.max_masks)
    multihost_utils.sync_global_devices('salient span examples')
  inputs = pretrain_input.PretrainInput(
      corpus, examples if examples.exists() else None,
      masking=config.masking.kind,
      global_batch_size=config.batch_size,
      query_len=config.lengths.query_len,
      max_masks=config.masking.max_masks, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      random_mask_rate=config.masking.random_mask_rate)
  batch_sharding = sharding.batch_sharding(mesh, config.axis_rules)
  embed_queries = jax.jit(
      lambda params, q: nnx.merge(graphdef, params).retriever.embed_queries(
          q['query_ids'], jnp.zeros_like(q['query_ids']), q['query_mask']),
      in_shardings=(shardings['params'], batch_sharding),
      out_shardings=sharding.replicated(mesh))
  step_fn = train_lib.jit_train_step(
      functools.partial(train_step, graphdef=graphdef, tx=tx), shardings,
      batch_sharding, mesh)
  rng = jax.random.PRNGKey(config.seed)

  handle = index_handle.IndexHandle(
      workdir / 'index', poll_seconds=config.index.poll_seconds).start()
  logging.info('Waiting for an index in %s (start realm-index-builder with '
               'this workdir)', workdir / 'index')
  handle.wait_until_ready(config.index.wait_seconds)
  writer = metrics_lib.MetricWriter(workdir / 'logs' / 'pretrain')
  first_row = jax.process_index() * (config.batch_size // jax.process_count())
  last, versions_used = {}, set()
  for step in tqdm.trange(start_step, config.num_train_steps,
                          desc='pretrain', initial=start_step,
                          total=config.num_train_steps,
                          disable=jax.process_index() > 0):
    handle.maybe_swap()  # between steps: never mid-step
    versions_used.add(handle.checkpoint_step)
    host = inputs.batch(step)
    query_batch = {k: host[k] for k in QUERY_KEYS}
    queries = np.asarray(embed_queries(
        state['params'], sharding.global_batch(query_batch, batch_sharding)))
    queries = queries[first_row:first_row + len(host['query_ids'])]
    retrieved, _ = handle.search(queries, config.num_candidates)
    retrieved_uid64 = corpus.uid64(np.maximum(retrieved, 0)).reshape(
        retrieved.shape)
    chosen = choose_candidates(retrieved, retrieved_uid64,
                               host['source_uid64'], config.num_candidates)
    batch = dict(query_batch, **candidate_inputs(
        corpus, query_batch, chosen, config.lengths.joint_len),
                 mlm_positions=host['mlm_positions'],
                 mlm_targets=host['mlm_targets'],
                 mlm_weights=host['mlm_weights'])
    state, metrics = step_fn(state, sharding.global_batch(
        batch, batch_sharding), rng)
    done = step + 1
    if done % config.log_every_steps == 0 or done == config.num_train_steps:
      source_found = (retrieved == host['source_block'][:, None]).any(1)
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      last.update(
          index_step=handle.checkpoint_step,
          index_staleness=step - handle.checkpoint_step,
          source_recall=float(multihost_utils.process_allgather(
              source_found).mean()),
          index_versions_used=len(versions_used))
      writer.write(done, last)
    checkpointing.save(manager, done, state, dict(next_step=done),
                       force=done == config.num_train_steps)
  manager.wait_until_finished()
  handle.close()
  train_lib.finish_job(workdir)
  writer.close()
  return last


def run():
  cli.run_job(train_and_evaluate)


if __name__ == '__main__':
  run()
