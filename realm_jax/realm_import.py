"""Import the released REALM checkpoints (Hugging Face layout) into our models.

The checkpoints are google/realm-cc-news-pretrained-{embedder,encoder,scorer,
openqa} and google/realm-orqa-{nq,wq}-{openqa,reader}: a directory with
config.json and model.safetensors or pytorch_model.bin, as saved by
transformers' (deprecated) REALM classes. What each class holds and where it
goes in models.REALM:

    RealmEmbedder             realm.* + cls.dense/LayerNorm  -> every retriever
                                                               tower
    RealmScorer               embedder.* -> retriever.doc_tower,
                              query_embedder.* -> retriever.query_tower (one
                              shared tower when the two are the same)
    RealmKnowledgeAugEncoder  realm.* + cls.predictions.*    -> reader.encoder,
                                                               reader.mlm_head
    RealmReader               realm.* + qa_outputs.*         -> reader.encoder,
                                                               reader.span_head
    RealmForOpenQA            embedder.* -> retriever.query_tower, reader.* as
                              RealmReader, block_emb returned as an array

Usage (fill a fresh model; parts the checkpoint lacks keep their values):

    checkpoint = import_realm_checkpoint(directory)
    model = models.REALM(checkpoint.model_config, rngs=nnx.Rngs(0))
    params = init_from_realm(nnx.to_pure_dict(nnx.state(model)),
                             checkpoint.model_config, checkpoint)
    nnx.update(model, params)

An open-QA model needs two checkpoints: its document tower is the pretrained
embedder that computed block_emb, which RealmForOpenQA does not hold. Fill
the embedder's first (it fills every tower), then the open-QA checkpoint
(question tower and reader).

Tensors of model.safetensors are read with the safetensors numpy API;
pytorch_model.bin only with torch.load(weights_only=True), so torch must be
installed for it. Missing files and tensors, wrong shapes and architectures
our models cannot reproduce raise ValueError naming the file, tensor or
field; a model config that disagrees with the checkpoint raises
config_lib.ConfigError naming the field.
"""
from collections.abc import Mapping
import os
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from realm_jax import bert_import
from realm_jax import config_lib
from realm_jax import models

# The tensor readers are bert_import's (its private helpers, shared here).
# pylint: disable=protected-access

TORCH_WEIGHTS_FILE = 'pytorch_model.bin'
ARCHITECTURES = ('RealmEmbedder', 'RealmScorer', 'RealmKnowledgeAugEncoder',
                 'RealmReader', 'RealmForOpenQA')
# Model config fields a part's imported weights need to compute as the
# checkpoint did, beyond the encoder's bert_import.ARCHITECTURE_FIELDS.
_TOWER_FIELDS = ('pooling', 'score', 'projection_size',
                 'projection_layer_norm_eps')
_SPAN_FIELDS = ('span_hidden_size', 'max_span_width')


class RealmCheckpoint(NamedTuple):
  """An imported checkpoint.

  params: the parts of a models.REALM pure dict the checkpoint holds
  (float32 numpy; None where a part keeps its fresh value), for
  init_from_realm. block_emb: RealmForOpenQA's [num_blocks,
  projection_size] document embeddings, else None. hf_config: the parsed
  config.json (reader_beam_size, reader_seq_len, searcher_beam_size, ...).
  """
  architecture: str
  model_config: ml_collections.ConfigDict
  params: dict[str, Any]
  block_emb: np.ndarray | None
  hf_config: dict[str, Any]


def realm_model_config(hf_config: str | os.PathLike[str] | Mapping[str, Any],
                       **overrides: Any) -> ml_collections.ConfigDict:
  """A `config_lib.model_config` with the architecture of a REALM checkpoint.

  `hf_config` is its config.json (path, directory or parsed dict); fields
  it omits take RealmConfig's defaults. The retriever tower projects BERT's
  pooler output to retriever_proj_size and LayerNorms it with layer_norm_eps
  (RealmScorerProjection), scoring by inner product. `overrides` set other
  model fields. A config our models cannot reproduce raises ValueError
  naming the value.
  """
  hf = bert_import._read_hf_config(hf_config)
  model_type = hf.get('model_type')
  if model_type != 'realm':
    raise ValueError(f'unsupported model_type {model_type!r}; only "realm" '
                     'checkpoints can be imported here (BERT: bert_import)')
  span_eps = float(hf.get('reader_layer_norm_eps', 1e-3))
  if span_eps != models.SPAN_LAYER_NORM_EPS:
    raise ValueError(f'unsupported reader_layer_norm_eps {span_eps}; '
                     f'SpanHead\'s LayerNorm has {models.SPAN_LAYER_NORM_EPS}')
  fields = dict(
      pooling='cls', score='dot',
      projection_size=int(hf.get('retriever_proj_size', 128)),
      projection_layer_norm_eps=float(hf.get('layer_norm_eps', 1e-12)),
      span_hidden_size=int(hf.get('span_hidden_size', 256)),
      max_span_width=int(hf.get('max_span_width', 10)))
  # The encoder sizes are BERT's; what is REALM's was checked above.
  # RealmConfig's default GELU is the tanh one ('gelu_new').
  bert = dict(hf, model_type='bert', architectures=None,
              hidden_act=hf.get('hidden_act', 'gelu_new'))
  return bert_import.bert_model_config(bert, **{**fields, **overrides})


def _architecture(hf: Mapping[str, Any], config_path: pathlib.Path) -> str:
  named = hf.get('architectures') or []
  if len(named) != 1 or named[0] not in ARCHITECTURES:
    raise ValueError(f'{config_path}: unsupported architectures {named}; '
                     f'one of {", ".join(ARCHITECTURES)} can be imported')
  return named[0]


def _load_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A pytorch_model.bin's tensors as numpy, never unpickling objects."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f'{path}: reading {TORCH_WEIGHTS_FILE} needs torch; '
                     'install torch or convert the checkpoint to '
                     f'{bert_import.WEIGHTS_FILE}') from None
  try:
    # mmap: RealmForOpenQA's block_emb alone is 6.8 GB.
    state = torch.load(path, map_location='cpu', weights_only=True,
                       mmap=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path}: cannot read with torch.load(weights_only='
                     f'True) ({e})') from e
  if not isinstance(state, Mapping) or not all(
      isinstance(value, torch.Tensor) for value in state.values()):
    raise ValueError(f'{path}: not a state dict of tensors')
  # float() keeps float32 tensors (numpy views of the mapped file) and
  # widens bfloat16 and float16, which numpy cannot all hold.
  return {name: (value.float() if value.is_floating_point() else value
                 ).numpy() for name, value in state.items()}


def _load_weights(checkpoint_dir: pathlib.Path
                  ) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  """(tensors, their file): model.safetensors, else pytorch_model.bin."""
  if (checkpoint_dir / bert_import.WEIGHTS_FILE).is_file():
    return (bert_import._load_tensors(checkpoint_dir),
            checkpoint_dir / bert_import.WEIGHTS_FILE)
  path = checkpoint_dir / TORCH_WEIGHTS_FILE
  if not path.is_file():
    raise ValueError(f'{checkpoint_dir}: no {bert_import.WEIGHTS_FILE} or '
                     f'{TORCH_WEIGHTS_FILE}')
  return _load_torch(path), path


def _part(tensors, prefix: str, path: pathlib.Path):
  """A bert_import reader of one sub-model's tensors, named without
  `prefix` (e.g. RealmForOpenQA's 'reader.'), so bert_import's helpers read
  them as a stand-alone model's; errors name the file and the prefix."""
  if not prefix:
    return bert_import._Reader(tensors, '', path)
  inner = {name[len(prefix):]: value for name, value in tensors.items()
           if name.startswith(prefix)}
  return bert_import._Reader(inner, '', f'{path} [{prefix}*]')


def _linear(read, name, in_features, out_features) -> dict[str, np.ndarray]:
  kernel, bias = bert_import._dense(read, name, in_features, out_features)
  return {'kernel': kernel, 'bias': bias}


def _encoder(read, config, *, pooler: bool) -> dict[str, Any]:
  params = bert_import._encoder_params(read.with_prefix('realm.'), config)
  if pooler and params['pooler'] is None:
    raise ValueError(f'{read.path}: missing tensor realm.pooler.dense.weight '
                     '(the embedder projects the pooler output)')
  return params


def _tower(read, config) -> dict[str, Any]:
  """RetrieverTower parameters from a RealmEmbedder's tensors."""
  # RealmScorerProjection also carries an MLM head its forward never uses.
  read.used.update(name for name in read.tensors
                   if name.startswith('cls.predictions.'))
  return {
      'encoder': _encoder(read, config, pooler=True),
      'projection': _linear(read, 'cls.dense', config.hidden_size,
                            config.projection_size),
      'norm': bert_import._layer_norm(read, 'cls.LayerNorm',
                                      config.projection_size),
  }


def _span_head(read, config) -> dict[str, Any]:
  """SpanHead parameters from RealmReaderProjection (qa_outputs.*): the same
  layer: Dense(2 * span_hidden_size), halves start | end, ReLU of their sum,
  LayerNorm(reader_layer_norm_eps), Dense(1)."""
  span = config.span_hidden_size
  return {
      'boundaries': _linear(read, 'qa_outputs.dense_intermediate',
                            config.hidden_size, 2 * span),
      'norm': bert_import._layer_norm(read, 'qa_outputs.layer_normalization',
                                      span),
      'score': _linear(read, 'qa_outputs.dense_output', span, 1),
  }


def _reader(read, config, note, *, span: bool) -> dict[str, Any]:
  """Reader parameters from a RealmKnowledgeAugEncoder (span=False: the MLM
  head is required) or a RealmReader (span=True: qa_outputs.* is)."""
  encoder = _encoder(read, config, pooler=False)
  embedding = encoder['embeddings']['token_embed']['embedding']
  decoder = 'cls.predictions.decoder.weight'
  if span and read.has(decoder) and not np.array_equal(
      read(decoder, embedding.shape), embedding):
    # RealmReader ties no MLM decoder and never uses its head; ours is tied.
    note(f'{read.path}: tensor {decoder} differs from the word embeddings: '
         'the reader\'s MLM head stays freshly initialised')
    mlm_head = None
  else:
    mlm_head = bert_import._mlm_head_params(read, config, embedding)
    if mlm_head is None and not span:
      raise ValueError(f'{read.path}: missing tensor '
                       'cls.predictions.transform.dense.weight')
  if not span:
    note('the reader\'s span head stays freshly initialised')
  return {'encoder': encoder, 'mlm_head': mlm_head,
          'span_head': _span_head(read, config) if span else None}


def _same(tree, other) -> bool:
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, tree, other)))


def _scorer_towers(parts, config) -> dict[str, Any]:
  """RealmScorer's towers: one when query_embedder is embedder (a shared
  module saved twice, or saved once), else both."""
  towers = {name: _tower(read, config) for name, read in parts.items()
            if read.tensors}
  if not towers:
    raise ValueError(f'{parts["doc_tower"].path}: missing tensor '
                     'realm.embeddings.word_embeddings.weight')
  if len(towers) == 1 or _same(towers['doc_tower'], towers['query_tower']):
    return {'doc_tower': next(iter(towers.values()))}
  return towers


def _block_emb(tensors, path, config) -> np.ndarray:
  if 'block_emb' not in tensors:
    raise ValueError(f'{path}: missing tensor block_emb (expected shape '
                     f'[num_block_records, {config.projection_size}])')
  block_emb = tensors['block_emb']
  if block_emb.ndim != 2 or block_emb.shape[1] != config.projection_size:
    raise ValueError(f'{path}: tensor block_emb has shape '
                     f'{tuple(block_emb.shape)}, expected [num_block_records, '
                     f'{config.projection_size}]')
  return np.asarray(block_emb, np.float32)


def import_realm_checkpoint(checkpoint_dir: str | os.PathLike[str], *,
                            notes: list[str] | None = None) -> RealmCheckpoint:
  """Reads a REALM checkpoint directory (see the module docstring).

  The model config comes from its config.json (realm_model_config); a
  RealmScorer with distinct query and document embedders, and a
  RealmForOpenQA, give share_towers=False. What was approximated, left
  fresh or unused is logged and appended to `notes` when given.
  """
  checkpoint_dir = pathlib.Path(checkpoint_dir)
  config_path = checkpoint_dir / bert_import.CONFIG_FILE
  if not config_path.is_file():
    raise ValueError(f'{checkpoint_dir}: no {bert_import.CONFIG_FILE}')
  hf = bert_import._read_hf_config(config_path)
  architecture = _architecture(hf, config_path)
  config = realm_model_config(hf)
  note = bert_import._noter(checkpoint_dir, notes)
  tensors, path = _load_weights(checkpoint_dir)
  return checkpoint_from_tensors(architecture, config, tensors, path, hf,
                                 note)


def checkpoint_from_tensors(architecture: str,
                            config: ml_collections.ConfigDict,
                            tensors: Mapping[str, np.ndarray], path,
                            hf: dict[str, Any], note) -> RealmCheckpoint:
  """The RealmCheckpoint of an `architecture`'s tensors, named as
  transformers names them (tf_realm_import translates TF names to these);
  `path` names their source in errors, `note` takes what is logged."""
  block_emb = None
  if architecture == 'RealmEmbedder':
    parts = {'': _part(tensors, '', path)}
    params = {'retriever': {'doc_tower': _tower(parts[''], config)}}
  elif architecture == 'RealmScorer':
    parts = {'embedder.': _part(tensors, 'embedder.', path),
             'query_embedder.': _part(tensors, 'query_embedder.', path)}
    towers = _scorer_towers({'doc_tower': parts['embedder.'],
                             'query_tower': parts['query_embedder.']}, config)
    config.share_towers = len(towers) == 1
    params = {'retriever': towers}
  elif architecture in ('RealmKnowledgeAugEncoder', 'RealmReader'):
    parts = {'': _part(tensors, '', path)}
    params = {'reader': _reader(parts[''], config, note,
                                span=architecture == 'RealmReader')}
  else:  # RealmForOpenQA
    parts = {'embedder.': _part(tensors, 'embedder.', path),
             'reader.': _part(tensors, 'reader.', path)}
    config.share_towers = False
    params = {'retriever': {'query_tower': _tower(parts['embedder.'], config)},
              'reader': _reader(parts['reader.'], config, note, span=True)}
    block_emb = _block_emb(tensors, path, config)
    note('the document tower is not in a RealmForOpenQA checkpoint (block_emb'
         ' was computed by the pretrained embedder): fill it from that '
         'RealmEmbedder checkpoint')
  used = {prefix + name for prefix, read in parts.items() for name in read.used}
  if block_emb is not None:
    used.add('block_emb')
  unused = bert_import._unused_note(
      bert_import._Reader(tensors, '', path, used))
  if unused:
    note(unused)
  return RealmCheckpoint(architecture, config, params, block_emb, hf)


def _check_model_config(model_config, checkpoint: RealmCheckpoint,
                        components) -> None:
  """ConfigError naming the first model field that differs from the
  checkpoint's among those its imported parts depend on."""
  fields = list(bert_import.ARCHITECTURE_FIELDS)
  if 'retriever' in components:
    fields += _TOWER_FIELDS
  if 'reader' in components and checkpoint.params['reader']['span_head']:
    fields += _SPAN_FIELDS
  theirs = checkpoint.model_config
  for field in fields:
    config_lib.check(
        model_config[field] == theirs[field], f'model.{field}',
        f'{model_config[field]} != {theirs[field]} in the '
        f'{checkpoint.architecture} checkpoint; take the model config from '
        'import_realm_checkpoint')


def _fill_retriever(params, towers) -> dict[str, Any]:
  """params['retriever'] with the checkpoint's towers; a single imported
  embedder fills every tower."""
  if set(towers) == {'doc_tower'}:
    towers = dict.fromkeys(params, towers['doc_tower'])
  config_lib.check(
      set(towers) <= set(params), 'model.share_towers',
      'the checkpoint has a separate query embedder; the model must not '
      'share its towers')
  return {name: bert_import._replace(tower, towers[name], f'retriever/{name}')
          if name in towers else tower for name, tower in params.items()}


def init_from_realm(params: Mapping[str, Any],
                    model_config: ml_collections.ConfigDict,
                    checkpoint: RealmCheckpoint | str | os.PathLike[str], *,
                    notes: list[str] | None = None) -> dict[str, Any]:
  """models.REALM parameters with the parts a REALM checkpoint holds.

  `params` is the pure dict of a model of `model_config` (or of some of
  its components, 'retriever' and 'reader'); `checkpoint` an imported
  RealmCheckpoint or its directory. Returns a new dict of the same layout
  whose parts in the checkpoint hold its tensors (float32 numpy; the caller
  places them) and whose other parts keep their values. `model_config` must
  agree with the checkpoint on the fields those parts depend on, else a
  ConfigError names the field; a shape mismatch is a ValueError naming the
  parameter.
  """
  if not isinstance(checkpoint, RealmCheckpoint):
    checkpoint = import_realm_checkpoint(checkpoint, notes=notes)
  unknown = set(params) - {'retriever', 'reader'}
  if unknown or not params:
    raise ValueError(f'params must hold models.REALM components (retriever, '
                     f'reader); got {sorted(params)}')
  components = set(params) & set(checkpoint.params)
  if not components:
    raise ValueError(f'a {checkpoint.architecture} checkpoint holds '
                     f'{sorted(checkpoint.params)}, params {sorted(params)}')
  _check_model_config(model_config, checkpoint, components)
  out = dict(params)
  if 'retriever' in components:
    out['retriever'] = _fill_retriever(params['retriever'],
                                       checkpoint.params['retriever'])
  if 'reader' in components:
    out['reader'] = bert_import._replace(params['reader'],
                                         checkpoint.params['reader'], 'reader')
  return out
