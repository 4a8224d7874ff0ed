"""Host-side Open-QA inputs: ORQA's reader layout, gold spans, closed book."""
import numpy as np
import pytest

from realm_jax import corpus as corpus_lib
from realm_jax.inputs import blocks as blocks_lib
from realm_jax.inputs import openqa as openqa_input


@pytest.fixture(scope='module')
def corpus(tiny_corpus_workdir):
  return corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')


def test_question_inputs(corpus):
  tok = corpus.tokenizer
  q = openqa_input.question_inputs(tok, ['who founded it?', 'x ' * 50], 12)
  pieces = tok.encode('who founded it?')
  assert list(q['query_ids'][0, :len(pieces) + 2]) == [
      tok.cls_id, *pieces, tok.sep_id]
  assert q['query_mask'][0].sum() == len(pieces) + 2
  assert q['query_mask'][1].all() and q['query_ids'][1, -1] == tok.sep_id


def test_reader_inputs_are_cls_question_sep_body_sep(corpus):
  tok = corpus.tokenizer
  q = openqa_input.question_inputs(tok, ['where was she born?'], 16)
  question = q['query_ids'][0][q['query_mask'][0] == 1]
  ids = np.array([[0, 5, 7]])
  reader = blocks_lib.reader_inputs(corpus, q['query_ids'], q['query_mask'],
                                    ids, 64)
  for j, block in enumerate(ids[0]):
    body = corpus.body_tokens(block)[:64 - len(question) - 1]
    tokens = reader['reader_ids'][0, j]
    expected = [*question, *body, tok.sep_id]
    assert list(tokens[:len(expected)]) == expected
    assert not tokens[len(expected):].any()
    start, length = reader['body_start'][0, j], reader['body_len'][0, j]
    assert (start, length) == (len(question), len(body))
    assert reader['block_mask'][0, j].sum() == length
    assert reader['block_mask'][0, j, start:start + length].all()
    assert reader['reader_mask'][0, j].sum() == len(expected)
    assert (reader['reader_segments'][0, j, :len(expected)]
            == (np.arange(len(expected)) >= start)).all()


def test_reader_inputs_of_the_null_document_and_a_long_query(corpus):
  tok = corpus.tokenizer
  q = openqa_input.question_inputs(tok, ['where was she born?', 'x ' * 40],
                                   32)
  ids = np.array([[blocks_lib.NULL_BLOCK, 4], [blocks_lib.NULL_BLOCK, 4]])
  reader = blocks_lib.reader_inputs(corpus, q['query_ids'], q['query_mask'],
                                    ids, 24)
  question = q['query_ids'][0][q['query_mask'][0] == 1]
  null = reader['reader_ids'][0, 0]
  assert list(null[:len(question) + 1]) == [*question, tok.sep_id]
  assert not null[len(question) + 1:].any()
  assert reader['block_mask'][0, 0].sum() == 0
  assert reader['body_len'][0, 0] == 0
  # A query longer than the reader allows keeps its [SEP] and one body piece.
  long = reader['reader_ids'][1, 1]
  assert reader['reader_mask'][1, 1].all() and long[-1] == tok.sep_id
  assert long[0] == tok.cls_id and long[21] == tok.sep_id
  assert reader['body_len'][1, 1] == 1
  retriever = blocks_lib.retriever_inputs(corpus, ids)
  np.testing.assert_array_equal(
      retriever['token_ids'][0, 0, :4], [tok.cls_id, tok.sep_id, tok.sep_id, 0])
  np.testing.assert_array_equal(retriever['token_ids'][0, 1],
                                corpus.blocks([4])['token_ids'][0])


def test_gold_spans_are_the_answers_occurrences(corpus):
  block = 3
  record = corpus.records([block])[0]
  # A word of the block's text as the answer, and one absent from it.
  word = record['text'].split()[3].strip('.,')
  examples = [dict(question='q?', answer=[word, 'Zzyzx Qqq'])]
  q = openqa_input.question_inputs(corpus.tokenizer, ['q?'], 8)
  ids = np.array([[block, block + 1]])
  reader = blocks_lib.reader_inputs(corpus, q['query_ids'], q['query_mask'],
                                    ids, 300)
  texts = [[r['text'] for r in corpus.records(ids[0])]]
  gold = openqa_input.gold_span_mask(corpus, examples, ids, texts, reader,
                                     max_span_width=10, regex_answers=False)
  assert gold.shape == (1, 2, 300, 10)
  starts, widths = np.nonzero(gold[0, 0])
  assert len(starts) >= 1
  answer_ids = corpus.tokenizer.encode(word)
  for s, w in zip(starts, widths):
    assert list(reader['reader_ids'][0, 0, s:s + w + 1]) == answer_ids
    assert reader['block_mask'][0, 0, s:s + w + 1].all()
  # Regex answers: what the pattern matches in the text is the answer.
  regex = dict(question='q?', answer=[f'{word[:2]}{word[2:]}|Zzyzx'])
  gold_regex = openqa_input.gold_span_mask(
      corpus, [regex], ids, texts, reader, 10, regex_answers=True)
  assert (gold_regex[0, 0] == gold[0, 0]).all()


def test_answer_strings_of_a_regex():
  example = dict(question='q', answer=['20\\s?,?\\s?32\\d feet', 'Mt\\.?'])
  text = 'It is 20,320 feet tall; Mt. McKinley, or 20 321 feet.'
  assert openqa_input.answer_strings(example, text, True) == [
      '20 321 feet', '20,320 feet', 'Mt.']
  assert openqa_input.answer_strings(example, text, False) == example[
      'answer']


def test_closed_book_inputs(corpus):
  tok = corpus.tokenizer
  inputs = openqa_input.closed_book_inputs(
      tok, ['when was it founded?', 'who?'], 40, 6,
      [['in the year 1642', '1642'], ['a ' * 20]])
  question = [tok.cls_id, *tok.encode('when was it founded?'), tok.sep_id]
  row = inputs['reader_ids'][0]
  assert list(row[:len(question) + 7]) == question + [tok.mask_id] * 6 + [
      tok.sep_id]
  assert list(inputs['answer_positions'][0]) == list(
      range(len(question), len(question) + 6))
  target = tok.encode('1642') + [tok.sep_id]  # the shortest fitting answer
  assert list(inputs['answer_targets'][0, :len(target)]) == target
  assert inputs['answer_weights'][0].sum() == len(target)
  assert inputs['answer_weights'][1].sum() == 0  # no answer fits 5 pieces
