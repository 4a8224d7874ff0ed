"""The command line every job shares: --config, --workdir, --config.x=y."""
from collections.abc import Callable
import os
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags


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

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if os.environ.get('REALM_DISTRIBUTED') == '1':
      initialize_distributed()
    job(flags.FLAGS.config, flags.FLAGS.workdir)

  app.run(main)
