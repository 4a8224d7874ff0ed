"""The command line every job shares: --config, --workdir, --config.x=y, and
a quiet console (--library_logs brings other libraries' INFO lines back)."""
from collections.abc import Callable
import ctypes.util
import logging as python_logging
import os
import pathlib
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

# Our own code: realm_jax/ and the index_builder/ entry point beside it.
_OUR_DIRS = tuple(str(pathlib.Path(__file__).resolve().parents[1] / name)
                  for name in ('realm_jax', 'index_builder'))


class _OwnInfoOnly(python_logging.Filter):
  """Passes our records, and other libraries' warnings and errors only."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return (record.levelno >= python_logging.WARNING
            or record.pathname.startswith(_OUR_DIRS))


def define_console_flags() -> None:
  flags.DEFINE_bool(
      'library_logs', False, 'Also print the INFO logs of other libraries '
      '(orbax, jax, tensorflow_datasets, ...); by default the console shows '
      'our progress bars, metric lines and messages, and only their '
      'warnings.')


def quiet_console() -> None:
  """Other libraries' INFO lines off the console unless --library_logs
  (call once flags are parsed, in main)."""
  if flags.FLAGS.library_logs:
    return
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())


def tcmalloc_command(argv: list[str], env: dict[str, str]
                     ) -> tuple[list[str], dict[str, str]] | None:
  """The command and environment that rerun this process with tcmalloc
  preloaded, or None: already preloaded, REALM_TCMALLOC=0, or no tcmalloc
  on the machine (Debian/Ubuntu: apt-get install libtcmalloc-minimal4).

  Why: XLA's CPU runtime allocates a step's large buffers afresh every
  step, and glibc's malloc mmaps and unmaps every block above its 32 MB
  mmap threshold, so each step faults its activations in again page by
  page: on a 2-core machine a third of a training step's CPU time was the
  kernel's (bench/host_allocator.py). tcmalloc keeps freed memory for
  reuse. TPU VM images preload it already, for the same reason.
  """
  if env.get('REALM_TCMALLOC', '1') == '0' or 'malloc' in env.get(
      'LD_PRELOAD', ''):
    return None
  library = (ctypes.util.find_library('tcmalloc_minimal')
             or ctypes.util.find_library('tcmalloc'))
  if not library:
    return None
  preload = ':'.join(p for p in (library, env.get('LD_PRELOAD', '')) if p)
  return [sys.executable, *argv[1:]], dict(env, LD_PRELOAD=preload)


def use_tcmalloc() -> None:
  """Re-executes this process under tcmalloc when tcmalloc_command says so
  (before any computation: call it first thing)."""
  command = tcmalloc_command(sys.orig_argv, dict(os.environ))
  if command:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, *command)


def host_allocator() -> str:
  """Which malloc this process runs on, from its memory map."""
  try:
    maps = pathlib.Path('/proc/self/maps').read_text()
  except OSError:
    return 'unknown'
  for name in ('tcmalloc', 'jemalloc', 'mimalloc'):
    if f'lib{name}' in maps:
      return name
  return 'the C library\'s malloc'


def initialize_distributed() -> None:
  """jax.distributed.initialize() for a multi-process job.

  On Cloud TPU (launch/tpu_pretrain.sh) the coordinator and process ids come
  from the TPU metadata. Elsewhere (several processes on one machine, as the
  tests run them) REALM_COORDINATOR_ADDRESS=host:port, REALM_NUM_PROCESSES
  and REALM_PROCESS_ID say it; CPU processes then talk through gloo.
  """
  env = os.environ
  if 'REALM_COORDINATOR_ADDRESS' in env:
    jax.distributed.initialize(
        coordinator_address=env['REALM_COORDINATOR_ADDRESS'],
        num_processes=int(env['REALM_NUM_PROCESSES']),
        process_id=int(env['REALM_PROCESS_ID']))
  else:
    jax.distributed.initialize()


def run_job(job: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """Runs `job(config, workdir)` as an absl app.

  Flags are defined here, not at import, so that job modules can be imported
  together (by tests, or by a job that calls another). The process first
  re-executes itself under tcmalloc when the machine has it (use_tcmalloc).
  """
  use_tcmalloc()
  config_flags.DEFINE_config_file(
      'config', None, 'Job config: configs/<job>.py:<variant>; override '
      'fields with --config.a.b=value.')
  flags.DEFINE_string('workdir', None,
                      'Workspace directory (see WORKSPACE.md).')
  flags.mark_flags_as_required(['config', 'workdir'])
  define_console_flags()

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    quiet_console()
    logging.info('Host allocator: %s', host_allocator())
    if os.environ.get('REALM_DISTRIBUTED') == '1':
      initialize_distributed()
    job(flags.FLAGS.config, flags.FLAGS.workdir)

  app.run(main)
