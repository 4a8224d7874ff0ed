"""Embedding blocks with the document tower (the index builder's step) and
queries with the query tower (the trainers' and the predictor's search)."""
from collections.abc import Callable, Iterator

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from realm_jax import corpus as corpus_lib
from realm_jax import models
from realm_jax import sharding


def create_doc_tower(model_config: ml_collections.ConfigDict) -> nnx.Module:
  """The document tower alone: what checkpoints hold under DOC_TOWER_PATH."""
  return models.RetrieverTower(model_config, rngs=nnx.Rngs(0))


def make_embed_fn(graphdef: nnx.GraphDef, mesh,
                  axis_rules) -> Callable[[dict, dict], jax.Array]:
  """jit((tower params, block batch) -> float32 [B, D]).

  D is the tower's output width: projection_size, or hidden_size when the
  model has no projection (projection_size 0); the index takes D from the
  embeddings it is built from.

  The batch is split over the mesh's data axis, the tower's parameters are
  placed as their logical axes say.
  """
  batch_sharding = sharding.batch_sharding(mesh, axis_rules)

  @jax.jit
  def embed(params, blocks):
    tower = nnx.merge(graphdef, params)
    out = tower(blocks['token_ids'], blocks['segment_ids'],
                blocks['input_mask'])
    return jax.lax.with_sharding_constraint(out.astype(jnp.float32),
                                            batch_sharding)
  return embed


def block_batches(corpus: corpus_lib.Corpus, start: int, stop: int,
                  batch_size: int) -> Iterator[tuple[int, dict]]:
  """(number of real rows, model inputs) for blocks [start, stop), padded to
  batch_size with empty rows so every batch has one shape (one compile)."""
  for first in range(start, stop, batch_size):
    ids = np.arange(first, min(first + batch_size, stop))
    blocks = corpus.blocks(ids)
    inputs = {k: blocks[k] for k in ('token_ids', 'segment_ids',
                                     'input_mask')}
    if len(ids) < batch_size:
      inputs = {k: np.pad(v, ((0, batch_size - len(ids)), (0, 0)))
                for k, v in inputs.items()}
    yield len(ids), inputs


def embed_blocks(embed_fn, params, corpus: corpus_lib.Corpus, start: int,
                 stop: int, batch_size: int, batch_sharding,
                 progress=None) -> np.ndarray:
  """float32 [stop - start, D] embeddings of blocks [start, stop).

  One batch stays in flight: the host reads and featurizes batch i + 1 while
  the devices embed batch i (jax dispatches asynchronously).
  """
  outputs, in_flight = [], None

  def collect(count, embedded):
    outputs.append(np.asarray(jax.device_get(embedded))[:count])
    if progress is not None:
      progress.update(count)

  for count, inputs in block_batches(corpus, start, stop, batch_size):
    embedded = embed_fn(params, sharding.global_batch(inputs, batch_sharding))
    if in_flight is not None:
      collect(*in_flight)
    in_flight = count, embedded
  if in_flight is not None:
    collect(*in_flight)
  return np.concatenate(outputs)


def jit_embed_queries(graphdef: nnx.GraphDef, param_shardings, batch_sharding,
                      mesh) -> Callable[[dict, dict], jax.Array]:
  """jit((model params, {query_ids, query_mask}) -> query vectors [B, D]).

  The model is a models.REALM (or anything with a `retriever`); the batch
  is split over the data axis and the vectors come back replicated, so
  every host can search for its own rows.
  """
  return jax.jit(
      lambda params, q: nnx.merge(graphdef, params).retriever.embed_queries(
          q['query_ids'], jnp.zeros_like(q['query_ids']), q['query_mask']),
      in_shardings=(param_shardings, batch_sharding),
      out_shardings=sharding.replicated(mesh))
