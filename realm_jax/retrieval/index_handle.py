"""The trainer's view of WORKDIR/index: hot-swapped without stopping.

A background thread polls the LATEST pointer; when it names a new version,
the thread loads and verifies it (checksums, shapes) off the training
thread, at the lowest CPU priority (so on a busy host it takes the cycles
the training step leaves idle instead of slowing the step), and parks it.
The trainer calls `maybe_swap()` between steps, which makes the parked
version current: a reference swap, no I/O, no stall.
A version without its commit object (manifest.json), partial or corrupt
is logged and never loaded; the handle keeps serving the version it has.
On a bucket it loads from a local copy verified against the manifest.
"""
import os
import socket
import threading
import time

from absl import logging
from etils import epath
import numpy as np

from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips


class IndexHandle:
  """Serves searches from the newest verified index version."""

  def __init__(self, index_dir: epath.PathLike, poll_seconds: float = 10.0,
               devices=None, reader_id: str | None = None):
    self.store = index_store.IndexStore(index_dir)
    self._poll_seconds = poll_seconds
    self._devices = devices
    self._reader_id = reader_id or f'{socket.gethostname()}-{os.getpid()}'
    self._current = None  # (index, manifest)
    self._pending = None
    self._retired = None  # the swapped-out version, freed off the hot path
    self._rejected = set()  # versions that failed verification
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None

  # -- the background loader -------------------------------------------------

  def start(self) -> 'IndexHandle':
    self._thread = threading.Thread(target=self._poll_loop, daemon=True,
                                    name='index-handle')
    self._thread.start()
    return self

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def _poll_loop(self) -> None:
    _lower_thread_priority()
    while not self._stop.is_set():
      self.refresh()
      self._stop.wait(self._poll_seconds)

  def refresh(self) -> bool:
    """Loads the version LATEST names if it is new; True if one was parked.

    Also does the bookkeeping a swap leaves, off the training thread: frees
    the swapped-out version and renews the lease on the versions held.
    """
    self._retired = None
    self._renew_lease()
    try:
      pointer = self.store.pointer()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Cannot read the index pointer: %s', e)
      return False
    if pointer is None:
      return False
    version = pointer['version']
    with self._lock:
      known = {v[1]['version'] for v in (self._current, self._pending) if v}
    if version in known or version in self._rejected:
      return False
    try:
      loaded = self.store.load(version, devices=self._devices)
    except Exception as e:  # pylint: disable=broad-except
      # Uncommitted, corrupt or half-deleted: keep serving what we have.
      # Other errors (a bucket's network) are retried at the next poll.
      logging.error('Refusing index version %s: %s', version, e)
      if isinstance(e, index_store.IndexVersionError):
        self._rejected.add(version)
      return False
    with self._lock:
      self._pending = loaded
    self._renew_lease()
    logging.info('Loaded index %s (checkpoint step %d)', version,
                 loaded[1]['checkpoint_step'])
    return True

  # -- the training thread ---------------------------------------------------

  def maybe_swap(self) -> bool:
    """Makes a parked version current: a reference swap, no I/O. Call
    between train steps."""
    with self._lock:
      if self._pending is None:
        return False
      self._retired = self._current
      self._current, self._pending = self._pending, None
    return True

  def _renew_lease(self) -> None:
    """Protects the current and parked versions from the builder's cleanup
    (a lease naming a version just swapped out only over-protects)."""
    with self._lock:
      held = {v[1]['version'] for v in (self._current, self._pending) if v}
    if held:
      self.store.write_lease(self._reader_id, held)

  def wait_until_ready(self, timeout_seconds: float) -> None:
    """Blocks until a version is current (e.g. the first one at start)."""
    if not self.wait_for_checkpoint(None, timeout_seconds):
      raise TimeoutError(f'no index version in {self.store.directory} '
                         f'after {timeout_seconds} s')

  def wait_for_checkpoint(self, min_step: int | None,
                          timeout_seconds: float) -> bool:
    """Blocks until the current version was embedded from a checkpoint at
    min_step or later (None: any version), swapping in parked versions.
    False if none came within the timeout. Call between train steps."""
    deadline = time.time() + timeout_seconds
    while True:
      self.maybe_swap()
      step = self.checkpoint_step
      if step is not None and (min_step is None or step >= min_step):
        return True
      if time.time() > deadline:
        return False
      if self._thread is None:
        self.refresh()
      time.sleep(0.05)

  @property
  def manifest(self) -> dict | None:
    current = self._current
    return None if current is None else current[1]

  @property
  def checkpoint_step(self) -> int | None:
    """The checkpoint step the current index was embedded with."""
    manifest = self.manifest
    return None if manifest is None else manifest['checkpoint_step']

  def served(self) -> tuple[mips.MipsIndex, int]:
    """The current version's index and the checkpoint step it was embedded
    with, read together (a swap cannot come between them)."""
    current = self._current
    if current is None:
      raise RuntimeError(f'no index loaded from {self.store.directory} yet')
    return current[0], current[1]['checkpoint_step']

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray,
                                                        np.ndarray]:
    """(ids, scores) of the top k blocks from the current version."""
    return self.served()[0].search(queries, k)


def _lower_thread_priority() -> None:
  """Gives the calling thread the lowest CPU priority (nice 19).

  On Linux a nice value belongs to a thread, not the process: the loader's
  checksums and copies then run when the training step's threads leave a
  core idle. Elsewhere (or if refused) the thread keeps its priority.
  """
  try:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
  except (AttributeError, OSError) as e:
    logging.info('Index loader keeps its CPU priority: %s', e)
