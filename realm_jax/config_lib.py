"""Pieces shared by the job configs in configs/, and config validation.

Job configs (configs/<job>.py) build a locked ml_collections.ConfigDict from
these presets, so an override of an unknown field fails at parse time. The
checks below catch inconsistent values and name the offending field.
"""
import ml_collections

# Logical axis names used by the models (realm_jax/models.py) -> mesh axes.
# T5X-style: a small table in the config, not in model code.
AXIS_RULES = (
    ('batch', 'data'),
    ('vocab', 'model'),
    ('embed', None),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv', None),
    ('projection', None),
    ('span', 'model'),
)

# Retriever tower pooling and relevance score (models.RetrieverTower).
POOLINGS = ('cls', 'mean')
SCORES = ('dot', 'cosine')
HIDDEN_ACTS = ('gelu', 'gelu_new')
REMATS = ('none', 'minimal', 'full')  # models.REMAT_POLICIES

_SIZES = {
    #        layers hidden heads  mlp
    'tiny': (2, 128, 2, 512),
    'base': (12, 768, 12, 3072),
    'large': (24, 1024, 16, 4096),
}


def model_config(size: str, vocab_size: int) -> ml_collections.ConfigDict:
  """BERT encoder + REALM heads. `size` is one of tiny, base, large."""
  if size not in _SIZES:
    raise ValueError(f'unknown model size {size!r}; one of {sorted(_SIZES)}')
  layers, hidden, heads, mlp = _SIZES[size]
  return ml_collections.ConfigDict(dict(
      vocab_size=vocab_size,
      hidden_size=hidden,
      num_layers=layers,
      num_heads=heads,
      intermediate_size=mlp,
      max_position_embeddings=512,
      type_vocab_size=2,
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
      layer_norm_eps=1e-12,
      # The encoder's and MLM head's GELU: 'gelu' (exact, erf; Hugging Face
      # BERTs) | 'gelu_new' (the tanh approximation of the original BERT and
      # of the released REALM checkpoints).
      hidden_act='gelu',
      dtype='float32',  # activations; 'bfloat16' on TPU
      # What the backward pass keeps of each encoder layer: 'none' (all of
      # it) | 'minimal' (weight-matmul outputs) | 'full' (the layer's input
      # only; the layer is recomputed): less memory for more FLOPs
      # (models.REMAT_POLICIES; docs/pod.md measures it).
      remat='none',
      # Retriever tower: pool -> Dense(projection_size) -> LayerNorm(1e-3).
      # pooling: 'cls' (BERT's pooler, REALM) | 'mean' (masked mean of the
      # last hidden states, sentence-transformers). projection_size 0 (or
      # None): no projection and no LayerNorm, the tower outputs the pooled
      # hidden_size vector.
      pooling='cls',
      projection_size=128,
      projection_layer_norm_eps=1e-3,
      share_towers=True,  # REALM's share_embedders=True
      # Relevance: 'dot' (REALM's inner product) | 'cosine' (L2-normalised
      # tower outputs, / score_temperature; learned when learn_temperature).
      score='dot',
      score_temperature=0.05,
      learn_temperature=False,
      # Reader span head (ORQA).
      span_hidden_size=256,
      max_span_width=10,
  ))


def init_config() -> ml_collections.ConfigDict:
  """Where a job's fresh parameters come from (not used on resume).

  bert_checkpoint: a BERT-family checkpoint directory in the Hugging Face
  layout (config.json, model.safetensors, vocab.txt); '' = from scratch.
  When set, the model's encoder sizes are taken from its config.json and
  every BERT encoder is initialised from it (bert_import.init_from_bert);
  the corpus must be tokenized with its vocab.txt.
  """
  return ml_collections.ConfigDict(dict(bert_checkpoint=''))


def mesh_config(data: int = -1, model: int = 1) -> ml_collections.ConfigDict:
  """Mesh axis sizes in order; -1 takes the remaining devices."""
  return ml_collections.ConfigDict(dict(data=data, model=model))


def lengths_config() -> ml_collections.ConfigDict:
  """REALM's sequence lengths (reference: realm/local_launcher.sh)."""
  return ml_collections.ConfigDict(dict(
      query_len=96, block_len=288, joint_len=384, max_title_len=32))


class ConfigError(ValueError):
  """A config value is wrong or inconsistent; the message names the field."""


def check(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f'config.{field}: {message}')


def validate_lengths(lengths: ml_collections.ConfigDict,
                     max_position_embeddings: int | None = None) -> None:
  check(lengths.block_len > lengths.max_title_len + 3, 'lengths.block_len',
        f'{lengths.block_len} leaves no room for a body after '
        f'[CLS] title [SEP] ... [SEP] with max_title_len='
        f'{lengths.max_title_len}')
  check(lengths.max_title_len >= 0, 'lengths.max_title_len', 'must be >= 0')
  check(lengths.query_len >= 3, 'lengths.query_len', 'must be >= 3')
  check(lengths.joint_len >= lengths.query_len + 3, 'lengths.joint_len',
        f'{lengths.joint_len} is shorter than query_len + 3')
  if max_position_embeddings is not None:
    longest = max(lengths.block_len, lengths.joint_len, lengths.query_len)
    check(longest <= max_position_embeddings,
          'model.max_position_embeddings',
          f'{max_position_embeddings} < longest sequence {longest}')


def validate_model(model: ml_collections.ConfigDict) -> None:
  check(model.hidden_size % model.num_heads == 0, 'model.num_heads',
        f'hidden_size {model.hidden_size} is not divisible by num_heads '
        f'{model.num_heads}')
  check(model.dtype in ('float32', 'bfloat16'), 'model.dtype',
        f'{model.dtype!r} is not float32 or bfloat16')
  for field in ('num_layers', 'vocab_size', 'max_span_width'):
    check(model[field] > 0, f'model.{field}', 'must be > 0')
  check(model.pooling in POOLINGS, 'model.pooling',
        f'{model.pooling!r} is not one of {POOLINGS}')
  check(model.score in SCORES, 'model.score',
        f'{model.score!r} is not one of {SCORES}')
  check(model.get('hidden_act', 'gelu') in HIDDEN_ACTS, 'model.hidden_act',
        f'{model.get("hidden_act")!r} is not one of {HIDDEN_ACTS}')
  check(model.get('remat', 'none') in REMATS, 'model.remat',
        f'{model.get("remat")!r} is not one of {REMATS}')
  check(model.score_temperature > 0, 'model.score_temperature', 'must be > 0')
  check(model.projection_size is None or model.projection_size >= 0,
        'model.projection_size', 'must be >= 0 (0 or None: no projection)')
  for field in ('dropout_rate', 'attention_dropout_rate'):
    check(0.0 <= model[field] < 1.0, f'model.{field}', 'must be in [0, 1)')


def validate_batch(batch_size: int, field: str, data_parallel: int) -> None:
  check(batch_size > 0, field, 'must be > 0')
  check(batch_size % data_parallel == 0, field,
        f'{batch_size} is not divisible by the {data_parallel} data-parallel '
        'devices of the mesh (config.mesh.data)')
