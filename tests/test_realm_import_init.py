"""realm-import of the cc_news pre-trained embedder and encoder: workdirs
that realm-pretrain's --config.init_from / --config.init.reader_from take.

The references are tiny random RealmEmbedder / RealmKnowledgeAugEncoder
(as tests/test_realm_import.py's) and the TF fixtures of
tests/test_tf_checkpoint.py; each import is restored as realm-pretrain
restores its init runs (running realm-pretrain itself would be too slow).
"""
import json
import os
import shutil

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from flax import nnx  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.deprecated.realm import modeling_realm

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import models
from realm_jax import released_workdir
from realm_jax import tf_realm_import
from realm_jax.jobs import pretrain
from realm_jax.retrieval import workspace
import test_realm_import
import test_tf_checkpoint

# pylint: disable=protected-access
_hf_config, _randomized, _save = (test_realm_import._hf_config,
                                  test_realm_import._randomized,
                                  test_realm_import._save)
_inputs, _torch = test_realm_import._inputs, test_realm_import._torch
_max_difference = test_realm_import._max_difference
# realm-pretrain's checks of its init runs, per imported part.
FIELDS = dict(retriever=pretrain._RETRIEVER_FIELDS,
              reader=workspace.READER_FIELDS)
FLAGS = dict(retriever='init_from', reader='init.reader_from')
# pylint: enable=protected-access


def _vocab(path):
  words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]',
           *(f'w{i}' for i in range(test_realm_import.VOCAB - 5))]
  (path / 'vocab.txt').write_text('\n'.join(words) + '\n')


def _save_hf(cls, seed, path):
  torch.manual_seed(seed)
  reference = _randomized(cls(_hf_config()))
  _save(reference, path, safe=True)
  _vocab(path)
  return reference


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """{part: (workdir, checkpoint dir, transformers reference)}."""
  root = tmp_path_factory.mktemp('init')
  out = {}
  for part, cls, seed in (('retriever', modeling_realm.RealmEmbedder, 0),
                          ('reader', modeling_realm.RealmKnowledgeAugEncoder,
                           2)):
    reference = _save_hf(cls, seed, root / part)
    released_workdir.import_hf(str(root / part), str(root / f'w_{part}'))
    out[part] = root / f'w_{part}', root / part, reference
  return out


def _restored(workdir, part, model_config=None):
  """A models.REALM of the imported model config (or `model_config`)
  with `part` restored as realm-pretrain restores it."""
  config = model_config or workspace.read_config(workdir).model
  model = models.REALM(config, rngs=nnx.Rngs(1))
  params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model)))
  workspace.check_init_run(config, str(workdir), FIELDS[part])
  params[part] = checkpointing.restore_from_run(
      workdir, FLAGS[part], ('params', part),
      checkpointing.abstract(params)[part])
  nnx.update(model, params)
  return model


def test_embedder_is_a_retriever_init(imported):
  workdir, hf_dir, reference = imported['retriever']
  model = workspace.read_config(workdir).model
  assert (model.pooling, model.projection_size, model.score, model.hidden_act,
          model.share_towers, model.num_layers, model.hidden_size) == (
              'cls', 16, 'dot', 'gelu_new', True, 2, 32)
  assert ((workdir / 'vocab.txt').read_text() ==
          (hf_dir / 'vocab.txt').read_text())
  inputs = _inputs()
  with torch.no_grad():
    want = reference(*_torch(inputs[0], inputs[2], inputs[1])
                     ).projected_score.numpy()
  retriever = _restored(workdir, 'retriever').retriever
  _max_difference(retriever.embed_blocks(*inputs), want)
  _max_difference(retriever.embed_queries(*inputs), want)


def test_encoder_is_a_reader_init(imported):
  workdir, _, reference = imported['reader']
  reader = _restored(workdir, 'reader').reader
  ids, segments, mask = _inputs()
  positions = np.arange(ids.shape[1], dtype=np.int32)[None].repeat(
      len(ids), 0)
  got = reader.mlm_logits(reader(ids, segments, mask), positions)
  with torch.no_grad():
    want = reference(*_torch(ids, mask, segments)).logits.numpy()
  _max_difference(got, want)


@pytest.mark.parametrize('part,field,value', [
    ('retriever', 'hidden_act', 'gelu'),
    ('retriever', 'projection_layer_norm_eps', 1e-3),
    ('retriever', 'share_towers', False),
    ('reader', 'num_layers', 3)])
def test_a_model_field_mismatch_is_named(imported, part, field, value):
  workdir = imported[part][0]
  config = workspace.read_config(workdir).model
  config[field] = value
  with pytest.raises(config_lib.ConfigError, match=f'model.{field}'):
    _restored(workdir, part, config)


def test_a_rerun_keeps_the_import(imported, tmp_path):
  workdir, hf_dir, _ = imported['retriever']
  before = (workdir / 'config.json').read_text()
  stamp = (workdir / 'checkpoints').stat().st_mtime_ns
  released_workdir.import_hf(str(hf_dir), str(workdir))
  assert (workdir / 'config.json').read_text() == before
  assert (workdir / 'checkpoints').stat().st_mtime_ns == stamp
  assert sorted(os.listdir(workdir)) == [
      'TRAINING_DONE', 'checkpoints', 'config.json', 'vocab.txt']
  # The encoder's import is another's: refused unless --overwrite.
  other = tmp_path / 'w'
  shutil.copytree(workdir, other)
  with pytest.raises(FileExistsError, match='--overwrite'):
    released_workdir.import_hf(str(imported['reader'][1]), str(other))
  released_workdir.import_hf(str(imported['reader'][1]), str(other),
                             overwrite=True)
  assert json.loads((other / 'config.json').read_text())[
      'architecture'] == 'RealmKnowledgeAugEncoder'


@pytest.mark.parametrize('architecture', ['RealmReader', 'RealmScorer'])
def test_other_architectures_are_refused(architecture, tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps(dict(
      model_type='realm', architectures=[architecture])))
  with pytest.raises(ValueError, match=(
      f'a {architecture}; realm-import takes RealmForOpenQA .*RealmEmbedder'
      ' .*RealmKnowledgeAugEncoder')):
    released_workdir.import_hf(str(tmp_path), str(tmp_path / 'w'))


def test_embedder_with_an_embedder_is_refused(imported, tmp_path):
  _, hf_dir, _ = imported['retriever']
  with pytest.raises(ValueError, match='--embedder'):
    released_workdir.import_hf(str(hf_dir), str(tmp_path / 'w'),
                               embedder_dir=str(hf_dir))


@pytest.mark.parametrize('module,part', [('embedder', 'retriever'),
                                         ('bert', 'reader')])
def test_tf_modules_import_as_inits(module, part, tmp_path):
  """tf:DIR of a TF-Hub module (variables/, assets/vocab.txt): the restore
  holds what tf_realm_import reads."""
  tf1 = test_tf_checkpoint.TF1
  shutil.copytree(tf1 / module, tmp_path / module)
  (tmp_path / module / 'assets').mkdir()
  shutil.copy(tf1 / 'vocab.txt', tmp_path / module / 'assets')
  shutil.copy(tf1 / 'config.json', tmp_path / module)
  workdir = tmp_path / 'w'
  released_workdir.import_tf(str(tmp_path / module), str(workdir))
  assert (workdir / 'vocab.txt').read_text() == (tf1 / 'vocab.txt').read_text()
  want = released_workdir.init_params(tf_realm_import.import_tf_checkpoint(
      tmp_path / module, config=tf1 / 'config.json'))[part]
  got = nnx.to_pure_dict(nnx.state(_restored(workdir, part)))[part]
  jax.tree.map(np.testing.assert_array_equal, got, want)
