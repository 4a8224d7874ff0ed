"""realm_jax.models against an independent float64 numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special

from realm_jax import config_lib
from realm_jax import models

VOCAB = 40
LENGTH = 8
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_config(**overrides):
  config = config_lib.model_config('tiny', vocab_size=VOCAB)
  config.update(dict(hidden_size=16, num_layers=2, num_heads=2,
                     intermediate_size=32, max_position_embeddings=16,
                     projection_size=8, span_hidden_size=8, max_span_width=3))
  config.update(overrides)
  return config


def randomize(module, seed=0, scale=0.3):
  """Replaces every parameter (biases and LayerNorms too) with noise."""
  state = nnx.state(module, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  noisy = [scale * jax.random.normal(key, leaf.shape)
           for key, leaf in zip(keys, leaves)]
  nnx.update(module, jax.tree.unflatten(treedef, noisy))
  return module


def params(module):
  """The module's parameters as nested dicts of float64 numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(x, np.float64),
                      nnx.to_pure_dict(nnx.state(module)))


def inputs(seed=0, batch=2):
  """Token and segment ids and a mask with padding at the end of row 1."""
  rng = np.random.default_rng(seed)
  token_ids = rng.integers(0, VOCAB, (batch, LENGTH))
  segment_ids = (np.arange(LENGTH) >= LENGTH // 2).astype(np.int32)
  segment_ids = np.tile(segment_ids, (batch, 1))
  input_mask = np.ones((batch, LENGTH), np.int32)
  input_mask[1, 5:] = 0
  return token_ids, segment_ids, input_mask


# --- numpy reference -------------------------------------------------------


def np_layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_gelu(x):
  return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def np_dense(x, p):
  kernel = p['kernel']
  return x @ kernel.reshape(x.shape[-1], -1) + p['bias'].reshape(-1)


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_attention(x, p, input_mask, num_heads):
  batch, length, hidden = x.shape
  head_dim = hidden // num_heads
  q, k, v = (np_dense(x, p[name]).reshape(batch, length, num_heads, head_dim)
             for name in ('query', 'key', 'value'))
  context = np.zeros_like(q)
  for b in range(batch):
    for n in range(num_heads):
      scores = q[b, :, n] @ k[b, :, n].T / np.sqrt(head_dim)
      scores = np.where(input_mask[b][None, :] > 0, scores, -np.inf)
      context[b, :, n] = np_softmax(scores) @ v[b, :, n]
  return np_dense(context.reshape(batch, length, hidden), p['out'])


def np_transformer_layer(x, p, input_mask, config):
  eps = config.layer_norm_eps
  x = np_layer_norm(
      x + np_attention(x, p['attention'], input_mask, config.num_heads),
      p['attention_norm'], eps)
  mlp = np_dense(np_gelu(np_dense(x, p['mlp']['intermediate'])),
                 p['mlp']['output'])
  return np_layer_norm(x + mlp, p['mlp_norm'], eps)


def np_encoder(p, config, token_ids, segment_ids, input_mask):
  e = p['embeddings']
  x = (e['token_embed']['embedding'][token_ids]
       + e['segment_embed']['embedding'][segment_ids]
       + e['position_embed']['embedding'][np.arange(token_ids.shape[1])])
  x = np_layer_norm(x, e['norm'], config.layer_norm_eps)
  for i in range(config.num_layers):
    x = np_transformer_layer(x, p['layers'][i], input_mask, config)
  return x, np.tanh(np_dense(x[:, 0], p['pooler']))


def np_tower(p, config, token_ids, segment_ids, input_mask):
  sequence, pooled = np_encoder(p['encoder'], config, token_ids, segment_ids,
                                input_mask)
  if config.pooling == 'mean':
    mask = input_mask[..., None].astype(np.float64)
    pooled = (sequence * mask).sum(1) / mask.sum(1)
  if config.projection_size:
    pooled = np_layer_norm(np_dense(pooled, p['projection']), p['norm'],
                           config.projection_layer_norm_eps)
  if config.score == 'dot':
    return pooled
  scale = (np.exp(p['log_scale']) if config.learn_temperature
           else config.score_temperature**-0.5)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True) * scale


def np_mlm_logits(p, config, sequence, positions):
  selected = np.stack([seq[pos] for seq, pos in zip(sequence, positions)])
  head = p['mlm_head']
  hidden = np_layer_norm(np_gelu(np_dense(selected, head['transform'])),
                         head['norm'], config.layer_norm_eps)
  token_embedding = p['encoder']['embeddings']['token_embed']['embedding']
  return hidden @ token_embedding.T + head['output_bias']


def np_span_logits(p, config, sequence, block_mask):
  head = p['span_head']
  size = config.span_hidden_size
  boundaries = np_dense(sequence, head['boundaries'])
  starts, ends = boundaries[..., :size], boundaries[..., size:]
  batch, length, _ = sequence.shape
  logits = np.full((batch, length, config.max_span_width), -10000.0)
  for b in range(batch):
    for i in range(length):
      for w in range(config.max_span_width):
        j = i + w
        if j < length and block_mask[b, i:j + 1].all():
          hidden = np.maximum(starts[b, i] + ends[b, j], 0.0)
          hidden = np_layer_norm(hidden, head['norm'], 1e-3)
          logits[b, i, w] = np_dense(hidden, head['score'])[0]
  return logits


# --- reference comparisons -------------------------------------------------


def test_attention_matches_numpy():
  config = tiny_config()
  attention = randomize(models.SelfAttention(config, rngs=nnx.Rngs(0)))
  x = np.random.default_rng(1).normal(size=(2, LENGTH, 16))
  _, _, input_mask = inputs()
  got = attention(jnp.asarray(x, jnp.float32),
                  models.attention_bias(jnp.asarray(input_mask)))
  want = np_attention(x, params(attention), input_mask, config.num_heads)
  np.testing.assert_allclose(got, want, **TOL)


def test_transformer_layer_matches_numpy():
  config = tiny_config()
  layer = randomize(models.TransformerLayer(config, rngs=nnx.Rngs(0)))
  x = np.random.default_rng(1).normal(size=(2, LENGTH, 16))
  _, _, input_mask = inputs()
  got = layer(jnp.asarray(x, jnp.float32),
              models.attention_bias(jnp.asarray(input_mask)))
  want = np_transformer_layer(x, params(layer), input_mask, config)
  np.testing.assert_allclose(got, want, **TOL)


def test_encoder_matches_numpy():
  config = tiny_config()
  encoder = randomize(models.BertEncoder(config, rngs=nnx.Rngs(0)))
  batch = inputs()
  sequence, pooled = encoder(*map(jnp.asarray, batch))
  want_sequence, want_pooled = np_encoder(params(encoder), config, *batch)
  assert sequence.shape == (2, LENGTH, 16) and pooled.shape == (2, 16)
  np.testing.assert_allclose(sequence, want_sequence, **TOL)
  np.testing.assert_allclose(pooled, want_pooled, **TOL)


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
@pytest.mark.parametrize('projection_size', [8, 0, None])
def test_retriever_tower_matches_numpy(pooling, projection_size):
  config = tiny_config(num_layers=1, pooling=pooling,
                       projection_size=projection_size)
  tower = randomize(models.RetrieverTower(config, rngs=nnx.Rngs(0)))
  batch = inputs()
  got = tower(*map(jnp.asarray, batch))
  assert got.shape == (2, projection_size or config.hidden_size)
  np.testing.assert_allclose(got, np_tower(params(tower), config, *batch),
                             **TOL)
  has_projection = {'projection', 'norm'} <= set(nnx.state(tower).keys())
  assert has_projection == bool(projection_size)


@pytest.mark.parametrize('learn_temperature', [False, True])
def test_cosine_score_is_cosine_over_temperature(learn_temperature):
  config = tiny_config(num_layers=1, pooling='mean', projection_size=0,
                       score='cosine', score_temperature=0.1,
                       learn_temperature=learn_temperature, share_towers=False)
  retriever = randomize(models.Retriever(config, rngs=nnx.Rngs(0)))
  batch = inputs()
  queries = np.asarray(retriever.embed_queries(*map(jnp.asarray, batch)),
                       np.float64)
  blocks = np.asarray(retriever.embed_blocks(*map(jnp.asarray, batch)),
                      np.float64)
  tower = params(retriever)['doc_tower']
  np.testing.assert_allclose(blocks, np_tower(tower, config, *batch), **TOL)
  # The same for every vector, so MIPS over the index ranks by cosine.
  norms = np.linalg.norm(blocks, axis=-1)
  np.testing.assert_allclose(norms, norms[0], rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(queries, axis=-1),
                             norms[0] if not learn_temperature else
                             np.linalg.norm(queries, axis=-1)[0], rtol=1e-5)
  if learn_temperature:  # a parameter of each tower, randomized above
    assert not np.isclose(norms[0], 0.1**-0.5)
    grads = nnx.grad(lambda r: (r.embed_queries(*map(jnp.asarray, batch))
                                * r.embed_blocks(*map(jnp.asarray, batch))
                                ).sum())(retriever)
    assert abs(float(grads['query_tower']['log_scale'][...])) > 0
  else:
    np.testing.assert_allclose(norms, 0.1**-0.5, rtol=1e-5)
    # The raw tower (score='dot') gives the same vectors unnormalised.
    dot = config.copy_and_resolve_references()
    dot.score = 'dot'
    raw = np_tower(tower, dot, *batch)
    cosine = (raw @ raw.T) / np.outer(np.linalg.norm(raw, axis=-1),
                                     np.linalg.norm(raw, axis=-1))
    np.testing.assert_allclose(blocks @ blocks.T, cosine / 0.1, rtol=1e-4,
                               atol=1e-5)


def test_mean_pooling_ignores_padding():
  """Row 1 padded to LENGTH equals row 1 alone, cut to its 5 real tokens."""
  config = tiny_config(num_layers=1, pooling='mean', projection_size=0)
  tower = randomize(models.RetrieverTower(config, rngs=nnx.Rngs(0)))
  token_ids, segment_ids, input_mask = map(jnp.asarray, inputs())
  padded = tower(token_ids, segment_ids, input_mask)
  alone = tower(token_ids[1:, :5], segment_ids[1:, :5], input_mask[1:, :5])
  np.testing.assert_allclose(padded[1], alone[0], **TOL)
  np.testing.assert_array_equal(
      models.mean_pool(jnp.ones((1, 3, 2)), jnp.zeros((1, 3))), 0.0)


def test_mlm_logits_match_numpy_with_tied_embedding():
  config = tiny_config(num_layers=1)
  reader = randomize(models.Reader(config, rngs=nnx.Rngs(0)))
  sequence = np.random.default_rng(1).normal(size=(2, LENGTH, 16))
  positions = np.array([[1, 3, 3], [0, 7, 2]])
  got = reader.mlm_logits(jnp.asarray(sequence, jnp.float32),
                          jnp.asarray(positions))
  assert got.shape == (2, 3, VOCAB) and got.dtype == jnp.float32
  np.testing.assert_allclose(
      got, np_mlm_logits(params(reader), config, sequence, positions), **TOL)

  # The decode matrix is the token embedding itself: no [V, H] copy in the
  # head, and editing the embedding moves the logits.
  head_shapes = [x.shape for x in jax.tree.leaves(nnx.state(reader.mlm_head))]
  assert (VOCAB, 16) not in head_shapes
  token_embed = reader.encoder.embeddings.token_embed
  token_embed.embedding[...] = token_embed.embedding[...] * 2.0 + 1.0
  got = reader.mlm_logits(jnp.asarray(sequence, jnp.float32),
                          jnp.asarray(positions))
  np.testing.assert_allclose(
      got, np_mlm_logits(params(reader), config, sequence, positions), **TOL)


def test_span_logits_match_numpy():
  config = tiny_config(num_layers=1)
  reader = randomize(models.Reader(config, rngs=nnx.Rngs(0)))
  sequence = np.random.default_rng(1).normal(size=(2, LENGTH, 16))
  # Row 0: block at 3..7, so width-2/3 spans near the end run past L.
  # Row 1: a hole at position 4, which no span may cross.
  block_mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1],
                         [0, 1, 1, 1, 0, 1, 1, 0]])
  got = reader.span_logits(jnp.asarray(sequence, jnp.float32),
                           jnp.asarray(block_mask))
  assert got.shape == (2, LENGTH, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(
      got, np_span_logits(params(reader), config, sequence, block_mask),
      **TOL)


def test_span_logits_indexing_and_masking():
  config = tiny_config(num_layers=1)
  reader = models.Reader(config, rngs=nnx.Rngs(0))
  sequence = jax.random.normal(jax.random.key(1), (1, LENGTH, 16))
  block_mask = jnp.array([[0, 0, 1, 1, 1, 0, 1, 1]])
  valid = np.asarray(reader.span_logits(sequence, block_mask) != -10000.0)
  # (start, width - 1) of every span that lies inside the block.
  want = {(2, 0), (3, 0), (4, 0), (2, 1), (3, 1), (2, 2),
          (6, 0), (7, 0), (6, 1)}
  assert set(zip(*np.nonzero(valid[0]))) == want

  # Entry [i, w] depends on the start state at i and the end state at i + w.
  head = reader.span_head
  starts, ends = jnp.split(head.boundaries(sequence), 2, axis=-1)
  for i, w in want:
    hidden = jax.nn.relu(starts[0, i] + ends[0, i + w])
    expected = head.score(head.norm(hidden))[0]
    np.testing.assert_allclose(
        reader.span_logits(sequence, block_mask)[0, i, w], expected, **TOL)


# --- behaviour ---------------------------------------------------------------


def test_padding_does_not_change_real_positions():
  config = tiny_config()
  model = models.REALM(config, rngs=nnx.Rngs(0))
  token_ids, segment_ids, input_mask = map(jnp.asarray, inputs())
  padding = input_mask == 0
  other_tokens = jnp.where(padding, (token_ids + 7) % VOCAB, token_ids)
  other_segments = jnp.where(padding, 1 - segment_ids, segment_ids)

  def outputs(tokens, segments):
    sequence = model.reader(tokens, segments, input_mask)
    return (model.retriever.embed_blocks(tokens, segments, input_mask),
            jnp.where(padding[..., None], 0.0, sequence))

  for got, want in zip(outputs(other_tokens, other_segments),
                       outputs(token_ids, segment_ids)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_dropout_only_with_rngs_and_state_unchanged():
  config = tiny_config(num_layers=1)
  tower = models.RetrieverTower(config, rngs=nnx.Rngs(0))
  batch = tuple(map(jnp.asarray, inputs()))
  before = jax.tree.map(np.array, nnx.state(tower))

  deterministic = tower(*batch)
  np.testing.assert_array_equal(tower(*batch), deterministic)
  key1 = tower(*batch, rngs=nnx.Rngs(dropout=1))
  key1_again = tower(*batch, rngs=nnx.Rngs(dropout=1))
  key2 = tower(*batch, rngs=nnx.Rngs(dropout=2))
  np.testing.assert_array_equal(key1, key1_again)
  assert not np.allclose(key1, key2)
  assert not np.allclose(key1, deterministic)
  # Dropout on the projected vector zeroes whole entries (ORQA).
  assert (np.asarray(key1) == 0).any()

  # The forward pass leaves the state alone, so a pure jitted step can
  # split the model, merge it inside and return nothing but outputs.
  graphdef, state = nnx.split(tower)

  @jax.jit
  def embed(state, key, *batch):
    return nnx.merge(graphdef, state)(*batch, rngs=nnx.Rngs(dropout=key))

  jitted = embed(state, jax.random.key(1), *batch)
  assert jitted.shape == deterministic.shape
  assert not np.allclose(jitted, deterministic)
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, nnx.state(tower)))


@pytest.mark.parametrize('share_towers', [True, False])
def test_shared_and_separate_towers(share_towers):
  config = tiny_config(num_layers=1, share_towers=share_towers)
  retriever = models.Retriever(config, rngs=nnx.Rngs(0))
  tower_size = sum(x.size for x in jax.tree.leaves(
      nnx.state(retriever.doc_tower, nnx.Param)))
  size = sum(x.size for x in jax.tree.leaves(nnx.state(retriever, nnx.Param)))
  batch = tuple(map(jnp.asarray, inputs()))
  queries = retriever.embed_queries(*batch)
  np.testing.assert_array_equal(retriever.embed_blocks(*batch),
                                retriever.doc_tower(*batch))
  if share_towers:
    assert not hasattr(retriever, 'query_tower')
    assert size == tower_size
    np.testing.assert_array_equal(queries, retriever.doc_tower(*batch))
  else:
    assert size == 2 * tower_size
    np.testing.assert_array_equal(queries, retriever.query_tower(*batch))
    assert not np.allclose(queries, retriever.embed_blocks(*batch))


def test_bfloat16_compute_stays_close_to_float32():
  batch = tuple(map(jnp.asarray, inputs()))
  positions = jnp.array([[1, 2], [3, 4]])
  outputs = {}
  for dtype in ('float32', 'bfloat16'):
    model = models.REALM(tiny_config(dtype=dtype), rngs=nnx.Rngs(0))
    for x in jax.tree.leaves(nnx.state(model)):
      assert x.dtype == jnp.float32
    sequence = model.reader(*batch)
    assert sequence.dtype == jnp.dtype(dtype)
    outputs[dtype] = (
        model.retriever.embed_queries(*batch), sequence,
        model.reader.mlm_logits(sequence, positions),
        model.reader.span_logits(sequence, batch[2]))
  for low, high in zip(outputs['bfloat16'], outputs['float32']):
    low = np.asarray(low, np.float32)
    assert np.isfinite(low).all()
    np.testing.assert_allclose(low, high, rtol=0.05, atol=0.1)


# --- structure, initialisation and sharding ---------------------------------


def test_realm_state_splits_by_component():
  config = tiny_config(num_layers=1)
  model = models.REALM(config, rngs=nnx.Rngs(0))
  state = nnx.state(model)
  assert set(state.keys()) == {'retriever', 'reader'}
  assert set(state['retriever'].keys()) == {'doc_tower'}
  assert set(state['reader'].keys()) == {'encoder', 'mlm_head', 'span_head'}

  # What the index builder does: restore only retriever.doc_tower into a
  # freshly built tower and embed blocks with it.
  tower = models.RetrieverTower(config, rngs=nnx.Rngs(1))
  nnx.update(tower, state['retriever']['doc_tower'])
  batch = tuple(map(jnp.asarray, inputs()))
  np.testing.assert_array_equal(tower(*batch),
                                model.retriever.embed_blocks(*batch))

  # No shared references: the model also splits in NNX tree mode.
  graphdef, tree_state = nnx.split(model, graph=False)
  np.testing.assert_array_equal(
      nnx.merge(graphdef, tree_state).retriever.embed_blocks(*batch),
      model.retriever.embed_blocks(*batch))


def test_initialisation_is_bert():
  model = models.REALM(config_lib.model_config('tiny', vocab_size=VOCAB),
                       rngs=nnx.Rngs(0))
  for path, x in nnx.to_flat_state(nnx.state(model)):
    name = path[-1]
    x = np.asarray(x[...])
    if name == 'scale':
      np.testing.assert_array_equal(x, 1.0)
    elif name in ('bias', 'output_bias'):
      np.testing.assert_array_equal(x, 0.0)
    else:
      assert name in ('kernel', 'embedding'), path
      # Truncated at two standard deviations, as tf.truncated_normal.
      assert np.abs(x).max() <= 0.04, path
      if x.size >= 1000:
        assert 0.015 < x.std() < 0.02, path


def test_logical_axes_map_to_mesh_axes():
  model = models.REALM(tiny_config(share_towers=False), rngs=nnx.Rngs(0))
  logical_names = {name for name, _ in config_lib.AXIS_RULES}
  state = nnx.state(model)
  for path, variable in nnx.to_flat_state(state):
    axes = variable.get_metadata().get('out_sharding')
    assert axes is not None and len(axes) == variable.ndim, path
    assert set(axes) <= logical_names | {None}, (path, axes)
  with nnx.logical_axis_rules(config_lib.AXIS_RULES):
    specs = nnx.get_partition_spec(state)
  for path, variable in nnx.to_flat_state(specs):
    spec = variable.get_value()
    assert isinstance(spec, jax.sharding.PartitionSpec), path
    assert set(spec) <= {'data', 'model', None}, (path, spec)
  token_spec = specs['reader']['encoder']['embeddings']['token_embed']
  assert token_spec['embedding'].get_value() == jax.sharding.PartitionSpec(
      'model', None)


def test_jit_init_with_out_shardings_on_a_mesh():
  config = tiny_config(num_layers=1)
  mesh = jax.make_mesh((4, 2), ('data', 'model'))
  create = lambda: models.REALM(config, rngs=nnx.Rngs(0))
  abstract_state = nnx.state(nnx.eval_shape(create))
  with nnx.logical_axis_rules(config_lib.AXIS_RULES):
    shardings = nnx.get_named_sharding(abstract_state, mesh)
  state = jax.jit(lambda: nnx.state(create()), out_shardings=shardings)()
  query_kernel = (state['reader']['encoder']['layers'][0]['attention']
                  ['query']['kernel'])
  assert query_kernel.sharding.spec == jax.sharding.PartitionSpec(
      None, 'model', None)
  np.testing.assert_array_equal(
      query_kernel[...],
      nnx.state(create())['reader']['encoder']['layers'][0]['attention']
      ['query']['kernel'][...])


def test_dropout_rate_and_scale():
  dropout = models.Dropout(0.1)
  x = jnp.ones((200, 500), jnp.float32)
  y = np.asarray(dropout(x, rngs=nnx.Rngs(dropout=3)))
  dropped = (y == 0).mean()
  assert abs(dropped - 0.1) < 0.005  # 100k draws: sd 0.001
  np.testing.assert_allclose(y[y != 0], 1 / 0.9, rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.01  # expectation preserved
  # Odd sizes work (two elements per random word).
  assert dropout(jnp.ones((3, 7)), rngs=nnx.Rngs(dropout=0)).shape == (3, 7)


def _residual_bytes(fn, *args) -> int:
  """Bytes the backward pass of `fn` keeps (jax's own accounting)."""
  from jax._src import ad_checkpoint  # pylint: disable=g-import-not-at-top
  return sum(aval.size * aval.dtype.itemsize
             for aval, _ in ad_checkpoint.saved_residuals(fn, *args))


def test_remat_keeps_less_and_changes_no_gradient():
  """Each model.remat policy gives the same loss and gradients as keeping
  everything (dropout included: recomputed masks are the same masks), and
  keeps fewer bytes for the backward pass: full < minimal < none."""
  batch = tuple(map(jnp.asarray, inputs()))
  positions = jnp.array([[1, 2], [3, 4]])
  kept, results = {}, {}
  for remat in config_lib.REMATS:
    model = randomize(models.ReaderModel(
        tiny_config(num_layers=3, remat=remat), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def loss(state, key):
      reader = nnx.merge(graphdef, state).reader
      sequence = reader(*batch, rngs=nnx.Rngs(dropout=key))
      return (reader.mlm_logits(sequence, positions).sum()
              + (reader.span_logits(sequence, batch[2]) ** 2).mean())

    key = jax.random.key(3)
    results[remat] = jax.jit(jax.value_and_grad(loss))(state, key)
    kept[remat] = _residual_bytes(loss, state, key)
  assert kept['full'] < kept['minimal'] < kept['none']
  want_loss, want_grads = results['none']
  for remat in ('minimal', 'full'):
    got_loss, got_grads = results[remat]
    np.testing.assert_allclose(got_loss, want_loss, **TOL)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **TOL),
                 got_grads, want_grads)
