r"""Index refresh interval: publishing overlapped with the next embedding.

  JAX_PLATFORMS=cpu .venv/bin/python bench/builder_overlap.py \
      [--blocks=100000] [--versions=4] [--kind=scann]

A refresh is embed (devices) + a host part (read the chunks, build the
index, publish). With `overlap_publish` the builder publishes version N on
a host thread while it embeds checkpoint N + 1, so back-to-back refreshes
should come every max(embed, host) instead of every embed + host.

Setup, all real: a synthetic corpus of --blocks blocks; a retriever
trained by realm-ict for --versions steps, checkpointed every step; the
real Builder, in this process. A "trainer" thread releases checkpoint
k + 1 into the workdir as soon as the builder starts embedding checkpoint
k, so a newer checkpoint always waits (a builder that never idles), then
writes TRAINING_DONE. The times at which LATEST flips give the refresh
intervals; each version's manifest gives its embed seconds, and the time
from its last chunk written to LATEST flipping is its host part. Run once
with overlap_publish off and once on, same corpus and checkpoints.

Pod-like share: on a pod the devices embed while the host CPU publishes.
Here both run on the same cores, so the tower is made small (--layers,
--hidden) to bring the embedding down to the host part's size, as a
32-chip builder brings the 13M-block embedding down to minutes
(docs/capacity_plan.md); the table says how far the two compete.
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import numpy as np  # pylint: disable=g-import-not-at-top
# The parser behind --config=path:variant, as the jobs read their configs.
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import builder_scaling  # pylint: disable=g-import-not-at-top

from realm_jax import corpus as corpus_lib
from realm_jax.jobs import ict
from realm_jax.retrieval import builder as builder_lib
from realm_jax.retrieval import index_store
from realm_jax.retrieval import workspace

REPO = pathlib.Path(__file__).resolve().parents[1]


def config_file(name: str, variant: str = 'tiny'):
  return ConfigFileFlagParser(name='config').parse(
      f'{REPO}/configs/{name}.py:{variant}')


def train_checkpoints(root: pathlib.Path, args) -> pathlib.Path:
  """A realm-ict run with a checkpoint at every step (its workdir)."""
  workdir = root / 'ict'
  if not (workdir / workspace.TRAINING_DONE).exists():
    config = config_file('ict')
    config.corpus_dir = str(root / 'corpus')
    config.model.update(num_layers=args.layers, hidden_size=args.hidden,
                        num_heads=2, intermediate_size=2 * args.hidden,
                        projection_size=128, vocab_size=1000)
    config.batch_size = 8
    config.num_train_steps = args.versions
    config.checkpoint.every_steps = 1
    config.checkpoint.max_to_keep = max(args.versions,
                                        workspace.MIN_CHECKPOINTS_TO_KEEP)
    ict.train_and_evaluate(config, str(workdir))
  return workdir


def refresh_run(root: pathlib.Path, trained: pathlib.Path, overlap: bool,
                args) -> dict:
  """Runs the builder over the checkpoints as they are released; returns
  the LATEST flip times and every version's manifest timings."""
  workdir = root / ('overlapped' if overlap else 'sequential')
  if workdir.exists():
    shutil.rmtree(workdir)
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'corpus').symlink_to(root / 'corpus')
  shutil.copy(trained / workspace.CONFIG_FILE, workdir)
  steps = sorted(int(p.name) for p in (trained / 'checkpoints').iterdir()
                 if p.name.isdigit())

  def release(step):
    shutil.copytree(trained / 'checkpoints' / str(step),
                    workdir / 'checkpoints' / str(step))
  release(steps[0])
  store = index_store.IndexStore(workdir / 'index')
  num_chunks = -(-len(corpus_lib.Corpus(root / 'corpus'))
                 // args.chunk_blocks)
  embedded, flips, stop = {}, {}, threading.Event()

  def trainer():
    """Releases checkpoint k + 1 once the builder embeds checkpoint k."""
    for step, later in zip(steps, steps[1:]):
      while not store.building_dir(step).exists() and not stop.is_set():
        time.sleep(0.02)
      release(later)
    (workdir / workspace.TRAINING_DONE).write_text('')

  def watch():
    """When each version's chunks are all written (embedding done) and
    when LATEST names it (published)."""
    while not stop.is_set():
      now = time.perf_counter()
      for step in steps:
        building = store.building_dir(step)
        if step not in embedded and building.exists() and all(
            index_store.chunk_done(building, c) for c in range(num_chunks)):
          embedded[step] = now
      latest = store.latest_step()
      if latest is not None and latest not in flips:
        flips[latest] = now
      time.sleep(0.01)

  threads = [threading.Thread(target=f, daemon=True) for f in (trainer, watch)]
  for thread in threads:
    thread.start()
  config = config_file('index_builder')
  config.embed_batch_size = args.batch_size
  config.chunk_blocks = args.chunk_blocks
  config.index.kind = args.kind
  config.poll_seconds = 0.05
  config.keep_versions = len(steps) + 1
  config.overlap_publish = overlap
  start = time.perf_counter()
  builder_lib.Builder(config, str(workdir)).run()
  time.sleep(0.05)
  stop.set()
  for thread in threads:
    thread.join()
  embed = {step: store.read_manifest(index_store.version_name(step))[
      'timings']['embed_s'] for step in sorted(flips)}
  return dict(flips={s: t - start for s, t in sorted(flips.items())},
              embed=embed,
              host={s: flips[s] - embedded[s] for s in sorted(flips)})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--blocks', type=int, default=100_000)
  parser.add_argument('--versions', type=int, default=4)
  parser.add_argument('--kind', default='scann', choices=['scann', 'exact'])
  parser.add_argument('--layers', type=int, default=1)
  parser.add_argument('--hidden', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--chunk_blocks', type=int, default=32_768)
  parser.add_argument('--workdir', default=None,
                      help='scratch folder (default: a temporary one)')
  args = parser.parse_args()

  root = pathlib.Path(args.workdir or tempfile.mkdtemp())
  builder_scaling.synthetic_corpus(root, args.blocks)
  trained = train_checkpoints(root, args)
  runs = {overlap: refresh_run(root, trained, overlap, args)
          for overlap in (False, True)}

  print(f'\n{args.blocks} blocks, {args.kind} index, tower {args.layers} '
        f'layer(s) x {args.hidden}, {args.versions} checkpoints released as '
        f'the builder reaches each; {os.cpu_count()} CPUs; seconds')
  print(f'{"publishing":12s} {"embed":>7s} {"host":>7s} {"interval":>9s} '
        f'{"/ max(e,h)":>11s} {"/ (e+h)":>8s}')
  intervals = {}
  for overlap, run in runs.items():
    flips = list(run['flips'].values())
    # Steady state: versions after the first (whose embed had no overlap).
    embed = float(np.median(list(run['embed'].values())[1:]))
    host = float(np.median(list(run['host'].values())[1:]))
    interval = float(np.median(np.diff(flips)))
    intervals[overlap] = interval
    print(f'{"overlapped" if overlap else "sequential":12s} {embed:7.1f} '
          f'{host:7.1f} {interval:9.1f} {interval / max(embed, host):11.2f} '
          f'{interval / (embed + host):8.2f}')
  print(f'refresh interval, overlapped / sequential: '
        f'{intervals[True] / intervals[False]:.2f}')
  print(json.dumps({('overlapped' if k else 'sequential'): v
                    for k, v in runs.items()}, default=str))
  if not args.workdir:
    shutil.rmtree(root)


if __name__ == '__main__':
  main()
