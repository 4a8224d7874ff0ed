"""Document readers, list-page filtering and the sentence splitter."""
import hashlib
import json

import ml_collections
import pytest
import tensorflow_datasets as tfds

from realm_jax import documents


def _write_lines(path, lines):
  path.write_bytes(b''.join(
      (line if isinstance(line, bytes) else line.encode()) + b'\n'
      for line in lines))
  return path


def test_read_jsonl(tmp_path):
  path = _write_lines(tmp_path / 'docs.jsonl', [
      json.dumps({'id': 'a#0', 'title': 'A', 'text': 'One.', 'extra': 1}),
      '',
      json.dumps({'title': 'B', 'text': 'Two. Three.'}),
  ])
  hasher = hashlib.sha256()
  docs = list(documents.read_jsonl(path, hasher))
  assert docs == [
      {'doc_id': 'a#0', 'title': 'A', 'text': 'One.'},
      {'doc_id': f'{path}:3', 'title': 'B', 'text': 'Two. Three.'}]
  assert hasher.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize('bad_line, message', [
    (b'{"title": "B", "text": ', 'malformed JSON'),
    (b'{"title": "B"}', "field 'text' is missing"),
    (b'{"title": 7, "text": "x"}', "field 'title' is not a string"),
    (b'["title", "text"]', 'expected a JSON object'),
    (b'{"title": "B", "text": "caf\xe9"}', 'invalid UTF-8'),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
  good = json.dumps({'title': 'A', 'text': 'x'})
  path = _write_lines(tmp_path / 'docs.jsonl', [good, good, bad_line, good])
  docs = documents.read_jsonl(path)
  assert len([next(docs), next(docs)]) == 2  # streams up to the bad line
  with pytest.raises(ValueError, match=f'{path}:3: {message}'):
    next(docs)


def test_read_wikitext(tmp_path):
  path = _write_lines(tmp_path / 'wiki.raw', [
      ' = Ise @-@ class battleship = ',
      ' The ships were 1 @,@ 000 tons , 3 @.@ 5 m deep . ',
      ' = = History = = ',
      ' = = = Early years = = = ',
      ' Second paragraph . ',
      ' = Second = ',
      ' = Qualified for the next round ',
  ])
  assert list(documents.read_wikitext(path)) == [
      {'doc_id': f'{path}:1', 'title': 'Ise-class battleship',
       'text': 'The ships were 1,000 tons , 3.5 m deep .\nSecond paragraph .'},
      {'doc_id': f'{path}:6', 'title': 'Second',
       'text': '= Qualified for the next round'}]


def test_read_wikitext_needs_a_title_first(tmp_path):
  path = _write_lines(tmp_path / 'wiki.raw', [' text first . '])
  with pytest.raises(ValueError, match=f'{path}:1: text before the first'):
    list(documents.read_wikitext(path))


@pytest.mark.shared_data
def test_read_wikitext_shared(shared_data):
  docs = list(documents.read_wikitext(shared_data / 'wikitext2/wiki.test.raw'))
  # 60 articles, and 2 equations of "Constant k filter" that WikiText lays
  # out exactly like titles (' = 1 henry and capacitance C = ').
  assert len(docs) == 62
  titles = [doc['title'] for doc in docs]
  assert titles[:2] == ['Robert Boulter', 'Du Fu']
  assert 'Ise-class battleship' in titles
  assert titles[-1] == 'The Hustler ( film )'
  for doc in docs:
    assert doc['text'] and '@-@' not in doc['text']
    assert not any(line.startswith('= =') for line in doc['text'].split('\n'))


@pytest.mark.shared_data
def test_read_jsonl_shared(shared_data):
  docs = list(documents.read_jsonl(shared_data / 'squad_open/corpus.jsonl'))
  assert len(docs) == 2067
  assert docs[0]['doc_id'] == 'Super_Bowl_50#0'
  assert len({doc['doc_id'] for doc in docs}) == 2067


class TinyWiki(tfds.core.GeneratorBasedBuilder):
  """A real tfds dataset with the features of tfds `wikipedia`."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    features = tfds.features.FeaturesDict(
        {'title': tfds.features.Text(), 'text': tfds.features.Text()})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(5):
      yield i, {'title': f'Page {i}', 'text': f'Text of page {i}. Café.'}


def test_read_tfds_array_record(tmp_path):
  TinyWiki(data_dir=tmp_path, file_format='array_record').download_and_prepare()
  hasher = hashlib.sha256()
  docs = list(documents.read_tfds('tiny_wiki', 'train', str(tmp_path), hasher))
  assert sorted((d['title'], d['text']) for d in docs) == [
      (f'Page {i}', f'Text of page {i}. Café.') for i in range(5)]
  assert [d['doc_id'] for d in docs] == [f'tiny_wiki/train/{i}'
                                         for i in range(5)]
  assert hasher.hexdigest() != hashlib.sha256().hexdigest()


def test_tfrecord_without_tensorflow_says_what_to_install():
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip('TensorFlow is installed')
  except ImportError:
    pass
  with pytest.raises(ImportError, match=r'pip install realm_jax\[tf\]'):
    documents.require_tensorflow()


@pytest.mark.parametrize('title, dropped', [
    ('List of sovereign states', True),
    ('Index of philosophy articles', True),
    ('Outline of physics', True),
    ('Mercury (disambiguation)', True),
    ('Listed buildings', False),
    ('Indexing', False),
    ('A list of things', False),
    ('Mercury (planet)', False),
])
def test_is_list_page(title, dropped):
  assert documents.is_list_page(title) == dropped


@pytest.mark.parametrize('drop', [True, False])
def test_read_documents_drop_list_pages(tmp_path, drop):
  path = _write_lines(tmp_path / 'docs.jsonl', [
      json.dumps({'title': t, 'text': 'x'})
      for t in ('Paris', 'List of cities', 'Lyon', 'Nice (disambiguation)')])
  config = ml_collections.ConfigDict(dict(format='jsonl', paths=str(path),
                                          drop_list_pages=drop))
  titles = [d['title'] for d in documents.read_documents(config)]
  everything = ['Paris', 'List of cities', 'Lyon', 'Nice (disambiguation)']
  assert titles == (['Paris', 'Lyon'] if drop else everything)


def test_input_paths(tmp_path):
  for name in ('b.jsonl', 'a.jsonl', 'c.txt'):
    (tmp_path / name).write_text('')
  assert documents.input_paths(f'{tmp_path}/*.jsonl, {tmp_path}/c.txt') == [
      f'{tmp_path}/a.jsonl', f'{tmp_path}/b.jsonl', f'{tmp_path}/c.txt']
  with pytest.raises(FileNotFoundError, match='missing'):
    documents.input_paths(f'{tmp_path}/missing*.jsonl')


def _sentences(text):
  return [text[start:end] for start, end in documents.split_sentences(text)]


@pytest.mark.parametrize('text, expected', [
    ('Mr. Smith met Dr. J. R. R. Tolkien in the U.S. in 1990. He left.',
     ['Mr. Smith met Dr. J. R. R. Tolkien in the U.S. in 1990.', 'He left.']),
    ('It cost $3.50, e.g. for bread. Pi is 3.14159! Really? yes. Ok.',
     ['It cost $3.50, e.g. for bread.', 'Pi is 3.14159!', 'Really? yes.',
      'Ok.']),
    ('He served in No. 20 Squadron (see pp. 393-394). "Go." Then St. Louis.',
     ['He served in No. 20 Squadron (see pp. 393-394).', '"Go."',
      'Then St. Louis.']),
    ('The actor . He had a role . ', ['The actor .', 'He had a role .']),
    ('  First line\nsecond line without stop\n\n Third.  ',
     ['First line', 'second line without stop', 'Third.']),
    ('Born 1990. 2001 was next... Wait.',
     ['Born 1990.', '2001 was next...', 'Wait.']),
    ('', []),
    ('   \n ', []),
])
def test_split_sentences(text, expected):
  assert _sentences(text) == expected


@pytest.mark.shared_data
def test_split_sentences_covers_text(shared_data):
  docs = documents.read_jsonl(shared_data / 'squad_open/corpus.jsonl')
  num_sentences = 0
  for doc in docs:
    text = doc['text']
    spans = documents.split_sentences(text)
    num_sentences += len(spans)
    previous_end = 0
    for start, end in spans:
      assert previous_end <= start < end
      assert text[previous_end:start].strip() == ''  # only whitespace between
      assert text[start:end] == text[start:end].strip()
      previous_end = end
    assert text[previous_end:].strip() == ''
  assert 8_000 < num_sentences < 14_000  # about 5 sentences a paragraph
