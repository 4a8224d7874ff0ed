"""Maximum inner product search over the block embeddings.

One interface, two implementations, chosen by `index_config().kind`:

- ExactIndex: brute force on the jax devices. The embedding matrix is split
  by rows over a 1-D device mesh; each device scores its rows one chunk at a
  time (peak memory: one [queries, chunk] score block) and keeps a running
  top k; the per-device winners are merged into the global top k. The answer
  is exactly numpy's `argsort(-queries @ embeddings.T)[:, :k]`.
- ScannIndex: ScaNN's tree (k-means leaves) + asymmetric hashing + exact
  re-scoring of the best candidates: approximate, fast on CPU, what ORQA
  used (orqa/utils/scann_utils.py).

`save` writes a small JSON naming the kind and its settings next to the
index files, and both kinds keep the indexed vectors (embeddings.npy) so
`vectors(ids)` can return them; `load_index` reads it back.
"""
import abc
from collections.abc import Callable
import functools
import json
import math
import os
import tempfile

from etils import epath
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import scann

from realm_jax import config_lib
from realm_jax import corpus as corpus_lib

METADATA_FILE = 'mips_index.json'
EMBEDDINGS_FILE = 'embeddings.npy'
SCANN_DIR = 'scann'
KINDS = ('exact', 'scann', 'auto')
# ScaNN's asymmetric hashing trains 16 centres per block (LUT16) and needs at
# least that many training vectors.
SCANN_MIN_VECTORS = 16
# ORQA's tree for 13M blocks had 1000 leaves; sqrt(N) reaches it at 1M.
SCANN_MAX_LEAVES = 1000
_ROWS = 'rows'  # the mesh axis the embedding rows are split over


def index_config() -> ml_collections.ConfigDict:
  """Which index to build and how. Fields set to 0 are derived from N and k.

  ORQA (13M blocks): num_leaves=1000, num_leaves_to_search=100,
  dims_per_block=2, training_sample_size=100_000, no reordering.
  """
  return ml_collections.ConfigDict(dict(
      # 'exact' | 'scann' | 'auto' (exact up to exact_max_vectors vectors).
      kind='auto',
      exact_max_vectors=200_000,
      # Rows scored at once per device: [query batch, chunk] float32 scores.
      exact_chunk_size=32_768,
      exact_query_batch_size=1024,
      # 0: round(sqrt(N)), at most 1000 (ScaNN's rule of thumb, ORQA's cap).
      num_leaves=0,
      # 0: 3/4 of the leaves. Unclustered vectors (the worst case) need that
      # for recall@8 >= 0.95; trained embeddings cluster, and ORQA's 1/10 is
      # several times faster there.
      num_leaves_to_search=0,
      dims_per_block=2,
      anisotropic_quantization_threshold=0.2,
      training_sample_size=100_000,
      # 0: max(200, 2k) candidates re-scored exactly.
      reorder=0,
  ))


def validate_config(config: ml_collections.ConfigDict) -> None:
  config_lib.check(config.kind in KINDS, 'index.kind',
                   f'{config.kind!r} is not one of {KINDS}')
  for field in ('exact_max_vectors', 'num_leaves', 'num_leaves_to_search',
                'reorder'):
    config_lib.check(config[field] >= 0, f'index.{field}',
                     f'{config[field]} must be >= 0 (0 = derived)')
  for field in ('exact_chunk_size', 'exact_query_batch_size',
                'dims_per_block', 'training_sample_size'):
    config_lib.check(config[field] >= 1, f'index.{field}',
                     f'{config[field]} must be >= 1')


class MipsIndex(abc.ABC):
  """Top-k inner product search over a fixed set of vectors."""

  kind: str
  num_vectors: int
  dim: int

  @abc.abstractmethod
  def search(self, queries: np.ndarray, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [Q, k], scores float32 [Q, k]), best first.

    Slots an approximate index could not fill are (-1, -inf).
    """

  @abc.abstractmethod
  def save(self, directory: epath.PathLike) -> list[str]:
    """Writes the index; returns the file names, relative to `directory`."""

  def vectors(self, ids: np.ndarray) -> np.ndarray:
    """float32 [..., dim]: the indexed vectors of `ids` (any shape).

    Fine-tuning scores the retrieved blocks with these (ORQA gathers its
    fixed block embeddings the same way), so the gradient reaches the
    question tower only.
    """
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids, axis=None)  # sorted reads of a memmap
    rows = np.empty((ids.size, self.dim), np.float32)
    rows[order] = self._embeddings[ids.reshape(-1)[order]]
    return rows.reshape(*ids.shape, self.dim)

  def _save_embeddings(self, directory: epath.Path) -> str:
    with (directory / EMBEDDINGS_FILE).open('wb') as f:
      np.save(f, np.asarray(self._embeddings, np.float32))
    return EMBEDDINGS_FILE

  def dispatch_search(self, queries: jax.Array, k: int
                      ) -> Callable[[], tuple[np.ndarray, np.ndarray]] | None:
    """Queues the search of device-resident queries behind the devices'
    work, without waiting; returns a function that waits for search's
    (ids, scores). None when this index searches on the host (the caller
    then copies the queries and calls search)."""
    del queries, k
    return None

  def _check_queries(self, queries, k: int, on_device: bool = False):
    """float32 numpy queries, or (on_device) a jax.Array left where it is."""
    if not (on_device and isinstance(queries, jax.Array)):
      queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f'queries: shape {queries.shape}, expected '
                       f'[num_queries, {self.dim}]')
    if not 1 <= k <= self.num_vectors:
      raise ValueError(f'k: {k} must be in [1, {self.num_vectors}] (the '
                       'number of indexed vectors)')
    return queries

  def _write_metadata(self, directory: epath.Path, **settings) -> str:
    metadata = dict(kind=self.kind, num_vectors=self.num_vectors,
                    dim=self.dim, **settings)
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return METADATA_FILE


# -- exact ---------------------------------------------------------------------


def _local_top_k(embeddings, queries, *, k, chunk_size, num_vectors):
  """Top k of this device's rows, one chunk of rows at a time.

  Returns (scores, global row ids) [B, k]; rows past num_vectors (padding)
  score -inf, and so do the unfilled slots (id -1) when the shard holds
  fewer than k rows.
  """
  shard_rows, dim = embeddings.shape
  first_row = jax.lax.axis_index(_ROWS) * shard_rows
  chunks = embeddings.reshape(shard_rows // chunk_size, chunk_size, dim)
  chunk_k = min(k, chunk_size)

  def step(best, chunk_and_start):
    chunk, start = chunk_and_start
    scores = jnp.dot(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)
    ids = first_row + start + jnp.arange(chunk_size, dtype=jnp.int32)
    scores = jnp.where(ids < num_vectors, scores, -jnp.inf)
    scores, positions = jax.lax.top_k(scores, chunk_k)
    scores = jnp.concatenate([best[0], scores], axis=1)
    ids = jnp.concatenate([best[1], ids[positions]], axis=1)
    scores, positions = jax.lax.top_k(scores, k)
    return (scores, jnp.take_along_axis(ids, positions, axis=1)), None

  batch = queries.shape[0]
  init = (jnp.full((batch, k), -jnp.inf, jnp.float32),
          jnp.full((batch, k), -1, jnp.int32))
  # The carry differs per device (it holds this shard's rows).
  init = jax.lax.pcast(init, (_ROWS,), to='varying')
  starts = jnp.arange(0, shard_rows, chunk_size, dtype=jnp.int32)
  (scores, ids), _ = jax.lax.scan(step, init, (chunks, starts))
  return scores, ids


@functools.partial(jax.jit, static_argnames=('k', 'chunk_size',
                                             'num_vectors', 'mesh'))
def _exact_search(table, queries, *, k, chunk_size, num_vectors, mesh):
  """Per-device top k, then the global top k of the devices' winners.

  Module-level, so a newly loaded index of the same shape reuses the
  compiled search (a hot swap must not recompile on the training thread).
  """
  local = jax.shard_map(
      functools.partial(_local_top_k, k=k, chunk_size=chunk_size,
                        num_vectors=num_vectors),
      mesh=mesh, in_specs=(P(_ROWS, None), P()),
      out_specs=(P(None, _ROWS), P(None, _ROWS)))
  scores, ids = local(table, queries)  # [B, devices * k]
  scores, positions = jax.lax.top_k(scores, k)
  return scores, jnp.take_along_axis(ids, positions, axis=1)


class ExactIndex(MipsIndex):
  """Brute-force search, chunked and sharded by rows over `devices`."""

  kind = 'exact'

  def __init__(self, embeddings: np.ndarray, chunk_size: int,
               query_batch_size: int, devices=None):
    self._embeddings = embeddings  # the caller's array (or a memmap): saved
    self.num_vectors, self.dim = embeddings.shape
    self.chunk_size = chunk_size
    self.query_batch_size = query_batch_size
    # This process's devices: every host serves its own copy of the index.
    devices = list(jax.local_devices() if devices is None else devices)
    self._mesh = Mesh(np.array(devices), (_ROWS,))
    # Each device holds shard_rows rows, a whole number of chunks; the last
    # shards are padded with zero rows that search masks out.
    per_device = -(-self.num_vectors // len(devices))
    self._chunk = min(chunk_size, per_device)
    shard_rows = -(-per_device // self._chunk) * self._chunk
    self._table_rows = shard_rows * len(devices)
    self._table = jax.make_array_from_callback(
        (self._table_rows, self.dim),
        NamedSharding(self._mesh, P(_ROWS, None)), self._padded_rows)
    self._queries_sharding = NamedSharding(self._mesh, P())

  def _padded_rows(self, index) -> np.ndarray:
    start, stop, _ = index[0].indices(self._table_rows)
    block = np.asarray(self._embeddings[start:stop], np.float32)
    padding = (stop - start) - block.shape[0]
    # Only the last shards need padding: the others go to the device
    # straight from the (memory-mapped) rows, without a host copy first.
    return np.pad(block, ((0, padding), (0, 0))) if padding else block

  def search(self, queries, k):
    return self.dispatch_search(queries, k)()

  def dispatch_search(self, queries, k):
    queries = self._check_queries(queries, k, on_device=True)
    pad = np.pad if isinstance(queries, np.ndarray) else jnp.pad
    # Batches of a power-of-two size (at most query_batch_size): few shapes,
    # so few compilations, and small requests are not padded to a big batch.
    batch = min(self.query_batch_size,
                1 << max(0, math.ceil(math.log2(max(1, len(queries))))))
    pending = []
    for start in range(0, len(queries), batch):
      chunk = queries[start:start + batch]
      padded = pad(chunk, ((0, batch - len(chunk)), (0, 0)))
      pending.append((len(chunk), _exact_search(
          self._table, jax.device_put(padded.astype(np.float32),
                                      self._queries_sharding), k=k,
          chunk_size=self._chunk, num_vectors=self.num_vectors,
          mesh=self._mesh)))

    def result():
      if not pending:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
      return (np.concatenate([np.asarray(ids)[:n].astype(np.int64)
                              for n, (_, ids) in pending]),
              np.concatenate([np.asarray(scores)[:n]
                              for n, (scores, _) in pending]))
    return result

  def save(self, directory):
    directory = epath.Path(directory)
    return [self._save_embeddings(directory), self._write_metadata(
        directory, chunk_size=self.chunk_size,
        query_batch_size=self.query_batch_size)]

  @classmethod
  def load(cls, directory: epath.Path, metadata: dict, devices=None):
    return cls(_load_embeddings(directory), metadata['chunk_size'],
               metadata['query_batch_size'], devices)


def _load_embeddings(directory: epath.Path) -> np.ndarray:
  path = directory / EMBEDDINGS_FILE
  if corpus_lib.is_remote(path):  # remote: read it whole
    with path.open('rb') as f:
      return np.load(f)
  # Local: memory-mapped; rows are read as they are used.
  return np.load(os.fspath(path), mmap_mode='r')


# -- ScaNN ---------------------------------------------------------------------


def _scann_num_leaves(num_vectors: int, config) -> int:
  if config.num_leaves:
    return min(config.num_leaves, num_vectors)
  return max(1, min(SCANN_MAX_LEAVES, round(math.sqrt(num_vectors))))


class ScannIndex(MipsIndex):
  """ScaNN: tree of k-means leaves, AH scoring, exact reordering."""

  kind = 'scann'

  def __init__(self, searcher, embeddings: np.ndarray, settings: dict):
    self._searcher = searcher
    # Kept beside ScaNN's own files for `vectors` (fine-tuning).
    self._embeddings = embeddings
    self.num_vectors, self.dim = embeddings.shape
    self.settings = settings

  @classmethod
  def build(cls, embeddings: np.ndarray, config):
    num_vectors, dim = embeddings.shape
    if num_vectors < SCANN_MIN_VECTORS:
      raise ValueError(
          f'index.kind: scann needs at least {SCANN_MIN_VECTORS} vectors to '
          f'train its quantizer, got {num_vectors}; use kind=exact or auto')
    leaves = _scann_num_leaves(num_vectors, config)
    settings = dict(
        num_leaves=leaves,
        num_leaves_to_search=min(leaves, config.num_leaves_to_search
                                 or math.ceil(0.75 * leaves)),
        reorder=config.reorder)
    # search() always passes k, the reorder size and the leaves to search;
    # the builder's values only apply to calls that do not.
    searcher = (
        scann.scann_ops_pybind.builder(
            np.ascontiguousarray(embeddings, np.float32), 10, 'dot_product')
        .tree(num_leaves=leaves,
              num_leaves_to_search=settings['num_leaves_to_search'],
              training_sample_size=config.training_sample_size)
        .score_ah(config.dims_per_block,
                  anisotropic_quantization_threshold=(
                      config.anisotropic_quantization_threshold),
                  training_sample_size=config.training_sample_size)
        .reorder(config.reorder or 200)
        .build())
    return cls(searcher, embeddings, settings)

  def search(self, queries, k):
    queries = self._check_queries(queries, k)
    if not len(queries):  # ScaNN rejects an empty batch
      return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    ids, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=k,
        pre_reorder_num_neighbors=max(k, self.settings['reorder']
                                      or max(200, 2 * k)),
        leaves_to_search=self.settings['num_leaves_to_search'])
    # ScaNN pads with (0, nan) when the searched leaves hold fewer than k
    # vectors; report those slots as (-1, -inf) rather than as row 0.
    missing = np.isnan(scores)
    return (np.where(missing, -1, ids.astype(np.int64)),
            np.where(missing, -np.inf, scores).astype(np.float32))

  def save(self, directory):
    directory = epath.Path(directory)
    scann_dir = directory / SCANN_DIR
    scann_dir.mkdir(parents=True, exist_ok=True)
    # Relative asset paths, so the version folder can be renamed into place.
    if not corpus_lib.is_remote(scann_dir):
      self._searcher.serialize(os.fspath(scann_dir), relative_path=True)
      names = sorted(os.listdir(os.fspath(scann_dir)))
    else:  # ScaNN writes local paths only: serialize there, then upload
      with tempfile.TemporaryDirectory(prefix='scann-') as local:
        self._searcher.serialize(local, relative_path=True)
        names = sorted(os.listdir(local))
        for name in names:
          corpus_lib.copy_file(os.path.join(local, name), scann_dir / name)
    return [f'{SCANN_DIR}/{name}' for name in names] + [
        self._save_embeddings(directory),
        self._write_metadata(directory, **self.settings)]

  @classmethod
  def load(cls, directory: epath.Path, metadata: dict):
    settings = {name: metadata[name] for name in (
        'num_leaves', 'num_leaves_to_search', 'reorder')}
    scann_dir = directory / SCANN_DIR
    if not corpus_lib.is_remote(scann_dir):
      searcher = scann.scann_ops_pybind.load_searcher(os.fspath(scann_dir))
    else:  # ScaNN reads local paths only; the loaded searcher is in memory
      with tempfile.TemporaryDirectory(prefix='scann-') as local:
        for path in scann_dir.iterdir():
          corpus_lib.copy_file(path, os.path.join(local, path.name))
        searcher = scann.scann_ops_pybind.load_searcher(local)
    return cls(searcher, _load_embeddings(directory), settings)


# -- entry points --------------------------------------------------------------


def build_index(embeddings: np.ndarray, config: ml_collections.ConfigDict,
                devices=None) -> MipsIndex:
  """An index over the rows of `embeddings` (float32 [N, D]).

  `devices` (default: this process's) hold the exact index; ScaNN runs on
  the host.
  """
  validate_config(config)
  if embeddings.ndim != 2 or embeddings.shape[0] < 1:
    raise ValueError(f'embeddings: shape {embeddings.shape}, expected '
                     '[num_vectors >= 1, dim]')
  kind = config.kind
  if kind == 'auto':
    kind = 'exact' if len(embeddings) <= config.exact_max_vectors else 'scann'
  if kind == 'scann':
    return ScannIndex.build(embeddings, config)
  return ExactIndex(embeddings, config.exact_chunk_size,
                    config.exact_query_batch_size, devices)


def load_index(directory: epath.PathLike, devices=None) -> MipsIndex:
  """The index `save` wrote to `directory`."""
  directory = epath.Path(directory)
  metadata = json.loads((directory / METADATA_FILE).read_text())
  if metadata['kind'] == 'exact':
    return ExactIndex.load(directory, metadata, devices)
  if metadata['kind'] == 'scann':
    return ScannIndex.load(directory, metadata)
  raise ValueError(f'{directory / METADATA_FILE}: unknown kind '
                   f'{metadata["kind"]!r}')
