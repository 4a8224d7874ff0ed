r"""Corpus preparation throughput against the tokenizer alone.

  .venv/bin/python bench/prepare_corpus.py --shared_data=../shared/data

For SQuAD-open's paragraphs and WikiText-2 test, times `prepare_corpus`
(read, split sentences, tokenize, pack, write shards) with the tiny config
and a vocab trained once beforehand, and as the baseline SentencePiece's
batched encode of the same documents already in memory: the tokenizer's
upper bound on what corpus preparation could reach. Medians over --runs.
"""
import importlib.util
import os
import pathlib
import statistics
import tempfile
import time

# Before tqdm is imported: no progress bars between the table's lines.
os.environ.setdefault('TQDM_DISABLE', '1')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from realm_jax import documents
from realm_jax.jobs import prepare_corpus as prepare
from realm_jax import tokenization
# pylint: enable=g-import-not-at-top,wrong-import-position

_SHARED_DATA = flags.DEFINE_string('shared_data', '../shared/data',
                                   'Folder of the shared data sets.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed runs; the median is reported.')

INPUTS = (('squad_open/corpus.jsonl', 'jsonl'),
          ('wikitext2/wiki.test.raw', 'wikitext'))


def _config(path: pathlib.Path, input_format: str):
  """The tiny config, reading `path`."""
  config_file = (pathlib.Path(__file__).resolve().parents[1] / 'configs' /
                 'prepare_corpus.py')
  spec = importlib.util.spec_from_file_location('prepare_corpus_config',
                                                config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.input.format = input_format
  config.input.paths = str(path)
  config.corpus.overwrite = True
  return config


def _median_seconds(fn, runs: int) -> float:
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench(path: pathlib.Path, input_format: str, runs: int) -> dict:
  config = _config(path, input_format)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    manifest = prepare.prepare_corpus(config, workdir)  # trains the vocab
    first_run = time.perf_counter() - start
    config.tokenizer.path = str(pathlib.Path(workdir) / 'corpus' /
                                'tokenizer.model')
    tokenizer = tokenization.load_tokenizer(config.tokenizer.path)
    prepare_s = _median_seconds(
        lambda: prepare.prepare_corpus(config, workdir), runs)
  docs = list(documents.read_documents(config.input))
  texts = [doc['title'] for doc in docs] + [doc['text'] for doc in docs]
  encode_s = _median_seconds(lambda: tokenizer.encode_batch(texts), runs)
  return dict(name=path.parent.name, docs=manifest['num_documents'],
              blocks=manifest['num_blocks'], mb=path.stat().st_size / 1e6,
              prepare_s=prepare_s, encode_s=encode_s,
              train_s=first_run - prepare_s)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  rows = [bench(pathlib.Path(_SHARED_DATA.value) / name, input_format,
                _RUNS.value) for name, input_format in INPUTS]
  header = (f'{"input":<11} {"docs":>6} {"blocks":>6} {"MB":>5} | '
            f'{"prepare s":>9} {"docs/s":>7} {"blocks/s":>8} {"MB/s":>5} | '
            f'{"encode s":>8} {"MB/s":>5} | {"encode/prepare":>14} | '
            f'{"vocab train s":>13}')
  print(header)
  print('-' * len(header))
  for r in rows:
    print(f'{r["name"]:<11} {r["docs"]:>6} {r["blocks"]:>6} {r["mb"]:>5.2f} | '
          f'{r["prepare_s"]:>9.3f} {r["docs"] / r["prepare_s"]:>7.0f} '
          f'{r["blocks"] / r["prepare_s"]:>8.0f} '
          f'{r["mb"] / r["prepare_s"]:>5.1f} | {r["encode_s"]:>8.3f} '
          f'{r["mb"] / r["encode_s"]:>5.1f} | '
          f'{r["encode_s"] / r["prepare_s"]:>14.2f} | {r["train_s"]:>13.2f}')
  print(f'medians of {_RUNS.value} runs; encode = SentencePiece batched '
        'encode of the same documents in memory (the upper bound); '
        f'{os.cpu_count()} CPUs')


if __name__ == '__main__':
  app.run(main)
