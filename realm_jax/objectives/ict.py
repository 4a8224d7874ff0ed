"""The Inverse Cloze Task (ORQA ict_model.py): the retriever's warm start.

A sentence is the query, its block (with the sentence removed most of the
time) the positive, the other blocks of the global batch the negatives:

    loss = - mean_i log softmax_j( Embed_query(q_i) . Embed_doc(b_j) )[i]
"""
from flax import nnx
import jax.numpy as jnp
import optax


def loss(params, batch, dropout_key, graphdef):
  """In-batch softmax: query i's positive is block i."""
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
  loss_value = optax.softmax_cross_entropy_with_integer_labels(
      logits, labels).mean()
  accuracy = (jnp.argmax(logits, axis=-1) == labels).mean()
  return loss_value, dict(loss=loss_value, accuracy=accuracy)
