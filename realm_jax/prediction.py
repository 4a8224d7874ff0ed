"""Answers from a fine-tuned run, and their exact match and recall.

Prediction, per question (orqa_model.get_predictions): retrieve the top
blocks with the fine-tuned question tower from the fixed index, read the top
`reader_beam_size`, take the argmax over (block, span) of the joint logit
and map its word pieces back to the block's original text. `Predictor` is
what realm-evaluate, realm-answer and realm-finetune's final evaluation
use; `evaluate_workdir` scores it: exact match (SQuAD normalisation;
CuratedTrec: regex), recall@k of a block holding an answer and, when the
data names gold paragraphs (`para_id`), of the gold paragraph.
"""
import json

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from realm_jax import answers
from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import models
from realm_jax import sharding
from realm_jax.inputs import blocks as blocks_lib
from realm_jax.inputs import openqa as openqa_input
from realm_jax.inputs import questions as questions_lib
from realm_jax.objectives import openqa as openqa_objective
from realm_jax.retrieval import embedding
from realm_jax.retrieval import index_store
from realm_jax.retrieval import lexical
from realm_jax.retrieval import mips
from realm_jax.retrieval import workspace


def load_index(path: epath.PathLike) -> mips.MipsIndex:
  """An index store's LATEST version (WORKDIR/index), or one version."""
  path = epath.Path(path)
  if (path / index_store.POINTER).exists():
    store = index_store.IndexStore(path)
    return store.load(store.pointer()['version'],
                      devices=jax.local_devices())[0]
  if (path / mips.METADATA_FILE).exists():
    return mips.load_index(path, devices=jax.local_devices())
  raise FileNotFoundError(f'{path}: no index (neither {index_store.POINTER} '
                          f'nor {mips.METADATA_FILE})')


class Predictor:
  """A fine-tuned run's model, index and corpus, on this host's devices."""

  def __init__(self, workdir: epath.PathLike, index: str = '',
               corpus: str = '', batch_size: int = 8,
               reader_beam_size: int | None = None, retrieval: str = ''):
    workdir = epath.Path(workdir)
    self.config = workspace.read_config(workdir)
    self.closed_book = self.config.closed_book
    self.corpus = corpus_lib.Corpus(corpus or self.config.corpus_dir)
    if corpus:
      trained_on = corpus_lib.Corpus(self.config.corpus_dir)
      if (self.corpus.manifest['tokenizer']['sha256']
          != trained_on.manifest['tokenizer']['sha256']):
        raise ValueError(
            f'{corpus} was tokenized with another vocabulary than '
            f'{self.config.corpus_dir}: prepare it with '
            f'--config.tokenizer.path='
            f'{trained_on.path / trained_on.manifest["tokenizer"]["file"]}')
    self.tokenizer = self.corpus.tokenizer
    self.reader_beam_size = reader_beam_size or self.config.reader_beam_size
    devices = jax.local_devices()
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    mesh = sharding.make_mesh(config_lib.mesh_config(), devices)
    graphdef, abstract = sharding.abstract_model(
        lambda: models.REALM(models.with_separate_towers(self.config.model),
                             rngs=nnx.Rngs(0)), mesh,
        self.config.axis_rules)
    manager = checkpointing.make_manager(workdir / 'checkpoints',
                                         read_only=True)
    self.step = manager.latest_step()
    if self.step is None:
      raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
    self.params = checkpointing.restore_subtree(manager, self.step,
                                                ('params',), abstract)
    logging.info('Loaded %s step %d', workdir, self.step)
    self._embed = embedding.jit_embed_queries(
        graphdef, jax.tree.map(lambda x: x.sharding, abstract),
        sharding.batch_sharding(mesh, self.config.axis_rules), mesh)
    self._read = jax.jit(lambda p, b: openqa_objective.best_spans(
        nnx.merge(graphdef, p), b))
    # The model's vocabulary may be padded beyond the tokenizer's.
    self._closed_book = jax.jit(lambda p, b: jnp.argmax(
        openqa_objective.closed_book_logits(nnx.merge(graphdef, p), b)
        [..., :self.tokenizer.vocab_size], -1))
    self._mesh = mesh
    if self.closed_book:
      self.index = None
    elif corpus and not index:
      self.index = self._embed_corpus()
    else:
      self.index = load_index(index or workdir / 'index')
    # Candidates as the run was fine-tuned with them, unless overridden.
    self.retrieval = retrieval or self.config.get('retrieval', 'dense')
    if self.retrieval not in lexical.RETRIEVALS:
      raise ValueError(f'retrieval {self.retrieval!r}: one of '
                       f'{", ".join(lexical.RETRIEVALS)}')
    self.bm25 = (lexical.Bm25(self.corpus) if self.index is not None
                 and self.retrieval != 'dense' else None)
    if self.index is not None and self.index.num_vectors != len(self.corpus):
      raise ValueError(f'the index holds {self.index.num_vectors} vectors, '
                       f'the corpus {len(self.corpus)} blocks: pass the '
                       'corpus the index was built from')

  def _embed_corpus(self) -> mips.MipsIndex:
    """An in-memory index of another corpus, embedded with this run's
    (frozen) document tower; for a large corpus, run realm-index-builder
    and pass --index instead."""
    model_config = models.with_separate_towers(self.config.model)
    graphdef, _ = nnx.split(nnx.eval_shape(
        lambda: embedding.create_doc_tower(model_config)))
    embed_fn = embedding.make_embed_fn(graphdef, self._mesh,
                                       self.config.axis_rules)
    with tqdm.tqdm(total=len(self.corpus), unit=' blocks',
                   desc='embed corpus') as progress:
      vectors = embedding.embed_blocks(
          embed_fn, self.params['retriever']['doc_tower'], self.corpus, 0,
          len(self.corpus), self.batch_size,
          sharding.batch_sharding(self._mesh, self.config.axis_rules),
          progress)
    return mips.build_index(vectors, mips.index_config(),
                            devices=jax.local_devices())

  def predict(self, questions: list[str], num_retrieved: int = 0
              ) -> list[dict]:
    """Per question: answer, score, the read blocks with p(z|x) and, in
    `retrieved`, the ids of the top max(num_retrieved, beam) blocks."""
    predictions = []
    for start in tqdm.trange(0, len(questions), self.batch_size,
                             desc='predict',
                             disable=len(questions) <= self.batch_size):
      chunk = questions[start:start + self.batch_size]
      padded = chunk + [''] * (self.batch_size - len(chunk))
      predict = (self._predict_closed_book if self.closed_book
                 else self._predict_open)
      predictions += predict(padded, num_retrieved)[:len(chunk)]
    return predictions

  def _predict_closed_book(self, questions, _):
    inputs = openqa_input.closed_book_inputs(
        self.tokenizer, questions, self.config.lengths.reader_len,
        self.config.answer_slots)
    slots = np.asarray(self._closed_book(self.params, inputs))
    predictions = []
    for row in slots:
      ends = np.flatnonzero(row == self.tokenizer.sep_id)
      pieces = row[:ends[0] if len(ends) else len(row)]
      predictions.append(dict(answer=self.tokenizer.decode(pieces.tolist()),
                              blocks=[], retrieved=[]))
    return predictions

  def _predict_open(self, questions, num_retrieved):
    query = openqa_input.question_inputs(self.tokenizer, questions,
                                         self.config.lengths.query_len)
    vectors = np.asarray(self._embed(self.params, query))
    k = min(max(num_retrieved, self.reader_beam_size), len(self.corpus))
    ids = lexical.candidates(self.retrieval, questions,
                             lambda n: self.index.search(vectors, n)[0],
                             self.bm25, k)
    ids = np.maximum(ids, 0)
    top = ids[:, :self.reader_beam_size]
    reader = blocks_lib.reader_inputs(self.corpus, query['query_ids'],
                                      query['query_mask'], top,
                                      self.config.lengths.reader_len)
    batch = dict(query, retrieved_vectors=self.index.vectors(top),
                 **{key: reader[key] for key in blocks_lib.READER_KEYS})
    best = jax.device_get(self._read(self.params, batch))
    predictions = []
    for i in range(len(questions)):
      records = self.corpus.records(top[i])
      logits = best['retrieval_logits'][i]
      p_z = np.exp(logits - logits.max())
      p_z /= p_z.sum()
      block, start, end = (int(best[key][i]) for key in ('block', 'start',
                                                          'end'))
      pieces = reader['reader_ids'][i, block, start:end + 1].tolist()
      answer = answers.original_text(self.tokenizer.decode(pieces),
                                     records[block]['text'])
      predictions.append(dict(
          answer=answer, score=float(best['score'][i]), block=block,
          blocks=[dict(block_id=int(b), title=r['title'], text=r['text'],
                       doc_id=r['doc_id'], retrieval_logit=float(l),
                       probability=float(p))
                  for b, r, l, p in zip(top[i], records, logits, p_z)],
          retrieved=ids[i].tolist()))
    return predictions


def evaluate_examples(predictor: Predictor, examples: list[dict],
                      regex_answers: bool, ks=(1, 5, 20, 100)
                      ) -> tuple[dict[str, float], list[dict]]:
  """(metrics, one output record per question)."""
  ks = [k for k in ks if k <= len(predictor.corpus)]
  predictions = predictor.predict([e['question'] for e in examples],
                                  max(ks, default=0))
  records = []
  hits = {k: [] for k in ks}
  para_hits = {k: [] for k in ks}
  for example, prediction in zip(examples, predictions):
    correct = answers.is_correct(prediction['answer'], example['answer'],
                                 regex_answers)
    record = dict(question=example['question'], answers=example['answer'],
                  prediction=prediction['answer'], correct=correct,
                  **{k: v for k, v in prediction.items()
                     if k not in ('answer', 'retrieved')})
    if prediction['retrieved']:
      retrieved = predictor.corpus.records(prediction['retrieved'])
      has = [answers.has_answer(r['text'], example['answer'], regex_answers)
             for r in retrieved]
      record['hits'] = {}  # per question, for standard errors
      for k in ks:
        hits[k].append(any(has[:k]))
        record['hits'][f'recall@{k}'] = hits[k][-1]
        if 'para_id' in example:
          para_hits[k].append(any(r['doc_id'] == example['para_id']
                                  for r in retrieved[:k]))
          record['hits'][f'gold_paragraph_recall@{k}'] = para_hits[k][-1]
      for block in record['blocks']:
        block['has_answer'] = answers.has_answer(
            block['text'], example['answer'], regex_answers)
    records.append(record)
  metrics = dict(exact_match=float(np.mean([r['correct'] for r in records])),
                 num_questions=len(records))
  for k in ks:
    if hits[k]:
      metrics[f'recall@{k}'] = float(np.mean(hits[k]))
    if para_hits[k]:
      metrics[f'gold_paragraph_recall@{k}'] = float(np.mean(para_hits[k]))
  return metrics, records


def evaluate_workdir(workdir: epath.PathLike, data: str, *,
                     regex_answers: bool = False, output=None,
                     batch_size: int = 8, tfds_data_dir: str = '',
                     index: str = '', corpus: str = '',
                     ks=(1, 5, 20, 100), retrieval: str = ''
                     ) -> dict[str, float]:
  """Evaluates a fine-tuned run on `data` (see openqa_data.load)."""
  examples = questions_lib.load(data, regex_answers, tfds_data_dir)
  predictor = Predictor(workdir, index=index, corpus=corpus,
                        batch_size=batch_size, retrieval=retrieval)
  metrics, records = evaluate_examples(predictor, examples, regex_answers,
                                       ks)
  if output and jax.process_index() == 0:
    output = epath.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(''.join(json.dumps(r) + '\n' for r in records))
    (output.parent / (output.stem + '_metrics.json')).write_text(
        json.dumps(dict(metrics, data=data, step=predictor.step), indent=2))
  logging.info('%s on %s: %s', workdir, data, metrics)
  return metrics
