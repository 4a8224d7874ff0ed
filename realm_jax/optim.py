"""BERT's optimiser as optax: AdamW + global-norm clipping + warmup/decay.

Reference (bert/optimization.py, used by REALM, ORQA and ICT): AdamWeightDecay
with weight decay 0.01 on everything but LayerNorm and biases, beta1 0.9,
beta2 0.999, eps 1e-6, global-norm clip 1.0, linear warmup to the peak rate
then linear decay to 0. One difference: optax's Adam corrects the moment
bias, BERT's does not; after warmup the two are indistinguishable.
"""
import jax
import ml_collections
import optax


def warmup_steps(num_train_steps: int) -> int:
  """min(10000, max(100, steps/10)), as realm/model.py and orqa_model.py."""
  return min(10_000, max(100, num_train_steps // 10))


def learning_rate_schedule(peak: float, num_train_steps: int) -> optax.Schedule:
  warmup = min(warmup_steps(num_train_steps), num_train_steps)
  return optax.join_schedules([
      optax.linear_schedule(0.0, peak, warmup),
      optax.linear_schedule(peak, 0.0, max(num_train_steps - warmup, 1)),
  ], [warmup])


def decay_mask(params):
  """True for parameters that get weight decay: not LayerNorm, not biases."""
  def decays(path, _):
    name = getattr(path[-1], 'key', path[-1])
    return name not in ('bias', 'scale')
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   num_train_steps: int) -> optax.GradientTransformation:
  """config: learning_rate, weight_decay, clip_norm, b1, b2, eps."""
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adamw(learning_rate_schedule(config.learning_rate,
                                         num_train_steps),
                  b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay, mask=decay_mask))


def optimizer_config(learning_rate: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, weight_decay=0.01, clip_norm=1.0,
      b1=0.9, b2=0.999, eps=1e-6))
