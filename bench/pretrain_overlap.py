r"""REALM pre-training steps with retrieval one step ahead, and without.

  .venv/bin/python bench/pretrain_overlap.py [--steps=60] [--repeats=3]
      [--flags='--config.model.num_layers=1 --config.model.hidden_size=32']

realm-pretrain (the tiny config, from scratch, on a synthetic corpus in
one-sentence blocks as the learning bed's) beside a real realm-index-builder
process, the index refreshed in lockstep, run with `retrieve_ahead` on and
off in alternation. Each step's host work - the query embedding's wait, the
search, trivial-retrieval exclusion, span holders and the featurization of
B x K candidate rows - runs either while the device runs the previous step
(ahead) or between steps (the baseline, `--config.retrieve_ahead=false`).
Prints the median over runs of each run's median step time (steps after
the first refresh, so compilation is excluded), of the host work's wall and
CPU time per step, and the ratio to the baseline of the same sitting; and,
timed after each pair of runs in this process, the jitted train step alone
(the runs' recorded config and the batch shapes realm-pretrain feeds, on a
fixed synthetic batch - the step's cost does not depend on the token values
- with no retrieval, no featurization and no builder), so the end-to-end
step's ratio to the bare step is measured in one sitting.

On a CPU the "device" is the same cores as the host, so overlapped host
work competes with the step for them; on a TPU host, the device is not.
"""
import argparse
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

# The jitted step alone runs in this process, on the CPU as the jobs do.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from flax import nnx

from realm_jax import cli
from realm_jax import models
from realm_jax import optim
from realm_jax import sharding
from realm_jax import trainer
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.objectives import realm as realm_objective
from realm_jax.retrieval import workspace

REPO = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, JAX_PLATFORMS='cpu')
LENGTHS = ['--config.lengths.block_len=32', '--config.lengths.max_title_len=16']


def _run(module, *flags, log=None):
  result = subprocess.run(
      [sys.executable, '-m', module, *flags], cwd=REPO, env=ENV,
      stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      check=False)
  if result.returncode:
    raise RuntimeError(f'{module} failed: {(result.stdout or "")[-2000:]}')


def pretrain(corpus: pathlib.Path, workdir: pathlib.Path, ahead: bool,
             args) -> list[dict]:
  """Runs realm-pretrain beside a builder; returns its logged step rows."""
  workdir.mkdir()
  with open(workdir / 'index_builder.log', 'w') as log:
    builder = subprocess.Popen(
        [sys.executable, '-m', 'index_builder.main',
         '--config=configs/index_builder.py:tiny', f'--workdir={workdir}',
         f'--config.corpus_dir={corpus}', '--config.poll_seconds=0.2'],
        cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
      _run('realm_jax.jobs.pretrain', '--config=configs/pretrain.py:tiny',
           f'--workdir={workdir}', f'--config.corpus_dir={corpus}',
           *LENGTHS, '--config.lengths.query_len=40',
           f'--config.lengths.joint_len={args.joint_len}',
           f'--config.batch_size={args.batch_size}',
           f'--config.num_candidates={args.candidates}',
           f'--config.num_train_steps={args.steps}',
           f'--config.checkpoint.every_steps={args.refresh}',
           f'--config.index.refresh_every_steps={args.refresh}',
           '--config.index.poll_seconds=0.2', '--config.log_every_steps=1',
           f'--config.retrieve_ahead={ahead}', *args.flags.split())
      if builder.wait(timeout=600):
        raise RuntimeError('the index builder failed: ' +
                           (workdir / 'index_builder.log').read_text()[-2000:])
    finally:
      builder.kill()
  path = workdir / 'logs' / 'pretrain' / 'metrics.jsonl'
  return [r for r in map(json.loads, path.read_text().splitlines())
          if 'loss' in r]


def summary(rows: list[dict], skip: int, refresh: int) -> dict[str, float]:
  """Medians over the steps after `skip`, without the refresh steps (which
  wait for their own index)."""
  rows = [r for r in rows if r['step'] > skip and (r['step'] - 1) % refresh]
  median = lambda key: statistics.median(r[key] for r in rows)
  return dict(step_ms=1e3 / median('time/steps_per_s'),
              host_ms=median('time/host_ms'),
              host_cpu_ms=median('time/host_cpu_ms'))


class JittedStepAlone:
  """realm-pretrain's jitted train step of a recorded run, on one batch."""

  def __init__(self, workdir: pathlib.Path):
    config = workspace.read_config(workdir)
    mesh = sharding.make_mesh(config.mesh)
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    graphdef, self.state, shardings, _ = trainer.init_train_state(
        lambda: models.REALM(config.model, rngs=nnx.Rngs(config.seed),
                             null_offset=config.null_document == 'relative'),
        tx, mesh, config.axis_rules)
    batch_sharding = sharding.batch_sharding(mesh, config.axis_rules)
    self.step_fn = trainer.jit_train_step(
        functools.partial(trainer.train_step, graphdef=graphdef, tx=tx,
                          loss_fn=functools.partial(
                              realm_objective.loss,
                              null_document=config.null_document)),
        shardings, batch_sharding, mesh)
    rng = np.random.default_rng(0)
    batch = {}
    for name, (shape, dtype) in pretrain_input.batch_shapes(config).items():
      if name.endswith('_ids') or name == 'mlm_targets':
        value = rng.integers(5, config.model.vocab_size, shape)
      elif name == 'mlm_positions':  # distinct positions inside the query
        value = np.sort(rng.permuted(np.tile(
            np.arange(1, config.lengths.query_len - 1), (shape[0], 1)),
                                     axis=1)[:, :shape[1]], axis=1)
      elif name.endswith('_segments') or name == 'candidate_holds_span':
        value = rng.integers(0, 2, shape)
      else:  # masks, validity, weights
        value = np.ones(shape)
      batch[name] = value.astype(dtype)
    self.batch = sharding.global_batch(batch, batch_sharding)
    self.key = jax.random.PRNGKey(config.seed)
    self.time_ms(2)  # compiles

  def time_ms(self, steps: int) -> float:
    """Median ms of `steps` steps, each dispatched and waited for."""
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.state, metrics = self.step_fn(self.state, self.batch, self.key)
      jax.block_until_ready((self.state, metrics))
      times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
  # The jitted step alone runs in this process, on the allocator the jobs
  # run on (tcmalloc when the machine has it).
  cli.use_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--docs', type=int, default=500)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--candidates', type=int, default=8)
  parser.add_argument('--joint_len', type=int, default=72)
  parser.add_argument('--refresh', type=int, default=20)
  parser.add_argument('--workdir', default='')
  parser.add_argument('--flags', default='',
                      help='more realm-pretrain flags, e.g. a smaller model '
                      'for a pod-like host share: --config.model.num_layers=1')
  args = parser.parse_args()
  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix='overlap_'))
  corpus = root / 'corpus'
  if not (corpus / 'manifest.json').exists():
    _run('realm_jax.jobs.prepare_corpus',
         '--config=configs/prepare_corpus.py:tiny', f'--workdir={root}',
         *LENGTHS, f'--config.input.synthetic_docs={args.docs}')
  runs = {True: [], False: []}
  alone, bare = None, []
  for repeat in range(args.repeats):
    for ahead in (False, True):  # alternating: drift hits both alike
      rows = pretrain(corpus, root / f'run{repeat}_{ahead}', ahead, args)
      runs[ahead].append(summary(rows, skip=args.refresh, refresh=args.refresh))
      print(f'repeat {repeat} ahead={ahead}: ' + ', '.join(
          f'{k} {v:.1f}' for k, v in runs[ahead][-1].items()), flush=True)
    alone = alone or JittedStepAlone(root / f'run{repeat}_True')
    bare.append(alone.time_ms(args.steps - args.refresh))
    print(f'repeat {repeat} jitted step alone: {bare[-1]:.1f} ms', flush=True)
  med = {ahead: {k: statistics.median(r[k] for r in rs)
                 for k in rs[0]} for ahead, rs in runs.items()}
  base = med[False]['step_ms']
  bare_ms = statistics.median(bare)
  print(f'\n{args.repeats} runs each, batch {args.batch_size} x '
        f'{args.candidates} candidates, joint_len {args.joint_len}, '
        f'{args.flags or "tiny model"}, '
        f'steps {args.refresh + 1}-{args.steps} less refresh steps; medians')
  print('| retrieval | ms/step | host wall ms | host CPU ms | step vs '
        'baseline | step vs jitted step alone |')
  print('|---|---|---|---|---|---|')
  for ahead, name in ((False, 'between steps (baseline)'),
                      (True, 'one step ahead')):
    m = med[ahead]
    print(f'| {name} | {m["step_ms"]:.1f} | {m["host_ms"]:.1f} | '
          f'{m["host_cpu_ms"]:.1f} | {m["step_ms"] / base:.2f}x | '
          f'{m["step_ms"] / bare_ms:.2f}x |')
  print(f'| jitted step alone (no retrieval, no builder) | {bare_ms:.1f} | '
        f'- | - | {bare_ms / base:.2f}x | 1.00x |')


if __name__ == '__main__':
  main()
