"""Zero-shot retrieval evaluation: recall@k, question loading, BM25."""

import numpy as np

from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax.inputs import openqa as openqa_input
from realm_jax.inputs import questions as questions_lib
import retrieval_eval  # bench/retrieval_eval.py


class _Corpus:
  def __init__(self, records):
    self._records = records

  def __len__(self):
    return len(self._records)

  def records(self, ids):
    return [self._records[i] for i in ids]


def test_recall_at_k_by_paragraph_and_by_answer():
  corpus = _Corpus([dict(doc_id='a#0', text='x'), dict(doc_id='a#1', text='y'),
                    dict(doc_id='b#0', text='the answer is Paris')])
  retrieved = np.array([[1, 0, 2], [2, 1, 0], [0, 1, 2]])
  questions = [dict(para_id='a#0'), dict(para_id='a#0'),
               dict(question='?', answer=['Paris'])]
  assert retrieval_eval.recall_at_k(retrieved, corpus, questions,
                                    ks=(1, 2, 3)) == {
      'recall@1': 0.0, 'recall@2': 1 / 3, 'recall@3': 1.0}


def test_squad_dev_bm25_beats_an_untrained_retriever(shared_data,
                                                     squad_corpus_workdir):
  corpus = corpus_lib.Corpus(squad_corpus_workdir / 'corpus')
  questions = questions_lib.load(str(shared_data / 'squad_open' /
                                     'dev.jsonl'))
  assert len(questions) == 875
  questions = questions[:300]
  texts = [q['question'] for q in questions]
  bm25 = retrieval_eval.recall_at_k(
      retrieval_eval.bm25_retrieve(corpus, texts, k=5), corpus, questions,
      ks=(1, 5))
  model_config = config_lib.model_config('tiny', corpus.tokenizer.vocab_size)
  untrained = retrieval_eval.load_retriever(None, model_config)
  dense = retrieval_eval.recall_at_k(
      retrieval_eval.dense_retrieve(untrained, corpus, texts, k=5), corpus,
      questions, ks=(1, 5))
  print(f'BM25 {bm25}; untrained dense {dense}')
  assert bm25['recall@5'] > 0.5  # SQuAD questions share words with paragraphs
  assert bm25['recall@1'] <= bm25['recall@5']
  assert dense['recall@5'] < bm25['recall@5']


def test_dense_vectors_equal_the_towers_on_padded_inputs(tiny_corpus_workdir):
  """Batches sorted by length and cut to it give the full-length vectors."""
  corpus = corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')
  model_config = config_lib.model_config('tiny', corpus.tokenizer.vocab_size)
  model_config.update(num_layers=1, hidden_size=32, num_heads=2,
                      intermediate_size=64, pooling='mean', projection_size=0)
  retriever = retrieval_eval.load_retriever(None, model_config)
  texts = ['who?', 'the history of the city and its rivers in the north',
           'when was it built', '']
  blocks, queries = retrieval_eval.dense_vectors(retriever, corpus, texts,
                                                 query_len=32, batch_size=16)
  inputs = corpus.blocks(np.arange(len(corpus)))
  direct = retriever.embed_blocks(inputs['token_ids'], inputs['segment_ids'],
                                  inputs['input_mask'])
  assert blocks.shape == (len(corpus), 32)
  np.testing.assert_allclose(blocks, direct, rtol=1e-4, atol=1e-5)
  question = openqa_input.question_inputs(corpus.tokenizer, texts, 32)
  tokenizer = corpus.tokenizer
  np.testing.assert_array_equal(question['query_mask'].sum(1),
                                [len(tokenizer.encode(t)) + 2 for t in texts])
  assert (question['query_ids'][question['query_mask'] == 0]
          == tokenizer.pad_id).all()
  np.testing.assert_allclose(queries, retriever.embed_queries(
      question['query_ids'], np.zeros_like(question['query_ids']),
      question['query_mask']), rtol=1e-4, atol=1e-5)
