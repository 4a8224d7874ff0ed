"""Zero-shot retrieval quality: recall@k of a retriever over a corpus.

Used by bench/ (squad_recall.py, bert_zero_shot.py) and tests/. A question
counts as answered at k when one of its top-k blocks comes from its gold
paragraph (the block's source document id equals the question's `para_id`,
as in ../shared/data/squad_open) or, without para_id, contains one of its
answer strings. Questions load with realm_jax.inputs.questions.load.
"""
from collections.abc import Sequence

from etils import epath
from flax import nnx
import jax
import ml_collections
import numpy as np

from realm_jax import bert_import
from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import models
from realm_jax.inputs import openqa as openqa_input
from realm_jax.retrieval import mips
from realm_jax.retrieval import workspace


def load_retriever(workdir: epath.PathLike | None,
                   model_config: ml_collections.ConfigDict | None = None,
                   seed: int = 0, step: int | None = None) -> models.Retriever:
  """The retriever of a run's checkpoint `step` (default: the latest; model
  config from its config.json), or a freshly initialised one when workdir
  is None."""
  if workdir is not None:
    workdir = epath.Path(workdir)
    model_config = workspace.read_config(workdir).model
  graphdef, state = nnx.split(models.Retriever(model_config,
                                               rngs=nnx.Rngs(seed)))
  if workdir is None:
    return nnx.merge(graphdef, state)
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  params = checkpointing.restore_subtree(
      manager, manager.latest_step() if step is None else step,
      ('params', 'retriever'),
      checkpointing.abstract(nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, params)


def bert_retriever(checkpoint_dir: epath.PathLike, seed: int = 0,
                   **model_overrides) -> models.Retriever:
  """A retriever whose towers are a BERT checkpoint, e.g. a sentence
  embedder: bert_retriever(dir, pooling='mean', projection_size=0)."""
  model_config = config_lib.model_config('base', vocab_size=1)
  model_config.update(model_overrides)
  model_config = bert_import.checkpoint_model_config(model_config,
                                                     checkpoint_dir)
  graphdef, state = nnx.split(models.Retriever(model_config,
                                               rngs=nnx.Rngs(seed)))
  params = bert_import.init_from_bert(
      {'retriever': nnx.to_pure_dict(state)}, model_config, checkpoint_dir)
  return nnx.merge(graphdef, params['retriever'])


# Batches are cut to their longest row, rounded up to this many tokens: the
# padding of short blocks is never computed, and few shapes are compiled.
_LENGTH_BUCKET = 32


def _embed(tower_fn, inputs: dict, batch_size: int) -> np.ndarray:
  """Embeds rows in order of length (trailing padding cut off per batch;
  the towers mask it, so the vectors are the same)."""
  fn = jax.jit(tower_fn)
  lengths = inputs['input_mask'].sum(1)
  order = np.argsort(lengths, kind='stable')
  full = inputs['token_ids'].shape[1]
  outputs = []
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    length = min(full, -(-int(lengths[rows].max()) // _LENGTH_BUCKET)
                 * _LENGTH_BUCKET)
    batch = {k: v[rows, :length] for k, v in inputs.items()}
    if len(rows) < batch_size:  # one batch shape per length
      batch = {k: np.pad(v, ((0, batch_size - len(rows)), (0, 0)))
               for k, v in batch.items()}
    vectors = fn(batch['token_ids'], batch['segment_ids'], batch['input_mask'])
    outputs.append(np.asarray(vectors, np.float32)[:len(rows)])
  in_order = np.concatenate(outputs)
  vectors = np.empty_like(in_order)
  vectors[order] = in_order
  return vectors


def dense_vectors(retriever: models.Retriever, corpus: corpus_lib.Corpus,
                  questions: Sequence[str], query_len: int = 96,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """float32 (block vectors [N, D], question vectors [Q, D])."""
  blocks = corpus.blocks(np.arange(len(corpus)))
  block_inputs = {key: blocks[key] for key in ('token_ids', 'segment_ids',
                                               'input_mask')}
  block_vectors = _embed(retriever.embed_blocks, block_inputs, batch_size)
  query = openqa_input.question_inputs(corpus.tokenizer, questions, query_len)
  query_vectors = _embed(retriever.embed_queries, dict(
      token_ids=query['query_ids'], segment_ids=np.zeros_like(
          query['query_ids']), input_mask=query['query_mask']), batch_size)
  return block_vectors, query_vectors


def exact_search(block_vectors: np.ndarray, query_vectors: np.ndarray,
                 k: int) -> np.ndarray:
  """Top-k block ids [Q, k] by inner product."""
  config = mips.index_config()
  config.kind = 'exact'
  ids, _ = mips.build_index(block_vectors, config).search(query_vectors, k)
  return ids


def dense_retrieve(retriever: models.Retriever, corpus: corpus_lib.Corpus,
                   questions: Sequence[str], k: int, query_len: int = 96,
                   batch_size: int = 64) -> np.ndarray:
  """Top-k block ids [Q, k] by inner product (exact search)."""
  return exact_search(*dense_vectors(retriever, corpus, questions, query_len,
                                     batch_size), k)


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

