r"""Trainer step times while the index handle hot-swaps index versions.

  JAX_PLATFORMS=cpu .venv/bin/python bench/hot_swap.py [--blocks=300000]

A training loop (the tiny retriever's ICT step on synthetic batches, jitted)
calls `IndexHandle.maybe_swap()` and searches the index between steps, as
REALM pre-training will. Meanwhile the pointer flips between pre-built,
complete versions of a `--blocks` x 128 index, so the handle's background
thread verifies checksums and loads a version every `--flip_seconds`.
Compares step times without swaps (baseline) and with them, and the steps
at which a swap landed. Goal: no visible stall (max <= 1.2x median).
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


def run_steps(step_fn, state, batch, key, handle, num_steps, queries):
  times, swapped = [], []
  for _ in range(num_steps):
    start = time.perf_counter()
    swapped.append(handle.maybe_swap())
    handle.search(queries, k=8)  # as the REALM step's retrieval will
    state, metrics = step_fn(state, batch, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return state, np.array(times), np.array(swapped)


def describe(name, times):
  median = np.median(times)
  return (f'{name:18s} {len(times):6d} {1e3 * median:10.1f} '
          f'{1e3 * np.percentile(times, 90):9.1f} {1e3 * times.max():9.1f} '
          f'{times.max() / median:9.2f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--blocks', type=int, default=300_000)
  parser.add_argument('--versions', type=int, default=4)
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--flip_seconds', type=float, default=2.0)
  args = parser.parse_args()

  workdir = pathlib.Path(tempfile.mkdtemp())
  store = index_store.IndexStore(workdir / 'index')
  print(f'publishing {args.versions} versions of {args.blocks} x 128 ...')
  publish_versions(store, args.blocks, args.versions)
  size_mb = sum(f['bytes'] for f in store.read_manifest(
      index_store.version_name(1))['files'].values()) / 1e6

  index_store.atomic_write_text(store.directory / index_store.POINTER,
                                json.dumps(dict(version='step-00000001',
                                                checkpoint_step=1)))
  handle = index_handle.IndexHandle(store.directory, poll_seconds=0.1)
  handle.wait_until_ready(60)
  handle.start()
  step_fn, state, batch, key = make_train_step(args.batch_size)
  queries = np.random.default_rng(2).normal(
      size=(args.batch_size, 128)).astype(np.float32)
  state, _, _ = run_steps(step_fn, state, batch, key, handle, 5, queries)

  state, baseline, _ = run_steps(step_fn, state, batch, key, handle,
                                 args.steps, queries)
  stop = threading.Event()
  flipper = threading.Thread(target=flip_pointer, args=(
      store, range(2, args.versions + 1), args.flip_seconds, stop))
  flipper.start()
  steps = [handle.checkpoint_step]
  state, during, swapped = run_steps(step_fn, state, batch, key, handle,
                                     args.steps, queries)
  stop.set()
  flipper.join()
  handle.close()

  print(f'\nindex version: {args.blocks} x 128 float32 ({size_mb:.0f} MB), '
        f'{swapped.sum()} swaps during {args.steps} steps; '
        f'ICT tiny step, batch {args.batch_size}; {os.cpu_count()} CPUs')
  print(f'{"phase":18s} {"steps":>6s} {"median ms":>10s} {"p90 ms":>9s} '
        f'{"max ms":>9s} {"max/med":>9s}')
  print(describe('no swaps', baseline))
  print(describe('swaps happening', during))
  if swapped.any():
    base = np.median(baseline)
    at_swap = during[swapped]
    print(f'{"steps with a swap":18s} {len(at_swap):6d} '
          f'{1e3 * np.median(at_swap):10.1f} {"":9s} '
          f'{1e3 * at_swap.max():9.1f} {at_swap.max() / base:9.2f}'
          '   (ratio to the no-swap median)')
  print(f'final index step: {handle.checkpoint_step} (started at {steps[0]})')


if __name__ == '__main__':
  main()
