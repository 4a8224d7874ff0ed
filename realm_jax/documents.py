"""Streaming document readers and a sentence splitter.

Every reader yields documents as dicts {'doc_id', 'title', 'text'}, one at a
time, so a corpus of any size streams through in bounded memory. Readers that
take a `hasher` (a hashlib object) feed it the bytes they read; the corpus
manifest records its digest as the source fingerprint.
"""
from collections.abc import Iterator
import glob
import json
import os
import re

import ml_collections
import tensorflow_datasets as tfds

from realm_jax import synthetic_corpus

Document = dict[str, str]
PathLike = str | os.PathLike[str]


def _lines(path: PathLike, hasher=None) -> Iterator[tuple[int, str]]:
  """(line number, text) of a UTF-8 file; errors name the file and line."""
  with open(path, 'rb') as f:
    for line_number, raw in enumerate(f, start=1):
      if hasher is not None:
        hasher.update(raw)
      try:
        yield line_number, raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ValueError(f'{path}:{line_number}: invalid UTF-8: {e}') from None


def read_jsonl(path: PathLike, hasher=None) -> Iterator[Document]:
  """One JSON object {"title", "text"} per line; "id" (if any) is the doc_id."""
  for line_number, line in _lines(path, hasher):
    if not line.strip():
      continue
    where = f'{path}:{line_number}'
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{where}: malformed JSON: {e}') from None
    if not isinstance(record, dict):
      raise ValueError(f'{where}: expected a JSON object, got '
                       f'{type(record).__name__}')
    for field in ('title', 'text'):
      if not isinstance(record.get(field), str):
        problem = 'missing' if field not in record else 'not a string'
        raise ValueError(f'{where}: field {field!r} is {problem}')
    doc_id = str(record['id']) if 'id' in record else where
    yield {'doc_id': doc_id, 'title': record['title'], 'text': record['text']}


def _undo_wikitext_tokens(text: str) -> str:
  # WikiText splits "well-known", "1,000" and "3.5" as "well @-@ known" etc.
  return re.sub(r' @([-,.])@ ', r'\1', text)


def read_wikitext(path: PathLike, hasher=None) -> Iterator[Document]:
  """WikiText raw files: ' = Title = ' starts an article, headings dropped.

  An article's paragraphs are joined by line breaks.
  """
  doc_id = title = None
  paragraphs = []
  for line_number, line in _lines(path, hasher):
    line = line.strip()
    if not line or line.startswith('= ='):  # blank, or a section heading
      continue
    if line.startswith('= ') and line.endswith(' ='):
      if doc_id is not None:
        yield {'doc_id': doc_id, 'title': title, 'text': '\n'.join(paragraphs)}
      doc_id = f'{path}:{line_number}'
      title = _undo_wikitext_tokens(line[2:-2].strip())
      paragraphs = []
    elif doc_id is None:
      raise ValueError(f'{path}:{line_number}: text before the first '
                       "' = Title = ' line")
    else:
      paragraphs.append(_undo_wikitext_tokens(line))
  if doc_id is not None:
    yield {'doc_id': doc_id, 'title': title, 'text': '\n'.join(paragraphs)}


def require_tensorflow():
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ImportError(
        'reading a tfds dataset stored as TFRecord needs TensorFlow: '
        'pip install realm_jax[tf]') from None


def read_tfds(name: str, split: str = 'train', data_dir: str | None = None,
              hasher=None) -> Iterator[Document]:
  """A prepared tfds dataset with text features `title` and `text`.

  ArrayRecord datasets are read without TensorFlow; TFRecord ones (such as
  the published `wikipedia` builds) need it.
  """
  builder = tfds.builder(name, data_dir=data_dir or None)
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    examples = builder.as_data_source(split)
  else:
    require_tensorflow()
    examples = tfds.as_numpy(builder.as_dataset(split=split,
                                                shuffle_files=False))
  for index, example in enumerate(examples):
    title, text = example['title'], example['text']
    if hasher is not None:
      hasher.update(title + b'\0' + text + b'\0')
    yield {'doc_id': f'{name}/{split}/{index}', 'title': title.decode('utf-8'),
           'text': text.decode('utf-8')}


def is_list_page(title: str) -> bool:
  """Pages REALM/ORQA drop (orqa/preprocessing/wiki_preprocessor.remove_doc)."""
  return (title.startswith(('List of ', 'Index of ', 'Outline of '))
          or '(disambiguation)' in title)


def input_paths(patterns: str) -> list[str]:
  """Comma-separated files or glob patterns -> the files, in order."""
  paths = []
  for pattern in filter(None, (p.strip() for p in patterns.split(','))):
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise FileNotFoundError(
          f'config.input.paths: no file matches {pattern!r}')
    paths.extend(matches)
  return paths


def read_documents(config: ml_collections.ConfigDict,
                   hasher=None) -> Iterator[Document]:
  """The documents `config` (a prepare_corpus `input` config) names."""
  if config.format == 'synthetic':
    docs = synthetic_corpus.generate_documents(config.synthetic_docs,
                                               config.synthetic_seed)
    if hasher is not None:
      docs = _hashed(docs, hasher)
  elif config.format == 'tfds':
    docs = read_tfds(config.tfds_name, config.tfds_split,
                     config.tfds_data_dir, hasher)
  else:
    reader = {'jsonl': read_jsonl, 'wikitext': read_wikitext}[config.format]
    docs = (doc for path in input_paths(config.paths)
            for doc in reader(path, hasher))
  if config.drop_list_pages:
    docs = (doc for doc in docs if not is_list_page(doc['title']))
  return docs


def _hashed(docs: Iterator[Document], hasher) -> Iterator[Document]:
  for doc in docs:
    hasher.update(f'{doc["title"]}\0{doc["text"]}\0'.encode())
    yield doc


# --- Sentence splitting ------------------------------------------------------

# Never end a sentence ("Dr. Smith", "St. Louis", "e.g. this").
_ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof st jr sr mt ft lt col gen gov sgt capt cmdr adm rev hon
    vs cf ca approx est dept univ bros jan feb apr jun jul aug sep sept oct
    nov dec""".split())
# End no sentence when a number follows ("No. 20", "pp. 393", "vol. 2").
_NUMBER_ABBREVIATIONS = frozenset('no nos pp vol vols fig figs art ch'.split())
# A terminator, closing quotes/brackets, then the whitespace after them; or
# any whitespace with a line break, which always ends a sentence.
_GAP = re.compile(r'([.!?])[)\]"\'”’]*(\s+)|\s*\n\s*')
_ACRONYM = re.compile(r'(?:[^\W\d_]\.)+[^\W\d_]')  # U.S, e.g, A.H


def _ends_sentence(text: str, gap: re.Match[str]) -> bool:
  if '\n' in gap.group(0):
    return True
  following = text[gap.end()] if gap.end() < len(text) else ''
  if following.islower():
    return False
  if gap.group(1) != '.':
    return True
  end = gap.start(1)
  if not end or text[end - 1].isspace():  # a spaced-out " ." ends a sentence
    return True
  # The word before the period; abbreviations are short, so look back 20.
  word = text[max(0, end - 20):end].rsplit(None, 1)[-1].lstrip('(["\'“‘')
  if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
    return False
  lower = word.lower()
  return not (_ACRONYM.fullmatch(word) or lower in _ABBREVIATIONS
              or (lower in _NUMBER_ABBREVIATIONS and following.isdigit()))


def split_sentences(text: str) -> list[tuple[int, int]]:
  """Character spans (start, end) of the sentences of `text`, in order.

  Spans hold no leading or trailing whitespace and every other character of
  `text` is in exactly one span. A regex splitter standing in for NLTK punkt
  (which REALM used): it splits at . ! ? before a non-lowercase character
  and at line breaks, but not after common abbreviations, initials, dotted
  acronyms or inside decimals.
  """
  spans = []
  start = len(text) - len(text.lstrip())
  for gap in _GAP.finditer(text, start):
    if not _ends_sentence(text, gap):
      continue
    end = gap.start(2) if gap.group(1) else gap.start()
    if end > start:
      spans.append((start, end))
    start = gap.end()
  end = len(text.rstrip())
  if end > start:
    spans.append((start, end))
  return spans
