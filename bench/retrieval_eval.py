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
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.retrieval import lexical
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
  block_vectors = _embed(retriever.embed_blocks, _block_inputs(corpus),
                         batch_size)
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
  """Top-k block ids [Q, k] by BM25 over title + text."""
  return lexical.Bm25(corpus).search(list(questions), k)


def gold_hits(retrieved: np.ndarray, corpus: corpus_lib.Corpus,
              questions: Sequence[dict]) -> np.ndarray:
  """bool [Q, k]: retrieved block is gold (squad_open's `para_id`, else a
  block whose text holds an answer string)."""
  records = corpus.records(np.arange(len(corpus)))
  hits = np.zeros(retrieved.shape, bool)
  for row, question in enumerate(questions):
    for col, block in enumerate(retrieved[row]):
      record = records[block]
      if 'para_id' in question:
        hits[row, col] = record['doc_id'] == question['para_id']
      else:
        hits[row, col] = any(a in record['text'] for a in question['answer'])
  return hits


def recall_at_k(retrieved: np.ndarray, corpus: corpus_lib.Corpus,
                questions: Sequence[dict], ks: Sequence[int]
                ) -> dict[str, float]:
  """Fraction of questions with a gold block in the top k, for each k."""
  hits = gold_hits(retrieved, corpus, questions)
  return {f'recall@{k}': float(hits[:, :k].any(1).mean()) for k in ks}


def own_block_recall(retriever: models.Retriever, corpus: corpus_lib.Corpus,
                     n: int = 500, seed: int = 0, query_len: int = 64,
                     ks: Sequence[int] = (1, 5, 20)) -> dict[str, float]:
  """ICT's task over the whole corpus: a sentence of each of n sampled
  blocks as the query, `[CLS] sentence [SEP]`; recall@k of its own block
  (embedded whole, as the index builder does), and chance (k / N)."""
  rng = np.random.default_rng(seed)
  ids = rng.choice(len(corpus), size=min(n, len(corpus)), replace=False)
  tokenizer = corpus.tokenizer
  query_ids = np.full((len(ids), query_len), tokenizer.pad_id, np.int32)
  query_mask = np.zeros_like(query_ids)
  for row, block in enumerate(ids):
    bounds = corpus.sentence_bounds(block)
    start, end = bounds[rng.integers(len(bounds))]
    tokens = [tokenizer.cls_id,
              *corpus.body_tokens(block)[start:end][:query_len - 2],
              tokenizer.sep_id]
    query_ids[row, :len(tokens)] = tokens
    query_mask[row, :len(tokens)] = 1
  block_vectors = _embed(retriever.embed_blocks, _block_inputs(corpus), 64)
  query_vectors = _embed(retriever.embed_queries, dict(
      token_ids=query_ids, segment_ids=np.zeros_like(query_ids),
      input_mask=query_mask), 64)
  hits = exact_search(block_vectors, query_vectors, max(ks)) == ids[:, None]
  return {**{f'recall@{k}': float(hits[:, :k].any(1).mean()) for k in ks},
          **{f'chance@{k}': k / len(corpus) for k in ks}}


def fact_recall(retriever: models.Retriever, corpus: corpus_lib.Corpus,
                queries: dict[str, np.ndarray], num_candidates: int = 8
                ) -> float:
  """REALM's retrieval on the synthetic corpus: the fraction of masked
  queries (a PretrainInput batch) whose K - 1 candidates - the best blocks
  by exact search, the query's own excluded - hold the masked span
  (inputs.pretrain.fact_found)."""
  block_vectors = _embed(retriever.embed_blocks, _block_inputs(corpus), 64)
  query_vectors = _embed(retriever.embed_queries, dict(
      token_ids=queries['query_ids'],
      segment_ids=np.zeros_like(queries['query_ids']),
      input_mask=queries['query_mask']), 64)
  top = exact_search(block_vectors, query_vectors, num_candidates + 4)
  chosen, valid = pretrain_input.choose_candidates(
      top, corpus.uid64(top).reshape(top.shape), queries['source_uid64'],
      num_candidates)
  return float(pretrain_input.fact_found(corpus, queries, chosen,
                                         valid).mean())


def _block_inputs(corpus: corpus_lib.Corpus) -> dict[str, np.ndarray]:
  blocks = corpus.blocks(np.arange(len(corpus)))
  return {k: blocks[k] for k in ('token_ids', 'segment_ids', 'input_mask')}
