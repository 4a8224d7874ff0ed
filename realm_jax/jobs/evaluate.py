"""`realm-evaluate`: exact match and retrieval recall of a fine-tuned run.

  realm-evaluate --config=configs/evaluate.py:squad_open --workdir=FT_WORKDIR
  realm-evaluate --config=configs/evaluate.py:curated_trec --workdir=W \
    --config.data=/path/curatedtrec/test.jsonl

Predicts with realm_jax/prediction.py; reports exact match (SQuAD
normalisation; CuratedTrec: regex), recall@k of a block holding an answer
and, when the data names gold paragraphs (`para_id`), of the gold
paragraph; writes one JSON line per question with the top blocks.
"""
import json

from etils import epath
import jax
import ml_collections

from realm_jax import cli
from realm_jax import config_lib
from realm_jax import prediction


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  config_lib.check(config.data != '', 'data', 'name the questions (a .jsonl '
                   'path or tfds:NAME:SPLIT)')
  output = config.output or epath.Path(workdir) / 'eval' / (
      epath.Path(config.data.split(':')[-1]).stem + '.jsonl')
  metrics = prediction.evaluate_workdir(
      workdir, config.data, regex_answers=config.regex_answers,
      output=output, batch_size=config.batch_size,
      tfds_data_dir=config.tfds_data_dir, index=config.index_dir,
      corpus=config.corpus_dir, ks=tuple(config.recall_ks),
      retrieval=config.retrieval)
  if jax.process_index() == 0:
    print(json.dumps(metrics, indent=2))
    print(f'predictions: {output}')


def run():
  cli.run_job(main)


if __name__ == '__main__':
  run()
