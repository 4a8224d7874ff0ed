"""Answer matching for Open-QA: exact match, "has answer", gold spans.

ORQA's rules (orqa/utils/eval_utils.py, orqa/ops/orqa_ops.cc):
- exact match: SQuAD normalisation (NFD, lowercase, no punctuation, no
  a/an/the, single spaces), max over the references; CuratedTrec's answers
  are regular expressions, matched with `re.match` (anchored at the start
  only) ignoring case;
- a retrieved block "has the answer" when an answer string occurs in its
  text (raw, case-sensitive substring; a regex: `re.search`);
- the reader's gold spans are every occurrence of an answer's word pieces
  among the block's word pieces.
"""
from collections.abc import Sequence
import re
import string
import unicodedata

import numpy as np

_ARTICLES = re.compile(r'\b(a|an|the)\b', re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
_REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE


def normalize_answer(text: str) -> str:
  """SQuAD's normalisation, after NFD as ORQA (eval_utils.normalize_answer)."""
  text = unicodedata.normalize('NFD', text).lower()
  text = ''.join(c for c in text if c not in _PUNCTUATION)
  return ' '.join(_ARTICLES.sub(' ', text).split())


def compile_regexes(answers: Sequence[str], where: str) -> list[re.Pattern]:
  """CuratedTrec answers as compiled patterns; a bad one names `where`."""
  patterns = []
  for answer in answers:
    try:
      patterns.append(re.compile(answer, _REGEX_FLAGS))
    except re.error as e:
      raise ValueError(f'{where}: answer {answer!r} is not a regular '
                       f'expression: {e}') from e
  return patterns


def is_correct(prediction: str, answers: Sequence[str],
               is_regex: bool = False) -> bool:
  """Exact match against any reference (ORQA eval_utils.is_correct)."""
  if is_regex:
    return any(re.match(answer, prediction, _REGEX_FLAGS)
               for answer in answers)
  prediction = normalize_answer(prediction)
  return any(normalize_answer(answer) == prediction for answer in answers)


def has_answer(text: str, answers: Sequence[str],
               is_regex: bool = False) -> bool:
  """Whether a block's text contains an answer (ORQA's HasAnswer op)."""
  if is_regex:
    return any(re.search(answer, text, _REGEX_FLAGS) for answer in answers)
  return any(answer and answer in text for answer in answers)


def gold_spans(tokens: np.ndarray, answer_ids: Sequence[Sequence[int]],
               max_width: int) -> list[tuple[int, int]]:
  """(start, end) inclusive of every occurrence of an answer's ids in
  `tokens` that is at most max_width pieces long."""
  spans = set()
  tokens = np.asarray(tokens)
  for ids in answer_ids:
    width = len(ids)
    if not 1 <= width <= max_width or width > len(tokens):
      continue
    windows = np.lib.stride_tricks.sliding_window_view(tokens, width)
    for start in np.flatnonzero((windows == np.asarray(ids)).all(axis=1)):
      spans.add((int(start), int(start) + width - 1))
  return sorted(spans)


def original_text(predicted: str, block_text: str) -> str:
  """The substring of `block_text` that the decoded word pieces came from.

  Word pieces lose case, accents and spacing; as SQuAD's get_final_text,
  compare both with whitespace removed and lowercased, and map the match
  back. Returns `predicted` itself when it cannot be found.
  """
  kept = [(i, c.lower()) for i, c in enumerate(block_text)
          if not c.isspace()]
  haystack = ''.join(c for _, c in kept)
  needle = ''.join(predicted.lower().split())
  if not needle or len(haystack) != len(kept):
    return predicted
  at = haystack.find(needle)
  if at < 0:
    return predicted
  return block_text[kept[at][0]:kept[at + len(needle) - 1][0] + 1]
