r"""Prepares WORKDIR/corpus/: documents -> word-piece blocks, in shards.

  realm-prepare-corpus --config=configs/prepare_corpus.py:tiny --workdir=DIR

Trains a SentencePiece vocab on the first sentences of the input unless
config.tokenizer.path names one, then packs every document into blocks
(realm_jax.corpus) and writes them atomically. WORKDIR may be a bucket
(gs://): the corpus is then staged locally and uploaded, manifest.json last.
"""
import hashlib
import itertools
import pathlib
import tempfile
from typing import Any

from absl import logging
from etils import epath
import ml_collections

from realm_jax import cli
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import documents
from realm_jax import tokenization

FORMATS = ('synthetic', 'jsonl', 'wikitext', 'tfds')


def validate(config: ml_collections.ConfigDict) -> None:
  check = config_lib.check
  config_lib.validate_lengths(config.lengths)
  check(config.input.format in FORMATS, 'input.format',
        f'{config.input.format!r} is not one of {FORMATS}')
  if config.input.format in ('jsonl', 'wikitext'):
    check(bool(config.input.paths.strip()), 'input.paths',
          f'empty; name the {config.input.format} files to read')
  if config.input.format == 'tfds':
    check(bool(config.input.tfds_name), 'input.tfds_name', 'empty')
  if config.input.format == 'synthetic':
    check(config.input.synthetic_docs >= 3, 'input.synthetic_docs',
          'must be >= 3')
  if config.tokenizer.path:
    check(pathlib.Path(config.tokenizer.path).is_file(), 'tokenizer.path',
          f'{config.tokenizer.path} is not a file')
  else:
    check(config.tokenizer.vocab_size > len(tokenization.SPECIAL_PIECES),
          'tokenizer.vocab_size', 'too small for the special tokens')
    check(config.tokenizer.max_train_sentences > 0,
          'tokenizer.max_train_sentences', 'must be > 0')
  check(config.corpus.shard_size > 0, 'corpus.shard_size', 'must be > 0')
  check(config.corpus.batch_size > 0, 'corpus.batch_size', 'must be > 0')


def _training_sentences(config: ml_collections.ConfigDict):
  """The first max_train_sentences sentences of the input, titles included."""
  def sentences():
    for doc in documents.read_documents(config.input):
      yield doc['title']
      text = doc['text']
      for start, end in documents.split_sentences(text):
        yield text[start:end]
  return itertools.islice(sentences(), config.tokenizer.max_train_sentences)


def prepare_corpus(config: ml_collections.ConfigDict,
                   workdir: str) -> dict[str, Any]:
  """Writes WORKDIR/corpus/ as `config` says; returns its manifest."""
  validate(config)
  # A bucket path (gs://) stays one: pathlib would make it a local `gs:/`.
  path = epath.Path(workdir) / 'corpus'
  if corpus_lib.is_committed(path) and not config.corpus.overwrite:
    raise FileExistsError(f'{path} exists; set config.corpus.overwrite=True '
                          'to replace it')
  if not corpus_lib.is_remote(path):
    path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    if config.tokenizer.path:
      tokenizer_file = pathlib.Path(config.tokenizer.path)
      tokenizer = tokenization.load_tokenizer(tokenizer_file)
    else:
      logging.info('Training a %d-piece SentencePiece vocab on at most %d '
                   'sentences', config.tokenizer.vocab_size,
                   config.tokenizer.max_train_sentences)
      tokenizer_file = pathlib.Path(scratch) / 'tokenizer.model'
      tokenizer = tokenization.train_sentencepiece(
          _training_sentences(config), tokenizer_file,
          config.tokenizer.vocab_size, lowercase=config.tokenizer.lowercase)
    fingerprint = hashlib.sha256()
    source = {key: config.input[key] for key in config.input.keys()}
    manifest = corpus_lib.write_corpus(
        path, documents.read_documents(config.input, fingerprint), tokenizer,
        tokenizer_file,
        block_len=config.lengths.block_len,
        max_title_len=config.lengths.max_title_len,
        shard_size=config.corpus.shard_size,
        source=source, fingerprint=fingerprint,
        overwrite=config.corpus.overwrite,
        batch_size=config.corpus.batch_size)
  stats = manifest['stats']
  logging.info('Wrote %s: %d blocks from %d documents in %d shards '
               '(%.1f s; mean body %.1f word pieces)', path,
               manifest['num_blocks'], manifest['num_documents'],
               len(manifest['shards']), manifest['wall_time_s'],
               stats['mean_body_len'])
  return manifest


def run():
  cli.run_job(prepare_corpus)


if __name__ == '__main__':
  run()
