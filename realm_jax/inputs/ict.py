"""Inverse Cloze Task examples from corpus blocks (ORQA ict_model.py).

A sentence of a block is the query; the block (title + body) is its positive,
with the sentence removed `remove_sentence_rate` of the time so the task
cannot be solved by string matching alone. Negatives are the other blocks of
the batch.

The pipeline is a pure function of (seed, step): example p of the global
batch at step s is built from block perm_e[p' mod n] with p' = s * B + p and
e the epoch, so resuming at a step continues exactly where a killed run
stopped, and each host builds only its own rows of the global batch.
"""
import functools

import numpy as np

from realm_jax import corpus as corpus_lib


class IctInput:
  """Host-local ICT batches for a given step."""

  def __init__(self, corpus: corpus_lib.Corpus, *, global_batch_size: int,
               query_len: int, remove_sentence_rate: float, seed: int,
               process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} does not split '
                       f'over {process_count} processes')
    self._corpus = corpus
    self._global_batch = global_batch_size
    self._local_batch = global_batch_size // process_count
    self._offset = process_index * self._local_batch
    self._query_len = query_len
    self._remove_rate = remove_sentence_rate
    self._seed = seed
    tokenizer = corpus.tokenizer
    self._cls, self._sep = tokenizer.cls_id, tokenizer.sep_id

  @functools.lru_cache(maxsize=2)
  def _permutation(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng((self._seed, epoch))
    return rng.permutation(len(self._corpus)).astype(np.int64)

  def block_ids(self, step: int) -> np.ndarray:
    """Global block ids of this host's rows of the batch at `step`."""
    first = step * self._global_batch + self._offset
    positions = np.arange(first, first + self._local_batch)
    n = len(self._corpus)
    return np.array([self._permutation(p // n)[p % n] for p in positions])

  def batch(self, step: int) -> dict[str, np.ndarray]:
    ids = self.block_ids(step)
    blocks = self._corpus.blocks(ids)
    first = step * self._global_batch + self._offset
    examples = [
        self._example(blocks, row, block_id,
                      np.random.default_rng((self._seed, first + row, 1)))
        for row, block_id in enumerate(ids)]
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}

  def _example(self, blocks, row, block_id, rng) -> dict[str, np.ndarray]:
    block_len = blocks['token_ids'].shape[1]
    title_len, body_len = blocks['title_len'][row], blocks['body_len'][row]
    tokens = blocks['token_ids'][row]
    title = tokens[1:1 + title_len]
    body = tokens[2 + title_len:2 + title_len + body_len]
    bounds = self._corpus.sentence_bounds(block_id)
    start, end = bounds[rng.integers(len(bounds))]
    query = np.concatenate([[self._cls], body[start:end][:self._query_len - 2],
                            [self._sep]])
    # A one-sentence block keeps its sentence: removing it leaves no context.
    if len(bounds) > 1 and rng.random() < self._remove_rate:
      body = np.concatenate([body[:start], body[end:]])
    block = np.concatenate([[self._cls], title, [self._sep], body,
                            [self._sep]])
    block_segments = np.zeros(block_len, np.int32)
    block_segments[title_len + 2:len(block)] = 1
    return dict(query_ids=_pad(query, self._query_len),
                query_mask=_pad(np.ones_like(query), self._query_len),
                block_ids=_pad(block, block_len),
                block_segments=block_segments,
                block_mask=_pad(np.ones_like(block), block_len))


def _pad(ids: np.ndarray, length: int) -> np.ndarray:
  out = np.zeros(length, np.int32)
  out[:len(ids)] = ids
  return out
