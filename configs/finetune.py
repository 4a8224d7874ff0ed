r"""realm-finetune --config=configs/finetune.py:tiny --workdir=/tmp/realm_ft --config.init_from=/tmp/realm_pretrain --config.train_data=train.jsonl

Open-QA fine-tuning (ORQA's recipe, orqa/experiments/orqa_experiment.py):
the document tower and the index are frozen (embedded once, with the
starting checkpoint, into WORKDIR/index); the question tower and the reader
train on the retriever's and the reader's marginal likelihoods.

Data (`train_data`, `eval_data`): a JSON-lines file {"question", "answer":
[...]} or tfds:NAME:SPLIT (e.g. tfds:natural_questions_open:train);
CuratedTrec's answers are regular expressions: set regex_answers=True.
`init_from` is a realm-pretrain (or realm-ict) workdir whose model config
must match `model`; `corpus_dir` defaults to that run's corpus.
`init.bert_checkpoint` (a Hugging Face BERT directory) starts every encoder
from BERT, as ORQA's reader does; with `init_from` too, the run's params
then replace BERT's where it has them.
`closed_book=True` trains the reader alone to write the answer into
`answer_slots` [MASK]s (the no-retrieval baseline).

Variants: tiny (CPU), base (ORQA: lr 1e-5, top 5000 retrieved, top 5
read, reader length 320), large.
"""
import importlib.util
import pathlib

import ml_collections

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import optim


def _index_builder_config(arg: str) -> ml_collections.ConfigDict:
  """configs/index_builder.py's settings: the fixed index is built by the
  builder's code."""
  spec = importlib.util.spec_from_file_location(
      'index_builder_config',
      pathlib.Path(__file__).with_name('index_builder.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  tiny = arg == 'tiny'
  config = ml_collections.ConfigDict()
  config.init_from = ''  # a realm-pretrain or realm-ict workdir
  # Or/and a BERT-family checkpoint for every encoder (applied first).
  config.init = config_lib.init_config()
  # A run whose reader replaces init_from's (e.g. realm-mlm's, or REALM's
  # beside an ICT retriever: the paper's swaps).
  config.init.reader_from = ''
  config.corpus_dir = ''  # '' = init_from's corpus
  # The fixed index: init_from's published one when it was embedded from the
  # very checkpoint this run starts from, over the same corpus (the document
  # tower is frozen here, so its vectors are this run's): no re-embedding,
  # e.g. of a realm-import'ed release's 13M blocks. False: always embed.
  config.reuse_init_index = True
  config.train_data = ''
  config.eval_data = ''  # evaluated after the last step ('' = not)
  config.regex_answers = False  # CuratedTrec
  config.tfds_data_dir = ''
  config.closed_book = False
  config.answer_slots = 10  # closed book only
  config.model = config_lib.model_config(arg, vocab_size=8000 if tiny
                                         else 30522)
  config.lengths = ml_collections.ConfigDict(dict(
      query_len=64,  # ORQA's question length flag
      reader_len=320,  # ORQA: 288 + 32
  ))
  # Candidates: 'dense' (the index), 'bm25' or 'hybrid' (both, fused by
  # reciprocal rank; retrieval/lexical.py). Prediction uses the run's.
  config.retrieval = 'dense'
  config.retriever_beam_size = 100 if tiny else 5000
  config.reader_beam_size = 5
  config.batch_size = 8 if tiny else 16  # questions per step
  config.num_train_steps = 300 if tiny else 20_000
  config.optimizer = optim.job_optimizer_config(
      config, learning_rate=1e-3 if tiny else 1e-5, tiny=tiny)
  config.checkpoint = checkpointing.checkpoint_config(
      every_steps=100 if tiny else 1000)
  config.log_every_steps = 10 if tiny else 100
  config.eval_batch_size = 16 if tiny else 64
  config.index_builder = _index_builder_config(arg)
  config.seed = 0
  config.mesh = config_lib.mesh_config()
  config.axis_rules = config_lib.AXIS_RULES
  config.lock()
  return config
