"""Every job config loads in every variant; bad configs name their field."""
import os
import subprocess
import sys

import pytest

from conftest import CONFIGS, REPO_ROOT, config_module
from realm_jax import config_lib
from realm_jax.jobs import ict

VARIANTS = ('tiny', 'base', 'large')
JOBS = sorted(p.stem for p in CONFIGS.glob('*.py'))


def load(job, variant):
  module = config_module(job)
  return module, module.get_config(variant)


@pytest.mark.parametrize('job', JOBS)
@pytest.mark.parametrize('variant', VARIANTS)
def test_config_variants_load_locked_and_documented(job, variant):
  module, config = load(job, variant)
  # The docstring starts with the command that runs this config.
  command = module.__doc__.strip().splitlines()[0]
  assert command.startswith('realm-') and f'--config=configs/{job}.py:' in (
      command)
  with pytest.raises(AttributeError):
    config.no_such_field = 1  # locked: typos fail instead of being ignored


@pytest.mark.parametrize('variant, size', [('tiny', (2, 128)),
                                           ('base', (12, 768)),
                                           ('large', (24, 1024))])
def test_model_sizes(variant, size):
  _, config = load('ict', variant)
  assert (config.model.num_layers, config.model.hidden_size) == size
  assert config.model.projection_size == 128
  assert config.lengths.block_len == 288
  ict.validate(config, num_devices=8)


@pytest.mark.parametrize('job', ['ict', 'pretrain'])
def test_retriever_defaults_are_realms_and_init_is_from_scratch(job):
  _, config = load(job, 'base')
  assert (config.model.pooling, config.model.projection_size,
          config.model.score) == ('cls', 128, 'dot')
  assert config_lib.init_config().to_dict() == dict(bert_checkpoint='')
  assert config.init.to_dict() == dict(
      bert_checkpoint='', **(dict(reader_from='') if job == 'pretrain'
                             else {}))
  assert config.init_from == ''
  config.model.score = 'cosine'
  config_lib.validate_model(config.model)
  config.model.score_temperature = 0.0
  with pytest.raises(config_lib.ConfigError, match='score_temperature'):
    config_lib.validate_model(config.model)
  config.model.score, config.model.score_temperature = 'l2', 0.05
  with pytest.raises(config_lib.ConfigError, match=r'model\.score:'):
    config_lib.validate_model(config.model)
  config.model.score = 'dot'
  for projection_size in (0, None):  # no projection
    config.model.projection_size = projection_size
    config_lib.validate_model(config.model)


def test_base_lengths_are_realms():
  lengths = config_lib.lengths_config()
  assert (lengths.query_len, lengths.block_len, lengths.joint_len) == (
      96, 288, 384)


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match='xl'):
    load('ict', 'xl')


@pytest.mark.parametrize('override, field', [
    (dict(batch_size=30), 'config.batch_size'),
    (dict(lengths=dict(block_len=30)), 'config.lengths.block_len'),
    (dict(model=dict(num_heads=3)), 'config.model.num_heads'),
    (dict(mesh=dict(model=3)), 'config.mesh'),
    (dict(checkpoint=dict(max_to_keep=1)), 'config.checkpoint.max_to_keep'),
    (dict(model=dict(max_position_embeddings=256)),
     'config.model.max_position_embeddings'),
    (dict(model=dict(pooling='max')), 'config.model.pooling'),
    (dict(model=dict(hidden_act='relu')), 'config.model.hidden_act'),
    (dict(model=dict(remat='layers')), 'config.model.remat'),
    (dict(model=dict(projection_size=-1)), 'config.model.projection_size'),
    (dict(optimizer=dict(warmup_steps=-2)), 'config.optimizer.warmup_steps'),
    (dict(optimizer=dict(warmup_steps=301)), 'config.optimizer.warmup_steps'),
])
def test_inconsistent_config_names_the_field(override, field):
  _, config = load('ict', 'tiny')
  config.update_from_flattened_dict(
      {k: v for k, v in _flatten(override)})
  with pytest.raises(config_lib.ConfigError, match=field.replace('.', r'\.')):
    ict.validate(config, num_devices=8)


def _flatten(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def test_unknown_override_on_the_command_line_fails(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'realm_jax.jobs.ict',
       f'--config={CONFIGS}/ict.py:tiny', f'--workdir={tmp_path}',
       '--config.model.hiden_size=64'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode != 0
  assert 'hiden_size' in result.stderr


@pytest.mark.parametrize('job', ['ict', 'pretrain', 'finetune', 'mlm'])
def test_optimizer_is_berts_at_scale_and_warms_up_10_percent_when_tiny(job):
  for variant in ('base', 'large'):
    _, config = load(job, variant)
    assert (config.optimizer.bias_correction,
            config.optimizer.warmup_steps) == (False, -1)  # the reference's
  _, config = load(job, 'tiny')
  assert config.optimizer.bias_correction
  assert config.optimizer.warmup_steps == config.num_train_steps // 10 > 0
  # The 10% follows the run's length when it is overridden.
  config.update_from_flattened_dict({'num_train_steps': 40})
  assert config.optimizer.warmup_steps == 4



def test_runs_recorded_before_newer_model_fields_still_initialise(tmp_path):
  """A run's config.json without the model fields added since (pooling,
  score, hidden_act, ...) reads with their old behaviour, so a job can
  still start from it; a recorded value that differs is named."""
  import json  # pylint: disable=g-import-not-at-top
  from realm_jax.retrieval import workspace  # pylint: disable=g-import-not-at-top
  model = config_lib.model_config('tiny', vocab_size=100)
  old = model.to_dict()
  for field in ('pooling', 'score', 'score_temperature', 'learn_temperature',
                'hidden_act'):
    del old[field]
  (tmp_path / 'config.json').write_text(json.dumps({'model': old}))
  assert workspace.read_config(tmp_path).model.hidden_act == 'gelu'
  workspace.check_init_run(model, str(tmp_path))
  model.hidden_act = 'gelu_new'
  with pytest.raises(config_lib.ConfigError, match='model.hidden_act'):
    workspace.check_init_run(model, str(tmp_path))
