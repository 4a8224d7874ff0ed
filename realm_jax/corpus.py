"""Blocks, REALM's retrieval units: packing, writing shards, and reading them.

A block is `[CLS] title [SEP] body [SEP]` in at most `block_len` word pieces;
its body is a run of whole sentences of one document, packed greedily as
ORQA does (orqa/preprocessing/wiki_preprocessor.generate_sentences).

WORKDIR/corpus/ holds, for each shard `blocks-NNNNN`:
  .tokens.npy             [n, block_len] uint16 (int32 for vocabs > 65535):
                          [CLS] title [SEP] body [SEP] [PAD]...
  .title_len.npy          int32 [n]
  .body_len.npy           int32 [n]
  .uid64.npy              int64 [n], the first 8 bytes of the block's uid
  .sentences.npy          int32 [s, 2], (start, end) body-token offsets of
                          every sentence of every block, block after block
  .sentence_offsets.npy   int64 [n + 1], block i's rows of .sentences.npy
  .jsonl                  {"uid", "doc_id", "title", "text"} per block
  .jsonl_offsets.npy      int64 [n + 1], byte offset of each line
and once: tokenizer.model and manifest.json (its `files`: every other
file's size and sha256). The .npy files are read memory-mapped, so a reader
of a 13M-block corpus holds little in memory; a corpus on a bucket (gs://)
is copied to a local disk once per host first (`local_copy`).
"""
from collections.abc import Iterable, Iterator, Mapping, Sequence
import array
import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

from etils import epath
import numpy as np
import tqdm

from realm_jax import documents as documents_lib
from realm_jax import tokenization

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
_ARRAYS = ('tokens', 'title_len', 'body_len', 'uid64', 'sentences',
           'sentence_offsets', 'jsonl_offsets')


class CorpusError(ValueError):
  """A corpus folder is missing a file or its files disagree."""


def document_uid(title: str, body: str) -> str:
  """REALM's block uid (realm/featurization.get_document_uid)."""
  return hashlib.sha1(f'{title} <sep> {body}'.encode('utf-8')).hexdigest()


def uid_to_int64(uid: str) -> int:
  """The first 8 bytes of a hex uid as a signed int64, for numpy compares."""
  return int.from_bytes(bytes.fromhex(uid)[:8], 'big', signed=True)


@dataclasses.dataclass(frozen=True)
class Block:
  doc_id: str
  title: str
  text: str  # the exact substring of the document holding the sentences
  title_ids: list[int]  # truncated to max_title_len
  body_ids: list[int]
  sentence_bounds: list[tuple[int, int]]  # body-token (start, end) offsets
  truncated: bool  # a single sentence too long for a block, cut to fit

  @property
  def uid(self) -> str:
    return document_uid(self.title, self.text)


def pack_document(doc: Mapping[str, str],
                  title_ids: Sequence[int],
                  sentence_spans: Sequence[tuple[int, int]],
                  sentence_ids: Sequence[Sequence[int]],
                  block_len: int,
                  max_title_len: int) -> list[Block]:
  """Packs a document's tokenized sentences into blocks, greedily.

  A block takes sentences while `3 + len(title) + len(body) <= block_len`;
  the sentence that would overflow starts the next block. A sentence longer
  than a block on its own becomes one block, its tokens truncated.
  """
  title_ids = list(title_ids[:max_title_len])
  budget = block_len - 3 - len(title_ids)
  groups, current, count = [], [], 0
  for index, ids in enumerate(sentence_ids):
    if current and count + len(ids) > budget:
      groups.append(current)
      current, count = [], 0
    current.append(index)
    count += len(ids)
  if current:
    groups.append(current)

  blocks = []
  for group in groups:
    body_ids, bounds = [], []
    for index in group:
      bounds.append((len(body_ids), len(body_ids) + len(sentence_ids[index])))
      body_ids.extend(sentence_ids[index])
    truncated = len(body_ids) > budget  # only a lone sentence can overflow
    if truncated:
      body_ids, bounds = body_ids[:budget], [(0, budget)]
    text = doc['text'][sentence_spans[group[0]][0]:sentence_spans[group[-1]][1]]
    blocks.append(Block(doc['doc_id'], doc['title'], text, title_ids,
                        body_ids, bounds, truncated))
  return blocks


def tokenize_and_pack(docs: Sequence[Mapping[str, str]],
                      tokenizer: tokenization.Tokenizer,
                      block_len: int,
                      max_title_len: int) -> list[list[Block]]:
  """The blocks of each document; one batched tokenizer call for them all."""
  spans = [documents_lib.split_sentences(doc['text']) for doc in docs]
  texts = [doc['title'] for doc in docs]
  for doc, doc_spans in zip(docs, spans):
    texts.extend(doc['text'][start:end] for start, end in doc_spans)
  ids = tokenizer.encode_batch(texts)
  titles, sentences = ids[:len(docs)], iter(ids[len(docs):])
  return [pack_document(doc, title, doc_spans,
                        list(itertools.islice(sentences, len(doc_spans))),
                        block_len, max_title_len)
          for doc, title, doc_spans in zip(docs, titles, spans)]


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 65535 else np.int32)


class _ShardWriter:
  """Collects up to `shard_size` blocks in arrays, then saves them as a shard.

  Only the arrays of the current shard are in memory; texts go straight to
  the shard's JSON-lines file.
  """

  def __init__(self, directory: pathlib.Path, shard_size: int, block_len: int,
               tokenizer: tokenization.Tokenizer):
    self._directory = directory
    self._tokenizer = tokenizer
    self._tokens = np.full([shard_size, block_len], tokenizer.pad_id,
                           token_dtype(tokenizer.vocab_size))
    self._lengths = np.zeros([shard_size, 2], np.int32)  # title, body
    self._uid64 = np.zeros([shard_size], np.int64)
    self.shard_sizes = []
    self._start_shard()

  @property
  def name(self) -> str:
    return f'blocks-{len(self.shard_sizes):05d}'

  def _start_shard(self):
    self._size = 0
    # Flat (start, end) pairs and a count per block: compact, as a shard can
    # have millions of sentences.
    self._sentences = array.array('i')
    self._sentence_counts = array.array('q')
    self._jsonl = open(self._directory / f'{self.name}.jsonl', 'wb')
    self._jsonl_offsets = [0]

  def add(self, block: Block):
    t = self._tokenizer
    row = [t.cls_id, *block.title_ids, t.sep_id, *block.body_ids, t.sep_id]
    self._tokens[self._size, :len(row)] = row
    self._lengths[self._size] = len(block.title_ids), len(block.body_ids)
    uid = block.uid
    self._uid64[self._size] = uid_to_int64(uid)
    self._sentences.extend(itertools.chain.from_iterable(
        block.sentence_bounds))
    self._sentence_counts.append(len(block.sentence_bounds))
    record = dict(uid=uid, doc_id=block.doc_id, title=block.title,
                  text=block.text)
    self._jsonl_offsets.append(self._jsonl_offsets[-1] + self._jsonl.write(
        (json.dumps(record, ensure_ascii=False) + '\n').encode('utf-8')))
    self._size += 1
    if self._size == len(self._tokens):
      self._save()
      self._start_shard()

  def close(self):
    """Saves the last shard, or drops its file if it got no block."""
    if self._size:
      self._save()
    else:
      self._jsonl.close()
      os.remove(self._jsonl.name)

  def _save(self):
    self._jsonl.close()
    n = self._size
    arrays = dict(
        tokens=self._tokens[:n], title_len=self._lengths[:n, 0],
        body_len=self._lengths[:n, 1], uid64=self._uid64[:n],
        sentences=np.frombuffer(self._sentences, np.int32).reshape(-1, 2),
        sentence_offsets=np.concatenate(
            [[0], np.cumsum(np.frombuffer(self._sentence_counts, np.int64))]),
        jsonl_offsets=np.array(self._jsonl_offsets, np.int64))
    for field, values in arrays.items():
      np.save(self._directory / f'{self.name}.{field}.npy', values)
    self._tokens[:n] = self._tokenizer.pad_id
    self.shard_sizes.append(n)


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  iterator = iter(items)
  while batch := list(itertools.islice(iterator, size)):
    yield batch


def _write_blocks(directory: pathlib.Path,
                  docs: Iterable[Mapping[str, str]],
                  tokenizer: tokenization.Tokenizer,
                  tokenizer_file: pathlib.Path,
                  block_len: int, max_title_len: int, shard_size: int,
                  batch_size: int) -> dict[str, Any]:
  """Writes shards, tokenizer and a manifest (without `source`) into dir."""
  start = time.time()
  writer = _ShardWriter(directory, shard_size, block_len, tokenizer)
  num_docs = num_blocks = num_sentences = num_truncated = 0
  body_len_sum = max_body_len = 0
  with tqdm.tqdm(unit=' docs', desc='prepare corpus', mininterval=1) as bar:
    for batch in _batches(docs, batch_size):
      for doc_blocks in tokenize_and_pack(batch, tokenizer, block_len,
                                          max_title_len):
        for block in doc_blocks:
          writer.add(block)
          num_sentences += len(block.sentence_bounds)
          num_truncated += block.truncated
          body_len_sum += len(block.body_ids)
          max_body_len = max(max_body_len, len(block.body_ids))
        num_blocks += len(doc_blocks)
      num_docs += len(batch)
      bar.update(len(batch))
      bar.set_postfix(blocks=num_blocks, refresh=False, **{
          'blocks/s': f'{num_blocks / max(time.time() - start, 1e-9):.0f}'})
  writer.close()
  if not num_blocks:
    raise ValueError('the input has no text: no block was made')
  tokenizer_copy = directory / f'tokenizer{tokenizer_file.suffix}'
  shutil.copyfile(tokenizer_file, tokenizer_copy)
  return dict(
      format_version=FORMAT_VERSION,
      num_blocks=num_blocks,
      num_documents=num_docs,
      shards=[dict(name=f'blocks-{i:05d}', num_blocks=n)
              for i, n in enumerate(writer.shard_sizes)],
      block_len=block_len,
      max_title_len=max_title_len,
      dtype=token_dtype(tokenizer.vocab_size).name,
      tokenizer=dict(file=tokenizer_copy.name,
                     vocab_size=tokenizer.vocab_size,
                     sha256=_sha256(tokenizer_copy)),
      stats=dict(
          num_sentences=num_sentences,
          truncated_sentence_fraction=num_truncated / max(num_sentences, 1),
          mean_body_len=body_len_sum / num_blocks,
          max_body_len=max_body_len,
          blocks_per_document=num_blocks / max(num_docs, 1)),
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
      wall_time_s=time.time() - start)


def is_remote(path: str | os.PathLike[str]) -> bool:
  """A `gs://` (or other `scheme://`) path: objects, not a local disk."""
  return '://' in os.fspath(path)


def is_committed(path: str | os.PathLike[str]) -> bool:
  """Whether `atomic_folder` finished writing `path`: the folder exists on a
  local disk; its manifest.json exists on a bucket (the commit object)."""
  if is_remote(path):
    return (epath.Path(path) / MANIFEST).exists()
  return pathlib.Path(path).exists()


def file_checksums(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
  """{name: {size, sha256}} of every file in `directory` but the manifest:
  the manifest's `files`, which a reader of a remote folder checks."""
  return {file.name: dict(size=file.stat().st_size, sha256=_sha256(file))
          for file in sorted(directory.iterdir()) if file.name != MANIFEST}


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      'REALM_CACHE', pathlib.Path.home() / '.cache' / 'realm_jax'))


def copy_file(source: epath.PathLike, destination: epath.PathLike):
  """Streams one file between any two of local disk and bucket (epath's own
  copy works within one filesystem only)."""
  with epath.Path(source).open('rb') as src, \
      epath.Path(destination).open('wb') as dst:
    shutil.copyfileobj(src, dst, 16 << 20)


def _upload(staging: pathlib.Path, remote: epath.Path):
  """Uploads a finished staging folder, its manifest last: on a bucket a
  folder rename is a copy of every object, so the commit point is the one
  small manifest.json object, which lists every other file's sha256."""
  manifest = json.loads((staging / MANIFEST).read_text())
  names = sorted(f.name for f in staging.iterdir() if f.name != MANIFEST)
  if sorted(manifest.get('files', {})) != names:
    raise CorpusError(f'{staging / MANIFEST}: `files` lists '
                      f'{sorted(manifest.get("files", {}))}, the folder holds '
                      f'{names}')
  # Uncommit first (readers see no folder rather than old and new mixed),
  # then drop the old objects and a killed upload's leftovers.
  (remote / MANIFEST).unlink(missing_ok=True)
  if remote.exists():
    remote.rmtree()
  for name in names:
    copy_file(staging / name, remote / name)
  copy_file(staging / MANIFEST, remote / MANIFEST)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], overwrite: bool,
                  overwrite_hint: str) -> Iterator[pathlib.Path]:
  """Yields a local folder to fill, manifest.json last; `path` gets it only
  if the block exits cleanly. A crash leaves no readable partial folder.

  On a local disk the folder is `<path>.tmp`, renamed to `path` (the
  rename commits; the next call cleans up after a crash). On a bucket
  (gs://) it is a staging folder under $REALM_CACHE, uploaded at the end
  with manifest.json last (the manifest commits: readers refuse a folder
  without one); the manifest must then hold `files` (file_checksums).
  """
  if is_remote(path):
    remote = epath.Path(path)
    if is_committed(remote) and not overwrite:
      raise FileExistsError(f'{path} exists; {overwrite_hint} to replace it')
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f'.staging-{remote.name}-',
                                     dir=cache_dir()) as staging:
      yield pathlib.Path(staging)
      _upload(pathlib.Path(staging), remote)
    return
  path = pathlib.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f'{path} exists; {overwrite_hint} to replace it')
  temporary = path.with_name(f'{path.name}.tmp')
  old = path.with_name(f'{path.name}.old')
  # A crash between the two renames below leaves only `old`, which is still
  # the complete previous folder.
  if old.exists() and not path.exists():
    old.rename(path)
  for leftover in (temporary, old):
    if leftover.exists():
      shutil.rmtree(leftover)
  temporary.mkdir(parents=True)
  try:
    yield temporary
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  if path.exists():
    path.rename(old)
  temporary.rename(path)
  if old.exists():
    shutil.rmtree(old)


def write_corpus(path: str | os.PathLike[str],
                 docs: Iterable[Mapping[str, str]],
                 tokenizer: tokenization.Tokenizer,
                 tokenizer_file: str | os.PathLike[str],
                 *,
                 block_len: int,
                 max_title_len: int,
                 shard_size: int,
                 source: Mapping[str, Any],
                 fingerprint=None,
                 overwrite: bool = False,
                 batch_size: int = 256) -> dict[str, Any]:
  """Packs `docs` into blocks and writes them as a corpus folder at `path`.

  Streams: one shard of blocks at most is in memory. The folder is written
  by `atomic_folder`, so a crash leaves no partial corpus: on a local disk
  `<path>.tmp` renamed at the end, on a bucket a local staging folder
  uploaded with manifest.json (every file's sha256) last. `source` describes the
  input for the manifest; `fingerprint` is a hashlib object the readers of
  `docs` update with the bytes they read, its digest recorded once `docs`
  is consumed. Returns the manifest.
  """
  with atomic_folder(path, overwrite,
                     'set config.corpus.overwrite=True') as temporary:
    manifest = _write_blocks(temporary, docs, tokenizer,
                             pathlib.Path(tokenizer_file), block_len,
                             max_title_len, shard_size, batch_size)
    manifest['source'] = dict(source)
    if fingerprint is not None:
      manifest['source']['fingerprint'] = f'sha256:{fingerprint.hexdigest()}'
    manifest['files'] = file_checksums(temporary)
    (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
  return manifest


def local_copy(remote: str | os.PathLike[str],
               kind: str = 'corpus') -> pathlib.Path:
  """A local copy of a remote (e.g. gs://) folder written by `atomic_folder`
  (a corpus, or an examples folder): memory maps need local files.

  Copied once per host into $REALM_CACHE (default ~/.cache/realm_jax),
  keyed by the remote path and its manifest, via a temporary folder. Only
  a committed folder is read: its manifest.json must exist and list every
  file, and each copied file must match the size and sha256 it lists.
  """
  remote = epath.Path(remote)
  manifest_file = remote / MANIFEST
  try:
    manifest = manifest_file.read_text()
    files = json.loads(manifest)['files']
  except FileNotFoundError:
    raise CorpusError(
        f'{manifest_file} not found: {remote} is not a complete {kind} '
        'folder (its writer did not finish, or never ran)') from None
  except (ValueError, KeyError, TypeError) as error:
    raise CorpusError(f'{manifest_file}: not a complete manifest (no '
                      f'`files` list of every file: {error!r})') from None
  key = hashlib.sha256(f'{remote}\n{manifest}'.encode()).hexdigest()[:16]
  local = cache_dir() / f'{kind}-{key}'
  if not local.exists():
    temporary = cache_dir() / f'.{kind}-{key}.tmp-{os.getpid()}'
    temporary.mkdir(parents=True)
    try:
      for name, expected in tqdm.tqdm(files.items(), desc=f'copy {remote}'):
        try:
          copy_file(remote / name, temporary / name)
        except FileNotFoundError:
          raise CorpusError(f'{remote / name} is missing; {manifest_file} '
                            'lists it') from None
        got = dict(size=(temporary / name).stat().st_size,
                   sha256=_sha256(temporary / name))
        if got != expected:
          raise CorpusError(f'{remote / name}: {got}, {manifest_file} says '
                            f'{expected}')
      (temporary / MANIFEST).write_text(manifest)
      temporary.rename(local)
    except BaseException:
      shutil.rmtree(temporary, ignore_errors=True)
      raise
  return local


class Corpus:
  """A prepared corpus folder: blocks by global id, read memory-mapped."""

  def __init__(self, path: str | os.PathLike[str]):
    if is_remote(path):
      path = local_copy(path)
    self.path = pathlib.Path(path)
    manifest_file = self.path / MANIFEST
    if not manifest_file.exists():
      raise CorpusError(f'{manifest_file} not found: not a corpus folder '
                        '(make one with realm-prepare-corpus)')
    self.manifest = json.loads(manifest_file.read_text())
    if self.manifest.get('format_version') != FORMAT_VERSION:
      raise CorpusError(f'{manifest_file}: format_version '
                        f'{self.manifest.get("format_version")}, this code '
                        f'reads {FORMAT_VERSION}')
    self.block_len = self.manifest['block_len']
    self.max_title_len = self.manifest['max_title_len']
    self._shards = [self._open_shard(s['name'], s['num_blocks'])
                    for s in self.manifest['shards']]
    self._starts = np.cumsum(
        [0] + [s['num_blocks'] for s in self.manifest['shards']])
    if self._starts[-1] != self.manifest['num_blocks']:
      raise CorpusError(
          f'{manifest_file}: shards hold {self._starts[-1]} blocks, '
          f'num_blocks says {self.manifest["num_blocks"]}')
    self.tokenizer = tokenization.load_tokenizer(
        self.path / self.manifest['tokenizer']['file'])

  def _open_shard(self, name: str, n: int) -> dict[str, np.ndarray]:
    shard = {}
    for field in _ARRAYS:
      file = self.path / f'{name}.{field}.npy'
      if not file.exists():
        raise CorpusError(f'{file} is missing')
      shard[field] = np.load(file, mmap_mode='r')
    expected = dict(
        tokens=(n, self.block_len), title_len=(n,), body_len=(n,),
        uid64=(n,), sentence_offsets=(n + 1,), jsonl_offsets=(n + 1,),
        sentences=(int(shard['sentence_offsets'][-1]), 2))
    for field, shape in expected.items():
      if shard[field].shape != shape:
        raise CorpusError(f'{self.path / f"{name}.{field}.npy"}: shape '
                          f'{shard[field].shape}, expected {shape} from '
                          f'{self.path / MANIFEST}')
    if shard['tokens'].dtype != np.dtype(self.manifest['dtype']):
      raise CorpusError(f'{self.path / f"{name}.tokens.npy"}: dtype '
                        f'{shard["tokens"].dtype}, manifest says '
                        f'{self.manifest["dtype"]}')
    jsonl = self.path / f'{name}.jsonl'
    if not jsonl.exists():
      raise CorpusError(f'{jsonl} is missing')
    shard['jsonl'] = jsonl
    return shard

  def __len__(self) -> int:
    return int(self._starts[-1])

  @property
  def shard_ranges(self) -> list[tuple[int, int]]:
    """(start, stop) global block ids of each shard."""
    return [(int(a), int(b)) for a, b in zip(self._starts, self._starts[1:])]

  def _locate(self, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
      raise IndexError(f'block ids must be in [0, {len(self)})')
    shard = np.searchsorted(self._starts, ids, side='right') - 1
    return ids, shard, ids - self._starts[shard]

  def _gather(self, field: str, ids, dtype) -> np.ndarray:
    ids, shard, local = self._locate(ids)
    out = np.empty((len(ids), *self._shards[0][field].shape[1:]), dtype)
    for s in np.unique(shard):
      where = shard == s
      out[where] = self._shards[s][field][local[where]]
    return out

  def blocks(self, ids) -> dict[str, np.ndarray]:
    """Model inputs of the blocks `ids` (global block ids), all int32.

    segment_ids are REALM's separate_candidate_segments: 0 for
    [CLS] title [SEP], 1 for the body and its final [SEP], 0 for padding.
    """
    title_len = self._gather('title_len', ids, np.int32)
    body_len = self._gather('body_len', ids, np.int32)
    positions = np.arange(self.block_len, dtype=np.int32)
    body_start = (title_len + 2)[:, None]
    input_mask = positions < body_start + body_len[:, None] + 1
    return dict(
        token_ids=self._gather('tokens', ids, np.int32),
        segment_ids=((positions >= body_start) & input_mask).astype(np.int32),
        input_mask=input_mask.astype(np.int32),
        title_len=title_len,
        body_len=body_len)

  def _shard_of(self, i: int) -> tuple[dict[str, np.ndarray], int]:
    _, shard, local = self._locate([i])
    return self._shards[shard[0]], int(local[0])

  def body_tokens(self, i: int) -> np.ndarray:
    """int32 [body_len] word pieces of block i's body."""
    shard, local = self._shard_of(i)
    start = int(shard['title_len'][local]) + 2
    return np.asarray(
        shard['tokens'][local, start:start + shard['body_len'][local]],
        np.int32)

  def sentence_bounds(self, i: int) -> np.ndarray:
    """int32 [s, 2]: (start, end) of block i's sentences in body_tokens(i)."""
    shard, local = self._shard_of(i)
    offsets = shard['sentence_offsets']
    return np.asarray(shard['sentences'][offsets[local]:offsets[local + 1]],
                      np.int32)

  def uid64(self, ids) -> np.ndarray:
    return self._gather('uid64', ids, np.int64)

  def records(self, ids) -> list[dict[str, str]]:
    """{'uid', 'doc_id', 'title', 'text'} of each block in `ids`."""
    ids, shard, local = self._locate(ids)
    records = [None] * len(ids)
    for s in np.unique(shard):
      with open(self._shards[s]['jsonl'], 'rb') as f:
        for position in np.flatnonzero(shard == s):
          f.seek(self._shards[s]['jsonl_offsets'][local[position]])
          records[position] = json.loads(f.readline())
    return records
