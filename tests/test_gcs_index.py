"""Index versions and checkpoints in a gs:// workspace, through the offline
Cloud Storage emulator: a version counts only once its manifest.json (the
commit object, uploaded last) exists and matches; readers load a verified
local copy; orbax checkpoints go through TensorStore's gcs driver."""
import json
import os
import signal
import subprocess
import sys
import textwrap

from etils import epath
from flax import nnx
import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CONFIGS, REPO_ROOT
import gcs_emulator
import kill_at
from realm_jax import checkpointing
from realm_jax import corpus as corpus_lib
from realm_jax.retrieval import builder as builder_lib
from realm_jax.retrieval import embedding
from realm_jax.retrieval import index_handle
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips
from realm_jax.retrieval import workspace
from test_ict import _ict_config

DIM = 16


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """$REALM_CACHE (staging and local copies), and a clean cwd: a mangled
  gs:// path would show up there as a `gs:` folder."""
  path = tmp_path / 'cache'
  monkeypatch.setenv('REALM_CACHE', str(path))
  monkeypatch.chdir(tmp_path)
  yield path
  assert not (tmp_path / 'gs:').exists()


def _objects(root: str) -> set[str]:
  gcs_emulator.invalidate()
  prefix = root.removeprefix('gs://')
  return {name[len(prefix) + 1:]
          for name in fsspec.filesystem('gs').find(prefix)}


def _embeddings(step, n=64):
  return np.random.default_rng(step).normal(size=(n, DIM)).astype(np.float32)


def _index(embeddings, kind='exact'):
  config = mips.index_config()
  config.kind = kind
  return mips.build_index(embeddings, config)


def _publish(store, step, kind='exact'):
  embeddings = _embeddings(step)
  return store.publish(step, _index(embeddings, kind), embeddings[:8],
                       dict(note='test'))


def _top1(step, queries):
  """The exact best block of version `step` for each query."""
  return np.argmax(queries @ _embeddings(step).T, axis=1)


QUERIES = np.random.default_rng(99).normal(size=(6, DIM)).astype(np.float32)


def _handle(index_dir):
  handle = index_handle.IndexHandle(index_dir, reader_id='trainer-0')
  handle.wait_until_ready(30)
  return handle


class _Killed(BaseException):
  """The builder's process dying."""


@pytest.mark.parametrize('kind', ['exact', 'scann'])
def test_publish_on_bucket_serves_as_local(gcs_bucket, cache, tmp_path,
                                           kind):
  index_dir = f'{gcs_bucket}/w/index'
  # One build published twice: two ScaNN builds of the same vectors may
  # partition differently and so answer differently.
  embeddings = _embeddings(3)
  index = _index(embeddings, kind)
  version = index_store.IndexStore(index_dir).publish(
      3, index, embeddings[:8], dict(note='test'))
  index_store.IndexStore(tmp_path / 'index').publish(
      3, index, embeddings[:8], dict(note='test'))
  objects = _objects(index_dir)
  manifest = json.loads(epath.Path(index_dir, version,
                                   index_store.MANIFEST).read_text())
  assert manifest['kind'] == kind
  assert objects == {index_store.POINTER} | {
      f'{version}/{name}' for name in [index_store.MANIFEST,
                                       *manifest['files']]}
  if kind == 'scann':
    assert any(name.startswith('scann/') for name in manifest['files'])
  assert not list(cache.glob('.staging-*'))  # the staging folder is gone

  remote, local = _handle(index_dir), _handle(tmp_path / 'index')
  assert remote.checkpoint_step == local.checkpoint_step == 3
  queries = np.random.default_rng(9).normal(size=(20, DIM)).astype(
      np.float32)
  ids, scores = remote.search(queries, 5)
  expected_ids, expected_scores = local.search(queries, 5)
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
  # Served from a verified local copy (memory maps, ScaNN's local files).
  assert len(list(cache.glob(f'index-*/{version}-*'))) == 1


def test_version_without_its_commit_is_never_loaded(gcs_bucket, cache,
                                                    monkeypatch):
  index_dir = f'{gcs_bucket}/w/index'
  store = index_store.IndexStore(index_dir)
  _publish(store, 1)
  handle = _handle(index_dir)
  copy_file = corpus_lib.copy_file

  def dying_copy(source, destination):
    if epath.Path(destination).name == index_store.MANIFEST:
      raise _Killed()  # every index object is uploaded, the commit is not
    copy_file(source, destination)

  with monkeypatch.context() as patch:
    patch.setattr(corpus_lib, 'copy_file', dying_copy)
    with pytest.raises(_Killed):
      _publish(store, 2)
  version = index_store.version_name(2)
  left = {name for name in _objects(index_dir) if name.startswith(version)}
  assert f'{version}/{mips.EMBEDDINGS_FILE}' in left
  assert f'{version}/{index_store.MANIFEST}' not in left
  assert store.latest_step() == 1 and store.versions() == [
      index_store.version_name(1)]
  assert not handle.refresh() and handle.checkpoint_step == 1
  with pytest.raises(index_store.IndexVersionError, match='missing'):
    store.load(version)  # even when asked for it by name
  # Publishing again (the builder's restart) completes the version.
  assert _publish(store, 2) == version
  assert handle.refresh() and handle.maybe_swap()
  assert handle.checkpoint_step == 2
  np.testing.assert_array_equal(handle.search(QUERIES, 1)[0][:, 0],
                                _top1(2, QUERIES))


@pytest.mark.parametrize('where', ['local', 'bucket'])
def test_restart_saves_again_a_folder_without_its_commit(gcs_bucket, cache,
                                                         tmp_path, where):
  """The old publish skipped saving when the folder existed, then failed
  its checksum check forever."""
  index_dir = (f'{gcs_bucket}/w/index' if where == 'bucket'
               else tmp_path / 'index')
  store = index_store.IndexStore(index_dir)
  version = _publish(store, 2)
  # A killed upload (or a half-copied folder): everything but the commit.
  (store.version_dir(version) / index_store.MANIFEST).unlink()
  epath.Path(index_dir, index_store.POINTER).unlink()
  gcs_emulator.invalidate()
  assert _publish(store, 2) == version
  assert store.latest_step() == 2
  store.load(version)


def test_corrupt_newest_version_is_refused(gcs_bucket, cache):
  index_dir = f'{gcs_bucket}/w/index'
  store = index_store.IndexStore(index_dir)
  _publish(store, 1)
  handle = _handle(index_dir)
  version = _publish(store, 2)
  path = store.version_dir(version) / mips.EMBEDDINGS_FILE
  data = bytearray(path.read_bytes())
  data[-1] ^= 0xFF
  path.write_bytes(bytes(data))
  gcs_emulator.invalidate()
  assert not handle.refresh() and not handle.maybe_swap()
  assert handle.checkpoint_step == 1
  np.testing.assert_array_equal(handle.search(QUERIES, 1)[0][:, 0],
                                _top1(1, QUERIES))
  assert not list(cache.glob(f'index-*/*{version}*'))  # no copy kept
  _publish(store, 3)
  assert handle.refresh() and handle.maybe_swap()
  assert handle.checkpoint_step == 3


PUBLISH = textwrap.dedent(f'''
    import sys
    import numpy as np
    from realm_jax.retrieval import index_store, mips
    directory, step = sys.argv[1], int(sys.argv[2])
    embeddings = np.random.default_rng(step).normal(size=(64, {DIM}))
    embeddings = embeddings.astype(np.float32)
    index_store.IndexStore(directory).publish(step, mips.build_index(
        embeddings, mips.index_config()), embeddings[:8], dict(note='test'))
''')


def _subprocess_env():
  """This process's environment (the emulator's settings included)."""
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO_ROOT),
              XLA_FLAGS='--xla_force_host_platform_device_count=1')


def test_a_reader_sees_what_another_process_published(gcs_bucket, cache):
  """The trainer and the builder are different processes. gcsfs caches
  directory listings in-process, by default forever: once index/ had been
  listed, LATEST rewritten by the builder read with its old size
  (truncated JSON), and the trainer never swapped again. realm_jax turns
  that cache off; nothing here invalidates it by hand."""
  del cache
  index_dir = f'{gcs_bucket}/w/index'
  store = index_store.IndexStore(index_dir)
  _publish(store, 1)
  handle = _handle(index_dir)
  assert store.versions() == [index_store.version_name(1)]  # lists index/
  # Step 12: a LATEST one byte longer than step 1's.
  subprocess.run([sys.executable, '-c', PUBLISH, index_dir, '12'],
                 env=_subprocess_env(), check=True, timeout=300)
  assert store.pointer()['checkpoint_step'] == 12
  assert handle.refresh() and handle.maybe_swap()
  assert handle.checkpoint_step == 12
  np.testing.assert_array_equal(handle.search(QUERIES, 1)[0][:, 0],
                                _top1(12, QUERIES))


def test_chunk_counts_only_when_complete(gcs_bucket, tmp_path):
  for directory in (epath.Path(gcs_bucket) / 'building', epath.Path(tmp_path)):
    vectors = _embeddings(0, n=10)
    index_store.write_chunk(directory, 0, vectors)
    assert index_store.chunk_done(directory, 0)
    np.testing.assert_array_equal(index_store.read_chunks(directory, [0]),
                                  vectors)
    data = directory / 'chunk-00000.npy'
    data.write_bytes(data.read_bytes()[:-4])  # truncated data
    gcs_emulator.invalidate()
    assert not index_store.chunk_done(directory, 0)
    index_store.write_chunk(directory, 1, vectors)
    (directory / 'chunk-00001.npy').unlink()  # marker without its data
    gcs_emulator.invalidate()
    assert not index_store.chunk_done(directory, 1)


# -- checkpoints and the builder on a bucket -----------------------------------


def _train_state(model_config, scale):
  graphdef, state = nnx.split(embedding.create_doc_tower(model_config))
  del graphdef
  tower = jax.tree.map(lambda x: x * scale, nnx.to_pure_dict(state))
  return dict(step=jnp.int32(0), params=dict(
      retriever=dict(doc_tower=tower), reader=dict(w=jnp.ones((3, 4)))),
              opt_state=dict(mu=jnp.zeros((3, 4))))


def test_ocdbt_database_on_bucket_takes_later_commits(gcs_bucket):
  # Each write after the first reads the manifest back with its generation
  # (orbax's saves do so whenever a save's writes commit in two batches).
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  database = dict(driver='ocdbt', base=f'{gcs_bucket}/db/')
  for i in range(3):
    array = ts.open(dict(driver='zarr', kvstore=dict(database, path=f'a{i}'),
                         metadata=dict(shape=[4], dtype='<f4')),
                    create=True).result()
    array.write(np.arange(4, dtype=np.float32) + i).result()
  for i in range(3):
    array = ts.open(dict(driver='zarr',
                         kvstore=dict(database, path=f'a{i}'))).result()
    np.testing.assert_array_equal(array.read().result(), np.arange(4) + i)


def test_checkpoints_on_bucket(gcs_bucket):
  model_config = _ict_config().model
  directory = f'{gcs_bucket}/w/checkpoints'
  manager = checkpointing.make_manager(
      directory, checkpointing.checkpoint_config(every_steps=1))
  states = {step: _train_state(model_config, 1.0 + step)
            for step in (1, 2)}
  for step, state in states.items():
    assert checkpointing.save(manager, step, state, dict(position=step))
  manager.wait_until_finished()
  assert any(name.startswith('2/state/') for name in _objects(directory))

  reader = checkpointing.make_manager(directory, read_only=True,
                                      this_process_only=True)
  assert reader.all_steps() == [1, 2]
  restored, data = checkpointing.restore(
      reader, 2, checkpointing.abstract(states[2]))
  assert data == dict(position=2)
  jax.tree.map(np.testing.assert_array_equal, restored, states[2])
  tower = checkpointing.restore_subtree(
      reader, 1, workspace.DOC_TOWER_PATH,
      checkpointing.abstract(states[1]['params']['retriever']['doc_tower']))
  jax.tree.map(np.testing.assert_array_equal, tower,
               states[1]['params']['retriever']['doc_tower'])


def _builder_config(corpus_dir):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'index_builder_config', CONFIGS / 'index_builder.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  with config.unlocked():
    config.corpus_dir = str(corpus_dir)
    config.embed_batch_size = 8
    config.chunk_blocks = 64
  return config


def _indexed_at_step_1(gcs_bucket, corpus_dir):
  """(gs:// workdir, model config, its checkpoint manager): a trainer's
  config.json and checkpoint 1, indexed by an in-process builder."""
  workdir = epath.Path(f'{gcs_bucket}/w')
  model_config = _ict_config().model
  (workdir / workspace.CONFIG_FILE).write_text(json.dumps(
      dict(model=model_config.to_dict())))
  manager = checkpointing.make_manager(
      workdir / 'checkpoints', checkpointing.checkpoint_config(1))
  checkpointing.save(manager, 1, _train_state(model_config, 1.0), {})
  manager.wait_until_finished()
  builder_lib.Builder(_builder_config(corpus_dir), workdir).run(once=True)
  return workdir, model_config, manager


@pytest.mark.slow
def test_builder_on_bucket_completes_a_killed_publish(
    gcs_bucket, cache, tiny_corpus_workdir, monkeypatch):
  workdir, model_config, manager = _indexed_at_step_1(
      gcs_bucket, tiny_corpus_workdir / 'corpus')
  config = _builder_config(tiny_corpus_workdir / 'corpus')
  handle = _handle(workdir / 'index')
  assert handle.checkpoint_step == 1

  checkpointing.save(manager, 2, _train_state(model_config, 1.5), {})
  manager.wait_until_finished()
  copy_file = corpus_lib.copy_file

  def dying_copy(source, destination):
    if epath.Path(destination).name == index_store.MANIFEST:
      raise _Killed()
    copy_file(source, destination)

  with monkeypatch.context() as patch:
    patch.setattr(corpus_lib, 'copy_file', dying_copy)
    with pytest.raises(_Killed):
      builder_lib.Builder(config, workdir).run(once=True)
  store = index_store.IndexStore(workdir / 'index')
  version = index_store.version_name(2)
  assert f'{version}/{mips.EMBEDDINGS_FILE}' in _objects(
      f'{workdir}/index')
  assert store.latest_step() == 1 and not handle.refresh()

  builder_lib.Builder(config, workdir).run(once=True)  # the restart
  assert store.latest_step() == 2
  manifest = store.read_manifest(version)
  assert manifest['embedded_blocks'] == 0  # the chunks were kept
  assert handle.refresh() and handle.maybe_swap()
  assert handle.checkpoint_step == 2
  corpus = corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')
  assert manifest['num_blocks'] == len(corpus)


# In the order a build reaches them, each on the state the one before left
# (the builder indexes checkpoint 2 beside the served version of 1).
KILL_POINTS = (
    # the document tower restored, nothing embedded
    'realm_jax.checkpointing:restore_subtree:1:after',
    # the first chunk and its marker, the second's data without its marker
    'etils.epath.abstract_path:Path.write_text:2:before:.done',
    # three more chunks complete
    'realm_jax.retrieval.index_store:write_chunk:3:after',
    # every chunk complete, nothing built
    'realm_jax.retrieval.index_store:read_chunks:1:before',
    # the MIPS index built in memory, nothing saved
    'realm_jax.retrieval.mips:build_index:1:after',
    # saved and checked in the local staging folder, nothing uploaded
    'realm_jax.retrieval.index_store:_check_search:1:after',
    # the first index file uploaded
    'realm_jax.corpus:copy_file:1:after',
    # every index file uploaded, not the commit (manifest.json)
    'realm_jax.corpus:copy_file:1:before:manifest.json',
    # committed, LATEST still names version 1
    'realm_jax.corpus:copy_file:1:after:manifest.json',
    # LATEST is about to be written
    'realm_jax.retrieval.index_store:atomic_write_text:1:before:LATEST',
    # LATEST names version 2, the build's chunks are still there
    'realm_jax.retrieval.index_store:atomic_write_text:1:after:LATEST',
    # chunks removed, version 1 (past keep_versions=1) not deleted yet
    'realm_jax.retrieval.index_store:IndexStore.delete_old_versions:1:before',
)


@pytest.mark.slow
def test_builder_sigkilled_at_every_point_on_a_bucket(
    gcs_bucket, cache, tiny_corpus_workdir, caplog):
  """realm-index-builder on a gs:// workdir, SIGKILLed at 12 points of a
  build and restarted each time, beside a reader that polls LATEST all the
  while (as the trainer's handle does): the reader serves version 1 until
  version 2 is complete, never loads a partial version, and the last
  restart completes the build and its clean-up."""
  del cache
  corpus_dir = tiny_corpus_workdir / 'corpus'
  workdir, model_config, manager = _indexed_at_step_1(gcs_bucket, corpus_dir)
  checkpointing.save(manager, 2, _train_state(model_config, 1.5), {})
  manager.wait_until_finished()
  num_blocks = len(corpus_lib.Corpus(corpus_dir))
  chunk_blocks = num_blocks // 8 + 1  # 8 chunks: 1 + 1 + 3 + 3 in the kills
  command = [f'--config={CONFIGS}/index_builder.py:tiny',
             f'--workdir={workdir}', f'--config.corpus_dir={corpus_dir}',
             '--config.embed_batch_size=8',
             f'--config.chunk_blocks={chunk_blocks}',
             '--config.keep_versions=1', '--once']

  handle = index_handle.IndexHandle(workdir / 'index', poll_seconds=0.05,
                                    reader_id='trainer-0').start()
  handle.wait_until_ready(60)
  store = index_store.IndexStore(workdir / 'index')
  version = index_store.version_name(2)
  served = []
  try:
    for i, point in enumerate(KILL_POINTS):
      killed = subprocess.run(
          [sys.executable, '-c', kill_at.HARNESS, point,
           'index_builder.main', *command],
          env=_subprocess_env(), capture_output=True, text=True,
          timeout=600)
      assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
      assert f'SIGKILL at {point}' in killed.stderr
      committed, pointed = i >= 8, i >= 10
      assert store.latest_step() == (2 if pointed else 1), point
      if committed or pointed:
        store.verify_files(version)
      else:
        assert not store.is_committed(version), point
      if pointed:
        assert handle.wait_for_checkpoint(2, 60), point
      handle.maybe_swap()
      served.append(handle.checkpoint_step)
      ids, scores = handle.search(QUERIES, 4)  # serving, whole
      assert ids.shape == (6, 4) and np.isfinite(scores).all()
      if i == 10:  # the restart completes what the kill left undone
        assert store.building_dir(2).exists()
    assert served == [1] * 10 + [2] * 2
    assert not store.building_dir(2).exists()
    assert store.versions() == [index_store.version_name(1), version]

    restart = subprocess.run(
        [sys.executable, '-m', 'index_builder.main', *command],
        env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert restart.returncode == 0, restart.stderr[-3000:]
  finally:
    handle.close()
  assert 'Refusing index version' not in caplog.text
  assert store.latest_step() == 2 and store.versions() == [version]
  objects = _objects(f'{workdir}/index')
  assert not any(name.startswith(('building/', 'step-00000001'))
                 for name in objects), objects
  manifest = store.verify_files(version)
  assert manifest['num_blocks'] == num_blocks
  index, _ = store.load(version)
  np.testing.assert_array_equal(handle.search(QUERIES, 4)[0],
                                index.search(QUERIES, 4)[0])


@pytest.mark.slow
def test_pretrain_sigkilled_mid_checkpoint_save_on_a_bucket(
    gcs_bucket, cache, tiny_corpus_workdir):
  """realm-pretrain on a gs:// workdir, beside a builder, SIGKILLed while
  its step-10 checkpoint is being written (orbax's asynchronous save in
  flight): the restart resumes from step 5, the last complete checkpoint,
  at its data position, and - the index refreshed in lockstep - repeats
  steps 6-10 with the killed run's very losses."""
  del cache
  workdir = f'{gcs_bucket}/pt'
  corpus_dir = tiny_corpus_workdir / 'corpus'
  flags = [f'--config={CONFIGS}/pretrain.py:tiny', f'--workdir={workdir}',
           f'--config.corpus_dir={corpus_dir}', '--config.batch_size=4',
           *[f'--config.model.{k}={v}' for k, v in dict(
               num_layers=1, hidden_size=32, num_heads=2,
               intermediate_size=64, projection_size=16,
               vocab_size=1000).items()],
           '--config.lengths.joint_len=128', '--config.num_train_steps=15',
           '--config.checkpoint.every_steps=5', '--config.log_every_steps=1',
           '--config.index.poll_seconds=0.2',
           '--config.index.refresh_every_steps=5']
  builder = subprocess.Popen(
      [sys.executable, '-m', 'index_builder.main',
       f'--config={CONFIGS}/index_builder.py:tiny', f'--workdir={workdir}',
       f'--config.corpus_dir={corpus_dir}', '--config.embed_batch_size=16',
       '--config.chunk_blocks=64', '--config.poll_seconds=0.2'],
      env=_subprocess_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    point = 'realm_jax.checkpointing:save:1:after:#1=10'
    killed = subprocess.run(
        [sys.executable, '-c', kill_at.HARNESS, point,
         'realm_jax.jobs.pretrain', *flags],
        env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert f'SIGKILL at {point}' in killed.stderr
    manager = checkpointing.make_manager(f'{workdir}/checkpoints',
                                         read_only=True)
    assert manager.latest_step() == 5
    restarted = subprocess.run(
        [sys.executable, '-m', 'realm_jax.jobs.pretrain', *flags],
        env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert builder.wait(timeout=300) == 0
  finally:
    builder.kill()
  rows = [json.loads(line) for line in epath.Path(
      f'{workdir}/logs/pretrain/metrics.jsonl').read_text().splitlines()]
  rows = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in rows] == [*range(1, 11), *range(6, 16)]
  assert [r['loss'] for r in rows[5:10]] == [r['loss'] for r in rows[10:15]]
  manager.reload()
  assert manager.restore(15).data == {'next_step': 15}
