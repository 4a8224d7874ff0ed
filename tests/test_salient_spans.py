"""Salient span annotators: dates, entities, the merger, load_annotator."""
import sys
import types

import pytest

from realm_jax.inputs import salient_spans


def _texts(annotator, text):
  spans = annotator(text)
  assert spans == sorted(spans)
  assert all(e <= s for (_, e), (s, _) in zip(spans, spans[1:]))
  return [text[start:end] for start, end in spans]


@pytest.mark.parametrize('text, expected', [
    ('Renvel was born on 12 October 1824 in Kalo.', ['12 October 1824']),
    ('The game was played on February 7, 2016, at the stadium.',
     ['February 7, 2016']),
    ('It opened on 1st May 1990 and closed in March 1999.',
     ['1st May 1990', 'March 1999']),
    ('On 14 July the town fell; by Sept. 3 it was free.',
     ['14 July', 'Sept. 3']),
    ('Music of the 1990s and the 1800s.', ['1990s', '1800s']),
    ('The battle of 1066 AD ended an era (1000-1100).',
     ['1066 AD', '1000', '1100']),
    ('Published 2016-02-07 in volume 12.', ['2016-02-07']),
    # Counts, amounts and out-of-range numbers are not years.
    ('It cost $1999, then 2050% more; 1,500 people, 12000 cars, 3.1415 m, '
     'and 2150 or 0999 others.', []),
    # A month alone, or "may" the verb, is no date.
    ('In May, rain may fall for 20 days.', []),
])
def test_dates(text, expected):
  assert _texts(salient_spans.DateAnnotator(), text) == expected


@pytest.mark.parametrize('text, expected', [
    ('In 1881, Renvel founded the Velthota University of Kalo in Dorta.',
     ['Renvel', 'Velthota University of Kalo', 'Dorta']),
    ('Leonardo da Vinci met Ludwig van Beethoven and Alexander the Great.',
     ['Leonardo da Vinci', 'Ludwig van Beethoven', 'Alexander the Great']),
    ('He met J. R. R. Tolkien in St. Louis, U.S. on a Monday.',
     ['J. R. R. Tolkien', 'St. Louis', 'U.S.']),
    # A possessive is not part of the name, unless inside it.
    ("The mayor of Kalo's port opened Levi's Stadium.",
     ['Kalo', "Levi's Stadium"]),
    # Sentence-initial words: dropped alone, kept in a longer run, kept when
    # the word is capitalised mid-sentence elsewhere, kept as an acronym.
    ('Denver won. Later it lost to Carolina.', ['Carolina']),
    ('Denver Broncos won. Smith scored. Then Smith left.',
     ['Denver Broncos', 'Smith', 'Smith']),
    ('NASA launched it. The NFL agreed.', ['NASA', 'NFL']),
    # Pronouns, function words and months are no entities; connectors only
    # join capitalised words.
    ('I think that In October They left for the city of lights.', []),
    ('The Bank of the North and the Bank of', ['Bank of the North', 'Bank']),
    # Runs stop at punctuation and never cross sentences.
    ('They visited Kalo, Dorta (Velthota) and "Mira Sol".\nBrin Tam left.',
     ['Kalo', 'Dorta', 'Velthota', 'Mira Sol', 'Brin Tam']),
])
def test_entities(text, expected):
  assert _texts(salient_spans.EntityAnnotator(), text) == expected


def test_builtin_prefers_dates():
  annotator = salient_spans.load_annotator('builtin')
  assert annotator.name == 'builtin'
  text = ('The Super Bowl was played on February 7, 2016, at Levi\'s Stadium '
          'in Santa Clara, California.')
  assert _texts(annotator, text) == [
      'Super Bowl', 'February 7, 2016', "Levi's Stadium", 'Santa Clara',
      'California']


def test_merger_resolves_overlaps_by_priority():
  def wide(text):
    del text
    return [(0, 10), (20, 30)]

  def narrow(text):
    del text
    return [(2, 4), (10, 12), (25, 40), (40, 45)]

  text = 'x' * 50
  assert salient_spans.SalientSpanAnnotator([wide, narrow])(text) == [
      (0, 10), (10, 12), (20, 30), (40, 45)]
  assert salient_spans.SalientSpanAnnotator([narrow, wide])(text) == [
      (2, 4), (10, 12), (25, 40), (40, 45)]


def annotate_digits(text):
  """A user's own annotator, loaded by load_annotator below."""
  return [(i, i + 1) for i, c in enumerate(text) if c.isdigit()]


def test_load_user_annotator():
  annotator = salient_spans.load_annotator(f'{__name__}:annotate_digits')
  assert annotator.name == f'{__name__}:annotate_digits'
  assert annotator('a1b22') == [(1, 2), (3, 4), (4, 5)]


@pytest.mark.parametrize('spec, message', [
    ('nonsense', 'expected "builtin"'),
    ('spacy:', 'expected "builtin"'),
    ('no_such_module_xyz:f', "cannot import 'no_such_module_xyz'"),
    (f'{__name__}:missing', "no callable 'missing'"),
    (f'{__name__}:pytest', "no callable 'pytest'"),
])
def test_load_annotator_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    salient_spans.load_annotator(spec)


def test_spacy_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, 'spacy', None)  # import spacy fails
  with pytest.raises(ImportError, match='pip install spacy'):
    salient_spans.load_annotator('spacy:en_core_web_sm')


def _fake_spacy(entities):
  def load(model, disable):
    del disable
    if model != 'en_fake':
      raise OSError(f"[E050] Can't find model '{model}'")
    def nlp(text):
      del text
      return types.SimpleNamespace(ents=[
          types.SimpleNamespace(start_char=s, end_char=e, label_=label)
          for s, e, label in entities])
    return nlp
  return types.SimpleNamespace(load=load)


def test_spacy_entities_and_regex_dates(monkeypatch):
  text = 'Renvel was born on 12 October 1824 in Kalo, aged 3.'
  monkeypatch.setitem(sys.modules, 'spacy', _fake_spacy(
      [(0, 6, 'PERSON'), (19, 34, 'DATE'), (38, 42, 'GPE'),
       (49, 50, 'CARDINAL')]))
  annotator = salient_spans.load_annotator('spacy:en_fake')
  assert annotator.name == 'spacy:en_fake'
  # spaCy's DATE and CARDINAL are ignored; the regex finds the date.
  assert _texts(annotator, text) == ['Renvel', '12 October 1824', 'Kalo']
  with pytest.raises(ValueError, match='spacy download en_other'):
    salient_spans.load_annotator('spacy:en_other')
