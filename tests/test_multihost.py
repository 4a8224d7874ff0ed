"""Multi-host: 2 JAX processes x 4 CPU devices, as on a pod, on one machine.

The real entry points run as subprocesses with REALM_DISTRIBUTED=1 and a
local coordinator (realm_jax/cli.py); CPU collectives go through gloo.

- realm-pretrain on a data=4 x model=2 mesh spanning both processes (each
  process reads half of the batch), 3 steps, then a second invocation that
  restores the checkpoint and continues to step 6: every step's loss equals
  the same two invocations as one process with 8 devices.
- realm-index-builder --once with 2 processes (each embeds every other
  chunk, process 0 builds and publishes): the published embeddings equal a
  1-process build.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CONFIGS, REPO_ROOT
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips

DEVICES = 8
TRAINER_FLAGS = [
    '--config.model.num_layers=1', '--config.model.hidden_size=32',
    '--config.model.num_heads=2', '--config.model.intermediate_size=64',
    '--config.model.projection_size=16', '--config.model.vocab_size=1000',
    '--config.batch_size=8', '--config.lengths.joint_len=128',
    '--config.mesh.data=4', '--config.mesh.model=2',
    '--config.checkpoint.every_steps=3', '--config.log_every_steps=1',
    '--config.index.poll_seconds=0.2', '--config.index.wait_seconds=300']
# ScaNN, not the exact index: its jax search would span both processes'
# devices (mips.ExactIndex defaults to jax.devices()).
BUILDER_FLAGS = ['--config.chunk_blocks=16',
                 '--once']
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(module, flags, workdir, num_processes, name):
  """`python -m module` as num_processes processes sharing DEVICES devices.

  Logs go to files: a pipe nobody reads fills up and blocks the process.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      f'--xla_force_host_platform_device_count={DEVICES // num_processes}'))
  if num_processes > 1:
    env.update(REALM_DISTRIBUTED='1', REALM_NUM_PROCESSES=str(num_processes),
               REALM_COORDINATOR_ADDRESS=f'localhost:{_free_port()}')
  processes = []
  for i in range(num_processes):
    log = open(workdir / f'{name}.{i}.log', 'w')  # pylint: disable=consider-using-with
    processes.append(subprocess.Popen(
        [sys.executable, '-m', module, *flags, f'--workdir={workdir}'],
        cwd=REPO_ROOT, env=dict(env, REALM_PROCESS_ID=str(i)), stdout=log,
        stderr=subprocess.STDOUT))
  return processes


def _wait(processes, workdir, name):
  try:
    for i, process in enumerate(processes):
      code = process.wait(timeout=TIMEOUT)
      log = (workdir / f'{name}.{i}.log').read_text()
      assert code == 0, f'{name} process {i} exited {code}:\n{log[-4000:]}'
  finally:
    for process in processes:
      process.kill()


def _pretrain(workdir, num_processes, steps, build_first_index):
  """One realm-pretrain invocation; builds the step-0 index when asked."""
  name = f'pretrain{steps}'
  trainers = _start('realm_jax.jobs.pretrain', [
      f'--config={CONFIGS}/pretrain.py:tiny', *TRAINER_FLAGS,
      f'--config.num_train_steps={steps}'], workdir, num_processes, name)
  if build_first_index:
    # The trainer saves step 0 and waits for its index; exactly one index
    # (--once) keeps the runs deterministic.
    deadline = time.time() + TIMEOUT
    while not (workdir / 'checkpoints' / '0').exists():
      assert time.time() < deadline and all(
          p.poll() is None for p in trainers), (
              (workdir / f'{name}.0.log').read_text()[-4000:])
      time.sleep(0.2)
    # One block per device in both runs: the same per-device program.
    _wait(_start('index_builder.main', [
        f'--config={CONFIGS}/index_builder.py:tiny', *BUILDER_FLAGS,
        f'--config.embed_batch_size={DEVICES // num_processes}'],
                 workdir, num_processes, 'builder'), workdir, 'builder')
  _wait(trainers, workdir, name)


def _run(corpus_workdir, workdir, num_processes):
  workdir.mkdir()
  (workdir / 'corpus').symlink_to(corpus_workdir / 'corpus')
  _pretrain(workdir, num_processes, 3, build_first_index=True)
  _pretrain(workdir, num_processes, 6, build_first_index=False)
  path = workdir / 'logs' / 'pretrain' / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()]


def _train_rows(rows):
  return [r for r in rows if 'loss' in r]


@pytest.fixture(scope='module')
def runs(tiny_corpus_workdir, tmp_path_factory):
  root = tmp_path_factory.mktemp('multihost')
  return {n: (_run(tiny_corpus_workdir, root / f'p{n}', n), root / f'p{n}')
          for n in (1, 2)}


@pytest.mark.slow
def test_two_processes_train_as_one_across_a_restart(runs):
  (single, _), (multi, workdir) = runs[1], runs[2]
  # Held-out retrieval at step 0 searches the same index with the same
  # queries, split over the processes or not.
  first_eval = [[r for r in rows if 'eval/fact_recall' in r][0]
                for rows in (single, multi)]
  assert first_eval[0]['step'] == first_eval[1]['step'] == 0
  np.testing.assert_allclose(first_eval[0]['eval/fact_recall'],
                             first_eval[1]['eval/fact_recall'])
  single, multi = _train_rows(single), _train_rows(multi)
  assert [r['step'] for r in multi] == list(range(1, 7))
  assert [r['step'] for r in single] == list(range(1, 7))
  for key in ('loss', 'mlm_accuracy', 'l2_grads', 'p_null'):
    np.testing.assert_allclose([r[key] for r in multi],
                               [r[key] for r in single], rtol=2e-5,
                               err_msg=key)
  assert len({r['loss'] for r in multi}) > 1  # it trained
  # The second invocation resumed from the step-3 checkpoint.
  assert 'Resumed from checkpoint step 3' in (
      workdir / 'pretrain6.0.log').read_text()
  # Only process 0 wrote metrics (a line per step, no duplicates).
  assert len(multi) == 6


@pytest.mark.slow
def test_two_process_build_equals_one_process_build(runs):
  embeddings = []
  for n in (1, 2):
    store = index_store.IndexStore(runs[n][1] / 'index')
    assert store.versions() == [index_store.version_name(0)]
    manifest = store.verify_files(index_store.version_name(0))
    embeddings.append(np.load(store.version_dir(index_store.version_name(0))
                              / mips.EMBEDDINGS_FILE))
    if n == 2:  # process 0 counted only its own chunks
      assert 0 < manifest['embedded_blocks'] < manifest['num_blocks']
  np.testing.assert_allclose(embeddings[1], embeddings[0], rtol=1e-5,
                             atol=1e-6)
