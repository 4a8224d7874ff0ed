r"""Trainer step times while the index handle hot-swaps index versions.

  JAX_PLATFORMS=cpu .venv/bin/python bench/hot_swap.py [--blocks=300000]

A training loop (the tiny retriever's ICT step on synthetic batches, jitted)
calls `IndexHandle.maybe_swap()` and searches the index between steps, as
REALM pre-training will. Meanwhile the pointer flips between pre-built,
complete versions of a `--blocks` x 128 index, so the handle's background
thread verifies checksums and loads a version every `--flip_seconds`.
Compares step times without swaps (baseline) and with them, and the steps
that ran while a version was loading (checksums, read, device copy) with
the no-swap median. Goal: no visible stall (<= 1.2x the no-swap median).
The no-swap phase's own max/median is printed too: on a shared 2-core
machine single steps spike by 1.3-1.7x with no swap at all, so a max over
a phase measures the machine as much as the handle.

The handle's loader thread runs at the lowest CPU priority (nice 19); the
swap phases alternate with a loader left at the training thread's priority
(the handle before that change), so both are measured in one sitting.
"""
import argparse
import functools
import json
import os
import pathlib
import tempfile
import threading
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from flax import nnx

from realm_jax import config_lib
from realm_jax import models
from realm_jax.retrieval import index_handle
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips
from realm_jax import optim
from realm_jax import sharding
from realm_jax import trainer
from realm_jax.objectives import ict as ict_objective


def make_train_step(batch_size: int):
  config = config_lib.model_config('tiny', vocab_size=8000)
  mesh = sharding.make_mesh(config_lib.mesh_config(), jax.local_devices())
  tx = optim.make_optimizer(optim.optimizer_config(1e-4), 1000)
  graphdef, state, shardings, _ = trainer.init_train_state(
      lambda: models.RetrieverModel(config, rngs=nnx.Rngs(0)), tx, mesh,
      config_lib.AXIS_RULES)
  batch_sharding = sharding.batch_sharding(mesh, config_lib.AXIS_RULES)
  step_fn = trainer.jit_train_step(
      functools.partial(trainer.train_step, graphdef=graphdef, tx=tx,
                        loss_fn=ict_objective.loss), shardings,
      batch_sharding, mesh)
  rng = np.random.default_rng(0)
  batch = dict(
      query_ids=rng.integers(5, 8000, (batch_size, 64)).astype(np.int32),
      query_mask=np.ones((batch_size, 64), np.int32),
      block_ids=rng.integers(5, 8000, (batch_size, 288)).astype(np.int32),
      block_segments=np.ones((batch_size, 288), np.int32),
      block_mask=np.ones((batch_size, 288), np.int32))
  batch = sharding.global_batch(batch, batch_sharding)
  key = jax.random.PRNGKey(0)
  return step_fn, state, batch, key


def publish_versions(store, blocks, count):
  config = mips.index_config()
  config.kind = 'exact'
  rng = np.random.default_rng(1)
  for step in range(1, count + 1):
    vectors = rng.normal(size=(blocks, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.publish(step, mips.build_index(vectors, config), vectors[:16], {})


def flip_pointer(store, steps, flip_seconds, stop):
  """Points LATEST at each version in turn, as fresh publishes would."""
  for step in steps:
    if stop.wait(flip_seconds):
      return
    index_store.atomic_write_text(
        store.directory / index_store.POINTER,
        json.dumps(dict(version=index_store.version_name(step),
                        checkpoint_step=step)))


def timed_loads(handle):
  """Records the (start, end) of every version load the handle makes."""
  loads, load = [], handle.store.load

  def timed(*args, **kwargs):
    start = time.perf_counter()
    try:
      return load(*args, **kwargs)
    finally:
      loads.append((start, time.perf_counter()))
  handle.store.load = timed
  return loads


def run_steps(step_fn, state, batch, key, handle, num_steps, queries,
              loads=()):
  """Times each step; also whether a swap landed in it and whether it ran
  while a version was loading (it overlaps one of `loads`)."""
  times, swapped, spans = [], [], []
  for _ in range(num_steps):
    start = time.perf_counter()
    swapped.append(handle.maybe_swap())
    handle.search(queries, k=8)  # as the REALM step's retrieval will
    state, metrics = step_fn(state, batch, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    spans.append((start, start + times[-1]))
  loading = [any(a < end and start < b for a, b in loads)
             for start, end in spans]
  return state, np.array(times), np.array(swapped), np.array(loading)


def describe(name, times):
  median = np.median(times)
  return (f'{name:24s} {len(times):6d} {1e3 * median:10.1f} '
          f'{1e3 * np.percentile(times, 90):9.1f} {1e3 * times.max():9.1f} '
          f'{times.max() / median:9.2f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--blocks', type=int, default=300_000)
  parser.add_argument('--versions', type=int, default=4)
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--flip_seconds', type=float, default=2.0)
  parser.add_argument('--rounds', type=int, default=3,
                      help='alternating rounds of the three phases')
  args = parser.parse_args()

  workdir = pathlib.Path(tempfile.mkdtemp())
  store = index_store.IndexStore(workdir / 'index')
  print(f'publishing {args.versions} versions of {args.blocks} x 128 ...')
  publish_versions(store, args.blocks, args.versions)
  size_mb = sum(f['bytes'] for f in store.read_manifest(
      index_store.version_name(1))['files'].values()) / 1e6

  step_fn, state, batch, key = make_train_step(args.batch_size)
  queries = np.random.default_rng(2).normal(
      size=(args.batch_size, 128)).astype(np.float32)
  lowest = index_handle._lower_thread_priority  # pylint: disable=protected-access
  phases = {'no swaps': [], 'swaps, loader nice 19': [],
            'swaps, loader nice 0': []}
  at_swap = {name: [] for name in phases}
  during_load = {name: [] for name in phases}
  load_seconds = {name: [] for name in phases}
  version = 1
  for _ in range(args.rounds):
    for name in phases:
      # The loader's priority is set when its thread starts.
      index_handle._lower_thread_priority = (  # pylint: disable=protected-access
          lowest if 'nice 19' in name else lambda: None)
      index_store.atomic_write_text(
          store.directory / index_store.POINTER,
          json.dumps(dict(version=index_store.version_name(version),
                          checkpoint_step=version)))
      handle = index_handle.IndexHandle(store.directory, poll_seconds=0.1)
      handle.wait_until_ready(60)
      loads = timed_loads(handle)
      handle.start()
      state, *_ = run_steps(step_fn, state, batch, key, handle, 3, queries)
      stop = threading.Event()
      others = [v for v in range(1, args.versions + 1) if v != version]
      flipper = threading.Thread(target=flip_pointer, args=(
          store, others if name != 'no swaps' else [], args.flip_seconds,
          stop))
      flipper.start()
      state, times, swapped, loading = run_steps(
          step_fn, state, batch, key, handle, args.steps, queries, loads)
      stop.set()
      flipper.join()
      handle.close()
      version = handle.checkpoint_step
      phases[name].append(times)
      at_swap[name].append(times[swapped])
      during_load[name].append(times[loading])
      load_seconds[name].extend(b - a for a, b in loads)

  base = np.median(np.concatenate(phases['no swaps']))
  swaps = sum(len(t) for n, ts in at_swap.items() for t in ts)
  print(f'\nindex version: {args.blocks} x 128 float32 ({size_mb:.0f} MB), '
        f'{swaps} swaps in all; {args.rounds} rounds x {len(phases)} phases '
        f'of {args.steps} steps, alternating; ICT tiny step, batch '
        f'{args.batch_size}; {os.cpu_count()} CPUs')
  print(f'{"phase":24s} {"steps":>6s} {"median ms":>10s} {"p90 ms":>9s} '
        f'{"max ms":>9s} {"max/med":>9s} {"max/no-swap median":>19s}')
  for name, runs in phases.items():
    times = np.concatenate(runs)
    print(describe(name, times) + f' {times.max() / base:19.2f}')
  print('\nsteps that ran while a version was loading (checksums, read, '
        'device copy), against the no-swap phase:')
  print(f'{"phase":24s} {"loads":>6s} {"load s":>7s} {"steps":>6s} '
        f'{"median ms":>10s} {"max ms":>9s} {"median/no-swap median":>22s} '
        f'{"max/no-swap median":>19s}')
  for name in phases:
    if name == 'no swaps':
      continue
    steps = np.concatenate(during_load[name])
    if not len(steps):
      print(f'{name:24s} no step overlapped a load')
      continue
    print(f'{name:24s} {len(load_seconds[name]):6d} '
          f'{np.median(load_seconds[name]):7.2f} {len(steps):6d} '
          f'{1e3 * np.median(steps):10.1f} {1e3 * steps.max():9.1f} '
          f'{np.median(steps) / base:22.2f} {steps.max() / base:19.2f}')
  print('(the no-swap phase\'s own max/median is the machine\'s noise '
        'floor for a max)')


if __name__ == '__main__':
  main()
