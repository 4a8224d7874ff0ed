r"""Is the reader's failure to copy a bug? The copy task on random pieces.

  .venv/bin/python bench/copy_task.py [--model ours|reference] [--steps 2000]

bench/reader_copy.py finds that the tiny reader does not learn to copy a
masked span from the block beside it (issue 12). This bench asks whether
that is our model or the task: a sequence
`[CLS] q (some pieces masked) [SEP] e [SEP]`, q random pieces and e random
pieces with q written into it (at a random offset, `--offset random`, the
content-addressed copy REALM's reader needs; or at 0, `--offset zero`,
copying by position), where every masked piece can be read off e. The same
batches train

  ours:      models.ReaderModel (BERT + MLM head, tested equal to
             transformers' BERT), with optax's AdamW;
  reference: an independent ~40-line BERT in plain jax (post-LayerNorm,
             learned positions, tied decoder), same optimiser.

A learner that copies drives the loss far below ln(vocab) (chance over the
pieces drawn) and the accuracy towards 1; one that does not stays at
ln(vocab). The table prints both every `--log_every` steps (accuracy over
those steps' batches). Dropout off; `--batch` rows a step (32).

Measured (README, The learning test bed): at batch 32 neither model copies
in the 250-2,000 steps tried, by content or by position, with 7,000 to 10
distinct pieces. The number of predicted pieces a step is what decides:
copying by position (`--offset zero --distinct 100 --masks 8`) is learned
by step 300 at `--batch 128` (1,024 predictions a step) and not in 2,400
steps at `--batch 32`, the same examples seen; copying by content is still
slow at batch 128.
"""
import argparse
import os
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from flax import nnx  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from realm_jax import config_lib  # pylint: disable=g-import-not-at-top
from realm_jax import models  # pylint: disable=g-import-not-at-top

VOCAB = 8000
CLS, SEP, MASK = 2, 3, 4


def copy_batch(rng, args) -> dict:
  """Random-piece copy examples; pieces drawn from the top `distinct` ids."""
  q_len, e_len = args.query_len, args.evidence_len
  length = q_len + e_len + 3
  low = VOCAB - args.distinct
  ids = np.zeros((args.batch, length), np.int32)
  segments = np.zeros_like(ids)
  positions = np.zeros((args.batch, args.masks), np.int32)
  targets = np.zeros_like(positions)
  for row in range(args.batch):
    query = rng.integers(low, VOCAB, q_len)
    evidence = rng.integers(low, VOCAB, e_len)
    offset = rng.integers(0, e_len - q_len + 1) if args.offset == 'random' else 0
    evidence[offset:offset + q_len] = query
    masked = rng.choice(q_len, args.masks, replace=False)
    shown = query.copy()
    shown[masked] = MASK
    ids[row] = np.concatenate([[CLS], shown, [SEP], evidence, [SEP]])
    segments[row, q_len + 2:] = 1
    positions[row], targets[row] = 1 + masked, query[masked]
  return dict(ids=ids, segments=segments, mask=np.ones_like(ids),
              positions=positions, targets=targets)


def ours(args):
  """(params, logits_fn) of the project's reader."""
  config = config_lib.model_config('tiny', VOCAB)
  config.update(num_layers=args.layers, hidden_size=args.hidden,
                num_heads=args.heads, intermediate_size=4 * args.hidden,
                dropout_rate=0.0, attention_dropout_rate=0.0)
  graphdef, params = nnx.split(
      models.ReaderModel(config, rngs=nnx.Rngs(args.seed)), nnx.Param)

  def logits_fn(params, batch):
    reader = nnx.merge(graphdef, params).reader
    sequence = reader(batch['ids'], batch['segments'], batch['mask'])
    return reader.mlm_logits(sequence, batch['positions'])
  return params, logits_fn


def reference(args):
  """(params, logits_fn) of an independent plain-jax BERT."""
  hidden, heads = args.hidden, args.heads
  length = args.query_len + args.evidence_len + 3
  keys = iter(jax.random.split(jax.random.key(args.seed), 8 + 6 * args.layers))
  normal = lambda *shape: 0.02 * jax.random.normal(next(keys), shape)
  norm = lambda: dict(scale=jnp.ones(hidden), bias=jnp.zeros(hidden))
  params = dict(
      tokens=normal(VOCAB, hidden), positions=normal(length, hidden),
      segments=normal(2, hidden), embed_norm=norm(),
      layers=[dict(qkv=normal(hidden, 3 * hidden), out=normal(hidden, hidden),
                   up=normal(hidden, 4 * hidden), down=normal(4 * hidden, hidden),
                   attention_norm=norm(), mlp_norm=norm())
              for _ in range(args.layers)],
      transform=normal(hidden, hidden), head_norm=norm(),
      output_bias=jnp.zeros(VOCAB))

  def layer_norm(x, p):
    x = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True)
                                                   + 1e-12)
    return x * p['scale'] + p['bias']

  def logits_fn(params, batch):
    x = (params['tokens'][batch['ids']] + params['positions'][None]
         + params['segments'][batch['segments']])
    x = layer_norm(x, params['embed_norm'])
    b, n = batch['ids'].shape
    for p in params['layers']:
      q, k, v = jnp.split((x @ p['qkv']).reshape(b, n, 3 * heads, -1), 3, 2)
      weights = jax.nn.softmax(
          jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(hidden // heads), -1)
      attended = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, n, -1)
      x = layer_norm(x + attended @ p['out'], p['attention_norm'])
      x = layer_norm(x + jax.nn.gelu(x @ p['up'], approximate=False)
                     @ p['down'], p['mlp_norm'])
    picked = jnp.take_along_axis(x, batch['positions'][..., None], 1)
    picked = layer_norm(jax.nn.gelu(picked @ params['transform'],
                                    approximate=False), params['head_norm'])
    return picked @ params['tokens'].T + params['output_bias']
  return params, logits_fn


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='ours', choices=('ours', 'reference'))
  parser.add_argument('--offset', default='random', choices=('random', 'zero'))
  parser.add_argument('--distinct', type=int, default=1000,
                      help='distinct pieces the sequences are drawn from')
  parser.add_argument('--query_len', type=int, default=16)
  parser.add_argument('--evidence_len', type=int, default=48)
  parser.add_argument('--masks', type=int, default=4)
  parser.add_argument('--layers', type=int, default=2)
  parser.add_argument('--hidden', type=int, default=128)
  parser.add_argument('--heads', type=int, default=2)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--log_every', type=int, default=250)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  if not 0 < args.masks <= args.query_len <= args.evidence_len:
    raise SystemExit('need 0 < --masks <= --query_len <= --evidence_len')
  if not 0 < args.distinct <= VOCAB - 5:
    raise SystemExit(f'--distinct must be in (0, {VOCAB - 5}]')

  params, logits_fn = (ours if args.model == 'ours' else reference)(args)
  tx = optax.adamw(args.lr, weight_decay=0.01)

  def loss_fn(params, batch):
    logits = logits_fn(params, batch)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, batch['targets'][..., None], -1)
    return nll.mean(), (logits.argmax(-1) == batch['targets']).mean()

  @jax.jit
  def train_step(params, opt_state, batch):
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  print(f'{args.model}: copy by {"content" if args.offset == "random" else "position"}'
        f', {args.distinct} distinct pieces (chance loss ln {args.distinct} = '
        f'{np.log(args.distinct):.2f}), {args.masks} masks of {args.query_len}'
        f', {args.layers} layers x {args.hidden}, batch {args.batch}, '
        f'lr {args.lr}')
  print('| step | loss | accuracy | s |')
  print('|------|------|----------|---|')
  rng = np.random.default_rng(args.seed)
  opt_state = tx.init(params)
  losses, accuracies, start = [], [], time.time()
  for step in range(1, args.steps + 1):
    params, opt_state, loss, accuracy = train_step(
        params, opt_state, copy_batch(rng, args))
    losses.append(float(loss))
    accuracies.append(float(accuracy))
    if step % args.log_every == 0:
      print(f'| {step} | {np.mean(losses):.3f} | {np.mean(accuracies):.3f} | '
            f'{time.time() - start:.0f} |', flush=True)
      losses, accuracies = [], []


if __name__ == '__main__':
  main()
