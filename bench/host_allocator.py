r"""Step time of a MiniLM-sized encoder under each host memory allocator.

  .venv/bin/python bench/host_allocator.py [--batch 32 --length 288 --runs 5]

XLA's CPU runtime allocates every step's large buffers afresh. Under
glibc's malloc, blocks above its mmap threshold (at most 32 MB) are mmap'd
and munmap'd each time, so every step faults in and zeroes its activations
page by page again: on 2 cores the kernel's share of the step's CPU time
(sys) is most of it. An allocator that keeps freed memory for reuse
(jemalloc, tcmalloc; LD_PRELOAD, so per process) or glibc with
transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1: 2 MB faults
instead of 4 kB ones), or glibc told never to map (one arena: worker
threads' arenas map large blocks regardless) avoids that. Memory kept for
reuse raises the peak: the table gives it too. Each setting runs in its own process,
interleaved over --runs rounds, on the same jitted forward+backward (the
ICT-like step: every block through the encoder, mean pooled); the table
gives the median step time, the page faults and the kernel's share of CPU
time, and the ratio to glibc's default measured in the same run.
"""
import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = {
    'glibc (default)': {},
    'glibc + THP (hugetlb=1)': {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'},
    # One arena that never maps, trims or unmaps: freed blocks are reused.
    'glibc, 1 arena, no mmap, no trim': {
        'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
        'MALLOC_TRIM_THRESHOLD_': str(2**62)},
}
# name -> (library, its settings). jemalloc returns freed pages to the
# kernel after dirty_decay_ms (10 s by default); -1 keeps them.
PRELOADS = {
    'jemalloc': ('jemalloc', {}),
    'jemalloc, no decay': ('jemalloc', {
        'MALLOC_CONF': 'dirty_decay_ms:-1,muzzy_decay_ms:-1'}),
    'tcmalloc (the jobs\' default when present)': (
        'tcmalloc_minimal', {}),
}


def worker(batch: int, length: int, steps: int) -> dict:
  """Times `steps` jitted forward+backward steps in this process."""
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from realm_jax import config_lib  # pylint: disable=g-import-not-at-top
  from realm_jax import models  # pylint: disable=g-import-not-at-top

  config = config_lib.model_config('tiny', vocab_size=30522)
  config.update(hidden_size=384, num_layers=6, num_heads=12,
                intermediate_size=1536, dropout_rate=0.0,
                attention_dropout_rate=0.0)
  encoder = models.BertEncoder(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(encoder)
  ids = jax.random.randint(jax.random.key(1), (batch, length), 0, 30522)
  mask = jnp.ones_like(ids)

  @jax.jit
  def step(params):
    def loss(params):
      sequence, _ = nnx.merge(graphdef, params)(ids, jnp.zeros_like(ids),
                                                mask)
      pooled = models.mean_pool(sequence, mask)
      return (pooled @ pooled.T).mean()
    return jax.grad(loss)(params)

  jax.block_until_ready(step(params))  # compile
  usage = resource.getrusage(resource.RUSAGE_SELF)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(step(params))
    times.append(time.perf_counter() - start)
  after = resource.getrusage(resource.RUSAGE_SELF)
  return dict(seconds=statistics.median(times),
              faults=(after.ru_minflt - usage.ru_minflt) / steps,
              user=(after.ru_utime - usage.ru_utime) / steps,
              sys=(after.ru_stime - usage.ru_stime) / steps,
              peak_gb=after.ru_maxrss / 2**20)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=288)
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.batch, args.length, args.steps)))
    return
  settings = dict(SETTINGS)
  for name, (library, extra) in PRELOADS.items():
    path = ctypes.util.find_library(library)
    if path:
      settings[name] = {'LD_PRELOAD': path, **extra}
    else:
      print(f'{name}: lib{library} not found (Debian: apt-get install '
            f'{"libjemalloc2" if "jemalloc" in name else "libtcmalloc-minimal4"})')
  results = {name: [] for name in settings}
  # Each setting's own allocator only, whatever this process was started with.
  clean = {k: v for k, v in os.environ.items()
           if k not in ('LD_PRELOAD', 'GLIBC_TUNABLES', 'MALLOC_CONF')}
  for _ in range(args.runs):  # interleaved: drift hits every setting alike
    for name, env in settings.items():
      out = subprocess.run(
          [sys.executable, __file__, '--worker', f'--batch={args.batch}',
           f'--length={args.length}', f'--steps={args.steps}'],
          env=dict(clean, **env), capture_output=True, text=True,
          check=True)
      results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = statistics.median(r['seconds'] for r in results['glibc (default)'])
  print(f'\nMiniLM-sized encoder (6 x 384) forward+backward, batch '
        f'{args.batch} x {args.length} pieces; medians over {args.runs} '
        f'processes x {args.steps} steps\n')
  print('| allocator | s/step | vs glibc | minor faults/step | sys share of '
        'CPU time | peak memory (GB) |')
  print('|---|---|---|---|---|---|')
  for name, runs in results.items():
    median = lambda key: statistics.median(r[key] for r in runs)
    cpu = median('user') + median('sys')
    print(f'| {name} | {median("seconds"):.2f} | '
          f'{base / median("seconds"):.2f}x | {median("faults"):,.0f} | '
          f'{median("sys") / cpu:.0%} | {median("peak_gb"):.1f} |')


if __name__ == '__main__':
  main()
