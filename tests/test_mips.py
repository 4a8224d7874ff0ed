"""MIPS indexes against numpy brute force; sharding, save/load, config."""
import jax
import numpy as np
import pytest

from realm_jax.retrieval import mips


def _vectors(n, dim, seed, unit=False):
  x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True) if unit else x


def _numpy_top_k(embeddings, queries, k):
  scores = queries.astype(np.float64) @ embeddings.T.astype(np.float64)
  ids = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  top = np.take_along_axis(scores, ids, axis=1)
  order = np.argsort(-top, axis=1)
  return (np.take_along_axis(ids, order, axis=1),
          np.take_along_axis(top, order, axis=1))


def _config(kind, **overrides):
  config = mips.index_config()
  config.kind = kind
  config.update(overrides)
  return config


def _recall(ids, reference):
  return np.mean([len(set(a) & set(b)) / len(b)
                  for a, b in zip(ids, reference)])


# 1003 rows over 8 devices: 126 per device, the last shard mostly padding.
@pytest.mark.parametrize('chunk_size, k', [
    (50, 1), (50, 8), (50, 130), (1000, 8), (7, 1003), (32_768, 20)])
def test_exact_matches_numpy(chunk_size, k):
  embeddings, queries = _vectors(1003, 16, 0), _vectors(37, 16, 1)
  index = mips.build_index(
      embeddings, _config('exact', exact_chunk_size=chunk_size,
                          exact_query_batch_size=16))
  ids, scores = index.search(queries, k)
  want_ids, want_scores = _numpy_top_k(embeddings, queries, k)
  assert ids.dtype == np.int64 and scores.dtype == np.float32
  assert ids.shape == scores.shape == (37, k)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_exact_searches_device_queries_dispatched_ahead():
  """dispatch_search takes the queries where they are (a device array, as
  fine-tuning's query tower leaves them) and waits only when asked."""
  embeddings, queries = _vectors(1003, 16, 4), _vectors(37, 16, 5)
  index = mips.build_index(embeddings, _config(
      'exact', exact_chunk_size=64, exact_query_batch_size=16))
  on_device = jax.device_put(queries, jax.devices()[3])
  wait = index.dispatch_search(on_device, 9)
  ids, scores = wait()
  np.testing.assert_array_equal(ids, _numpy_top_k(embeddings, queries, 9)[0])
  assert ids.dtype == np.int64 and scores.shape == (37, 9)
  np.testing.assert_array_equal(ids, index.search(queries, 9)[0])
  with pytest.raises(ValueError, match='^queries:'):
    index.dispatch_search(on_device[:, :8], 9)
  # ScaNN searches on the host: nothing to dispatch.
  scann_index = mips.build_index(_vectors(600, 16, 6), _config('scann'))
  assert scann_index.dispatch_search(on_device, 9) is None


def test_exact_same_ids_on_one_and_eight_devices():
  embeddings, queries = _vectors(5001, 32, 2), _vectors(100, 32, 3)
  config = _config('exact', exact_chunk_size=256)
  one = mips.build_index(embeddings, config, devices=jax.devices()[:1])
  eight = mips.build_index(embeddings, config, devices=jax.devices())
  assert len(jax.devices()) == 8
  ids_one, scores_one = one.search(queries, 50)
  ids_eight, scores_eight = eight.search(queries, 50)
  np.testing.assert_array_equal(ids_one, ids_eight)
  np.testing.assert_allclose(scores_one, scores_eight, rtol=1e-6)
  np.testing.assert_array_equal(ids_one,
                                _numpy_top_k(embeddings, queries, 50)[0])


def test_scann_recall_at_8_on_random_unit_vectors():
  embeddings = _vectors(100_000, 128, 4, unit=True)
  queries = _vectors(1000, 128, 5, unit=True)
  index = mips.build_index(embeddings, _config('scann'))
  assert index.kind == 'scann'
  ids, scores = index.search(queries, 8)
  want_ids, _ = _numpy_top_k(embeddings, queries, 8)
  assert _recall(ids, want_ids) >= 0.95
  # Scores are the exact inner products of the returned ids (reordering).
  np.testing.assert_allclose(
      scores, np.einsum('qd,qkd->qk', queries, embeddings[ids]), atol=1e-5)
  assert (np.diff(scores, axis=1) <= 0).all()


def test_scann_on_a_tiny_corpus_finds_each_vector_itself():
  embeddings = _vectors(40, 16, 6, unit=True)
  index = mips.build_index(embeddings, _config('scann'))
  ids, _ = index.search(embeddings, 3)
  np.testing.assert_array_equal(ids[:, 0], np.arange(40))


def test_scann_reports_unfilled_slots_as_minus_one():
  # One leaf of ten searched holds far fewer than k = 100 vectors.
  embeddings = _vectors(100, 16, 7)
  index = mips.build_index(embeddings, _config(
      'scann', num_leaves=10, num_leaves_to_search=1))
  ids, scores = index.search(embeddings[:3], 100)
  missing = ids == -1
  assert missing.any() and (~missing).any()
  np.testing.assert_array_equal(np.isneginf(scores), missing)
  for row in ids:
    found = row[row >= 0]
    assert len(set(found)) == len(found)


def test_scann_refuses_fewer_vectors_than_its_quantizer_needs():
  with pytest.raises(ValueError, match='at least 16 vectors'):
    mips.build_index(_vectors(10, 16, 8), _config('scann'))


@pytest.mark.parametrize('kind, n', [('exact', 301), ('scann', 2000)])
def test_save_and_load_give_the_same_results(tmp_path, kind, n):
  embeddings, queries = _vectors(n, 16, 9), _vectors(20, 16, 10)
  index = mips.build_index(embeddings, _config(kind))
  ids, scores = index.search(queries, 10)
  written = tmp_path / 'staging'
  written.mkdir()
  files = index.save(written)
  on_disk = sorted(str(p.relative_to(written)) for p in written.rglob('*')
                   if p.is_file())
  assert sorted(files) == on_disk
  # Published versions are renamed into place after saving.
  moved = tmp_path / 'published'
  written.rename(moved)
  loaded = mips.load_index(moved)
  assert (loaded.kind, loaded.num_vectors, loaded.dim) == (kind, n, 16)
  loaded_ids, loaded_scores = loaded.search(queries, 10)
  np.testing.assert_array_equal(loaded_ids, ids)
  np.testing.assert_array_equal(loaded_scores, scores)
  empty_ids, empty_scores = loaded.search(queries[:0], 10)
  assert empty_ids.shape == empty_scores.shape == (0, 10)


@pytest.mark.parametrize('n, kind', [(100, 'exact'), (101, 'scann')])
def test_auto_picks_the_kind_by_size(n, kind):
  index = mips.build_index(_vectors(n, 16, 11),
                           _config('auto', exact_max_vectors=100))
  assert index.kind == kind
  assert isinstance(index, mips.ExactIndex if kind == 'exact'
                    else mips.ScannIndex)


@pytest.mark.parametrize('overrides, field', [
    (dict(kind='fuzzy'), 'index.kind'),
    (dict(exact_chunk_size=0), 'index.exact_chunk_size'),
    (dict(num_leaves=-1), 'index.num_leaves')])
def test_bad_config_names_the_field(overrides, field):
  config = mips.index_config()
  config.update(overrides)
  with pytest.raises(ValueError, match=field):
    mips.build_index(_vectors(20, 8, 12), config)


@pytest.mark.parametrize('kind', ['exact', 'scann'])
def test_bad_search_arguments_name_the_argument(kind):
  index = mips.build_index(_vectors(50, 8, 13), _config(kind))
  with pytest.raises(ValueError, match='^k:'):
    index.search(_vectors(2, 8, 14), 0)
  with pytest.raises(ValueError, match='^k:'):
    index.search(_vectors(2, 8, 14), 51)
  with pytest.raises(ValueError, match='^queries:'):
    index.search(_vectors(2, 9, 14), 5)
