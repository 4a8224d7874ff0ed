"""Open-QA datasets: Natural Questions-Open, WebQuestions, CuratedTrec, ...

A dataset is named by a spec string:
  PATH.jsonl                  ORQA's format, one {"question", "answer": [..]}
                              per line (extra fields such as squad_open's
                              "para_id" are kept)
  tfds:NAME:SPLIT             a prepared tensorflow-datasets dataset with
                              features `question` and `answer` (or
                              `answers`), e.g. tfds:natural_questions_open:
                              validation (the 3,610 NQ "test" questions).
                              tfds has no WebQuestions or CuratedTrec: use
                              their JSON-lines files.
CuratedTrec's answers are regular expressions (`regex_answers=True`); each
is compiled on load, so a bad one fails with its file and line.
"""
import json

from etils import epath
import tensorflow_datasets as tfds

from realm_jax import answers as answers_lib
from realm_jax import documents

TFDS_PREFIX = 'tfds:'


def read_jsonl(path: epath.PathLike, regex_answers: bool = False
               ) -> list[dict]:
  """[{"question": str, "answer": [str, ...], ...}]; errors name file:line."""
  path = epath.Path(path)
  examples = []
  with path.open('rb') as f:
    for number, raw in enumerate(f, start=1):
      where = f'{path}:{number}'
      if not raw.strip():
        continue
      try:
        example = json.loads(raw)
      except ValueError as e:
        raise ValueError(f'{where}: malformed JSON: {e}') from None
      _check_example(example, where)
      if regex_answers:
        answers_lib.compile_regexes(example['answer'], where)
      examples.append(example)
  return examples


def _check_example(example, where: str) -> None:
  if not isinstance(example, dict):
    raise ValueError(f'{where}: expected a JSON object')
  if not isinstance(example.get('question'), str) or not example['question']:
    raise ValueError(f'{where}: field "question" is missing or not a '
                     'non-empty string')
  answer = example.get('answer')
  if (not isinstance(answer, list) or not answer
      or not all(isinstance(a, str) for a in answer)):
    raise ValueError(f'{where}: field "answer" must be a non-empty list of '
                     'strings')


def read_tfds(name: str, split: str, data_dir: str | None = None
              ) -> list[dict]:
  """A prepared tfds Open-QA dataset, e.g. natural_questions_open."""
  builder = tfds.builder(name, data_dir=data_dir or None)
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    records = builder.as_data_source(split)
  else:
    documents.require_tensorflow()
    records = tfds.as_numpy(builder.as_dataset(split=split,
                                               shuffle_files=False))
  examples = []
  for index, record in enumerate(records):
    answers = record['answer'] if 'answer' in record else record['answers']
    example = dict(question=record['question'].decode('utf-8'),
                   answer=[a.decode('utf-8') for a in answers])
    _check_example(example, f'tfds {name}/{split} example {index}')
    examples.append(example)
  return examples


def load(spec: str, regex_answers: bool = False,
         tfds_data_dir: str | None = None) -> list[dict]:
  """The examples a spec string names (see the module docstring)."""
  if spec.startswith(TFDS_PREFIX):
    parts = spec[len(TFDS_PREFIX):].split(':')
    if len(parts) != 2:
      raise ValueError(f'{spec!r}: expected tfds:NAME:SPLIT')
    return read_tfds(*parts, data_dir=tfds_data_dir)
  return read_jsonl(spec, regex_answers)
