"""A SIGKILLed `realm-ict` resumes from its last checkpoint, losing nothing."""
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

STEPS = 30
OVERRIDES = [
    '--config.model.num_layers=1', '--config.model.hidden_size=32',
    '--config.model.num_heads=2', '--config.model.intermediate_size=64',
    '--config.model.projection_size=16', '--config.model.vocab_size=1000',
    '--config.batch_size=8', f'--config.num_train_steps={STEPS}',
    '--config.checkpoint.every_steps=4', '--config.log_every_steps=1',
]


def _command(workdir):
  return [sys.executable, '-m', 'realm_jax.jobs.ict',
          f'--config={CONFIGS}/ict.py:tiny', f'--workdir={workdir}',
          *OVERRIDES]


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=1')


def _checkpoint_steps(workdir):
  directory = workdir / 'checkpoints'
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _final_params(workdir):
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  restored = manager.restore(STEPS)
  return restored.state['params'], restored.data


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_corpus_workdir,
                                                         tmp_path):
  killed, clean = tmp_path / 'killed', tmp_path / 'clean'
  for workdir in (killed, clean):
    workdir.mkdir()
    (workdir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')

  process = subprocess.Popen(_command(killed), cwd=REPO_ROOT, env=_env(),
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while max(_checkpoint_steps(killed), default=0) < 8:
    assert process.poll() is None, 'the trainer ended before it was killed'
    assert time.time() < deadline, 'no checkpoint within 240 s'
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = max(_checkpoint_steps(killed))
  assert killed_at < STEPS

  for workdir in (killed, clean):
    subprocess.run(_command(workdir), cwd=REPO_ROOT, env=_env(), check=True,
                   capture_output=True, timeout=600)

  # The restarted run logged every step after the one it resumed from.
  lines = (killed / 'logs' / 'ict' / 'metrics.jsonl').read_text().split('\n')
  steps = [int(l.split('"step": ')[1].split(',')[0]) for l in lines if l]
  assert steps[-(STEPS - killed_at):] == list(range(killed_at + 1, STEPS + 1))

  # Same data, same dropout keys: identical parameters to an unkilled run.
  killed_params, killed_data = _final_params(killed)
  clean_params, clean_data = _final_params(clean)
  assert killed_data == clean_data == {'next_step': STEPS}
  for a, b in zip(jax.tree.leaves(killed_params),
                  jax.tree.leaves(clean_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
