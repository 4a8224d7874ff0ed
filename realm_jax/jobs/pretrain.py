"""`realm-pretrain`: REALM pre-training beside the asynchronous index builder.

  realm-pretrain --config=configs/pretrain.py:tiny --workdir=WORKDIR

Each step: embed the masked queries -> search the current index (the
hot-swapped IndexHandle) -> drop the block the query came from (trivial
retrieval) -> prepend the null document -> K candidates, on the host and,
with `retrieve_ahead`, while the device runs the step before; then the
jitted step re-embeds the candidates with the current parameters and
maximises the marginal likelihood (objectives/realm.py), so the gradient
reaches the retriever.

Starts from, in this order, a BERT checkpoint (`config.init.bert_checkpoint`:
every encoder and, when it has one, the MLM head), a realm-mlm run
(`config.init.reader_from`: the reader and its MLM head) and an ICT run
(`config.init_from`: the retriever); saves step 0 so the index builder can
embed the corpus with it, and waits for that first index.
"""
import collections
from collections.abc import Callable
import functools
import time
from typing import NamedTuple

from absl import logging
from etils import epath
from flax import nnx
import jax
import ml_collections
import numpy as np

from realm_jax import checkpointing
from realm_jax import cli
from realm_jax import config_lib
from realm_jax import models
from realm_jax import sharding
from realm_jax import trainer as trainer_lib
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.objectives import realm as realm_objective
from realm_jax.retrieval import embedding
from realm_jax.retrieval import index_handle
from realm_jax.retrieval import mips
from realm_jax.retrieval import workspace

# The retriever is copied as it is from the init_from run: its towers must
# be laid out alike.
_RETRIEVER_FIELDS = (*workspace.PARAMETER_FIELDS, 'share_towers')


def _init_part(model_config, part, field, run, fields, fresh):
  """params[part] (`fresh`: this run's) from the run in `run`, which must
  agree on `fields`.

  A run that learns the retriever's temperature may start from one that
  scored with a fixed one (ICT's default): its towers' log_scale then keep
  their fresh value, the scale of score_temperature, which must be that
  run's."""
  theirs = workspace.read_config(run).model
  adds_temperature = (part == 'retriever' and model_config.learn_temperature
                      and not theirs.learn_temperature)
  if adds_temperature:
    fields = (*(f for f in fields if f != 'learn_temperature'),
              'score_temperature')
  workspace.check_init_run(model_config, run, fields)
  abstract = checkpointing.abstract(fresh)
  if not adds_temperature:
    return checkpointing.restore_from_run(run, field, ('params', part),
                                          abstract)
  restored = checkpointing.restore_from_run(
      run, field, ('params', part), _without_log_scale(abstract))
  logging.info('The retriever learns its temperature, from %s\'s %s',
               run, model_config.score_temperature)
  return _with_fresh(fresh, restored)


def _without_log_scale(tree):
  if not isinstance(tree, dict):
    return tree
  return {k: _without_log_scale(v) for k, v in tree.items()
          if k != 'log_scale'}


def _with_fresh(fresh, restored):
  """`restored`, with `fresh`'s leaves where it has none."""
  if not isinstance(fresh, dict):
    return restored
  return {k: _with_fresh(v, restored[k]) if k in restored else v
          for k, v in fresh.items()}


QUERY_EMBEDDERS = ('current', 'index')


class QueuedSearch(NamedTuple):
  """A search dispatched ahead: the queries' vectors (device), the index
  version searched, its pending device search (None: it searches on the
  host) and the checkpoint step it was embedded from."""
  vectors: jax.Array
  index: mips.MipsIndex
  search: Callable[[], tuple[np.ndarray, np.ndarray]] | None
  index_step: int
_EVAL_SEED_OFFSET = 1_000_003  # eval queries: a stream of their own


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  trainer_lib.validate(config, num_devices)
  pretrain_input.validate(config)
  config_lib.check(config.eval_batches >= 0, 'eval_batches', 'must be >= 0')
  config_lib.check(config.eval_every_steps >= 0, 'eval_every_steps',
                   'must be >= 0')
  config_lib.check(
      not config.eval_batches or 0 < config.eval_heldout_fraction < 1,
      'eval_heldout_fraction', 'must be in (0, 1) when eval_batches > 0')
  staleness = config.index.max_staleness_steps
  config_lib.check(
      staleness == 0 or staleness >= config.checkpoint.every_steps,
      'index.max_staleness_steps', f'{staleness} must be 0 (no bound) or '
      f'at least checkpoint.every_steps ({config.checkpoint.every_steps}): '
      'an index is only ever as fresh as the last checkpoint')
  refresh = config.index.refresh_every_steps
  config_lib.check(
      refresh >= 0 and refresh % config.checkpoint.every_steps == 0,
      'index.refresh_every_steps', f'{refresh} must be 0 (swap whenever a '
      'version is published) or a multiple of checkpoint.every_steps '
      f'({config.checkpoint.every_steps}): step s waits for the index of '
      'checkpoint s')
  config_lib.check(
      not (refresh and config.index.fresh_eval and config.eval_batches) or
      config.eval_every_steps % refresh == 0, 'eval_every_steps',
      f'{config.eval_every_steps} must be a multiple of '
      f'index.refresh_every_steps ({refresh}) with index.fresh_eval: an '
      'evaluation swaps in its own step\'s index, which would otherwise '
      'change what the next training steps search')
  config_lib.check(config.null_document in realm_objective.NULL_DOCUMENTS,
                   'null_document', f'{config.null_document!r} is not one of '
                   f'{realm_objective.NULL_DOCUMENTS}')
  config_lib.check(config.query_embedder in QUERY_EMBEDDERS,
                   'query_embedder', f'{config.query_embedder!r} is not one '
                   f'of {QUERY_EMBEDDERS}')


class IndexRetriever:
  """query_embedder='index': the retriever of the checkpoint the served
  index was embedded from (REALM's example generator), restored when the
  index swaps. A second retriever in memory; when that checkpoint is
  already gone (the builder fell more than the kept checkpoints behind),
  the one before it keeps searching."""

  def __init__(self, manager):
    self._manager = manager
    self._step = None  # of the retriever held
    self._asked = None  # the index step last asked for: one restore each
    self._retriever = None

  def get(self, step: int, current_retriever):
    if step != self._asked:
      self._asked = step
      try:
        self._retriever = checkpointing.restore_subtree(
            self._manager, step, ('params', 'retriever'),
            checkpointing.abstract(current_retriever))
        self._step = step
      except (FileNotFoundError, ValueError) as error:
        logging.warning('query_embedder=index: checkpoint %d of the index '
                        'is gone (%s); searching with step %s\'s retriever',
                        step, error, self._step)
        if self._retriever is None:
          self._retriever = current_retriever
    return self._retriever


def retrieved_in_its_own_step(config: ml_collections.ConfigDict
                              ) -> Callable[[int], bool]:
  """Which steps retrieve with their own parameters.

  retrieve_ahead: step s + 1's queries are embedded (and, in an exact
  index, searched) with the parameters entering step s, then searched and
  featurized while the device runs step s. Steps where a run may resume
  (checkpoints and evaluations, so every refresh step) retrieve with their
  own parameters, as a resumed run does.
  """
  ahead = config.retrieve_ahead
  every = config.checkpoint.every_steps
  evaluated = config.eval_every_steps if config.eval_batches else 0
  return lambda step: (not ahead or step % every == 0 or
                       bool(evaluated) and step % evaluated == 0)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Pre-trains REALM; returns the metrics of the last logged step."""
  config = trainer_lib.checked_config(config, validate)
  workdir = epath.Path(workdir)
  corpus = trainer_lib.open_corpus(config, config.corpus_dir or
                                   workdir / 'corpus')

  trainer = trainer_lib.Trainer(
      config, workdir, 'pretrain',
      lambda: models.REALM(config.model, rngs=nnx.Rngs(config.seed),
                           null_offset=config.null_document == 'relative'),
      frozen=(lambda path: path[0] == 'retriever') if config.freeze_retriever
      else None)
  # A fresh start: BERT (in Trainer), then the MLM reader, ICT's retriever.
  if trainer.fresh_start:
    for part, field, run, fields in (
        ('reader', 'init.reader_from', config.init.reader_from,
         workspace.READER_FIELDS),
        ('retriever', 'init_from', config.init_from, _RETRIEVER_FIELDS)):
      if run:
        trainer.params = dict(trainer.params, **{part: _init_part(
            config.model, part, field, run, fields, trainer.params[part])})
    trainer.save()  # step 0: the index builder's first document tower

  examples = None
  if config.masking.kind == 'salient':
    examples = trainer_lib.salient_examples(
        corpus, workdir, annotator=config.masking.annotator,
        query_len=config.lengths.query_len,
        max_masks=config.masking.max_masks)
  elif (workdir / 'examples').exists():  # the ablations' query sentences
    examples = workdir / 'examples'
  heldout = config.eval_heldout_fraction if config.eval_batches else 0.0
  make_input = functools.partial(
      pretrain_input.PretrainInput, corpus, examples,
      masking=config.masking.kind, global_batch_size=config.batch_size,
      query_len=config.lengths.query_len,
      max_masks=config.masking.max_masks,
      process_index=jax.process_index(), process_count=jax.process_count(),
      random_mask_rate=config.masking.random_mask_rate,
      heldout_fraction=heldout)
  inputs = make_input(seed=config.seed, split='train')
  embed_queries = embedding.jit_embed_queries(
      trainer.graphdef, trainer.shardings['params'], trainer.batch_sharding,
      trainer.mesh)
  handle = index_handle.IndexHandle(
      workdir / 'index', poll_seconds=config.index.poll_seconds).start()
  logging.info('Waiting for an index in %s (start realm-index-builder with '
               'this workdir)', workdir / 'index')
  handle.wait_until_ready(config.index.wait_seconds)
  first_row = jax.process_index() * (config.batch_size // jax.process_count())
  versions_used = set()
  index_retriever = (IndexRetriever(trainer.manager)
                     if config.query_embedder == 'index' else None)

  searched = config.num_candidates - 1 + config.search_margin

  def queue_search(host, params):
    """Dispatches the embedding of this host's masked queries and, in an
    index that searches on the device, their search, without waiting."""
    queries = {k: host[k] for k in ('query_ids', 'query_mask')}
    if index_retriever:
      params = dict(params, retriever=index_retriever.get(
          handle.checkpoint_step, params['retriever']))
    vectors = embed_queries(
        params, sharding.global_batch(queries, trainer.batch_sharding))
    # Replicated: this host's rows of the local copy.
    vectors = vectors.addressable_data(0)[
        first_row:first_row + len(host['query_ids'])]
    index, index_step = handle.served()
    return QueuedSearch(vectors, index, index.dispatch_search(
        vectors, searched), index_step)

  def retrieve(host, queued):
    """The candidates (block ids [b, K], valid [b, K]) of host's queries,
    the raw search results and the seconds spent waiting for the device."""
    started = time.perf_counter()
    jax.block_until_ready(queued.vectors)
    retrieved = queued.search()[0] if queued.search is not None else None
    waited = time.perf_counter() - started
    if retrieved is None:  # a host index (ScaNN)
      retrieved = queued.index.search(np.asarray(queued.vectors), searched)[0]
    chosen, valid = pretrain_input.choose_candidates(
        retrieved, corpus.uid64(np.maximum(retrieved, 0)).reshape(
            retrieved.shape), host['source_uid64'], config.num_candidates)
    return chosen, valid, retrieved, waited

  def retrieval_metrics(host, holders, retrieved):
    return dict(
        source_recall=(retrieved[:, :config.num_candidates] ==
                       host['source_block'][:, None]).any(1).mean(),
        fact_recall=holders.any(1).mean())

  def wait_for_index(min_step, field):
    """Seconds spent waiting for an index of checkpoint >= min_step."""
    started = time.perf_counter()
    if not handle.wait_for_checkpoint(min_step, config.index.wait_seconds):
      raise TimeoutError(
          f'no index of checkpoint {min_step} or later in {workdir / "index"}'
          f' after index.wait_seconds={config.index.wait_seconds} (asked '
          f'for by index.{field}); is realm-index-builder running on this '
          'workdir?')
    return time.perf_counter() - started

  refresh = config.index.refresh_every_steps
  staleness = config.index.max_staleness_steps

  def wait_for_fresh_enough_index(step):
    """Seconds spent waiting for the index this step must search."""
    waited = 0.0
    if not refresh:
      handle.maybe_swap()  # between steps: never mid-step
    elif step % refresh == 0 or step == trainer.start_step:
      # The index of this step's checkpoint (after a resume: of the last
      # refresh step, or a newer one if that version is gone).
      waited = wait_for_index(step - step % refresh, 'refresh_every_steps')
    if staleness and step - handle.checkpoint_step > staleness:
      waited += wait_for_index(step - staleness, 'max_staleness_steps')
    return waited

  def queue(step, params):
    host = inputs.batch(step)
    return host, queue_search(host, params)

  def finish(step, queued):
    host, search = queued
    index_step = search.index_step
    versions_used.add(index_step)
    chosen, valid, retrieved, device_wait = retrieve(host, search)
    holders = pretrain_input.span_holders(corpus, host, chosen, valid)
    queries = {k: host[k] for k in ('query_ids', 'query_mask')}
    batch = dict(queries, **pretrain_input.candidate_inputs(
        corpus, queries, chosen, config.lengths.joint_len),
                 candidate_valid=valid.astype(np.int32),
                 candidate_holds_span=holders.astype(np.int32), **{
                     k: host[k] for k in ('mlm_positions', 'mlm_targets',
                                          'mlm_weights')})
    return batch, {
        trainer_lib.DEVICE_WAIT: device_wait, 'index_step': index_step,
        'index_staleness': step - index_step,
        'candidates_missing': (~valid).sum(1).mean(),
        'index_versions_used': len(versions_used),
        **retrieval_metrics(host, holders, retrieved)}

  ahead = trainer_lib.OneStepAhead(
      queue, finish, config.num_train_steps,
      resumes=retrieved_in_its_own_step(config),
      # Searched before this step's wait for a fresher index: redone.
      usable=lambda step, queued: (not staleness or
                                   step - queued[1].index_step <= staleness))

  def host_batch(step, params):
    waited = wait_for_fresh_enough_index(step)
    batch, metrics = ahead(step, params)
    return batch, dict(metrics, index_wait_seconds=waited)

  # Held-out retrieval: the same eval queries every time (sentences of
  # blocks no training query comes from), searched in the served index
  # (with index.fresh_eval: one of this step's checkpoint) with the current
  # query tower, so that the retriever's progress from its
  # ICT start (step 0) is measured on queries it was never trained on.
  eval_inputs = make_input(seed=config.seed + _EVAL_SEED_OFFSET,
                           split='eval') if config.eval_batches else None

  def evaluate(params):
    step = int(trainer.state['step'])  # its checkpoint is saved
    if config.index.fresh_eval and not handle.wait_for_checkpoint(
        step, config.index.wait_seconds):
      logging.warning('No index of checkpoint %d after %s s: evaluating '
                      'with the served one (eval/index_step)', step,
                      config.index.wait_seconds)
    totals = collections.Counter()
    for chunk in range(config.eval_batches):
      host = eval_inputs.batch(chunk)
      chosen, valid, retrieved, _ = retrieve(host, queue_search(host, params))
      holders = pretrain_input.span_holders(corpus, host, chosen, valid)
      for name, value in retrieval_metrics(host, holders, retrieved).items():
        totals[name] += value / config.eval_batches
    return trainer_lib.mean_over_processes(
        dict(totals, index_step=handle.checkpoint_step))

  last = trainer.train(
      functools.partial(realm_objective.loss,
                        null_document=config.null_document), host_batch,
      evaluate=evaluate if config.eval_batches else None,
      eval_every_steps=config.eval_every_steps)
  handle.close()
  trainer.close()
  return last


def run():
  cli.run_job(train_and_evaluate)


if __name__ == '__main__':
  run()
