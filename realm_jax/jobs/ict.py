"""`realm-ict`: Inverse Cloze Task warm start of the retriever towers.

  realm-ict --config=configs/ict.py:tiny --workdir=WORKDIR

Reads the blocks prepared in WORKDIR/corpus (realm-prepare-corpus), trains
the query/document towers with in-batch negatives (objectives/ict.py),
writes orbax checkpoints to WORKDIR/checkpoints (the index builder and
realm-pretrain start from them) and TensorBoard metrics to WORKDIR/logs.
Killed, it resumes from the latest checkpoint and the next unseen batch.

With `config.init.bert_checkpoint` (a Hugging Face BERT directory) the
towers start from that checkpoint (bert_import.init_from_bert) and take its
sizes; the corpus must be tokenized with its vocab.txt. With
`config.init_from` (a realm-mlm workdir) every tower's encoder starts as
that run's masked-LM-trained encoder.
"""
from etils import epath
from flax import nnx
import jax
import ml_collections

from realm_jax import bert_import
from realm_jax import checkpointing
from realm_jax import cli
from realm_jax import config_lib
from realm_jax import models
from realm_jax import trainer as trainer_lib
from realm_jax.inputs import ict as ict_input
from realm_jax.objectives import ict as ict_objective
from realm_jax.retrieval import workspace


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  trainer_lib.validate(config, num_devices)
  config_lib.check(0.0 <= config.remove_sentence_rate <= 1.0,
                   'remove_sentence_rate', 'must be in [0, 1]')


def encoders_from(init_from: str, config, params) -> dict:
  """`params` with every tower's encoder from the reader encoder of
  `init_from`'s latest checkpoint (a realm-mlm run)."""
  workspace.check_init_run(config.model, init_from,
                           tuple(bert_import.ARCHITECTURE_FIELDS))
  encoder = checkpointing.restore_from_run(
      init_from, 'init_from', ('params', 'reader', 'encoder'),
      checkpointing.abstract(params['retriever']['doc_tower']['encoder']))
  return dict(params, retriever={
      name: dict(tower, encoder=encoder)
      for name, tower in params['retriever'].items()})


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains ICT; returns the metrics of the last logged step."""
  config = trainer_lib.checked_config(config, validate)
  workdir = epath.Path(workdir)
  corpus = trainer_lib.open_corpus(config, config.corpus_dir or
                                   workdir / 'corpus')

  trainer = trainer_lib.Trainer(
      config, workdir, 'ict',
      lambda: models.RetrieverModel(config.model, rngs=nnx.Rngs(config.seed)))
  if trainer.fresh_start and config.init_from:
    trainer.params = encoders_from(config.init_from, config, trainer.params)

  inputs = ict_input.IctInput(
      corpus, global_batch_size=config.batch_size,
      query_len=config.lengths.query_len,
      remove_sentence_rate=config.remove_sentence_rate, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  last = trainer.train(ict_objective.loss,
                       lambda step, params: (inputs.batch(step), {}))
  trainer.close()
  return last


def run():
  cli.run_job(train_and_evaluate)


if __name__ == '__main__':
  run()
