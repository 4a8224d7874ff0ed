"""Publishing index versions, verifying them, and the hot-swapping handle."""
import os
import threading
import time

import numpy as np
import pytest

from realm_jax.retrieval import index_handle
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips

DIM = 16


def _exact(embeddings):
  config = mips.index_config()
  config.kind = 'exact'
  return mips.build_index(embeddings, config)


def _version_embeddings(step, n=40):
  """Block i of version `step` is basis vector (i + step) % DIM, scaled so
  that the query e_0 finds exactly one block: a version's fingerprint."""
  embeddings = np.zeros((n, DIM), np.float32)
  for i in range(n):
    embeddings[i, (i + step) % DIM] = 1.0 + i / n
  return embeddings


def _expected_top1(step, n=40):
  rows = [i for i in range(n) if (i + step) % DIM == 0]
  return max(rows)  # the largest scale wins


def _publish(store, step):
  embeddings = _version_embeddings(step)
  return store.publish(step, _exact(embeddings), embeddings[:8],
                       dict(note='test'))


QUERY = np.eye(DIM, dtype=np.float32)[:1]


def test_publish_then_load(tmp_path):
  store = index_store.IndexStore(tmp_path / 'index')
  assert store.pointer() is None and store.latest_step() is None
  version = _publish(store, 7)
  assert store.pointer() == {'version': version, 'checkpoint_step': 7}
  index, manifest = store.load(version)
  assert manifest['num_blocks'] == 40 and manifest['dim'] == DIM
  assert manifest['kind'] == 'exact' and manifest['note'] == 'test'
  assert set(manifest['files']) and all(
      len(f['sha256']) == 64 for f in manifest['files'].values())
  ids, _ = index.search(QUERY, k=1)
  assert ids[0, 0] == _expected_top1(7)
  assert not store.building_dir(7).joinpath('index').exists()


def test_corrupt_version_is_refused(tmp_path):
  store = index_store.IndexStore(tmp_path / 'index')
  version = _publish(store, 1)
  name = next(iter(store.read_manifest(version)['files']))
  path = store.version_dir(version) / name
  data = bytearray(path.read_bytes())
  data[-1] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(index_store.IndexVersionError, match='checksum'):
    store.load(version)
  path.unlink()
  with pytest.raises(index_store.IndexVersionError, match='missing'):
    store.load(version)


def test_handle_keeps_serving_when_new_version_is_corrupt(tmp_path):
  store = index_store.IndexStore(tmp_path / 'index')
  _publish(store, 1)
  handle = index_handle.IndexHandle(tmp_path / 'index')
  handle.wait_until_ready(10)
  assert handle.checkpoint_step == 1
  # A new version whose file is damaged after publishing.
  version = _publish(store, 2)
  name = next(iter(store.read_manifest(version)['files']))
  (store.version_dir(version) / name).write_bytes(b'garbage')
  assert not handle.refresh() and not handle.maybe_swap()
  assert handle.checkpoint_step == 1
  assert handle.search(QUERY, 1)[0][0, 0] == _expected_top1(1)
  # The next good version is taken.
  _publish(store, 3)
  assert handle.refresh() and handle.maybe_swap()
  assert handle.checkpoint_step == 3
  assert handle.search(QUERY, 1)[0][0, 0] == _expected_top1(3)


def test_handle_waits_for_an_index_of_a_given_checkpoint(tmp_path):
  store = index_store.IndexStore(tmp_path / 'index')
  _publish(store, 5)
  handle = index_handle.IndexHandle(tmp_path / 'index', poll_seconds=0.05)
  handle.start()
  try:
    assert handle.wait_for_checkpoint(None, 10)
    assert handle.checkpoint_step == 5
    assert handle.wait_for_checkpoint(5, 0)  # already current: no wait
    started = time.time()
    assert not handle.wait_for_checkpoint(9, 0.3)  # none comes: False
    assert time.time() - started >= 0.3 and handle.checkpoint_step == 5
    # A builder publishes step 7, then 9, while the trainer waits for >= 8.
    publisher = threading.Timer(
        0.2, lambda: (_publish(store, 7), time.sleep(0.2), _publish(store, 9)))
    publisher.start()
    assert handle.wait_for_checkpoint(8, 30)
    assert handle.checkpoint_step == 9
    assert handle.search(QUERY, 1)[0][0, 0] == _expected_top1(9)
    publisher.join()
  finally:
    handle.close()


def test_handle_loads_at_the_lowest_cpu_priority(tmp_path):
  """The loader thread (checksums, copies) runs at nice 19, the training
  thread keeps its own priority: loads take idle cycles, not the step's."""
  store = index_store.IndexStore(tmp_path / 'index')
  _publish(store, 3)
  before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
  handle = index_handle.IndexHandle(tmp_path / 'index', poll_seconds=0.05)
  handle.start()
  try:
    assert handle.wait_for_checkpoint(3, 10)
    loader = handle._thread.native_id  # pylint: disable=protected-access
    assert os.getpriority(os.PRIO_PROCESS, loader) == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    assert handle.search(QUERY, 1)[0][0, 0] == _expected_top1(3)
  finally:
    handle.close()


def test_crash_before_the_pointer_flip_publishes_nothing(tmp_path,
                                                         monkeypatch):
  store = index_store.IndexStore(tmp_path / 'index')
  _publish(store, 1)

  def crash(*args, **kwargs):
    raise KeyboardInterrupt('simulated crash')
  for point in ('_check_search', 'atomic_write_text'):
    with monkeypatch.context() as patch:
      patch.setattr(index_store, point, crash)
      with pytest.raises(KeyboardInterrupt):
        _publish(store, 2)
    assert store.latest_step() == 1  # readers still see version 1 only
  # Publishing again after the crash completes the version.
  _publish(store, 2)
  assert store.latest_step() == 2
  store.load(index_store.version_name(2))


def test_retention_keeps_newest_pointer_and_leased(tmp_path):
  store = index_store.IndexStore(tmp_path / 'index')
  for step in range(1, 7):
    _publish(store, step)
  store.write_lease('trainer-0', [index_store.version_name(2)])
  deleted = store.delete_old_versions(keep=3, lease_ttl_seconds=60)
  assert deleted == [index_store.version_name(s) for s in (1, 3)]
  assert store.versions() == [index_store.version_name(s)
                              for s in (2, 4, 5, 6)]
  # An expired lease protects nothing.
  assert store.delete_old_versions(keep=3, lease_ttl_seconds=0) == [
      index_store.version_name(2)]


def test_reader_sees_only_complete_versions_while_publishing(tmp_path):
  """A training thread searching between steps while versions appear."""
  store = index_store.IndexStore(tmp_path / 'index')
  _publish(store, 0)
  handle = index_handle.IndexHandle(tmp_path / 'index',
                                    poll_seconds=0.01).start()
  handle.wait_until_ready(10)
  errors, seen = [], set()
  done = threading.Event()

  def train_loop():
    try:
      while not done.is_set():
        handle.maybe_swap()  # between steps
        step = handle.checkpoint_step
        ids, _ = handle.search(QUERY, 1)
        assert ids[0, 0] == _expected_top1(step), (step, ids)
        seen.add(step)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  reader = threading.Thread(target=train_loop)
  reader.start()
  for step in range(1, 7):
    _publish(store, step)
    store.delete_old_versions(keep=2, lease_ttl_seconds=60)
    time.sleep(0.1)
  time.sleep(0.3)
  done.set()
  reader.join()
  handle.close()
  assert not errors, errors
  assert len(seen) >= 3 and max(seen) == 6
