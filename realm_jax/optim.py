"""BERT's optimiser as optax: AdamW + global-norm clipping + warmup/decay.

Reference (bert/optimization.py, used by REALM, ORQA and ICT): AdamWeightDecay
with weight decay 0.01 on everything but LayerNorm and biases (any name
ending in 'bias', the MLM head's output_bias too), beta1 0.9,
beta2 0.999, eps 1e-6, global-norm clip 1.0; the rate decays linearly from
the peak at step 0 to 0 at the last step, and during the first
`warmup_steps` steps is replaced by a linear ramp from 0 (so after warmup it
resumes at peak * (1 - warmup / steps), not at the peak). -1 warmup steps is
the reference's min(10000, max(100, steps // 10)).

BERT's Adam does not correct the moment bias: its update is m / (sqrt(v) +
eps) on the raw moving averages. Early on v is far below its bias-corrected
value, so BERT's steps are larger than optax's adamw's, for any gradients
(eps aside) by (1 - b1**t) / sqrt(1 - b2**t): with b2 0.999 6.5x at step 10,
3.2x at step 100, 1.26x at step 1000, within 1% after ~5000 steps. Warmup
keeps the learning rate small meanwhile. `bias_correction=False` gives BERT's
update (the base and large configs), True optax's adamw.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from realm_jax import config_lib

# optimizer.warmup_steps meaning "the reference's formula".
REFERENCE_WARMUP = -1


def reference_warmup_steps(num_train_steps: int) -> int:
  """min(10000, max(100, steps/10)), as realm/model.py, orqa_model.py and
  ict_model.py."""
  return min(10_000, max(100, num_train_steps // 10))


def warmup_steps(config: ml_collections.ConfigDict,
                 num_train_steps: int) -> int:
  """config.warmup_steps, or the reference's formula when it is -1; never
  more than the run's steps (the formula gives 100 for shorter runs)."""
  warmup = config.warmup_steps
  if warmup == REFERENCE_WARMUP:
    warmup = reference_warmup_steps(num_train_steps)
  return min(warmup, num_train_steps)


def learning_rate_schedule(peak: float, num_train_steps: int,
                           warmup: int) -> optax.Schedule:
  """BERT's: peak * step / warmup during warmup, else peak * (1 - step /
  num_train_steps) (bert/optimization.py's polynomial decay from step 0)."""
  return optax.join_schedules([
      optax.linear_schedule(0.0, peak, warmup),
      optax.linear_schedule(peak * (1 - warmup / num_train_steps), 0.0,
                            max(num_train_steps - warmup, 1)),
  ], [warmup])


def decay_mask(params):
  """True for parameters that get weight decay: not LayerNorm scales, not
  biases (any name ending in 'bias', e.g. the MLM head's output_bias; BERT
  excludes every name matching 'bias'), not a retriever tower's learned
  score scale (decay would pull its temperature to 1)."""
  def decays(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return not (name in ('scale', 'log_scale') or name.endswith('bias'))
  return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_uncorrected_adam(b1: float, b2: float,
                              eps: float) -> optax.GradientTransformation:
  """BERT's AdamWeightDecay step direction: m / (sqrt(v) + eps) with m, v
  the plain moving averages (no division by 1 - b**t).

  The state is optax's ScaleByAdamState so that optax.tree_map_params (the
  trainer's optimizer-state shardings) finds mu and nu as parameter trees.
  """
  def init(params):
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=optax.tree.zeros_like(params),
                                  nu=optax.tree.zeros_like(params))

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, optax.ScaleByAdamState(
        count=optax.safe_increment(state.count), mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def uncorrected_adamw(learning_rate: optax.ScalarOrSchedule, b1: float,
                      b2: float, eps: float, weight_decay: float,
                      mask) -> optax.GradientTransformation:
  """optax.adamw's chain with BERT's uncorrected Adam in place of
  scale_by_adam."""
  return optax.chain(
      scale_by_uncorrected_adam(b1, b2, eps),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))


def make_optimizer(config: ml_collections.ConfigDict,
                   num_train_steps: int) -> optax.GradientTransformation:
  """config: optimizer_config()'s fields."""
  schedule = learning_rate_schedule(config.learning_rate, num_train_steps,
                                    warmup_steps(config, num_train_steps))
  adamw = optax.adamw if config.bias_correction else uncorrected_adamw
  # Only when asked: an extra transform changes the optimizer state's tree.
  scales = [optax.masked(optax.scale(factor), mask) for factor, mask in (
      (config.retriever_lr_scale, retriever_mask),
      (config.temperature_lr_scale, log_scale_mask))
            if factor != 1.0]
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
            weight_decay=config.weight_decay, mask=decay_mask), *scales)


def retriever_mask(params):
  """True for the retriever's parameters (the top-level 'retriever')."""
  def of_retriever(path, _):
    return str(getattr(path[0], 'key', path[0])) == 'retriever'
  return jax.tree_util.tree_map_with_path(of_retriever, params)


def log_scale_mask(params):
  """True for the retriever towers' learned score scales (log_scale)."""
  def is_log_scale(path, _):
    return str(getattr(path[-1], 'key', path[-1])) == 'log_scale'
  return jax.tree_util.tree_map_with_path(is_log_scale, params)


def validate(config: ml_collections.ConfigDict, num_train_steps: int) -> None:
  """The optimizer config's fields a run cannot use."""
  warmup = config.warmup_steps
  for field in ('retriever_lr_scale', 'temperature_lr_scale'):
    config_lib.check(config[field] > 0, f'optimizer.{field}',
                     'must be > 0')
  config_lib.check(
      warmup == REFERENCE_WARMUP or 0 <= warmup <= num_train_steps,
      'optimizer.warmup_steps', f'{warmup} is neither -1 (the reference '
      f'formula) nor a number of steps in [0, num_train_steps='
      f'{num_train_steps}]')


def job_optimizer_config(config: ml_collections.ConfigDict,
                         learning_rate: float,
                         tiny: bool) -> ml_collections.ConfigDict:
  """The optimizer of a job config (set config.num_train_steps first).

  At scale, the reference's: BERT's uncorrected Adam and the warmup
  formula. Tiny: optax's corrected Adam, and warmup over 10% of the steps
  (following --config.num_train_steps), since the formula's 100-step floor
  would be all or most of a short run.
  """
  optimizer = optimizer_config(learning_rate)
  optimizer.bias_correction = tiny
  if tiny:
    optimizer.warmup_steps = config.get_ref('num_train_steps') // 10
  return optimizer


def optimizer_config(learning_rate: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, weight_decay=0.01, clip_norm=1.0,
      b1=0.9, b2=0.999, eps=1e-6,
      # -1: min(10000, max(100, num_train_steps // 10)), the reference's.
      warmup_steps=REFERENCE_WARMUP,
      # False: BERT's Adam, without optax's moment bias correction.
      bias_correction=True,
      # The retriever's step relative to the reader's (REALM: 1). Adam makes
      # a noisy gradient a full-size step; while a small reader cannot yet
      # use its evidence, that walks the ICT retriever away.
      retriever_lr_scale=1.0,
      # The learned score scales' step (model.learn_temperature) relative
      # to the rest of their tower's (so times retriever_lr_scale): Adam
      # moves a scalar by about the learning rate a step, 3e-5 a step
      # would leave the temperature where it started.
      temperature_lr_scale=1.0))
