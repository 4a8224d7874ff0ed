"""Block packing, the corpus files, and the Corpus reader."""
import hashlib
import random

import numpy as np
import pytest

from realm_jax import corpus
from realm_jax import documents
from realm_jax import synthetic_corpus
from realm_jax import tokenization

BLOCK_LEN = 288


def _doc(num_sentences):
  """A document whose sentences are 'S0.', 'S1.', ... one space apart."""
  text = ' '.join(f'S{i}.' for i in range(num_sentences))
  return {'doc_id': 'd', 'title': 'T', 'text': text}


def _pack(sentence_lengths, title_len=5, block_len=BLOCK_LEN,
          max_title_len=32):
  """Packs fake word pieces: sentence i is `length` copies of id 100 + i."""
  doc = _doc(len(sentence_lengths))
  spans = documents.split_sentences(doc['text'])
  assert len(spans) == len(sentence_lengths)
  ids = [[100 + i] * n for i, n in enumerate(sentence_lengths)]
  return corpus.pack_document(doc, [7] * title_len, spans, ids, block_len,
                              max_title_len)


def _orqa_groups(title_len, sentence_lengths, block_len):
  """ORQA's wiki_preprocessor.generate_sentences, transcribed."""
  count, current = 0, []
  for index, n in enumerate(sentence_lengths):
    if 3 + title_len + count + n <= block_len:
      count += n
      current.append(index)
    else:
      yield current
      count, current = n, [index]
  if current:
    yield current


def test_block_filled_exactly_to_block_len():
  # 3 + 5 (title) + 100 + 180 = 288: both fit; the next sentence overflows.
  blocks = _pack([100, 180, 1])
  assert [b.text for b in blocks] == ['S0. S1.', 'S2.']
  assert 3 + len(blocks[0].title_ids) + len(blocks[0].body_ids) == BLOCK_LEN
  assert blocks[0].sentence_bounds == [(0, 100), (100, 280)]
  assert blocks[1].sentence_bounds == [(0, 1)]
  # One more word piece and the second sentence starts a new block.
  assert [b.text for b in _pack([100, 181, 1])] == ['S0.', 'S1. S2.']


def test_over_long_sentence_is_its_own_truncated_block():
  blocks = _pack([10, 400, 10])
  assert [b.text for b in blocks] == ['S0.', 'S1.', 'S2.']
  assert [b.truncated for b in blocks] == [False, True, False]
  assert blocks[1].body_ids == [101] * 280
  assert blocks[1].sentence_bounds == [(0, 280)]


def test_title_is_truncated():
  blocks = _pack([250, 30], title_len=50, max_title_len=32)
  assert [len(b.title_ids) for b in blocks] == [32, 32]
  # 3 + 32 + 250 + 30 > 288, so the title budget decides the split.
  assert [b.text for b in blocks] == ['S0.', 'S1.']
  assert all(b.title == 'T' for b in blocks)  # the text title stays whole


def test_packing_matches_orqa():
  rng = random.Random(0)
  for _ in range(200):
    lengths = [rng.choice([1, 5, 40, 120, 250, 300]) for _ in
               range(rng.randint(1, 12))]
    title_len = rng.randint(0, 40)
    blocks = _pack(lengths, title_len=title_len)
    expected = [g for g in _orqa_groups(min(title_len, 32), lengths,
                                        BLOCK_LEN) if g]
    assert [b.text for b in blocks] == [' '.join(f'S{i}.' for i in g)
                                        for g in expected]
    for block in blocks:
      assert 3 + len(block.title_ids) + len(block.body_ids) <= BLOCK_LEN


def test_uid():
  # REALM: sha1("{title} <sep> {body}").
  assert corpus.document_uid('Paris', 'Paris is a city.') == (
      '627d9d966195370ef41ed98c5e5d6388fbb7d883')
  uid = corpus.document_uid('Paris', 'Paris is a city.')
  assert corpus.uid_to_int64(uid) == 0x627d9d966195370e
  assert corpus.uid_to_int64('f' * 40) == -1  # signed int64


def test_token_dtype():
  assert corpus.token_dtype(30522) == np.uint16
  assert corpus.token_dtype(65535) == np.uint16
  assert corpus.token_dtype(250_000) == np.int32


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  docs = synthetic_corpus.generate_documents(400, seed=3)
  sentences = (doc['text'][a:b] for doc in docs
               for a, b in documents.split_sentences(doc['text']))
  return tokenization.train_sentencepiece(
      sentences, tmp_path_factory.mktemp('tok') / 'tok.model', vocab_size=600)


def test_tokenize_and_pack_keeps_every_sentence(tokenizer):
  docs = list(synthetic_corpus.generate_documents(300, seed=3))
  all_blocks = corpus.tokenize_and_pack(docs, tokenizer, 64, 8)
  assert len(all_blocks) == len(docs)
  assert sum(map(len, all_blocks)) > len(docs)  # 64 forces splits
  for doc, blocks in zip(docs, all_blocks):
    spans = documents.split_sentences(doc['text'])
    sentences = [doc['text'][a:b] for a, b in spans]
    assert ' '.join(b.text for b in blocks) == ' '.join(sentences)
    body = [i for b in blocks for i in b.body_ids]
    if not any(b.truncated for b in blocks):
      assert body == [i for s in tokenizer.encode_batch(sentences) for i in s]
    for block in blocks:
      assert block.text in doc['text']
      assert block.title_ids == tokenizer.encode(doc['title'])[:8]
      assert 3 + len(block.title_ids) + len(block.body_ids) <= 64
      assert block.sentence_bounds[0][0] == 0
      assert block.sentence_bounds[-1][1] == len(block.body_ids)


def _write(tmp_path, tokenizer, docs, shard_size=50, **kwargs):
  return corpus.write_corpus(
      tmp_path / 'corpus', docs, tokenizer, tokenizer.path,
      block_len=BLOCK_LEN, max_title_len=32, shard_size=shard_size,
      source={'format': 'test'}, **kwargs)


@pytest.fixture(scope='module')
def written(tmp_path_factory, tokenizer):
  tmp_path = tmp_path_factory.mktemp('corpus')
  docs = list(synthetic_corpus.generate_documents(150, seed=4))
  fingerprint = hashlib.sha256(b'input')
  manifest = _write(tmp_path, tokenizer, docs, fingerprint=fingerprint)
  return docs, manifest, corpus.Corpus(tmp_path / 'corpus')


def test_manifest(written, tokenizer):
  docs, manifest, reader = written
  assert manifest == reader.manifest
  assert manifest['num_documents'] == len(docs)
  assert manifest['num_blocks'] == len(reader) >= len(docs)
  assert [s['num_blocks'] for s in manifest['shards'][:-1]] == [50] * (
      len(manifest['shards']) - 1)
  assert manifest['dtype'] == 'uint16'
  assert manifest['tokenizer']['vocab_size'] == tokenizer.vocab_size
  assert manifest['tokenizer']['sha256'] == hashlib.sha256(
      tokenizer.path.read_bytes()).hexdigest()
  assert manifest['source'] == {
      'format': 'test',
      'fingerprint': 'sha256:' + hashlib.sha256(b'input').hexdigest()}
  assert 0 < manifest['stats']['mean_body_len'] <= manifest['stats'][
      'max_body_len'] <= BLOCK_LEN - 3
  assert reader.shard_ranges[0] == (0, 50)
  assert reader.shard_ranges[-1][1] == len(reader)
  assert reader.tokenizer.encode('Paris') == tokenizer.encode('Paris')


def test_blocks(written, tokenizer):
  _, _, reader = written
  ids = np.array([len(reader) - 1, 0, 51, 49, 50, 0])  # across shards
  batch = reader.blocks(ids)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      'token_ids': ((6, BLOCK_LEN), np.int32),
      'segment_ids': ((6, BLOCK_LEN), np.int32),
      'input_mask': ((6, BLOCK_LEN), np.int32),
      'title_len': ((6,), np.int32), 'body_len': ((6,), np.int32)}
  records = reader.records(ids)
  for row, record in enumerate(records):
    t, b = batch['title_len'][row], batch['body_len'][row]
    title = tokenizer.encode(record['title'])[:32]
    tokens = batch['token_ids'][row]
    assert tokens[:t + 2].tolist() == [2, *title, 3]
    body = reader.body_tokens(ids[row])
    assert tokens[t + 2:t + 2 + b].tolist() == body.tolist()
    assert tokens[t + 2 + b] == 3
    assert (tokens[t + 3 + b:] == 0).all()
    assert batch['segment_ids'][row].tolist() == (
        [0] * (t + 2) + [1] * (b + 1) + [0] * (BLOCK_LEN - t - b - 3))
    assert batch['input_mask'][row].tolist() == (
        [1] * (t + b + 3) + [0] * (BLOCK_LEN - t - b - 3))
  single = reader.blocks([51])
  assert (single['token_ids'][0] == batch['token_ids'][2]).all()


def test_records_uids_and_sentences(written, tokenizer):
  docs, _, reader = written
  ids = np.arange(len(reader))
  records = reader.records(ids)
  uids = [r['uid'] for r in records]
  assert uids == [corpus.document_uid(r['title'], r['text']) for r in records]
  assert reader.uid64(ids).tolist() == [corpus.uid_to_int64(u) for u in uids]
  # Blocks come in document order; their texts rebuild every document.
  by_doc = {}
  for record in records:
    by_doc.setdefault(record['doc_id'], []).append(record['text'])
  assert list(by_doc) == [doc['doc_id'] for doc in docs]
  for doc in docs:
    sentences = [doc['text'][a:b] for a, b in
                 documents.split_sentences(doc['text'])]
    assert ' '.join(by_doc[doc['doc_id']]) == ' '.join(sentences)
  for i in (0, 50, len(reader) - 1):
    bounds = reader.sentence_bounds(i)
    assert bounds.dtype == np.int32 and bounds.shape[1] == 2
    assert bounds[0, 0] == 0 and bounds[-1, 1] == len(reader.body_tokens(i))
    assert (bounds[1:, 0] == bounds[:-1, 1]).all()
    text = records[i]['text']
    first_sentence = text[slice(*documents.split_sentences(text)[0])]
    assert reader.body_tokens(i)[bounds[0, 0]:bounds[0, 1]].tolist() == (
        tokenizer.encode(first_sentence))


def test_blocks_rejects_bad_ids(written):
  _, _, reader = written
  with pytest.raises(IndexError):
    reader.blocks([len(reader)])
  with pytest.raises(IndexError):
    reader.records([-1])


def test_existing_corpus_is_kept_unless_overwrite(tmp_path, tokenizer):
  docs = list(synthetic_corpus.generate_documents(20, seed=5))
  _write(tmp_path, tokenizer, docs)
  with pytest.raises(FileExistsError, match='overwrite'):
    _write(tmp_path, tokenizer, docs[:5])
  assert corpus.Corpus(tmp_path / 'corpus').manifest['num_documents'] == 20
  _write(tmp_path, tokenizer, docs[:5], overwrite=True)
  assert corpus.Corpus(tmp_path / 'corpus').manifest['num_documents'] == 5
  assert sorted(p.name for p in tmp_path.iterdir()) == ['corpus']


def test_failure_leaves_no_corpus(tmp_path, tokenizer):
  def docs():  # fails after several shards are written
    yield from synthetic_corpus.generate_documents(300, seed=6)
    raise RuntimeError('input broke')
  with pytest.raises(RuntimeError, match='input broke'):
    _write(tmp_path, tokenizer, docs(), shard_size=20, batch_size=16)
  assert not list(tmp_path.iterdir())


def test_leftover_temporary_folder_is_replaced(tmp_path, tokenizer):
  (tmp_path / 'corpus.tmp').mkdir()
  (tmp_path / 'corpus.tmp' / 'blocks-00000.tokens.npy').write_text('junk')
  _write(tmp_path, tokenizer, synthetic_corpus.generate_documents(10, seed=7))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['corpus']
  assert len(corpus.Corpus(tmp_path / 'corpus')) >= 10


def test_corrupt_corpus_errors_name_the_file(tmp_path, tokenizer):
  _write(tmp_path, tokenizer, synthetic_corpus.generate_documents(120, seed=8))
  path = tmp_path / 'corpus'
  manifest_file = path / 'manifest.json'
  manifest = manifest_file.read_text()
  manifest_file.write_text(manifest.replace('"num_blocks": 50',
                                            '"num_blocks": 51', 1))
  with pytest.raises(corpus.CorpusError,
                     match=r'blocks-00000.tokens.npy: shape \(50, 288\), '
                     r'expected \(51, 288\)'):
    corpus.Corpus(path)
  manifest_file.write_text(manifest)
  body_len = path / 'blocks-00001.body_len.npy'
  np.save(body_len, np.zeros([3], np.int32))
  with pytest.raises(corpus.CorpusError, match=f'{body_len}: shape'):
    corpus.Corpus(path)
  body_len.unlink()
  with pytest.raises(corpus.CorpusError, match=f'{body_len} is missing'):
    corpus.Corpus(path)
  manifest_file.unlink()
  with pytest.raises(corpus.CorpusError, match='manifest.json not found'):
    corpus.Corpus(path)


def test_local_copy_of_a_remote_corpus(tiny_corpus_workdir, tmp_path,
                                       monkeypatch):
  """gs:// corpora are copied once into the local cache (memory maps need
  local files); exercised here with a local source path."""
  monkeypatch.setenv('REALM_CACHE', str(tmp_path / 'cache'))
  copy = corpus.local_copy(tiny_corpus_workdir / 'corpus')
  assert copy.parent == tmp_path / 'cache'
  assert corpus.local_copy(tiny_corpus_workdir / 'corpus') == copy  # cached
  original = corpus.Corpus(tiny_corpus_workdir / 'corpus')
  copied = corpus.Corpus(copy)
  ids = np.arange(len(original))
  for key, value in original.blocks(ids).items():
    np.testing.assert_array_equal(copied.blocks(ids)[key], value)
  assert copied.records([0, 5]) == original.records([0, 5])
