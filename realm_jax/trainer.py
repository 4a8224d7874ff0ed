"""The skeleton every trainer shares: resume -> init -> loop -> log -> save ->
finish.

    config = checked_config(config, validate)   # BERT sizes, validated
    trainer = Trainer(config, workdir, 'ict', create_model)  # restores, or
                                        # initialises (from BERT if asked)
    if trainer.fresh_start:
      trainer.params = ...              # e.g. from another run
    last = trainer.train(objectives.ict.loss, host_batch)
    trainer.close()

The job supplies its model, its loss (`objectives/`), and its per-step host
work `host_batch(step, params) -> (batch, host_metrics)`: this host's rows
of the global batch for `step` (params: the current ones, e.g. to embed
queries for retrieval) and any host-side metrics to log. Everything else is
here: the sharded train state {'step', 'params', 'opt_state'} (parameters
placed as their logical axes say, optimizer moments following them,
scalars replicated; none for frozen parameters), the jitted step with
explicit shardings and a donated state, orbax checkpoints with the input
position, metrics to TensorBoard and one console line per log step (with
steps/s, the host/device split of a step and the ETA), and TRAINING_DONE.
"""
from collections.abc import Callable, Mapping
import time
from typing import Any

from absl import logging
from etils import epath
from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from realm_jax import bert_import
from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import metrics as metrics_lib
from realm_jax import optim
from realm_jax import sharding
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.retrieval import workspace

PyTree = Any
# A predicate on a parameter's path (a tuple of keys): True = never trained.
Frozen = Callable[[tuple], bool] | None


# -- trainable and frozen parameters ------------------------------------------


def partition(params: PyTree, frozen: Frozen) -> tuple[dict, dict]:
  """(trainable, frozen) sub-dicts of a nested params dict."""
  if frozen is None:
    return params, {}
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if not frozen(k)}
  fixed = {k: v for k, v in flat.items() if frozen(k)}
  return (traverse_util.unflatten_dict(trainable),
          traverse_util.unflatten_dict(fixed))


def combine(trainable: dict, fixed: dict) -> dict:
  """The inverse of `partition`."""
  if not fixed:
    return trainable
  return traverse_util.unflatten_dict(
      traverse_util.flatten_dict(trainable) | traverse_util.flatten_dict(fixed))


# -- the train state ----------------------------------------------------------


def state_shardings(tx: optax.GradientTransformation, params: PyTree,
                    param_shardings: PyTree, mesh, frozen: Frozen = None
                    ) -> PyTree:
  """Shardings for {'step', 'params', 'opt_state'}."""
  trainable, _ = partition(params, frozen)
  trainable_shardings, _ = partition(param_shardings, frozen)
  abstract_opt_state = jax.eval_shape(tx.init, trainable)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt_state, trainable_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return dict(step=sharding.replicated(mesh), params=param_shardings,
              opt_state=opt_shardings)


def abstract_train_state(create_model: Callable[[], nnx.Module],
                         tx: optax.GradientTransformation, mesh, axis_rules,
                         frozen: Frozen = None):
  """(graphdef, state as ShapeDtypeStructs with shardings, state_shardings):
  what restoring, and compiling ahead of time (jobs/aot.py), need."""
  graphdef, abstract_params = sharding.abstract_model(
      create_model, mesh, axis_rules)
  param_shardings = jax.tree.map(lambda x: x.sharding, abstract_params)
  shardings = state_shardings(tx, abstract_params, param_shardings, mesh,
                              frozen)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(lambda p: dict(
          step=jnp.int32(0), params=p,
          opt_state=tx.init(partition(p, frozen)[0])), abstract_params),
      shardings)
  return graphdef, abstract_state, shardings


def _check_saved_layout(manager: ocp.CheckpointManager, step: int,
                        abstract_state: PyTree) -> None:
  """A clear error when a checkpoint's state has another layout than the
  job's (e.g. written by an older version of the job)."""
  saved = manager.item_metadata(step)['state']
  saved = getattr(saved, 'tree', saved)
  names = lambda tree: {jax.tree_util.keystr(path, simple=True, separator='/')
                        for path, _ in jax.tree_util.tree_flatten_with_path(
                            tree)[0]}
  theirs, ours = names(saved), names(abstract_state)
  if theirs != ours:
    extra, missing = sorted(theirs - ours), sorted(ours - theirs)
    raise ValueError(
        f'{manager.directory} step {step} cannot resume: its train state has '
        'another layout than this job builds (was it written by another '
        'version? realm-finetune runs from before frozen parameters stopped '
        'having optimizer state hold moments of params/retriever/doc_tower '
        'and another optimizer chain: resume them with the realm_jax that '
        'wrote them, or start a new run from them with --config.init_from). '
        f'{len(extra)} saved arrays have no place here (e.g. {extra[:2]}), '
        f'{len(missing)} are missing (e.g. {missing[:2]}).')


def init_train_state(create_model: Callable[[], nnx.Module],
                     tx: optax.GradientTransformation, mesh, axis_rules,
                     manager: ocp.CheckpointManager | None = None,
                     frozen: Frozen = None):
  """Restores the latest checkpoint in `manager`, else initialises.

  Returns (graphdef, state, state_shardings, data_position or None).
  """
  graphdef, abstract_state, shardings = abstract_train_state(
      create_model, tx, mesh, axis_rules, frozen)
  latest = manager.latest_step() if manager is not None else None
  if latest is not None:
    _check_saved_layout(manager, latest, abstract_state)
    state, position = checkpointing.restore(manager, latest, abstract_state)
    logging.info('Resumed from checkpoint step %d', latest)
    return graphdef, state, shardings, position
  _, params, _ = sharding.init_model(create_model, mesh, axis_rules)
  opt_state = jax.jit(lambda p: tx.init(partition(p, frozen)[0]),
                      out_shardings=shardings['opt_state'])(params)
  state = dict(step=jax.device_put(jnp.int32(0), shardings['step']),
               params=params, opt_state=opt_state)
  return graphdef, state, shardings, None


def train_step(state, batch, rng, *, graphdef, tx, loss_fn,
               frozen: Frozen = None):
  """One optimizer step of `loss_fn(params, batch, dropout_key, graphdef)`.

  Gradients and updates cover the trainable parameters only. Metrics: the
  loss's, plus the gradient norm (l2_grads) and, for models of several
  parts (retriever, reader), each part's (l2_grads_<part>).
  """
  dropout_key = jax.random.fold_in(rng, state['step'])
  trainable, fixed = partition(state['params'], frozen)
  grads, metrics = jax.grad(
      lambda p: loss_fn(combine(p, fixed), batch, dropout_key, graphdef),
      has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state['opt_state'], trainable)
  params = combine(optax.apply_updates(trainable, updates), fixed)
  norms = {f'l2_grads_{k}': optax.tree.norm(v) for k, v in grads.items()}
  metrics['l2_grads'] = jnp.sqrt(sum(n**2 for n in norms.values()))
  if len(norms) > 1:
    metrics |= norms
  return dict(step=state['step'] + 1, params=params,
              opt_state=opt_state), metrics


def jit_train_step(step_fn: Callable, shardings: PyTree, batch_sharding,
                   mesh) -> Callable:
  """jit(step_fn(state, batch, rng)) with explicit shardings, state donated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(step_fn,
                 in_shardings=(shardings, batch_sharding, replicated),
                 out_shardings=(shardings, replicated),
                 donate_argnums=0)


# -- validation shared by the trainers ----------------------------------------


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """The fields every trainer config has."""
  config_lib.validate_model(config.model)
  if 'lengths' in config and 'joint_len' in config.lengths:
    config_lib.validate_lengths(config.lengths,
                                config.model.max_position_embeddings)
  mesh = sharding.mesh_shape(config.mesh, num_devices)
  config_lib.validate_batch(config.batch_size, 'batch_size', mesh['data'])
  config_lib.check(config.num_train_steps >= 1, 'num_train_steps',
                   'must be >= 1')
  config_lib.check(config.log_every_steps >= 1, 'log_every_steps',
                   'must be >= 1')
  checkpointing.validate(config.checkpoint)
  optim.validate(config.optimizer, config.num_train_steps)


def checked_config(config: ml_collections.ConfigDict,
                   validate_fn: Callable = validate
                   ) -> ml_collections.ConfigDict:
  """The job config with the model sizes of its BERT checkpoint (if any),
  validated by the job's `validate_fn(config, num_devices)`."""
  config = bert_import.apply_init_config(config)
  validate_fn(config, jax.device_count())
  return config


def open_corpus(config: ml_collections.ConfigDict,
                path: epath.PathLike) -> corpus_lib.Corpus:
  """The corpus, checked against the model's vocabulary (and the BERT
  checkpoint's) and, when the config has one, its block length."""
  corpus = corpus_lib.Corpus(path)
  config_lib.check(config.model.vocab_size >= corpus.tokenizer.vocab_size,
                   'model.vocab_size', f'{config.model.vocab_size} < the '
                   f'corpus vocabulary {corpus.tokenizer.vocab_size}')
  if 'lengths' in config and 'block_len' in config.lengths:
    config_lib.check(config.lengths.block_len == corpus.block_len,
                     'lengths.block_len', f'{config.lengths.block_len} != '
                     f'the corpus block length {corpus.block_len}')
  if config.init.bert_checkpoint:
    bert_import.check_vocab(corpus.tokenizer, config.init.bert_checkpoint)
  return corpus


def salient_examples(corpus: corpus_lib.Corpus, workdir: epath.Path, *,
                     annotator: str, query_len: int,
                     max_masks: int) -> epath.Path:
  """WORKDIR/examples: the corpus's salient spans (inputs/pretrain.py's
  folder), found once - as REALM did, offline - by process 0."""
  examples = workdir / 'examples'
  if not (examples / pretrain_input.MANIFEST).exists():
    if jax.process_index() == 0:
      pretrain_input.prepare_examples(corpus, examples, annotator=annotator,
                                      query_len=query_len, max_masks=max_masks)
    multihost_utils.sync_global_devices('salient span examples')
  return examples


# -- the loop -----------------------------------------------------------------


HostBatch = Callable[[int, PyTree], tuple[dict, Mapping[str, float]]]
# A host metric (not logged): seconds host_batch spent blocked on device
# results, e.g. embeddings queued behind the previous step, so the clock
# counts them as device time.
DEVICE_WAIT = 'device_wait_seconds'


class OneStepAhead:
  """A HostBatch whose device work is dispatched one step ahead.

  `queue(step, params)` dispatches a step's device work (the query
  embedding, an exact index's search of it) without waiting for it;
  `finish(step, queued)` waits for that work and does the host work
  (search on the host, featurization), returning (batch, host metrics).
  Step s + 1's work is queued with the parameters entering step s, before
  step s is dispatched, so its host work overlaps the device's step s
  instead of queueing behind it. Where a run may resume (`resumes(step)`:
  its checkpointed steps) a step's work is queued with that step's own
  parameters, so a resumed run sees exactly the inputs an uninterrupted
  one did; `usable(step, queued)` may refuse a queued result (e.g. one
  searched in an index too stale for its step), which is then redone.
  """

  def __init__(self, queue: Callable[[int, PyTree], Any],
               finish: Callable[[int, Any], tuple[dict, Mapping[str, float]]],
               num_steps: int, resumes: Callable[[int], bool],
               usable: Callable[[int, Any], bool] = lambda step, queued: True):
    self.queue, self.finish, self.num_steps = queue, finish, num_steps
    self.resumes, self.usable = resumes, usable
    self._queued = {}  # step -> what queue returned

  def __call__(self, step: int, params: PyTree):
    queued = self._queued.pop(step, None)
    if queued is None or self.resumes(step) or not self.usable(step, queued):
      queued = self.queue(step, params)
    if step + 1 < self.num_steps and not self.resumes(step + 1):
      self._queued[step + 1] = self.queue(step + 1, params)
    return self.finish(step, queued)


class Trainer:
  """One training job in its workdir: the state, and the loop over it.

  Creating it records the config (config.json), restores the latest
  checkpoint or initialises the model - from `config.init.bert_checkpoint`
  when set (every BERT encoder, bert_import.init_from_bert); `fresh_start`
  tells which. The optimizer is BERT's (optim.py) over the parameters
  `frozen` does not name. `model_config` is the one `create_model` builds
  (default config.model).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path,
               name: str, create_model: Callable[[], nnx.Module], *,
               frozen: Frozen = None,
               model_config: ml_collections.ConfigDict | None = None):
    self.config, self.workdir, self.name = config, workdir, name
    self.frozen = frozen
    workspace.start_job(workdir, config)
    self.mesh = sharding.make_mesh(config.mesh)
    self.tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    self.manager = checkpointing.make_manager(workdir / 'checkpoints',
                                              config.checkpoint)
    self.graphdef, self.state, self.shardings, position = init_train_state(
        create_model, self.tx, self.mesh, config.axis_rules, self.manager,
        frozen)
    self.fresh_start = position is None
    self.start_step = 0 if position is None else position['next_step']
    if self.fresh_start and config.init.bert_checkpoint:
      self.params = bert_import.init_job_params(
          self.params, self.shardings['params'], ml_collections.ConfigDict(
              dict(model=model_config or config.model, init=config.init)))
    self.batch_sharding = sharding.batch_sharding(self.mesh, config.axis_rules)
    self.writer = metrics_lib.MetricWriter(workdir / 'logs' / name,
                                         config.num_train_steps)
    self.writer.write_text('parameters.txt',
                           sharding.describe(self.state['params']))

  @property
  def params(self) -> PyTree:
    return self.state['params']

  @params.setter
  def params(self, params: PyTree) -> None:
    """Replaces the parameters (e.g. from a checkpoint to start from),
    placed into their shardings."""
    self.state = dict(self.state, params=jax.device_put(
        params, self.shardings['params']))

  def save(self, wait: bool = False) -> None:
    """Saves the current state now (e.g. step 0, for the index builder)."""
    step = int(self.state['step'])
    checkpointing.save(self.manager, step, self.state,
                       dict(next_step=step), force=True)
    if wait:
      self.manager.wait_until_finished()

  def train(self, loss_fn: Callable, host_batch: HostBatch, *,
            evaluate: Callable[[PyTree], Mapping[str, float]] | None = None,
            eval_every_steps: int = 0) -> dict:
    """Trains to config.num_train_steps; returns the last logged metrics.

    `evaluate(params) -> metrics`, when given, runs before the first step
    of a fresh run (step 0: where training starts from), every
    `eval_every_steps` and after the last step, each time after that
    step's checkpoint is saved; its metrics are logged (and returned)
    under eval/.
    """
    config = self.config
    step_fn = jit_train_step(
        lambda state, batch, rng: train_step(
            state, batch, rng, graphdef=self.graphdef, tx=self.tx,
            loss_fn=loss_fn, frozen=self.frozen),
        self.shardings, self.batch_sharding, self.mesh)
    rng = jax.random.PRNGKey(config.seed)
    clock = _Clock(self.start_step, config.num_train_steps)
    last = {}
    progress = tqdm.trange(self.start_step, config.num_train_steps,
                           desc=self.name, initial=self.start_step,
                           total=config.num_train_steps,
                           disable=jax.process_index() > 0)
    def log_evaluation(done):
      results = {f'eval/{k}': float(v)
                 for k, v in evaluate(self.state['params']).items()}
      self.writer.write(done, results)
      return results

    if evaluate is not None and self.start_step == 0:
      last = log_evaluation(0)
    for step in progress:
      clock.host_started()
      batch, host_metrics = host_batch(step, self.state['params'])
      batch = sharding.global_batch(batch, self.batch_sharding)
      clock.host_done(host_metrics.pop(DEVICE_WAIT, 0.0))
      self.state, metrics = step_fn(self.state, batch, rng)
      done = step + 1
      if done % config.log_every_steps == 0 or done == config.num_train_steps:
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last |= mean_over_processes(host_metrics) | clock.metrics(done)
        self.writer.write(done, last)
      evaluating = evaluate is not None and (
          done == config.num_train_steps or (
              eval_every_steps and done % eval_every_steps == 0))
      # An evaluated step is always checkpointed, and before its evaluation
      # (which may wait for an index of that checkpoint).
      checkpointing.save(self.manager, done, self.state,
                         dict(next_step=done),
                         force=done == config.num_train_steps or evaluating)
      if evaluating:
        last |= log_evaluation(done)
    progress.close()
    self.manager.wait_until_finished()
    workspace.finish_job(self.workdir)
    return last

  def close(self) -> None:
    self.writer.close()


def mean_over_processes(host_metrics: Mapping[str, float]) -> dict:
  """Host-side metrics of this process, averaged over all processes."""
  if not host_metrics:
    return {}
  names = sorted(host_metrics)
  values = np.array([float(host_metrics[k]) for k in names])
  if jax.process_count() > 1:
    values = multihost_utils.process_allgather(values).mean(0)
  return dict(zip(names, values.tolist()))


class _Clock:
  """Steps/s, the host/device split of a step's time, and the ETA.

  Host time is the job's host work (inputs, retrieval, featurization),
  less the time `host_batch` reports under DEVICE_WAIT as spent blocked on
  device results; the rest of a step's wall time is spent waiting for the
  device (dispatch is asynchronous, so host work of step s + 1 may overlap
  the device's step s). Host CPU time is the training thread's own CPU time
  in that host work: on a CPU backend the device step runs on the same
  cores, so overlapped host work takes longer in wall time than it costs.
  """

  def __init__(self, start_step: int, num_steps: int):
    self.num_steps = num_steps
    self.last_step, self.last_time = start_step, time.perf_counter()
    self.host_seconds = self.host_cpu_seconds = 0.0
    self._started = self._started_cpu = 0.0

  def host_started(self):
    self._started = time.perf_counter()
    self._started_cpu = time.thread_time()

  def host_done(self, device_wait: float = 0.0):
    self.host_seconds += time.perf_counter() - self._started - device_wait
    self.host_cpu_seconds += time.thread_time() - self._started_cpu

  def metrics(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = max(step - self.last_step, 1)
    step_seconds = (now - self.last_time) / steps
    host = self.host_seconds / steps
    out = {'time/steps_per_s': 1.0 / max(step_seconds, 1e-9),
           'time/host_ms': 1e3 * host,
           'time/host_cpu_ms': 1e3 * self.host_cpu_seconds / steps,
           'time/device_ms': 1e3 * max(step_seconds - host, 0.0),
           'time/eta_s': step_seconds * (self.num_steps - step)}
    self.last_step, self.last_time = step, now
    self.host_seconds = self.host_cpu_seconds = 0.0
    return out
