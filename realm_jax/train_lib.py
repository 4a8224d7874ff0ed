"""Pieces every trainer uses: sharded train state, resume, the jitted step.

The train state is a plain dict {'step', 'params', 'opt_state'} of arrays,
sharded as the parameters' logical axes say (optimizer moments follow their
parameters; scalars are replicated).
"""
from collections.abc import Callable
from typing import Any

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from realm_jax import checkpointing
from realm_jax import sharding

PyTree = Any


def state_shardings(tx: optax.GradientTransformation, params: PyTree,
                    param_shardings: PyTree, mesh) -> PyTree:
  """Shardings for {'step', 'params', 'opt_state'}."""
  abstract_opt_state = jax.eval_shape(tx.init, params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt_state, param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return dict(step=sharding.replicated(mesh), params=param_shardings,
              opt_state=opt_shardings)


def abstract_train_state(create_model: Callable[[], nnx.Module],
                         tx: optax.GradientTransformation, mesh, axis_rules):
  """(graphdef, state as ShapeDtypeStructs with shardings, state_shardings):
  what restoring, and compiling ahead of time (realm_jax/aot.py), need."""
  graphdef, abstract_params = sharding.abstract_model(
      create_model, mesh, axis_rules)
  param_shardings = jax.tree.map(lambda x: x.sharding, abstract_params)
  shardings = state_shardings(tx, abstract_params, param_shardings, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(lambda p: dict(step=jnp.int32(0), params=p,
                                    opt_state=tx.init(p)), abstract_params),
      shardings)
  return graphdef, abstract_state, shardings


def init_train_state(create_model: Callable[[], nnx.Module],
                     tx: optax.GradientTransformation, mesh, axis_rules,
                     manager: ocp.CheckpointManager | None = None):
  """Restores the latest checkpoint in `manager`, else initialises.

  Returns (graphdef, state, state_shardings, data_position or None).
  """
  graphdef, abstract_state, shardings = abstract_train_state(
      create_model, tx, mesh, axis_rules)
  latest = manager.latest_step() if manager is not None else None
  if latest is not None:
    state, position = checkpointing.restore(manager, latest, abstract_state)
    logging.info('Resumed from checkpoint step %d', latest)
    return graphdef, state, shardings, position
  _, params, _ = sharding.init_model(create_model, mesh, axis_rules)
  opt_state = jax.jit(tx.init, out_shardings=shardings['opt_state'])(params)
  state = dict(step=jax.device_put(jnp.int32(0), shardings['step']),
               params=params, opt_state=opt_state)
  return graphdef, state, shardings, None


def apply_gradients(state: PyTree, grads: PyTree,
                    tx: optax.GradientTransformation) -> PyTree:
  """One optimiser update of {'step', 'params', 'opt_state'}."""
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return dict(step=state['step'] + 1, params=params, opt_state=opt_state)


def jit_train_step(step_fn: Callable, shardings: PyTree, batch_sharding,
                   mesh) -> Callable:
  """jit(step_fn(state, batch, rng)) with explicit shardings, state donated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(step_fn,
                 in_shardings=(shardings, batch_sharding, replicated),
                 out_shardings=(shardings, replicated),
                 donate_argnums=0)



TRAINING_DONE = 'TRAINING_DONE'


def start_job(workdir: epath.Path, config) -> None:
  """Records the job config (the index builder reads its `model`) and clears
  the training-done marker; process 0 only."""
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    (workdir / TRAINING_DONE).unlink(missing_ok=True)


def finish_job(workdir: epath.Path) -> None:
  """Tells the index builder no newer checkpoint will come."""
  if jax.process_index() == 0:
    (workdir / TRAINING_DONE).write_text('')
