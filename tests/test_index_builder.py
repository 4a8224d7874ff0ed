"""The index builder as a real process: build, kill, resume, stop."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import CONFIGS, REPO_ROOT, job_config
import kill_at
from realm_jax import checkpointing
from realm_jax.retrieval import workspace
from realm_jax import corpus as corpus_lib
from realm_jax.retrieval import builder as builder_lib
from realm_jax.retrieval import embedding
from realm_jax.jobs import ict
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips
from test_ict import _ict_config

CHUNK = 16  # blocks per embedding chunk: the tiny corpus makes ~10 chunks

# Real SIGKILLs (kill_at.py): after the 3rd embedding chunk is written,
# inside publish just before the version folder is renamed into place, or
# just before LATEST is written.
KILL_POINTS = dict(
    embedding='realm_jax.retrieval.index_store:write_chunk:3:after',
    before_rename='realm_jax.retrieval.index_store:_check_search:1:before',
    before_pointer=(
        'realm_jax.retrieval.index_store:atomic_write_text:1:before:LATEST'))


def _builder_command(workdir, *extra):
  return [f'--config={CONFIGS}/index_builder.py:tiny', f'--workdir={workdir}',
          '--config.embed_batch_size=8', f'--config.chunk_blocks={CHUNK}',
          '--config.poll_seconds=0.2', *extra]


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=2')


def _run_builder(workdir, *extra, check=True):
  return subprocess.run(
      [sys.executable, '-m', 'index_builder.main',
       *_builder_command(workdir, *extra)],
      cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300,
      check=check)


@pytest.fixture(scope='module')
def trained_workdir(tiny_corpus_workdir, tmp_path_factory):
  """A workdir with an ICT run of 2 steps (checkpoints 1 and 2)."""
  workdir = tmp_path_factory.mktemp('builder')
  (workdir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')
  config = _ict_config(num_train_steps=2)
  config.checkpoint.every_steps = 1
  ict.train_and_evaluate(config, str(workdir))
  return workdir


def _fresh_copy(trained_workdir, tmp_path):
  """Trainer outputs shared read-only; index/ private to the test."""
  workdir = tmp_path / 'w'
  workdir.mkdir()
  for name in ('corpus', 'checkpoints', 'config.json'):
    (workdir / name).symlink_to(trained_workdir / name)
  return workdir


def _direct_embeddings(workdir, step):
  """The doc tower of `step` applied to every block, without the builder."""
  model_config = ml_collections.ConfigDict(
      json.loads((workdir / 'config.json').read_text())['model'])
  graphdef, state = nnx.split(embedding.create_doc_tower(model_config))
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  params = checkpointing.restore_subtree(
      manager, step, workspace.DOC_TOWER_PATH,
      checkpointing.abstract(nnx.to_pure_dict(state)))
  tower = nnx.merge(graphdef, params)
  corpus = corpus_lib.Corpus(workdir / 'corpus')
  blocks = corpus.blocks(np.arange(len(corpus)))
  return np.asarray(tower(blocks['token_ids'], blocks['segment_ids'],
                          blocks['input_mask']))


@pytest.mark.slow
def test_build_once_publishes_the_newest_checkpoint(trained_workdir,
                                                    tmp_path):
  workdir = _fresh_copy(trained_workdir, tmp_path)
  _run_builder(workdir, '--once')
  store = index_store.IndexStore(workdir / 'index')
  assert store.latest_step() == 2
  index, manifest = store.load(index_store.version_name(2))
  corpus = corpus_lib.Corpus(workdir / 'corpus')
  assert manifest['num_blocks'] == len(corpus) == index.num_vectors
  assert manifest['tokenizer_sha256'] == corpus.manifest['tokenizer'][
      'sha256']
  assert manifest['embedded_blocks'] == len(corpus)
  # The index holds exactly what the checkpoint's doc tower computes.
  direct = _direct_embeddings(workdir, 2)
  indexed = np.load(store.version_dir(index_store.version_name(2)) /
                    mips.EMBEDDINGS_FILE)
  np.testing.assert_allclose(indexed, direct, rtol=1e-4, atol=1e-5)
  ids, scores = index.search(direct[:20], k=1)
  np.testing.assert_allclose(scores[:, 0], (direct[:20] @ direct.T).max(1),
                             rtol=1e-5)
  assert not (workdir / 'index' / 'building').exists() or not list(
      (workdir / 'index' / 'building').iterdir())
  # Nothing newer: a second --once does nothing.
  _run_builder(workdir, '--once')
  assert index_store.IndexStore(workdir / 'index').versions() == [
      index_store.version_name(2)]


@pytest.mark.slow
@pytest.mark.parametrize('point', ['embedding', 'before_rename',
                                   'before_pointer'])
def test_sigkill_never_exposes_a_partial_version(trained_workdir, tmp_path,
                                                 point):
  workdir = _fresh_copy(trained_workdir, tmp_path)
  killed = subprocess.run(
      [sys.executable, '-c', kill_at.HARNESS, KILL_POINTS[point],
       'index_builder.main', *_builder_command(workdir, '--once')],
      cwd=REPO_ROOT, env=_env(), capture_output=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  store = index_store.IndexStore(workdir / 'index')
  assert store.pointer() is None  # nothing visible to readers
  building = store.building_dir(2)
  done_chunks = sorted(building.glob('chunk-*.done'))
  if point == 'embedding':
    assert len(done_chunks) == 3

  _run_builder(workdir, '--once')
  assert store.latest_step() == 2
  manifest = store.verify_files(index_store.version_name(2))
  corpus = corpus_lib.Corpus(workdir / 'corpus')
  if point == 'embedding':  # resumed: the 3 finished chunks were kept
    assert manifest['embedded_blocks'] == len(corpus) - 3 * CHUNK
  elif point == 'before_rename':
    assert manifest['embedded_blocks'] == 0  # all chunks were on disk
  assert store.load(index_store.version_name(2))[0].num_vectors == len(
      corpus)


@pytest.mark.slow
def test_loop_stops_on_training_done_and_on_sigterm(trained_workdir,
                                                    tmp_path):
  workdir = _fresh_copy(trained_workdir, tmp_path)
  # The ICT run has finished (TRAINING_DONE is there): the loop indexes the
  # last checkpoint, then exits by itself.
  assert (trained_workdir / 'TRAINING_DONE').exists()
  (workdir / 'TRAINING_DONE').symlink_to(trained_workdir / 'TRAINING_DONE')
  _run_builder(workdir)
  assert index_store.IndexStore(workdir / 'index').latest_step() == 2

  # Without the marker it keeps polling until SIGTERM.
  (workdir / 'TRAINING_DONE').unlink()
  log = tmp_path / 'builder.log'
  with log.open('w') as stderr:
    process = subprocess.Popen(
        [sys.executable, '-m', 'index_builder.main',
         *_builder_command(workdir)],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr)
  # Signalled once it has found nothing new and polls (a fixed sleep raced
  # its start-up on a loaded machine: SIGTERM before the handler is set).
  deadline = time.time() + 180
  while 'Waiting for a new checkpoint' not in log.read_text():
    assert process.poll() is None, log.read_text()
    assert time.time() < deadline, log.read_text()
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=60) == 0, log.read_text()


def _builder_before_step_2(trained_workdir, tmp_path, **config_fields):
  """An in-process builder whose workdir has checkpoint 1 only; the test
  moves tmp_path/step-2 into its checkpoints as the trainer saving it."""
  workdir = tmp_path / 'w'
  workdir.mkdir()
  for name in ('corpus', 'config.json'):
    (workdir / name).symlink_to(trained_workdir / name)
  checkpoints = workdir / 'checkpoints'
  shutil.copytree(trained_workdir / 'checkpoints', checkpoints)
  shutil.move(checkpoints / '2', tmp_path / 'step-2')
  config = job_config('index_builder')
  config.embed_batch_size, config.chunk_blocks = 8, CHUNK
  config.update(config_fields)
  return builder_lib.Builder(config, workdir)


@pytest.mark.slow
def test_checkpoints_deleted_under_the_builder_are_skipped(
    trained_workdir, tmp_path, monkeypatch):
  """The trainer keeps only its newest checkpoints, deleting older ones as
  it saves, which races the builder: orbax's listing stats every step it
  listed, and a restore can find its step gone (both FileNotFoundError;
  seen on the learning bed). The builder lists again and indexes the
  newest checkpoint instead of dying."""
  builder = _builder_before_step_2(trained_workdir, tmp_path)
  workdir = tmp_path / 'w'
  checkpoints = workdir / 'checkpoints'

  reload, listings = builder.checkpoints.reload, []
  def racing_reload():
    listings.append(len(listings))
    if len(listings) == 1:  # a step deleted between orbax's list and stat
      raise FileNotFoundError(f'{checkpoints}/0')
    return reload()
  restore = checkpointing.restore_subtree
  def trainer_saves_and_deletes(manager, step, *args):
    if step == 1:  # the trainer saves step 2 and deletes step 1 meanwhile
      shutil.move(tmp_path / 'step-2', checkpoints / '2')
      shutil.rmtree(checkpoints / '1')
    return restore(manager, step, *args)
  monkeypatch.setattr(builder.checkpoints, 'reload', racing_reload)
  monkeypatch.setattr(checkpointing, 'restore_subtree',
                      trainer_saves_and_deletes)
  builder.run(once=True)
  store = index_store.IndexStore(workdir / 'index')
  assert store.latest_step() == 2 and store.versions() == [
      index_store.version_name(2)]
  assert len(listings) >= 3  # the failed listing, step 1's, step 2's
  assert not store.building_dir(1).exists()


@pytest.mark.slow
@pytest.mark.parametrize('overlap', [True, False])
def test_publish_overlaps_embedding_the_next_checkpoint(
    trained_workdir, tmp_path, monkeypatch, overlap):
  """With overlap_publish, version 1 is built and published on a thread
  while checkpoint 2 (saved meanwhile) is embedded; without it, in turn.
  Both publish exactly what each checkpoint's tower computes."""
  builder = _builder_before_step_2(trained_workdir, tmp_path,
                                   overlap_publish=overlap)
  workdir = tmp_path / 'w'
  checkpoints = workdir / 'checkpoints'
  (workdir / 'TRAINING_DONE').symlink_to(trained_workdir / 'TRAINING_DONE')

  events, embedding_2 = [], threading.Event()
  embed, publish = builder._embed_chunks, builder._publish  # pylint: disable=protected-access
  def embed_chunks(step, *args):
    events.append(f'embed {step}')
    if step == 2:
      embedding_2.set()
    embed(step, *args)
    if step == 1:  # the trainer saves step 2 meanwhile
      shutil.move(tmp_path / 'step-2', checkpoints / '2')
  def publish_and_wait(step, *args):
    events.append(f'publish {step}')
    if step == 1:  # overlapped, checkpoint 2's embedding starts meanwhile
      assert embedding_2.wait(timeout=60 if overlap else 2) == overlap
    publish(step, *args)
    events.append(f'published {step}')
  monkeypatch.setattr(builder, '_embed_chunks', embed_chunks)
  monkeypatch.setattr(builder, '_publish', publish_and_wait)
  builder.run()
  assert sorted(events) == sorted(
      f'{e} {s}' for e in ('embed', 'publish', 'published') for s in (1, 2))
  order = events.index
  assert order('embed 1') < order('publish 1') < order('published 1')
  assert order('embed 2') < order('publish 2') < order('published 2')
  assert order('published 1') < order('publish 2')  # one at a time
  if overlap:
    assert order('embed 2') < order('published 1')
  else:
    assert order('published 1') < order('embed 2')
  store = index_store.IndexStore(workdir / 'index')
  assert store.versions() == [index_store.version_name(1),
                              index_store.version_name(2)]
  assert store.latest_step() == 2
  assert not store.build_steps()  # every build's chunks are gone
  for step in (1, 2):
    np.testing.assert_allclose(
        np.load(store.version_dir(index_store.version_name(step)) /
                mips.EMBEDDINGS_FILE),
        _direct_embeddings(workdir, step), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_failed_background_publish_stops_the_builder(
    trained_workdir, tmp_path, monkeypatch):
  """An error in the publishing thread is raised by the builder (naming the
  checkpoint), not lost with the thread; nothing is published."""
  workdir = _fresh_copy(trained_workdir, tmp_path)
  config = job_config('index_builder')
  config.embed_batch_size, config.chunk_blocks = 8, CHUNK
  builder = builder_lib.Builder(config, workdir)
  def full_disk(*args, **kwargs):
    raise OSError('No space left on device')
  monkeypatch.setattr(builder.store, 'publish', full_disk)
  with pytest.raises(RuntimeError, match='checkpoint 2 failed.*No space'):
    builder.run()
  assert index_store.IndexStore(workdir / 'index').pointer() is None
