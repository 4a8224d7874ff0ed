"""realm-import: a released-layout open-QA checkpoint -> a workdir that
realm-answer reads, answering as transformers' RealmForOpenQA does.

The reference is a tiny random RealmForOpenQA over ten real sentences, with
a vocab.txt of their words, saved as the released repos are (save_pretrained,
block_records.npy, the tokenizer); nothing is downloaded.
"""
import hashlib
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from transformers.models.deprecated.realm import configuration_realm
from transformers.models.deprecated.realm import modeling_realm
from transformers.models.deprecated.realm import retrieval_realm

from realm_jax import block_records
from realm_jax import corpus as corpus_lib
from realm_jax import prediction
from realm_jax import realm_import
from realm_jax import released_workdir
from realm_jax.jobs import answer
from realm_jax.retrieval import index_store

RECORDS = [
    'Herman Melville wrote the novel Moby Dick about a white whale.',
    'The Eiffel Tower stands in Paris. It was finished in 1889.',
    'Marie Curie won two Nobel prizes for her work on radioactivity.',
    'The Amazon river flows through Brazil into the Atlantic ocean.',
    'Charles Darwin wrote On the Origin of Species in 1859.',
    'Mount Everest is the highest mountain on Earth.',
    'The first person on the moon was Neil Armstrong in 1969.',
    'Jane Austen wrote Pride and Prejudice. Her novels are loved.',
    'The Great Wall of China is thousands of miles long.',
    'Isaac Newton described gravity and the laws of motion.',
]
QUESTIONS = ['who wrote the novel about the white whale?',
             'where does the amazon river flow?',
             'when was the eiffel tower finished?',
             'who was the first person on the moon?',
             'what did isaac newton describe?']
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=64,
             retriever_proj_size=16, span_hidden_size=8, max_span_width=4,
             reader_beam_size=3, searcher_beam_size=5, reader_seq_len=48,
             num_block_records=len(RECORDS))


def _vocab():
  words = sorted({w for text in RECORDS + QUESTIONS
                  for w in re.findall(r'\w+|[^\w\s]', text.lower())})
  return ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *words]


def _save_open_qa(path: pathlib.Path, seed: int = 2):
  """A random RealmForOpenQA saved as the released repos are; returns it
  (with a RealmRetriever over the same records) and its tokenizer.

  Biases are zero and LayerNorms the identity: random ones dominate a tiny
  random model's states, and every question then retrieves and reads the
  same blocks.
  """
  path.mkdir(parents=True)
  (path / 'vocab.txt').write_text('\n'.join(_vocab()) + '\n')
  tokenizer = transformers.BertTokenizerFast(vocab_file=str(path / 'vocab.txt'),
                                             do_lower_case=True)
  tokenizer.save_pretrained(path)
  records = np.array([r.encode() for r in RECORDS], dtype=object)
  np.save(path / block_records.FILE_NAME, records)
  torch.manual_seed(seed)
  config = configuration_realm.RealmConfig(vocab_size=len(_vocab()), **SIZES)
  model = modeling_realm.RealmForOpenQA(
      config, retriever=retrieval_realm.RealmRetriever(records, tokenizer))
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      if name.endswith('bias'):
        parameter.zero_()
      elif re.search(r'(LayerNorm|layer_normalization)\.weight$', name):
        parameter.fill_(1.0)
      else:
        parameter.normal_(0.0, 0.3)
    model.block_emb.normal_(0.0, 0.3)
  model.eval().save_pretrained(path, safe_serialization=False)
  return model, tokenizer


def _transformers_answer(model, tokenizer, question):
  """(retrieved block ids, read block, predicted answer ids) of transformers'
  RealmForOpenQA.forward (eval: it reads the top reader_beam_size)."""
  inputs = tokenizer([question], return_tensors='pt')
  with torch.no_grad():
    query = model.embedder(**inputs).projected_score
    retrieved = torch.topk(query @ model.block_emb.T,
                           k=model.config.reader_beam_size).indices[0]
    output = model(**inputs, return_dict=True)
  return (retrieved.tolist(), int(output.reader_output.block_idx),
          output.predicted_answer_ids.tolist())


def _import(checkpoint_dir, workdir, **options):
  """realm-import, with blocks that fit the tiny model's positions."""
  return released_workdir.import_open_qa(checkpoint_dir, workdir,
                                         block_len=32, index_kind='exact',
                                         **options)


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  root = tmp_path_factory.mktemp('released')
  model, tokenizer = _save_open_qa(root / 'hf')
  workdir = root / 'workdir'
  _import(str(root / 'hf'), str(workdir))
  return root / 'hf', workdir, model, tokenizer


def test_answers_as_transformers(imported):
  hf_dir, workdir, model, tokenizer = imported
  predictor = prediction.Predictor(workdir)
  references = []
  for question, predicted in zip(QUESTIONS, predictor.predict(QUESTIONS)):
    retrieved, block, answer_ids = _transformers_answer(model, tokenizer,
                                                        question)
    references.append((tuple(retrieved), block))
    assert [b['block_id'] for b in predicted['blocks']] == retrieved
    assert predicted['block'] == block
    assert predictor.tokenizer.encode(predicted['answer']) == answer_ids
    assert predicted['answer'] in RECORDS[retrieved[block]]
    assert f'A: {predicted["answer"]}' in answer.format_prediction(
        question, predicted)
  # The questions retrieve different blocks, and not only the first is read.
  assert len(set(references)) > 2 and any(block for _, block in references)
  # The corpus is the records as they are; the index is block_emb.
  corpus = corpus_lib.Corpus(workdir / 'corpus')
  assert [r['text'] for r in corpus.records(range(len(RECORDS)))] == RECORDS
  assert [r['title'] for r in corpus.records([0, 9])] == ['', '']
  np.testing.assert_array_equal(
      predictor.index.vectors(np.arange(len(RECORDS))),
      model.block_emb.numpy())
  # The block tokens are those the retriever's tokenizer gives the reader.
  body = corpus.body_tokens(7).tolist()
  assert body == tokenizer(RECORDS[7], add_special_tokens=False).input_ids
  assert corpus.sentence_bounds(7).tolist() == [[0, 7], [7, len(body)]]
  # block_emb stays a view of the memory-mapped pytorch_model.bin.
  assert realm_import.import_realm_checkpoint(hf_dir).block_emb.base is not None


def _restored_params(workdir):
  manager = ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / 'checkpoints',
      options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers=dict(state=ocp.PyTreeCheckpointHandler()))
  state = manager.restore(0, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore()))['state']
  return state['params']


def _leaves(tree):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _outputs(workdir):
  """What an import wrote, but for times and the workdir's own path."""
  store = index_store.IndexStore(workdir / 'index')
  index = store.read_manifest(store.pointer()['version'])
  corpus = json.loads((workdir / 'corpus' / 'manifest.json').read_text())
  config = json.loads((workdir / 'config.json').read_text())
  config.pop('corpus_dir')
  return (index['files'], corpus['files'], config,
          sorted(os.listdir(workdir)), sorted(os.listdir(workdir / 'index')))


def test_a_killed_import_resumes_to_the_same_workdir(imported, tmp_path,
                                                     monkeypatch):
  hf_dir, reference, _, _ = imported
  workdir = tmp_path / 'workdir'
  # Killed while writing the corpus: no corpus, nothing committed.
  real_record_block = block_records.record_block
  def fail_at_record_5(i, *args):
    if i == 5:
      raise KeyboardInterrupt
    return real_record_block(i, *args)
  monkeypatch.setattr(block_records, 'record_block', fail_at_record_5)
  with pytest.raises(KeyboardInterrupt):
    _import(str(hf_dir), str(workdir), chunk_rows=4)
  assert not (workdir / 'corpus').exists()
  assert not (workdir / 'corpus.tmp').exists()
  assert not (workdir / 'config.json').exists()
  monkeypatch.undo()
  # Killed after block_emb's first chunk: nothing published.
  real_write = index_store.atomic_write_text
  def fail_after_first_chunk(path, text):
    if path.name == 'block_emb.progress.json' and json.loads(text)['rows'] > 4:
      raise KeyboardInterrupt
    real_write(path, text)
  monkeypatch.setattr(index_store, 'atomic_write_text', fail_after_first_chunk)
  with pytest.raises(KeyboardInterrupt):
    _import(str(hf_dir), str(workdir), chunk_rows=4)
  monkeypatch.undo()
  store = index_store.IndexStore(workdir / 'index')
  assert store.pointer() is None and not store.versions()
  assert not (workdir / 'config.json').exists()
  progress = store.building_dir(0) / 'block_emb.progress.json'
  assert json.loads(progress.read_text())['rows'] == 4
  # The rerun resumes there and ends as an uninterrupted import did.
  _import(str(hf_dir), str(workdir), chunk_rows=4)
  assert _outputs(workdir) == _outputs(reference)
  assert not store.build_steps()
  ours, theirs = _restored_params(workdir), _restored_params(reference)
  for a, b in zip(*(_leaves(p) for p in (ours, theirs))):
    np.testing.assert_array_equal(a, b)
  # Without --embedder the document tower is the question tower's copy.
  for a, b in zip(*(_leaves(ours['retriever'][t])
                    for t in ('doc_tower', 'query_tower'))):
    np.testing.assert_array_equal(a, b)
  # A rerun of a finished import keeps it.
  _import(str(hf_dir), str(workdir))
  assert _outputs(workdir) == _outputs(reference)


def test_embedder_fills_the_document_tower(imported, tmp_path):
  hf_dir, _, _, _ = imported
  torch.manual_seed(1)
  config = configuration_realm.RealmConfig(vocab_size=len(_vocab()), **SIZES)
  embedder = modeling_realm.RealmEmbedder(config)
  embedder.save_pretrained(tmp_path / 'embedder')
  _import(str(hf_dir), str(tmp_path / 'workdir'),
          embedder_dir=str(tmp_path / 'embedder'))
  params = _restored_params(tmp_path / 'workdir')['retriever']
  np.testing.assert_array_equal(
      params['doc_tower']['projection']['kernel'],
      embedder.cls.dense.weight.detach().numpy().T)
  assert not np.array_equal(params['doc_tower']['projection']['kernel'],
                            params['query_tower']['projection']['kernel'])


# --- the block records reader -----------------------------------------------


def test_block_records_round_trip(tmp_path):
  records = np.array([b'one', '\u00e9t\u00e9'.encode(), b'one', b''],
                     dtype=object)
  np.save(tmp_path / 'records.npy', records)
  reader = block_records.BlockRecords(tmp_path / 'records.npy')
  assert reader.num_records == 4 and reader.fingerprint is None
  # b'one' twice is one object: pickled once, then as a memo reference.
  assert list(reader) == records.tolist()
  assert reader.fingerprint == 'sha256:' + hashlib.sha256(
      (tmp_path / 'records.npy').read_bytes()).hexdigest()
  assert block_records.num_block_records(tmp_path / 'records.npy') == 4


def _npy_of_pickle(path, payload: bytes, num_records=1):
  with open(path, 'wb') as f:
    np.lib.format.write_array_header_1_0(f, dict(
        descr='|O', fortran_order=False, shape=(num_records,)))
    f.write(payload)
  return path


def test_block_records_in_numpy_1_layout(tmp_path):
  """numpy 1 named the reconstructor numpy.core.multiarray (protocol 3)."""
  records = np.array([b'a block', b'another'], dtype=object)
  payload = pickle.dumps(records, protocol=3).replace(
      b'numpy._core.multiarray\n', b'numpy.core.multiarray\n')
  assert b'numpy.core.multiarray' in payload
  path = _npy_of_pickle(tmp_path / 'records.npy', payload, 2)
  assert list(block_records.BlockRecords(path)) == [b'a block', b'another']


@pytest.mark.parametrize('protocol', [3, 4, 5])
def test_block_records_stream_in_order(tmp_path, protocol):
  """Several APPENDS batches, repeated objects (memo references to records
  of earlier batches), the FRAME/MEMOIZE/STACK_GLOBAL opcodes of protocols
  4-5; records are handed out before the file is read to its end."""
  shared = b'shared record'
  records = np.array([f'block {i}'.encode() for i in range(2500)],
                     dtype=object)
  records[[7, 1500, 2499]] = shared
  records[[3, 2100]] = b''
  payload = pickle.dumps(records, protocol=protocol)
  path = _npy_of_pickle(tmp_path / 'records.npy', payload, len(records))
  assert list(block_records.BlockRecords(path)) == records.tolist()
  # Truncated: the first batch is out before the error.
  truncated = _npy_of_pickle(tmp_path / 'truncated.npy',
                             payload[:len(payload) // 2], len(records))
  read = []
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'truncated\.npy: cannot read the pickle'):
    for record in block_records.BlockRecords(truncated):
      read.append(record)
  assert read and read == records.tolist()[:len(read)]


def test_block_records_refuse_other_arrays(tmp_path):
  """A str record, a count other than the header's, a dict."""
  path = _npy_of_pickle(tmp_path / 'str.npy', pickle.dumps(
      np.array([b'a', 'text'], dtype=object), protocol=3), 2)
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'str\.npy: record 1 is a str, not bytes'):
    list(block_records.BlockRecords(path))
  payload = pickle.dumps(np.array([b'a', b'b', b'c'], dtype=object),
                         protocol=3)
  path = _npy_of_pickle(tmp_path / 'fewer.npy', payload, 4)
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'fewer\.npy: the pickle holds no object array '
                     r'of shape \(4,\)'):
    list(block_records.BlockRecords(path))
  path = _npy_of_pickle(tmp_path / 'more.npy', payload, 2)
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'more\.npy: more than 2 records'):
    list(block_records.BlockRecords(path))
  path = _npy_of_pickle(tmp_path / 'dict.npy', pickle.dumps(
      np.array([{'a': b'b'}], dtype=object), protocol=3))
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'dict\.npy: refusing the pickle opcode '
                     r'EMPTY_DICT'):
    list(block_records.BlockRecords(path))


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_block_records_refuse_code(tmp_path):
  marker = tmp_path / 'pwned'
  payload = pickle.dumps(np.array([_Exploit(marker)], dtype=object))
  path = _npy_of_pickle(tmp_path / 'block_records.npy', payload)
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'block_records\.npy: refusing to unpickle '
                     r'(posix|os)\.system'):
    list(block_records.BlockRecords(path))
  assert not marker.exists()
  # Not an object array, or not .npy at all.
  np.save(tmp_path / 'floats.npy', np.zeros(3))
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'floats\.npy: a float64 array'):
    block_records.BlockRecords(tmp_path / 'floats.npy')
  (tmp_path / 'text.npy').write_text('hello')
  with pytest.raises(block_records.BlockRecordsError,
                     match=r'text\.npy: not a \.npy file'):
    block_records.BlockRecords(tmp_path / 'text.npy')


# --- errors ------------------------------------------------------------------


def _copy(hf_dir, tmp_path):
  return pathlib.Path(shutil.copytree(hf_dir, tmp_path / 'hf'))


@pytest.mark.parametrize('name', ['block_records.npy', 'vocab.txt',
                                  'config.json', 'pytorch_model.bin'])
def test_a_missing_file_is_named(imported, tmp_path, name):
  broken = _copy(imported[0], tmp_path)
  (broken / name).unlink()
  with pytest.raises(FileNotFoundError, match=re.escape(
      name if name != 'pytorch_model.bin' else 'no model.safetensors or '
      'pytorch_model.bin')):
    _import(str(broken), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_records_that_do_not_match_block_emb_are_named(imported, tmp_path):
  broken = _copy(imported[0], tmp_path)
  np.save(broken / 'block_records.npy',
          np.array([r.encode() for r in RECORDS[:9]], dtype=object))
  with pytest.raises(ValueError, match=r'block_records\.npy holds 9 records, '
                     r'the tensor block_emb of .*pytorch_model\.bin 10 rows'):
    _import(str(broken), str(tmp_path / 'w'))


def test_another_runs_workdir_is_not_overwritten(imported, tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"model": {}}')
  (workdir / 'notes.txt').write_text('mine')
  with pytest.raises(FileExistsError, match='--overwrite'):
    _import(str(imported[0]), str(workdir))
  # --overwrite replaces the parts an import writes, and nothing else.
  _import(str(imported[0]), str(workdir), overwrite=True)
  assert 'imported_from' in json.loads((workdir / 'config.json').read_text())
  assert (workdir / 'notes.txt').read_text() == 'mine'


def test_finetuning_from_an_import_takes_its_index(imported, tmp_path):
  """realm-finetune --config.init_from=IMPORT publishes block_emb as its
  fixed index (no re-embedding: the import's document tower is not what
  embedded block_emb), and trains from there."""
  from conftest import job_config  # pylint: disable=g-import-not-at-top
  from realm_jax.jobs import finetune  # pylint: disable=g-import-not-at-top
  from realm_jax.retrieval import workspace  # pylint: disable=g-import-not-at-top
  hf_dir, workdir, model, _ = imported
  train = tmp_path / 'train.jsonl'
  train.write_text(''.join(json.dumps(dict(question=q, answer=[a])) + '\n'
                           for q, a in zip(QUESTIONS[:4], [
                               'herman melville', 'brazil', '1889',
                               'neil armstrong'])))

  def config(**overrides):
    config = job_config('finetune')
    config.model.update(workspace.read_config(workdir).model.to_dict())
    config.model.share_towers = True  # fine-tuning separates them
    config.update_from_flattened_dict(dict(
        init_from=str(workdir), train_data=str(train), batch_size=8,
        retriever_beam_size=4, reader_beam_size=2, num_train_steps=1,
        **{'lengths.reader_len': 48}, **overrides))
    return config

  block_emb = model.block_emb.numpy()
  finetune.train_and_evaluate(config(), str(tmp_path / 'ft'))
  store = index_store.IndexStore(tmp_path / 'ft' / 'index')
  version = store.pointer()['version']
  assert store.read_manifest(version)['copied_from'].startswith(
      str(workdir))
  index, _ = store.load(version)
  np.testing.assert_array_equal(
      index.vectors(np.arange(len(RECORDS))), block_emb)



def test_realm_evaluate_scores_an_import(imported, tmp_path):
  """realm-evaluate --config=configs/evaluate.py:nq_open on an imported
  workdir: its exact match and recall are those of transformers' answers
  and retrievals (half the questions given transformers' answer, half an
  answer no block holds)."""
  _, workdir, model, tokenizer = imported
  examples, expected_recall = [], []
  for i, question in enumerate(QUESTIONS):
    retrieved, block, answer_ids = _transformers_answer(model, tokenizer,
                                                        question)
    answer_text = tokenizer.decode(answer_ids)
    gold = answer_text if i % 2 == 0 else 'zzyzx quux'
    examples.append(dict(question=question, answer=[gold]))
    expected_recall.append(i % 2 == 0 and answer_text
                           in RECORDS[retrieved[block]].lower())
  data = tmp_path / 'questions.jsonl'
  data.write_text(''.join(json.dumps(e) + '\n' for e in examples))
  output = tmp_path / 'eval' / 'questions.jsonl'
  subprocess.run(
      [sys.executable, '-m', 'realm_jax.jobs.evaluate',
       '--config=configs/evaluate.py:nq_open', f'--workdir={workdir}',
       f'--config.data={data}', f'--config.output={output}',
       '--config.recall_ks=(1,2)'],
      check=True, capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      cwd=pathlib.Path(__file__).parent.parent)
  metrics = json.loads((tmp_path / 'eval' /
                        'questions_metrics.json').read_text())
  assert metrics['exact_match'] == pytest.approx(3 / 5)
  # The block read holds the answer, so it is within the top 2 blocks.
  assert metrics['recall@2'] == pytest.approx(np.mean(expected_recall))
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert [r['correct'] for r in records] == [True, False, True, False, True]
