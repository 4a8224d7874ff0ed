"""The released REALM/ORQA block records: a safe reader, and a corpus of them.

The Hugging Face open-QA repos (google/realm-orqa-{nq,wq}-openqa) hold
`block_records.npy`: np.save of a 1-D object array of the block texts as
UTF-8 bytes (ORQA's blocks.tfr: Wikipedia body text, no title), row i
embedded as row i of the checkpoint's block_emb. np.save pickles an object
array, and np.load(allow_pickle=True) would run whatever a tampered file's
pickle names; `read_block_records` unpickles with only the numpy classes an
array of bytes needs, and refuses anything else naming the file.

`write_corpus` turns the records into a realm_jax corpus folder
(corpus.py's format) without repacking: block i is record i as it is
(body = the record, doc_id = str(i); title = title i when titles are
given, as ORQA's titles.tfr, else empty), tokenized in one piece as
transformers' RealmRetriever tokenizes it, so the word pieces the reader
sees are the port's. The records are streamed: only a batch is in memory.
"""
from collections.abc import Iterable, Iterator, Mapping, Sequence
import datetime
import itertools
import hashlib
import json
import os
import pathlib
import pickle
import time
from typing import Any

import numpy as np
import tqdm

from realm_jax import corpus as corpus_lib
from realm_jax import documents
from realm_jax import tokenization

# The corpus writer's shard machinery is corpus.py's (private, shared here).
# pylint: disable=protected-access

FILE_NAME = 'block_records.npy'
# What np.save of an object array of bytes pickles: numpy's array
# reconstructor (numpy 2 names its module numpy._core.multiarray, numpy 1
# numpy.core.multiarray), the ndarray class and dtype. ndarray.__reduce__
# hands us the reconstructor without importing a private module.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ('numpy._core.multiarray', '_reconstruct'): _RECONSTRUCT,
    ('numpy.core.multiarray', '_reconstruct'): _RECONSTRUCT,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}


class BlockRecordsError(ValueError):
  """A block_records.npy that is not an array of texts, or that names code
  to run."""


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only _ALLOWED_GLOBALS: nothing else can be called."""

  def __init__(self, file, path):
    super().__init__(file)
    self._path = path

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise BlockRecordsError(
          f'{self._path}: refusing to unpickle {module}.{name}; a block '
          'records file is np.save of an object array of bytes, which '
          f'names only {sorted(".".join(k) for k in _ALLOWED_GLOBALS)}'
      ) from None

  def persistent_load(self, pid):
    raise BlockRecordsError(f'{self._path}: refusing a persistent id in the '
                            'pickle')


class _HashingReader:
  """A binary file whose bytes read so far feed `digest` (the records'
  fingerprint, computed while they are read once)."""

  def __init__(self, file):
    self._file = file
    self.digest = hashlib.sha256()

  def read(self, size=-1):
    data = self._file.read(size)
    self.digest.update(data)
    return data

  def readline(self, size=-1):
    data = self._file.readline(size)
    self.digest.update(data)
    return data


def _read_header(file, path) -> tuple[int, ...]:
  """The shape of a .npy object array, from its header (parsed as a literal,
  never unpickled)."""
  try:
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(file)
    elif version == (2, 0):
      shape, _, dtype = np.lib.format.read_array_header_2_0(file)
    else:
      raise ValueError(f'unsupported .npy format version {version}')
  except ValueError as e:
    raise BlockRecordsError(f'{path}: not a .npy file ({e})') from None
  if dtype != np.dtype(object) or len(shape) != 1:
    raise BlockRecordsError(f'{path}: a {dtype} array of shape {shape}; '
                            'block records are a 1-D object array of bytes')
  return shape


def num_block_records(path: str | os.PathLike[str]) -> int:
  """How many records the file holds (its header only)."""
  with open(path, 'rb') as f:
    return _read_header(f, path)[0]


def read_block_records(path: str | os.PathLike[str]
                       ) -> tuple[np.ndarray, str]:
  """(the records, an object array of bytes; 'sha256:<digest of the file>').

  The pickle is read with a restricted unpickler: a file naming any class
  or function but numpy's array reconstruction raises BlockRecordsError
  before anything is called. All records are in memory, as with np.load
  (for the 13,353,718 released blocks, several GB).
  """
  path = pathlib.Path(path)
  with open(path, 'rb') as f:
    reader = _HashingReader(f)
    (num_records,) = _read_header(reader, path)
    try:
      records = _RestrictedUnpickler(reader, path).load()
    except BlockRecordsError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise BlockRecordsError(f'{path}: cannot unpickle the records ({e!r})'
                              ) from e
    if reader.read(1):
      raise BlockRecordsError(f'{path}: data after the pickled array')
  if (not isinstance(records, np.ndarray) or records.dtype != object
      or records.shape != (num_records,)):
    raise BlockRecordsError(f'{path}: the pickle holds no object array of '
                            f'shape ({num_records},), as its header says')
  for i, record in enumerate(records):
    if not isinstance(record, bytes):
      raise BlockRecordsError(f'{path}: record {i} is a {type(record)}, '
                              'not bytes')
  return records, f'sha256:{reader.digest.hexdigest()}'


def _text(record: bytes, i: int, path, what: str = 'record') -> str:
  try:
    return record.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BlockRecordsError(f'{path}: {what} {i} is not UTF-8 ({e})'
                            ) from None


def record_block(i: int, text: str, ids: Sequence[int],
                 offsets: Sequence[tuple[int, int]], block_len: int,
                 title: str = '', title_ids: Sequence[int] = ()
                 ) -> corpus_lib.Block:
  """Record i as a block: body = the whole record, its word pieces cut to
  fit `[CLS] title [SEP] body [SEP]` in block_len (truncated then).
  Sentence bounds (for the jobs that read sentences) are those of
  documents.split_sentences, in word pieces."""
  budget = block_len - 3 - len(title_ids)
  body = list(ids[:budget])
  starts = np.array([start for start, _ in offsets[:len(body)]], np.int64)
  bounds = []
  for start, end in documents.split_sentences(text):
    first, last = np.searchsorted(starts, [start, end])
    if last > first:
      bounds.append((int(first), int(last)))
  return corpus_lib.Block(doc_id=str(i), title=title, text=text,
                          title_ids=list(title_ids), body_ids=body,
                          sentence_bounds=bounds,
                          truncated=len(ids) > budget)


def write_corpus(path: str | os.PathLike[str], records: Iterable[bytes],
                 num_records: int, tokenizer: tokenization.Tokenizer,
                 tokenizer_file: str | os.PathLike[str], *, block_len: int,
                 shard_size: int, source: Mapping[str, Any],
                 records_path: str | os.PathLike[str] = FILE_NAME,
                 titles: Iterable[bytes] | None = None,
                 titles_path: str | os.PathLike[str] | None = None,
                 max_title_len: int = 0,
                 batch_size: int = 1024) -> dict[str, Any]:
  """Writes the `num_records` records (and their titles, each cut to
  max_title_len word pieces) as a corpus folder at `path`, atomically
  (corpus.atomic_folder: a killed write leaves no folder, and the next
  call starts again). `source` goes into the manifest (its `fingerprint`
  into the index manifests the builder writes). Records or titles other
  than num_records raise BlockRecordsError naming their file. Returns the
  manifest."""
  start_time = time.time()
  tokenizer_file = pathlib.Path(tokenizer_file)
  with corpus_lib.atomic_folder(path, False, 'delete it') as temporary:
    writer = corpus_lib._ShardWriter(temporary, shard_size, block_len,
                                     tokenizer)
    num_sentences = num_truncated = body_len_sum = max_body_len = 0
    records = iter(records)
    titles = None if titles is None else iter(titles)
    with tqdm.tqdm(total=num_records, unit=' blocks', desc='corpus',
                   mininterval=1) as bar:
      for first in range(0, num_records, batch_size):
        count = min(batch_size, num_records - first)
        texts = _batch(records, first, count, records_path, num_records)
        names = (_batch(titles, first, count, titles_path, num_records,
                        'title') if titles is not None else [''] * count)
        title_ids = (tokenizer.encode_batch(names) if titles is not None
                     else [[]] * count)
        for i, (text, (ids, offsets), title, title_piece_ids) in enumerate(
            zip(texts, tokenizer.encode_batch_with_offsets(texts), names,
                title_ids), first):
          block = record_block(i, text, ids, offsets, block_len, title,
                               title_piece_ids[:max_title_len])
          writer.add(block)
          num_sentences += len(block.sentence_bounds)
          num_truncated += block.truncated
          body_len_sum += len(block.body_ids)
          max_body_len = max(max_body_len, len(block.body_ids))
        bar.update(len(texts))
    for more, more_path, what in ((records, records_path, 'records'),
                                  (titles, titles_path, 'titles')):
      if more is not None and next(more, None) is not None:
        raise BlockRecordsError(f'{more_path}: more than {num_records} '
                                f'{what}')
    writer.close()
    tokenizer_copy = temporary / f'tokenizer{tokenizer_file.suffix}'
    tokenizer_copy.write_bytes(tokenizer_file.read_bytes())
    # corpus.write_corpus's manifest, for blocks that are not repacked.
    manifest = dict(
        format_version=corpus_lib.FORMAT_VERSION,
        num_blocks=num_records,
        num_documents=num_records,
        shards=[dict(name=f'blocks-{i:05d}', num_blocks=n)
                for i, n in enumerate(writer.shard_sizes)],
        block_len=block_len,
        max_title_len=max_title_len if titles is not None else 0,
        dtype=corpus_lib.token_dtype(tokenizer.vocab_size).name,
        tokenizer=dict(file=tokenizer_copy.name,
                       vocab_size=tokenizer.vocab_size,
                       sha256=corpus_lib._sha256(tokenizer_copy)),
        stats=dict(
            num_sentences=num_sentences,
            truncated_block_fraction=num_truncated / num_records,
            mean_body_len=body_len_sum / num_records,
            max_body_len=max_body_len,
            blocks_per_document=1.0),
        source=dict(source),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        wall_time_s=time.time() - start_time)
    manifest['files'] = corpus_lib.file_checksums(temporary)
    (temporary / corpus_lib.MANIFEST).write_text(
        json.dumps(manifest, indent=2) + '\n')
  return manifest


def _batch(items: Iterator[bytes], first: int, count: int, path,
           num_records: int, what: str = 'record') -> list[str]:
  """The next `count` items (items first.. of the file) as text."""
  batch = list(itertools.islice(items, count))
  if len(batch) < count:
    raise BlockRecordsError(f'{path}: {first + len(batch)} {what}s, '
                            f'expected {num_records}')
  return [_text(item, i, path, what) for i, item in enumerate(batch, first)]
