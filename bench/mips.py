r"""MIPS: exact (jax) vs ScaNN through realm_jax.retrieval.mips vs ScaNN called directly.

  .venv/bin/python bench/mips.py --sizes=100000,1000000

For each size, N random unit vectors of --dim and a batch of --queries random
unit queries: build time, queries/s (median over --runs searches of the whole
batch, after one warm-up search that also compiles) and recall@k against the
exact index. Rows:
  exact           ExactIndex on all local jax devices
  scann           ScannIndex with the default settings
  scann direct    the same ScaNN configuration built and searched with
                  scann_ops_pybind itself; `overhead` = its queries/s over
                  ours (1.00 = our layer costs nothing)
  scann orqa 1/10 that searcher with 1/10 of the leaves searched, ORQA's
                  ratio (fast, and enough for clustered real embeddings)
Random vectors have no cluster structure: the worst case for ScaNN's tree.
"""
import statistics
import time

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
import numpy as np
import scann

from realm_jax.retrieval import mips
# pylint: enable=g-import-not-at-top,wrong-import-position

_SIZES = flags.DEFINE_list('sizes', ['100000', '1000000'],
                           'Numbers of indexed vectors.')
_DIM = flags.DEFINE_integer('dim', 128, 'Vector dimension.')
_QUERIES = flags.DEFINE_integer('queries', 512, 'Queries per search call.')
_K = flags.DEFINE_integer('k', 8, 'Neighbours per query (recall@k).')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed searches; the median counts.')


def _unit_vectors(n, dim, rng):
  x = rng.standard_normal((n, dim), dtype=np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def _queries_per_second(search, queries):
  search(queries)  # warm-up (and compilation)
  times = [_timed(lambda: search(queries))[1] for _ in range(_RUNS.value)]
  return len(queries) / statistics.median(times)


def _recall(ids, exact_ids):
  return np.mean([len(set(a) & set(b)) / len(b)
                  for a, b in zip(ids, exact_ids)])


def _direct_scann(embeddings, settings, config, k):
  """ScaNN built and searched without our layer, same configuration."""
  searcher = scann.scann_ops_pybind.builder(
      embeddings, k, 'dot_product').tree(
          num_leaves=settings['num_leaves'],
          num_leaves_to_search=settings['num_leaves_to_search'],
          training_sample_size=config.training_sample_size).score_ah(
              config.dims_per_block,
              anisotropic_quantization_threshold=(
                  config.anisotropic_quantization_threshold),
              training_sample_size=config.training_sample_size).reorder(
                  max(200, 2 * k)).build()
  return searcher


def _bench_size(n, rng):
  k = _K.value
  embeddings = _unit_vectors(n, _DIM.value, rng)
  queries = _unit_vectors(_QUERIES.value, _DIM.value, rng)
  rows = []

  def add(name, build_s, qps, recall, overhead=''):
    rows.append((n, name, build_s, qps, recall, overhead))

  config = mips.index_config()
  config.kind = 'exact'
  exact, build_s = _timed(lambda: mips.build_index(embeddings, config))
  exact_ids, _ = exact.search(queries, k)
  add('exact', build_s,
      _queries_per_second(lambda q: exact.search(q, k), queries), 1.0)
  del exact

  config.kind = 'scann'
  index, build_s = _timed(lambda: mips.build_index(embeddings, config))
  ours_qps = _queries_per_second(lambda q: index.search(q, k), queries)
  add('scann', build_s, ours_qps, _recall(index.search(queries, k)[0],
                                          exact_ids))
  leaves = index.settings['num_leaves']
  searched = index.settings['num_leaves_to_search']

  direct, build_s = _timed(
      lambda: _direct_scann(embeddings, index.settings, config, k))

  def search_direct(q, leaves_to_search=searched):
    return direct.search_batched_parallel(
        q, final_num_neighbors=k, pre_reorder_num_neighbors=max(200, 2 * k),
        leaves_to_search=leaves_to_search)
  direct_qps = _queries_per_second(search_direct, queries)
  add('scann direct', build_s, direct_qps,
      _recall(search_direct(queries)[0], exact_ids),
      f'{direct_qps / ours_qps:.2f}')

  def search_tenth(q):
    return search_direct(q, leaves_to_search=max(1, leaves // 10))
  add('scann orqa 1/10', None, _queries_per_second(search_tenth, queries),
      _recall(search_tenth(queries)[0], exact_ids))
  return rows, leaves, searched


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  print(f'jax devices: {jax.local_device_count()} x '
        f'{jax.local_devices()[0].platform}; dim {_DIM.value}, '
        f'{_QUERIES.value} queries per call, k={_K.value}, median of '
        f'{_RUNS.value}')
  print(f'{"N":>9} {"index":16} {"build s":>8} {"queries/s":>10} '
        f'{"recall@" + str(_K.value):>9} {"overhead":>8}  settings')
  for n in map(int, _SIZES.value):
    rows, leaves, searched = _bench_size(n, rng)
    for size, name, build_s, qps, recall, overhead in rows:
      settings = f'{leaves} leaves, {searched} searched' if name == 'scann' \
          else ''
      build = '-' if build_s is None else f'{build_s:.1f}'
      print(f'{size:>9} {name:16} {build:>8} {qps:10.0f} {recall:9.3f} '
            f'{overhead:>8}  {settings}', flush=True)


if __name__ == '__main__':
  app.run(main)
