"""`realm-mlm`: BERT masked-LM pre-training of the reader on the corpus.

  realm-mlm --config=configs/mlm.py:tiny --workdir=WORKDIR

Trains the reader's encoder and MLM head (objectives/mlm.py) on the blocks
of WORKDIR/corpus (or config.corpus_dir), or on sentence pairs of them
(`pair_query_len`; `pair_evidence='linked'`: a salient span beside another
block that holds it), holding the last `eval_blocks` out for MLM loss and
accuracy (and, with pairs, the copy accuracy beside the block - the linked
one - and beside the null document). Sharded, resumable and logged like every
trainer. Its checkpoints start realm-ict (`init_from`), realm-pretrain
(`init.reader_from`) and realm-finetune.
"""
from collections import Counter

from etils import epath
from flax import nnx
import jax
import ml_collections
import numpy as np

from realm_jax import cli
from realm_jax import config_lib
from realm_jax import models
from realm_jax import sharding
from realm_jax import trainer as trainer_lib
from realm_jax.inputs import mlm as mlm_input
from realm_jax.objectives import mlm as mlm_objective


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  trainer_lib.validate(config, num_devices)
  config_lib.check(0.0 < config.mask_rate < 1.0, 'mask_rate',
                   'must be in (0, 1)')
  config_lib.check(config.max_predictions >= 1, 'max_predictions',
                   'must be >= 1')
  config_lib.check(3 <= config.seq_len <= config.model.max_position_embeddings,
                   'seq_len', 'must be in [3, model.max_position_embeddings]')
  config_lib.check(config.eval_blocks >= 1, 'eval_blocks', 'must be >= 1')
  config_lib.validate_batch(config.eval_batch_size, 'eval_batch_size',
                            sharding.mesh_shape(config.mesh,
                                                num_devices)['data'])
  config_lib.check(0 <= config.head_warmup_steps < config.num_train_steps,
                   'head_warmup_steps', 'must be in [0, num_train_steps)')
  config_lib.check(config.pair_query_len == 0 or config.pair_query_len >= 3,
                   'pair_query_len', 'must be 0 (no pairs) or >= 3')
  config_lib.check(
      config.pair_query_len + config.seq_len
      <= config.model.max_position_embeddings, 'pair_query_len',
      f'{config.pair_query_len} + seq_len {config.seq_len} exceeds '
      f'model.max_position_embeddings {config.model.max_position_embeddings}')
  config_lib.check(0.0 < config.pair_mask_rate < 1.0, 'pair_mask_rate',
                   'must be in (0, 1)')
  config_lib.check(config.pair_evidence in ('own', 'linked'), 'pair_evidence',
                   f'{config.pair_evidence!r}: one of own, linked')
  config_lib.check(config.pair_evidence == 'own' or config.pair_query_len,
                   'pair_evidence', 'linked pairs need pair_query_len > 0')
  config_lib.check(0.0 <= config.pair_distractor_rate < 1.0 and (
      config.pair_evidence == 'linked' or not config.pair_distractor_rate),
                   'pair_distractor_rate', 'must be in [0, 1), and 0 unless '
                   "pair_evidence='linked'")
  config_lib.check(config.pair_evidence_window == 0 or (
      config.pair_evidence == 'linked'
      and 1 <= config.pair_evidence_window <= config.seq_len - 1),
                   'pair_evidence_window', 'must be 0 (whole blocks), or in '
                   "[1, seq_len - 1] with pair_evidence='linked'")


def frozen(path: tuple) -> bool:
  """The span head is not part of masked-LM training."""
  return tuple(path[:2]) == ('reader', 'span_head')


def make_evaluate(trainer: trainer_lib.Trainer, inputs: mlm_input.MlmInput,
                  batch_size: int, pairs: bool, linked: bool,
                  window: bool = False):
  """evaluate(params) -> held-out loss, MLM accuracy, and the accuracy of
  always predicting the held-out targets' most frequent piece; with
  `pairs`, copy_accuracy / copy_null_accuracy: of the sentence pieces alone,
  beside their block / the null document; with `linked` pairs also
  copy_distractor_accuracy, beside a block that does not hold them; with an
  evidence `window`, copy_block_accuracy beside the whole linked block."""
  batches = inputs.eval_batches(batch_size)
  targets = Counter(t for b in batches for t, w in zip(
      b['mlm_targets'].ravel(), b['mlm_weights'].ravel()) if w)
  unigram = targets.most_common(1)[0][1] / sum(targets.values())
  kinds = (('copy', 'own'), ('copy_null', 'null')) + (
      (('copy_distractor', 'distractor'),) if linked else ()) + (
          (('copy_block', 'block'),) if window else ())
  copy_batches = {name: inputs.copy_eval_batches(batch_size, evidence)
                  for name, evidence in kinds} if pairs else {}
  rows = batch_size // jax.process_count()
  first = jax.process_index() * rows
  metrics_of = jax.jit(
      lambda params, batch: mlm_objective.loss(params, batch, None,
                                               trainer.graphdef)[1],
      in_shardings=(trainer.shardings['params'], trainer.batch_sharding))

  def totals_of(params, batches):
    totals = Counter()
    for batch in batches:
      host = {k: v[first:first + rows] for k, v in batch.items()}
      host['encoder_trains'] = np.ones(rows, np.float32)
      metrics = jax.device_get(metrics_of(params, sharding.global_batch(
          host, trainer.batch_sharding)))
      count = float(metrics['predictions'])
      totals['loss'] += float(metrics['loss']) * count
      totals['mlm_accuracy'] += float(metrics['mlm_accuracy']) * count
      totals['predictions'] += count
    count = max(totals.pop('predictions'), 1.0)
    return {k: v / count for k, v in totals.items()}

  def evaluate(params):
    metrics = totals_of(params, batches) | dict(unigram_accuracy=unigram)
    for name, copy in copy_batches.items():
      metrics[f'{name}_accuracy'] = totals_of(params, copy)['mlm_accuracy']
    return metrics
  return evaluate


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains the masked LM; returns the metrics of the last logged step."""
  config = trainer_lib.checked_config(config, validate)
  workdir = epath.Path(workdir)
  corpus = trainer_lib.open_corpus(config, config.corpus_dir or
                                   workdir / 'corpus')
  config_lib.check(
      not config.pair_evidence_window or config.pair_query_len
      + corpus.block_len <= config.model.max_position_embeddings,
      'pair_evidence_window', 'the whole-block copy evaluation needs '
      f'pair_query_len + the corpus block length {corpus.block_len} <= '
      'model.max_position_embeddings')
  trainer = trainer_lib.Trainer(
      config, workdir, 'mlm',
      lambda: models.ReaderModel(config.model, rngs=nnx.Rngs(config.seed)),
      frozen=frozen)
  linked = None
  if config.pair_evidence == 'linked':
    examples = trainer_lib.salient_examples(
        corpus, workdir, annotator=config.annotator,
        query_len=config.pair_query_len, max_masks=config.max_predictions)
    linked = mlm_input.LinkedSpans(corpus, examples, config.pair_query_len)
  inputs = mlm_input.MlmInput(
      corpus, global_batch_size=config.batch_size, seq_len=config.seq_len,
      mask_rate=config.mask_rate, max_predictions=config.max_predictions,
      whole_word=config.whole_word, eval_blocks=config.eval_blocks,
      seed=config.seed, pair_query_len=config.pair_query_len,
      pair_mask_rate=config.pair_mask_rate, linked=linked,
      distractor_rate=config.pair_distractor_rate,
      evidence_window=config.pair_evidence_window,
      process_index=jax.process_index(),
      process_count=jax.process_count())
  rows = config.batch_size // jax.process_count()

  def host_batch(step, params):
    del params
    encoder_trains = float(step >= config.head_warmup_steps)
    return inputs.batch(step) | dict(
        encoder_trains=np.full(rows, encoder_trains, np.float32)), {}

  last = trainer.train(
      mlm_objective.loss, host_batch,
      evaluate=make_evaluate(trainer, inputs, config.eval_batch_size,
                             pairs=config.pair_query_len > 0,
                             linked=linked is not None,
                             window=config.pair_evidence_window > 0),
      eval_every_steps=config.eval_every_steps)
  trainer.close()
  return last


def run():
  cli.run_job(train_and_evaluate)


if __name__ == '__main__':
  run()
