"""`realm-import`: a released REALM/ORQA model as a realm_jax workdir.

  realm-import --from=hf:DIR --workdir=W [--embedder=DIR]
  realm-import --from=tf:DIR --workdir=W [--embedder=TF_CHECKPOINT]
  realm-answer --workdir=W "who wrote the origin of species?"

  realm-import --from=hf:EMB_DIR --workdir=W_EMB   # or tf:EMB_MODULE_DIR
  realm-import --from=hf:ENC_DIR --workdir=W_ENC   # or tf:BERT_MODULE_DIR
  realm-pretrain --config=configs/pretrain.py:base --workdir=W \
      --config.init_from=W_EMB --config.init.reader_from=W_ENC \
      --config.model.hidden_act=gelu_new \
      --config.model.projection_layer_norm_eps=1e-12

The architecture of --from decides. An open-QA model (RealmForOpenQA, an
ORQA model.ckpt-*) becomes a workdir realm-answer reads (below); the
cc_news pre-trained embedder (RealmEmbedder) a workdir realm-pretrain's
--config.init_from takes, the pre-trained encoder (RealmKnowledgeAugEncoder)
one its --config.init.reader_from takes: a checkpoint, the checkpoint's
vocab.txt (tokenize the pre-training corpus with it) and config.json
(released_workdir.import_init).

hf:DIR is a Hugging Face open-QA checkpoint directory (a download of
google/realm-orqa-nq-openqa or google/realm-orqa-wq-openqa: config.json,
pytorch_model.bin, vocab.txt, block_records.npy); `--embedder` a
RealmEmbedder checkpoint directory (google/realm-cc-news-pretrained-
embedder). tf:DIR holds the reference's own artefacts (the ORQA model's
model.ckpt-*, encoded.ckpt, blocks.tfr, titles.tfr, vocab.txt: the layout
and the gsutil commands that fetch it are in realm_jax/released_workdir.py;
no TensorFlow needed); `--embedder` the pretrained embedder's TF checkpoint
(its TF-Hub module directory, or the variables/variables prefix). W gets
the params as a checkpoint, the blocks as a corpus and block_emb as its
published index; realm-answer and realm-evaluate then read it as a
fine-tuned run. The embedder is the document tower; without it that tower
is a copy of the question tower (answering does not use it). A killed
import is resumed by running the same command again.
"""
from absl import app
from absl import flags
from absl import logging

from realm_jax import cli
from realm_jax import released_workdir
from realm_jax.retrieval import mips

IMPORTERS = {'hf:': released_workdir.import_hf,
             'tf:': released_workdir.import_tf}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_console()
  options = flags.FLAGS
  source = options['from'].value
  if ':' not in source:  # a bare directory: hf:, as before tf: existed
    source = 'hf:' + source
  kind = source[:3]
  if kind not in IMPORTERS or '://' in source:
    raise app.UsageError(f'--from={source}: only local directories of a '
                         'Hugging Face checkpoint (hf:DIR) or of the '
                         'reference\'s TF artefacts (tf:DIR) can be imported')
  logging.info('Host allocator: %s', cli.host_allocator())
  embedder = dict(embedder_dir=options.embedder or None) if kind == 'hf:' else (
      dict(embedder=options.embedder or None))
  IMPORTERS[kind](
      source[3:], options.workdir, **embedder,
      index_kind=options.index_kind, block_len=options.block_len,
      overwrite=options.overwrite)


def run():
  cli.use_tcmalloc()
  # Defined here, not at import, as cli.run_job does.
  flags.DEFINE_string('from', None, 'hf:DIR: a Hugging Face RealmForOpenQA '
                      'checkpoint directory with vocab.txt and '
                      'block_records.npy, or a RealmEmbedder or '
                      'RealmKnowledgeAugEncoder one with vocab.txt; tf:DIR: '
                      'the reference\'s ORQA model, encoded.ckpt, '
                      'blocks.tfr, vocab.txt, or the TF-Hub module '
                      '(variables/) of the cc_news embedder or encoder with '
                      'vocab.txt.')
  flags.DEFINE_string('workdir', None, 'The workdir to make.')
  flags.DEFINE_string('embedder', '', 'The document tower: a RealmEmbedder '
                      'checkpoint directory (hf:), the embedder\'s TF '
                      'checkpoint or TF-Hub module directory (tf:) '
                      '(default: the question tower\'s copy).')
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
