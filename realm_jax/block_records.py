"""The released REALM/ORQA block records: a safe reader, and a corpus of them.

The Hugging Face open-QA repos (google/realm-orqa-{nq,wq}-openqa) hold
`block_records.npy`: np.save of a 1-D object array of the block texts as
UTF-8 bytes (ORQA's blocks.tfr: Wikipedia body text, no title), row i
embedded as row i of the checkpoint's block_emb. np.save pickles an object
array, and np.load(allow_pickle=True) would run whatever a tampered file's
pickle names and hold every record at once; `BlockRecords` streams the
records out of the pickle without calling anything, and refuses a pickle
naming anything but numpy's array reconstruction, naming the file.

`write_corpus` turns the records into a realm_jax corpus folder
(corpus.py's format) without repacking: block i is record i as it is
(body = the record, doc_id = str(i); title = title i when titles are
given, as ORQA's titles.tfr, else empty), tokenized in one piece as
transformers' RealmRetriever tokenizes it, so the word pieces the reader
sees are the port's. The records are streamed: only a batch is in memory.
"""
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import array
import dataclasses
import datetime
import itertools
import hashlib
import json
import os
import pathlib
import pickletools
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
# numpy.core.multiarray), the ndarray class and dtype. Nothing is called:
# the pickle is read opcode by opcode (pickletools.genops) and only these
# names may appear in it.
_RECONSTRUCT = ('numpy._core.multiarray _reconstruct',
                'numpy.core.multiarray _reconstruct')
_NDARRAY, _DTYPE = 'numpy ndarray', 'numpy dtype'
_ALLOWED_GLOBALS = frozenset((*_RECONSTRUCT, _NDARRAY, _DTYPE))
# Opcodes that push a constant (their argument).
_CONSTANTS = frozenset((
    'BININT', 'BININT1', 'BININT2', 'LONG1', 'BINUNICODE', 'SHORT_BINUNICODE',
    'BINUNICODE8', 'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8'))
_BYTES = frozenset(('BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8'))
_FIXED = {'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False,
          'EMPTY_TUPLE': ()}
_TUPLE_N = {'TUPLE1': 1, 'TUPLE2': 2, 'TUPLE3': 3}


class BlockRecordsError(ValueError):
  """A block_records.npy that is not an array of texts, or that names code
  to run."""


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

  def tell(self):
    return self._file.tell()


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


@dataclasses.dataclass(frozen=True)
class _Global:
  name: str


@dataclasses.dataclass(frozen=True)
class _Reduce:
  func: Any
  args: Any


@dataclasses.dataclass(frozen=True)
class _Build:
  obj: Any
  state: Any


_MARK = object()
# The one list of the pickle: the array's items, streamed out, never held.
_RECORDS = object()


class BlockRecords:
  """The records of a block_records.npy, streamed in order as bytes.

  np.load(allow_pickle=True) would unpickle the whole array (several GB
  for the 13,353,718 released blocks) and run whatever a tampered file's
  pickle names. This reads the pickle opcode by opcode: only the opcodes
  np.save writes are accepted, only numpy's array reconstruction may be
  named (anything else raises BlockRecordsError naming the file before a
  record is read), nothing is called, and each record is handed out as it
  is read, so memory holds one APPENDS batch (1,000 records) and the memo's
  file offsets (8 bytes a record: a repeated record, e.g. b'', is pickled
  as a reference to its first occurrence, read again from there).
  `fingerprint` ('sha256:<digest of the file>') is set once every record
  has been read.
  """

  def __init__(self, path: str | os.PathLike[str]):
    self.path = pathlib.Path(path)
    self.num_records = num_block_records(self.path)
    self.fingerprint: str | None = None

  def _error(self, message: str) -> BlockRecordsError:
    return BlockRecordsError(f'{self.path}: {message}')

  def __iter__(self) -> Iterator[bytes]:
    with open(self.path, 'rb') as f, open(self.path, 'rb') as again:
      reader = _HashingReader(f)
      _read_header(reader, self.path)
      try:
        result, num_read = yield from self._records(reader, again)
      except BlockRecordsError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise self._error(f'cannot read the pickle ({e!r})') from e
      if reader.read(1):
        raise self._error('data after the pickled array')
    self._check_array(result, num_read)
    self.fingerprint = f'sha256:{reader.digest.hexdigest()}'

  def _records(self, reader, again):
    """Yields the records; returns (the pickle's top object, records read)."""
    stack, memo = [], {}
    offsets = array.array('q')  # memo index -> file offset of a record
    num_read, memo_size, in_records = 0, 0, False
    last_name, last_position = '', 0
    for opcode, arg, position in pickletools.genops(reader):
      name = opcode.name
      if name in _CONSTANTS:
        stack.append(arg)
      elif name in _FIXED:
        stack.append(_FIXED[name])
      elif name in ('PROTO', 'FRAME'):
        pass
      elif name == 'MARK':
        stack.append(_MARK)
      elif name in ('BINPUT', 'LONG_BINPUT', 'MEMOIZE'):
        # MEMOIZE stores at the memo's size, as pickle.Unpickler does.
        index = memo_size if name == 'MEMOIZE' else arg
        memo_size = max(memo_size, index + 1)
        if in_records and last_name in _BYTES:
          # Remember where the record is, not the record.
          offsets.extend([-1] * (index + 1 - len(offsets)))
          offsets[index] = last_position
        else:
          memo[index] = stack[-1]
      elif name in ('BINGET', 'LONG_BINGET'):
        if arg < len(offsets) and offsets[arg] >= 0:
          again.seek(offsets[arg])
          stack.append(next(pickletools.genops(again))[1])
        elif arg in memo:
          stack.append(memo[arg])
        else:
          raise self._error(f'a reference to memo {arg}, never stored')
      elif name in ('GLOBAL', 'STACK_GLOBAL'):
        if name == 'STACK_GLOBAL':
          arg = f'{stack.pop(-2)} {stack.pop()}'
        if arg not in _ALLOWED_GLOBALS:
          allowed = sorted(g.replace(' ', '.') for g in _ALLOWED_GLOBALS)
          raise self._error(
              f'refusing to unpickle {arg.replace(" ", ".")}; a block '
              'records file is np.save of an object array of bytes, which '
              f'names only {allowed}')
        stack.append(_Global(arg))
      elif name == 'TUPLE':
        mark = _last_mark(stack)
        items = tuple(stack[mark + 1:])
        del stack[mark:]
        stack.append(items)
      elif name in _TUPLE_N:
        items = tuple(stack[-_TUPLE_N[name]:])
        del stack[-_TUPLE_N[name]:]
        stack.append(items)
      elif name == 'EMPTY_LIST':
        if in_records:
          raise self._error('a second list in the pickle')
        stack.append(_RECORDS)
        in_records = True
      elif name in ('APPEND', 'APPENDS'):
        first = _last_mark(stack) + 1 if name == 'APPENDS' else len(stack) - 1
        if stack[first - 1 - (name == 'APPENDS')] is not _RECORDS:
          raise self._error('an append to something but the array\'s list')
        for record in stack[first:]:
          if not isinstance(record, bytes):
            raise self._error(f'record {num_read} is a '
                              f'{type(record).__name__}, not bytes')
          if num_read == self.num_records:
            raise self._error(f'more than {self.num_records} records, as '
                              'its header says')
          yield record
          num_read += 1
        del stack[first - (name == 'APPENDS'):]
      elif name == 'REDUCE':
        args = stack.pop()
        stack.append(_Reduce(stack.pop(), args))
      elif name == 'BUILD':
        state = stack.pop()
        stack.append(_Build(stack.pop(), state))
      elif name == 'STOP':
        if len(stack) != 1:
          raise self._error('a malformed pickle')
        return stack[0], num_read
      else:
        raise self._error(f'refusing the pickle opcode {name} at byte '
                          f'{position}; np.save of an object array of bytes '
                          'does not write it')
      last_name, last_position = name, position
    raise self._error('the pickle ends without STOP')

  def _check_array(self, result, num_read: int) -> None:
    """The pickle is _reconstruct(ndarray, (0,), b'b') built with the state
    (1, (num_records,), dtype('O8', ...), fortran, the records)."""
    try:
      reconstruct, state = result.obj, result.state
      ok = (reconstruct.func.name in _RECONSTRUCT
            and reconstruct.args[0] == _Global(_NDARRAY)
            and state[1] == (self.num_records,)
            and state[2].obj.func == _Global(_DTYPE)
            and state[2].obj.args[0] == 'O8'
            and state[4] is _RECORDS and num_read == self.num_records)
    except (AttributeError, IndexError, TypeError):
      ok = False
    if not ok:
      raise self._error(f'the pickle holds no object array of shape '
                        f'({self.num_records},), as its header says '
                        f'({num_read} records read)')


def _last_mark(stack: list[Any]) -> int:
  for i in range(len(stack) - 1, -1, -1):
    if stack[i] is _MARK:
      return i
  raise BlockRecordsError('a pickle opcode without its MARK')


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
                 shard_size: int,
                 source: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
                 records_path: str | os.PathLike[str] = FILE_NAME,
                 titles: Iterable[bytes] | None = None,
                 titles_path: str | os.PathLike[str] | None = None,
                 max_title_len: int = 0,
                 batch_size: int = 1024) -> dict[str, Any]:
  """Writes the `num_records` records (and their titles, each cut to
  max_title_len word pieces) as a corpus folder at `path`, atomically
  (corpus.atomic_folder: a killed write leaves no folder, and the next
  call starts again). `source` goes into the manifest (its `fingerprint`
  into the index manifests the builder writes); a callable is called once
  every record is read (BlockRecords' fingerprint is known then). Records
  or titles other than num_records raise BlockRecordsError naming their
  file. Returns the manifest."""
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
        source=dict(source() if callable(source) else source),
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
