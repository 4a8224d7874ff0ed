"""REALM's networks in Flax NNX: a BERT encoder, the retriever and the reader.

    REALM
    ├── retriever: Retriever
    │   ├── doc_tower: RetrieverTower     BERT -> pool -> Dense -> LN (optional)
    │   └── query_tower: RetrieverTower   only when config.share_towers=False
    └── reader: Reader                    BERT + MLM head + ORQA span head

RetrieverModel (realm-ict) and ReaderModel (realm-mlm) hold one of the two
under the same names, so their checkpoints' subtrees drop into REALM's.

Every module takes the `model` config of `config_lib.model_config`. Dropout is
active only when a call passes `rngs` (an `nnx.Rngs` with a `dropout` stream);
no RNG state lives in the modules, so a forward pass never changes the state
and pure jitted steps can split and merge it freely. Parameters are float32
and carry logical axis names (see `config_lib.AXIS_RULES`); activations use
`config.dtype`, with softmax and LayerNorm statistics in float32.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx
import ml_collections

# BERT's additive attention bias for padding keys, and ORQA's score for spans
# that are not inside the block.
ATTENTION_MASK_BIAS = -10000.0
SPAN_MASK_VALUE = -10000.0
# ORQA's span head LayerNorm is tf.keras' default.
SPAN_LAYER_NORM_EPS = 1e-3

_truncated_normal = nnx.initializers.truncated_normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def _partitioned(init, axes):
  """`init` with logical axis names, placed by the caller's jit, not eagerly.

  Flax 0.12 shards annotated variables at creation by default, which needs a
  global mesh; the trainer instead initialises under
  jit(..., out_shardings=...), and tests and the CPU builder have no mesh.
  """
  return nnx.with_partitioning(init, axes, eager_sharding=False)


def _dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  return jnp.dtype(config.dtype)


def _linear(in_features, out_features, kernel_axes, bias_axes, config, *,
            rngs: nnx.Rngs, axis=-1) -> nnx.LinearGeneral:
  """A dense layer with BERT's initialisation and logical axis names."""
  return nnx.LinearGeneral(
      in_features, out_features, axis=axis,
      kernel_init=_partitioned(_truncated_normal, kernel_axes),
      bias_init=_partitioned(_zeros, bias_axes),
      dtype=_dtype(config), rngs=rngs)


def _layer_norm(features, epsilon, axis_name, config, *,
                rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      features, epsilon=epsilon, dtype=_dtype(config),
      scale_init=_partitioned(_ones, (axis_name,)),
      bias_init=_partitioned(_zeros, (axis_name,)),
      rngs=rngs)


def _embed(num_embeddings, features, axes, config, *,
           rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(
      num_embeddings, features, dtype=_dtype(config),
      embedding_init=_partitioned(_truncated_normal, axes),
      rngs=rngs)


class Dropout(nnx.Module):
  """Dropout, active exactly when the call passes `rngs`.

  The keep mask uses 16 random bits per element, two elements per 32-bit
  threefry word: half the random-number work of nnx.Dropout's float
  uniforms, which dominates attention dropout on a CPU (3x faster here);
  the rate is exact to 1/65536.
  """

  def __init__(self, rate: float):
    self.rate = rate

  def __call__(self, inputs: jax.Array, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    if rngs is None or self.rate == 0.0:
      return inputs
    size = inputs.size
    words = jax.random.bits(rngs.dropout(), ((size + 1) // 2,), jnp.uint32)
    bits = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)
    keep = bits[:size].reshape(inputs.shape) >= round(self.rate * 65536)
    return jnp.where(keep, inputs / (1.0 - self.rate), 0).astype(inputs.dtype)


def attention_bias(input_mask: jax.Array) -> jax.Array:
  """[B, L] mask (1 = real token) -> [B, 1, 1, L] additive bias over keys."""
  bias = jnp.where(input_mask.astype(bool), 0.0, ATTENTION_MASK_BIAS)
  return bias[:, None, None, :].astype(jnp.float32)


class Embeddings(nnx.Module):
  """Token + segment + position embeddings -> LayerNorm -> dropout."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    hidden = config.hidden_size
    self.token_embed = _embed(config.vocab_size, hidden, ('vocab', 'embed'),
                              config, rngs=rngs)
    self.segment_embed = _embed(config.type_vocab_size, hidden,
                                (None, 'embed'), config, rngs=rngs)
    self.position_embed = _embed(config.max_position_embeddings, hidden,
                                 (None, 'embed'), config, rngs=rngs)
    self.norm = _layer_norm(hidden, config.layer_norm_eps, 'embed', config,
                            rngs=rngs)
    self.dropout = Dropout(config.dropout_rate)

  def __call__(self, token_ids, segment_ids, *, rngs=None) -> jax.Array:
    positions = jnp.arange(token_ids.shape[1])[None]
    x = (self.token_embed(token_ids) + self.segment_embed(segment_ids)
         + self.position_embed(positions))
    return self.dropout(self.norm(x), rngs=rngs)


class SelfAttention(nnx.Module):
  """Multi-head self-attention with biases on every projection."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    hidden, heads = config.hidden_size, config.num_heads
    self.head_dim = hidden // heads
    def projection():
      return _linear(hidden, (heads, self.head_dim), ('embed', 'heads', 'kv'),
                     ('heads', 'kv'), config, rngs=rngs)
    self.query = projection()
    self.key = projection()
    self.value = projection()
    self.out = _linear((heads, self.head_dim), hidden,
                       ('heads', 'kv', 'embed'), ('embed',), config,
                       rngs=rngs, axis=(-2, -1))
    self.dropout = Dropout(config.attention_dropout_rate)

  def __call__(self, x, bias, *, rngs=None) -> jax.Array:
    """x: [B, L, H]; bias: [B, 1, 1, L] added to the logits -> [B, L, H]."""
    query = self.query(x) * self.head_dim**-0.5
    key, value = self.key(x), self.value(x)
    logits = jnp.einsum('bqnd,bknd->bnqk', query, key,
                        preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits + bias, axis=-1).astype(x.dtype)
    probs = self.dropout(probs, rngs=rngs)
    return self.out(jnp.einsum('bnqk,bknd->bqnd', probs, value))


def _tanh_gelu(config: ml_collections.ConfigDict) -> bool:
  """GELU's tanh approximation ('gelu_new') rather than exact erf GELU."""
  # Runs recorded before the field existed used exact GELU.
  return config.get('hidden_act', 'gelu') == 'gelu_new'


class Mlp(nnx.Module):
  """Dense -> GELU (config.hidden_act) -> Dense, as BERT."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.tanh_gelu = _tanh_gelu(config)
    self.intermediate = _linear(config.hidden_size, config.intermediate_size,
                                ('embed', 'mlp'), ('mlp',), config, rngs=rngs)
    self.output = _linear(config.intermediate_size, config.hidden_size,
                          ('mlp', 'embed'), ('embed',), config, rngs=rngs)

  def __call__(self, x) -> jax.Array:
    return self.output(jax.nn.gelu(self.intermediate(x),
                                   approximate=self.tanh_gelu))


class TransformerLayer(nnx.Module):
  """BERT's post-LayerNorm layer: x = LN(x + f(x)) for attention, then MLP."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    eps = config.layer_norm_eps
    self.attention = SelfAttention(config, rngs=rngs)
    self.attention_norm = _layer_norm(config.hidden_size, eps, 'embed', config,
                                      rngs=rngs)
    self.mlp = Mlp(config, rngs=rngs)
    self.mlp_norm = _layer_norm(config.hidden_size, eps, 'embed', config,
                                rngs=rngs)
    self.dropout = Dropout(config.dropout_rate)

  def __call__(self, x, bias, *, rngs=None) -> jax.Array:
    attended = self.attention(x, bias, rngs=rngs)
    x = self.attention_norm(x + self.dropout(attended, rngs=rngs))
    return self.mlp_norm(x + self.dropout(self.mlp(x), rngs=rngs))


# config.remat -> what the backward pass keeps of each transformer layer
# (MaxText's names): 'none' everything; 'minimal' the outputs of the weight
# matmuls (dots without batch dimensions), recomputing attention
# probabilities, dropout masks, GELU and LayerNorms; 'full' only the
# layer's input, recomputing the whole layer.
REMAT_POLICIES = {
    'none': None,
    'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'full': jax.checkpoint_policies.nothing_saveable,
}


def _apply_layer(layer, x, bias, rngs):
  return layer(x, bias, rngs=rngs)


class BertEncoder(nnx.Module):
  """BERT: embeddings, `num_layers` transformer layers and the pooler."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    # Runs recorded before the field existed kept every activation.
    self.remat = config.get('remat', 'none')
    self.embeddings = Embeddings(config, rngs=rngs)
    self.layers = nnx.List([TransformerLayer(config, rngs=rngs)
                            for _ in range(config.num_layers)])
    self.pooler = _linear(config.hidden_size, config.hidden_size,
                          ('embed', None), (None,), config, rngs=rngs)

  def __call__(self, token_ids, segment_ids, input_mask, *,
               rngs=None) -> tuple[jax.Array, jax.Array]:
    """[B, L] ints -> (sequence [B, L, H], pooled [CLS] [B, H])."""
    x = self.embeddings(token_ids, segment_ids, rngs=rngs)
    bias = attention_bias(input_mask)
    apply_layer = _apply_layer
    if self.remat != 'none':
      apply_layer = nnx.remat(_apply_layer,
                              policy=REMAT_POLICIES[self.remat])
    for layer in self.layers:
      x = apply_layer(layer, x, bias, rngs)
    return x, jnp.tanh(self.pooler(x[:, 0]))


def mean_pool(sequence: jax.Array, input_mask: jax.Array) -> jax.Array:
  """[B, L, H], [B, L] -> [B, H]: the mean over real tokens, in float32.

  sentence-transformers' Pooling(mean): padding never counts, and a row
  without tokens gives zeros instead of NaN.
  """
  mask = input_mask.astype(jnp.float32)[..., None]
  total = (sequence.astype(jnp.float32) * mask).sum(1)
  return total / jnp.maximum(mask.sum(1), 1e-9)


class RetrieverTower(nnx.Module):
  """BERT -> pooled vector -> [Dense(projection_size) -> LayerNorm -> dropout].

  `config.pooling`: 'cls' is BERT's pooler (tanh(Dense([CLS]))), as REALM;
  'mean' the masked mean of the last hidden states, as sentence-transformers.
  A `config.projection_size` of 0 (or None) drops the projection, its
  LayerNorm and dropout: the tower outputs the pooled vector (hidden_size),
  e.g. to retrieve zero-shot with a sentence-embedding checkpoint.

  `config.score`: 'dot' (REALM) leaves the vector as it is; 'cosine' (what
  sentence embedders are trained for) L2-normalises it and scales it by
  temperature**-1/2, so the inner product of two towers' outputs - in the
  trainers' scores and in the index's MIPS alike - is cosine / temperature
  (the scale is the same for every vector, so MIPS ranks by cosine). With
  `learn_temperature` each tower learns its scale (log_scale), starting at
  `score_temperature`.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    # Runs recorded before the fields existed (their config.json) pool
    # [CLS] and score by inner product.
    self.pooling = config.get('pooling', 'cls')
    self.score = config.get('score', 'dot')
    self.learns_scale = self.score == 'cosine' and config.learn_temperature
    if self.score == 'cosine':
      log_scale = -0.5 * math.log(config.score_temperature)
      self.fixed_scale = math.exp(log_scale)
      if self.learns_scale:
        self.log_scale = nnx.Param(jnp.full((), log_scale, jnp.float32))
    self.encoder = BertEncoder(config, rngs=rngs)
    if config.projection_size:
      self.projection = _linear(config.hidden_size, config.projection_size,
                                ('embed', 'projection'), ('projection',),
                                config, rngs=rngs)
      self.norm = _layer_norm(config.projection_size,
                              config.projection_layer_norm_eps, 'projection',
                              config, rngs=rngs)
      # ORQA drops out the projected vector itself during training.
      self.dropout = Dropout(config.dropout_rate)
    else:
      self.projection = None

  def __call__(self, token_ids, segment_ids, input_mask, *,
               rngs=None) -> jax.Array:
    """[B, L] ints -> [B, projection_size or hidden_size] in config.dtype."""
    sequence, pooled = self.encoder(token_ids, segment_ids, input_mask,
                                    rngs=rngs)
    if self.pooling == 'mean':
      pooled = mean_pool(sequence, input_mask).astype(sequence.dtype)
    if self.projection is not None:
      pooled = self.dropout(self.norm(self.projection(pooled)), rngs=rngs)
    if self.score == 'dot':
      return pooled
    vector = pooled.astype(jnp.float32)
    vector = vector / jnp.maximum(
        jnp.linalg.norm(vector, axis=-1, keepdims=True), 1e-6)
    scale = (jnp.exp(self.log_scale[...]) if self.learns_scale
             else self.fixed_scale)
    return (vector * scale).astype(pooled.dtype)


class Retriever(nnx.Module):
  """Query and document embedders; relevance is their inner product.

  With `config.share_towers` (REALM's default) there is one tower and both
  methods use it; `doc_tower` is always the one that embeds the index.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.share_towers = config.share_towers
    self.doc_tower = RetrieverTower(config, rngs=rngs)
    if not self.share_towers:
      self.query_tower = RetrieverTower(config, rngs=rngs)

  def embed_queries(self, token_ids, segment_ids, input_mask, *,
                    rngs=None) -> jax.Array:
    tower = self.doc_tower if self.share_towers else self.query_tower
    return tower(token_ids, segment_ids, input_mask, rngs=rngs)

  def embed_blocks(self, token_ids, segment_ids, input_mask, *,
                   rngs=None) -> jax.Array:
    return self.doc_tower(token_ids, segment_ids, input_mask, rngs=rngs)


class MlmHead(nnx.Module):
  """BERT's MLM transform (Dense, GELU, LayerNorm) and output bias.

  The decode matrix is the encoder's token embedding, passed in at call time
  (a stored reference would make the embedding a shared module).
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.tanh_gelu = _tanh_gelu(config)
    self.transform = _linear(config.hidden_size, config.hidden_size,
                             ('embed', None), (None,), config, rngs=rngs)
    self.norm = _layer_norm(config.hidden_size, config.layer_norm_eps, 'embed',
                            config, rngs=rngs)
    self.output_bias = nnx.Param(
        _partitioned(_zeros, ('vocab',))(
            rngs.params(), (config.vocab_size,), jnp.float32))

  def __call__(self, hidden, token_embedding) -> jax.Array:
    """hidden [..., H], token_embedding [V, H] -> float32 logits [..., V]."""
    hidden = self.norm(jax.nn.gelu(self.transform(hidden),
                                   approximate=self.tanh_gelu))
    logits = jnp.einsum('...h,vh->...v', hidden,
                        token_embedding.astype(hidden.dtype),
                        preferred_element_type=jnp.float32)
    return logits + self.output_bias[...]


class SpanHead(nnx.Module):
  """ORQA's span scorer: Dense(1)(LayerNorm(relu(start_i + end_j)))."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.max_span_width = config.max_span_width
    self.boundaries = _linear(config.hidden_size, 2 * config.span_hidden_size,
                              ('embed', 'span'), ('span',), config, rngs=rngs)
    self.norm = _layer_norm(config.span_hidden_size, SPAN_LAYER_NORM_EPS,
                            'span', config, rngs=rngs)
    self.score = _linear(config.span_hidden_size, 1, ('span', None), (None,),
                         config, rngs=rngs)

  def __call__(self, sequence, block_mask) -> jax.Array:
    """sequence [B, L, H], block_mask [B, L] -> float32 [B, L, max_span_width].

    Entry [b, i, w] scores the span from i to i + w inclusive; spans that
    run past L or leave the block get SPAN_MASK_VALUE.
    """
    length = sequence.shape[1]
    starts, ends = jnp.split(self.boundaries(sequence), 2, axis=-1)
    positions = jnp.arange(length)
    widths = jnp.arange(self.max_span_width)
    span_ends = positions[:, None] + widths[None, :]  # [L, W]
    in_range = span_ends < length
    span_ends = jnp.minimum(span_ends, length - 1)
    hidden = jax.nn.relu(starts[:, :, None, :] + ends[:, span_ends])
    logits = self.score(self.norm(hidden))[..., 0].astype(jnp.float32)
    # A span is inside the block when all of its w + 1 tokens are.
    block_mask = block_mask.astype(jnp.int32)
    covered = jnp.cumsum(block_mask, axis=1)  # block tokens in [0, i]
    tokens_inside = (covered[:, span_ends] - covered[:, :, None]
                     + block_mask[:, :, None])
    inside = in_range & (tokens_inside == widths + 1)
    return jnp.where(inside, logits, SPAN_MASK_VALUE)


class Reader(nnx.Module):
  """REALM's knowledge-augmented encoder: BERT over [CLS] x [SEP] z [SEP]."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.encoder = BertEncoder(config, rngs=rngs)
    self.mlm_head = MlmHead(config, rngs=rngs)
    self.span_head = SpanHead(config, rngs=rngs)

  def __call__(self, token_ids, segment_ids, input_mask, *,
               rngs=None) -> jax.Array:
    """[B, L] ints -> sequence [B, L, H]."""
    sequence, _ = self.encoder(token_ids, segment_ids, input_mask, rngs=rngs)
    return sequence

  def mlm_logits(self, sequence, positions) -> jax.Array:
    """sequence [B, L, H], positions [B, M] -> float32 logits [B, M, V]."""
    # Gather first: the vocab matmul is only over the masked positions.
    selected = jnp.take_along_axis(sequence, positions[:, :, None], axis=1)
    token_embedding = self.encoder.embeddings.token_embed.embedding[...]
    return self.mlm_head(selected, token_embedding)

  def span_logits(self, sequence, block_mask) -> jax.Array:
    """sequence [B, L, H], block_mask [B, L] -> float32 [B, L, max_width]."""
    return self.span_head(sequence, block_mask)


class REALM(nnx.Module):
  """The full model: the state the trainer checkpoints.

  `null_offset`: the learned offset of the null document's score when
  pre-training scores it relative to the retrieved blocks
  (objectives/realm.py, null_document='relative'); not part of the
  retriever, so fine-tuning and the index builder never see it.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs,
               null_offset: bool = False):
    self.retriever = Retriever(config, rngs=rngs)
    self.reader = Reader(config, rngs=rngs)
    if null_offset:
      self.null_offset = nnx.Param(jnp.zeros((), jnp.float32))


class RetrieverModel(nnx.Module):
  """The retriever alone, under REALM's names (realm-ict's model)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.retriever = Retriever(config, rngs=rngs)


class ReaderModel(nnx.Module):
  """The reader alone, under REALM's names (realm-mlm's model)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.reader = Reader(config, rngs=rngs)


def with_separate_towers(config: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """The model config of fine-tuning: the question tower trains apart from
  the frozen document tower."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.share_towers = False
  return config
