"""BM25 candidates and their reciprocal rank fusion with dense ones."""
import numpy as np
import pytest

from realm_jax.retrieval import lexical


class _Corpus:
  def __init__(self, texts):
    self._records = [dict(title=f'T{i}', text=t) for i, t in enumerate(texts)]

  def __len__(self):
    return len(self._records)

  def records(self, ids):
    return [self._records[i] for i in ids]


def test_bm25_finds_the_block_sharing_rare_words():
  corpus = _Corpus(['the cat sat on the mat', 'a dog ran in the park',
                    'Zanzibar exports cloves and spices',
                    'the weather in the park'])
  bm25 = lexical.Bm25(corpus)
  ids = bm25.search(['what does zanzibar export?', 'where did the dog run'],
                    k=2)
  assert ids.shape == (2, 2)
  assert ids[0, 0] == 2 and ids[1, 0] == 1
  # Blocks sharing no word, and slots past the corpus, stay empty (-1), as
  # in the MIPS index.
  padded = bm25.search(['cloves'], k=6)
  assert padded.tolist() == [[2, -1, -1, -1, -1, -1]]


def test_bm25_is_quiet(caplog):
  """bm25s logs a line per empty query (a padded batch row) at DEBUG."""
  caplog.set_level('DEBUG')
  bm25 = lexical.Bm25(_Corpus(['the cat sat on the mat', 'a dog ran']))
  assert bm25.search(['', 'the'], k=2).tolist() == [[-1, -1], [-1, -1]]
  assert not [r for r in caplog.records if r.name.startswith('bm25s')]


def _rrf_reference(dense, lexical_ids, k):
  """Cormack et al.'s formula written out, ties broken by dense rank."""
  blocks = [b for b in dict.fromkeys([*dense, *lexical_ids]) if b >= 0]
  def score(b):
    return sum(1.0 / (lexical.RRF_K + list(r).index(b) + 1)
               for r in (dense, lexical_ids) if b in list(r))
  return sorted(blocks, key=lambda b: -score(b))[:k]


def test_fuse_is_reciprocal_rank_fusion():
  rng = np.random.default_rng(0)
  dense = np.stack([rng.permutation(30)[:8] for _ in range(20)])
  lexical_ids = np.stack([rng.permutation(30)[:8] for _ in range(20)])
  lexical_ids[0, 5:] = -1  # empty slots never become candidates
  fused = lexical.fuse(dense, lexical_ids, k=8)
  for row in range(20):
    expected = _rrf_reference(dense[row], lexical_ids[row], 8)
    assert fused[row].tolist() == expected
  # A block both lists rank second beats one only the dense list ranks
  # first: 2 / (60 + 2) > 1 / (60 + 1).
  assert lexical.fuse(np.array([[7, 3]]), np.array([[9, 3]]), 1)[0, 0] == 3


def test_candidates_dispatch_and_errors():
  corpus = _Corpus(['alpha beta', 'gamma delta', 'epsilon zeta'])
  bm25 = lexical.Bm25(corpus)
  dense = lambda k: np.array([[2, 1, 0][:k]])
  assert lexical.candidates('dense', ['gamma'], dense, None, 3).tolist() == [
      [2, 1, 0]]
  assert lexical.candidates('bm25', ['gamma'], dense, bm25, 2).tolist() == [
      [1, -1]]
  # Block 1: 1 / 62 + 1 / 61 (2nd dense, 1st BM25) > block 2: 1 / 61.
  assert lexical.candidates('hybrid', ['gamma'], dense, bm25, 3).tolist() == [
      [1, 2, 0]]
  with pytest.raises(ValueError, match='retrieval'):
    lexical.candidates('sparse', ['gamma'], dense, bm25, 2)
