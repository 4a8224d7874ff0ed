"""Mesh construction, parameter shardings, and 8-device == 1-device results."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from realm_jax import config_lib
from realm_jax import models
from realm_jax import sharding


def _mesh(data, model, devices=None):
  return sharding.make_mesh(config_lib.mesh_config(data, model), devices)


def _tiny_model_config():
  config = config_lib.model_config('tiny', vocab_size=64)
  config.num_layers = 1
  config.num_heads = 2
  config.hidden_size = 16
  config.intermediate_size = 32
  config.projection_size = 8
  config.span_hidden_size = 8
  return config


def test_mesh_shape_resolves_free_axis():
  assert sharding.mesh_shape(config_lib.mesh_config(-1, 2), 8) == {
      'data': 4, 'model': 2}
  assert sharding.mesh_shape(config_lib.mesh_config(2, -1), 8) == {
      'data': 2, 'model': 4}


@pytest.mark.parametrize('data, model, field', [
    (-1, 3, 'mesh.data'), (4, 4, 'config.mesh:'), (-1, -1, 'config.mesh:'),
    (0, 8, 'mesh.data')])
def test_bad_mesh_names_the_field(data, model, field):
  with pytest.raises(config_lib.ConfigError, match=field):
    sharding.mesh_shape(config_lib.mesh_config(data, model), 8)


def test_parameter_shardings_on_data4_model2_mesh():
  mesh = _mesh(4, 2)
  _, params, shardings = sharding.init_model(
      lambda: models.REALM(_tiny_model_config(), rngs=nnx.Rngs(0)), mesh,
      config_lib.AXIS_RULES)
  encoder = params['reader']['encoder']
  # Every parameter lives where its sharding says, on all 8 devices.
  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert x.sharding == s
    assert len(x.sharding.device_set) == 8
  specs = {path: x.sharding.spec for path, x in
           jax.tree_util.tree_flatten_with_path(params)[0]}
  # The vocabulary and the MLP/heads dimensions are split over 'model'.
  token_embedding = jax.tree.leaves(encoder['embeddings']['token_embed'])[0]
  assert token_embedding.sharding.spec == P('model', None)
  assert token_embedding.addressable_shards[0].data.shape == (32, 16)
  model_split = [s for s in specs.values() if 'model' in tuple(s)]
  replicated = [s for s in specs.values() if 'model' not in tuple(s)]
  assert len(model_split) >= 8 and replicated  # e.g. LayerNorms replicated
  # No parameter is split over the data axis (pure data parallelism + TP).
  assert not any('data' in tuple(s) for s in specs.values())
  print(sharding.describe(params))


def test_batch_sharding_splits_leading_dim_over_data():
  mesh = _mesh(4, 2)
  batch = sharding.global_batch(
      {'x': np.arange(8 * 3).reshape(8, 3)},
      sharding.batch_sharding(mesh, config_lib.AXIS_RULES))
  assert batch['x'].sharding.spec == P('data')
  assert {s.data.shape for s in batch['x'].addressable_shards} == {(2, 3)}


def test_eight_devices_equal_one_device():
  """The same init + forward pass on 1 device and on a 4x2 mesh."""
  config = _tiny_model_config()
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, 64, size=(8, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  segments = np.zeros_like(tokens)

  def run(mesh):
    graphdef, params, _ = sharding.init_model(
        lambda: models.REALM(config, rngs=nnx.Rngs(0)), mesh,
        config_lib.AXIS_RULES)
    batch = sharding.global_batch(
        {'t': tokens, 's': segments, 'm': mask},
        sharding.batch_sharding(mesh, config_lib.AXIS_RULES))

    @jax.jit
    def forward(params, batch):
      model = nnx.merge(graphdef, params)
      sequence = model.reader(batch['t'], batch['s'], batch['m'])
      return (model.retriever.embed_blocks(batch['t'], batch['s'],
                                           batch['m']),
              model.reader.mlm_logits(sequence, jnp.zeros((8, 2), jnp.int32)))
    return jax.device_get(forward(params, batch))

  one = run(_mesh(1, 1, jax.devices()[:1]))
  eight = run(_mesh(4, 2))
  for a, b in zip(one, eight):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
