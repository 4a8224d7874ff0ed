r"""Document-tower embedding throughput against this machine's matmul peak.

  JAX_PLATFORMS=cpu .venv/bin/python bench/embed_throughput.py
  JAX_PLATFORMS=cpu .venv/bin/python bench/embed_throughput.py \
      --corpus=/tmp/bench_corpus/corpus

For each model size, inits the document tower as the index builder does
(sharding.init_model over a mesh of all local devices), compiles
embedding.make_embed_fn once and times it on synthetic full-length 288-token
blocks already on the device: the pure step rate. Model FLOPs are counted
analytically (see model_flops_per_block) and checked against XLA's
cost_analysis. The peak they are compared with is a jitted float32 n x n
matmul timed right before each step (the cores are shared with other
processes, so a peak from another moment would not compare). With --corpus,
also times embedding.embed_blocks over the first blocks of a prepared corpus
(read, featurize, transfer, embed, fetch), as a ratio to the step rate.
Medians over --runs. No wall-clock numbers are asserted.
"""
import os
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax.retrieval import embedding
from realm_jax import sharding

_MODELS = flags.DEFINE_list('models', ['tiny', 'base'],
                            'Model sizes (config_lib.model_config).')
_BATCH_SIZES = flags.DEFINE_list(
    'batch_sizes', ['32', '8'],
    'Blocks per step, one per --models entry (or one for all).')
_BLOCK_LEN = flags.DEFINE_integer('block_len', 288, "REALM's block length.")
_VOCAB_SIZE = flags.DEFINE_integer(
    'vocab_size', 30522, "Model vocab (BERT's); only the embedding table's "
    'size, which is not counted in the FLOPs. Must exceed the corpus vocab.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed steps; the median is used.')
_MATMUL_SIZE = flags.DEFINE_integer(
    'matmul_size', 2048, 'n of the n x n @ n x n float32 peak matmul.')
_MATMUL_RUNS = flags.DEFINE_integer(
    'matmul_runs', 3, 'Peak matmuls timed before each step; their median is '
    "that step's peak.")
_CORPUS = flags.DEFINE_string(
    'corpus', None, 'A prepared corpus folder (realm-prepare-corpus '
    'WORKDIR/corpus, or its WORKDIR) for the end-to-end embed_blocks rate.')
_CORPUS_BATCHES = flags.DEFINE_integer(
    'corpus_batches', 8, 'Batches per end-to-end embed_blocks run (capped '
    'by the corpus size).')
_CORPUS_RUNS = flags.DEFINE_integer(
    'corpus_runs', 3, 'End-to-end embed_blocks runs; the median is used.')

REALM_BLOCKS = 13_353_718  # REALM's Wikipedia index (blocks of 288 tokens)


def model_flops_per_block(config, block_len: int) -> dict[str, float]:
  """Forward FLOPs of one block through the doc tower (multiply-add = 2).

  L tokens, hidden H, MLP width I, projection P, per layer:
    QKV projections     3 * 2*L*H*H
    output projection       2*L*H*H
    scores Q K^T            2*L*L*H   (all heads together: heads * head_dim = H)
    probs @ V               2*L*L*H
    MLP                 2 * 2*L*H*I
  then the pooler on [CLS] 2*H*H and the projection 2*H*P. Embedding lookups,
  LayerNorm, softmax, GELU and biases are not counted (lookups are not
  FLOPs; the rest is O(L*H) or O(L*L) elementwise, a few % at most).
  """
  L, H = block_len, config.hidden_size
  I, P = config.intermediate_size, config.projection_size or 0  # 0: none
  per_layer = dict(qkv=6 * L * H * H, out=2 * L * H * H,
                   attention=4 * L * L * H, mlp=4 * L * H * I)
  flops = {k: config.num_layers * v for k, v in per_layer.items()}
  flops['head'] = 2 * H * H + 2 * H * P
  flops['total'] = sum(flops.values())
  return flops


def synthetic_blocks(batch_size: int, block_len: int, vocab_size: int,
                     max_title_len: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Full blocks laid out as Corpus.blocks does: [CLS] title [SEP] body [SEP],
  segment 0 up to the first [SEP], 1 after; no padding (the compute is the
  same for any mask, but a full block is the realistic worst case)."""
  rng = np.random.default_rng(seed)
  token_ids = rng.integers(5, vocab_size, (batch_size, block_len),
                           dtype=np.int32)
  title_len = rng.integers(1, max_title_len + 1, batch_size)
  positions = np.arange(block_len)
  token_ids[:, 0] = 2  # stand-ins for [CLS]/[SEP]: ids only, no semantics
  token_ids[np.arange(batch_size), title_len + 1] = 3
  token_ids[:, -1] = 3
  segment_ids = (positions[None] >= (title_len + 2)[:, None]).astype(np.int32)
  return dict(token_ids=token_ids, segment_ids=segment_ids,
              input_mask=np.ones((batch_size, block_len), np.int32))


def seconds(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def timings(fn, runs: int) -> list[float]:
  return [seconds(fn) for _ in range(runs)]


def make_matmul(n: int):
  """() -> the result of a jitted float32 n x n matmul, and its FLOPs: the
  reference for what XLA's CPU dot reaches on this machine."""
  a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))  # compile
  return lambda: matmul(a, b), 2 * n**3


def matmul_peak(matmul, flops: int, runs: int) -> float:
  return flops / statistics.median(timings(matmul, runs))


def xla_flops(compiled) -> float | None:
  """The compiled program's flops per XLA's cost model, if it reports one."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  return None if not cost or 'flops' not in cost else float(cost['flops'])


def bench_model(size: str, batch_size: int, mesh, corpus, matmul) -> dict:
  model_config = config_lib.model_config(size, _VOCAB_SIZE.value)
  graphdef, params, _ = sharding.init_model(
      lambda: embedding.create_doc_tower(model_config), mesh,
      config_lib.AXIS_RULES)
  embed_fn = embedding.make_embed_fn(graphdef, mesh, config_lib.AXIS_RULES)
  batch_sharding = sharding.batch_sharding(mesh, config_lib.AXIS_RULES)
  max_title_len = config_lib.lengths_config().max_title_len
  # Inputs go to the device once: the step rate excludes the host.
  blocks = sharding.global_batch(
      synthetic_blocks(batch_size, _BLOCK_LEN.value, _VOCAB_SIZE.value,
                       max_title_len), batch_sharding)

  start = time.perf_counter()
  compiled = embed_fn.lower(params, blocks).compile()
  compile_s = time.perf_counter() - start
  # lower().compile() does not fill jit's cache: warm up the call itself.
  jax.block_until_ready(embed_fn(params, blocks))
  flops = model_flops_per_block(model_config, _BLOCK_LEN.value)
  # Each step is paired with a peak measurement taken right before it: the
  # cores are shared with other processes, and a peak measured under another
  # load than the step would make the fraction meaningless.
  step_times, peaks, fractions = [], [], []
  for _ in range(_RUNS.value):
    peaks.append(matmul_peak(*matmul, _MATMUL_RUNS.value))
    step_times.append(seconds(lambda: embed_fn(params, blocks)))
    achieved = flops['total'] * batch_size / step_times[-1]
    fractions.append(achieved / peaks[-1])
  step_s = statistics.median(step_times)

  xla = xla_flops(compiled)
  # On a multi-device mesh the cost analysis is of one device's program.
  xla_per_block = (None if xla is None
                   else xla * mesh.devices.size / batch_size)
  row = dict(model=size, batch=batch_size, compile_s=compile_s, step_s=step_s,
             step_spread=(min(step_times), max(step_times)),
             blocks_per_s=batch_size / step_s, flops=flops,
             peak=statistics.median(peaks),
             peak_spread=(min(peaks), max(peaks)),
             fraction=statistics.median(fractions),
             xla_flops_per_block=xla_per_block)

  if corpus is not None:
    if corpus.block_len != _BLOCK_LEN.value:
      raise ValueError(f'corpus block_len {corpus.block_len} != '
                       f'--block_len {_BLOCK_LEN.value}')
    # Same batch shape as above: no recompile inside the timing.
    stop = min(len(corpus), _CORPUS_BATCHES.value * batch_size)
    num_batches = -(-stop // batch_size)

    def pure_steps():  # the same number of steps, dispatched back to back
      for _ in range(num_batches):
        out = embed_fn(params, blocks)
      return out

    # Each end-to-end run is paired with pure steps timed right next to it,
    # so load from other processes on this shared machine hits both alike.
    e2e, ratios = [], []
    for _ in range(_CORPUS_RUNS.value):
      pure_s = seconds(pure_steps)
      e2e_s = seconds(lambda: embedding.embed_blocks(
          embed_fn, params, corpus, 0, stop, batch_size, batch_sharding))
      e2e.append(e2e_s)
      ratios.append(pure_s / e2e_s)
    row.update(corpus_blocks=stop,
               corpus_blocks_per_s=stop / statistics.median(e2e),
               corpus_ratio=statistics.median(ratios))
  return row


def open_corpus(path: str) -> corpus_lib.Corpus:
  """Accepts the corpus folder or the realm-prepare-corpus workdir."""
  if not os.path.exists(os.path.join(path, corpus_lib.MANIFEST)):
    path = os.path.join(path, 'corpus')
  return corpus_lib.Corpus(path)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  sizes = _MODELS.value
  batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  if len(batch_sizes) == 1:
    batch_sizes *= len(sizes)
  if len(batch_sizes) != len(sizes):
    raise app.UsageError('--batch_sizes needs one entry, or one per --models')
  corpus = open_corpus(_CORPUS.value) if _CORPUS.value else None
  if corpus is not None and (corpus.manifest['tokenizer']['vocab_size']
                             > _VOCAB_SIZE.value):
    raise app.UsageError(f'--vocab_size {_VOCAB_SIZE.value} is below the '
                         'corpus vocab')

  load = os.getloadavg()[0]
  mesh = sharding.make_mesh(config_lib.mesh_config())  # data over all devices
  for b in batch_sizes:
    config_lib.validate_batch(b, 'batch_sizes', mesh.shape['data'])
  matmul = make_matmul(_MATMUL_SIZE.value)
  rows = [bench_model(s, b, mesh, corpus, matmul)
          for s, b in zip(sizes, batch_sizes)]

  print(f'devices: {mesh.devices.size} x {jax.devices()[0].device_kind} '
        f'({jax.default_backend()}), {os.cpu_count()} CPUs; jax '
        f'{jax.__version__}; 1-min load average at start {load:.2f}')
  print(f'peak = float32 {_MATMUL_SIZE.value}^3 jitted matmul, median of '
        f'{_MATMUL_RUNS.value} right before each timed step; "of peak" is the '
        'median over steps of step FLOP/s / its peak')
  print()
  header = (f'{"model":<6} {"batch":>5} {"blocks/s":>9} {"GFLOP/block":>11} '
            f'{"GFLOP/s":>8} {"peak GFLOP/s":>12} {"of peak":>7} | '
            f'{"REALM 13.35M blocks":>19}')
  print(header)
  print('-' * len(header))
  for r in rows:
    per_block = r['flops']['total']
    achieved = per_block * r['blocks_per_s']
    days = REALM_BLOCKS / r['blocks_per_s'] / 86400
    print(f'{r["model"]:<6} {r["batch"]:>5} {r["blocks_per_s"]:>9.2f} '
          f'{per_block / 1e9:>11.3f} {achieved / 1e9:>8.1f} '
          f'{r["peak"] / 1e9:>12.1f} {r["fraction"]:>7.1%} | '
          f'{days:>14.1f} days')
  print()
  print('FLOPs per block, analytic (matmuls only) vs XLA cost_analysis '
        '(everything it counts):')
  for r in rows:
    f = r['flops']
    parts = ', '.join(f'{k} {f[k] / f["total"]:.0%}'
                      for k in ('qkv', 'out', 'attention', 'mlp', 'head'))
    xla = r['xla_flops_per_block']
    xla_text = ('n/a' if xla is None else
                f'{xla / 1e9:.3f} G ({xla / f["total"]:.3f}x analytic)')
    print(f'  {r["model"]:<6} analytic {f["total"] / 1e9:.3f} G ({parts}); '
          f'XLA {xla_text}')
  print()
  print(f'step time and peak (median of {_RUNS.value}, min-max; a wide '
        'spread means the load changed during the run), compile time:')
  for r in rows:
    low, high = r['step_spread']
    peak_low, peak_high = r['peak_spread']
    print(f'  {r["model"]:<6} {r["step_s"] * 1e3:9.1f} ms/step '
          f'({low * 1e3:.1f}-{high * 1e3:.1f}); peak '
          f'{peak_low / 1e9:.0f}-{peak_high / 1e9:.0f} GFLOP/s; compile '
          f'{r["compile_s"]:.1f} s')
  if corpus is not None:
    print()
    print(f'end to end through embedding.embed_blocks over {corpus.path} '
          f'(median of {_CORPUS_RUNS.value}):')
    for r in rows:
      print(f'  {r["model"]:<6} {r["corpus_blocks"]:>5} blocks '
            f'{r["corpus_blocks_per_s"]:>9.2f} blocks/s = '
            f'{r["corpus_ratio"]:.2f} x the pure step rate (pure steps on '
            'device-resident blocks timed next to each run)')


if __name__ == '__main__':
  app.run(main)
