"""Host-side inputs of Open-QA fine-tuning and prediction (ORQA's layout).

Retriever: `[CLS] question [SEP]`. Reader: `[CLS] question [SEP] body [SEP]`
over each of the top blocks (blocks.reader_inputs), and, for training, a
mask of the gold spans: every occurrence of an answer's word pieces in the
body. Closed book: `[CLS] question [SEP] [MASK]... [SEP]`.
"""
from collections.abc import Sequence

import numpy as np

from realm_jax import answers as answers_lib
from realm_jax import corpus as corpus_lib


def question_inputs(tokenizer, questions: Sequence[str],
                    query_len: int) -> dict[str, np.ndarray]:
  """Retriever inputs: [CLS] question [SEP], truncated to query_len and
  padded with [PAD]."""
  ids = np.full((len(questions), query_len), tokenizer.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for row, pieces in enumerate(tokenizer.encode_batch(list(questions))):
    tokens = [tokenizer.cls_id, *pieces[:query_len - 2], tokenizer.sep_id]
    ids[row, :len(tokens)] = tokens
    mask[row, :len(tokens)] = 1
  return dict(query_ids=ids, query_mask=mask)


def answer_strings(example: dict, text: str, regex_answers: bool
                   ) -> list[str]:
  """The literal answers to look for in `text`: the answers themselves, or
  what a regular-expression answer matches there (CuratedTrec)."""
  if not regex_answers:
    return list(example['answer'])
  found = set()
  for pattern in answers_lib.compile_regexes(example['answer'], 'answer'):
    found.update(m.group(0) for m in pattern.finditer(text) if m.group(0))
  return sorted(found)


def gold_span_mask(corpus: corpus_lib.Corpus, examples: Sequence[dict],
                   block_ids: np.ndarray, block_texts: Sequence[Sequence[str]],
                   reader: dict[str, np.ndarray], max_span_width: int,
                   regex_answers: bool) -> np.ndarray:
  """bool [B, K, reader_len, max_span_width]: entry [b, k, s, w] marks the
  span from position s to s + w as one of the answer's occurrences."""
  b, k, reader_len = reader['reader_ids'].shape
  gold = np.zeros((b, k, reader_len, max_span_width), bool)
  tokenizer = corpus.tokenizer
  for i, example in enumerate(examples):
    for j in range(k):
      strings = answer_strings(example, block_texts[i][j], regex_answers)
      if not strings:
        continue
      start, length = reader['body_start'][i, j], reader['body_len'][i, j]
      body = reader['reader_ids'][i, j, start:start + length]
      spans = answers_lib.gold_spans(body, tokenizer.encode_batch(strings),
                                     max_span_width)
      for s, e in spans:
        gold[i, j, start + s, e - s] = True
  return gold


def closed_book_inputs(tokenizer, questions: Sequence[str], reader_len: int,
                       answer_slots: int,
                       answers: Sequence[Sequence[str]] | None = None
                       ) -> dict[str, np.ndarray]:
  """`[CLS] question [SEP] [MASK] x answer_slots [SEP]` for the reader alone.

  With `answers`, the targets are the word pieces of the shortest answer
  that fits the slots, then [SEP] (the end); later slots are unweighted,
  and a question with no fitting answer is weighted 0 everywhere.
  """
  b = len(questions)
  ids = np.zeros((b, reader_len), np.int32)
  mask = np.zeros_like(ids)
  segments = np.zeros_like(ids)
  positions = np.zeros((b, answer_slots), np.int32)
  targets = np.zeros((b, answer_slots), np.int32)
  weights = np.zeros((b, answer_slots), np.float32)
  room = reader_len - answer_slots - 3
  for row, pieces in enumerate(tokenizer.encode_batch(list(questions))):
    question = [tokenizer.cls_id, *pieces[:room], tokenizer.sep_id]
    tokens = question + [tokenizer.mask_id] * answer_slots + [
        tokenizer.sep_id]
    ids[row, :len(tokens)] = tokens
    mask[row, :len(tokens)] = 1
    segments[row, len(question):len(tokens)] = 1
    positions[row] = len(question) + np.arange(answer_slots)
    if answers is None:
      continue
    fitting = [a for a in tokenizer.encode_batch(list(answers[row]))
               if 0 < len(a) < answer_slots]
    if fitting:
      target = min(fitting, key=len) + [tokenizer.sep_id]
      targets[row, :len(target)] = target
      weights[row, :len(target)] = 1.0
  return dict(reader_ids=ids, reader_segments=segments, reader_mask=mask,
              answer_positions=positions, answer_targets=targets,
              answer_weights=weights)
