"""Salient spans: the named entities and dates REALM masks in pre-training.

REALM annotated its corpus offline with a BERT tagger trained on CoNLL-2003
and a date regex (paper §3.4); neither was released. This module has a
download-free stand-in (`DateAnnotator` + `EntityAnnotator`), an adapter for
spaCy's NER, and `load_annotator` to pick one, or a user's own, by name.

An annotator maps a text to the character spans (start, end) of its salient
spans, sorted and non-overlapping.
"""
from collections.abc import Callable, Sequence
import importlib
import re
from typing import Protocol

from realm_jax import documents

Span = tuple[int, int]


class Annotator(Protocol):

  def __call__(self, text: str) -> list[Span]: ...


_MONTHS = ('January', 'February', 'March', 'April', 'May', 'June', 'July',
           'August', 'September', 'October', 'November', 'December')
_MONTH = ('(?:' + '|'.join(_MONTHS)
          + r'|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?)')
_DAY = r'(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?'
# 1000-2099: most other four-digit numbers (counts, amounts) fall outside.
_YEAR = r'(?:1\d{3}|20\d{2})(?:\s(?:AD|BC|BCE|CE)\b)?'
# Not inside a longer number or word, not an amount ("$1999", "1999%").
_BEFORE = r'(?<![\w$£€¥.,])'
_AFTER = r'(?![\w%]|[.,]\d)'


class DateAnnotator:
  """Dates by regular expression, the longest form that matches.

  Full dates ("12 October 1824", "October 12, 1824", "2016-02-07"), day and
  month ("12 October", "October 12"), month and year ("March 1990"), decades
  ("the 1990s" -> "1990s": the article is not masked) and years 1000-2099
  with an optional era ("1066", "1066 AD"). A month name alone is no date.
  """

  name = 'dates'

  _PATTERN = re.compile(_BEFORE + '(?:' + '|'.join([
      rf'{_DAY}\s{_MONTH},?\s{_YEAR}',
      rf'{_MONTH}\s{_DAY},?\s{_YEAR}',
      r'(?:1\d{3}|20\d{2})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])',
      rf'{_MONTH},?\s{_YEAR}',
      rf'{_DAY}\s{_MONTH}',
      rf'{_MONTH}\s{_DAY}',
      r'1\d{2}0s|20\d0s',
      _YEAR,
  ]) + ')' + _AFTER)

  def __call__(self, text: str) -> list[Span]:
    return [match.span() for match in self._PATTERN.finditer(text)]


# Capitalised words that are not names, at least not alone: function words
# that start sentences, pronouns, titles, months and days. They are trimmed
# from both ends of a run of capitalised words ("In Kalo" -> "Kalo").
_NON_ENTITIES = frozenset("""
    a an the this that these those it its he she they we i you his her their
    our my your him them us me who whom whose which what when where why how
    in on at from for by with after before during since until to of into
    over under about as and but or nor so yet if then than though although
    while because however also there here some many most several few all
    both each every other another such no not none one two three any born
    mr mrs ms dr prof sir
    monday tuesday wednesday thursday friday saturday sunday
    """.split()) | {month.lower() for month in _MONTHS}
# Lower-case words that may join capitalised words into one name: "University
# of Kalo", "Leonardo da Vinci", "Ludwig van Beethoven", "Alexander the Great".
_CONNECTORS = frozenset(
    'of the de del della der den di da du la le van von y &'.split())
# Words, keeping hyphens, apostrophes and dotted acronyms ("U.S.") whole; a
# capitalised abbreviation or initial keeps its period when a capitalised
# word follows ("J. R. R. Tolkien", "St. Louis").
_WORD = re.compile(r"(?:[^\W\d_]\.){2,}|[A-Z][a-z]{0,2}\.(?=\s+[A-Z])"
                   r"|[^\W_]+(?:['’\-][^\W_]+)*|&")
_POSSESSIVE = re.compile(r"['’]s$")


def _is_capitalised(word: str) -> bool:
  return word[0].isupper()


def _is_acronym(word: str) -> bool:
  letters = word.replace('.', '')
  return len(letters) >= 2 and letters.isalpha() and letters.isupper()


class EntityAnnotator:
  """Named entities as runs of capitalised words, a rule of thumb.

  A run is capitalised words separated by single spaces, or by up to two
  connectors ("of", "the", "van", ...) between capitalised words; a run never
  crosses a sentence boundary (documents.split_sentences). Non-entity words
  (pronouns, months, function words) are trimmed from its ends and a
  possessive "'s" from its last word. Every sentence starts with a capital,
  so a one-word run at the start of a sentence is kept only if it is an
  acronym ("NASA") or the same word is part of another name the text keeps
  ("Smith was born ... Later, John Smith ...").
  """

  name = 'entities'

  def __call__(self, text: str) -> list[Span]:
    runs, initial = [], []
    for start, end in documents.split_sentences(text):
      words = list(_WORD.finditer(text, start, end))
      for run in self._runs(text, words):
        first_word = run[0] == words[0].start()
        (initial if first_word and len(run[2]) == 1 else runs).append(run)
    mid_sentence = {word for _, _, run_words in runs for word in run_words}
    runs += [run for run in initial
             if _is_acronym(run[2][0]) or run[2][0] in mid_sentence]
    return sorted((start, end) for start, end, _ in runs)

  def _runs(self, text: str, words: Sequence[re.Match[str]]):
    """(start, end, words) of every capitalised run among a sentence's words."""
    i = 0
    while i < len(words):
      if not _is_capitalised(words[i].group()):
        i += 1
        continue
      last = i
      j = i + 1
      while j < len(words):
        if text[words[j - 1].end():words[j].start()] != ' ':
          break
        word = words[j].group()
        if _is_capitalised(word):
          last = j
        elif word not in _CONNECTORS or j - last > 2:
          break
        j += 1
      if run := self._trimmed(text, words[i:last + 1]):
        yield run
      i = last + 1

  def _trimmed(self, text: str, words: Sequence[re.Match[str]]):
    def is_entity_word(m):
      return m.group().rstrip('.').lower() not in _NON_ENTITIES
    while words and not is_entity_word(words[0]):
      words = words[1:]
    while words and not is_entity_word(words[-1]):
      words = words[:-1]
    # After trimming, connectors may end up at the edges ("the"): drop them.
    while words and not _is_capitalised(words[0].group()):
      words = words[1:]
    if not words:
      return None
    end = words[-1].end()
    if possessive := _POSSESSIVE.search(words[-1].group()):
      end -= len(possessive.group())
    return (words[0].start(), end,
            tuple(m.group() for m in words))


class SalientSpanAnnotator:
  """Merges annotators; on overlap, the earlier annotator in the list wins.

  A priority order rather than longest-first: `load_annotator('builtin')`
  puts dates first, as the entity rule of thumb is the less precise of the
  two and a date is a complete salient span on its own.
  """

  def __init__(self, annotators: Sequence[Annotator], name: str | None = None):
    self.annotators = list(annotators)
    self.name = name or '+'.join(_name_of(a) for a in self.annotators)

  def __call__(self, text: str) -> list[Span]:
    kept = []
    for annotator in self.annotators:
      accepted = list(kept)
      for start, end in annotator(text):
        if not any(start < e and s < end for s, e in kept):
          accepted.append((start, end))
      kept = accepted
    return sorted(kept)


# spaCy's labels for the kinds of entities the CoNLL-2003 tagger finds (the
# OntoNotes ones and CoNLL's own); dates come from DateAnnotator, as in REALM.
SPACY_LABELS = frozenset(('PERSON', 'PER', 'NORP', 'FAC', 'ORG', 'GPE', 'LOC',
                          'PRODUCT', 'EVENT', 'WORK_OF_ART', 'LAW', 'LANGUAGE',
                          'MISC'))


class SpacyAnnotator:
  """Named entities from a spaCy pipeline (spaCy is not a dependency)."""

  def __init__(self, model: str, labels: frozenset[str] = SPACY_LABELS):
    try:
      import spacy  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
          f'annotator "spacy:{model}" needs spaCy, which realm_jax does not '
          f'install: pip install spacy && python -m spacy download {model}'
      ) from None
    try:
      self._nlp = spacy.load(model, disable=['lemmatizer', 'parser'])
    except OSError as e:
      raise ValueError(f'annotator "spacy:{model}": cannot load the spaCy '
                       f'model ({e}); python -m spacy download {model}'
                       ) from None
    self._labels = labels
    self.name = f'spacy:{model}'

  def __call__(self, text: str) -> list[Span]:
    return [(e.start_char, e.end_char) for e in self._nlp(text).ents
            if e.label_ in self._labels]


def _name_of(annotator: Annotator) -> str:
  return getattr(annotator, 'name', None) or getattr(
      annotator, '__qualname__', type(annotator).__qualname__)


def load_annotator(spec: str) -> Annotator:
  """An annotator by name.

  'builtin'           dates, then entities by rule of thumb (no download);
  'spacy:<model>'     dates, then the entities of a spaCy model, e.g.
                      'spacy:en_core_web_sm' (needs spaCy and the model);
  'module.path:name'  your own: `name` in `module.path`, any callable
                      text -> sorted, non-overlapping character spans.
  """
  if spec == 'builtin':
    return SalientSpanAnnotator([DateAnnotator(), EntityAnnotator()],
                                name='builtin')
  kind, colon, rest = spec.partition(':')
  if not colon or not kind or not rest:
    raise ValueError(f'annotator {spec!r}: expected "builtin", '
                     '"spacy:<model>" or "module.path:callable"')
  if kind == 'spacy':
    return SalientSpanAnnotator([DateAnnotator(), SpacyAnnotator(rest)],
                                name=spec)
  try:
    module = importlib.import_module(kind)
  except ImportError as e:
    raise ValueError(f'annotator {spec!r}: cannot import {kind!r} ({e})'
                     ) from None
  annotator: Callable[[str], list[Span]] | None = getattr(module, rest, None)
  if not callable(annotator):
    raise ValueError(f'annotator {spec!r}: {kind} has no callable {rest!r}')
  return SalientSpanAnnotator([annotator], name=spec)
