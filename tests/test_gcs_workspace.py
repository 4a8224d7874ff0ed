"""A gs:// workspace, through an in-memory Cloud Storage emulator (offline):
the corpus and examples writers commit with manifest.json, readers refuse
an uncommitted folder, metrics.jsonl is readable after every step."""
import json
import os
import pathlib
import subprocess
import sys

from etils import epath
import fsspec
import numpy as np
import pytest

from conftest import CONFIGS, REPO_ROOT, _prepare_corpus_config, job_config
import gcs_emulator
from realm_jax import corpus
from realm_jax import metrics
from realm_jax import synthetic_corpus
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.jobs import finetune
from realm_jax.jobs import ict
from realm_jax.jobs import prepare_corpus
from realm_jax.jobs import pretrain
from realm_jax.retrieval import index_store
from test_ict import _ict_config
from test_pretrain_e2e import TINY_MODEL, _pretrain_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """$REALM_CACHE (local copies and upload staging), and a clean cwd: a
  pathlib-mangled gs:// path would show up there as a `gs:` folder."""
  path = tmp_path / 'cache'
  monkeypatch.setenv('REALM_CACHE', str(path))
  monkeypatch.chdir(tmp_path)
  yield path
  assert not (tmp_path / 'gs:').exists()


@pytest.fixture(scope='module')
def docs_jsonl(tmp_path_factory):
  path = tmp_path_factory.mktemp('docs') / 'docs.jsonl'
  docs = synthetic_corpus.generate_documents(60, seed=5)
  path.write_text(''.join(
      json.dumps(dict(id=doc['doc_id'], title=doc['title'], text=doc['text']))
      + '\n' for doc in docs))
  return path


def _config(docs_jsonl, **corpus_fields):
  config = _prepare_corpus_config()
  config.input.format = 'jsonl'
  config.input.paths = str(docs_jsonl)
  config.tokenizer.vocab_size = 500
  config.corpus.shard_size = 40
  for name, value in corpus_fields.items():
    config.corpus[name] = value
  return config


def _objects(root: str) -> set[str]:
  """The names of every object under `root`, as listed now."""
  gcs_emulator.invalidate()
  prefix = root.removeprefix('gs://')
  return {name[len(prefix) + 1:]
          for name in fsspec.filesystem('gs').find(prefix)}


def _same_blocks(a: corpus.Corpus, b: corpus.Corpus):
  assert len(a) == len(b)
  ids = np.arange(len(a))
  for name, values in a.blocks(ids).items():
    np.testing.assert_array_equal(values, b.blocks(ids)[name], err_msg=name)
  np.testing.assert_array_equal(a.uid64(ids), b.uid64(ids))
  assert a.records(ids) == b.records(ids)
  for i in (0, len(a) - 1):
    np.testing.assert_array_equal(a.sentence_bounds(i), b.sentence_bounds(i))


def test_prepare_corpus_on_bucket(gcs_bucket, cache, tmp_path, docs_jsonl):
  local = prepare_corpus.prepare_corpus(_config(docs_jsonl),
                                        str(tmp_path / 'local'))
  workdir = f'{gcs_bucket}/w'
  manifest = prepare_corpus.prepare_corpus(_config(docs_jsonl), workdir)
  assert len(manifest['shards']) > 1
  # Every file is in the bucket, listed with its checksum in the manifest.
  assert _objects(workdir) == {f'corpus/{name}' for name in
                               [corpus.MANIFEST, *manifest['files']]}
  assert set(manifest['files']) == {
      p.name for p in (tmp_path / 'local' / 'corpus').iterdir()} - {
          corpus.MANIFEST}
  assert not list(cache.glob('.staging-*'))  # the staging folder is gone

  reader = corpus.Corpus(f'{workdir}/corpus')
  assert reader.path.parent == cache  # memory-mapped from the local copy
  assert reader.manifest == manifest
  # The same run on a local disk: the same blocks (and tokenizer).
  local_reader = corpus.Corpus(tmp_path / 'local' / 'corpus')
  assert manifest['tokenizer'] == local['tokenizer']
  assert manifest['files'] == local['files']
  _same_blocks(reader, local_reader)

  with pytest.raises(FileExistsError, match='config.corpus.overwrite'):
    prepare_corpus.prepare_corpus(_config(docs_jsonl), workdir)
  again = prepare_corpus.prepare_corpus(
      _config(docs_jsonl, overwrite=True, shard_size=1000), workdir)
  assert len(again['shards']) == 1
  # The old shards are gone, not mixed into the new corpus.
  assert _objects(workdir) == {f'corpus/{name}' for name in
                               [corpus.MANIFEST, *again['files']]}
  _same_blocks(corpus.Corpus(f'{workdir}/corpus'), local_reader)


class _Killed(BaseException):
  """The writer's process dying mid-upload."""


def test_uncommitted_corpus_is_refused(gcs_bucket, cache, docs_jsonl,
                                       monkeypatch):
  workdir = f'{gcs_bucket}/w'
  path = f'{workdir}/corpus'
  copy_file, uploads = corpus.copy_file, []

  def dying_copy(source, destination):
    if len(uploads) == 3:
      raise _Killed()
    uploads.append(destination)
    copy_file(source, destination)

  monkeypatch.setattr(corpus, 'copy_file', dying_copy)
  with pytest.raises(_Killed):
    prepare_corpus.prepare_corpus(_config(docs_jsonl), workdir)
  monkeypatch.setattr(corpus, 'copy_file', copy_file)
  left = _objects(workdir)
  assert len(left) == 3 and f'corpus/{corpus.MANIFEST}' not in left
  with pytest.raises(corpus.CorpusError,
                     match=f'{path}/manifest.json not found: {path} is not a '
                     'complete corpus folder'):
    corpus.Corpus(path)
  assert not list(cache.glob('*'))  # nothing copied

  # The next run needs no overwrite (nothing was committed) and replaces
  # the leftovers.
  manifest = prepare_corpus.prepare_corpus(_config(docs_jsonl), workdir)
  assert _objects(workdir) == {f'corpus/{name}' for name in
                               [corpus.MANIFEST, *manifest['files']]}
  assert len(corpus.Corpus(path)) == manifest['num_blocks']


def test_corrupt_or_incomplete_manifest_is_refused(gcs_bucket, cache,
                                                   docs_jsonl):
  path = epath.Path(f'{gcs_bucket}/w/corpus')
  manifest = prepare_corpus.prepare_corpus(_config(docs_jsonl),
                                           f'{gcs_bucket}/w')
  name = manifest['shards'][0]['name'] + '.tokens.npy'
  good = (path / name).read_bytes()
  (path / name).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
  with pytest.raises(corpus.CorpusError, match=f'{path / name}: .*sha256'):
    corpus.Corpus(path)
  (path / name).unlink()
  with pytest.raises(corpus.CorpusError,
                     match=f'{path / name} is missing; .*manifest.json lists'):
    corpus.Corpus(path)
  (path / name).write_bytes(good)
  del manifest['files']
  (path / corpus.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(corpus.CorpusError, match='not a complete manifest'):
    corpus.Corpus(path)
  assert not [p for p in cache.iterdir() if p.name.startswith('corpus-')]


def test_examples_on_bucket(gcs_bucket, cache, tmp_path, tiny_corpus_workdir):
  del cache
  reader = corpus.Corpus(tiny_corpus_workdir / 'corpus')
  remote = f'{gcs_bucket}/w/examples'
  manifest = pretrain_input.prepare_examples(reader, remote,
                                             annotator='builtin')
  local = pretrain_input.prepare_examples(reader, tmp_path / 'examples',
                                          annotator='builtin')
  assert manifest['num_examples'] == local['num_examples'] > 0
  assert manifest['files'] == local['files']
  assert _objects(remote) == {'block.npy', 'pieces.npy', 'manifest.json'}
  kwargs = dict(global_batch_size=8, query_len=96, max_masks=10, seed=0)
  batch = pretrain_input.PretrainInput(reader, remote, **kwargs).batch(3)
  expected = pretrain_input.PretrainInput(reader, tmp_path / 'examples',
                                          **kwargs).batch(3)
  assert batch.keys() == expected.keys()
  for key, values in expected.items():
    np.testing.assert_array_equal(batch[key], values, err_msg=key)
  with pytest.raises(FileExistsError, match='overwrite=True'):
    pretrain_input.prepare_examples(reader, remote, annotator='builtin')
  epath.Path(remote, corpus.MANIFEST).unlink()
  with pytest.raises(corpus.CorpusError, match=f'{remote}/manifest.json not '
                     'found: .* not a complete examples folder'):
    pretrain_input.PretrainInput(reader, remote, **kwargs)


def _lines(path):
  gcs_emulator.invalidate()
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()]


def test_metrics_jsonl_on_bucket(gcs_bucket):
  logdir = f'{gcs_bucket}/w/logs/job'
  writer = metrics.MetricWriter(logdir)
  for step in range(5):
    writer.write(step, {'loss': 1.0 / (step + 1)}, console=False)
    # Readable after every step, before close: a killed job loses nothing.
    assert [line['step'] for line in _lines(f'{logdir}/metrics.jsonl')] == (
        list(range(step + 1)))
  writer.close()
  # A restarted job appends (objects cannot: the writer rewrites the object).
  writer = metrics.MetricWriter(logdir)
  writer.write(5, {'loss': 0.1}, console=False)
  writer.close()
  lines = _lines(f'{logdir}/metrics.jsonl')
  assert lines == [dict(step=s, loss=1.0 / (s + 1)) for s in range(5)] + [
      dict(step=5, loss=0.1)]
  assert any(name.startswith('events.out.tfevents')
             for name in _objects(logdir))  # tensorboardX's gs:// writer


def test_cli_writes_into_the_bucket(gcs_bucket, cache, tmp_path, docs_jsonl):
  """`realm-prepare-corpus --workdir=gs://...` (a subprocess: it reaches
  the emulator through the environment the fixture set)."""
  del cache
  cli = pathlib.Path(sys.executable).parent / 'realm-prepare-corpus'
  result = subprocess.run(
      [str(cli), f'--config={CONFIGS / "prepare_corpus.py"}:tiny',
       f'--workdir={gcs_bucket}/w', '--config.input.format=jsonl',
       f'--config.input.paths={docs_jsonl}',
       '--config.tokenizer.vocab_size=500'],
      cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  gcs_emulator.invalidate()  # written by another process (gcs_emulator.py)
  reader = corpus.Corpus(f'{gcs_bucket}/w/corpus')
  assert reader.manifest['num_documents'] == 60
  assert _objects(f'{gcs_bucket}/w') == {
      f'corpus/{name}' for name in [corpus.MANIFEST, *reader.manifest['files']]}


@pytest.mark.slow
def test_the_whole_chain_on_a_bucket(gcs_bucket, cache, tmp_path, docs_jsonl):
  """prepare-corpus -> realm-ict -> realm-pretrain beside a
  realm-index-builder process (3 index versions, hot-swapped) ->
  realm-finetune -> realm-evaluate -> realm-answer, every workdir and the
  corpus on the bucket; nothing written to a local `gs:` folder (the
  cache fixture checks)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO_ROOT))
  ict_dir, pt_dir, ft_dir = (f'{gcs_bucket}/{name}'
                             for name in ('ict', 'pt', 'ft'))
  corpus_dir = f'{ict_dir}/corpus'
  config = _config(docs_jsonl)
  config.tokenizer.vocab_size = TINY_MODEL['vocab_size']
  prepare_corpus.prepare_corpus(config, ict_dir)
  ict.train_and_evaluate(_ict_config(num_train_steps=3), ict_dir)

  with (tmp_path / 'builder.log').open('w') as log:
    builder = subprocess.Popen(
        [sys.executable, '-m', 'index_builder.main',
         f'--config={CONFIGS}/index_builder.py:tiny', f'--workdir={pt_dir}',
         f'--config.corpus_dir={corpus_dir}', '--config.embed_batch_size=16',
         '--config.chunk_blocks=64', '--config.poll_seconds=0.2'],
        env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    config = _pretrain_config(
        num_train_steps=15, init_from=ict_dir, corpus_dir=corpus_dir,
        **{'index.refresh_every_steps': 5, 'index.fresh_eval': True})
    config.mesh.update(data=4, model=2)  # the 8 fake devices of the tests
    pretrain.train_and_evaluate(config, pt_dir)
    assert builder.wait(timeout=300) == 0, (tmp_path / 'builder.log'
                                           ).read_text()[-3000:]
  finally:
    builder.kill()
  rows = [r for r in _lines(f'{pt_dir}/logs/pretrain/metrics.jsonl')
          if 'loss' in r]
  assert [r['index_step'] for r in rows] == [0] * 5 + [5] * 5 + [10] * 5
  assert index_store.IndexStore(f'{pt_dir}/index').latest_step() == 15

  reader = corpus.Corpus(corpus_dir)
  questions = [dict(question=f'What about {r["title"]}?',
                    answer=[r['text'].split()[2]])
               for r in reader.records(np.arange(16))]
  train = tmp_path / 'train.jsonl'
  train.write_text(''.join(json.dumps(q) + '\n' for q in questions))
  config = job_config('finetune')
  config.model.update(TINY_MODEL)
  config.update_from_flattened_dict({
      'init_from': pt_dir, 'corpus_dir': corpus_dir,
      'train_data': str(train), 'eval_data': str(train),
      'lengths.reader_len': 96, 'retriever_beam_size': 8,
      'reader_beam_size': 2, 'num_train_steps': 2,
      'checkpoint.every_steps': 2})
  finetune.train_and_evaluate(config, ft_dir)
  assert len(_lines(f'{ft_dir}/eval/predictions.jsonl')) == len(questions)

  evaluated = subprocess.run(
      [sys.executable, '-m', 'realm_jax.jobs.evaluate',
       f'--config={CONFIGS}/evaluate.py', f'--workdir={ft_dir}',
       f'--config.data={train}'],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert len(_lines(f'{ft_dir}/eval/train.jsonl')) == len(questions)
  answered = subprocess.run(
      [sys.executable, '-m', 'realm_jax.jobs.answer', '--json',
       f'--workdir={ft_dir}', questions[0]['question']],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert answered.returncode == 0, answered.stderr[-3000:]
  answer = json.loads(answered.stdout.splitlines()[-1])
  assert answer['answer'] in answer['blocks'][answer['block']]['text']
