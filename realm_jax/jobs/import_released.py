"""`realm-import`: a released REALM/ORQA open-QA model as a realm_jax workdir.

  realm-import --from=hf:DIR --workdir=W [--embedder=DIR]
  realm-answer --workdir=W "who wrote the origin of species?"

DIR is a Hugging Face open-QA checkpoint directory (a download of
google/realm-orqa-nq-openqa or google/realm-orqa-wq-openqa: config.json,
pytorch_model.bin, vocab.txt, block_records.npy). W gets the params as a
checkpoint, the block records as a corpus and block_emb as its published
index (realm_jax/released_workdir.py); realm-answer and realm-evaluate then
read it as a fine-tuned run. `--embedder` (a RealmEmbedder checkpoint, e.g.
google/realm-cc-news-pretrained-embedder) is the document tower; without
it that tower is a copy of the question tower (answering does not use it).
A killed import is resumed by running the same command again.
"""
from absl import app
from absl import flags
from absl import logging

from realm_jax import cli
from realm_jax import released_workdir
from realm_jax.retrieval import mips

SOURCE_PREFIX = 'hf:'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_console()
  options = flags.FLAGS
  source = options['from'].value
  if '://' in source or (':' in source and not source.startswith(
      SOURCE_PREFIX)):
    raise app.UsageError(f'--from={source}: only Hugging Face checkpoint '
                         f'directories ({SOURCE_PREFIX}DIR) can be imported')
  logging.info('Host allocator: %s', cli.host_allocator())
  released_workdir.import_open_qa(
      source.removeprefix(SOURCE_PREFIX), options.workdir,
      embedder_dir=options.embedder or None, index_kind=options.index_kind,
      block_len=options.block_len, overwrite=options.overwrite)


def run():
  cli.use_tcmalloc()
  # Defined here, not at import, as cli.run_job does.
  flags.DEFINE_string('from', None, f'{SOURCE_PREFIX}DIR: a Hugging Face '
                      'RealmForOpenQA checkpoint directory with vocab.txt '
                      'and block_records.npy.')
  flags.DEFINE_string('workdir', None, 'The workdir to make.')
  flags.DEFINE_string('embedder', '', 'A RealmEmbedder checkpoint directory: '
                      'the document tower (default: the question tower\'s '
                      'copy).')
  flags.DEFINE_enum('index_kind', 'auto', list(mips.KINDS),
                    'The index of block_emb: exact (brute force, as '
                    'transformers\' RealmForOpenQA), scann (as ORQA), auto '
                    '(exact up to 200k blocks).')
  flags.DEFINE_integer('block_len', 288, 'Word pieces of a corpus block, '
                       '[CLS] [SEP] record [SEP]; longer records are cut.')
  flags.DEFINE_bool('overwrite', False, 'Replace what another import left '
                    'in the workdir.')
  flags.mark_flags_as_required(['from', 'workdir'])
  cli.define_console_flags()
  app.run(main)


if __name__ == '__main__':
  run()
