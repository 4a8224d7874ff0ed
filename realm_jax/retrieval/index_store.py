"""WORKDIR/index: published MIPS index versions and the pointer to the newest.

    index/
      LATEST                 {"version", "checkpoint_step"}: the newest
                             complete version; replaced atomically
      step-00000500/         a published version: manifest.json + index files
      building/step-.../     the builder's resumable work (embedding chunks)
      leases/<reader>.json   the version each index handle is serving

A version counts only once its commit object exists, and LATEST names only
such versions: its manifest.json (every file's sha256 and size), written
last. On a local disk the version is made complete under building/ and the
folder is renamed into place; on a bucket (gs://), where a rename is a copy
of every object, it is made in a local staging folder (ScaNN serializes to
local paths only) and uploaded with manifest.json last. A version folder
without a valid manifest (a killed upload) is never loaded and is rebuilt
by the next publish. Readers of a bucket load from a verified local copy.
The builder never deletes the version LATEST names nor one a live lease
names.
"""
from collections.abc import Iterable, Mapping, Sequence
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

from absl import logging
from etils import epath
import numpy as np

from realm_jax import corpus as corpus_lib
from realm_jax.retrieval import mips

POINTER = 'LATEST'
MANIFEST = 'manifest.json'
FORMAT_VERSION = 1


class IndexVersionError(RuntimeError):
  """A version folder is missing, partial or corrupt."""


def version_name(checkpoint_step: int) -> str:
  return f'step-{checkpoint_step:08d}'


def sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
  return digest.hexdigest()


def atomic_write_text(path: epath.Path, text: str) -> None:
  """Write a temporary file, then rename it over `path` (on a bucket one
  upload: an object appears whole, and a rename there is a copy)."""
  if corpus_lib.is_remote(path):
    path.write_text(text)
    return
  temporary = path.parent / f'.{path.name}.tmp-{os.getpid()}'
  temporary.write_text(text)
  temporary.replace(path)


class IndexStore:
  """Reads and writes the versions under WORKDIR/index."""

  def __init__(self, directory: epath.PathLike):
    self.directory = epath.Path(directory)

  # -- reading ---------------------------------------------------------------

  def pointer(self) -> dict[str, Any] | None:
    """The LATEST pointer, or None before the first publish."""
    path = self.directory / POINTER
    try:
      return json.loads(path.read_text())
    except FileNotFoundError:
      return None

  def latest_step(self) -> int | None:
    pointer = self.pointer()
    return None if pointer is None else pointer['checkpoint_step']

  def version_dir(self, version: str) -> epath.Path:
    return self.directory / version

  def read_manifest(self, version: str) -> dict[str, Any]:
    path = self.version_dir(version) / MANIFEST
    try:
      return json.loads(path.read_text())
    except FileNotFoundError as e:
      raise IndexVersionError(f'{path} is missing') from e
    except json.JSONDecodeError as e:
      raise IndexVersionError(f'{path} is not valid JSON: {e}') from e

  def is_committed(self, version: str) -> bool:
    """Whether the version's commit object (manifest.json) exists."""
    return (self.version_dir(version) / MANIFEST).exists()

  def verify_files(self, version: str) -> dict[str, Any]:
    """Checks every file of the version against its manifest checksum."""
    manifest = self.read_manifest(version)
    _check_manifest(manifest, version, self.version_dir(version))
    for name, expected in manifest['files'].items():
      _check_file(self.version_dir(version) / name, expected)
    return manifest

  def load(self, version: str, devices=None) -> tuple[mips.MipsIndex, dict]:
    """The verified index of `version` and its manifest."""
    if corpus_lib.is_remote(self.directory):
      directory, manifest = self._local_copy(version)
    else:
      directory, manifest = self.version_dir(version), self.verify_files(
          version)
    index = mips.load_index(directory, devices=devices)
    if (index.num_vectors, index.dim) != (manifest['num_blocks'],
                                          manifest['dim']):
      raise IndexVersionError(
          f'{self.version_dir(version)}: index holds {index.num_vectors} x '
          f'{index.dim}, the manifest says {manifest["num_blocks"]} x '
          f'{manifest["dim"]}')
    return index, manifest

  def _local_copy(self, version: str) -> tuple[pathlib.Path, dict]:
    """A verified copy of a remote version under $REALM_CACHE (memory maps
    and ScaNN need local files), made once per host and manifest."""
    remote = self.version_dir(version)
    manifest = self.read_manifest(version)
    _check_manifest(manifest, version, remote)
    root = corpus_lib.cache_dir() / ('index-' + hashlib.sha256(
        os.fspath(self.directory).encode()).hexdigest()[:16])
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    local = root / f'{version}-{key.hexdigest()[:12]}'
    if local.exists():
      return local, manifest
    temporary = root / f'.{local.name}.tmp-{os.getpid()}'
    shutil.rmtree(temporary, ignore_errors=True)
    try:
      for name, expected in manifest['files'].items():
        (temporary / name).parent.mkdir(parents=True, exist_ok=True)
        try:
          corpus_lib.copy_file(remote / name, temporary / name)
        except FileNotFoundError:
          raise IndexVersionError(f'{remote / name} is missing') from None
        _check_file(epath.Path(temporary / name), expected, remote / name)
      (temporary / MANIFEST).write_text(json.dumps(manifest))
      try:
        temporary.rename(local)
      except OSError:  # another process on this host made it first
        if not local.exists():
          raise
        shutil.rmtree(temporary)
    except BaseException:
      shutil.rmtree(temporary, ignore_errors=True)
      raise
    # Older copies: keep the one probably still serving. Deleting a
    # memory-mapped file is safe on POSIX (the mapping keeps the data).
    copies = sorted(p for p in root.iterdir()
                    if not p.name.startswith('.') and p != local)
    for old in copies[:-1]:
      shutil.rmtree(old, ignore_errors=True)
    return local, manifest

  def versions(self, committed_only: bool = True) -> list[str]:
    """Version folders; only those with their commit object by default."""
    if not self.directory.exists():
      return []
    return sorted(p.name for p in self.directory.iterdir()
                  if p.name.startswith('step-') and p.is_dir() and (
                      not committed_only or (p / MANIFEST).exists()))

  # -- writing ---------------------------------------------------------------

  def building_dir(self, checkpoint_step: int) -> epath.Path:
    return self.directory / 'building' / version_name(checkpoint_step)

  def publish(self, checkpoint_step: int, index: mips.MipsIndex,
              sample: np.ndarray, metadata: Mapping[str, Any]) -> str:
    """Saves, checksums, verifies and commits a version; flips LATEST.

    `sample` holds a few of the indexed embeddings; each must find a vector
    scoring at least as high as itself (a search sanity check).
    Safe to call again after a crash at any point: a version whose folder
    exists without a valid committed manifest is saved again.
    """
    version = version_name(checkpoint_step)
    final = self.version_dir(version)
    try:
      self.verify_files(version)  # committed by a run killed before LATEST
    except IndexVersionError as e:
      if final.exists():
        logging.warning('Saving %s again: %s', final, e)
      self._save(checkpoint_step, index, sample, metadata)
      self.verify_files(version)  # what readers will check, read back
    atomic_write_text(self.directory / POINTER, json.dumps(
        dict(version=version, checkpoint_step=checkpoint_step)))
    logging.info('Published index %s', final)
    return version

  def _save(self, checkpoint_step, index, sample, metadata) -> None:
    """Writes the version folder, its manifest last (the commit)."""
    version = version_name(checkpoint_step)
    final = self.version_dir(version)
    remote = corpus_lib.is_remote(self.directory)
    if remote:
      corpus_lib.cache_dir().mkdir(parents=True, exist_ok=True)
      staging = pathlib.Path(tempfile.mkdtemp(
          prefix=f'.staging-{version}-', dir=corpus_lib.cache_dir()))
    else:
      staging = self.building_dir(checkpoint_step) / 'index'
      if staging.exists():
        staging.rmtree()
      staging.mkdir(parents=True)
    try:
      files = index.save(staging)
      manifest = dict(
          format_version=FORMAT_VERSION, version=version,
          checkpoint_step=checkpoint_step, num_blocks=index.num_vectors,
          dim=index.dim, dtype='float32', kind=index.kind,
          files={name: dict(sha256=sha256(epath.Path(staging) / name),
                            bytes=(epath.Path(staging) / name).stat().length)
                 for name in files},
          created=time.time(), **metadata)
      (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
      _check_search(mips.load_index(staging), sample)
      if not remote:
        if final.exists():  # not a valid version (publish checked)
          final.rmtree()
        staging.rename(final)  # the commit on a local disk
        return
      # Uncommit first, drop a killed upload's leftovers, then upload with
      # the manifest last: its object commits the version.
      (final / MANIFEST).unlink(missing_ok=True)
      if final.exists():
        final.rmtree()
      for name in files:
        corpus_lib.copy_file(staging / name, final / name)
      corpus_lib.copy_file(staging / MANIFEST, final / MANIFEST)
    finally:
      if remote:
        shutil.rmtree(staging, ignore_errors=True)

  def write_lease(self, reader: str, versions: Iterable[str]) -> None:
    """Records the versions a reader holds; the builder keeps them."""
    leases = self.directory / 'leases'
    leases.mkdir(parents=True, exist_ok=True)
    atomic_write_text(leases / f'{reader}.json', json.dumps(
        dict(versions=sorted(versions), time=time.time())))

  def leased_versions(self, ttl_seconds: float) -> set[str]:
    leases = self.directory / 'leases'
    if not leases.exists():
      return set()
    now, leased = time.time(), set()
    for path in leases.glob('*.json'):
      try:
        lease = json.loads(path.read_text())
      except (FileNotFoundError, json.JSONDecodeError):
        continue  # being replaced right now
      if now - lease['time'] < ttl_seconds:
        leased.update(lease['versions'])
    return leased

  def delete_old_versions(self, keep: int, lease_ttl_seconds: float
                         ) -> list[str]:
    """Deletes all but the newest `keep`, LATEST's and leased versions."""
    pointer = self.pointer()
    protected = self.leased_versions(lease_ttl_seconds)
    if pointer is not None:
      protected.add(pointer['version'])
    versions = self.versions()
    deleted = [v for v in versions[:max(len(versions) - keep, 0)]
               if v not in protected]
    # Uncommitted folders older than LATEST: killed saves nobody resumes.
    if pointer is not None:
      deleted += [v for v in self.versions(committed_only=False)
                  if v < pointer['version'] and not self.is_committed(v)]
    for version in deleted:
      self.version_dir(version).rmtree()
    return deleted

  def delete_stale_builds(self, keep_steps: Iterable[int]) -> None:
    """Abandoned builds of older checkpoints (a newer one has arrived)."""
    keep = {version_name(step) for step in keep_steps}
    building = self.directory / 'building'
    if building.exists():
      for path in building.iterdir():
        if path.name not in keep:
          path.rmtree()

  def build_steps(self) -> list[int]:
    """The checkpoint steps with a build folder under building/, sorted."""
    building = self.directory / 'building'
    return sorted(int(p.name.split('-')[1]) for p in (
        building.iterdir() if building.exists() else ())
                  if p.name.startswith('step-'))

  def delete_finished_builds(self, indexed_step: int) -> None:
    """Builds of checkpoints up to the newest index's (published, or
    overtaken): their chunks are never read again."""
    for step in self.build_steps():
      if step <= indexed_step:
        self.building_dir(step).rmtree()


def _check_search(index: mips.MipsIndex, sample: np.ndarray) -> None:
  ids, scores = index.search(sample, k=min(8, index.num_vectors))
  if ids.min() < 0 or ids.max() >= index.num_vectors:
    raise IndexVersionError(f'search returned ids outside [0, '
                            f'{index.num_vectors})')
  if not np.isfinite(scores).all():
    raise IndexVersionError('search returned non-finite scores')
  self_scores = np.einsum('qd,qd->q', sample, sample)
  found = scores[:, 0] >= self_scores - 1e-3 * np.abs(self_scores)
  if found.mean() < 0.9:
    raise IndexVersionError(
        f'only {found.mean():.0%} of indexed vectors find themselves')


def _check_manifest(manifest, version: str, directory) -> None:
  if not isinstance(manifest.get('files'), dict) or manifest.get(
      'version') != version:
    raise IndexVersionError(f'{directory / MANIFEST}: not the manifest of '
                            f'{version} (no `files`, or another version)')


def _check_file(path: epath.Path, expected: Mapping[str, Any],
                name=None) -> None:
  """`path` has the size and sha256 the manifest lists (`name` in errors)."""
  name = name or path
  if not path.exists():
    raise IndexVersionError(f'{name} is missing')
  if path.stat().length != expected['bytes']:
    raise IndexVersionError(f'{name}: {path.stat().length} bytes, the '
                            f'manifest says {expected["bytes"]}')
  if sha256(path) != expected['sha256']:
    raise IndexVersionError(f'{name}: checksum mismatch')


def _chunk_path(directory: epath.Path, chunk: int, suffix: str) -> epath.Path:
  return directory / f'chunk-{chunk:05d}.{suffix}'


def write_chunk(directory: epath.Path, chunk: int,
                embeddings: np.ndarray) -> None:
  """An embedding chunk, then its completion marker (the resume unit),
  which records the data's size."""
  path = _chunk_path(directory, chunk, 'npy')
  if corpus_lib.is_remote(directory):
    with path.open('wb') as f:  # one upload: the object appears whole
      np.save(f, embeddings)
  else:
    temporary = directory / f'.chunk-{chunk:05d}.npy.tmp'
    with temporary.open('wb') as f:
      np.save(f, embeddings)
    temporary.replace(path)
  _chunk_path(directory, chunk, 'done').write_text(json.dumps(
      dict(bytes=path.stat().length, rows=len(embeddings))))


def chunk_done(directory: epath.Path, chunk: int) -> bool:
  """The marker exists and the data has the size it records (an empty
  marker, from before sizes were recorded, counts as not done)."""
  try:
    marker = json.loads(_chunk_path(directory, chunk, 'done').read_text())
    return _chunk_path(directory, chunk, 'npy').stat().length == marker[
        'bytes']
  except (FileNotFoundError, ValueError, KeyError, TypeError):
    return False


def read_chunks(directory: epath.Path, chunks: Sequence[int]) -> np.ndarray:
  def read(c):
    with _chunk_path(directory, c, 'npy').open('rb') as f:  # local or gs://
      return np.load(f)
  return np.concatenate([read(c) for c in chunks])
