"""realm-compile: ahead-of-time compilation for TPU topologies.

The TPU tests compile for a v4 / v5e topology through libtpu (the `tpu`
extra; no TPU needed) and skip without it, unless REALM_REQUIRE_LIBTPU=1
(set by .ci/run, which installs it) makes that a failure.
"""
import importlib.util
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import CONFIGS, REPO_ROOT, job_config
from realm_jax.jobs import aot
from realm_jax import config_lib
from realm_jax import sharding

TINY = {'model.num_layers': 1, 'model.hidden_size': 32, 'model.num_heads': 2,
        'model.intermediate_size': 64, 'model.projection_size': 16,
        'lengths.joint_len': 128, 'mesh.model': 2}
TINY_FLAGS = [f'--config.{k}={v}' for k, v in TINY.items()]


@pytest.mark.parametrize('name, chips, libtpu_name, wrap, per_host', [
    ('v4-64', 32, 'v4:2x4x4', (False,) * 3, 4),
    ('v4-128', 64, 'v4:4x4x4', (True,) * 3, 4),
    ('v5p-16', 8, 'v5:2x2x2', (False,) * 3, 4),
    ('v5litepod-256', 256, 'v5e:16x16', (True, True, False), 8),
    ('v6e-8', 8, 'v6e:2x4', (False,) * 3, 8),
])
def test_parse_topology(name, chips, libtpu_name, wrap, per_host):
  topology = aot.parse_topology(name)
  assert (topology.chips, topology.libtpu_name, topology.wrap,
          topology.chips_per_host) == (chips, libtpu_name, wrap, per_host)


@pytest.mark.parametrize('name', ['v4', 'v4-6', 'v3-8', 'tpu-64', 'v4-x'])
def test_parse_topology_rejects(name):
  with pytest.raises(ValueError, match='--topology'):
    aot.parse_topology(name)


def test_cpu_fallback_compiles_both_programs(capsys):
  """The pod programs for a v4-16 mesh (8 chips; a builder host has 4) on
  the tests' 8 fake CPU devices; the compiled step runs."""
  config = job_config('pretrain')
  config.update_from_flattened_dict(TINY)
  builder = job_config('index_builder')
  topology = aot.parse_topology('v4-16')
  fits, programs = aot.compile_all(config, builder, topology, topology, 'cpu')
  assert fits
  out = capsys.readouterr().out
  assert "mesh {'data': 4, 'model': 2}" in out
  assert 'Builder: one host of v4-16 (4 devices), embed batch 64' in out
  assert out.count('total') == 2 and 'FLOPs per block' in out

  step = programs['train_step']
  usage = aot.memory_per_device(step)
  assert usage['total'] > 0 and usage['aliased'] > 0  # the state is donated
  assert aot.flops_per_device(step) > 0
  # The compiled step runs on the inputs it was compiled for.
  state, metrics = step(*jax.tree.map(
      lambda info, s: jax.device_put(np.zeros(info.shape, info.dtype), s),
      step.args_info[0], step.input_shardings[0]))
  assert int(state['step']) == 1 and np.isfinite(float(metrics['loss']))


def _libtpu():
  if importlib.util.find_spec('libtpu') is None:
    message = "libtpu not installed (pip install -e '.[tpu]')"
    if os.environ.get('REALM_REQUIRE_LIBTPU') == '1':
      pytest.fail(message)
    pytest.skip(message)


def _compile_cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'realm_jax.jobs.aot',
       f'--config={CONFIGS}/pretrain.py:tiny', *TINY_FLAGS, *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_tpu_v4_topology_compiles_and_fits():
  _libtpu()
  done = _compile_cli(f'--builder_config={CONFIGS}/index_builder.py:tiny',
                      '--topology=v4-16', '--builder_topology=v4-32')
  assert done.returncode == 0, done.stderr[-3000:]
  out = done.stdout
  assert 'Platform: tpu (libtpu found)' in out
  assert 'Trainer: v4-16 (tpu: 8 devices, TPU v4)' in out
  assert 'Builder: one host of v4-32 (4 devices)' in out
  assert out.count('32.000 GiB per chip: fits') == 2


def test_tpu_reports_a_step_that_does_not_fit():
  """A v5e chip has 16 GiB: a tiny model with a huge batch does not fit;
  the command says so and exits 1."""
  _libtpu()
  done = _compile_cli('--topology=v5e-4', '--config.batch_size=32768')
  assert done.returncode == 1, done.stderr[-3000:]
  assert 'does NOT fit' in done.stdout


@pytest.mark.parametrize('topology, model', [('v4-64', 1), ('v4-64', 4),
                                             ('v5e-256', 2)])
def test_pod_mesh_gives_each_host_its_own_rows(topology, model):
  """On a pod's devices (compile-only), each host's devices hold exactly the
  batch rows that host reads: [p * B / P, (p + 1) * B / P)."""
  _libtpu()
  for name, value in (('ALLOW_MULTIPLE_LIBTPU_LOAD', '1'),
                      ('TPU_ACCELERATOR_TYPE', topology),
                      ('TPU_WORKER_HOSTNAMES', 'localhost')):
    os.environ.setdefault(name, value)  # as realm-compile sets them
  devices = aot.tpu_devices(aot.parse_topology(topology))
  mesh = sharding.make_mesh(
      ml_collections.ConfigDict(dict(data=-1, model=model)), devices)
  batch = 1024
  rows = {}
  for device, index in sharding.batch_sharding(
      mesh, config_lib.AXIS_RULES).devices_indices_map((batch,)).items():
    rows.setdefault(device.process_index, set()).update(
        range(*index[0].indices(batch)))
  per_host = batch // len(rows)
  assert len(rows) > 1
  for p, host_rows in rows.items():
    assert sorted(host_rows) == list(range(p * per_host, (p + 1) * per_host))
