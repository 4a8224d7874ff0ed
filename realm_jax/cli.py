"""The command line every job shares: --config, --workdir, --config.x=y."""
from collections.abc import Callable
import os
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags


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
      # Multi-host (set by launch/tpu_pretrain.sh): the cluster is
      # auto-detected on Cloud TPU.
      jax.distributed.initialize()
    job(flags.FLAGS.config, flags.FLAGS.workdir)

  app.run(main)
