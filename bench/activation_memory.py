r"""What realm-pretrain's backward pass keeps per chip, by dtype and remat.

  .venv/bin/python bench/activation_memory.py --size=base --chips=32 [--top=10]

Traces the REALM loss (objectives/realm.py) of configs/pretrain.py:<size>
at one chip's share of the batch (batch_size / chips queries, data
parallel) and sums the residuals jax saves for the backward pass
(jax's saved_residuals: the program as written, before XLA). A TPU
compile (realm-compile) then fits the program into HBM with its own
rematerialisation, so this is what the model asks for, not what the chip
ends up holding; the two differ most when the compiler has to recompute a
lot to fit. `--top` lists the largest residuals of each row by source line.
Runs on the CPU in about a minute per row; nothing is compiled.
"""
import argparse
import collections
import os
import pathlib
import re

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top
from flax import nnx
# The parser behind --config=path:variant, as the jobs read their configs.
from ml_collections.config_flags.config_flags import ConfigFileFlagParser
# saved_residuals is what jax.ad_checkpoint.print_saved_residuals prints.
from jax._src import ad_checkpoint

from realm_jax import config_lib
from realm_jax import models
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.objectives import realm as realm_objective

GIB = 1024**3
CONFIG = pathlib.Path(__file__).parent.parent / 'configs' / 'pretrain.py'


def pretrain_config(size: str):
  return ConfigFileFlagParser(name='config').parse(
      f'{CONFIG}:{size}')


def residuals(config) -> list[tuple[jax.ShapeDtypeStruct, str]]:
  """(abstract value, source) of everything the loss's backward keeps."""
  graphdef, params = nnx.split(jax.eval_shape(lambda: models.REALM(
      config.model, rngs=nnx.Rngs(0),
      null_offset=config.null_document == 'relative')))
  batch = {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype)
           in pretrain_input.batch_shapes(config).items()}
  key = jax.eval_shape(lambda: jax.random.key(0))

  def loss(params, batch, key):
    return realm_objective.loss(params, batch, key, graphdef,
                                null_document=config.null_document)[0]

  # The arguments (parameters, batch) are held anyway: not counted.
  return [(aval, source) for aval, source
          in ad_checkpoint.saved_residuals(loss, params, batch, key)
          if not source.startswith('from the argument')
          and not jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key)]


def _where(source: str) -> str:
  """'exp at realm_jax/models.py:153' from jax's residual description."""
  op = re.match(r'output of (?:jitted function )?\'?(\w+)', source)
  line = re.findall(r'([\w/.]+\.py):(\d+)', source)
  place = (f'{pathlib.Path(line[-1][0]).name}:{line[-1][1]}' if line
           else source[:40])
  return f'{op.group(1) if op else source.split()[0]} at {place}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='base')
  parser.add_argument('--chips', type=int, default=32,
                      help='data-parallel chips sharing the batch')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--remats', default=','.join(config_lib.REMATS))
  parser.add_argument('--top', type=int, default=0)
  args = parser.parse_args()

  config = pretrain_config(args.size)
  queries = config.batch_size // args.chips
  print(f'{args.size}: {queries} queries per chip ({config.batch_size} over '
        f'{args.chips} chips) x {config.num_candidates} candidates, reader '
        f'{config.lengths.joint_len} / block {config.lengths.block_len} '
        'tokens; GiB per chip kept for the backward pass')
  print(f'{"dtype":10s} {"remat":8s} {"kept GiB":>9s} {"vs none":>8s}  '
        'by dtype')
  for dtype in args.dtypes.split(','):
    baseline = None
    for remat in args.remats.split(','):
      config = pretrain_config(args.size)
      config.model.dtype, config.model.remat = dtype, remat
      config.batch_size = queries
      kept = residuals(config)
      by_dtype = collections.Counter()
      for aval, _ in kept:
        by_dtype[str(aval.dtype)] += aval.size * aval.dtype.itemsize
      total = sum(by_dtype.values())
      baseline = baseline or total
      print(f'{dtype:10s} {remat:8s} {total / GIB:9.2f} '
            f'{total / baseline:8.2f}  ' + ', '.join(
                f'{name} {size / GIB:.2f}' for name, size
                in by_dtype.most_common() if size >= 0.01 * GIB),
            flush=True)
      if args.top:
        by_source = collections.Counter()
        for aval, source in kept:
          by_source[(_where(source), str(aval.dtype))] += (
              aval.size * aval.dtype.itemsize)
        for (where, name), size in by_source.most_common(args.top):
          print(f'{"":20s} {size / GIB:7.2f}  {name:8s} {where}')


if __name__ == '__main__':
  main()
