"""BM25 candidates, alone or fused with the dense index's (hybrid retrieval).

`retrieval` (realm-finetune's config; prediction, realm-evaluate and
realm-answer use the run's):
  dense   the top n of the MIPS index (REALM, ORQA)
  bm25    the top n by BM25 over each block's title and text (bm25s,
          English stop words removed; only blocks sharing a word)
  hybrid  both lists merged by reciprocal rank fusion (Cormack et al.
          2009): a block's score is the sum over the lists that hold it of
          1 / (RRF_K + rank), rank counted from 1; the top n by that score,
          ties in the dense list's order.
Whatever proposes the candidates, the model scores them with its dense
towers (the retrieval logits), so the question tower and the reader train
and predict exactly as with dense candidates. On SQuAD-style questions,
which share words with their paragraph, lexical candidates are strong.
"""
import logging as std_logging
import time

from absl import logging
import numpy as np

from realm_jax import corpus as corpus_lib

RETRIEVALS = ('dense', 'bm25', 'hybrid')
RRF_K = 60


class Bm25:
  """A BM25 index over every block of a corpus, built in memory."""

  def __init__(self, corpus: corpus_lib.Corpus):
    import bm25s  # pylint: disable=g-import-not-at-top
    # Its import sets its logger to DEBUG: one line per empty query.
    std_logging.getLogger('bm25s').setLevel(std_logging.WARNING)
    self._bm25s = bm25s
    start = time.time()
    records = corpus.records(np.arange(len(corpus)))
    self.num_blocks = len(records)
    self._index = bm25s.BM25()
    self._index.index(self._tokenize(
        [f'{r["title"]} {r["text"]}' for r in records]), show_progress=False)
    logging.info('BM25 over %d blocks built in %.1f s', self.num_blocks,
                 time.time() - start)

  def _tokenize(self, texts):
    return self._bm25s.tokenize(list(texts), stopwords='en',
                                show_progress=False)

  def search(self, questions, k: int) -> np.ndarray:
    """int [Q, k] block ids, best first; -1 (an empty slot, as the MIPS
    index leaves one) where no more blocks share a word with the question
    (a score of 0 ranks nothing)."""
    ids, scores = self._index.retrieve(self._tokenize(questions),
                                       k=min(k, self.num_blocks),
                                       show_progress=False)
    ids = np.where(np.asarray(scores) > 0, np.asarray(ids, np.int64), -1)
    return np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)


def fuse(dense_ids: np.ndarray, lexical_ids: np.ndarray, k: int
         ) -> np.ndarray:
  """Reciprocal rank fusion of two [Q, *] id lists -> [Q, k]."""
  fused = np.full((len(dense_ids), k), -1, np.int64)  # -1: empty slot
  for row, (dense, lexical) in enumerate(zip(dense_ids, lexical_ids)):
    scores = {}
    for ranked in (dense, lexical):
      for rank, block in enumerate(ranked.tolist(), start=1):
        if block >= 0:
          scores[block] = scores.get(block, 0.0) + 1.0 / (RRF_K + rank)
    # sorted is stable and dicts keep first-seen order: dense breaks ties.
    best = sorted(scores, key=lambda b: -scores[b])[:k]
    fused[row, :len(best)] = best
  return fused


def candidates(retrieval: str, questions, dense_search, bm25: Bm25 | None,
               k: int) -> np.ndarray:
  """int [Q, k] candidate ids. dense_search(k) -> the index's [Q, k] ids
  (called only when the rule needs them)."""
  if retrieval == 'dense':
    return dense_search(k)
  lexical = bm25.search(questions, k)
  if retrieval == 'bm25':
    return lexical
  if retrieval == 'hybrid':
    return fuse(dense_search(k), lexical, k)
  raise ValueError(f'retrieval {retrieval!r}: one of {", ".join(RETRIEVALS)}')
