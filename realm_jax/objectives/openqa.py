"""ORQA's Open-QA objective (orqa/models/orqa_model.py), and closed-book QA.

Retrieval logit of block z: <Embed_input(x), Embed_doc(z)>, with the block
embeddings gathered from the fixed index, so only the question tower and
the reader learn. Joint logit of a span: the reader's span score plus its
block's retrieval logit. Losses are marginal log-likelihoods of the correct
blocks (retriever, over the top N) and of the gold spans (reader, over all
spans of the top K blocks), each zero when nothing is correct.
"""
from flax import nnx
import jax
import jax.numpy as jnp

# A finite "minus infinity": jnp.where keeps its gradients finite.
_EXCLUDED = -1e9


def marginal_log_loss(logits: jax.Array, correct: jax.Array) -> jax.Array:
  """[..., n] -> [...]: logsumexp(all) - logsumexp(correct); 0 if none."""
  log_numerator = jax.nn.logsumexp(jnp.where(correct, logits, _EXCLUDED), -1)
  loss = jax.nn.logsumexp(logits, -1) - log_numerator
  return jnp.where(correct.any(-1), loss, 0.0)


def scores(model, batch, rngs=None) -> tuple[jax.Array, jax.Array]:
  """(retrieval logits [B, N], joint span logits [B, K, L, W]).

  batch: query_ids/query_mask [B, Q]; retrieved_vectors [B, N, D]; reader_*
  and block_mask [B, K, L] for the top K <= N blocks.
  """
  queries = model.retriever.embed_queries(
      batch['query_ids'], jnp.zeros_like(batch['query_ids']),
      batch['query_mask'], rngs=rngs)
  retrieval = jnp.einsum('bd,bnd->bn', queries,
                         batch['retrieved_vectors'].astype(queries.dtype),
                         preferred_element_type=jnp.float32)
  b, k, length = batch['reader_ids'].shape
  flat = lambda x: x.reshape(b * k, length)
  sequence = model.reader(flat(batch['reader_ids']),
                          flat(batch['reader_segments']),
                          flat(batch['reader_mask']), rngs=rngs)
  spans = model.reader.span_logits(sequence, flat(batch['block_mask']))
  spans = spans.reshape(b, k, length, -1)
  return retrieval, spans + retrieval[:, :k, None, None]


def loss(params, batch, dropout_key, graphdef):
  """ORQA's loss, averaged over the questions of the batch, and metrics."""
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  retrieval, joint = scores(model, batch, rngs)
  b = joint.shape[0]
  has_answer, gold = batch['has_answer'], batch['gold_spans'].reshape(b, -1)
  retriever_loss = marginal_log_loss(retrieval, has_answer)
  reader_loss = marginal_log_loss(joint.reshape(b, -1), gold)
  total = (retriever_loss + reader_loss).mean()
  predicted = jnp.argmax(joint.reshape(b, -1), axis=-1)
  k = joint.shape[1]
  return total, dict(
      loss=total, retriever_loss=retriever_loss.mean(),
      reader_loss=reader_loss.mean(),
      # ORQA's eval metrics, on the training batch: the predicted span is a
      # gold one; any gold span is read; a correct block is retrieved.
      exact_match=jnp.take_along_axis(gold, predicted[:, None], 1).mean(),
      reader_oracle=gold.any(-1).mean(),
      top_k_match=has_answer[:, :k].any(-1).mean(),
      top_n_match=has_answer.any(-1).mean())


def best_spans(model, batch) -> dict[str, jax.Array]:
  """The argmax (block, start, width) of the joint logits per question."""
  retrieval, joint = scores(model, batch)
  b, k, length, width = joint.shape
  best = jnp.argmax(joint.reshape(b, -1), axis=-1)
  block, rest = jnp.divmod(best, length * width)
  start, span_width = jnp.divmod(rest, width)
  return dict(block=block, start=start, end=start + span_width,
              score=jnp.max(joint.reshape(b, -1), axis=-1),
              retrieval_logits=retrieval)


# -- closed book: the reader alone fills answer slots with its MLM head ------


def closed_book_loss(params, batch, dropout_key, graphdef):
  """Cross-entropy of the answer's word pieces (then [SEP]) in the [MASK]
  slots of `[CLS] question [SEP] [MASK]... [SEP]`."""
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  logits = closed_book_logits(model, batch, rngs)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets, weights = batch['answer_targets'], batch['answer_weights']
  token_log_probs = jnp.take_along_axis(log_probs, targets[..., None],
                                        -1)[..., 0]
  loss = -(token_log_probs * weights).sum() / jnp.maximum(weights.sum(), 1)
  slot_correct = (jnp.argmax(logits, -1) == targets) | (weights == 0)
  return loss, dict(loss=loss,
                    exact_match=slot_correct.all(-1).mean())


def closed_book_logits(model, batch, rngs=None) -> jax.Array:
  """float32 [B, slots, V]."""
  sequence = model.reader(batch['reader_ids'], batch['reader_segments'],
                          batch['reader_mask'], rngs=rngs)
  return model.reader.mlm_logits(sequence, batch['answer_positions'])
