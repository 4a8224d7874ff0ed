"""Orbax checkpoints: train state + input position, and subtree restores.

A checkpoint step folder holds two items:
  state/  the train state pytree {'step', 'params', 'opt_state'} (PyTree)
  data/   the input pipeline position (JSON), so a resumed run continues
          with the next unseen batch.
The index builder restores only workspace.DOC_TOWER_PATH from `state/`
(partial restore: the other arrays are never read).
"""
from collections.abc import Sequence
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from realm_jax import config_lib
from realm_jax.retrieval import workspace

PyTree = Any


def checkpoint_config(every_steps: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      every_steps=every_steps, max_to_keep=workspace.MIN_CHECKPOINTS_TO_KEEP, async_save=True))


def validate(config: ml_collections.ConfigDict, field: str = 'checkpoint'):
  config_lib.check(config.every_steps >= 1, f'{field}.every_steps',
                   'must be >= 1')
  config_lib.check(config.max_to_keep >= workspace.MIN_CHECKPOINTS_TO_KEEP, f'{field}.max_to_keep',
                   f'{config.max_to_keep} < {workspace.MIN_CHECKPOINTS_TO_KEEP}: the index builder '
                   'may miss steps it is about to restore')


def make_manager(directory: epath.PathLike,
                 config: ml_collections.ConfigDict | None = None,
                 read_only: bool = False,
                 this_process_only: bool = False) -> ocp.CheckpointManager:
  """A manager for WORKDIR/checkpoints; read_only for the index builder.

  this_process_only (read_only): restores involve no other process (orbax
  otherwise meets every process at a barrier after each restore); for a job
  whose processes restore independently, into their local devices.
  """
  directory = epath.Path(directory)
  if not directory.is_absolute():  # orbax needs absolute paths
    directory = directory.absolute()
  if read_only:
    processes = {}
    if this_process_only:
      me = jax.process_index()
      processes = dict(multiprocessing_options=(
          ocp.options.MultiprocessingOptions(primary_host=me,
                                             active_processes={me})))
    # save_interval_steps=0: orbax would otherwise warn that it sets it.
    options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0, **processes)
  else:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.every_steps,
        max_to_keep=config.max_to_keep,
        enable_async_checkpointing=config.async_save)
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers=dict(state=ocp.PyTreeCheckpointHandler(),
                         data=ocp.JsonCheckpointHandler()))


def save(manager: ocp.CheckpointManager, step: int, state: PyTree,
         data_position: dict, force: bool = False) -> bool:
  """Saves (asynchronously when configured) if the interval says so."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state),
      data=ocp.args.JsonSave(data_position)), force=force)


def restore(manager: ocp.CheckpointManager, step: int,
            abstract_state: PyTree) -> tuple[PyTree, dict]:
  """Restores the whole train state into the shardings of abstract_state."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          abstract_state,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_state)),
      data=ocp.args.JsonRestore()))
  return restored.state, restored.data


def restore_subtree(manager: ocp.CheckpointManager, step: int,
                    path: Sequence[str], abstract_subtree: PyTree) -> PyTree:
  """Restores state[path[0]][path[1]]... only; nothing else is read."""
  item = abstract_subtree
  for key in reversed(path):
    item = {key: item}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(item))))
  subtree = restored.state
  for key in path:
    subtree = subtree[key]
  return subtree


def abstract(tree: PyTree) -> PyTree:
  """ShapeDtypeStructs (with shardings) of a tree of arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def latest(workdir: epath.PathLike, field: str
           ) -> tuple[ocp.CheckpointManager, int]:
  """(a read-only manager, its latest step) of another run's checkpoints;
  a ConfigError names `field` when it has none."""
  manager = make_manager(epath.Path(workdir) / 'checkpoints', read_only=True)
  step = manager.latest_step()
  config_lib.check(step is not None, field,
                   f'no checkpoint in {workdir}/checkpoints')
  return manager, step


def restore_from_run(workdir: epath.PathLike, field: str,
                     path: Sequence[str], abstract_subtree: PyTree) -> PyTree:
  """state[path] of another run's latest checkpoint (what a job starts
  from); a ConfigError names `field` when that run has none."""
  manager, step = latest(workdir, field)
  subtree = restore_subtree(manager, step, path, abstract_subtree)
  logging.info('%s initialised from %s step %d', '/'.join(path[1:]),
               workdir, step)
  return subtree
