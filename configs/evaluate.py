r"""realm-evaluate --config=configs/evaluate.py:squad_open --workdir=/tmp/realm_ft --config.data=dev.jsonl

Exact match and recall@k of a realm-finetune run (its latest checkpoint,
its WORKDIR/index and corpus unless `index_dir` / `corpus_dir` name
others). Variants: tiny, base, large (any data; batch size for that model
size), or a benchmark name:
  nq_open       tfds:natural_questions_open:validation (REALM's NQ test,
                3,610 questions); or --config.data=nq_open/test.jsonl
  web_questions --config.data=webquestions/test.jsonl (tfds has none)
  curated_trec  --config.data=curatedtrec/test.jsonl; answers are regexes
  squad_open    --config.data=squad_open/dev.jsonl (also reports recall of
                the gold paragraph)
Predictions go to `output` (default WORKDIR/eval/<data name>.jsonl) with
metrics beside them.
"""
import ml_collections

_DEFAULT_DATA = dict(nq_open='tfds:natural_questions_open:validation')


_VARIANTS = ('tiny', 'base', 'large', 'nq_open', 'web_questions',
             'curated_trec', 'squad_open')


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  if arg not in _VARIANTS:
    raise ValueError(f'unknown variant {arg!r}; one of {", ".join(_VARIANTS)}')
  config = ml_collections.ConfigDict()
  config.data = _DEFAULT_DATA.get(arg, '')
  config.regex_answers = arg == 'curated_trec'
  config.tfds_data_dir = ''
  config.recall_ks = (1, 5, 20, 100)
  config.batch_size = 16 if arg in ('tiny', 'squad_open') else 64
  config.output = ''
  config.index_dir = ''  # '' = WORKDIR/index
  config.corpus_dir = ''  # '' = the run's corpus
  config.retrieval = ''  # '' = the run's: dense | bm25 | hybrid
  config.lock()
  return config
