"""Zero-shot retrieval quality: recall@k of a retriever over a corpus.

A question counts as answered at k when one of its top-k blocks comes from
its gold paragraph (the block's source document id equals the question's
`para_id`, as in ../shared/data/squad_open) or, without para_id, contains
one of its answer strings.
"""
from collections.abc import Sequence
import json

from etils import epath
from flax import nnx
import jax
import ml_collections
import numpy as np

from realm_jax import checkpointing
from realm_jax import corpus as corpus_lib
from realm_jax import mips
from realm_jax import models


def read_questions(path: epath.PathLike) -> list[dict]:
  """JSON lines with at least "question"; errors name the file and line."""
  questions = []
  path = epath.Path(path)
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    try:
      record = json.loads(line)
      if not isinstance(record.get('question'), str):
        raise ValueError('no "question" string')
    except ValueError as e:
      raise ValueError(f'{path}:{number}: {e}') from e
    questions.append(record)
  return questions


def question_inputs(tokenizer, questions: Sequence[str],
                    query_len: int) -> dict[str, np.ndarray]:
  """[CLS] question [SEP], truncated to query_len."""
  ids = np.zeros((len(questions), query_len), np.int32)
  for row, pieces in enumerate(tokenizer.encode_batch(list(questions))):
    tokens = [tokenizer.cls_id, *pieces[:query_len - 2], tokenizer.sep_id]
    ids[row, :len(tokens)] = tokens
  return dict(token_ids=ids, segment_ids=np.zeros_like(ids),
              input_mask=(ids != 0).astype(np.int32))


def load_retriever(workdir: epath.PathLike | None,
                   model_config: ml_collections.ConfigDict | None = None,
                   seed: int = 0) -> models.Retriever:
  """The retriever of a run's latest checkpoint (model config from its
  config.json), or a freshly initialised one when workdir is None."""
  if workdir is not None:
    workdir = epath.Path(workdir)
    model_config = ml_collections.ConfigDict(
        json.loads((workdir / 'config.json').read_text())['model'])
  graphdef, state = nnx.split(models.Retriever(model_config,
                                               rngs=nnx.Rngs(seed)))
  if workdir is None:
    return nnx.merge(graphdef, state)
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  params = checkpointing.restore_subtree(
      manager, manager.latest_step(), ('params', 'retriever'),
      checkpointing.abstract(nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, params)


def _embed(tower_fn, inputs: dict, batch_size: int) -> np.ndarray:
  fn = jax.jit(tower_fn)
  outputs = []
  for start in range(0, len(inputs['token_ids']), batch_size):
    batch = {k: v[start:start + batch_size] for k, v in inputs.items()}
    outputs.append(np.asarray(fn(batch['token_ids'], batch['segment_ids'],
                                 batch['input_mask'])))
  return np.concatenate(outputs)


def dense_retrieve(retriever: models.Retriever, corpus: corpus_lib.Corpus,
                   questions: Sequence[str], k: int, query_len: int = 96,
                   batch_size: int = 64) -> np.ndarray:
  """Top-k block ids [Q, k] by inner product (exact search)."""
  blocks = corpus.blocks(np.arange(len(corpus)))
  block_inputs = {key: blocks[key] for key in ('token_ids', 'segment_ids',
                                               'input_mask')}
  block_vectors = _embed(retriever.embed_blocks, block_inputs, batch_size)
  query_vectors = _embed(
      retriever.embed_queries,
      question_inputs(corpus.tokenizer, questions, query_len), batch_size)
  config = mips.index_config()
  config.kind = 'exact'
  ids, _ = mips.build_index(block_vectors, config).search(query_vectors, k)
  return ids


def bm25_retrieve(corpus: corpus_lib.Corpus, questions: Sequence[str],
                  k: int) -> np.ndarray:
  """Top-k block ids [Q, k] by BM25 over title + text (bm25s)."""
  import bm25s  # pylint: disable=g-import-not-at-top  (bench extra)
  records = corpus.records(np.arange(len(corpus)))
  retriever = bm25s.BM25()
  retriever.index(bm25s.tokenize(
      [f'{r["title"]} {r["text"]}' for r in records], stopwords='en',
      show_progress=False), show_progress=False)
  ids, _ = retriever.retrieve(bm25s.tokenize(list(questions), stopwords='en',
                                             show_progress=False),
                              k=k, show_progress=False)
  return np.asarray(ids)


def recall_at_k(retrieved: np.ndarray, corpus: corpus_lib.Corpus,
                questions: Sequence[dict], ks: Sequence[int]
                ) -> dict[str, float]:
  """Fraction of questions with a gold block in the top k, for each k."""
  records = corpus.records(np.arange(len(corpus)))
  hits = np.zeros(retrieved.shape, bool)
  for row, question in enumerate(questions):
    for col, block in enumerate(retrieved[row]):
      record = records[block]
      if 'para_id' in question:
        hits[row, col] = record['doc_id'] == question['para_id']
      else:
        hits[row, col] = any(a in record['text'] for a in question['answer'])
  return {f'recall@{k}': float(hits[:, :k].any(1).mean()) for k in ks}

