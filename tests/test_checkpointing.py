"""Orbax checkpoints: round trip, retention, resume, doc-tower-only restore."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import models
from realm_jax import sharding
from realm_jax import trainer
from realm_jax.retrieval import workspace


def _config():
  config = config_lib.model_config('tiny', vocab_size=64)
  config.update(num_layers=1, hidden_size=16, num_heads=2,
                intermediate_size=32, projection_size=8, span_hidden_size=8)
  return config


def _setup(tmp_path, every_steps=1, max_to_keep=5):
  mesh = sharding.make_mesh(config_lib.mesh_config(4, 2))
  tx = optax.adamw(1e-3)
  ckpt_config = checkpointing.checkpoint_config(every_steps)
  ckpt_config.max_to_keep = max_to_keep
  manager = checkpointing.make_manager(tmp_path / 'checkpoints', ckpt_config)
  create = lambda: models.REALM(_config(), rngs=nnx.Rngs(0))
  return mesh, tx, manager, create


def _perturb(state, amount):
  return dict(state, step=state['step'] + 1,
              params=jax.tree.map(lambda x: x + amount, state['params']))


def test_resume_restores_latest_state_and_position(tmp_path):
  mesh, tx, manager, create = _setup(tmp_path)
  _, state, _, position = trainer.init_train_state(
      create, tx, mesh, config_lib.AXIS_RULES, manager)
  assert position is None and int(state['step']) == 0
  for step in range(1, 8):
    state = _perturb(state, 0.5)
    checkpointing.save(manager, step, state, {'next_step': step})
  manager.wait_until_finished()
  # Keeps the newest max_to_keep (5) steps.
  assert manager.all_steps() == [3, 4, 5, 6, 7]

  manager = checkpointing.make_manager(
      tmp_path / 'checkpoints', checkpointing.checkpoint_config(1))
  _, restored, shardings, position = trainer.init_train_state(
      create, tx, mesh, config_lib.AXIS_RULES, manager)
  assert position == {'next_step': 7} and int(restored['step']) == 7
  for a, b, s in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                     jax.tree.leaves(shardings)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == s  # restored straight into the training shardings


def test_save_interval(tmp_path):
  _, tx, manager, create = _setup(tmp_path, every_steps=3)
  params = nnx.to_pure_dict(nnx.state(create()))
  state = dict(step=np.int32(0), params=params, opt_state=tx.init(params))
  for step in range(1, 10):
    checkpointing.save(manager, step, state, {'next_step': step})
  manager.wait_until_finished()
  # Orbax always keeps the first save of a run, then every third step.
  assert manager.all_steps() == [1, 3, 6, 9]


def test_restore_only_the_document_tower(tmp_path):
  mesh, tx, manager, create = _setup(tmp_path)
  _, state, _, _ = trainer.init_train_state(
      create, tx, mesh, config_lib.AXIS_RULES, manager)
  state = _perturb(state, 1.0)
  checkpointing.save(manager, 1, state, {'next_step': 1})
  manager.wait_until_finished()

  reader = checkpointing.make_manager(tmp_path / 'checkpoints',
                                      read_only=True)
  _, abstract_params = sharding.abstract_model(
      create, mesh, config_lib.AXIS_RULES)
  doc_tower = checkpointing.restore_subtree(
      reader, reader.latest_step(), workspace.DOC_TOWER_PATH,
      abstract_params['retriever']['doc_tower'])
  expected = state['params']['retriever']['doc_tower']
  assert jax.tree.structure(doc_tower) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(doc_tower)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == b.sharding


def test_too_few_kept_checkpoints_is_a_config_error():
  config = checkpointing.checkpoint_config(10)
  config.max_to_keep = 2
  with pytest.raises(config_lib.ConfigError, match='checkpoint.max_to_keep'):
    checkpointing.validate(config)


def test_relative_checkpoint_directory(tmp_path, monkeypatch):
  """`--workdir=relative/path` works: orbax itself needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  _, tx, _, create = _setup(tmp_path)
  manager = checkpointing.make_manager('relative/checkpoints',
                                       checkpointing.checkpoint_config(1))
  params = nnx.to_pure_dict(nnx.state(create()))
  checkpointing.save(manager, 1, dict(step=np.int32(1), params=params),
                     {'next_step': 1})
  manager.wait_until_finished()
  assert (tmp_path / 'relative' / 'checkpoints' / '1').is_dir()


def test_frozen_parameters_have_no_optimizer_state(tmp_path):
  """And a checkpoint with moments for them (an older layout) is refused
  with a message saying what changed, instead of resuming wrongly."""
  mesh, tx, manager, create = _setup(tmp_path)
  frozen = lambda path: tuple(path[:2]) == ('retriever', 'doc_tower')
  _, state, shardings, _ = trainer.init_train_state(
      create, tx, mesh, config_lib.AXIS_RULES, manager, frozen=frozen)
  moments = optax.tree_utils.tree_get(state['opt_state'], 'mu')
  assert 'doc_tower' not in moments.get('retriever', {})
  assert 'reader' in moments
  assert jax.tree.structure(shardings['opt_state']) == jax.tree.structure(
      state['opt_state'])

  _, full, _, _ = trainer.init_train_state(create, tx, mesh,
                                           config_lib.AXIS_RULES, manager)
  checkpointing.save(manager, 1, full, {'next_step': 1})
  manager.wait_until_finished()
  with pytest.raises(ValueError, match='another layout.*doc_tower'):
    trainer.init_train_state(create, tx, mesh, config_lib.AXIS_RULES,
                             manager, frozen=frozen)


def test_clock_counts_reported_device_waits_as_device_time(monkeypatch):
  """Seconds host_batch reports under DEVICE_WAIT (blocked on results
  queued behind the last step) are the device's, not the host's."""
  now = iter([0.0, 10.0, 14.0, 20.0, 30.0, 32.0, 40.0])
  monkeypatch.setattr(trainer.time, 'perf_counter', lambda: next(now))
  # The thread's CPU time: 0.5 s of the first host work, 1.5 s of the
  # second (the rest of their wall time the thread was not running).
  cpu = iter([100.0, 100.5, 200.0, 201.5])
  monkeypatch.setattr(trainer.time, 'thread_time', lambda: next(cpu))
  clock = trainer._Clock(start_step=0, num_steps=4)  # t=0
  clock.host_started()  # t=10
  clock.host_done(device_wait=3.0)  # t=14: 4 s of host_batch, 3 blocked
  first = clock.metrics(1)  # t=20
  assert first['time/host_ms'] == pytest.approx(1e3)
  assert first['time/host_cpu_ms'] == pytest.approx(500)
  assert first['time/device_ms'] == pytest.approx(19e3)
  assert first['time/eta_s'] == pytest.approx(3 * 20.0)
  clock.host_started()  # t=30
  clock.host_done()  # t=32: nothing reported, all host
  second = clock.metrics(2)  # t=40
  assert second['time/host_ms'] == pytest.approx(2e3)
  assert second['time/host_cpu_ms'] == pytest.approx(1.5e3)
  assert second['time/device_ms'] == pytest.approx(18e3)


def test_one_step_ahead_queues_the_next_step_and_redoes_what_it_refuses():
  """Step s + 1's work is queued with the parameters entering step s; at a
  resumable step, or when `usable` refuses the queued work, it is redone
  with the step's own parameters."""
  queued = []

  def queue(step, params):
    queued.append((step, params))
    return step, params

  ahead = trainer.OneStepAhead(
      queue, lambda step, q: (dict(step=q[0], params=q[1]), {}), num_steps=6,
      resumes=lambda step: step == 3,
      usable=lambda step, q: step != 5)  # e.g. searched in too old an index
  batches = [ahead(step, f'p{step}')[0] for step in range(6)]
  assert [b['step'] for b in batches] == list(range(6))
  assert [b['params'] for b in batches] == ['p0', 'p0', 'p1', 'p3', 'p3',
                                            'p5']
  assert queued == [(0, 'p0'), (1, 'p0'), (2, 'p1'), (3, 'p3'), (4, 'p3'),
                    (5, 'p4'), (5, 'p5')]
  # Never ahead: every step its own.
  never = trainer.OneStepAhead(queue, lambda step, q: (q, {}), num_steps=3,
                               resumes=lambda step: True)
  assert [never(step, f'p{step}')[0] for step in range(3)] == [
      (0, 'p0'), (1, 'p1'), (2, 'p2')]
