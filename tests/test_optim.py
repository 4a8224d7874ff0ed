"""The optimiser against BERT's formulas written out in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import optim


@pytest.mark.parametrize('steps, warmup', [
    (200_000, 10_000), (100, 100), (5_000, 500), (2_000_000, 10_000)])
def test_warmup_formula(steps, warmup):
  assert optim.warmup_steps(steps) == warmup


def test_schedule_warms_up_then_decays_to_zero():
  schedule = optim.learning_rate_schedule(1e-3, 1000)  # warmup 100
  np.testing.assert_allclose(schedule(0), 0.0)
  np.testing.assert_allclose(schedule(50), 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(550), 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(1000), 0.0, atol=1e-12)


def test_decay_mask_skips_layer_norm_and_biases():
  params = {'layer': {'kernel': 1., 'bias': 1.},
            'norm': {'scale': 1., 'bias': 1.}, 'embedding': 1.}
  assert optim.decay_mask(params) == {
      'layer': {'kernel': True, 'bias': False},
      'norm': {'scale': False, 'bias': False}, 'embedding': True}


def _numpy_adamw(params, grads_per_step, lr_at, clip, wd, b1, b2, eps):
  """AdamW with global-norm clipping, written out (optax-style bias fix)."""
  params = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    norm = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    scale = min(1.0, clip / norm)
    for k in params:
      g = grads[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      if k != 'bias':
        update = update + wd * params[k]
      params[k] = params[k] - lr_at(t - 1) * update
  return params


def test_optimizer_matches_numpy_reference():
  config = optim.optimizer_config(learning_rate=1e-2)
  tx = optim.make_optimizer(config, num_train_steps=1000)
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
            'bias': rng.normal(size=(4,)).astype(np.float32)}
  grads = [{k: (rng.normal(size=p.shape) * 3).astype(np.float32)
            for k, p in params.items()} for _ in range(120)]
  state = tx.init(params)
  jparams = jax.tree.map(jnp.asarray, params)
  for g in grads:
    updates, state = tx.update(g, state, jparams)
    jparams = jax.tree.map(lambda p, u: p + u, jparams, updates)
  schedule = optim.learning_rate_schedule(1e-2, 1000)
  expected = _numpy_adamw(params, grads, lambda t: float(schedule(t)),
                          clip=1.0, wd=0.01, b1=0.9, b2=0.999, eps=1e-6)
  for k in params:
    np.testing.assert_allclose(jparams[k], expected[k], rtol=1e-4, atol=1e-6)
