r"""`realm-compile`: compiles the pod programs ahead of time, without the pod.

  realm-compile --config=configs/pretrain.py:base --topology=v4-64 \
    --builder_config=configs/index_builder.py:base --builder_topology=v4-16

Compiles, for the devices of a Cloud TPU topology that this machine does not
have (libtpu from PyPI: `pip install -e '.[tpu]'`, as MaxText's
train_compile.py does):

- realm-pretrain's train step (trainer.train_step of objectives/realm.py), with the
  config's mesh over all of the trainer slice's chips, the real parameter,
  optimizer and batch shardings, and abstract inputs (ShapeDtypeStructs);
- realm-index-builder's embed step (retrieval/embedding.py), as each builder
  host runs it: over the chips of one host of the builder slice.

and prints each program's memory per chip (compiled.memory_analysis())
against the chip's HBM, and its FLOPs per chip (compiled.cost_analysis()).
A program that does not fit fails to compile on TPU; that is reported, and
the command exits 1. `--config.x=y` overrides apply as in every job.

Without libtpu (or with --platform=cpu) it compiles the same programs for a
CPU mesh of the same shape (fake CPU devices): shardings and shapes are
checked, but the memory numbers are XLA:CPU's, not a TPU's.
"""
from collections.abc import Sequence
import dataclasses
import functools
import importlib.util
import os

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import topologies
import ml_collections
from ml_collections import config_flags

from realm_jax import cli
from realm_jax import config_lib
from realm_jax import models
from realm_jax import optim
from realm_jax import sharding
from realm_jax import trainer
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.objectives import realm as realm_objective
from realm_jax.retrieval import embedding

GIB = 1024**3
# HBM per chip, GiB (cloud.google.com/tpu/docs/system-architecture-tpu-vm).
HBM_GIB = {'v4': 32, 'v5p': 95, 'v5e': 16, 'v6e': 32}
# Chips -> torus shape. v4/v5p: 3-D, 4 chips per host (2x2x1), a wrapped
# torus from 64 chips on; v5e/v6e: 2-D, wrapped along 16 chips.
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4),
              64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8),
              512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8),
              64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU accelerator type (`--accelerator-type` of gcloud)."""
  name: str  # e.g. v4-64
  generation: str  # v4 | v5p | v5e | v6e
  chips: int
  libtpu_name: str  # e.g. v4:2x4x4
  megacore: bool  # v4/v5p: one jax device = one chip (two cores)
  wrap: tuple[bool, bool, bool]

  @property
  def hbm_bytes(self) -> int:
    return HBM_GIB[self.generation] * GIB

  @property
  def chips_per_host(self) -> int:
    return min(self.chips, 4 if self.megacore else 8)


def parse_topology(name: str) -> Topology:
  """v4-64 (64 TensorCores = 32 chips), v5p-128, v5litepod-16 / v5e-16,
  v6e-256 (v5e/v6e count chips)."""
  generation, _, size = name.partition('-')
  generation = {'v5litepod': 'v5e'}.get(generation, generation)
  if generation not in HBM_GIB or not size.isdigit():
    raise ValueError(f'--topology={name}: expected v4-N, v5p-N, v5e-N or '
                     'v6e-N (a Cloud TPU accelerator type)')
  megacore = generation in ('v4', 'v5p')
  chips = int(size) // 2 if megacore else int(size)
  shapes = _SHAPES_3D if megacore else _SHAPES_2D
  if chips not in shapes:
    raise ValueError(f'--topology={name}: {chips} chips; known sizes: '
                     f'{sorted(shapes)} chips')
  shape = shapes[chips]
  prefix = {'v5p': 'v5'}.get(generation, generation)
  if megacore:
    wrap = (chips >= 64,) * 3
  else:
    wrap = (shape[0] >= 16, shape[1] >= 16, False)
  return Topology(name, generation, chips,
                  f'{prefix}:{"x".join(map(str, shape))}', megacore, wrap)


def tpu_devices(topology: Topology) -> list[jax.Device]:
  """Compile-only devices of the topology (needs libtpu, no TPU)."""
  return topologies.get_topology_desc(
      platform='tpu', topology_name=topology.libtpu_name,
      chip_config_name='megacore' if topology.megacore else 'default',
      chips_per_host_bounds=(1, 1, 1) if topology.chips == 1 else (2, 2, 1),
      num_slices=1, wrap=topology.wrap).devices


def first_host(devices: Sequence[jax.Device]) -> list[jax.Device]:
  """The devices of process 0: what one builder host embeds with."""
  return [d for d in devices if d.process_index == devices[0].process_index]


def compile_train_step(config: ml_collections.ConfigDict,
                       devices: Sequence[jax.Device]) -> jax.stages.Compiled:
  """realm-pretrain's step, sharded as the trainer shards it."""
  trainer.validate(config, len(devices))
  pretrain_input.validate(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  graphdef, state, shardings = trainer.abstract_train_state(
      lambda: models.REALM(config.model, rngs=nnx.Rngs(config.seed),
                           null_offset=config.null_document == 'relative'),
      tx, mesh, config.axis_rules)
  batch_sharding = sharding.batch_sharding(mesh, config.axis_rules)
  step = trainer.jit_train_step(
      functools.partial(trainer.train_step, graphdef=graphdef, tx=tx,
                        loss_fn=functools.partial(
                            realm_objective.loss,
                            null_document=config.null_document)),
      shardings, batch_sharding, mesh)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32,
                             sharding=sharding.replicated(mesh))
  return step.lower(state, pretrain_batch(config, batch_sharding),
                    rng).compile()


def pretrain_batch(config: ml_collections.ConfigDict,
                   batch_sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch realm-pretrain feeds its step, as abstract arrays."""
  return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
          for name, (shape, dtype) in pretrain_input.batch_shapes(
              config).items()}


def compile_embed_step(model_config: ml_collections.ConfigDict,
                       builder_config: ml_collections.ConfigDict,
                       block_len: int, devices: Sequence[jax.Device]
                      ) -> jax.stages.Compiled:
  """realm-index-builder's embed step on one host's devices."""
  mesh = sharding.make_mesh(builder_config.mesh, devices)
  config_lib.validate_batch(builder_config.embed_batch_size,
                            'embed_batch_size', mesh.shape['data'])
  graphdef, params = sharding.abstract_model(
      lambda: embedding.create_doc_tower(model_config), mesh,
      builder_config.axis_rules)
  batch_sharding = sharding.batch_sharding(mesh, builder_config.axis_rules)
  blocks = {name: jax.ShapeDtypeStruct(
      (builder_config.embed_batch_size, block_len), jnp.int32,
      sharding=batch_sharding)
            for name in ('token_ids', 'segment_ids', 'input_mask')}
  embed = embedding.make_embed_fn(graphdef, mesh, builder_config.axis_rules)
  return embed.lower(params, blocks).compile()


def memory_per_device(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes per device: arguments + outputs - donated (aliased) + temporaries
  + code: what must fit in one chip's HBM."""
  m = compiled.memory_analysis()
  usage = dict(arguments=m.argument_size_in_bytes,
               outputs=m.output_size_in_bytes,
               aliased=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
               code=m.generated_code_size_in_bytes)
  usage['total'] = (usage['arguments'] + usage['outputs'] - usage['aliased']
                    + usage['temp'] + usage['code'])
  return usage


def flops_per_device(compiled: jax.stages.Compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def report(title: str, compiled: jax.stages.Compiled | None, error: str,
           hbm_bytes: int | None) -> bool:
  """Prints one program's memory per chip; True if it fits."""
  print(f'\n== {title}')
  if compiled is None:
    print(f'   does NOT fit / failed to compile:\n   {error}')
    return False
  usage = memory_per_device(compiled)
  for name in ('arguments', 'outputs', 'aliased', 'temp', 'code', 'total'):
    print(f'   {name:10s} {usage[name] / GIB:9.3f} GiB')
  print(f'   flops      {flops_per_device(compiled):.4g} per device per call')
  if hbm_bytes is None:
    return True
  fits = usage['total'] <= hbm_bytes
  print(f'   HBM        {hbm_bytes / GIB:9.3f} GiB per chip: '
        f'{"fits" if fits else "does NOT fit"} '
        f'({usage["total"] / hbm_bytes:.0%})')
  return fits


def _compile_or_error(fn, *args):
  try:
    return fn(*args), ''
  except jax.errors.JaxRuntimeError as e:  # RESOURCE_EXHAUSTED: too big
    return None, str(e).splitlines()[0]


def resolve_platform(platform: str) -> tuple[str, str]:
  """('tpu' | 'cpu', why): auto takes TPU when libtpu is installed."""
  have_libtpu = importlib.util.find_spec('libtpu') is not None
  if platform == 'tpu' and not have_libtpu:
    raise app.UsageError("--platform=tpu needs libtpu: pip install -e "
                         "'.[tpu]' (no TPU needed)")
  if platform != 'auto':
    return platform, f'--platform={platform}'
  if not have_libtpu:
    return 'cpu', ("libtpu is not installed (pip install -e '.[tpu]'): "
                   'compiling for fake CPU devices instead')
  return 'tpu', 'libtpu found'


def compile_all(config, builder_config, topology: Topology,
                builder_topology: Topology, platform: str
               ) -> tuple[bool, dict[str, jax.stages.Compiled | None]]:
  """Compiles and reports both programs: (all fit, {name: compiled})."""
  if platform == 'tpu':
    trainer_devices = tpu_devices(topology)
    builder_devices = first_host(tpu_devices(builder_topology))
    hbm = (topology.hbm_bytes, builder_topology.hbm_bytes)
  else:
    cpus = jax.devices('cpu')
    trainer_devices = cpus[:topology.chips]
    builder_devices = cpus[:builder_topology.chips_per_host]
    hbm = (None, None)
  print(f'Trainer: {topology.name} ({platform}: {len(trainer_devices)} '
        f'devices, {trainer_devices[0].device_kind}), mesh '
        f'{sharding.mesh_shape(config.mesh, len(trainer_devices))}, batch '
        f'{config.batch_size} x {config.num_candidates} candidates, '
        f'model dtype {config.model.dtype}')
  compiled, error = _compile_or_error(compile_train_step, config,
                                      trainer_devices)
  programs = dict(train_step=compiled)
  fits = report('realm-pretrain train step (per chip)', compiled, error,
                hbm[0])
  if builder_config is not None:
    print(f'\nBuilder: one host of {builder_topology.name} '
          f'({len(builder_devices)} devices), embed batch '
          f'{builder_config.embed_batch_size}')
    compiled, error = _compile_or_error(
        compile_embed_step, config.model, builder_config,
        config.lengths.block_len, builder_devices)
    programs['embed_step'] = compiled
    fits &= report('realm-index-builder embed step (per chip)', compiled,
                   error, hbm[1])
    if compiled is not None:
      blocks_per_chip = builder_config.embed_batch_size / len(builder_devices)
      print(f'   {flops_per_device(compiled) / blocks_per_chip:.4g} FLOPs '
            'per block')
  return fits, programs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_console()
  config = flags.FLAGS.config
  topology = parse_topology(flags.FLAGS.topology)
  builder_topology = parse_topology(flags.FLAGS.builder_topology or
                                    flags.FLAGS.topology)
  platform, why = resolve_platform(flags.FLAGS.platform)
  print(f'Platform: {platform} ({why})')
  if platform == 'tpu':
    # libtpu otherwise asks the (absent) TPU VM metadata for these, and
    # logs an error; any values do for compiling. Compiling claims no chip,
    # so several compiles may hold libtpu at once (it locks by default).
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', topology.name)
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  else:
    # Before any backend starts: enough fake devices for the larger mesh.
    jax.config.update('jax_num_cpu_devices', max(
        topology.chips, builder_topology.chips_per_host))
  fits, _ = compile_all(config, flags.FLAGS.builder_config, topology,
                        builder_topology, platform)
  if not fits:
    raise SystemExit(1)


def run():
  config_flags.DEFINE_config_file(
      'config', None, 'Pre-training config: configs/pretrain.py:<variant>; '
      '--config.a.b=value overrides.')
  config_flags.DEFINE_config_file(
      'builder_config', None, 'Index builder config: '
      'configs/index_builder.py:<variant> (its embed step is compiled too).')
  flags.DEFINE_string('topology', None, 'Trainer slice, a Cloud TPU '
                      'accelerator type: v4-64, v5p-128, v5e-256, ...')
  flags.DEFINE_string('builder_topology', None, 'Builder slice (default: '
                      '--topology); its embed step runs per host.')
  flags.DEFINE_enum('platform', 'auto', ['auto', 'tpu', 'cpu'],
                    'tpu: compile for the topology (needs libtpu); cpu: for '
                    'fake CPU devices of the same mesh; auto: tpu when '
                    'libtpu is installed.')
  flags.mark_flags_as_required(['config', 'topology'])
  cli.define_console_flags()
  app.run(main)


if __name__ == '__main__':
  run()
