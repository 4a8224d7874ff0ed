"""REALM pre-training: the marginal loss, its gradients, the candidates,
the initialisation from BERT and ICT."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import job_config

from realm_jax import checkpointing
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import models
from realm_jax.inputs import blocks as blocks_lib
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.jobs import pretrain
from realm_jax.objectives import realm as realm_objective
from realm_jax.retrieval import workspace

B, K, Q, L, J, M, V = 2, 3, 8, 12, 16, 3, 50


def _model_config():
  config = config_lib.model_config('tiny', vocab_size=V)
  config.update(num_layers=1, hidden_size=16, num_heads=2,
                intermediate_size=32, projection_size=8, span_hidden_size=8,
                max_position_embeddings=32)
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ints = lambda *shape: rng.integers(5, V, shape).astype(np.int32)
  ones = lambda *shape: np.ones(shape, np.int32)
  batch = dict(
      query_ids=ints(B, Q), query_mask=ones(B, Q),
      candidate_ids=ints(B, K, L), candidate_segments=ones(B, K, L),
      candidate_mask=ones(B, K, L), candidate_valid=ones(B, K),
      reader_ids=ints(B, K, J),
      reader_segments=ones(B, K, J), reader_mask=ones(B, K, J),
      mlm_positions=rng.integers(1, Q, (B, M)).astype(np.int32),
      mlm_targets=ints(B, M),
      mlm_weights=np.array([[1, 1, 0], [1, 1, 1]], np.float32),
      candidate_holds_span=np.zeros((B, K), np.int32))
  batch['candidate_holds_span'][0, 1] = batch['candidate_holds_span'][1, 2:] = 1
  batch['query_mask'][0, -2:] = 0
  batch['candidate_mask'][:, 0, 3:] = 0  # a null-like short candidate
  return batch


@pytest.fixture(scope='module')
def model_and_params():
  model = models.REALM(_model_config(), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def _log_softmax(x, axis=-1):
  x = x - x.max(axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis, keepdims=True))


def _numpy_scores_and_log_p_y(model, batch):
  """The model's raw outputs in float64: relevance scores [B, K] and
  log p(y_j | z, x) [B, K, M]."""
  f64 = lambda x: np.asarray(x, np.float64)
  q = f64(model.retriever.embed_queries(
      batch['query_ids'], np.zeros_like(batch['query_ids']),
      batch['query_mask']))
  docs = f64(model.retriever.embed_blocks(
      batch['candidate_ids'].reshape(B * K, L),
      batch['candidate_segments'].reshape(B * K, L),
      batch['candidate_mask'].reshape(B * K, L))).reshape(B, K, -1)
  sequence = model.reader(batch['reader_ids'].reshape(B * K, J),
                          batch['reader_segments'].reshape(B * K, J),
                          batch['reader_mask'].reshape(B * K, J))
  logits = f64(model.reader.mlm_logits(
      sequence, np.repeat(batch['mlm_positions'], K, axis=0))).reshape(
          B, K, M, V)
  log_p_y = np.take_along_axis(
      _log_softmax(logits), batch['mlm_targets'][:, None, :, None],
      axis=-1)[..., 0]
  return np.einsum('bd,bkd->bk', q, docs), log_p_y


def test_marginal_loss_matches_numpy(model_and_params):
  model, graphdef, params = model_and_params
  batch = _batch()
  loss, metrics = jax.jit(lambda p: realm_objective.loss(
      p, batch, None, graphdef))(params)

  # The formula written out in float64 from the model's raw outputs.
  scores, log_p_y = _numpy_scores_and_log_p_y(model, batch)
  log_p_z = _log_softmax(scores)
  joint = log_p_z[:, :, None] + log_p_y
  marginal = np.log(np.exp(joint).sum(1))
  w = batch['mlm_weights']
  np.testing.assert_allclose(loss, -(marginal * w).sum() / w.sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(
      metrics['retrieval_utility'],
      ((marginal - log_p_y[:, 0]) * w).sum() / w.sum(), rtol=1e-4,
      atol=1e-6)
  p_z = np.exp(log_p_z)
  np.testing.assert_allclose(metrics['p_null'], p_z[:, 0].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['retrieval_entropy'],
                             -(p_z * log_p_z).sum(1).mean(), rtol=1e-5)
  # Per token j: p(z | x, y_j) = p(z | x) p(y_j | z, x) / p(y_j | x); then
  # averaged over the query's tokens, summed over the span's holders.
  holds = batch['candidate_holds_span'].astype(bool)
  posterior = np.exp(joint - marginal[:, None, :])
  posterior = (posterior * w[:, None, :]).sum(-1) / w.sum(-1)[:, None]
  np.testing.assert_allclose(metrics['holder_prior'],
                             (p_z * holds).sum(1).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['holder_posterior'],
                             (posterior * holds).sum(1).mean(), rtol=1e-4)


def test_relative_null_document_scores_the_mean_block_plus_an_offset():
  """null_document='relative': the null score is the mean of the valid
  blocks' scores + null_offset (so a common shift of the blocks' scores
  leaves p(z | x) unchanged), and the offset is learned."""
  model = models.REALM(_model_config(), rngs=nnx.Rngs(0), null_offset=True)
  model.null_offset.set_value(jnp.asarray(0.7, jnp.float32))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  batch = _batch()
  batch['candidate_valid'][1, -1] = 0  # the mean is over valid blocks only
  # One jitted call for the loss and its gradient (op by op is slower).
  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: realm_objective.loss(p, batch, None, graphdef,
                                     null_document='relative'),
      has_aux=True))(params)

  scores, log_p_y = _numpy_scores_and_log_p_y(model, batch)
  valid = batch['candidate_valid'].astype(bool)
  for row in range(B):
    scores[row, 0] = scores[row, 1:][valid[row, 1:]].mean() + 0.7
  log_p_z = _log_softmax(np.where(valid, scores, -1e9))
  marginal = np.log(np.exp(log_p_z[:, :, None] + log_p_y).sum(1))
  w = batch['mlm_weights']
  np.testing.assert_allclose(loss, -(marginal * w).sum() / w.sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics['p_null'], np.exp(log_p_z[:, 0]).mean(),
                             rtol=1e-5)
  assert abs(float(grads['null_offset'])) > 1e-6


def test_learned_temperature_is_logged():
  """With model.learn_temperature the loss reports the temperature the
  scores are divided by: 1 / (query scale x document scale)."""
  config = _model_config()
  config.update(score='cosine', learn_temperature=True, share_towers=False)
  model = models.REALM(config, rngs=nnx.Rngs(0))
  model.retriever.query_tower.log_scale.set_value(jnp.asarray(1.0))
  model.retriever.doc_tower.log_scale.set_value(jnp.asarray(0.5))
  graphdef, state = nnx.split(model)
  _, metrics = jax.jit(lambda p: realm_objective.loss(
      p, _batch(), None, graphdef))(nnx.to_pure_dict(state))
  np.testing.assert_allclose(metrics['retrieval_temperature'],
                             np.exp(-1.5), rtol=1e-6)


def test_null_document_field_is_checked():
  config = job_config('pretrain')
  config.null_document = 'none'
  with pytest.raises(config_lib.ConfigError, match=r'config\.null_document'):
    pretrain.validate(config, num_devices=8)


def test_gradients_reach_retriever_and_reader(model_and_params):
  _, graphdef, params = model_and_params
  batch = _batch(1)
  loss_fn = lambda p: realm_objective.loss(p, batch, None, graphdef)[0]
  grads = jax.grad(loss_fn)(params)
  tower = grads['retriever']['doc_tower']
  assert float(jnp.abs(tower['projection']['kernel']).sum()) > 0
  assert float(jnp.abs(tower['encoder']['layers'][0]['mlp']['output'][
      'kernel']).sum()) > 0
  assert float(jnp.abs(grads['reader']['mlm_head']['output_bias']).sum()) > 0

  # Central finite differences on a few coordinates of each part.
  def perturbed(path, index, delta):
    leaf = params
    for key in path[:-1]:
      leaf = leaf[key]
    new = jax.tree.map(lambda x: x, params)
    target = new
    for key in path[:-1]:
      target = target[key]
    target[path[-1]] = leaf[path[-1]].at[index].add(delta)
    return new

  for path, index in [
      (('retriever', 'doc_tower', 'projection', 'kernel'), (3, 1)),
      (('retriever', 'doc_tower', 'norm', 'bias'), (2,)),
      (('reader', 'mlm_head', 'output_bias'), (7,)),
      (('reader', 'encoder', 'layers', 0, 'mlp', 'output', 'bias'), (4,))]:
    eps = 1e-2
    numeric = (loss_fn(perturbed(path, index, eps))
               - loss_fn(perturbed(path, index, -eps))) / (2 * eps)
    analytic = grads
    for key in path:
      analytic = analytic[key]
    np.testing.assert_allclose(analytic[index], numeric, rtol=5e-2,
                               atol=2e-4, err_msg=str(path))


def test_null_document_is_cls_sep_sep():
  tokenizer = type('T', (), dict(cls_id=2, sep_id=3))()
  null = blocks_lib.null_document(tokenizer, 6)
  np.testing.assert_array_equal(null['token_ids'], [2, 3, 3, 0, 0, 0])
  np.testing.assert_array_equal(null['segment_ids'], [0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(null['input_mask'], [1, 1, 1, 0, 0, 0])


def test_trivial_retrieval_excluded_and_null_first():
  retrieved = np.array([[5, 9, 2, 7, 3], [1, 4, 6, 8, 0]])
  uid = lambda ids: ids * 100  # a block's uid64
  chosen, valid = pretrain_input.choose_candidates(
      retrieved, uid(retrieved), source_uid64=uid(np.array([9, 3])),
      num_candidates=4)
  # Row 0: its own block 9 is dropped; row 1: source 3 was not retrieved.
  np.testing.assert_array_equal(chosen, [[-1, 5, 2, 7], [-1, 1, 4, 6]])
  assert valid.all()


def test_candidates_skip_empty_slots_and_repeats_and_never_raise():
  # Row 0: an empty ScaNN slot (-1) and block 6 whose uid repeats block 2's;
  # row 1: only one usable block (the rest: its own block, empty slots).
  retrieved = np.array([[2, -1, 6, 4, 5], [7, 3, -1, -1, -1]])
  uids = np.array([[20, 0, 20, 40, 50], [70, 30, 0, 0, 0]])
  chosen, valid = pretrain_input.choose_candidates(
      retrieved, uids, source_uid64=np.array([99, 30]), num_candidates=4)
  np.testing.assert_array_equal(chosen, [[-1, 2, 4, 5], [-1, 7, -1, -1]])
  np.testing.assert_array_equal(valid, [[1, 1, 1, 1], [1, 1, 0, 0]])


def test_invalid_candidates_are_excluded_from_the_marginal(model_and_params):
  """A batch with an unfilled last slot scores as the batch without it."""
  _, graphdef, params = model_and_params
  batch = _batch(2)
  batch['candidate_valid'][:, -1] = 0
  masked, masked_metrics = realm_objective.loss(params, batch, None, graphdef)
  shorter = {k: v[:, :-1] if k.startswith(('candidate', 'reader')) else v
             for k, v in batch.items()}
  loss, metrics = realm_objective.loss(params, shorter, None, graphdef)
  np.testing.assert_allclose(masked, loss, rtol=1e-5)
  for name in ('retrieval_utility', 'p_null', 'retrieval_entropy'):
    np.testing.assert_allclose(masked_metrics[name], metrics[name], rtol=1e-4,
                               atol=1e-6)
  assert np.isfinite(jax.tree.leaves(jax.grad(lambda p: realm_objective.loss(
      p, batch, None, graphdef)[0])(params))[0]).all()


def test_candidate_inputs(tiny_corpus_workdir):
  corpus = corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')
  tok = corpus.tokenizer
  query_ids = np.zeros((1, 10), np.int32)
  query_ids[0, :5] = [tok.cls_id, 11, tok.mask_id, 12, tok.sep_id]
  query = dict(query_ids=query_ids,
               query_mask=(query_ids != 0).astype(np.int32))
  chosen = np.array([[-1, 4, 0]])
  inputs = pretrain_input.candidate_inputs(corpus, query, chosen, reader_len=40)
  blocks = corpus.blocks([4, 0])
  np.testing.assert_array_equal(inputs['candidate_ids'][0, 1:],
                                blocks['token_ids'])
  assert list(inputs['candidate_ids'][0, 0, :4]) == [tok.cls_id, tok.sep_id,
                                                     tok.sep_id, 0]
  # Reader: [CLS] query [SEP] body [SEP], title dropped, body cut to fit.
  null_row = inputs['reader_ids'][0, 0]
  assert list(null_row[:7]) == [tok.cls_id, 11, tok.mask_id, 12, tok.sep_id,
                                tok.sep_id, 0]
  body = corpus.body_tokens(4)[:40 - 5 - 1]
  row = inputs['reader_ids'][0, 1]
  np.testing.assert_array_equal(row[5:5 + len(body)], body)
  assert row[5 + len(body)] == tok.sep_id
  assert inputs['reader_mask'][0, 1].sum() == 5 + len(body) + 1
  np.testing.assert_array_equal(inputs['reader_segments'][0, 1, :5], 0)
  assert inputs['reader_segments'][0, 1, 5:6 + len(body)].all()


# --- Initialisation: BERT checkpoint first, then an ICT run's retriever ----


@pytest.fixture(scope='module')
def bert_workdirs(tmp_path_factory):
  """A tiny random BertForMaskedLM checkpoint (character-level WordPiece
  vocab), a synthetic corpus tokenized with it, and an ICT run from it."""
  import string  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from realm_jax.jobs import ict  # pylint: disable=g-import-not-at-top
  from realm_jax.jobs import prepare_corpus  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('bert_init')
  checkpoint = root / 'bert'
  chars = string.ascii_lowercase + string.digits + string.punctuation
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *chars,
           *(f'##{c}' for c in chars)]
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
      num_attention_heads=2, intermediate_size=32,
      max_position_embeddings=128))
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.normal_(0.0, 0.3)
  model.save_pretrained(checkpoint, safe_serialization=True)
  (checkpoint / 'vocab.txt').write_text('\n'.join(vocab) + '\n')

  corpus_config = job_config('prepare_corpus')
  corpus_config.input.synthetic_docs = 30
  corpus_config.tokenizer.path = str(checkpoint / 'vocab.txt')
  corpus_config.lengths.update(block_len=64, max_title_len=16)
  prepare_corpus.prepare_corpus(corpus_config, str(root))

  ict_workdir = root / 'ict'
  ict_config = job_config('ict')
  ict_config.update_from_flattened_dict({
      'corpus_dir': str(root / 'corpus'),
      'init.bert_checkpoint': str(checkpoint), 'model.pooling': 'mean',
      'model.score': 'cosine', 'lengths.block_len': 64,
      'lengths.query_len': 32, 'lengths.joint_len': 96,
      'lengths.max_title_len': 16, 'batch_size': 8, 'num_train_steps': 3,
      'optimizer.learning_rate': 1e-2})
  ict.train_and_evaluate(ict_config, str(ict_workdir))
  return checkpoint, root / 'corpus', ict_workdir


def _bert_pretrain_config(checkpoint, corpus_dir, **overrides):
  config = job_config('pretrain')
  config.update_from_flattened_dict({
      'corpus_dir': str(corpus_dir), 'init.bert_checkpoint': str(checkpoint),
      'model.pooling': 'mean', 'model.score': 'cosine',
      'lengths.block_len': 64, 'lengths.query_len': 32,
      'lengths.joint_len': 96, 'lengths.max_title_len': 16,
      'masking.kind': 'random_tokens',
      'batch_size': 8, 'index.wait_seconds': 0.2,
      # Step 0 is committed before the run gives up waiting for an index.
      'checkpoint.async_save': False, **overrides})
  return config


def _step0_params(workdir):
  from realm_jax import checkpointing  # pylint: disable=g-import-not-at-top
  model_config = ml_collections.ConfigDict(json.loads(
      (workdir / 'config.json').read_text())['model'])
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: models.REALM(model_config, rngs=nnx.Rngs(0)))))
  manager = checkpointing.make_manager(workdir / 'checkpoints',
                                       read_only=True)
  assert manager.latest_step() == 0
  return checkpointing.restore_subtree(manager, 0, ('params',), abstract)


def test_pretrain_inits_from_bert_then_from_ict(bert_workdirs, tmp_path):
  from realm_jax import bert_import  # pylint: disable=g-import-not-at-top
  from realm_jax import checkpointing  # pylint: disable=g-import-not-at-top
  checkpoint, corpus_dir, ict_workdir = bert_workdirs
  encoder = bert_import.import_bert_encoder(checkpoint)
  del encoder['pooler']  # BertForMaskedLM has none: each model's stays fresh
  without_pooler = lambda tree: {k: v for k, v in tree.items()
                                 if k != 'pooler'}
  # Without a builder beside it the run stops waiting for its first index,
  # after saving step 0: the initial parameters.
  # The third learns the temperature ICT scored with (0.05, fixed).
  for name, init_from, learn in (('bert', '', False),
                                 ('bert_ict', str(ict_workdir), False),
                                 ('bert_ict_learned', str(ict_workdir), True)):
    workdir = tmp_path / name
    with pytest.raises(TimeoutError):
      pretrain.train_and_evaluate(_bert_pretrain_config(
          checkpoint, corpus_dir, init_from=init_from,
          **{'model.learn_temperature': learn}), str(workdir))
    params = _step0_params(workdir)
    # The reader (encoder and MLM head) is BERT's either way.
    reader = params['reader']
    jax.tree.map(np.testing.assert_array_equal,
                 without_pooler(reader['encoder']), encoder)
    head = bert_import.init_from_bert(
        {'reader': jax.tree.map(np.asarray, reader)},
        bert_import.bert_model_config(checkpoint), checkpoint)
    np.testing.assert_array_equal(reader['mlm_head']['output_bias'],
                                  head['reader']['mlm_head']['output_bias'])
    assert np.abs(reader['mlm_head']['output_bias']).max() > 0.1  # not fresh
    retriever = params['retriever']['doc_tower']
    assert ('log_scale' in retriever) == learn
    if learn:
      np.testing.assert_allclose(retriever.pop('log_scale'),
                                 -0.5 * np.log(0.05), rtol=1e-6)
    if init_from:  # ... and the retriever is ICT's (trained 3 steps).
      manager = checkpointing.make_manager(ict_workdir / 'checkpoints',
                                           read_only=True)
      ict_tower = checkpointing.restore_subtree(
          manager, 3, workspace.DOC_TOWER_PATH,
          checkpointing.abstract(jax.tree.map(np.asarray, retriever)))
      jax.tree.map(np.testing.assert_array_equal, retriever, ict_tower)
      assert not np.allclose(
          retriever['encoder']['layers'][0]['mlp']['output']['kernel'],
          encoder['layers'][0]['mlp']['output']['kernel'], atol=1e-4)
    else:
      jax.tree.map(np.testing.assert_array_equal,
                   without_pooler(retriever['encoder']), encoder)


def test_init_from_run_must_agree_on_the_retriever(bert_workdirs, tmp_path):
  checkpoint, corpus_dir, ict_workdir = bert_workdirs
  config = _bert_pretrain_config(checkpoint, corpus_dir,
                                 init_from=str(ict_workdir),
                                 **{'model.pooling': 'cls'})
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.model\.pooling: cls != mean'):
    pretrain.train_and_evaluate(config, str(tmp_path / 'w'))
  # Learning the temperature from ICT's fixed one: it must be ICT's.
  config = _bert_pretrain_config(checkpoint, corpus_dir,
                                 init_from=str(ict_workdir),
                                 **{'model.learn_temperature': True,
                                    'model.score_temperature': 0.1})
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.model\.score_temperature: 0\.1 != 0\.05'):
    pretrain.train_and_evaluate(config, str(tmp_path / 'w2'))


def test_fact_found_is_a_candidate_holding_the_masked_span(
    tiny_corpus_workdir):
  corpus = corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')
  tok = corpus.tokenizer
  record = corpus.records([5])[0]
  word = next(w for w in record['text'].split() if len(w) > 6 and w.isalpha())
  pieces = tok.encode(word)
  batch = dict(mlm_targets=np.zeros((2, 10), np.int32),
               mlm_weights=np.zeros((2, 10), np.float32))
  for row in range(2):
    batch['mlm_targets'][row, :len(pieces)] = pieces
    batch['mlm_weights'][row, :len(pieces)] = 1
  others = [i for i in range(len(corpus)) if word.lower() not in
            corpus.records([i])[0]['text'].lower()][:2]
  chosen = np.array([[-1, others[0], 5], [-1, others[0], others[1]]])
  valid = np.ones_like(chosen, bool)
  np.testing.assert_array_equal(
      pretrain_input.fact_found(corpus, batch, chosen, valid), [True, False])
  np.testing.assert_array_equal(
      pretrain_input.span_holders(corpus, batch, chosen, valid),
      [[False, False, True], [False, False, False]])
  valid[0, 2] = False  # an unfilled slot does not count
  np.testing.assert_array_equal(
      pretrain_input.fact_found(corpus, batch, chosen, valid), [False, False])


def test_index_query_embedder_searches_with_the_index_checkpoint(tmp_path):
  """query_embedder='index': the retriever of the index's checkpoint step;
  a step already deleted keeps the previous one (never raises)."""
  manager = checkpointing.make_manager(
      tmp_path / 'checkpoints', checkpointing.checkpoint_config(every_steps=1))
  towers = {step: {'w': jnp.full((2, 3), float(step))} for step in (0, 5)}
  for step, tower in towers.items():
    checkpointing.save(manager, step, {'params': {'retriever': tower,
                                                  'reader': {'b': 1.0}}},
                       {'step': step}, force=True)
  manager.wait_until_finished()
  current = {'w': jnp.full((2, 3), 9.0)}
  index_retriever = pretrain.IndexRetriever(manager)
  for step in (0, 5, 0):
    np.testing.assert_array_equal(
        index_retriever.get(step, current)['w'], towers[step]['w'])
  np.testing.assert_array_equal(index_retriever.get(3, current)['w'],
                                towers[0]['w'])  # step 3 was never saved
  assert pretrain.IndexRetriever(manager).get(3, current) is current


def test_steps_where_a_run_may_resume_retrieve_with_their_own_parameters():
  config = job_config('pretrain')
  config.checkpoint.every_steps, config.eval_every_steps = 4, 6
  config.eval_batches = 2
  own = pretrain.retrieved_in_its_own_step(config)
  assert [s for s in range(13) if own(s)] == [0, 4, 6, 8, 12]
  config.eval_batches = 0  # no evaluation, no evaluated steps
  own = pretrain.retrieved_in_its_own_step(config)
  assert [s for s in range(13) if own(s)] == [0, 4, 8, 12]
  config.retrieve_ahead = False
  own = pretrain.retrieved_in_its_own_step(config)
  assert all(own(s) for s in range(13))


def test_query_embedder_field_is_checked():
  config = job_config('pretrain')
  config.query_embedder = 'stale'
  with pytest.raises(config_lib.ConfigError, match=r'config\.query_embedder'):
    pretrain.validate(config, num_devices=8)


def test_refresh_interval_must_be_a_multiple_of_the_checkpoint_interval():
  config = job_config('pretrain')
  config.checkpoint.every_steps = 20
  config.index.refresh_every_steps = 60
  pretrain.validate(config, num_devices=8)
  config.index.refresh_every_steps = 30  # step 30's checkpoint never exists
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.index\.refresh_every_steps'):
    pretrain.validate(config, num_devices=8)
  # A fresh evaluation between refreshes would swap the training index.
  config.index.update(refresh_every_steps=20, fresh_eval=True)
  config.eval_every_steps = 60
  pretrain.validate(config, num_devices=8)
  config.eval_every_steps = 50
  with pytest.raises(config_lib.ConfigError, match=r'config\.eval_every_steps'):
    pretrain.validate(config, num_devices=8)


def test_max_staleness_below_the_checkpoint_interval_is_refused():
  config = job_config('pretrain')
  config.checkpoint.every_steps = 20
  config.index.max_staleness_steps = 20
  pretrain.validate(config, num_devices=8)  # as fresh as checkpoints allow
  config.index.max_staleness_steps = 19  # would wait for a step never saved
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.index\.max_staleness_steps'):
    pretrain.validate(config, num_devices=8)
