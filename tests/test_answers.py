"""Answer matching: SQuAD/ORQA exact match, regexes, has-answer, gold spans."""
import itertools
import re
import string
import unicodedata

import numpy as np
import pytest

from realm_jax import answers


def _squad_normalize(text):
  """SQuAD v1.1's evaluate.py normalize_answer, after ORQA's NFD."""
  text = unicodedata.normalize('NFD', text)
  lower = text.lower()
  no_punc = ''.join(ch for ch in lower if ch not in set(string.punctuation))
  no_articles = re.sub(r'\b(a|an|the)\b', ' ', no_punc)
  return ' '.join(no_articles.split())


@pytest.mark.parametrize('text', [
    'The Denver Broncos!', '  an  apple, a day ', 'Café au lait',
    'theatre THE', "Rock 'n' roll", '1,000,000', 'Ångström (unit)'])
def test_normalize_answer_matches_squad(text):
  assert answers.normalize_answer(text) == _squad_normalize(text)


def test_exact_match():
  assert answers.is_correct('the Denver Broncos.', ['Denver Broncos'])
  assert answers.is_correct('Cafe\u0301', ['Café'])  # NFD on both sides
  assert not answers.is_correct('Denver', ['Denver Broncos'])
  assert answers.is_correct('Carolina', ['Denver Broncos', 'carolina'])
  assert not answers.is_correct('', ['Denver'])


def test_regex_match_is_anchored_at_the_start_only():
  patterns = ['Long Island|New\\s?York', '20\\s?,?\\s?320\\s?f(ee|oo)t']
  assert answers.is_correct('long island, NY', patterns, is_regex=True)
  assert answers.is_correct('NewYork City', patterns, is_regex=True)
  assert answers.is_correct('20,320 feet high', patterns, is_regex=True)
  assert not answers.is_correct('in Long Island', patterns, is_regex=True)


def test_has_answer_is_a_raw_substring_or_a_regex_search():
  text = 'The Denver Broncos won Super Bowl 50.'
  assert answers.has_answer(text, ['Broncos'])
  assert not answers.has_answer(text, ['broncos'])  # case-sensitive, as ORQA
  assert not answers.has_answer(text, [''])
  assert answers.has_answer(text, ['super\\s?bowl'], is_regex=True)
  assert not answers.has_answer(text, ['^Broncos'], is_regex=True)


def test_bad_regex_names_where():
  with pytest.raises(ValueError, match=r'ct\.jsonl:3: answer .*\(abc'):
    answers.compile_regexes(['ok', '(abc'], 'ct.jsonl:3')


def test_gold_spans_match_brute_force():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 4, size=60)
  answer_ids = [[1, 2], [3], [0, 1, 2, 3], [2] * 12, []]
  expected = sorted({
      (s, s + len(a) - 1)
      for a in answer_ids if 1 <= len(a) <= 10
      for s in range(len(tokens) - len(a) + 1)
      if list(tokens[s:s + len(a)]) == a})
  assert expected  # the random tokens do hold some answers
  assert answers.gold_spans(tokens, answer_ids, max_width=10) == expected
  assert answers.gold_spans(tokens, [[1, 2]], max_width=1) == []


@pytest.mark.parametrize('predicted, block, expected', [
    ('denver broncos', 'The Denver  Broncos won.', 'Denver  Broncos'),
    ('doctor - patient', 'a doctor-patient bond', 'doctor-patient'),
    ('u. s.', 'the U.S. army', 'U.S.'),
    ('zebra', 'no such word here', 'zebra'),
])
def test_original_text(predicted, block, expected):
  assert answers.original_text(predicted, block) == expected


def test_original_text_is_a_substring_for_every_span():
  text = 'Super Bowl 50 was an American football game, in 2016 (Feb.)'
  words = text.split()
  for a, b in itertools.combinations(range(len(words) + 1), 2):
    predicted = ' '.join(words[a:b]).lower()
    found = answers.original_text(predicted, text)
    assert found in text and found.lower() == predicted
