"""REALM checkpoint import: parity with transformers' deprecated REALM classes.

Each reference is a tiny random RealmEmbedder / RealmScorer /
RealmKnowledgeAugEncoder / RealmReader / RealmForOpenQA (PyTorch, CPU, eval
mode) saved with save_pretrained; nothing is downloaded.
"""
import json
import os
import shutil
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
from flax import nnx
from safetensors import numpy as safetensors_numpy
import torch
from transformers.models.deprecated.realm import configuration_realm
from transformers.models.deprecated.realm import modeling_realm

from realm_jax import config_lib
from realm_jax import models
from realm_jax import realm_import

TOLERANCE = 1e-5
VOCAB, LENGTH, BATCH = 100, 12, 3
# Small enough for a fast test, large enough that every size is distinct.
SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=40, retriever_proj_size=16,
             span_hidden_size=8, max_span_width=4, num_candidates=2,
             reader_beam_size=BATCH, num_block_records=7,
             layer_norm_eps=1e-6)


def _hf_config(**overrides):
  """RealmConfig's defaults (tanh GELU, 'gelu_new', as the released
  checkpoints) at SIZES."""
  return configuration_realm.RealmConfig(**{**SIZES, **overrides})


def _randomized(model):
  """`model` in eval mode with every parameter random, LayerNorms and biases
  too (a fresh model's are constant); tied parameters stay tied."""
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.normal_(0.0, 0.3)
  return model.eval()


def _save(model, path, safe):
  model.save_pretrained(path, safe_serialization=safe)
  assert (path / ('model.safetensors' if safe else 'pytorch_model.bin')
          ).is_file()
  return path


def _inputs(seed=0):
  """Token ids, segments (query | block) and a mask with padding."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
  segments = (np.arange(LENGTH) >= 5).astype(np.int32)[None].repeat(BATCH, 0)
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  mask[2, 7:] = 0
  return ids, segments, mask


def _torch(*arrays):
  return [torch.from_numpy(a).long() for a in arrays]


def _ours(checkpoint, notes=None):
  """A models.REALM of the checkpoint's config, filled by init_from_realm."""
  if not isinstance(checkpoint, realm_import.RealmCheckpoint):
    checkpoint = realm_import.import_realm_checkpoint(checkpoint, notes=notes)
  model = models.REALM(checkpoint.model_config, rngs=nnx.Rngs(0))
  nnx.update(model, realm_import.init_from_realm(
      nnx.to_pure_dict(nnx.state(model)), checkpoint.model_config,
      checkpoint))
  return model


def _tolerance(want):
  """TOLERANCE relative to the reference's largest value (at least 1):
  float32 logits of magnitude 6 were seen 1.2e-5 apart on one CPU."""
  return TOLERANCE * max(1.0, float(np.abs(np.asarray(want)).max()))


def _max_difference(got, want):
  difference = np.abs(np.asarray(got) - np.asarray(want)).max()
  assert difference <= _tolerance(want), difference
  return difference


@pytest.fixture(scope='module')
def embedder_checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  reference = _randomized(modeling_realm.RealmEmbedder(_hf_config()))
  path = _save(reference, tmp_path_factory.mktemp('embedder') / 'ckpt', True)
  return path, reference


def _embed(reference, ids, segments, mask):
  with torch.no_grad():
    return reference(*_torch(ids, mask, segments)).projected_score.numpy()


def test_embedder_matches_realm_embedder(embedder_checkpoint):
  path, reference = embedder_checkpoint
  notes = []
  checkpoint = realm_import.import_realm_checkpoint(path, notes=notes)
  config = checkpoint.model_config
  assert checkpoint.architecture == 'RealmEmbedder'
  assert (config.pooling, config.score, config.projection_size,
          config.projection_layer_norm_eps, config.share_towers) == (
              'cls', 'dot', 16, 1e-6, True)
  assert not any('unused' in note for note in notes), notes
  model = _ours(checkpoint)
  inputs = _inputs()
  _max_difference(model.retriever.embed_queries(*inputs),
                  _embed(reference, *inputs))
  _max_difference(model.retriever.embed_blocks(*inputs),
                  _embed(reference, *inputs))


def _candidates():
  """Two candidates per row: [B, num_candidates, L] ids, segments, mask."""
  return tuple(np.stack(arrays, 1) for arrays in zip(_inputs(1), _inputs(2)))


def _scores(reference, query, candidates):
  """RealmScorer's relevance [B, num_candidates]."""
  with torch.no_grad():
    return reference(
        *_torch(query[0], query[2], query[1]),
        candidate_input_ids=torch.from_numpy(candidates[0]).long(),
        candidate_attention_mask=torch.from_numpy(candidates[2]).long(),
        candidate_token_type_ids=torch.from_numpy(candidates[1]).long(),
    ).relevance_score.numpy()


def _our_scores(model, query, candidates):
  queries = model.retriever.embed_queries(*query)
  blocks = model.retriever.embed_blocks(
      *(array.reshape(-1, LENGTH) for array in candidates))
  return np.einsum('bd,bcd->bc', queries,
                   np.asarray(blocks).reshape(BATCH, -1, blocks.shape[-1]))


@pytest.mark.parametrize('separate', [False, True])
def test_scorer_matches_realm_scorer(separate, tmp_path):
  torch.manual_seed(1)
  config = _hf_config()
  query_embedder = modeling_realm.RealmEmbedder(config) if separate else None
  reference = _randomized(modeling_realm.RealmScorer(config, query_embedder))
  # transformers saves a shared embedder only as .bin (under both names).
  path = _save(reference, tmp_path / 'ckpt', safe=separate)
  notes = []
  checkpoint = realm_import.import_realm_checkpoint(path, notes=notes)
  assert checkpoint.model_config.share_towers == (not separate)
  assert not any('unused' in note for note in notes), notes
  model = _ours(checkpoint)
  query, candidates = _inputs(), _candidates()
  _max_difference(_our_scores(model, query, candidates),
                  _scores(reference, query, candidates))


@pytest.fixture(scope='module')
def encoder_reference():
  torch.manual_seed(2)
  return _randomized(modeling_realm.RealmKnowledgeAugEncoder(_hf_config()))


@pytest.mark.parametrize('safe', [True, False])
def test_knowledge_aug_encoder_mlm_logits(encoder_reference, safe, tmp_path):
  path = _save(encoder_reference, tmp_path / 'ckpt', safe)
  notes = []
  model = _ours(path, notes)
  assert any('span head stays fresh' in note for note in notes), notes
  assert not any('unused' in note for note in notes), notes
  ids, segments, mask = _inputs()
  sequence = model.reader(ids, segments, mask)
  positions = np.arange(LENGTH, dtype=np.int32)[None].repeat(BATCH, 0)
  got = model.reader.mlm_logits(sequence, positions)
  with torch.no_grad():
    want = encoder_reference(*_torch(ids, mask, segments)).logits.numpy()
  _max_difference(got, want)


def _span_logits(reader, ids, segments, mask, block_mask):
  """RealmReaderProjection's logits laid out as ours, [B, L, max_width]
  (-inf where it has no candidate), and its in-block candidates."""
  with torch.no_grad():
    sequence = reader.realm(*_torch(ids, mask, segments))[0]
    logits, starts, ends = reader.qa_outputs(
        sequence, torch.from_numpy(block_mask))
  out = np.full((BATCH, LENGTH, SIZES['max_span_width']), -np.inf)
  out[:, starts.numpy(), (ends - starts).numpy()] = logits.numpy()
  inside = np.zeros(out.shape, bool)
  inside[:, starts.numpy(), (ends - starts).numpy()] = (
      logits.numpy() > np.finfo(np.float32).min / 2)
  return out, inside


def _block_mask(segments, mask):
  """The evidence tokens: segment 1 without padding or the final [SEP]."""
  block = (segments == 1) & (mask == 1)
  block[np.arange(BATCH), mask.sum(1) - 1] = False
  return block


def _check_reader(model, reference, inputs, relevance):
  """Span logits, and the block and span the reader predicts, agree."""
  block_mask = _block_mask(inputs[1], inputs[2])
  sequence = model.reader(*inputs)
  got = np.asarray(model.reader.span_logits(sequence, block_mask))
  want, inside = _span_logits(reference, *inputs, block_mask)
  np.testing.assert_array_equal(got > models.SPAN_MASK_VALUE, inside)
  difference = _max_difference(got[inside], want[inside])
  with torch.no_grad():
    predicted = reference(
        *_torch(*inputs[:1], inputs[2], inputs[1]),
        relevance_score=torch.from_numpy(relevance),
        block_mask=torch.from_numpy(block_mask))
  joint = got + relevance[:, None, None]
  block, start, width = np.unravel_index(joint.argmax(), joint.shape)
  assert (block, start, start + width) == (
      predicted.block_idx.item(), predicted.start_pos.item(),
      predicted.end_pos.item())
  return difference


def test_reader_matches_realm_reader(tmp_path):
  torch.manual_seed(3)
  reference = _randomized(modeling_realm.RealmReader(_hf_config()))
  # transformers cannot save RealmReader as safetensors (shared MLM bias).
  path = _save(reference, tmp_path / 'ckpt', safe=False)
  notes = []
  model = _ours(path, notes)
  # RealmReader's MLM decoder is not tied to its word embeddings.
  assert any('MLM head stays fresh' in note for note in notes), notes
  _check_reader(model, reference, _inputs(),
                np.array([0.5, -1.0, 2.0], np.float32))


def test_open_qa_fills_question_tower_and_reader(embedder_checkpoint,
                                                 tmp_path):
  torch.manual_seed(4)
  reference = _randomized(modeling_realm.RealmForOpenQA(_hf_config()))
  with torch.no_grad():
    reference.block_emb.normal_()
  path = _save(reference, tmp_path / 'ckpt', safe=False)
  notes = []
  checkpoint = realm_import.import_realm_checkpoint(path, notes=notes)
  assert not checkpoint.model_config.share_towers
  np.testing.assert_array_equal(checkpoint.block_emb,
                                reference.block_emb.numpy())
  assert any('document tower' in note for note in notes), notes
  # The document tower from the pretrained embedder, then the rest.
  model = models.REALM(checkpoint.model_config, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model))
  params = realm_import.init_from_realm(params, checkpoint.model_config,
                                        embedder_checkpoint[0])
  params = realm_import.init_from_realm(params, checkpoint.model_config,
                                        checkpoint)
  nnx.update(model, params)
  inputs = _inputs()
  _max_difference(model.retriever.embed_blocks(*inputs),
                  _embed(embedder_checkpoint[1], *inputs))
  _max_difference(model.retriever.embed_queries(*inputs),
                  _embed(reference.embedder, *inputs))
  _check_reader(model, reference.reader, inputs,
                np.array([1.0, 0.0, -0.5], np.float32))


def test_the_checkpoints_gelu_is_computed(tmp_path):
  """An exact-GELU checkpoint imports as hidden_act 'gelu' and matches; the
  other GELU would not (so the field is what gives parity)."""
  torch.manual_seed(5)
  reference = _randomized(modeling_realm.RealmEmbedder(
      _hf_config(hidden_act='gelu')))
  checkpoint = realm_import.import_realm_checkpoint(
      _save(reference, tmp_path / 'ckpt', True))
  assert checkpoint.model_config.hidden_act == 'gelu'
  inputs = _inputs()
  want = _embed(reference, *inputs)
  _max_difference(_ours(checkpoint).retriever.embed_queries(*inputs), want)
  checkpoint.model_config.unlock()
  checkpoint.model_config.hidden_act = 'gelu_new'
  wrong = _ours(checkpoint).retriever.embed_queries(*inputs)
  assert np.abs(np.asarray(wrong) - want).max() > _tolerance(want)


# --- errors ----------------------------------------------------------------


def _copy(source, target, edit=None):
  """A copy of a safetensors checkpoint, its tensors passed through `edit`."""
  shutil.copytree(source, target)
  if edit:
    tensors = safetensors_numpy.load_file(str(source / 'model.safetensors'))
    safetensors_numpy.save_file(edit(dict(tensors)),
                                str(target / 'model.safetensors'))
  return target


def test_missing_files_are_named(embedder_checkpoint, tmp_path):
  broken = _copy(embedder_checkpoint[0], tmp_path / 'ckpt')
  (broken / 'model.safetensors').unlink()
  with pytest.raises(ValueError,
                     match='no model.safetensors or pytorch_model.bin'):
    realm_import.import_realm_checkpoint(broken)
  (broken / 'config.json').unlink()
  with pytest.raises(ValueError, match='no config.json'):
    realm_import.import_realm_checkpoint(broken)


def test_missing_tensor_is_named(embedder_checkpoint, tmp_path):
  name = 'realm.encoder.layer.1.attention.self.key.weight'
  def drop(tensors):
    del tensors[name]
    return tensors
  broken = _copy(embedder_checkpoint[0], tmp_path / 'ckpt', drop)
  with pytest.raises(ValueError, match=f'missing tensor {name}'):
    realm_import.import_realm_checkpoint(broken)


def test_wrong_shape_is_named(embedder_checkpoint, tmp_path):
  name = 'cls.dense.weight'
  def shrink(tensors):
    tensors[name] = tensors[name][:8]
    return tensors
  broken = _copy(embedder_checkpoint[0], tmp_path / 'ckpt', shrink)
  with pytest.raises(ValueError, match=rf'{name} has shape \(8, 32\)'):
    realm_import.import_realm_checkpoint(broken)


def test_missing_tensor_in_a_sub_model_is_named(tmp_path):
  torch.manual_seed(6)
  reference = modeling_realm.RealmForOpenQA(_hf_config())
  path = _save(reference, tmp_path / 'ckpt', safe=False)
  state = torch.load(path / 'pytorch_model.bin', weights_only=True)
  del state['reader.qa_outputs.dense_output.weight']
  torch.save(state, path / 'pytorch_model.bin')
  with pytest.raises(ValueError, match=r'pytorch_model\.bin \[reader\.\*\]: '
                     'missing tensor qa_outputs.dense_output.weight'):
    realm_import.import_realm_checkpoint(path)


@pytest.mark.parametrize('field,value,named', [
    ('architectures', ['RealmRetriever'], 'RealmRetriever'),
    ('model_type', 'bert', 'bert'),
    ('hidden_act', 'relu', 'relu'),
    ('reader_layer_norm_eps', 1e-12, 'reader_layer_norm_eps'),
])
def test_unsupported_config_is_named(embedder_checkpoint, tmp_path, field,
                                     value, named):
  broken = _copy(embedder_checkpoint[0], tmp_path / 'ckpt')
  hf = json.loads((broken / 'config.json').read_text())
  hf[field] = value
  (broken / 'config.json').write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=named):
    realm_import.import_realm_checkpoint(broken)


def test_bin_without_torch_asks_for_it(tmp_path, monkeypatch):
  (tmp_path / 'config.json').write_text(json.dumps(
      _hf_config().to_dict() | {'architectures': ['RealmEmbedder']}))
  (tmp_path / 'pytorch_model.bin').write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  with pytest.raises(ValueError, match='needs torch; install torch'):
    realm_import.import_realm_checkpoint(tmp_path)


def test_model_config_mismatch_is_named(embedder_checkpoint):
  checkpoint = realm_import.import_realm_checkpoint(embedder_checkpoint[0])
  config = config_lib.model_config('tiny', VOCAB)
  fresh = {'retriever': nnx.to_pure_dict(nnx.state(
      models.Retriever(config, rngs=nnx.Rngs(0))))}
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.model\.hidden_size: 128 != 32'):
    realm_import.init_from_realm(fresh, config, checkpoint)
  with pytest.raises(ValueError, match='RealmEmbedder checkpoint holds'):
    realm_import.init_from_realm({'reader': {}}, config, checkpoint)
