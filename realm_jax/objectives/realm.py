r"""REALM's pre-training objective: the masked-LM marginal likelihood.

For a query x with masked tokens y_1..y_M and candidates z_0..z_{K-1}
(z_0 = the null document, then the top retrieved blocks, the query's own
block excluded):

    p(z | x)       = softmax_z( Embed_query(x) . Embed_doc(z) )
    p(y_j | z, x)  = the reader's MLM softmax at mask j over [CLS] x [SEP] z
    log p(y_j | x) = logsumexp_z( log p(z | x) + log p(y_j | z, x) )
    loss           = - sum_j w_j log p(y_j | x) / sum_j w_j

Each masked token is marginalised over the candidates independently, as
realm/model.py does (not the paper's product over tokens inside the sum).
The candidates' embeddings are computed here with the current parameters
(the stale index only chose them), so the gradient reaches both retriever
towers through p(z | x) and the reader through p(y | z, x).

The null document's score (`null_document`): 'embedded' (REALM) is the
inner product with the document tower's embedding of the empty block.
'relative' is the mean score of the query's retrieved blocks plus one
learned offset (model.null_offset): p(z | x) is then unchanged when every
block's score moves together, so the retriever is trained only to rank the
blocks against each other. With 'embedded', a query whose blocks all help
less than the null document pushes its embedding away from every block it
retrieved; on a small corpus, where most masked spans are in none of the
retrieved blocks, that pressure dominates and collapses retrieval into the
null document (README, REALM on SQuAD-open).

Retrieval utility (paper App. D): log p(y | x) - log p(y | z_0, x), how much
the retrieved documents help over the null document alone; likewise
mlm_accuracy (of the mixture) against null_mlm_accuracy (the reader given
z_0 alone). Given which candidates hold the masked span, holder_prior is
the retriever's probability on them and holder_posterior the same after
seeing the tokens: the score gradient is prior - posterior, so
holder_posterior > holder_prior means the step pulls the retriever towards
blocks that state the masked fact.
"""
from flax import nnx
import jax
import jax.numpy as jnp

# A finite "minus infinity" for excluded candidates: gradients stay finite.
_EXCLUDED = -1e9
NULL_DOCUMENTS = ('embedded', 'relative')


def loss(params, batch, dropout_key, graphdef, null_document='embedded'):
  """REALM's marginal MLM loss and metrics; candidate 0 is the null doc.

  batch: query_ids/query_mask [B, Q]; candidate_{ids,segments,mask}
  [B, K, L] (retriever inputs) and candidate_valid [B, K];
  optional candidate_holds_span [B, K] (for metrics only: the candidate
  holds the masked span, inputs/pretrain.py span_holders);
  reader_{ids,segments,mask} [B, K, J];
  mlm_positions/mlm_targets/mlm_weights [B, M] (positions in the query).
  """
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  b, k, block_len = batch['candidate_ids'].shape
  reader_len = batch['reader_ids'].shape[-1]
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
  if null_document == 'relative':
    valid = batch['candidate_valid'][:, 1:].astype(jnp.float32)
    mean = (scores[:, 1:] * valid).sum(-1) / jnp.maximum(valid.sum(-1), 1.0)
    scores = scores.at[:, 0].set(mean + model.null_offset[...])
  # Slots the search could not fill (candidate_valid 0) are not candidates.
  scores = jnp.where(batch['candidate_valid'].astype(bool), scores, _EXCLUDED)
  log_p_z = jax.nn.log_softmax(scores, axis=-1)  # [B, K]

  sequence = model.reader(flat(batch['reader_ids'], reader_len),
                          flat(batch['reader_segments'], reader_len),
                          flat(batch['reader_mask'], reader_len), rngs=rngs)
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
  loss_value = -(marginal * weights).sum() / num_targets

  # Mixture prediction for accuracy: argmax_y sum_z p(z|x) p(y|z,x).
  mixture = jax.nn.logsumexp(
      log_p_z[:, :, None, None] + log_probs.reshape(b, k, *log_probs.shape[1:]),
      axis=1)
  correct = jnp.argmax(mixture, axis=-1) == batch['mlm_targets']
  # The same reader given the null document alone: what retrieval adds.
  null_logits = logits.reshape(b, k, *logits.shape[1:])[:, 0]
  null_correct = jnp.argmax(null_logits, axis=-1) == batch['mlm_targets']
  p_z = jnp.exp(log_p_z)
  # Where the retriever's gradient points: each masked token's posterior
  # p(z | x, y_j) against the prior p(z | x) (the score gradient is their
  # difference), summed over the candidates that hold the masked span.
  posterior = jnp.exp(log_p_z[:, :, None] + log_p_y_given_z
                      - marginal[:, None, :])  # [B, K, M]
  token_weights = weights / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)
  posterior = (posterior * token_weights[:, None, :]).sum(-1)  # [B, K]
  metrics = dict(
      loss=loss_value,
      mlm_accuracy=(correct * weights).sum() / num_targets,
      null_mlm_accuracy=(null_correct * weights).sum() / num_targets,
      retrieval_utility=((marginal - log_p_y_given_z[:, 0]) * weights).sum()
      / num_targets,
      p_null=p_z[:, 0].mean(),
      retrieval_entropy=-(p_z * log_p_z).sum(-1).mean())
  if 'candidate_holds_span' in batch:
    holds = batch['candidate_holds_span'].astype(jnp.float32)
    metrics.update(holder_prior=(p_z * holds).sum(-1).mean(),
                   holder_posterior=(posterior * holds).sum(-1).mean())
  retriever = model.retriever
  if retriever.doc_tower.learns_scale:
    # scores = cosine / temperature (models.RetrieverTower).
    query_tower = (retriever.doc_tower if retriever.share_towers
                   else retriever.query_tower)
    metrics['retrieval_temperature'] = jnp.exp(
        -query_tower.log_scale[...] - retriever.doc_tower.log_scale[...])
  return loss_value, metrics
