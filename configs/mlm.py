r"""realm-mlm --config=configs/mlm.py:tiny --workdir=/tmp/realm_mlm --config.corpus_dir=/tmp/realm/corpus

BERT masked-LM pre-training of the reader (encoder + MLM head) on the corpus
blocks: what REALM's knowledge-augmented encoder starts from (the paper
uses BERT's MLM checkpoint; none ships in the package registries). 15% of
the pieces predicted, 80/10/10; `whole_word` picks whole words;
`pair_query_len` > 0 trains on sentence pairs that teach copying. The last
`eval_blocks` blocks are held out: MLM loss and accuracy on them (and the
accuracy of always predicting the most frequent held-out piece) are logged
every `eval_every_steps`.

From a BERT checkpoint (`init.bert_checkpoint`, e.g. all-MiniLM-L6-v2,
which has no MLM head): the encoder is the checkpoint's and, when it brings
no head, BERT's head (transform, GELU, LayerNorm, output bias, decoder tied
to the word embeddings) is trained alone for `head_warmup_steps` first.

The run starts realm-ict (`--config.init_from`: every tower's encoder),
realm-pretrain (`--config.init.reader_from`: the reader and its MLM head)
and realm-finetune. Variants: tiny (CPU), base (BERT-base: batch 256, lr
1e-4, 1M steps), large.
"""
import ml_collections

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import optim


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  tiny = arg == 'tiny'
  config = ml_collections.ConfigDict()
  config.corpus_dir = ''  # '' = WORKDIR/corpus
  config.init = config_lib.init_config()
  config.model = config_lib.model_config(arg, vocab_size=8000 if tiny
                                         else 30522)
  config.seq_len = 288  # a whole block (at most the corpus block length)
  config.mask_rate = 0.15
  config.max_predictions = 20 if tiny else 45  # BERT: 20 at 128, 76 at 512
  config.whole_word = False
  # > 0: sentence pairs, `[CLS] sentence [SEP] body [SEP]` as REALM's reader
  # reads them, the sentence (at most this many pieces with [CLS] and
  # [SEP]) one of the block's own with `pair_mask_rate` of its pieces
  # predicted: it teaches the reader to copy from the body (inputs/mlm.py).
  # 0: blocks alone, BERT's masked LM.
  config.pair_query_len = 0
  config.pair_mask_rate = 0.3
  # own: the sentence beside its own block. linked: a salient span of the
  # sentence masked, beside another block that holds the span (what a
  # perfect retriever gives REALM's reader); the spans are found once with
  # `annotator` into WORKDIR/examples.
  config.pair_evidence = 'own'
  # linked only: this fraction of the pairs has, instead, a block that does
  # not hold the span, so that the reader copies only what its evidence
  # holds - most of REALM's candidates hold nothing to copy. Measured on
  # the bed (README): at 0.5 the tiny reader never starts copying in 600
  # steps (beside the linked block 0.103, a distractor 0.104, null 0.105).
  config.pair_distractor_rate = 0.0
  # linked only, > 0: the linked block's body cut to this many pieces around
  # the span (a distractor's to as many), at most seq_len - 1: a short
  # window holds few other names of the span's kind, so copying is learned
  # from fewer examples and shorter rows (the bed's short blocks, README);
  # eval/copy_block_accuracy measures it beside whole linked blocks.
  config.pair_evidence_window = 0
  config.annotator = 'builtin'
  config.head_warmup_steps = 0  # set when the BERT checkpoint has no head
  config.eval_blocks = 256 if tiny else 10_000
  config.eval_every_steps = 100 if tiny else 10_000
  config.eval_batch_size = 32 if tiny else 256
  config.batch_size = 32 if tiny else 256
  config.num_train_steps = 300 if tiny else 1_000_000
  config.optimizer = optim.job_optimizer_config(
      config, learning_rate=1e-3 if tiny else 1e-4, tiny=tiny)
  config.checkpoint = checkpointing.checkpoint_config(
      every_steps=200 if tiny else 10_000)
  config.log_every_steps = 50 if tiny else 1000
  config.seed = 0
  config.mesh = config_lib.mesh_config()
  config.axis_rules = config_lib.AXIS_RULES
  config.lock()
  return config
