r"""realm-pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/realm_pretrain --config.init_from=/tmp/realm

REALM pre-training (realm/train_realm.py): salient span masking, K = 8
candidates (the null document + the top 7 retrieved, the query's own block
excluded), marginal likelihood with gradients into the retriever. Needs
realm-index-builder running on the same workdir (it embeds the corpus with
this run's checkpoints; the first index comes from step 0). `init_from`
names an ICT workdir whose retriever seeds this run; `corpus_dir` defaults
to WORKDIR/corpus. Variants: tiny (CPU), base (paper: batch 512, lr 3e-5,
200k steps), large.

`init.bert_checkpoint` (a Hugging Face BERT directory) initialises the
retriever towers and the reader (and its MLM head, when the checkpoint has
one) and sets the model sizes; `init_from` then replaces the retriever with
the ICT run's. The corpus must be tokenized with the checkpoint's vocab.txt.
"""
import ml_collections

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import optim


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  tiny = arg == 'tiny'
  config = ml_collections.ConfigDict()
  config.corpus_dir = ''  # '' = WORKDIR/corpus
  config.init_from = ''  # an ICT workdir ('' = fresh retriever)
  config.init = config_lib.init_config()
  # A realm-mlm workdir: the reader (encoder, MLM head) starts from it.
  config.init.reader_from = ''
  config.model = config_lib.model_config(arg, vocab_size=8000 if tiny
                                         else 30522)
  config.lengths = config_lib.lengths_config()
  config.num_candidates = 8
  # Blocks searched beyond K - 1, so that dropping the query's own block
  # and repeats still fills the K - 1 slots.
  config.search_margin = 4
  # Which parameters embed the queries that search the index: 'current'
  # (this step's; no extra memory) or 'index' (the checkpoint the served
  # index was embedded from, as REALM's example generator; a second
  # retriever in memory). The candidates are re-scored with the current
  # parameters either way.
  config.query_embedder = 'current'
  # Retrieval one step ahead: step s + 1's queries are embedded (with
  # 'current': by the parameters entering step s) before step s is
  # dispatched, then searched and featurized while the device runs step s.
  # Checkpointed and evaluated steps are retrieved with their own
  # parameters, so a resumed run retrieves what an uninterrupted one did.
  # False: every step waits for its own embedding, search and features.
  config.retrieve_ahead = True
  # The null document's score: 'embedded' (REALM: the document tower's
  # embedding of the empty block) | 'relative' (the mean score of the
  # retrieved blocks + a learned offset, so that the retriever is trained
  # to rank blocks, never to move a query away from all of them;
  # objectives/realm.py).
  config.null_document = 'embedded'
  # Ablation: the retriever gets no gradient (REALM without training it).
  config.freeze_retriever = False
  config.masking = ml_collections.ConfigDict(dict(
      kind='salient',  # salient | random_tokens | random_spans (ablations)
      max_masks=10,
      random_mask_rate=0.15,  # random_tokens only
      annotator='builtin',  # builtin | spacy:<model> | module.path:callable
  ))
  config.batch_size = 8 if tiny else 512
  config.num_train_steps = 200 if tiny else 200_000
  config.optimizer = optim.job_optimizer_config(
      config, learning_rate=3e-4 if tiny else 3e-5, tiny=tiny)
  config.checkpoint = checkpointing.checkpoint_config(
      every_steps=20 if tiny else 500)
  config.index = ml_collections.ConfigDict(dict(
      poll_seconds=1.0 if tiny else 10.0,
      wait_seconds=600.0 if tiny else 6 * 3600.0,  # for the first index
      # Bounded staleness. 0: a step never waits (REALM's trainer), so how
      # stale retrieval gets depends on how fast the builder is. N > 0: a
      # step whose index is more than N steps older than it waits (up to
      # wait_seconds) for a fresher one; needs N >= checkpoint.every_steps.
      max_staleness_steps=0,
      # Lockstep refresh. 0: the served index swaps whenever the builder
      # publishes (REALM). N > 0: it swaps only every N steps, and step s
      # (s a multiple of N) waits for the index of checkpoint s, so which
      # index each step searched no longer depends on the builder's speed:
      # a run is reproducible (the learning bed), and N sets how stale
      # retrieval is (the paper's staler-index ablation). N must be a
      # multiple of checkpoint.every_steps.
      refresh_every_steps=0,
      # Held-out evaluation waits (up to wait_seconds) for the index of the
      # evaluated step's checkpoint, so that eval/fact_recall measures the
      # retriever, not the builder's lag. Needs a builder following the run
      # (not --once); at scale one build takes hours.
      fresh_eval=False,
  ))
  # Every step: the step already waits for its retrieval, so reading the
  # metrics back costs nothing.
  config.log_every_steps = 1
  # Held-out retrieval (eval/fact_recall, eval/source_recall): this many
  # batches of queries of their own, searched in the served index (see
  # index.fresh_eval), at step 0 (the ICT start), every eval_every_steps and at the end; 0: none.
  # The queries are sentences of about eval_heldout_fraction of the blocks
  # (by uid), which never give a training query (they stay in the index).
  config.eval_batches = 8
  config.eval_heldout_fraction = 0.25 if tiny else 0.01
  config.eval_every_steps = 50 if tiny else 5_000
  config.seed = 0
  config.mesh = config_lib.mesh_config()
  config.axis_rules = config_lib.AXIS_RULES
  config.lock()
  return config
