r"""realm-prepare-corpus --config=configs/prepare_corpus.py:tiny --workdir=DIR

Splits documents into REALM's blocks and writes DIR/corpus/. Variants:
  tiny   the synthetic corpus realm_jax generates (no download), a vocab of
         8000 trained on it; seconds on a CPU.
  base   BERT-size vocab (30522), 100k-block shards, for Wikipedia:
           --config.input.format=tfds --config.input.tfds_name=wikipedia/...
         or JSON lines {"title", "text"}:
           --config.input.format=jsonl --config.input.paths='wiki-*.jsonl'
  large  the same corpus settings as base (the corpus does not depend on the
         model size); kept so every job takes the same variant names.
Pass --config.tokenizer.path=FILE.model to use an existing vocab instead of
training one.
"""
import ml_collections

from realm_jax import config_lib

VARIANTS = ('tiny', 'base', 'large')


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'unknown variant {arg!r}; one of {VARIANTS}')
  tiny = arg == 'tiny'
  config = ml_collections.ConfigDict()

  config.input = ml_collections.ConfigDict(dict(
      format='synthetic' if tiny else 'jsonl',  # synthetic|jsonl|wikitext|tfds
      paths='',  # jsonl/wikitext: comma-separated files or glob patterns
      tfds_name='wikipedia/20230601.en',
      tfds_split='train',
      tfds_data_dir='',  # '' = tfds' default
      synthetic_docs=2000,
      synthetic_seed=0,
      # REALM/ORQA drop "List of", "Index of", "Outline of" and
      # "(disambiguation)" pages.
      drop_list_pages=True,
  ))

  config.tokenizer = ml_collections.ConfigDict(dict(
      path='',  # an existing .model file; '' = train one on the input
      vocab_size=8000 if tiny else 30522,
      lowercase=True,  # REALM uses uncased BERT
      # Training reads the first this many sentences of the input.
      max_train_sentences=200_000 if tiny else 2_000_000,
  ))

  config.lengths = config_lib.lengths_config()

  config.corpus = ml_collections.ConfigDict(dict(
      shard_size=10_000 if tiny else 100_000,  # blocks per shard
      batch_size=256,  # documents per tokenizer call
      overwrite=False,  # replace an existing WORKDIR/corpus
  ))

  config.lock()
  return config
