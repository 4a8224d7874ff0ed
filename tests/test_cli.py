"""realm_jax/cli.py: the host allocator every job re-executes under."""
import ctypes.util
import os
import sys

from realm_jax import cli


def _find(found):
  return lambda name: found.get(name)


def test_tcmalloc_command_preloads_it(monkeypatch):
  monkeypatch.setattr(ctypes.util, 'find_library', _find(
      {'tcmalloc_minimal': 'libtcmalloc_minimal.so.4'}))
  argv, env = cli.tcmalloc_command(
      ['/venv/bin/python', '-m', 'realm_jax.jobs.ict', '--workdir=W'],
      {'PATH': '/bin', 'LD_PRELOAD': 'libother.so'})
  assert argv == [sys.executable, '-m', 'realm_jax.jobs.ict', '--workdir=W']
  # Ours first; a preload the user asked for is kept.
  assert env == {'PATH': '/bin',
                 'LD_PRELOAD': 'libtcmalloc_minimal.so.4:libother.so'}
  # The full gperftools library serves as well.
  monkeypatch.setattr(ctypes.util, 'find_library', _find(
      {'tcmalloc': 'libtcmalloc.so.4'}))
  assert cli.tcmalloc_command(['x'], {})[1]['LD_PRELOAD'] == (
      'libtcmalloc.so.4')


def test_tcmalloc_command_declines(monkeypatch):
  monkeypatch.setattr(ctypes.util, 'find_library', _find(
      {'tcmalloc_minimal': 'libtcmalloc_minimal.so.4'}))
  # Already re-executed (no loop), or another allocator chosen by the user.
  assert cli.tcmalloc_command(['x'], {
      'LD_PRELOAD': '/usr/lib/libtcmalloc_minimal.so.4'}) is None
  assert cli.tcmalloc_command(['x'], {
      'LD_PRELOAD': 'libjemalloc.so.2'}) is None
  assert cli.tcmalloc_command(['x'], {'REALM_TCMALLOC': '0'}) is None
  monkeypatch.setattr(ctypes.util, 'find_library', _find({}))
  assert cli.tcmalloc_command(['x'], {}) is None


def test_this_machine_has_tcmalloc_when_required():
  # .ci/run installs it and sets REALM_REQUIRE_TCMALLOC=1; elsewhere the
  # jobs run on glibc's malloc, only slower.
  found = (ctypes.util.find_library('tcmalloc_minimal')
           or ctypes.util.find_library('tcmalloc'))
  if os.environ.get('REALM_REQUIRE_TCMALLOC') == '1':
    assert found, 'no tcmalloc: apt-get install libtcmalloc-minimal4'
  assert bool(found) == bool(cli.tcmalloc_command(['x'], {}))
