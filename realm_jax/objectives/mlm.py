"""BERT's masked-LM objective (realm-mlm): what REALM's reader starts from.

    loss = - sum_j w_j log p(y_j | x_masked) / sum_j w_j

over the predicted positions j of `[CLS] title [SEP] body [SEP]` blocks,
with the reader's MLM head (decoder tied to the word embeddings). While
`encoder_trains` is 0 (the head's warm-up, when a BERT checkpoint brought
no MLM head) no gradient reaches the encoder or the word embeddings: only
the head's transform, LayerNorm and output bias learn.
"""
from flax import nnx
import jax
import jax.numpy as jnp


def _gate(x: jax.Array, trains: jax.Array) -> jax.Array:
  """x, with its gradient scaled by `trains` (1: passes, 0: stopped)."""
  return trains * x + (1 - trains) * jax.lax.stop_gradient(x)


def loss(params, batch, dropout_key, graphdef):
  """batch: token_ids/segment_ids/input_mask [B, L]; mlm_positions,
  mlm_targets, mlm_weights [B, M]; encoder_trains [B] (all rows alike)."""
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  trains = batch['encoder_trains'].astype(jnp.float32).mean()
  sequence = model.reader(batch['token_ids'], batch['segment_ids'],
                          batch['input_mask'], rngs=rngs)
  selected = jnp.take_along_axis(
      sequence, batch['mlm_positions'][:, :, None], axis=1)
  embedding = model.reader.encoder.embeddings.token_embed.embedding[...]
  logits = model.reader.mlm_head(_gate(selected, trains),
                                 _gate(embedding, trains))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets, weights = batch['mlm_targets'], batch['mlm_weights']
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None],
                                         axis=-1)[..., 0]
  count = jnp.maximum(weights.sum(), 1.0)
  loss_value = -(target_log_probs * weights).sum() / count
  correct = jnp.argmax(logits, axis=-1) == targets
  return loss_value, dict(
      loss=loss_value, mlm_accuracy=(correct * weights).sum() / count,
      predictions=weights.sum())
