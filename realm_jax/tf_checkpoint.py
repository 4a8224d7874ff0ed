"""TensorFlow's on-disk formats, read without TensorFlow: checkpoints and
TFRecord files (the released REALM/ORQA artefacts are both).

Checkpoints (tensor bundle V2, what tf.compat.v1.train.Saver and
tf.train.Checkpoint write) are a prefix X with

    X.index                  an SSTable (LevelDB's table format): key =
                             variable name, value = a BundleEntryProto
                             (dtype, shape, shard, offset, size, crc32c);
                             the empty key holds the BundleHeaderProto
                             (number of shards, endianness)
    X.data-0000s-of-0000n    the tensors' raw bytes, row-major, at
                             (offset, size) of shard s

    entries = read_index(prefix)            # {name: TensorEntry}
    value = read_tensor(prefix, entries['block_emb'], mmap=True)

`read_tensor` reads a tensor into memory, or maps it (`mmap`: block_emb,
13,353,718 x 128 float32, is 6.8 GB). TFRecord files are frames of
(length u64, masked crc32c of the length, data, masked crc32c of the data);
`read_tfrecords` yields the data of each.

Checksums are verified when a crc32c implementation (google_crc32c, which
Cloud Storage's client depends on) can be imported: every SSTable block's,
every tensor's (a mapped tensor's too, read once through a chunk at a
time) and every TFRecord frame's. Corrupt or unsupported data (compressed
SSTable blocks, big-endian bundles, partitioned variables, string tensors)
raise CheckpointError or TFRecordError naming the file and the variable or
record.
"""
from collections.abc import Iterator
import itertools
import os
import struct
from typing import NamedTuple

from absl import logging
import ml_dtypes
import numpy as np

try:
  import google_crc32c  # pylint: disable=g-import-not-at-top
except ImportError:
  google_crc32c = None

# LevelDB's table footer: two block handles padded to 40 bytes, then this.
_TABLE_MAGIC = 0xdb4775248b80fb57
_FOOTER_SIZE = 48
# After each block: 1 byte of compression type, 4 of masked crc32c.
_BLOCK_TRAILER_SIZE = 5
# tensorflow/core/framework/types.proto's DataType -> numpy.
_DTYPES = {
    1: np.dtype(np.float32), 2: np.dtype(np.float64),
    3: np.dtype(np.int32), 4: np.dtype(np.uint8), 5: np.dtype(np.int16),
    6: np.dtype(np.int8), 8: np.dtype(np.complex64), 9: np.dtype(np.int64),
    10: np.dtype(np.bool_), 14: np.dtype(ml_dtypes.bfloat16),
    17: np.dtype(np.uint16), 18: np.dtype(np.complex128),
    19: np.dtype(np.float16), 22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
}
_DTYPE_NAMES = {7: 'string', 20: 'resource', 21: 'variant'}
# Bytes of a mapped tensor checksummed at once.
_CRC_CHUNK = 64 << 20


class CheckpointError(ValueError):
  """A checkpoint that is corrupt, or in a form this reader cannot read."""


class TFRecordError(ValueError):
  """A corrupt or truncated TFRecord file."""


class TensorEntry(NamedTuple):
  """Where a variable's bytes are: BundleEntryProto's fields.

  dtype is None for a type numpy cannot hold (tf_dtype names it);
  crc32c is the masked checksum of the bytes (None if not recorded).
  """
  name: str
  dtype: np.dtype | None
  tf_dtype: int
  shape: tuple[int, ...]
  shard_id: int
  offset: int
  size: int
  crc32c: int | None
  partitioned: bool
  num_shards: int = 1


def crc32c_available() -> bool:
  return google_crc32c is not None


def masked_crc32c(data: bytes) -> int:
  """TF and LevelDB store crc32c rotated and offset ('masked'), so that a
  checksum of data holding checksums is not itself trivially one."""
  return _mask(google_crc32c.value(data))


def _mask(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


# A protobuf wire-format decoder of just what BundleEntryProto and
# BundleHeaderProto use.


def _varint(data: bytes, position: int) -> tuple[int, int]:
  """(value, position after it) of the varint at `position`."""
  value = shift = 0
  while True:
    if position >= len(data) or shift > 63:
      raise ValueError('truncated or overlong varint')
    byte = data[position]
    position += 1
    value |= (byte & 0x7f) << shift
    if not byte & 0x80:
      return value, position
    shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
  """(field number, value) of each field of a serialized message: an int
  for varint and fixed fields, bytes for length-delimited ones."""
  position = 0
  while position < len(data):
    key, position = _varint(data, position)
    number, wire_type = key >> 3, key & 7
    if wire_type == 0:
      value, position = _varint(data, position)
    elif wire_type == 1:
      value = int.from_bytes(data[position:position + 8], 'little')
      position += 8
    elif wire_type == 2:
      length, position = _varint(data, position)
      value = data[position:position + length]
      position += length
    elif wire_type == 5:
      value = int.from_bytes(data[position:position + 4], 'little')
      position += 4
    else:
      raise ValueError(f'unsupported wire type {wire_type}')
    if position > len(data):
      raise ValueError('truncated message')
    yield number, value


def _shape(data: bytes) -> tuple[int, ...]:
  """TensorShapeProto: dim (2) = Dim{size (1)}, unknown_rank (3)."""
  dims = []
  for number, value in _fields(data):
    if number == 2:
      size = next((v for n, v in _fields(value) if n == 1), 0)
      dims.append(size - (1 << 64) if size >= 1 << 63 else size)
    elif number == 3 and value:
      raise ValueError('a shape of unknown rank')
  return tuple(dims)


def _entry(name: str, data: bytes) -> TensorEntry:
  fields = dict(tf_dtype=0, shape=(), shard_id=0, offset=0, size=0,
                crc32c=None, partitioned=False)
  for number, value in _fields(data):
    if number == 1:
      fields['tf_dtype'] = value
    elif number == 2:
      fields['shape'] = _shape(value)
    elif number in (3, 4, 5):
      fields[('shard_id', 'offset', 'size')[number - 3]] = value
    elif number == 6:
      fields['crc32c'] = value
    elif number == 7:
      fields['partitioned'] = True
  return TensorEntry(name=name, dtype=_DTYPES.get(fields['tf_dtype']),
                     **fields)


# LevelDB's table format, as TF's tensor bundle writes it (uncompressed).


def _block_handle(data: bytes, position: int = 0) -> tuple[int, int, int]:
  """(offset, size, position after) of an encoded BlockHandle."""
  offset, position = _varint(data, position)
  size, position = _varint(data, position)
  return offset, size, position


def _read_block(file, path, offset: int, size: int) -> bytes:
  file.seek(offset)
  block = file.read(size + _BLOCK_TRAILER_SIZE)
  if len(block) != size + _BLOCK_TRAILER_SIZE:
    raise CheckpointError(f'{path}: truncated (a block at byte {offset} '
                          f'needs {size + _BLOCK_TRAILER_SIZE} bytes)')
  contents, compression = block[:size], block[size]
  if compression:
    raise CheckpointError(
        f'{path}: the block at byte {offset} is compressed (type '
        f'{compression}, 1 = snappy); TF writes checkpoint indexes '
        'uncompressed and this reader reads only those')
  if crc32c_available():
    stored = int.from_bytes(block[size + 1:], 'little')
    if masked_crc32c(block[:size + 1]) != stored:
      raise CheckpointError(f'{path}: checksum mismatch in the block at '
                            f'byte {offset}: the file is corrupt')
  return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
  """(key, value) of each entry. A key shares `shared` leading bytes with
  the previous one (restart points, which store whole keys, only help
  seeking: a full scan needs none of them)."""
  num_restarts = int.from_bytes(block[-4:], 'little')
  end = len(block) - 4 - 4 * num_restarts
  if end < 0:
    raise ValueError('bad restart count')
  key, position = b'', 0
  while position < end:
    shared, position = _varint(block, position)
    unshared, position = _varint(block, position)
    value_length, position = _varint(block, position)
    if shared > len(key) or position + unshared + value_length > end:
      raise ValueError(f'bad entry at byte {position}')
    key = key[:shared] + block[position:position + unshared]
    position += unshared
    yield key, block[position:position + value_length]
    position += value_length


def _table_entries(path) -> Iterator[tuple[bytes, bytes]]:
  """Every (key, value) of an SSTable file, in key order."""
  with open(path, 'rb') as f:
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    if file_size < _FOOTER_SIZE:
      raise CheckpointError(f'{path}: {file_size} bytes, too short for an '
                            'SSTable (not a checkpoint index)')
    f.seek(file_size - _FOOTER_SIZE)
    footer = f.read(_FOOTER_SIZE)
    magic = int.from_bytes(footer[-8:], 'little')
    if magic != _TABLE_MAGIC:
      raise CheckpointError(f'{path}: bad magic number {magic:#x} (not a '
                            'TF checkpoint index, or truncated)')
    try:
      _, _, position = _block_handle(footer)  # the metaindex: unused
      offset, size, _ = _block_handle(footer, position)
      index = _read_block(f, path, offset, size)
      for _, handle in _block_entries(index):
        offset, size, _ = _block_handle(handle)
        yield from _block_entries(_read_block(f, path, offset, size))
    except ValueError as e:
      if isinstance(e, CheckpointError):
        raise
      raise CheckpointError(f'{path}: corrupt SSTable ({e})') from None


def _index_path(prefix) -> str:
  return f'{os.fspath(prefix)}.index'


def data_path(prefix, shard_id: int, num_shards: int) -> str:
  return f'{os.fspath(prefix)}.data-{shard_id:05d}-of-{num_shards:05d}'


def read_index(prefix) -> dict[str, TensorEntry]:
  """{variable name: TensorEntry} of the checkpoint at `prefix` (its
  X.index; the data files are not opened)."""
  path = _index_path(prefix)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: a TF checkpoint is the '
                            'prefix of X.index and X.data-*-of-*')
  header, entries = None, {}
  for key, value in _table_entries(path):
    try:
      if not key:
        header = dict(_fields(value))
        continue
      name = key.decode('utf-8')
      entries[name] = _entry(name, value)
    except ValueError as e:
      raise CheckpointError(f'{path}: corrupt entry {key!r} ({e})') from None
  if header is None:
    raise CheckpointError(f'{path}: no bundle header (not a tensor bundle '
                          'V2 checkpoint)')
  if header.get(2, 0) != 0:
    raise CheckpointError(f'{path}: a big-endian checkpoint; only '
                          'little-endian ones are read')
  num_shards = header.get(1, 1)
  for entry in entries.values():
    if entry.shard_id >= num_shards:
      raise CheckpointError(f'{path}: variable {entry.name} is in shard '
                            f'{entry.shard_id} of {num_shards}')
  return {name: entry._replace(num_shards=num_shards)
          for name, entry in entries.items()}


def _check_readable(path, entry: TensorEntry) -> None:
  if entry.partitioned:
    raise CheckpointError(f'{path}: variable {entry.name} is partitioned '
                          '(saved in slices); only whole variables are read')
  if entry.dtype is None:
    name = _DTYPE_NAMES.get(entry.tf_dtype, f'DataType {entry.tf_dtype}')
    raise CheckpointError(f'{path}: variable {entry.name} is a {name} '
                          'tensor; only numeric and bool ones are read')
  expected = int(np.prod(entry.shape)) * entry.dtype.itemsize
  if entry.size != expected:
    raise CheckpointError(f'{path}: variable {entry.name} has {entry.size} '
                          f'bytes, its shape {entry.shape} and dtype '
                          f'{entry.dtype} need {expected}')


def _verify(path, entry: TensorEntry, value: np.ndarray) -> None:
  if entry.crc32c is None or not crc32c_available():
    return
  flat = value.reshape(-1).view(np.uint8)
  crc = 0
  for start in range(0, len(flat), _CRC_CHUNK):
    crc = google_crc32c.extend(crc, flat[start:start + _CRC_CHUNK].tobytes())
  if _mask(crc) != entry.crc32c:
    raise CheckpointError(f'{path}: checksum mismatch in variable '
                          f'{entry.name}: the file is corrupt')


def read_tensor(prefix, entry: TensorEntry, *, mmap: bool = False,
                verify: bool = True) -> np.ndarray:
  """The value of `entry` (from read_index(prefix)): in memory, or
  `mmap`ed read-only from the data file. `verify`: check its crc32c."""
  path = data_path(prefix, entry.shard_id, entry.num_shards)
  _check_readable(path, entry)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: the data of variable '
                            f'{entry.name} of {_index_path(prefix)}')
  if os.path.getsize(path) < entry.offset + entry.size:
    raise CheckpointError(f'{path}: truncated: variable {entry.name} ends '
                          f'at byte {entry.offset + entry.size}')
  if mmap and entry.size:
    value = np.memmap(path, entry.dtype, 'r', entry.offset, entry.shape)
  else:
    with open(path, 'rb') as f:
      f.seek(entry.offset)
      value = np.frombuffer(f.read(entry.size), entry.dtype).reshape(
          entry.shape).copy()
  if verify:
    _verify(path, entry, value)
  return value


def read_tensors(prefix, names=None) -> dict[str, np.ndarray]:
  """{name: value in memory} of `names` (default: every variable)."""
  entries = read_index(prefix)
  if names is None:
    names = entries
  missing = [name for name in names if name not in entries]
  if missing:
    raise CheckpointError(f'{_index_path(prefix)}: no variable {missing[0]}')
  return {name: read_tensor(prefix, entries[name]) for name in names}


def read_tfrecords(path, *, verify: bool = True) -> Iterator[bytes]:
  """The data of each record of a TFRecord file (uncompressed), streamed.

  A frame is length (u64 LE), masked crc32c of those 8 bytes, data, masked
  crc32c of the data; a bad checksum or a truncated frame raises
  TFRecordError naming the file, the record number and its byte offset.
  """
  verify = verify and crc32c_available()
  with open(path, 'rb', buffering=1 << 20) as f:
    offset = 0
    for number in itertools.count():
      header = f.read(12)
      if not header:
        return
      where = f'{path}: record {number} (byte {offset})'
      if len(header) < 12:
        raise TFRecordError(f'{where}: truncated frame header')
      length_bytes = header[:8]
      if verify and masked_crc32c(length_bytes) != int.from_bytes(
          header[8:], 'little'):
        raise TFRecordError(f'{where}: the length\'s checksum does not '
                            'match: the file is corrupt')
      (length,) = struct.unpack('<Q', length_bytes)
      data = f.read(length)
      footer = f.read(4)
      if len(data) < length or len(footer) < 4:
        raise TFRecordError(f'{where}: truncated: the frame holds {length} '
                            'bytes of data')
      if verify and masked_crc32c(data) != int.from_bytes(footer, 'little'):
        raise TFRecordError(f'{where}: the data\'s checksum does not match: '
                            'the file is corrupt')
      yield data
      offset += 16 + length


def count_tfrecords(path) -> int:
  """The number of records, from the frame lengths alone (seeking past the
  data: a few seconds for blocks.tfr's 13 million)."""
  count = offset = 0
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    while offset < size:
      f.seek(offset)
      header = f.read(12)
      if len(header) < 12:
        raise TFRecordError(f'{path}: record {count} (byte {offset}): '
                            'truncated frame header')
      if crc32c_available() and masked_crc32c(header[:8]) != int.from_bytes(
          header[8:], 'little'):
        raise TFRecordError(f'{path}: record {count} (byte {offset}): the '
                            'length\'s checksum does not match: the file is '
                            'corrupt')
      offset += 16 + struct.unpack('<Q', header[:8])[0]
      count += 1
  if offset != size:
    raise TFRecordError(f'{path}: record {count - 1} is truncated')
  return count


def log_missing_crc32c() -> None:
  if not crc32c_available():
    logging.warning('No crc32c implementation (pip install google-crc32c): '
                    'TF checkpoints and TFRecord files are read unverified')
