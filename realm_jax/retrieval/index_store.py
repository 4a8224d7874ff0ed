"""WORKDIR/index: published MIPS index versions and the pointer to the newest.

    index/
      LATEST                 {"version", "checkpoint_step"}: the newest
                             complete version; replaced atomically
      step-00000500/         a published version: manifest.json + index files
      building/step-.../     the builder's resumable work (embedding chunks)
      leases/<reader>.json   the version each index handle is serving

A version folder is made complete (files, checksums, verified) under
building/ and renamed into place before LATEST names it, so through the
pointer a reader only ever sees complete versions. The builder never deletes
the version LATEST names nor one a live lease names.
"""
from collections.abc import Iterable, Mapping, Sequence
import hashlib
import json
import os
import time
from typing import Any

from absl import logging
from etils import epath
import numpy as np

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
  """Write a temporary file, then rename it over `path`."""
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

  def verify_files(self, version: str) -> dict[str, Any]:
    """Checks every file of the version against its manifest checksum."""
    manifest = self.read_manifest(version)
    directory = self.version_dir(version)
    for name, expected in manifest['files'].items():
      path = directory / name
      if not path.exists():
        raise IndexVersionError(f'{path} is missing')
      if path.stat().length != expected['bytes']:
        raise IndexVersionError(f'{path}: {path.stat().length} bytes, the '
                                f'manifest says {expected["bytes"]}')
      if sha256(path) != expected['sha256']:
        raise IndexVersionError(f'{path}: checksum mismatch')
    return manifest

  def load(self, version: str, devices=None) -> tuple[mips.MipsIndex, dict]:
    """The verified index of `version` and its manifest."""
    manifest = self.verify_files(version)
    index = mips.load_index(self.version_dir(version), devices=devices)
    if (index.num_vectors, index.dim) != (manifest['num_blocks'],
                                          manifest['dim']):
      raise IndexVersionError(
          f'{self.version_dir(version)}: index holds {index.num_vectors} x '
          f'{index.dim}, the manifest says {manifest["num_blocks"]} x '
          f'{manifest["dim"]}')
    return index, manifest

  def versions(self) -> list[str]:
    if not self.directory.exists():
      return []
    return sorted(p.name for p in self.directory.iterdir()
                  if p.name.startswith('step-') and p.is_dir())

  # -- writing ---------------------------------------------------------------

  def building_dir(self, checkpoint_step: int) -> epath.Path:
    return self.directory / 'building' / version_name(checkpoint_step)

  def publish(self, checkpoint_step: int, index: mips.MipsIndex,
              sample: np.ndarray, metadata: Mapping[str, Any]) -> str:
    """Saves, checksums, verifies and renames a version; flips LATEST.

    `sample` holds a few of the indexed embeddings; each must find a vector
    scoring at least as high as itself (a search sanity check).
    Safe to call again after a crash at any point.
    """
    version = version_name(checkpoint_step)
    final = self.version_dir(version)
    if not final.exists():
      staging = self.building_dir(checkpoint_step) / 'index'
      if staging.exists():
        staging.rmtree()
      staging.mkdir(parents=True)
      files = index.save(staging)
      manifest = dict(
          format_version=FORMAT_VERSION, version=version,
          checkpoint_step=checkpoint_step, num_blocks=index.num_vectors,
          dim=index.dim, dtype='float32', kind=index.kind,
          files={name: dict(sha256=sha256(staging / name),
                            bytes=(staging / name).stat().length)
                 for name in files},
          created=time.time(), **metadata)
      (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
      _check_search(mips.load_index(staging), sample)
      staging.rename(final)
    self.verify_files(version)
    atomic_write_text(self.directory / POINTER, json.dumps(
        dict(version=version, checkpoint_step=checkpoint_step)))
    logging.info('Published index %s', final)
    return version

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
    for version in deleted:
      self.version_dir(version).rmtree()
    return deleted

  def delete_stale_builds(self, keep_step: int) -> None:
    """Abandoned builds of older checkpoints (a newer one has arrived)."""
    building = self.directory / 'building'
    if building.exists():
      for path in building.iterdir():
        if path.name != version_name(keep_step):
          path.rmtree()


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


def write_chunk(directory: epath.Path, chunk: int,
                embeddings: np.ndarray) -> None:
  """An embedding chunk, then its completion marker (the resume unit)."""
  path = directory / f'chunk-{chunk:05d}.npy'
  temporary = directory / f'.chunk-{chunk:05d}.npy.tmp'
  with temporary.open('wb') as f:
    np.save(f, embeddings)
  temporary.replace(path)
  (directory / f'chunk-{chunk:05d}.done').write_text('')


def chunk_done(directory: epath.Path, chunk: int) -> bool:
  return (directory / f'chunk-{chunk:05d}.done').exists()


def read_chunks(directory: epath.Path, chunks: Sequence[int]) -> np.ndarray:
  return np.concatenate([np.load(directory / f'chunk-{c:05d}.npy')
                         for c in chunks])
