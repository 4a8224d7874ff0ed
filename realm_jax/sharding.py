"""Device mesh, logical-axis shardings, and sharded initialisation.

Parameters carry logical axis names (realm_jax/models.py); the config's
`axis_rules` map them to mesh axes. Model state is kept as a pure nested dict
of arrays (nnx.to_pure_dict), which is what the jitted steps, optax and the
orbax checkpoints see.
"""
from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any

from flax import nnx
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from realm_jax import config_lib

PyTree = Any


def mesh_shape(mesh_config: ml_collections.ConfigDict,
               num_devices: int) -> dict[str, int]:
  """Resolves the config's axis sizes (one may be -1) against the devices."""
  sizes = dict(mesh_config.items())
  free = [name for name, size in sizes.items() if size == -1]
  config_lib.check(len(free) <= 1, 'mesh', f'axes {free} are all -1; at '
                   'most one axis may take the remaining devices')
  for name, size in sizes.items():
    config_lib.check(size == -1 or size >= 1, f'mesh.{name}',
                     f'{size} must be >= 1 or -1')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    config_lib.check(num_devices % fixed == 0, f'mesh.{free[0]}',
                     f'{num_devices} devices do not divide into the other '
                     f'axes (product {fixed})')
    sizes[free[0]] = num_devices // fixed
  config_lib.check(math.prod(sizes.values()) == num_devices, 'mesh',
                   f'{sizes} needs {math.prod(sizes.values())} devices, '
                   f'there are {num_devices}')
  return sizes


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The config's mesh over `devices` (default: all).

  Over several processes, each process's devices are one contiguous block
  along the first (data) axis, in process order: process p then holds
  batch rows [p * B / P, (p + 1) * B / P), exactly the rows it reads
  (global_batch). jax.make_mesh's physical order would scatter a host's
  rows over the batch (on a v4-64, host 0 would hold rows 0-15, 32-47, ...)
  and let the model axis span hosts.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_config, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(sizes)
  num_processes = len({d.process_index for d in devices})
  if num_processes == 1:
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes),
                         devices=devices, axis_types=axis_types)
  per_process = len(devices) // num_processes
  inner = math.prod(list(sizes.values())[1:])
  config_lib.check(per_process % inner == 0, 'mesh',
                   f'{sizes}: the axes after the first ({inner} devices) '
                   f'must fit within one process ({per_process} devices)')
  order = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(order).reshape(tuple(sizes.values())), tuple(sizes),
              axis_types=axis_types)


def _model_shardings(abstract_state, mesh: Mesh, axis_rules) -> dict:
  """NamedShardings from the parameters' logical axes and the rules."""
  with nnx.logical_axis_rules(tuple(map(tuple, axis_rules))):
    return nnx.to_pure_dict(nnx.get_named_sharding(abstract_state, mesh))


def logical_to_mesh(logical_axes: Sequence[str | None],
                    axis_rules: Sequence[tuple[str, str | None]]
                   ) -> PartitionSpec:
  rules = dict(map(tuple, axis_rules))
  return PartitionSpec(*(rules[a] if a is not None else None
                         for a in logical_axes))


def batch_sharding(mesh: Mesh, axis_rules) -> NamedSharding:
  """Leading (batch) dimension over the data axis, the rest replicated."""
  return NamedSharding(mesh, logical_to_mesh(('batch',), axis_rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def init_model(create_model: Callable[[], nnx.Module], mesh: Mesh,
               axis_rules) -> tuple[nnx.GraphDef, dict, dict]:
  """Initialises a model directly into its shardings.

  eval_shape -> shardings from the logical axes -> jit(init, out_shardings),
  so no parameter is ever materialised whole on one device.

  Returns (graphdef, params, param_shardings); params and shardings are pure
  nested dicts.
  """
  graphdef, abstract_state = nnx.split(nnx.eval_shape(create_model))
  shardings = _model_shardings(abstract_state, mesh, axis_rules)
  init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(create_model())),
                 out_shardings=shardings)
  return graphdef, init(), shardings


def abstract_model(create_model: Callable[[], nnx.Module], mesh: Mesh,
                   axis_rules) -> tuple[nnx.GraphDef, dict]:
  """(graphdef, params as ShapeDtypeStructs with their shardings)."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(create_model))
  shardings = _model_shardings(abstract_state, mesh, axis_rules)
  shapes = nnx.to_pure_dict(abstract_state)
  return graphdef, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)


def global_batch(host_batch: Mapping[str, np.ndarray],
                 sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each host's slice of the batch into global arrays."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in host_batch.items()}


def describe(params: PyTree) -> str:
  """One line per parameter: path, shape, mesh partition spec."""
  lines = []
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    spec = getattr(getattr(x, 'sharding', None), 'spec', None)
    lines.append(f'{name:70s} {str(tuple(x.shape)):18s} {spec}')
  return '\n'.join(lines)
