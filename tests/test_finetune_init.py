"""realm-finetune's start and resume: what it copies, freezes and indexes."""
import json
import shutil

import jax
import numpy as np
import pytest

from conftest import job_config
from realm_jax import bert_import
from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import prediction
from realm_jax import trainer as trainer_lib
from realm_jax.jobs import finetune
from realm_jax.jobs import ict
from realm_jax.retrieval import index_store
from test_ict import _ict_config

pytestmark = pytest.mark.slow
TINY_MODEL = dict(num_layers=1, hidden_size=32, num_heads=2,
                  intermediate_size=64, projection_size=16, vocab_size=1000)


def _config(init_from, train, **overrides):
  config = job_config('finetune')
  config.model.update(TINY_MODEL)
  config.init_from = str(init_from)
  config.train_data = str(train)
  config.lengths.reader_len = 96
  config.retriever_beam_size = 16
  config.reader_beam_size = 2
  config.num_train_steps = 4
  config.checkpoint.every_steps = 2
  config.log_every_steps = 1
  config.update_from_flattened_dict(overrides)
  return config


def _params(workdir, step):
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  return jax.device_get(manager.restore(step).state['params'])


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


@pytest.fixture(scope='module')
def setup(tiny_corpus_workdir, tmp_path_factory):
  root = tmp_path_factory.mktemp('finetune_init')
  ict_dir = root / 'ict'
  ict_dir.mkdir()
  (ict_dir / 'corpus').symlink_to(tiny_corpus_workdir / 'corpus')
  ict.train_and_evaluate(_ict_config(num_train_steps=2), str(ict_dir))
  corpus = corpus_lib.Corpus(ict_dir / 'corpus')
  questions = [dict(question=f'What about {r["title"]}?',
                    answer=[r['text'].split()[2]])
               for r in corpus.records(np.arange(24))]
  train = root / 'train.jsonl'
  train.write_text(''.join(json.dumps(q) + '\n' for q in questions))
  return root, ict_dir, train, corpus


def test_start_from_ict_freezes_the_doc_tower_and_resumes(setup):
  root, ict_dir, train, corpus = setup
  ict_params = _params(ict_dir, 2)
  clean, resumed = root / 'clean', root / 'resumed'
  finetune.train_and_evaluate(_config(ict_dir, train), str(clean))
  # As if killed after step 3: the last checkpoint is step 2.
  shutil.copytree(clean, resumed, symlinks=True)
  shutil.rmtree(resumed / 'checkpoints' / '4')
  (resumed / 'TRAINING_DONE').unlink()
  finetune.train_and_evaluate(_config(ict_dir, train), str(resumed))

  start = _params(clean, 0)
  shared = ict_params['retriever']['doc_tower']  # ICT shares its towers
  assert _equal(start['retriever']['doc_tower'], shared)
  assert _equal(start['retriever']['query_tower'], shared)
  end = _params(clean, 4)
  assert _equal(end['retriever']['doc_tower'], shared)  # frozen
  assert not _equal(end['retriever']['query_tower'], shared)
  assert not _equal(end['reader'], start['reader'])

  # Killed after step 2 and restarted: the same parameters at step 4.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               _params(resumed, 4), end)
  steps = [json.loads(l)['step'] for l in (
      resumed / 'logs' / 'finetune' / 'metrics.jsonl').read_text()
           .splitlines()]
  assert steps == [1, 2, 3, 4, 3, 4]  # steps 3 and 4 again, not 1 and 2

  # The fixed index holds the frozen tower's embeddings of every block.
  store = index_store.IndexStore(clean / 'index')
  index, manifest = store.load(store.pointer()['version'])
  assert manifest['checkpoint_step'] == 0
  assert index.num_vectors == len(corpus)
  predictor = prediction.Predictor(clean)
  expected = predictor._embed_corpus().vectors(np.arange(len(corpus)))
  np.testing.assert_allclose(index.vectors(np.arange(len(corpus))), expected,
                             rtol=1e-4, atol=1e-5)


def test_start_from_a_run_with_a_reader_and_two_towers(setup):
  """A fine-tuned (or REALM) run's reader and question tower are copied."""
  root, ict_dir, train, _ = setup
  first, second = root / 'first', root / 'second'
  finetune.train_and_evaluate(_config(ict_dir, train, num_train_steps=2),
                              str(first))
  finetune.train_and_evaluate(_config(first, train, num_train_steps=1),
                              str(second))
  before, start = _params(first, 2), _params(second, 0)
  assert _equal(start['retriever'], before['retriever'])
  assert _equal(start['reader'], before['reader'])


def test_closed_book(setup):
  root, ict_dir, train, corpus = setup
  workdir = root / 'closed_book'
  metrics = finetune.train_and_evaluate(
      _config(ict_dir, train, closed_book=True, num_train_steps=3,
              eval_data=str(train)), str(workdir))
  assert not (workdir / 'index').exists()  # no retrieval, no index
  assert 0.0 <= metrics['eval/exact_match'] <= 1.0
  assert not any(k.startswith('eval/recall') for k in metrics)
  records = [json.loads(l) for l in (workdir / 'eval' / 'predictions.jsonl')
             .read_text().splitlines()]
  assert len(records) == 24 and all(r['blocks'] == [] for r in records)
  start, end = _params(workdir, 0), _params(workdir, 3)
  assert _equal(start['retriever'], end['retriever'])
  assert not _equal(start['reader'], end['reader'])


def test_mismatched_architecture_names_the_field(setup, tmp_path):
  _, ict_dir, train, _ = setup
  config = _config(ict_dir, train)
  config.model.hidden_size = 64
  with pytest.raises(ValueError, match=r'config\.model\.hidden_size: 64 != '
                     r'32 of the run in'):
    finetune.train_and_evaluate(config, str(tmp_path / 'ft'))


def test_start_from_bert(minilm_dir, minilm_corpus_workdir, tmp_path):
  """init.bert_checkpoint: every encoder starts as the checkpoint."""
  corpus = corpus_lib.Corpus(minilm_corpus_workdir / 'corpus')
  questions = [dict(question=f'Who is {r["title"]}?',
                    answer=[r['text'].split()[1]])
               for r in corpus.records(np.arange(8))]
  train = tmp_path / 'train.jsonl'
  train.write_text(''.join(json.dumps(q) + '\n' for q in questions))
  config = _config('', train, num_train_steps=1, **{
      'init.bert_checkpoint': str(minilm_dir), 'model.pooling': 'mean',
      'model.projection_size': 0, 'lengths.query_len': 32,
      'lengths.reader_len': 160, 'retriever_beam_size': 8,
      'corpus_dir': str(corpus.path)})
  workdir = tmp_path / 'ft'
  finetune.train_and_evaluate(config, str(workdir))
  encoder = bert_import.import_bert_encoder(minilm_dir)
  start = _params(workdir, 0)
  expected = jax.tree.leaves(encoder)  # (layer keys: ints vs strings)
  for tower in (start['retriever']['doc_tower'],
                start['retriever']['query_tower'], start['reader']):
    got = jax.tree.leaves(tower['encoder'])
    assert len(got) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
  # Mean pooling, no projection: the index holds 384-d MiniLM vectors.
  store = index_store.IndexStore(workdir / 'index')
  assert store.load(store.pointer()['version'])[0].dim == 384


def test_retrieval_runs_one_step_ahead_except_at_checkpoints():
  """Step s's candidates come from the tower entering step s - 1, queued
  before step s - 1 is dispatched; at checkpointed steps (where a restart
  begins) from the tower entering s, as in a resumed run."""
  calls = []

  class Questions:
    def batch(self, step):
      return [dict(step=step)]

  def embed(examples, params):
    calls.append((examples[0]['step'], params))
    step = examples[0]['step']
    search = lambda: (f'ids of {step} by {params}', None)
    return dict(step=step), params, search if step % 2 else None

  featurize = lambda examples, query, vectors, dense_ids: dict(
      step=examples[0]['step'], query_step=query['step'], tower=vectors,
      dense_ids=dense_ids)
  ahead = finetune.retrieve_ahead(Questions(), embed, featurize, num_steps=6,
                                checkpoint_every=3)
  outputs = [ahead(step, f'entering {step}') for step in range(6)]
  towers = [batch['tower'] for batch, _ in outputs]
  # A search queued with the embedding hands featurize its ids; without
  # one (a host index, BM25 alone) featurize searches itself.
  assert [batch['dense_ids'] for batch, _ in outputs] == [
      None, 'ids of 1 by entering 0', None, 'ids of 3 by entering 3', None,
      'ids of 5 by entering 4']
  # The wait for the queued vectors is reported, for the clock to count
  # as device time.
  assert all(metrics[trainer_lib.DEVICE_WAIT] >= 0 for _, metrics in outputs)
  assert towers == ['entering 0', 'entering 0', 'entering 1', 'entering 3',
                    'entering 3', 'entering 4']
  # Each call queues the next step's embedding before it returns (before
  # its own step is dispatched); none is queued ahead for a checkpointed
  # step (it would be redone) or past the last step.
  assert calls == [(0, 'entering 0'), (1, 'entering 0'), (2, 'entering 1'),
                   (3, 'entering 3'), (4, 'entering 3'), (5, 'entering 4')]
  # A resumed run starting at checkpoint 3 retrieves what this one did.
  resumed = finetune.retrieve_ahead(Questions(), embed, featurize,
                                  num_steps=6, checkpoint_every=3)
  assert [resumed(step, f'entering {step}')[0]['tower']
          for step in range(3, 6)] == towers[3:]


def test_reader_from_another_run(setup):
  """init.reader_from swaps in another run's reader, init_from's retriever
  stays (the paper's REALM-retriever + baseline-reader rows)."""
  root, ict_dir, train, _ = setup
  reader_run, swapped = root / 'reader_run', root / 'swapped'
  finetune.train_and_evaluate(_config(ict_dir, train, num_train_steps=2),
                              str(reader_run))
  finetune.train_and_evaluate(
      _config(ict_dir, train, num_train_steps=1,
              **{'init.reader_from': str(reader_run)}), str(swapped))
  start = _params(swapped, 0)
  assert _equal(start['reader'], _params(reader_run, 2)['reader'])
  assert _equal(start['retriever']['query_tower'],
                _params(ict_dir, 2)['retriever']['doc_tower'])


def test_bm25_and_hybrid_candidates(setup):
  """retrieval=bm25: training and prediction read BM25's top blocks (the
  run's rule, unless prediction overrides it); hybrid fuses both lists."""
  from realm_jax.retrieval import lexical  # pylint: disable=g-import-not-at-top
  root, ict_dir, train, corpus = setup
  workdir = root / 'bm25'
  finetune.train_and_evaluate(
      _config(ict_dir, train, num_train_steps=1, retrieval='bm25'),
      str(workdir))
  questions = [json.loads(l)['question']
               for l in train.read_text().splitlines()][:4]
  bm25_top = lexical.Bm25(corpus).search(questions, 2)
  predictor = prediction.Predictor(workdir)
  assert predictor.retrieval == 'bm25'
  predicted = predictor.predict(questions, num_retrieved=2)
  assert [p['retrieved'] for p in predicted] == np.maximum(
      bm25_top, 0).tolist()
  dense = prediction.Predictor(workdir, retrieval='dense').predict(
      questions, num_retrieved=16)
  hybrid = prediction.Predictor(workdir, retrieval='hybrid').predict(
      questions, num_retrieved=16)
  expected = lexical.fuse(np.array([p['retrieved'] for p in dense]),
                          lexical.Bm25(corpus).search(questions, 16), 16)
  assert [p['retrieved'] for p in hybrid] == np.maximum(expected, 0).tolist()
  with pytest.raises(config_lib.ConfigError, match='config.retrieval'):
    finetune.train_and_evaluate(
        _config(ict_dir, train, retrieval='sparse'), str(root / 'bad'))
