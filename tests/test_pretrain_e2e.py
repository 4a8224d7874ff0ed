"""REALM pre-training end to end, beside a real index builder process."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import CONFIGS, REPO_ROOT
from realm_jax import checkpointing
from realm_jax.jobs import ict
from realm_jax.retrieval import index_store
from realm_jax.jobs import pretrain
from test_ict import _ict_config

TINY_MODEL = dict(num_layers=1, hidden_size=32, num_heads=2,
                  intermediate_size=64, projection_size=16, vocab_size=1000)


def _pretrain_config(**overrides):
  spec = importlib.util.spec_from_file_location('pretrain_config',
                                                CONFIGS / 'pretrain.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.model.update(TINY_MODEL)
  config.batch_size = 4
  config.lengths.joint_len = 128
  config.checkpoint.every_steps = 5
  config.log_every_steps = 1
  config.index.poll_seconds = 0.2
  config.index.wait_seconds = 180
  config.update_from_flattened_dict(overrides)
  return config


def _overrides_as_flags(config_overrides):
  return [f'--config.{k}={v}' for k, v in config_overrides.items()]


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=1')


def _start_builder(workdir):
  # Logs go to a file: a pipe nobody reads fills up and blocks the builder.
  log = open(workdir / 'index_builder.log', 'w')  # pylint: disable=consider-using-with
  return subprocess.Popen(
      [sys.executable, '-m', 'index_builder.main',
       f'--config={CONFIGS}/index_builder.py:tiny', f'--workdir={workdir}',
       '--config.embed_batch_size=16', '--config.chunk_blocks=64',
       '--config.poll_seconds=0.2'],
      cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _builder_log(workdir):
  return (workdir / 'index_builder.log').read_text()[-3000:]


@pytest.fixture(scope='module')
def ict_workdir(tiny_corpus_workdir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ict')
  (workdir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')
  ict.train_and_evaluate(_ict_config(num_train_steps=3), str(workdir))
  return workdir


def _workdir(tmp_path, ict_workdir):
  workdir = tmp_path / 'pretrain'
  workdir.mkdir()
  (workdir / 'corpus').symlink_to(ict_workdir / 'corpus')
  return workdir


def _metrics(workdir):
  path = workdir / 'logs' / 'pretrain' / 'metrics.jsonl'
  return [json.loads(l) for l in path.read_text().split('\n') if l]


@pytest.mark.slow
def test_pretrain_hot_swaps_indices_built_beside_it(ict_workdir, tmp_path):
  workdir = _workdir(tmp_path, ict_workdir)
  builder = _start_builder(workdir)
  try:
    # Lockstep refresh: every 10 steps (checkpoints every 5) a step waits
    # for its own checkpoint's index; evaluation waits for its step's.
    config = _pretrain_config(num_train_steps=40, init_from=str(ict_workdir),
                              **{'index.refresh_every_steps': 10,
                                 'index.fresh_eval': True})
    config.mesh.update(data=4, model=2)  # the 8 fake devices of the tests
    config.checkpoint.max_to_keep = 100  # keep step 0 to compare with ICT
    last = pretrain.train_and_evaluate(config, str(workdir))
    # TRAINING_DONE: the builder indexes the last checkpoint and exits.
    assert builder.wait(timeout=600) == 0, _builder_log(workdir)
  finally:
    builder.kill()
  rows = [r for r in _metrics(workdir) if 'loss' in r]
  assert [r['step'] for r in rows] == list(range(1, 41))
  # Held-out retrieval at the ICT start and at the end.
  evals = [r for r in _metrics(workdir) if 'eval/fact_recall' in r]
  assert [r['step'] for r in evals] == [0, 40]
  assert [r['eval/index_step'] for r in evals] == [0, 40]  # fresh_eval
  for row in evals:
    assert 0 <= row['eval/fact_recall'] <= 1
    assert 0 <= row['eval/source_recall'] <= 1
  for row in rows:
    assert np.isfinite(row['loss']) and 0 <= row['p_null'] <= 1
    step = row['step'] - 1  # the row of step s is logged as s + 1
    assert row['index_step'] == step - step % 10, row
    assert row['index_wait_seconds'] >= 0
    assert row['l2_grads_retriever'] > 0 and row['l2_grads_reader'] > 0
  assert last['index_versions_used'] == 4  # steps 0, 10, 20, 30
  store = index_store.IndexStore(workdir / 'index')
  assert store.latest_step() == 40

  # The retriever started from ICT's.
  ict_manager = checkpointing.make_manager(ict_workdir / 'checkpoints',
                                           read_only=True)
  ours = checkpointing.make_manager(workdir / 'checkpoints', read_only=True)
  ict_tower = ict_manager.restore(3).state['params']['retriever']
  step0 = ours.restore(0).state['params']['retriever']
  for a, b in zip(jax.tree.leaves(ict_tower), jax.tree.leaves(step0)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkilled_pretrain_resumes(ict_workdir, tmp_path):
  workdir = _workdir(tmp_path, ict_workdir)
  flags = [f'--config={CONFIGS}/pretrain.py:tiny', f'--workdir={workdir}',
           *_overrides_as_flags({f'model.{k}': v
                                 for k, v in TINY_MODEL.items()}),
           '--config.batch_size=4', '--config.lengths.joint_len=128',
           '--config.checkpoint.every_steps=5', '--config.log_every_steps=1',
           '--config.index.poll_seconds=0.2', '--config.num_train_steps=30',
           f'--config.init_from={ict_workdir}']
  command = [sys.executable, '-m', 'realm_jax.jobs.pretrain', *flags]
  builder = _start_builder(workdir)
  try:
    trainer = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(),
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    manager = checkpointing.make_manager(workdir / 'checkpoints',
                                         read_only=True)
    deadline = time.time() + 300
    while (manager.reload() or True) and (manager.latest_step() or 0) < 10:
      assert trainer.poll() is None and time.time() < deadline
      time.sleep(0.1)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    killed_at = manager.latest_step()
    assert 10 <= killed_at < 30
    restarted = subprocess.run(command, cwd=REPO_ROOT, env=_env(),
                               capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert builder.wait(timeout=600) == 0, _builder_log(workdir)
  finally:
    builder.kill()
  steps = [r['step'] for r in _metrics(workdir) if 'loss' in r]
  assert steps[-(30 - killed_at):] == list(range(killed_at + 1, 31))
  manager.reload()
  assert manager.restore(30).data == {'next_step': 30}


@pytest.mark.slow
def test_retrieving_ahead_changes_only_which_parameters_embed(ict_workdir,
                                                              tmp_path):
  """With the retriever frozen, the parameters that embed a step's queries
  are the same one step ahead or not: so are the batches, and the two runs
  log the same loss at every step (a step fed another step's retrieval, or
  another step's features, would not)."""
  losses = {}
  for ahead in (True, False):
    (tmp_path / str(ahead)).mkdir()
    workdir = _workdir(tmp_path / str(ahead), ict_workdir)
    builder = _start_builder(workdir)
    try:
      config = _pretrain_config(num_train_steps=8, init_from=str(ict_workdir),
                                freeze_retriever=True, retrieve_ahead=ahead)
      config.mesh.update(data=4, model=2)  # the 8 fake devices of the tests
      pretrain.train_and_evaluate(config, str(workdir))
      assert builder.wait(timeout=600) == 0, _builder_log(workdir)
    finally:
      builder.kill()
    rows = [r for r in _metrics(workdir) if 'loss' in r]
    assert [r['step'] for r in rows] == list(range(1, 9))
    losses[ahead] = [(r['loss'], r['fact_recall'], r['candidates_missing'])
                     for r in rows]
  assert losses[True] == losses[False]
