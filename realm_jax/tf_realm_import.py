"""Import the reference's own TF1 REALM/ORQA checkpoints into our models.

The released artefacts (google-research/language, language/realm/README.md)
are TF1 checkpoints (tf_checkpoint reads them, no TensorFlow needed):

    gs://realm-data/cc_news_pretrained/embedder/variables/variables
        the retriever embedder (a TF-Hub module's variables)
    gs://realm-data/cc_news_pretrained/bert/variables/variables
        the knowledge-augmented encoder (BERT + MLM head)
    gs://realm-data/orqa_nq_model_from_realm/export/best_default/checkpoint/
    model.ckpt-300000 (and orqa_wq_model_from_realm/...)
        an ORQA model: question embedder + reader with its span head
    gs://realm-data/cc_news_pretrained/embedder/encoded/encoded.ckpt
        one variable, block_emb [13353718, 128] float32

Their variable names are the TF-Hub modules' nesting of google-research/bert
(modeling.py: bert/embeddings/..., bert/encoder/layer_N/..., bert/pooler,
cls/predictions/...), as transformers' load_tf_weights_in_realm
(models/deprecated/realm/modeling_realm.py) maps them:

    embedder     module/module/module/bert/*     the BERT (pooled output)
                 module/module/dense/*           projection to 128
                 module/module/LayerNorm/*       its LayerNorm
                 module/module/module/cls/predictions/*  unused MLM head
    ORQA         module/module/module/module/bert/*, module/module/module/
                 {dense,LayerNorm}/*             the question embedder (one
                                                 module deeper)
                 reader/module/bert/*, reader/module/cls/predictions/*
                                                 the reader's BERT + MLM head
                 reader/dense/*                  span head: Dense(2 x 256) of
                                                 the token states (start|end)
                 reader/layer_normalization/*    LayerNorm of relu(start+end)
                 reader/dense_1/*                Dense(1): the span score
    encoder      bert/*, cls/predictions/*

The span head is orqa_model.read's (tf.layers.dense twice and a Keras
LayerNormalization, epsilon 1e-3): the layout of transformers'
RealmReaderProjection and of our SpanHead. TF kernels are [in, out] (torch
[out, in]), LayerNorms gamma/beta, the MLM decoder is the word embeddings
(TF ties it: no variable) and its bias cls/predictions/output_bias. The
variables are translated to transformers' names and read by realm_import,
so both imports build params one way. Adam slots and global_step are never
read; other variables no part maps are noted as unused.

The checkpoints carry no config: the architecture is RealmConfig's defaults
(BERT-base sizes, 12 heads, the tanh GELU 'gelu_new' of google-research/
bert, LayerNorm epsilon 1e-12 (the projection's 'LayerNorm' is
tf.contrib.layers.layer_norm's scope), span LayerNorm 1e-3) with the sizes
the variables' shapes show (heads: hidden_size / 64, BERT's head width);
a config.json (RealmConfig's fields) overrides them.
"""
import json
import os
import pathlib
import re
from typing import Any

import numpy as np

from realm_jax import bert_import
from realm_jax import realm_import
from realm_jax import tf_checkpoint

# pylint: disable=protected-access

# RealmConfig's defaults for what shapes do not show (the released models').
RELEASED_CONFIG = dict(
    model_type='realm', num_attention_heads=12, hidden_act='gelu_new',
    layer_norm_eps=1e-12, reader_layer_norm_eps=1e-3, max_span_width=10,
    reader_beam_size=5, reader_seq_len=320, searcher_beam_size=5000,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
# BERT's attention head width (base 768/12, large 1024/16).
_HEAD_SIZE = 64
# Variable scope -> transformers' name prefix, per architecture.
_EMBEDDER_SCOPES = {
    'module/module/module/bert/': 'realm.',
    'module/module/dense/': 'cls.dense.',
    'module/module/LayerNorm/': 'cls.LayerNorm.',
    'module/module/module/cls/predictions/': 'cls.predictions.',
}
SCOPES = {
    'RealmEmbedder': _EMBEDDER_SCOPES,
    'RealmForOpenQA': {
        **{'module/' + scope: 'embedder.' + prefix
           for scope, prefix in _EMBEDDER_SCOPES.items()},
        'reader/module/bert/': 'reader.realm.',
        'reader/module/cls/predictions/': 'reader.cls.predictions.',
        'reader/dense/': 'reader.qa_outputs.dense_intermediate.',
        'reader/dense_1/': 'reader.qa_outputs.dense_output.',
        'reader/layer_normalization/': 'reader.qa_outputs.layer_normalization.',
    },
    'RealmKnowledgeAugEncoder': {
        'bert/': 'realm.',
        'cls/predictions/': 'cls.predictions.',
    },
}
# The BERT scope of each architecture (the variable that tells it apart).
_BERT_SCOPES = {
    'RealmForOpenQA': 'reader/module/bert/',
    'RealmEmbedder': 'module/module/module/bert/',
    'RealmKnowledgeAugEncoder': 'bert/',
}
_WORD_EMBEDDINGS = 'embeddings/word_embeddings'
# Optimizer state a training checkpoint holds beside the weights.
_OPTIMIZER = re.compile(r'(^|/)(adam_[mv]|AdamWeightDecayOptimizer(_\d+)?|'
                        r'global_step)(/|$)')
BLOCK_EMB = 'block_emb'


def checkpoint_prefix(path: str | os.PathLike[str]) -> pathlib.Path:
  """A checkpoint's prefix from the prefix itself, its .index file, or a
  TF-Hub module directory (its variables/variables)."""
  path = pathlib.Path(path)
  if path.name.endswith('.index'):
    return path.with_name(path.name[:-len('.index')])
  if path.is_dir():
    return path / 'variables' / 'variables'
  return path


def architecture_of(entries, prefix) -> str:
  """Which released checkpoint the variables are (see the module
  docstring); ValueError listing what it holds otherwise."""
  for architecture, scope in _BERT_SCOPES.items():
    if scope + _WORD_EMBEDDINGS in entries:
      return architecture
  scopes = sorted({name.rsplit('/', 1)[0] for name in entries
                   if not _OPTIMIZER.search(name)})[:8]
  raise ValueError(
      f'{prefix}: not a REALM/ORQA checkpoint: none of the variables '
      f'{", ".join(s + _WORD_EMBEDDINGS for s in _BERT_SCOPES.values())}; '
      f'its scopes include {scopes}')


def _hf_name(rest: str) -> tuple[str, bool]:
  """(transformers' name of a variable below its scope, whether its value is
  transposed): layer_N -> layer.N, kernel -> weight (transposed),
  gamma/beta -> weight/bias, output_bias -> bias, *_embeddings ->
  *_embeddings.weight."""
  *path, last = rest.split('/')
  path = [re.sub(r'^layer_(\d+)$', r'layer.\1', part) for part in path]
  renamed = {'kernel': 'weight', 'gamma': 'weight', 'beta': 'bias',
             'output_bias': 'bias'}.get(last, last)
  if last.endswith('_embeddings'):
    path, renamed = [*path, last], 'weight'
  return '.'.join([*path, renamed]), last == 'kernel'


def hf_tensors(prefix, entries, architecture: str, note
               ) -> dict[str, np.ndarray]:
  """The architecture's variables (read into memory), under transformers'
  names; unmapped ones are noted, optimizer state is skipped unread."""
  scopes = SCOPES[architecture]
  tensors, unmapped = {}, []
  for name, entry in entries.items():
    if _OPTIMIZER.search(name):
      continue
    scope = next((s for s in scopes if name.startswith(s)), None)
    if scope is None:
      unmapped.append(name)
      continue
    hf_name, transpose = _hf_name(name[len(scope):])
    value = tf_checkpoint.read_tensor(prefix, entry)
    tensors[scopes[scope] + hf_name] = value.T if transpose else value
  if unmapped:
    shown = ', '.join(sorted(unmapped)[:5])
    note(f'{len(unmapped)} TF variables unused: {shown}'
         + (f' and {len(unmapped) - 5} more' if len(unmapped) > 5 else ''))
  return tensors


def _shape_config(tensors, architecture: str) -> dict[str, Any]:
  """RealmConfig's sizes, as the tensors' shapes show them."""
  bert = {'RealmForOpenQA': 'reader.realm.'}.get(architecture, 'realm.')
  words = tensors[bert + 'embeddings.word_embeddings.weight']
  layers = {int(m.group(1)) for name in tensors
            if (m := re.match(re.escape(bert) + r'encoder\.layer\.(\d+)\.',
                              name))}
  sizes = dict(
      vocab_size=words.shape[0], hidden_size=words.shape[1],
      num_attention_heads=max(1, words.shape[1] // _HEAD_SIZE),
      num_hidden_layers=max(layers, default=-1) + 1)
  for field, name, axis in (
      ('intermediate_size', 'encoder.layer.0.intermediate.dense.weight', 0),
      ('max_position_embeddings', 'embeddings.position_embeddings.weight', 0),
      ('type_vocab_size', 'embeddings.token_type_embeddings.weight', 0)):
    if bert + name in tensors:
      sizes[field] = tensors[bert + name].shape[axis]
  tower = {'RealmForOpenQA': 'embedder.'}.get(architecture, '')
  if tower + 'cls.dense.weight' in tensors:
    sizes['retriever_proj_size'] = tensors[tower + 'cls.dense.weight'].shape[0]
  span = 'reader.qa_outputs.dense_output.weight'
  if span in tensors:
    sizes['span_hidden_size'] = tensors[span].shape[1]
  return {field: int(value) for field, value in sizes.items()}


def import_tf_checkpoint(path: str | os.PathLike[str], *,
                         config: str | os.PathLike[str] | None = None,
                         block_emb: str | os.PathLike[str] | None = None,
                         notes: list[str] | None = None
                         ) -> realm_import.RealmCheckpoint:
  """A released TF checkpoint (prefix, .index or TF-Hub module directory)
  as a RealmCheckpoint for realm_import.init_from_realm: architecture
  RealmEmbedder, RealmKnowledgeAugEncoder or RealmForOpenQA by its
  variables. `config`: a config.json overriding the released architecture
  (see the module docstring). `block_emb`: an ORQA model's encoded.ckpt,
  whose block_emb is memory-mapped (required for RealmForOpenQA).
  """
  prefix = checkpoint_prefix(path)
  note = bert_import._noter(prefix, notes)
  entries = tf_checkpoint.read_index(prefix)
  architecture = architecture_of(entries, prefix)
  tensors = hf_tensors(prefix, entries, architecture, note)
  hf = dict(RELEASED_CONFIG, **_shape_config(tensors, architecture),
            architectures=[architecture])
  if config is not None:
    hf.update(json.loads(pathlib.Path(config).read_text()))
  where = f'{prefix} (TF variables as transformers names them)'
  if architecture == 'RealmForOpenQA':
    if block_emb is None:
      raise ValueError(f'{prefix}: an ORQA checkpoint; block_emb comes from '
                       'encoded.ckpt: pass block_emb=')
    tensors[BLOCK_EMB] = read_block_emb(block_emb)
    hf['num_block_records'] = len(tensors[BLOCK_EMB])
  return realm_import.checkpoint_from_tensors(
      architecture, realm_import.realm_model_config(hf), tensors, where, hf,
      note)


def read_block_emb(path: str | os.PathLike[str]) -> np.ndarray:
  """encoded.ckpt's block_emb, memory-mapped (6.8 GB for the released
  13,353,718 blocks); its checksum is verified a chunk at a time."""
  prefix = checkpoint_prefix(path)
  entries = tf_checkpoint.read_index(prefix)
  if BLOCK_EMB not in entries:
    raise ValueError(f'{prefix}.index: no variable {BLOCK_EMB} (it holds '
                     f'{sorted(entries)[:5]})')
  entry = entries[BLOCK_EMB]
  if entry.dtype != np.float32 or len(entry.shape) != 2:
    raise ValueError(f'{prefix}.index: variable {BLOCK_EMB} is {entry.dtype} '
                     f'{entry.shape}, expected float32 [num_blocks, '
                     'projection_size]')
  return tf_checkpoint.read_tensor(prefix, entry, mmap=True)
