"""realm-prepare-corpus: configs, validation, the CLI, atomicity, real data."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, config_module
from realm_jax import cli
from realm_jax import config_lib
from realm_jax import corpus
from realm_jax.jobs import prepare_corpus as prepare
CLI = pathlib.Path(sys.executable).parent / 'realm-prepare-corpus'


def _load_config_module():
  return config_module('prepare_corpus')


prepare_config = _load_config_module()


def _config(variant='tiny', **overrides):
  config = prepare_config.get_config(variant)
  config.input.synthetic_docs = 300
  for name, value in overrides.items():
    section, field = name.split('__')
    config[section][field] = value
  return config


def test_variants():
  tiny, base, large = (prepare_config.get_config(v)
                       for v in ('tiny', 'base', 'large'))
  assert (tiny.input.format, tiny.tokenizer.vocab_size) == ('synthetic', 8000)
  assert base.tokenizer.vocab_size == large.tokenizer.vocab_size == 30522
  assert base.corpus.shard_size == 100_000
  assert tiny.lengths.block_len == 288
  with pytest.raises(AttributeError):
    tiny.corpus.bogus = 1  # locked
  with pytest.raises(ValueError, match='huge'):
    prepare_config.get_config('huge')


@pytest.mark.parametrize('overrides, field', [
    (dict(input__format='xml'), 'input.format'),
    (dict(input__format='jsonl'), 'input.paths'),
    (dict(input__synthetic_docs=1), 'input.synthetic_docs'),
    (dict(tokenizer__path='/no/such.model'), 'tokenizer.path'),
    (dict(tokenizer__vocab_size=3), 'tokenizer.vocab_size'),
    (dict(corpus__shard_size=0), 'corpus.shard_size'),
    (dict(lengths__max_title_len=300), 'lengths.block_len'),
])
def test_validation_names_the_field(tmp_path, overrides, field):
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}: '):
    prepare.prepare_corpus(_config(**overrides), str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_base_needs_input_paths(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='config.input.paths'):
    prepare.prepare_corpus(prepare_config.get_config('base'), str(tmp_path))


def test_prepare_synthetic(tmp_path):
  manifest = prepare.prepare_corpus(_config(), str(tmp_path))
  reader = corpus.Corpus(tmp_path / 'corpus')
  assert reader.manifest == manifest
  assert manifest['num_documents'] == 300
  assert len(reader) >= 300
  assert manifest['source']['format'] == 'synthetic'
  assert manifest['tokenizer']['file'] == 'tokenizer.model'
  assert 500 < manifest['tokenizer']['vocab_size'] <= 8000
  # Same input, same fingerprint and blocks; another seed, another input.
  again = prepare.prepare_corpus(_config(corpus__overwrite=True),
                                 str(tmp_path))
  assert again['source']['fingerprint'] == manifest['source']['fingerprint']
  assert (corpus.Corpus(tmp_path / 'corpus').uid64(np.arange(len(reader)))
          == reader.uid64(np.arange(len(reader)))).all()
  other = prepare.prepare_corpus(
      _config(corpus__overwrite=True, input__synthetic_seed=1), str(tmp_path))
  assert other['source']['fingerprint'] != manifest['source']['fingerprint']


def test_existing_tokenizer_is_used(tmp_path):
  first = prepare.prepare_corpus(_config(), str(tmp_path / 'a'))
  tokenizer_file = tmp_path / 'a' / 'corpus' / 'tokenizer.model'
  second = prepare.prepare_corpus(
      _config(tokenizer__path=str(tokenizer_file), input__synthetic_seed=1),
      str(tmp_path / 'b'))
  assert second['tokenizer'] == first['tokenizer']


def test_existing_corpus_needs_overwrite(tmp_path):
  prepare.prepare_corpus(_config(), str(tmp_path))
  with pytest.raises(FileExistsError, match='config.corpus.overwrite'):
    prepare.prepare_corpus(_config(), str(tmp_path))


def test_bad_line_late_in_input_leaves_no_corpus(tmp_path):
  good = json.dumps({'title': 'A', 'text': 'Some text. More text here.'})
  input_file = tmp_path / 'docs.jsonl'
  input_file.write_text('\n'.join([good] * 500 + ['{"title": "broken"'] +
                                  [good] * 10) + '\n')
  config = _config(input__format='jsonl', input__paths=str(input_file),
                   tokenizer__max_train_sentences=100,
                   corpus__shard_size=50, corpus__batch_size=32)
  workdir = tmp_path / 'work'
  with pytest.raises(ValueError, match=f'{input_file}:501: malformed JSON'):
    prepare.prepare_corpus(config, str(workdir))
  assert not list(workdir.iterdir())  # no corpus/, no corpus.tmp/


def _run_cli(*args, cwd=REPO_ROOT):
  return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True,
                        text=True, timeout=120, check=False)


def test_cli(tmp_path):
  result = _run_cli('--config=configs/prepare_corpus.py:tiny',
                    f'--workdir={tmp_path}',
                    '--config.input.synthetic_docs=200',
                    '--config.corpus.shard_size=64')
  assert result.returncode == 0, result.stderr
  reader = corpus.Corpus(tmp_path / 'corpus')
  assert reader.manifest['num_documents'] == 200
  assert all(s['num_blocks'] == 64 for s in reader.manifest['shards'][:-1])
  assert len(reader.manifest['shards']) == -(-len(reader) // 64)
  assert 'blocks/s' in result.stderr  # the progress bar
  # The job re-executed itself under tcmalloc when the machine has it.
  expected = 'tcmalloc' if cli.tcmalloc_command(
      ['x'], {}) else "the C library's malloc"
  assert f'Host allocator: {expected}' in result.stderr


def test_cli_rejects_unknown_field(tmp_path):
  result = _run_cli('--config=configs/prepare_corpus.py:tiny',
                    f'--workdir={tmp_path}', '--config.corpus.bogus_field=1')
  assert result.returncode != 0
  assert 'bogus_field' in result.stderr
  assert not list(tmp_path.iterdir())


@pytest.mark.shared_data
def test_squad_corpus(shared_data, tmp_path):
  manifest = prepare.prepare_corpus(
      _config(input__format='jsonl',
              input__paths=str(shared_data / 'squad_open/corpus.jsonl')),
      str(tmp_path))
  _check_blocks(tmp_path / 'corpus', manifest, num_documents=2067)
  doc_ids = [r['doc_id'] for r in corpus.Corpus(tmp_path / 'corpus').records(
      np.arange(manifest['num_blocks']))]
  # The longest paragraphs (94 with BERT's vocab) take several blocks.
  assert 50 < len(doc_ids) - len(set(doc_ids)) < 500


@pytest.mark.shared_data
def test_wikitext_corpus(shared_data, tmp_path):
  manifest = prepare.prepare_corpus(
      _config(input__format='wikitext',
              input__paths=str(shared_data / 'wikitext2/wiki.test.raw')),
      str(tmp_path))
  _check_blocks(tmp_path / 'corpus', manifest, num_documents=62)
  assert manifest['num_blocks'] > 20 * 62  # whole articles, not paragraphs


def _check_blocks(path, manifest, num_documents):
  reader = corpus.Corpus(path)
  assert manifest['num_documents'] == num_documents
  assert len(reader) == manifest['num_blocks'] >= num_documents
  assert manifest['tokenizer']['vocab_size'] == 8000
  batch = reader.blocks(np.arange(len(reader)))
  lengths = batch['input_mask'].sum(axis=1)
  assert (lengths == 3 + batch['title_len'] + batch['body_len']).all()
  assert lengths.max() <= 288
  assert (batch['title_len'] <= 32).all() and (batch['body_len'] > 0).all()
