"""Open-QA losses and span decoding against numpy written from the formulas."""
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import job_config
from realm_jax import config_lib
from realm_jax.jobs import finetune
from realm_jax import models
from realm_jax import optim
from realm_jax import trainer
from realm_jax.objectives import openqa as openqa_objective

B, N, K, L, W, Q = 2, 6, 3, 12, 3, 7


def _model_config():
  config = config_lib.model_config('tiny', vocab_size=40)
  config.update(dict(hidden_size=16, num_layers=1, num_heads=2,
                     intermediate_size=32, projection_size=8,
                     span_hidden_size=8, max_span_width=W,
                     max_position_embeddings=32, share_towers=False))
  return config


def _batch(rng):
  block_mask = np.zeros((B, K, L), np.int32)
  block_mask[..., 4:10] = 1
  block_mask[1, 2, 8:] = 0  # a short block
  gold = np.zeros((B, K, L, W), bool)
  gold[0, 1, 5, 1] = gold[0, 2, 4, 0] = True  # question 1 has none
  return dict(
      query_ids=rng.integers(5, 40, (B, Q)).astype(np.int32),
      query_mask=np.ones((B, Q), np.int32),
      retrieved_vectors=rng.normal(size=(B, N, 8)).astype(np.float32),
      reader_ids=rng.integers(5, 40, (B, K, L)).astype(np.int32),
      reader_segments=(np.arange(L) >= 4).astype(np.int32)
      * np.ones((B, K, 1), np.int32),
      reader_mask=np.ones((B, K, L), np.int32),
      block_mask=block_mask,
      has_answer=np.array([[0, 1, 0, 0, 1, 0], [0] * N], bool),
      gold_spans=gold)


def _logsumexp(x, axis=-1):
  top = x.max(axis, keepdims=True)
  return (top + np.log(np.exp(x - top).sum(axis, keepdims=True))).squeeze(
      axis)


def _reference(model, batch):
  """Retrieval and joint logits, and ORQA's loss, step by step in numpy."""
  q = np.asarray(model.retriever.embed_queries(
      batch['query_ids'], np.zeros_like(batch['query_ids']),
      batch['query_mask']), np.float64)
  retrieval = np.stack([batch['retrieved_vectors'][b] @ q[b]
                        for b in range(B)])
  joint = np.zeros((B, K, L, W))
  for b in range(B):
    sequence = model.reader(batch['reader_ids'][b], batch['reader_segments'][b],
                            batch['reader_mask'][b])
    spans = np.asarray(model.reader.span_logits(sequence,
                                                batch['block_mask'][b]))
    joint[b] = spans + retrieval[b, :K, None, None]
  losses = []
  for b in range(B):
    correct = batch['has_answer'][b]
    retriever_loss = (_logsumexp(retrieval[b]) - _logsumexp(
        retrieval[b][correct]) if correct.any() else 0.0)
    gold = batch['gold_spans'][b].reshape(-1)
    flat = joint[b].reshape(-1)
    reader_loss = (_logsumexp(flat) - _logsumexp(flat[gold])
                   if gold.any() else 0.0)
    losses.append(retriever_loss + reader_loss)
  return retrieval, joint, np.mean(losses)


@pytest.fixture(scope='module')
def model_and_batch():
  model = models.REALM(_model_config(), rngs=nnx.Rngs(0))
  return model, _batch(np.random.default_rng(0))


def test_marginal_log_loss_matches_formula():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 9)) * 3
  correct = rng.random((4, 9)) < 0.3
  correct[2] = False
  correct[3] = True
  expected = [(_logsumexp(l) - _logsumexp(l[c])) if c.any() else 0.0
              for l, c in zip(logits, correct)]
  got = openqa_objective.marginal_log_loss(logits, correct)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert got[3] == pytest.approx(0.0, abs=1e-5)  # everything correct
  grads = jax.grad(lambda x: openqa_objective.marginal_log_loss(
      x, correct).sum())(logits)
  assert np.isfinite(grads).all() and not grads[2].any()


def test_openqa_loss_matches_numpy(model_and_batch):
  model, batch = model_and_batch
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  retrieval, joint, expected = _reference(model, batch)
  got_retrieval, got_joint = openqa_objective.scores(model, batch)
  np.testing.assert_allclose(got_retrieval, retrieval, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_joint, joint, rtol=1e-4, atol=1e-3)
  loss, metrics = openqa_objective.loss(params, batch, None, graphdef)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert metrics['reader_oracle'] == 0.5  # question 1 has no gold span
  assert metrics['top_k_match'] == 0.5 and metrics['top_n_match'] == 0.5


def test_best_spans_decode_the_argmax(model_and_batch):
  model, batch = model_and_batch
  _, joint, _ = _reference(model, batch)
  best = openqa_objective.best_spans(model, batch)
  for b in range(B):
    block, start, width = np.unravel_index(joint[b].argmax(), joint[b].shape)
    assert (best['block'][b], best['start'][b], best['end'][b]) == (
        block, start, start + width)
    assert best['score'][b] == pytest.approx(joint[b].max(), rel=1e-4)
    # Spans never leave the block.
    assert batch['block_mask'][b, block, start:start + width + 1].all()


def _finetune_config(closed_book=False):
  config = job_config('finetune')
  config.closed_book = closed_book
  config.num_train_steps = 10
  return config


def test_only_the_question_tower_and_reader_learn(model_and_batch):
  model, batch = model_and_batch
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  grads = jax.jit(jax.grad(lambda p: openqa_objective.loss(
      p, batch, jax.random.PRNGKey(0), graphdef)[0]))(params)
  norm = lambda tree: float(sum(np.abs(x).sum() for x in jax.tree.leaves(tree)))
  assert norm(grads['retriever']['doc_tower']) == 0.0
  assert norm(grads['retriever']['query_tower']) > 0.0
  assert norm(grads['reader']['span_head']) > 0.0

  # Three steps past warmup's zero first rate, weight decay on: the frozen
  # document tower neither changes nor has optimizer moments.
  new, opt_state = _train_steps(params, batch, graphdef, openqa_objective.loss,
                                closed_book=False)
  assert jax.tree.all(jax.tree.map(np.array_equal, new['retriever']['doc_tower'],
                                   params['retriever']['doc_tower']))
  assert not np.array_equal(
      new['retriever']['query_tower']['encoder']['pooler']['kernel'],
      params['retriever']['query_tower']['encoder']['pooler']['kernel'])
  moments = optax.tree_utils.tree_get(opt_state, 'mu')
  assert 'doc_tower' not in moments['retriever']
  assert 'query_tower' in moments['retriever'] and 'reader' in moments
  assert sum(x.size for x in jax.tree.leaves(opt_state)) < 2 * sum(
      x.size for x in jax.tree.leaves(params))


def _train_steps(params, batch, graphdef, loss_fn, closed_book, steps=3):
  """`steps` trainer steps of realm-finetune's optimizer and frozen set."""
  config = _finetune_config(closed_book=closed_book)
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  frozen = lambda path: finetune.frozen(path, closed_book)
  state = dict(step=jnp.int32(0), params=params,
               opt_state=tx.init(trainer.partition(params, frozen)[0]))
  step = jax.jit(functools.partial(trainer.train_step, graphdef=graphdef,
                                   tx=tx, loss_fn=loss_fn, frozen=frozen))
  for _ in range(steps):
    state, _ = step(state, batch, jax.random.PRNGKey(0))
  return state['params'], state['opt_state']


def test_closed_book_loss_matches_numpy(model_and_batch):
  model, _ = model_and_batch
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  rng = np.random.default_rng(2)
  slots = 4
  batch = dict(
      reader_ids=rng.integers(5, 40, (B, L)).astype(np.int32),
      reader_segments=np.zeros((B, L), np.int32),
      reader_mask=np.ones((B, L), np.int32),
      answer_positions=np.tile(np.arange(6, 6 + slots), (B, 1)).astype(
          np.int32),
      answer_targets=rng.integers(0, 40, (B, slots)).astype(np.int32),
      answer_weights=np.array([[1, 1, 0, 0], [1, 1, 1, 0]], np.float32))
  sequence = model.reader(batch['reader_ids'], batch['reader_segments'],
                          batch['reader_mask'])
  logits = np.asarray(model.reader.mlm_logits(
      sequence, batch['answer_positions']), np.float64)
  log_probs = logits - _logsumexp(logits)[..., None]
  picked = np.take_along_axis(log_probs, batch['answer_targets'][..., None],
                              -1)[..., 0]
  expected = -(picked * batch['answer_weights']).sum() / 5
  loss, _ = openqa_objective.closed_book_loss(params, batch, None, graphdef)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)

  grads = jax.jit(jax.grad(lambda p: openqa_objective.closed_book_loss(
      p, batch, None, graphdef)[0]))(params)
  assert not any(np.any(g) for g in jax.tree.leaves(grads['retriever']))
  new, _ = _train_steps(params, batch, graphdef,
                        openqa_objective.closed_book_loss, closed_book=True)
  assert jax.tree.all(jax.tree.map(np.array_equal, new['retriever'],
                                   params['retriever']))
  assert not np.array_equal(new['reader']['mlm_head']['output_bias'],
                            params['reader']['mlm_head']['output_bias'])
