"""Open-QA loaders and metrics on the real benchmark files in ../shared/data."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from realm_jax import answers
from realm_jax.inputs import questions

pytestmark = pytest.mark.shared_data


@pytest.mark.parametrize('path, count, regex', [
    ('nq_open/test.jsonl', 3610, False),
    ('nq_open/efficientqa_dev.jsonl', 1800, False),
    ('webquestions/test.jsonl', 2032, False),
    ('webquestions/train.jsonl', 3417, False),
    ('webquestions/dev.jsonl', 361, False),
    ('curatedtrec/test.jsonl', 694, True),
    ('curatedtrec/train.jsonl', 1353, False),  # as text: see below
    ('curatedtrec/dev.jsonl', 133, True),
    ('squad_open/train.jsonl', 7720, False),
    ('squad_open/dev.jsonl', 875, False),
])
def test_real_files_load_with_their_counts(shared_data, path, count, regex):
  examples = questions.load(str(shared_data / path), regex_answers=regex)
  assert len(examples) == count
  for example in examples:
    assert example['question'] and example['answer']
    # A reference answer is always an exact match of itself (regexes: each
    # compiles, and is_correct accepts any string it matches at the start).
    if not regex:
      assert answers.is_correct(example['answer'][0], example['answer'])


def test_curated_trec_train_has_one_broken_regex(shared_data):
  # Line 635 ends in a lone backslash, which Python's re (ORQA's scorer)
  # rejects: the loader says where, rather than training on it.
  with pytest.raises(ValueError, match=r'curatedtrec/train\.jsonl:635: '
                     r'answer .* bad escape'):
    questions.load(str(shared_data / 'curatedtrec/train.jsonl'),
                     regex_answers=True)


def test_curated_trec_regexes_score_as_orqa(shared_data):
  examples = {e['question']: e['answer'] for e in questions.load(
      str(shared_data / 'curatedtrec/dev.jsonl'), regex_answers=True)}
  lindbergh = examples['What site did Lindbergh begin his flight from in '
                       '1927?']
  assert answers.is_correct('Roosevelt Field, Long Island', lindbergh, True)
  assert answers.is_correct('new york', lindbergh, True)
  assert not answers.is_correct('from Roosevelt Field', lindbergh, True)
  assert answers.is_correct('FIVE', examples['How many Great Lakes are '
                                             'there?'], True)


def test_squad_open_keeps_para_id(shared_data):
  dev = questions.load(str(shared_data / 'squad_open/dev.jsonl'))
  assert all('#' in e['para_id'] for e in dev)
  corpus = [json.loads(l) for l in (shared_data / 'squad_open/corpus.jsonl')
            .read_text().splitlines()]
  texts = {d['id']: d['text'] for d in corpus}
  # Every answer is a span of its gold paragraph: has_answer agrees.
  assert np.mean([answers.has_answer(texts[e['para_id']], e['answer'])
                  for e in dev]) == 1.0


@pytest.mark.parametrize('line, message', [
    (b'{"question": "q", "answer": ', 'malformed JSON'),
    (b'{"question": "q"}', 'field "answer"'),
    (b'{"question": "q", "answer": "x"}', 'field "answer"'),
    (b'{"question": "", "answer": ["x"]}', 'field "question"'),
    (b'["q", ["x"]]', 'expected a JSON object'),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
  path = tmp_path / 'qa.jsonl'
  path.write_bytes(b'{"question": "ok?", "answer": ["yes"]}\n\n' + line)
  with pytest.raises(ValueError, match=rf'qa\.jsonl:3: {message}'):
    questions.load(str(path))


def test_bad_regex_names_file_and_line(tmp_path):
  path = tmp_path / 'ct.jsonl'
  path.write_text('{"question": "q?", "answer": ["a|b"]}\n'
                  '{"question": "r?", "answer": ["(unclosed"]}\n')
  assert len(questions.load(str(path))) == 2  # plain strings: no check
  with pytest.raises(ValueError, match=r'ct\.jsonl:2: answer'):
    questions.load(str(path), regex_answers=True)


class TinyNqOpen(tfds.core.GeneratorBasedBuilder):
  """A real tfds dataset with the features of `natural_questions_open`."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features
                                 .FeaturesDict({
                                     'question': np.str_,
                                     'answer': tfds.features.Sequence(np.str_)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'validation': self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {'question': f'question {i}?',
                'answer': [f'answer {i}', f'réponse {i}']}


def test_tfds_loader(tmp_path):
  TinyNqOpen(data_dir=tmp_path, file_format='array_record'
             ).download_and_prepare()
  examples = questions.load('tfds:tiny_nq_open:validation',
                              tfds_data_dir=str(tmp_path))
  assert sorted((e['question'], tuple(e['answer'])) for e in examples) == [
      (f'question {i}?', (f'answer {i}', f'réponse {i}')) for i in range(4)]
  with pytest.raises(ValueError, match='tfds:NAME:SPLIT'):
    questions.load('tfds:tiny_nq_open')
