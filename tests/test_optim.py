"""The optimiser against BERT's formulas written out in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from realm_jax import config_lib
from realm_jax import models
from realm_jax import optim


@pytest.mark.parametrize('steps, warmup', [
    (200_000, 10_000), (100, 100), (5_000, 500), (2_000_000, 10_000)])
def test_reference_warmup_formula(steps, warmup):
  assert optim.reference_warmup_steps(steps) == warmup


@pytest.mark.parametrize('configured, steps, warmup', [
    (-1, 200_000, 10_000),  # the reference's formula
    (-1, 50, 50),  # the formula's 100-step floor, cut to the run
    (0, 1000, 0), (30, 300, 30), (300, 300, 300)])
def test_warmup_steps_field(configured, steps, warmup):
  config = optim.optimizer_config(learning_rate=1.0)
  config.warmup_steps = configured
  assert optim.warmup_steps(config, steps) == warmup


def _bert_learning_rate(peak, step, num_train_steps, warmup):
  """bert/optimization.py: polynomial_decay(power 1, end 0) from step 0,
  replaced by peak * step / warmup while step < warmup."""
  decayed = peak * (1 - min(step, num_train_steps) / num_train_steps)
  is_warmup = float(step < warmup)
  return (1 - is_warmup) * decayed + is_warmup * peak * step / max(warmup, 1)


@pytest.mark.parametrize('steps, warmup', [(1000, 100), (300, 30), (50, 0)])
def test_schedule_is_berts(steps, warmup):
  schedule = optim.learning_rate_schedule(1e-3, steps, warmup=warmup)
  points = sorted({0, 1, warmup // 2, max(warmup - 1, 0), warmup, warmup + 1,
                   steps // 2, steps - 1, steps})
  np.testing.assert_allclose(
      [float(schedule(t)) for t in points],
      [_bert_learning_rate(1e-3, t, steps, warmup) for t in points],
      rtol=1e-5, atol=1e-9)  # float32 rounding of the decay
  # The step down after warmup is BERT's: the decay started at step 0.
  if warmup:
    np.testing.assert_allclose(float(schedule(warmup)),
                               1e-3 * (1 - warmup / steps), rtol=1e-5)


def _learning_rates(warmup_steps, num_train_steps, steps):
  config = optim.optimizer_config(learning_rate=1.0)
  config.warmup_steps = warmup_steps
  schedule = optim.learning_rate_schedule(
      1.0, num_train_steps, optim.warmup_steps(config, num_train_steps))
  return [float(schedule(t)) for t in steps]


def test_schedule_follows_the_warmup_field():
  # -1 over 1000 steps: the formula's 100 steps.
  np.testing.assert_allclose(_learning_rates(-1, 1000, [0, 50, 99, 100, 500]),
                             [0.0, 0.5, 0.99, 0.9, 0.5], atol=1e-6)
  # 10 explicit steps: the ramp ends at step 10, then the decay from step 0.
  np.testing.assert_allclose(_learning_rates(10, 1000, [0, 5, 10, 500]),
                             [0.0, 0.5, 0.99, 0.5], atol=1e-6)
  # No warmup: the peak from step 0.
  np.testing.assert_allclose(_learning_rates(0, 1000, [0, 500, 1000]),
                             [1.0, 0.5, 0.0], atol=1e-6)


def test_decay_mask_skips_layer_norm_and_biases():
  params = {'layer': {'kernel': 1., 'bias': 1.},
            'norm': {'scale': 1., 'bias': 1.}, 'embedding': 1.,
            'head': {'output_bias': 1.}}
  assert optim.decay_mask(params) == {
      'layer': {'kernel': True, 'bias': False},
      'norm': {'scale': False, 'bias': False}, 'embedding': True,
      'head': {'output_bias': False}}


def test_mlm_head_output_bias_is_not_decayed():
  """On the real module's parameter tree, as the trainer passes it."""
  config = config_lib.model_config('tiny', vocab_size=32)
  head = nnx.eval_shape(lambda: models.MlmHead(config, rngs=nnx.Rngs(0)))
  mask = optim.decay_mask(nnx.to_pure_dict(nnx.state(head)))
  assert mask['output_bias'] is False
  assert mask['transform']['kernel'] is True
  assert mask['norm'] == {'scale': False, 'bias': False}


def _numpy_adamw(params, grads_per_step, lr_at, clip, wd, b1, b2, eps,
                 bias_correction):
  """AdamW with global-norm clipping, written out. bias_correction=False is
  BERT's AdamWeightDecay: update = m / (sqrt(v) + eps) on the raw EMAs."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum()
                       for g in grads.values()))
    scale = min(1.0, clip / norm)
    for k in params:
      g = grads[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      if bias_correction:
        update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t))
                                            + eps)
      else:
        update = m[k] / (np.sqrt(v[k]) + eps)
      if k != 'bias':
        update = update + wd * params[k]
      params[k] = params[k] - lr_at(t - 1) * update
  return params


def _run(tx, params, grads):
  state = tx.init(params)
  jparams = jax.tree.map(jnp.asarray, params)
  for g in grads:
    updates, state = tx.update(g, state, jparams)
    jparams = optax.apply_updates(jparams, updates)
  return jparams, state


def _problem(num_steps, grad_scale=3.0):
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
            'bias': rng.normal(size=(4,)).astype(np.float32)}
  # Scaled up so that the global norm (~10) is clipped to 1.
  grads = [{k: (rng.normal(size=p.shape) * grad_scale).astype(np.float32)
            for k, p in params.items()} for _ in range(num_steps)]
  return params, grads


@pytest.mark.parametrize('bias_correction, num_steps', [
    (True, 120), (False, 4)])
def test_optimizer_matches_numpy_reference(bias_correction, num_steps):
  # warmup 0: the first steps already move the parameters, so a wrong
  # step (e.g. corrected where BERT's is not) shows.
  config = optim.optimizer_config(learning_rate=1e-2)
  config.warmup_steps = 0 if not bias_correction else -1
  config.bias_correction = bias_correction
  config.weight_decay = 0.5  # large enough to see on a 4-step run
  tx = optim.make_optimizer(config, num_train_steps=1000)
  params, grads = _problem(num_steps)
  jparams, _ = _run(tx, params, grads)
  schedule = optim.learning_rate_schedule(
      1e-2, 1000, optim.warmup_steps(config, 1000))
  expected = _numpy_adamw(params, grads, lambda t: float(schedule(t)),
                          clip=1.0, wd=0.5, b1=0.9, b2=0.999, eps=1e-6,
                          bias_correction=bias_correction)
  for k in params:
    np.testing.assert_allclose(jparams[k], expected[k], rtol=1e-5, atol=1e-6)
  # The two variants really differ over these steps (3x at step 1).
  other = _numpy_adamw(params, grads, lambda t: float(schedule(t)),
                       clip=1.0, wd=0.5, b1=0.9, b2=0.999, eps=1e-6,
                       bias_correction=not bias_correction)
  assert not np.allclose(jparams['kernel'], other['kernel'], rtol=1e-3)


def test_uncorrected_first_step_is_3x_optaxs():
  """Step 1 of BERT's Adam: m = 0.1 g, v = 0.001 g^2, so the update is
  0.1 / sqrt(0.001) = 3.16 in units of sign(g), not 1 as optax's."""
  config = optim.optimizer_config(learning_rate=1.0)
  config.update(warmup_steps=0, bias_correction=False, weight_decay=0.0,
                clip_norm=1e9)
  tx = optim.make_optimizer(config, num_train_steps=10)
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.array([2.0, -0.5, 1e-3])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -np.sign(grads['w']) * 0.1
                             / (np.sqrt(0.001) + 1e-6 / np.abs(grads['w'])),
                             rtol=1e-5)


def test_bias_correction_is_optax_adamw_exactly():
  config = optim.optimizer_config(learning_rate=1e-2)
  config.weight_decay = 0.5
  tx = optim.make_optimizer(config, num_train_steps=300)
  params, grads = _problem(20)
  schedule = optim.learning_rate_schedule(
      1e-2, 300, optim.warmup_steps(config, 300))
  reference = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.5,
                  mask=lambda p: {'kernel': True, 'bias': False}))
  ours, ours_state = _run(tx, params, grads)
  theirs, theirs_state = _run(reference, params, grads)
  for k in params:
    np.testing.assert_array_equal(ours[k], theirs[k])
  jax.tree.map(np.testing.assert_array_equal, ours_state, theirs_state)


def test_uncorrected_state_is_adam_state_with_param_trees():
  """The trainer shards mu and nu like the parameters via
  optax.tree_map_params: they must be found as parameter trees."""
  config = optim.optimizer_config(learning_rate=1e-2)
  config.bias_correction = False
  tx = optim.make_optimizer(config, num_train_steps=10)
  params = {'kernel': jnp.zeros((2, 3)), 'bias': jnp.zeros(3)}
  state = tx.init(params)
  adam_state = state[1][0]
  assert isinstance(adam_state, optax.ScaleByAdamState)
  labels = optax.tree_map_params(tx, lambda p: 'param', state,
                                 transform_non_params=lambda _: 'other')
  assert labels[1][0].mu == labels[1][0].nu == {'kernel': 'param',
                                                'bias': 'param'}
  assert labels[1][0].count == 'other'


@pytest.mark.parametrize('warmup_steps', [-2, 11, -100])
def test_bad_warmup_names_the_field(warmup_steps):
  config = optim.optimizer_config(learning_rate=1e-2)
  config.warmup_steps = warmup_steps
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.optimizer\.warmup_steps'):
    optim.validate(config, num_train_steps=10)


@pytest.mark.parametrize('warmup_steps', [-1, 0, 10])
def test_good_warmup_passes(warmup_steps):
  config = optim.optimizer_config(learning_rate=1e-2)
  config.warmup_steps = warmup_steps
  optim.validate(config, num_train_steps=10)



def test_retriever_lr_scale_scales_only_the_retrievers_steps():
  params = {'retriever': {'kernel': jnp.ones((2, 3))},
            'reader': {'kernel': jnp.ones((2, 3))}}
  grads = {'retriever': {'kernel': jnp.full((2, 3), 0.1)},
           'reader': {'kernel': jnp.full((2, 3), 0.1)}}
  config = optim.optimizer_config(learning_rate=1e-2)
  config.warmup_steps = 0
  steps = {}
  for scale in (1.0, 0.1):
    config.retriever_lr_scale = scale
    tx = optim.make_optimizer(config, num_train_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    steps[scale] = jax.tree.map(np.asarray, updates)
  np.testing.assert_allclose(steps[0.1]['retriever']['kernel'],
                             0.1 * steps[1.0]['retriever']['kernel'],
                             rtol=1e-6)
  np.testing.assert_array_equal(steps[0.1]['reader']['kernel'],
                                steps[1.0]['reader']['kernel'])
  assert np.abs(steps[1.0]['reader']['kernel']).min() > 0
  config.retriever_lr_scale = 0.0
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.optimizer\.retriever_lr_scale'):
    optim.validate(config, num_train_steps=10)


def test_temperature_lr_scale_scales_the_log_scales_on_top():
  """log_scale's step is temperature_lr_scale x retriever_lr_scale x what
  it would be; the rest of the retriever only retriever_lr_scale x."""
  tower = lambda value: {'kernel': jnp.full((2, 3), value),
                         'log_scale': jnp.asarray(value)}
  params = {'retriever': {'doc_tower': tower(1.0)},
            'reader': {'kernel': jnp.ones((2, 3))}}
  grads = {'retriever': {'doc_tower': tower(0.1)},
           'reader': {'kernel': jnp.full((2, 3), 0.1)}}
  config = optim.optimizer_config(learning_rate=1e-2)
  config.warmup_steps = 0
  steps = {}
  for retriever, temperature in ((1.0, 1.0), (3.0, 100.0)):
    config.retriever_lr_scale = retriever
    config.temperature_lr_scale = temperature
    tx = optim.make_optimizer(config, num_train_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    steps[temperature] = jax.tree.map(np.asarray, updates)
  base, scaled = steps[1.0], steps[100.0]
  np.testing.assert_allclose(scaled['retriever']['doc_tower']['log_scale'],
                             300 * base['retriever']['doc_tower']['log_scale'],
                             rtol=1e-5)
  np.testing.assert_allclose(scaled['retriever']['doc_tower']['kernel'],
                             3 * base['retriever']['doc_tower']['kernel'],
                             rtol=1e-5)
  np.testing.assert_array_equal(scaled['reader']['kernel'],
                                base['reader']['kernel'])
  assert abs(base['retriever']['doc_tower']['log_scale']) > 0
  config.temperature_lr_scale = -1.0
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.optimizer\.temperature_lr_scale'):
    optim.validate(config, num_train_steps=10)
