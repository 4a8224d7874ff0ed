"""SentencePiece tokenizer: special ids, round trips, loading errors."""
import io

import pytest
import sentencepiece as spm

from realm_jax import documents
from realm_jax import synthetic_corpus
from realm_jax import tokenization


def _sentences(num_docs=300):
  for doc in synthetic_corpus.generate_documents(num_docs, seed=1):
    yield doc['title']
    for start, end in documents.split_sentences(doc['text']):
      yield doc['text'][start:end]


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'uncased.model'
  return tokenization.train_sentencepiece(_sentences(), path, vocab_size=500)


def test_special_ids(tokenizer):
  assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id,
          tokenizer.sep_id, tokenizer.mask_id) == (0, 1, 2, 3, 4)
  assert [tokenizer.id_to_token(i) for i in range(5)] == [
      '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  # Control symbols never come out of text.
  ids = tokenizer.encode('[CLS] a [MASK] b [SEP] [PAD]')
  assert not set(ids) & {0, 2, 3, 4}


def test_vocab_limit_is_soft(tokenizer, tmp_path):
  assert tokenizer.vocab_size == 500
  # Far more pieces than 50 short articles hold: a smaller vocab, no error.
  tok = tokenization.train_sentencepiece(_sentences(50), tmp_path / 'x.model',
                                         vocab_size=30522)
  assert 5 < tok.vocab_size < 30522


def test_uncased_round_trip(tokenizer):
  text = 'The Velthota University was founded in 1881.'
  ids = tokenizer.encode(text)
  assert all(isinstance(i, int) for i in ids)
  assert tokenizer.decode(ids) == text.lower()
  assert tokenizer.encode(text.upper()) == ids


def test_cased_round_trip(tmp_path):
  tok = tokenization.train_sentencepiece(
      _sentences(100), tmp_path / 'cased.model', vocab_size=300,
      lowercase=False)
  text = 'The Velthota University was founded in 1881.'
  assert tok.decode(tok.encode(text)) == text
  assert tok.encode(text) != tok.encode(text.lower())


def test_encode_batch_matches_encode(tokenizer):
  texts = [s for _, s in zip(range(200), _sentences())] + ['', 'x']
  assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_unknown_characters_map_to_unk(tokenizer):
  assert tokenizer.unk_id in tokenizer.encode('杜甫')


def test_load_tokenizer(tokenizer, tmp_path):
  loaded = tokenization.load_tokenizer(tokenizer.path)
  assert loaded.encode('born in 1779') == tokenizer.encode('born in 1779')
  other = tmp_path / 'vocab.txt'
  other.write_text('[PAD]\n')
  with pytest.raises(ValueError, match=str(other)):
    tokenization.load_tokenizer(other)


def test_model_without_special_pieces_is_rejected(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(  # SentencePiece defaults: <unk> <s> </s>
      sentence_iterator=_sentences(50), model_writer=model, vocab_size=100,
      hard_vocab_limit=False, minloglevel=2)
  path = tmp_path / 'plain.model'
  path.write_bytes(model.getvalue())
  with pytest.raises(ValueError, match=rf"{path}: id 0 is '<unk>'.*'\[PAD\]'"):
    tokenization.load_tokenizer(path)


def test_encode_batch_with_offsets(tokenizer):
  texts = ['Kalo was born on 12 October 1824.', '  Velthota   University ',
           'Café Zürich', '']
  encoded = tokenizer.encode_batch_with_offsets(texts)
  assert [ids for ids, _ in encoded] == tokenizer.encode_batch(texts)
  for text, (ids, spans) in zip(texts, encoded):
    assert len(spans) == len(ids)
    assert all(a <= b for a, b in spans)
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)
    for token_id, (start, end) in zip(ids, spans):
      # Each piece covers its own text, without the whitespace before it.
      assert not text[start:end].startswith(' ')
      if token_id != tokenizer.unk_id:
        assert (tokenizer.id_to_token(token_id).lstrip('▁')
                == text[start:end].lower())
  ids, spans = encoded[1]
  # The pieces of 'University' span exactly its characters.
  covered = [i for i, (a, b) in enumerate(spans) if a >= 13 and b <= 23]
  assert tokenizer.decode([ids[i] for i in covered]) == 'university'
