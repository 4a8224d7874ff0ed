"""The index builder: keeps WORKDIR/index fresh while the trainer runs.

Loop: wait for a checkpoint newer than the newest index -> restore only the
document tower -> embed every block in resumable chunks (each host its
share, jitted and sharded over its local devices) -> build the MIPS index
-> publish it (save, checksum, verify, commit, flip LATEST) -> delete old
versions. Stops on WORKDIR/TRAINING_DONE once the last checkpoint is
indexed, or on SIGTERM (between batches; the build resumes on restart).

With `config.overlap_publish` the host part (read the chunks, build the
index, publish, delete) of version N runs on a background thread while the
devices embed a newer checkpoint, so a refresh costs max(embed, host part)
rather than their sum. One publish is in flight at a time (it is waited
for before the next one starts), so at most two versions' embeddings exist:
the one being published in memory, the next one in chunk files.

On several hosts (REALM_DISTRIBUTED=1) process 0 decides which checkpoint
to index; the others embed their share of the build it started (found under
index/building) and never build or publish. The hosts meet only through
those files: no collective or barrier, so one slow or restarted host delays
the build, never deadlocks it. `realm-index-builder` (index_builder/main.py)
runs `build_index_loop`; realm-finetune runs one build in-process.
"""
from concurrent import futures
import functools
import signal
import threading
import time

from absl import logging
from etils import epath
import jax
import ml_collections
import tqdm

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import sharding
from realm_jax.retrieval import embedding
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips
from realm_jax.retrieval import workspace


class Stopped(Exception):
  """SIGTERM arrived; the build so far is kept for the next run."""


class Builder:
  """One builder process; process 0 also builds and publishes the index."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = epath.Path(workdir)
    self.corpus = corpus_lib.Corpus(config.corpus_dir or
                                     self.workdir / 'corpus')
    self.store = index_store.IndexStore(self.workdir / 'index')
    # Hosts restore independently (no orbax barriers): they coordinate
    # through the files under index/building only.
    self.checkpoints = checkpointing.make_manager(
        self.workdir / 'checkpoints', read_only=True, this_process_only=True)
    self.stop = threading.Event()
    config_lib.check(config.chunk_blocks >= config.embed_batch_size,
                     'chunk_blocks', f'{config.chunk_blocks} < '
                     f'embed_batch_size {config.embed_batch_size}')
    self.mesh = sharding.make_mesh(config.mesh, jax.local_devices())
    config_lib.validate_batch(config.embed_batch_size, 'embed_batch_size',
                              self.mesh.shape['data'])
    # Process 0's publish in flight: (checkpoint step, future).
    self._publishing: tuple[int, futures.Future] | None = None
    self._publisher = futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='publish')

  def run(self, once: bool = False) -> None:
    """Builds until TRAINING_DONE and the last checkpoint is indexed (or
    SIGTERM); with `once`, until the newest checkpoint is indexed. A
    publish still in flight is finished before it returns."""
    try:
      self._run(once)
    finally:
      try:
        self._finish_publish()
      finally:
        self._publisher.shutdown()

  def _indexed_step(self) -> int | None:
    """The newest index's step, counting the one being published; raises
    what a finished background publish raised."""
    if self._publishing is not None and self._publishing[1].done():
      self._finish_publish()
    indexed = self.store.latest_step()
    if self._publishing is not None:
      indexed = max(indexed or 0, self._publishing[0])
    return indexed

  def _finish_publish(self) -> None:
    """Waits for the publish in flight (if any), re-raising its error."""
    if self._publishing is not None:
      step, publishing = self._publishing
      self._publishing = None
      try:
        publishing.result()
      except Exception as e:
        # Not a FileNotFoundError: run() reads those as a deleted checkpoint.
        raise RuntimeError(f'Publishing the index of checkpoint {step} '
                           f'failed: {e!r}') from e

  def _run(self, once: bool) -> None:
    leader = jax.process_index() == 0
    if leader:
      self._tidy()
    target = None  # with once: the checkpoint this run indexes
    waiting_since = None  # the state last announced as waited on
    while not self.stop.is_set():
      # Read the marker before the checkpoints: the trainer writes it after
      # its last checkpoint, so that checkpoint is then surely listed.
      training_done = workspace.training_done(self.workdir)
      step = self._newest_checkpoint()
      indexed = self._indexed_step()
      caught_up = step is None or (indexed is not None and indexed >= step)
      if leader and not caught_up:
        try:
          self.build(step)
        except FileNotFoundError:
          if step in self._checkpoint_steps():
            raise
          # The trainer keeps its newest checkpoints only: this one was
          # deleted under a slow build. Index the newest instead.
          logging.warning('Checkpoint %d was deleted while being indexed; '
                          'indexing the newest one instead', step)
          continue
        if once:
          return
        continue
      if not leader and self._follow(indexed):
        continue
      target = step if target is None else target
      if once and (leader or target is None or (
          indexed is not None and indexed >= target)):
        logging.info('Nothing (more) to build: newest checkpoint %s, newest '
                     'index %s', step, indexed)
        return
      if training_done and caught_up:
        self._finish_publish()
        logging.info('Training is done and checkpoint %s is indexed.', step)
        return
      if waiting_since != (step, indexed):
        waiting_since = (step, indexed)
        logging.info('Waiting for a new checkpoint: newest checkpoint %s, '
                     'newest index %s', step, indexed)
      self.stop.wait(self.config.poll_seconds)

  def _tidy(self) -> None:
    """What a builder killed after publishing left: the published build's
    chunks, and versions past keep_versions."""
    indexed = self.store.latest_step()
    if indexed is not None:
      self.store.delete_finished_builds(indexed)
      self.store.delete_old_versions(self.config.keep_versions,
                                     self.config.lease_ttl_seconds)

  def _checkpoint_steps(self) -> list[int]:
    """The trainer's checkpoint steps, read again. The trainer deletes old
    checkpoints while orbax lists them (it stats each listed step): a step
    that vanishes in between is a FileNotFoundError, and the listing is
    retried."""
    for attempt in range(6):
      try:
        self.checkpoints.reload()
        return list(self.checkpoints.all_steps())
      except FileNotFoundError as e:
        if attempt == 5:
          raise
        logging.info('A checkpoint was deleted while listed (%s); again', e)
        time.sleep(0.1 * (attempt + 1))

  def _newest_checkpoint(self) -> int | None:
    steps = self._checkpoint_steps()
    return max(steps) if steps else None

  def build(self, step: int) -> None:
    """Process 0: embeds its share, waits for the other hosts' chunks, then
    builds the index and publishes it (in the background with
    overlap_publish, after the previous publish has finished)."""
    start = time.time()
    logging.info('Building the index for checkpoint step %d', step)
    building = self.store.building_dir(step)
    # The build being published keeps its chunks until it is done.
    self.store.delete_stale_builds(keep_steps={step} | (
        {self._publishing[0]} if self._publishing else set()))
    building.mkdir(parents=True, exist_ok=True)
    chunks = self._chunks()
    embedded = self._embed_share(step, building, chunks)
    embed_seconds = time.time() - start
    self._wait_for_chunks(building, len(chunks))
    self._finish_publish()
    publish = functools.partial(self._publish, step, building, len(chunks),
                                start, embed_seconds, embedded)
    if self.config.overlap_publish:
      self._publishing = (step, self._publisher.submit(publish))
    else:
      publish()

  def _publish(self, step, building, num_chunks, start, embed_seconds,
               embedded) -> None:
    """The host part of a build: reads the chunks, builds the index,
    publishes it, deletes the chunks and old versions."""
    embeddings = index_store.read_chunks(building, range(num_chunks))
    build_start = time.time()
    index = mips.build_index(embeddings, self.config.index,
                             devices=jax.local_devices())
    build_seconds = time.time() - build_start
    corpus_manifest = self.corpus.manifest
    self.store.publish(step, index, embeddings[:16], dict(
        corpus_fingerprint=corpus_manifest['source'].get('fingerprint'),
        tokenizer_sha256=corpus_manifest['tokenizer']['sha256'],
        timings=dict(embed_s=embed_seconds, build_s=build_seconds,
                     total_s=time.time() - start),
        embedded_blocks=embedded,
        embedded_blocks_per_s=embedded / embed_seconds))
    building.rmtree()
    deleted = self.store.delete_old_versions(
        self.config.keep_versions, self.config.lease_ttl_seconds)
    logging.info('Index for step %d published in %.1f s; deleted %s', step,
                 time.time() - start, deleted)

  def _follow(self, indexed: int | None) -> bool:
    """Other processes: embeds this host's share of the build process 0 has
    started (the newest building folder past the index). True if it did."""
    steps = [s for s in self.store.build_steps()
             if indexed is None or s > indexed]
    if not steps:
      return False
    try:
      return self._embed_share(steps[-1], self.store.building_dir(steps[-1]),
                               self._chunks()) > 0
    except FileNotFoundError:  # process 0 dropped it for a newer checkpoint
      return True

  def _embed_share(self, step, building, chunks) -> int:
    """Embeds this host's unfinished chunks (c = process index mod hosts);
    returns how many blocks that was."""
    todo = [c for c in range(jax.process_index(), len(chunks),
                             jax.process_count())
            if not index_store.chunk_done(building, c)]
    if todo:
      self._embed_chunks(step, building, chunks, todo)
    return sum(chunks[c][1] - chunks[c][0] for c in todo)

  def _chunks(self) -> list[tuple[int, int]]:
    n, size = len(self.corpus), self.config.chunk_blocks
    return [(a, min(a + size, n)) for a in range(0, n, size)]

  @functools.cached_property
  def _tower(self):
    """(abstract tower params, jitted embed fn): made, and compiled, once."""
    model_config = workspace.read_config(self.workdir).model
    graphdef, abstract_params = sharding.abstract_model(
        lambda: embedding.create_doc_tower(model_config), self.mesh,
        self.config.axis_rules)
    return abstract_params, embedding.make_embed_fn(
        graphdef, self.mesh, self.config.axis_rules)

  def _embed_chunks(self, step, building, chunks, todo) -> None:
    abstract_params, embed_fn = self._tower
    params = checkpointing.restore_subtree(
        self.checkpoints, step, workspace.DOC_TOWER_PATH,
        abstract_params)
    batch_sharding = sharding.batch_sharding(self.mesh,
                                             self.config.axis_rules)
    total = sum(chunks[c][1] - chunks[c][0] for c in todo)
    with tqdm.tqdm(total=total, unit=' blocks', desc=f'embed step {step}',
                   mininterval=1) as progress:
      for c in todo:
        if self.stop.is_set():
          raise Stopped()
        a, b = chunks[c]
        vectors = embedding.embed_blocks(
            embed_fn, params, self.corpus, a, b,
            self.config.embed_batch_size, batch_sharding, progress)
        index_store.write_chunk(building, c, vectors)

  def _wait_for_chunks(self, building, num_chunks) -> None:
    deadline = time.time() + self.config.wait_for_hosts_seconds
    while not all(index_store.chunk_done(building, c)
                  for c in range(num_chunks)):
      if time.time() > deadline:
        raise TimeoutError(f'chunks missing in {building} after '
                           f'{self.config.wait_for_hosts_seconds} s')
      if self.stop.wait(1.0):
        raise Stopped()


def build_index_loop(config: ml_collections.ConfigDict, workdir: str,
                     once: bool = False) -> None:
  builder = Builder(config, workdir)
  signal.signal(signal.SIGTERM, lambda *_: builder.stop.set())
  try:
    builder.run(once=once)
  except Stopped:
    logging.info('Stopped by SIGTERM; the build resumes on restart.')
