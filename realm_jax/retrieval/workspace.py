"""The workspace contract: what the trainers and the index builder share.

Names of the files and checkpoint paths both sides rely on (WORKSPACE.md),
the one reader of a run's config.json, the trainer's start and finish
markers, and the one check that a run another job starts from has the
architecture the job expects.
"""
import json

from etils import epath
import jax
import ml_collections

from realm_jax import bert_import
from realm_jax import config_lib

CONFIG_FILE = 'config.json'  # the running trainer's config
TRAINING_DONE = 'TRAINING_DONE'  # no newer checkpoint will come
# In a checkpoint's state: the only subtree the index builder restores.
DOC_TOWER_PATH = ('params', 'retriever', 'doc_tower')
# The builder polls for new steps: the trainer keeps at least this many.
MIN_CHECKPOINTS_TO_KEEP = 5

# Model fields that fix the shapes or the outputs of the parameters: a run
# a job starts from must agree on them.
PARAMETER_FIELDS = (*bert_import.ARCHITECTURE_FIELDS, 'pooling',
                    'projection_size', 'projection_layer_norm_eps', 'score',
                    'learn_temperature', 'span_hidden_size', 'max_span_width')
# What a reader taken from another run must share with this model.
READER_FIELDS = (*bert_import.ARCHITECTURE_FIELDS, 'span_hidden_size',
                 'max_span_width')
# Defaults of fields added after runs were recorded without them.
_FIELD_DEFAULTS = dict(pooling='cls', score='dot', score_temperature=0.05,
                       learn_temperature=False, hidden_act='gelu')


def read_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """The config a trainer recorded in WORKDIR/config.json."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise config_lib.ConfigError(
        f'{path} not found: not a realm_jax workdir (start a trainer - '
        'realm-ict, realm-pretrain, realm-finetune - in it first)')
  config = json.loads(path.read_text())
  for field, value in _FIELD_DEFAULTS.items():
    config.get('model', {}).setdefault(field, value)
  return ml_collections.ConfigDict(config)


def check_init_run(model: ml_collections.ConfigDict, init_from: str,
                   fields=PARAMETER_FIELDS) -> ml_collections.ConfigDict:
  """Fails, naming the field, unless the run in `init_from` has this
  model's `fields`; returns that run's config."""
  theirs = read_config(init_from)
  for field in fields:
    config_lib.check(
        theirs.model.get(field) == model.get(field), f'model.{field}',
        f'{model.get(field)} != {theirs.model.get(field)} of the run in '
        f'{init_from}')
  return theirs


def start_job(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Records the job config (the index builder reads its `model`) and clears
  the training-done marker; process 0 only."""
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
    (workdir / TRAINING_DONE).unlink(missing_ok=True)


def finish_job(workdir: epath.Path) -> None:
  """Tells the index builder no newer checkpoint will come."""
  if jax.process_index() == 0:
    (workdir / TRAINING_DONE).write_text('')


def training_done(workdir: epath.Path) -> bool:
  return (workdir / TRAINING_DONE).exists()
