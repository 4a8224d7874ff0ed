r"""realm-ict --config=configs/ict.py:tiny --workdir=/tmp/realm

Inverse Cloze Task warm start of the retriever (ORQA ict_experiment.py).

Variants: tiny (CPU, seconds), base (BERT-base, paper: batch 4096, lr 1e-4,
100k steps), large. Needs WORKDIR/corpus from configs/prepare_corpus.py with
the same variant (vocabulary and block length must agree).

From a BERT-family checkpoint (Hugging Face layout; the model sizes come
from its config.json, the corpus must be prepared with its vocab.txt), e.g.
all-MiniLM-L6-v2 as a sentence embedder (mean pooling, no projection):

  realm-ict --config=configs/ict.py:tiny --workdir=/tmp/realm \
    --config.init.bert_checkpoint=/path/to/all-MiniLM-L6-v2 \
    --config.model.pooling=mean --config.model.projection_size=0
"""
import ml_collections

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import optim


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  tiny = arg == 'tiny'
  config = ml_collections.ConfigDict()
  config.corpus_dir = ''  # '' = WORKDIR/corpus
  config.init_from = ''  # a realm-mlm workdir: every tower's encoder
  config.init = config_lib.init_config()
  config.model = config_lib.model_config(arg, vocab_size=8000 if tiny
                                         else 30522)
  config.lengths = config_lib.lengths_config()
  config.lengths.query_len = 64  # ICT queries are single sentences
  config.remove_sentence_rate = 0.9
  config.batch_size = 32 if tiny else 4096
  config.num_train_steps = 300 if tiny else 100_000
  # From scratch (no BERT) the tiny towers need a larger rate to leave the
  # collapsed start where every block embeds alike.
  config.optimizer = optim.job_optimizer_config(
      config, learning_rate=1e-3 if tiny else 1e-4, tiny=tiny)
  config.checkpoint = checkpointing.checkpoint_config(
      every_steps=50 if tiny else 1000)
  config.log_every_steps = 10 if tiny else 100
  config.seed = 0
  config.mesh = config_lib.mesh_config()
  config.axis_rules = config_lib.AXIS_RULES
  config.lock()
  return config
