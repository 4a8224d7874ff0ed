"""The command line every job shares: --config, --workdir, --config.x=y, and
a quiet console (--library_logs brings other libraries' INFO lines back)."""
from collections.abc import Callable
import logging as python_logging
import os
import pathlib
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
  together (by tests, or by a job that calls another).
  """
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
    if os.environ.get('REALM_DISTRIBUTED') == '1':
      initialize_distributed()
    job(flags.FLAGS.config, flags.FLAGS.workdir)

  app.run(main)
