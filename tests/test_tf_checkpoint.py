"""The reference's TF1 artefacts without TensorFlow: checkpoints and TFRecord
files read exactly, the REALM/ORQA variables imported as transformers maps
them, and `realm-import --from=tf:` answering as the hf: import of the same
weights.

The fixtures (tests/fixtures/tf1/) were written by TensorFlow itself
(tests/fixtures/make_tf_fixtures.py, run in a throwaway venv); the values it
was given are regenerated here from their seeds. The reference for the name
mapping is transformers' own load_tf_weights_in_realm, fed those values
through a stand-in for the two tf.train functions it calls.
"""
import importlib.util
import os
import pathlib
import shutil
import sys
import types

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import torch
import transformers
from transformers.models.deprecated.realm import configuration_realm
from transformers.models.deprecated.realm import modeling_realm
from transformers.models.deprecated.realm import retrieval_realm

from realm_jax import block_records
from realm_jax import corpus as corpus_lib
from realm_jax import prediction
from realm_jax import released_workdir
from realm_jax import tf_checkpoint
from realm_jax import tf_realm_import
import test_realm_import
import test_realm_import_workdir

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
TF1 = FIXTURES / 'tf1'
_spec = importlib.util.spec_from_file_location(
    'make_tf_fixtures', FIXTURES / 'make_tf_fixtures.py')
make_tf_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_tf_fixtures)
VALUES = make_tf_fixtures.checkpoints()
MODEL = f'model.ckpt-{make_tf_fixtures.STEP}'
EMBEDDER = 'embedder/variables/variables'
ENCODER = 'bert/variables/variables'
# The parity helpers of the hf: import's tests.
# pylint: disable=protected-access
_ours, _embed, _torch = (test_realm_import._ours, test_realm_import._embed,
                         test_realm_import._torch)
_max_difference = test_realm_import._max_difference
_check_reader = test_realm_import._check_reader
_hf_inputs = test_realm_import._inputs
_transformers_answer = test_realm_import_workdir._transformers_answer
_restored_params = test_realm_import_workdir._restored_params
_block_handle = tf_checkpoint._block_handle
# pylint: enable=protected-access


# --- formats -----------------------------------------------------------------


@pytest.mark.parametrize('prefix', sorted(VALUES))
def test_every_tensor_is_tfs_value(prefix):
  assert tf_checkpoint.crc32c_available()  # so the checksums are verified
  entries = tf_checkpoint.read_index(TF1 / prefix)
  want = VALUES[prefix]
  extra = {'bfloat16', 'string'} if prefix == 'dtypes.ckpt' else set()
  assert set(entries) == set(want) | extra
  got = tf_checkpoint.read_tensors(TF1 / prefix, list(want))
  for name, value in want.items():
    assert got[name].dtype == value.dtype, name
    assert got[name].shape == value.shape, name
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_bfloat16_and_string_tensors():
  prefix = TF1 / 'dtypes.ckpt'
  entries = tf_checkpoint.read_index(prefix)
  value = tf_checkpoint.read_tensor(prefix, entries['bfloat16'])
  assert value.dtype.name == 'bfloat16'
  np.testing.assert_array_equal(value.astype(np.float32), [1.5, -2.25, 3.0])
  with pytest.raises(tf_checkpoint.CheckpointError,
                     match=r'dtypes\.ckpt\.data-00000-of-00001: variable '
                     r'string is a string tensor'):
    tf_checkpoint.read_tensor(prefix, entries['string'])


def test_block_emb_is_memory_mapped():
  block_emb = tf_realm_import.read_block_emb(TF1 / 'encoded.ckpt')
  assert isinstance(block_emb, np.memmap)
  np.testing.assert_array_equal(block_emb, VALUES['encoded.ckpt']['block_emb'])


def test_tfrecords_are_the_texts():
  blocks = list(tf_checkpoint.read_tfrecords(TF1 / 'blocks.tfr'))
  assert blocks == [text.encode() for text in make_tf_fixtures.BLOCKS]
  titles = list(tf_checkpoint.read_tfrecords(TF1 / 'titles.tfr'))
  assert titles == [title.encode() for title in make_tf_fixtures.TITLES]
  assert tf_checkpoint.count_tfrecords(TF1 / 'blocks.tfr') == len(blocks)


def _flip(path, offset):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x01
  path.write_bytes(bytes(data))


def _record_offset(number):
  """The byte offset of record `number` of blocks.tfr."""
  return sum(16 + len(text.encode())
             for text in make_tf_fixtures.BLOCKS[:number])


@pytest.mark.parametrize('where,message', [
    (12 + 5, 'the data\'s checksum does not match'),  # a byte of the text
    (0, 'the length\'s checksum does not match'),
])
def test_a_corrupt_tfrecord_frame_is_named(tmp_path, where, message):
  path = tmp_path / 'blocks.tfr'
  shutil.copy(TF1 / 'blocks.tfr', path)
  _flip(path, _record_offset(3) + where)
  with pytest.raises(tf_checkpoint.TFRecordError,
                     match=rf'blocks\.tfr: record 3 \(byte '
                     rf'{_record_offset(3)}\): {message}'):
    list(tf_checkpoint.read_tfrecords(path))
  # Truncated: the last frame misses its data's checksum.
  shutil.copy(TF1 / 'blocks.tfr', path)
  path.write_bytes(path.read_bytes()[:-2])
  with pytest.raises(tf_checkpoint.TFRecordError,
                     match=r'blocks\.tfr: record 7 .*truncated'):
    list(tf_checkpoint.read_tfrecords(path))
  with pytest.raises(tf_checkpoint.TFRecordError, match=r'record 7 is trunc'):
    tf_checkpoint.count_tfrecords(path)


def _copy_checkpoint(prefix, target):
  target.mkdir(exist_ok=True)
  for path in (TF1 / prefix).parent.glob(f'{(TF1 / prefix).name}.*'):
    shutil.copy(path, target / path.name)
  return target / (TF1 / prefix).name


def test_a_corrupt_checkpoint_is_named(tmp_path):
  prefix = _copy_checkpoint(MODEL, tmp_path)
  entry = tf_checkpoint.read_index(prefix)['reader/dense/kernel']
  data = pathlib.Path(f'{prefix}.data-00000-of-00001')
  _flip(data, entry.offset + 7)
  with pytest.raises(tf_checkpoint.CheckpointError,
                     match=rf'{data.name}: checksum mismatch in variable '
                     r'reader/dense/kernel'):
    tf_checkpoint.read_tensor(prefix, entry)
  # Importing it fails the same way.
  with pytest.raises(tf_checkpoint.CheckpointError, match='reader/dense/kern'):
    tf_realm_import.import_tf_checkpoint(
        prefix, config=TF1 / 'config.json', block_emb=TF1 / 'encoded.ckpt')
  # The index: a byte of an entry, then the compression byte of its block.
  index = pathlib.Path(f'{prefix}.index')
  _flip(index, 40)
  with pytest.raises(tf_checkpoint.CheckpointError,
                     match=rf'{index.name}: checksum mismatch in the block '
                     'at byte 0'):
    tf_checkpoint.read_index(prefix)
  shutil.copy(TF1 / f'{MODEL}.index', index)
  footer = index.read_bytes()[-48:]
  _, _, position = _block_handle(footer)
  offset, length, _ = _block_handle(footer, position)
  _flip(index, offset + length)  # the index block's type: 1, snappy
  with pytest.raises(tf_checkpoint.CheckpointError, match='is compressed'):
    tf_checkpoint.read_index(prefix)
  with pytest.raises(FileNotFoundError, match=r'nothing\.index not found'):
    tf_checkpoint.read_index(tmp_path / 'nothing')


# --- the name mapping, against transformers' -------------------------------


def _fake_tensorflow(monkeypatch):
  """tf.train.list_variables / load_variable (all load_tf_weights_in_realm
  calls) serving the values TF was given, by checkpoint path."""
  by_path = {os.path.abspath(TF1 / prefix): values
             for prefix, values in VALUES.items()}
  train = types.SimpleNamespace(
      list_variables=lambda path: [(name, value.shape) for name, value
                                   in by_path[path].items()],
      load_variable=lambda path, name: by_path[path][name].copy())
  monkeypatch.setitem(sys.modules, 'tensorflow',
                      types.SimpleNamespace(train=train))


def _hf_config():
  config = make_tf_fixtures.config()
  return configuration_realm.RealmConfig(
      **config, num_block_records=len(make_tf_fixtures.BLOCKS))


def _transformers_model(cls, *prefixes):
  """A transformers REALM model filled by load_tf_weights_in_realm from the
  checkpoints `prefixes`; every parameter must have been loaded."""
  torch.manual_seed(0)
  model = cls(_hf_config())
  before = {name: value.clone() for name, value in model.named_parameters()}
  with pytest.MonkeyPatch.context() as monkeypatch:
    _fake_tensorflow(monkeypatch)
    for prefix in prefixes:
      modeling_realm.load_tf_weights_in_realm(model, model.config,
                                              str(TF1 / prefix))
  # But an embedder's MLM decoder: TF ties it to the word embeddings (no
  # variable), transformers does not tie it (its forward never uses it).
  fresh = [name for name, value in model.named_parameters()
           if torch.equal(value, before[name])
           and not name.endswith('cls.predictions.decoder.weight')]
  assert not fresh, fresh
  return model.eval()


def _import(prefix, **options):
  notes = []
  checkpoint = tf_realm_import.import_tf_checkpoint(
      TF1 / prefix, config=TF1 / 'config.json', notes=notes, **options)
  return checkpoint, notes


def _inputs():
  ids, segments, mask = _hf_inputs()
  return ids % len(make_tf_fixtures.vocab()), segments, mask


def test_embedder_as_transformers_maps_it():
  reference = _transformers_model(modeling_realm.RealmEmbedder, EMBEDDER)
  # A TF-Hub module directory names its variables/variables.
  checkpoint, notes = _import('embedder')
  assert checkpoint.architecture == 'RealmEmbedder' and not notes, notes
  config = checkpoint.model_config
  assert (config.hidden_act, config.num_heads, config.projection_size,
          config.projection_layer_norm_eps) == ('gelu_new', 4, 16, 1e-12)
  model = _ours(checkpoint)
  inputs = _inputs()
  want = _embed(reference, *inputs)
  _max_difference(model.retriever.embed_blocks(*inputs), want)


def test_knowledge_aug_encoder_as_transformers_maps_it():
  reference = _transformers_model(modeling_realm.RealmKnowledgeAugEncoder,
                                  ENCODER)
  checkpoint, _ = _import(ENCODER)
  assert checkpoint.architecture == 'RealmKnowledgeAugEncoder'
  model = _ours(checkpoint)
  ids, segments, mask = _inputs()
  positions = np.arange(ids.shape[1], dtype=np.int32)[None].repeat(
      len(ids), 0)
  got = model.reader.mlm_logits(model.reader(ids, segments, mask), positions)
  with torch.no_grad():
    want = reference(*_torch(ids, mask, segments)).logits
  _max_difference(got, want.numpy())


def test_orqa_model_as_transformers_maps_it():
  reference = _transformers_model(modeling_realm.RealmForOpenQA, MODEL,
                                  'encoded.ckpt')
  checkpoint, notes = _import(f'{MODEL}.index',
                              block_emb=TF1 / 'encoded.ckpt')
  assert checkpoint.architecture == 'RealmForOpenQA'
  # Adam slots and global_step are skipped, nothing else is left over.
  assert not any('unused' in note for note in notes), notes
  np.testing.assert_array_equal(checkpoint.block_emb,
                                reference.block_emb.numpy())
  model = _ours(checkpoint)
  inputs = _inputs()
  _max_difference(
      model.retriever.embed_queries(*inputs),
      _embed(reference.embedder, *inputs))
  _check_reader(
      model, reference.reader, inputs, np.array([1.0, 0.0, -0.5], np.float32))


def test_not_a_realm_checkpoint_is_named():
  with pytest.raises(ValueError, match=r'dtypes\.ckpt: not a REALM/ORQA '
                     r'checkpoint: none of the variables reader/module/bert'):
    tf_realm_import.import_tf_checkpoint(TF1 / 'dtypes.ckpt')
  with pytest.raises(ValueError, match='pass block_emb='):
    tf_realm_import.import_tf_checkpoint(TF1 / MODEL,
                                         config=TF1 / 'config.json')


# --- realm-import --from=tf: ----------------------------------------------


def _save_hf(model, path):
  """The same model saved as google/realm-orqa-nq-openqa is."""
  path.mkdir()
  shutil.copy(TF1 / 'vocab.txt', path / 'vocab.txt')
  tokenizer = transformers.BertTokenizerFast(
      vocab_file=str(path / 'vocab.txt'), do_lower_case=True)
  tokenizer.save_pretrained(path)
  records = np.array([text.encode() for text in make_tf_fixtures.BLOCKS],
                     dtype=object)
  np.save(path / block_records.FILE_NAME, records)
  model.retriever = retrieval_realm.RealmRetriever(records, tokenizer)
  model.save_pretrained(path, safe_serialization=False)
  return tokenizer


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """(transformers' RealmForOpenQA and tokenizer, the tf: workdir, the hf:
  workdir of the same weights)."""
  root = tmp_path_factory.mktemp('tf_import')
  model = _transformers_model(modeling_realm.RealmForOpenQA, MODEL,
                              'encoded.ckpt')
  tokenizer = _save_hf(model, root / 'hf')
  options = dict(block_len=32, index_kind='exact')
  released_workdir.import_tf_open_qa(str(TF1), str(root / 'tf_workdir'),
                                     embedder=str(TF1 / 'embedder'),
                                     **options)
  released_workdir.import_open_qa(str(root / 'hf'), str(root / 'hf_workdir'),
                                  **options)
  return model, tokenizer, root / 'tf_workdir', root / 'hf_workdir'


def test_tf_import_answers_as_the_hf_import(imported):
  model, tokenizer, tf_workdir, hf_workdir = imported
  questions = make_tf_fixtures.QUESTIONS
  ours = prediction.Predictor(tf_workdir).predict(questions)
  theirs = prediction.Predictor(hf_workdir).predict(questions)
  read = set()
  for question, got, want in zip(questions, ours, theirs):
    assert [b['block_id'] for b in got['blocks']] == [
        b['block_id'] for b in want['blocks']]
    assert (got['block'], got['answer']) == (want['block'], want['answer'])
    retrieved, block, answer_ids = _transformers_answer(
        model, tokenizer, question)
    assert [b['block_id'] for b in got['blocks']] == retrieved
    assert got['block'] == block
    assert tokenizer(got['answer'], add_special_tokens=False
                     ).input_ids == answer_ids
    read.add(retrieved[block])
  assert len(read) > 1  # not one block for every question
  # The corpus: the texts as released, with their titles.
  corpus = corpus_lib.Corpus(tf_workdir / 'corpus')
  records = corpus.records(range(len(make_tf_fixtures.BLOCKS)))
  assert [r['text'] for r in records] == make_tf_fixtures.BLOCKS
  assert [r['title'] for r in records] == make_tf_fixtures.TITLES
  # The reader reads the same body word pieces as the hf: import's.
  hf_corpus = corpus_lib.Corpus(hf_workdir / 'corpus')
  for i in range(len(make_tf_fixtures.BLOCKS)):
    np.testing.assert_array_equal(corpus.body_tokens(i),
                                  hf_corpus.body_tokens(i))


def test_tf_import_document_tower_is_the_embedder(imported):
  _, _, tf_workdir, _ = imported
  params = _restored_params(tf_workdir)
  embedder, _ = _import('embedder')
  np.testing.assert_array_equal(
      params['retriever']['doc_tower']['projection']['kernel'],
      embedder.params['retriever']['doc_tower']['projection']['kernel'])


def test_tf_import_resumes_and_keeps_its_parts(imported, tmp_path):
  _, _, tf_workdir, _ = imported
  workdir = tmp_path / 'w'
  shutil.copytree(tf_workdir, workdir)
  (workdir / 'config.json').unlink()
  stamp = (workdir / 'corpus' / 'manifest.json').stat().st_mtime_ns
  released_workdir.import_tf_open_qa(str(TF1), str(workdir),
                                     embedder=str(TF1 / 'embedder'),
                                     block_len=32, index_kind='exact')
  assert (workdir / 'corpus' / 'manifest.json').stat().st_mtime_ns == stamp
  assert (workdir / 'config.json').is_file()


@pytest.mark.parametrize('name', [f'{MODEL}.index', 'encoded.ckpt.index',
                                  'encoded.ckpt.data-00000-of-00001',
                                  'blocks.tfr', 'vocab.txt'])
def test_a_missing_tf_file_is_named(tmp_path, name):
  tf_dir = tmp_path / 'tf'
  shutil.copytree(TF1, tf_dir)
  (tf_dir / name).unlink()
  expected = 'model.ckpt*.index' if name.startswith('model') else name
  with pytest.raises(FileNotFoundError, match=expected.replace('.', r'\.')
                     .replace('*', r'\*')):
    released_workdir.import_tf_open_qa(str(tf_dir), str(tmp_path / 'w'),
                                       block_len=32)
  assert not (tmp_path / 'w').exists()


def test_titles_that_do_not_match_the_blocks_are_named(tmp_path):
  tf_dir = tmp_path / 'tf'
  shutil.copytree(TF1, tf_dir)
  frames = (TF1 / 'titles.tfr').read_bytes()
  # Drop the last title's frame.
  last = len(make_tf_fixtures.TITLES[-1].encode()) + 16
  (tf_dir / 'titles.tfr').write_bytes(frames[:-last])
  with pytest.raises(ValueError, match=r'titles\.tfr holds 7 titles, '
                     r'.*blocks\.tfr 8 blocks'):
    released_workdir.import_tf_open_qa(str(tf_dir), str(tmp_path / 'w'),
                                       block_len=32)
