"""realm-mlm: BERT masking, the masked-LM objective, the head's warm-up."""
import json

from flax import nnx
import jax
import numpy as np
import pytest

from conftest import job_config
from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import models
from realm_jax.jobs import mlm
from realm_jax.inputs import mlm as mlm_input
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.objectives import mlm as mlm_objective


@pytest.fixture(scope='module')
def corpus(tiny_corpus_workdir):
  return corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')


def _inputs(corpus, **overrides):
  settings = dict(global_batch_size=16, seq_len=128, mask_rate=0.15,
                  max_predictions=20, whole_word=False, eval_blocks=8,
                  seed=0)
  settings.update(overrides)
  return mlm_input.MlmInput(corpus, **settings)


def test_bert_masking(corpus):
  inputs = _inputs(corpus)
  tok = corpus.tokenizer
  special = {tok.cls_id, tok.sep_id, tok.pad_id}
  kinds = dict(mask=0, random=0, kept=0)
  for step in range(12):
    batch = inputs.batch(step)
    originals = corpus.blocks(inputs.block_ids(step))['token_ids'][:, :128]
    cut = batch['input_mask'][:, -1] == 1  # a cut block ends in [SEP]
    assert cut.any() and (~cut).any()
    originals[cut, -1] = tok.sep_id
    for row in range(16):
      weights = batch['mlm_weights'][row]
      positions = batch['mlm_positions'][row][weights > 0]
      real = int(batch['input_mask'][row].sum())
      candidates = sum(int(t) not in special
                       for t in originals[row, :real])
      assert len(positions) == min(20, max(1, round(candidates * 0.15)))
      assert len(set(positions)) == len(positions)
      assert all(int(originals[row, p]) not in special for p in positions)
      np.testing.assert_array_equal(batch['mlm_targets'][row][weights > 0],
                                    originals[row, positions])
      unpredicted = np.setdiff1d(np.arange(128), positions)
      np.testing.assert_array_equal(batch['token_ids'][row, unpredicted],
                                    originals[row, unpredicted])
      for p in positions:
        token = batch['token_ids'][row, p]
        kinds['mask' if token == tok.mask_id else
              'kept' if token == originals[row, p] else 'random'] += 1
  total = sum(kinds.values())
  assert total > 1000
  assert abs(kinds['mask'] / total - 0.8) < 0.04, kinds
  assert abs(kinds['random'] / total - 0.1) < 0.03, kinds
  assert abs(kinds['kept'] / total - 0.1) < 0.03, kinds
  # A pure function of the step; the held-out blocks never train.
  np.testing.assert_array_equal(inputs.batch(3)['token_ids'],
                                _inputs(corpus).batch(3)['token_ids'])
  assert max(inputs.block_ids(s).max() for s in range(40)) < len(corpus) - 8
  first, again = inputs.eval_batches(5), inputs.eval_batches(5)
  assert len(first) == 2 and first[1]['mlm_weights'][3:].sum() == 0
  np.testing.assert_array_equal(first[0]['token_ids'], again[0]['token_ids'])


def test_whole_word_masking_takes_every_piece_of_a_word(corpus):
  inputs = _inputs(corpus, whole_word=True)
  continues = mlm_input.word_continuations(corpus.tokenizer)
  assert continues.any() and not continues.all()
  whole_words = 0
  for step in range(6):
    batch = inputs.batch(step)
    originals = corpus.blocks(inputs.block_ids(step))['token_ids'][:, :128]
    originals[batch['input_mask'][:, -1] == 1, -1] = corpus.tokenizer.sep_id
    for row in range(16):
      chosen = set(batch['mlm_positions'][row][
          batch['mlm_weights'][row] > 0].tolist())
      for p in chosen:
        # The piece before a continuation piece is chosen too, and so is
        # the continuation after a chosen piece.
        if continues[originals[row, p]]:
          assert p - 1 in chosen
        if p + 1 < 128 and continues[originals[row, p + 1]]:
          assert p + 1 in chosen
          whole_words += 1
  assert whole_words > 10  # multi-piece words were masked


def _unmasked(batch, row):
  """The row's pieces with the predicted ones put back."""
  ids = batch['token_ids'][row].copy()
  weights = batch['mlm_weights'][row] > 0
  ids[batch['mlm_positions'][row][weights]] = batch['mlm_targets'][row][
      weights]
  return ids


def test_sentence_pairs_copy_a_sentence_of_the_block(corpus):
  q = 24
  inputs = _inputs(corpus, pair_query_len=q, pair_mask_rate=0.3)
  tok = corpus.tokenizer
  assert inputs.seq_len == q + 128
  sentence_targets = body_targets = 0
  for step in range(4):
    batch = inputs.batch(step)
    assert batch['token_ids'].shape == (16, q + 128)
    for row, block in enumerate(inputs.block_ids(step)):
      ids = _unmasked(batch, row)
      query_len = int(np.flatnonzero(ids == tok.sep_id)[0]) + 1
      sentence = ids[1:query_len - 1]
      body = corpus.body_tokens(int(block))
      bounds = [tuple(b) for b in corpus.sentence_bounds(int(block))]
      # [CLS] one of the block's sentences [SEP] its body [SEP].
      begins = [b for b, e in bounds
                if np.array_equal(body[b:e][:q - 2], sentence)]
      assert begins, (row, sentence)
      real = int(batch['input_mask'][row].sum())
      np.testing.assert_array_equal(ids[query_len:real - 1],
                                    body[:real - 1 - query_len])
      assert ids[0] == tok.cls_id and ids[real - 1] == tok.sep_id
      np.testing.assert_array_equal(
          batch['segment_ids'][row][:real],
          (np.arange(real) >= query_len).astype(np.int32))
      weights = batch['mlm_weights'][row] > 0
      positions = batch['mlm_positions'][row][weights]
      in_sentence = positions[positions < query_len - 1]
      assert len(in_sentence) == min(20, max(1, round(len(sentence) * 0.3)))
      assert (in_sentence >= 1).all()
      # Every sentence piece predicted is still in the body, unmasked.
      begin = begins[0]
      copies = query_len + begin + in_sentence - 1
      np.testing.assert_array_equal(batch['token_ids'][row][copies],
                                    batch['mlm_targets'][row][weights][
                                        :len(in_sentence)])
      in_body = positions[positions >= query_len] - query_len
      assert not ((in_body >= begin) & (in_body < begin + len(sentence))
                  ).any()
      sentence_targets += len(in_sentence)
      body_targets += len(in_body)
  assert sentence_targets > 100 and body_targets > 100
  np.testing.assert_array_equal(
      inputs.batch(2)['token_ids'],
      _inputs(corpus, pair_query_len=q).batch(2)['token_ids'])


def test_copy_eval_pairs_beside_the_block_and_the_null_document(corpus):
  inputs = _inputs(corpus, pair_query_len=24)
  own = inputs.copy_eval_batches(5, 'own')
  null = inputs.copy_eval_batches(5, 'null')
  assert len(own) == len(null) == 2
  sep = corpus.tokenizer.sep_id
  for a, b in zip(own, null):
    for key in ('mlm_positions', 'mlm_targets', 'mlm_weights'):
      np.testing.assert_array_equal(a[key], b[key])
    for row in range(5):
      if not a['mlm_weights'][row].any():
        continue  # padding of the last batch
      query_len = int(np.flatnonzero(a['token_ids'][row] == sep)[0]) + 1
      np.testing.assert_array_equal(a['token_ids'][row][:query_len],
                                    b['token_ids'][row][:query_len])
      # Only sentence pieces are predicted; the null body is empty.
      positions = a['mlm_positions'][row][a['mlm_weights'][row] > 0]
      assert positions.max() < query_len - 1
      assert int(b['input_mask'][row].sum()) == query_len + 1
      assert int(a['input_mask'][row].sum()) > query_len + 1
  np.testing.assert_array_equal(own[0]['token_ids'],
                                inputs.copy_eval_batches(5, 'own')[0][
                                    'token_ids'])
  with pytest.raises(ValueError, match='pair_query_len'):
    _inputs(corpus).copy_eval_batches(5, 'own')


def test_pair_training_logs_copy_accuracy_beside_block_and_null(
    tiny_corpus_workdir, tmp_path):
  config = job_config('mlm')
  config.model.update(num_layers=1, hidden_size=32, num_heads=2,
                      intermediate_size=64, vocab_size=1000)
  config.update(corpus_dir=str(tiny_corpus_workdir / 'corpus'), seq_len=64,
                pair_query_len=24, batch_size=8, eval_batch_size=8,
                eval_blocks=16, num_train_steps=4, eval_every_steps=4,
                log_every_steps=2)
  mlm.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(line) for line in (
      tmp_path / 'logs' / 'mlm' / 'metrics.jsonl').read_text().splitlines()]
  last = [r for r in rows if 'eval/copy_accuracy' in r][-1]
  assert last['step'] == 4
  for key in ('eval/mlm_accuracy', 'eval/copy_accuracy',
              'eval/copy_null_accuracy'):
    assert 0.0 <= last[key] <= 1.0
  config.pair_distractor_rate = 0.3
  with pytest.raises(config_lib.ConfigError,
                     match='config.pair_distractor_rate'):  # needs linked
    mlm.train_and_evaluate(config, str(tmp_path / 'bad'))
  config.pair_evidence = 'linked'  # salient spans beside another block
  linked = tmp_path / 'linked'
  mlm.train_and_evaluate(config, str(linked))
  assert (linked / 'examples' / 'manifest.json').exists()
  rows = [json.loads(line) for line in (
      linked / 'logs' / 'mlm' / 'metrics.jsonl').read_text().splitlines()]
  for key in ('eval/copy_null_accuracy', 'eval/copy_distractor_accuracy'):
    assert 0.0 <= rows[-1][key] <= 1.0
  config.pair_distractor_rate = 0.0
  config.pair_evidence_window = 8
  config.pair_evidence = 'own'  # windows cut linked blocks only
  with pytest.raises(config_lib.ConfigError,
                     match='config.pair_evidence_window'):
    mlm.train_and_evaluate(config, str(tmp_path / 'bad'))
  config.pair_evidence_window = 0
  config.pair_evidence = 'other'
  with pytest.raises(config_lib.ConfigError, match='config.pair_evidence'):
    mlm.train_and_evaluate(config, str(tmp_path / 'bad'))
  config.pair_evidence = 'own'
  config.pair_query_len = (config.model.max_position_embeddings
                           - config.seq_len + 1)  # past the positions
  with pytest.raises(config_lib.ConfigError, match='config.pair_query_len'):
    mlm.train_and_evaluate(config, str(tmp_path / 'bad'))


@pytest.fixture(scope='module')
def linked_spans(corpus, tmp_path_factory):
  examples = tmp_path_factory.mktemp('linked') / 'examples'
  pretrain_input.prepare_examples(corpus, examples, annotator='builtin',
                                  query_len=24, max_masks=20)
  return mlm_input.LinkedSpans(corpus, examples, 24)


def _contains(sequence, part):
  return any(np.array_equal(sequence[i:i + len(part)], part)
             for i in range(len(sequence) - len(part) + 1))


def test_linked_pairs_mask_a_span_that_another_block_states(corpus,
                                                            linked_spans):
  eval_blocks = 64
  inputs = _inputs(corpus, seq_len=128, pair_query_len=24, linked=linked_spans,
                   eval_blocks=eval_blocks)
  num_train = len(corpus) - eval_blocks
  tok = corpus.tokenizer
  readable = 0
  for step in range(3):
    batch = inputs.batch(step)
    sources = inputs.block_ids(step)
    assert (sources < num_train).all()
    for row in range(16):
      ids, targets = batch['token_ids'][row], batch['mlm_targets'][row]
      query_len = int(np.flatnonzero(ids == tok.sep_id)[0]) + 1
      weights = batch['mlm_weights'][row] > 0
      positions = batch['mlm_positions'][row][weights]
      in_query = positions < query_len
      span = targets[weights][in_query]
      assert span.size and (np.diff(positions[in_query]) == 1).all()
      # The span is a salient span of the source block's sentence...
      assert _contains(corpus.body_tokens(int(sources[row])), span)
      # ... and the body beside it, another block's, holds it unmasked
      # (unless no linked block's span fits in seq_len).
      body = ids[query_len:][batch['input_mask'][row][query_len:] > 0]
      readable += _contains(body, span)
  assert readable >= 0.9 * 3 * 16
  held_out = inputs.copy_eval_batches(8, 'own')
  null = inputs.copy_eval_batches(8, 'null')
  assert len(held_out) == len(null) >= 1
  for a, b in zip(held_out, null):
    np.testing.assert_array_equal(a['mlm_targets'], b['mlm_targets'])
    predicted = np.take_along_axis(a['token_ids'], a['mlm_positions'], 1)
    # REALM's masks: all [MASK]
    assert (predicted[a['mlm_weights'] > 0] == tok.mask_id).all()
  spans = linked_spans.spans(at_least=num_train)
  assert (linked_spans.block[spans] >= num_train).all()
  for span in linked_spans.spans(below=num_train)[:50]:
    holders = linked_spans.holders(span, below=num_train)
    assert holders.size and (holders < num_train).all()
    assert linked_spans.block[span] not in holders


def test_distractor_pairs_hold_nothing_to_copy(corpus, linked_spans):
  eval_blocks = 64
  settings = dict(seq_len=128, pair_query_len=24, linked=linked_spans,
                  eval_blocks=eval_blocks)
  plain = _inputs(corpus, **settings)
  inputs = _inputs(corpus, distractor_rate=0.5, **settings)
  tok = corpus.tokenizer

  def spans_and_bodies(batch):
    for row in range(len(batch['token_ids'])):
      ids = batch['token_ids'][row]
      if not batch['input_mask'][row].any():
        continue  # padding of the last held-out batch
      query_len = int(np.flatnonzero(ids == tok.sep_id)[0]) + 1
      weights = batch['mlm_weights'][row] > 0
      in_query = batch['mlm_positions'][row][weights] < query_len
      body = ids[query_len:][batch['input_mask'][row][query_len:] > 0]
      yield batch['mlm_targets'][row][weights][in_query], body

  held = [_contains(body, span) for step in range(4)
          for span, body in spans_and_bodies(inputs.batch(step))]
  assert 0.25 < 1 - np.mean(held) < 0.75  # about half are distractors
  # The same spans in the same order: only the evidence differs.
  np.testing.assert_array_equal(inputs.block_ids(3), plain.block_ids(3))
  own = inputs.copy_eval_batches(8, 'own')
  distractor = inputs.copy_eval_batches(8, 'distractor')
  for a, b in zip(own, distractor):
    np.testing.assert_array_equal(a['mlm_targets'], b['mlm_targets'])
    assert not any(_contains(body, span) for span, body in
                   spans_and_bodies(b) if span.size)
  with pytest.raises(ValueError, match='distractor'):
    plain.copy_eval_batches(8, 'bogus')
  with pytest.raises(ValueError, match='distractor_rate'):
    _inputs(corpus, distractor_rate=0.5)  # without linked pairs


def test_evidence_windows_cut_linked_blocks_around_the_span(corpus,
                                                             linked_spans):
  window = 12
  inputs = _inputs(corpus, seq_len=64, pair_query_len=24, linked=linked_spans,
                   eval_blocks=64, evidence_window=window)
  tok = corpus.tokenizer
  readable, offsets = 0, set()
  for step in range(3):
    batch = inputs.batch(step)
    for row in range(16):
      ids, targets = batch['token_ids'][row], batch['mlm_targets'][row]
      query_len = int(np.flatnonzero(ids == tok.sep_id)[0]) + 1
      weights = batch['mlm_weights'][row] > 0
      in_query = batch['mlm_positions'][row][weights] < query_len
      span = targets[weights][in_query]
      body = ids[query_len:][batch['input_mask'][row][query_len:] > 0][:-1]
      assert 1 <= len(body) <= window
      # Unmasked pieces of the window are a contiguous cut of a block.
      unmasked = batch['token_ids'][row].copy()
      unmasked[batch['mlm_positions'][row][weights]] = targets[weights]
      cut = unmasked[query_len:query_len + len(body)]
      assert _contains_somewhere(corpus, cut)
      if _contains(body, span):
        readable += 1
        offsets.add(next(i for i in range(len(body))
                         if np.array_equal(body[i:i + len(span)], span)))
  assert readable >= 0.9 * 3 * 16
  assert len(offsets) >= 3  # the span sits at varying places in its window
  # Held out: windows as trained, and whole linked blocks, the same targets.
  windows = inputs.copy_eval_batches(8, 'own')
  whole = inputs.copy_eval_batches(8, 'block')
  assert len(windows) == len(whole)
  longer = 0
  for a, b in zip(windows, whole):
    np.testing.assert_array_equal(a['mlm_targets'], b['mlm_targets'])
    assert a['token_ids'].shape[1] == 24 + 64
    assert b['token_ids'].shape[1] == 24 + corpus.block_len
    assert (a['input_mask'].sum(1) <= 24 + window + 1).all()
    longer += int((b['input_mask'].sum(1) > 24 + window + 1).sum())
  assert longer > 0
  with pytest.raises(ValueError, match='evidence_window'):
    _inputs(corpus, seq_len=64, pair_query_len=24, evidence_window=12)
  with pytest.raises(ValueError, match='evidence_window'):
    _inputs(corpus, seq_len=64, pair_query_len=24, linked=linked_spans,
            eval_blocks=64, evidence_window=64)


def _contains_somewhere(corpus, cut):
  return any(_contains(corpus.body_tokens(i), cut) for i in range(len(corpus)))


def _model():
  config = config_lib.model_config('tiny', vocab_size=60)
  config.update(num_layers=1, hidden_size=16, num_heads=2,
                intermediate_size=32, max_position_embeddings=32,
                span_hidden_size=8)
  return models.ReaderModel(config, rngs=nnx.Rngs(0))


def _batch(trains):
  rng = np.random.default_rng(0)
  return dict(token_ids=rng.integers(5, 60, (2, 12)).astype(np.int32),
              segment_ids=np.zeros((2, 12), np.int32),
              input_mask=np.ones((2, 12), np.int32),
              mlm_positions=np.array([[1, 4, 0], [2, 3, 5]], np.int32),
              mlm_targets=rng.integers(5, 60, (2, 3)).astype(np.int32),
              mlm_weights=np.array([[1, 1, 0], [1, 1, 1]], np.float32),
              encoder_trains=np.full(2, trains, np.float32))


def test_mlm_loss_matches_numpy_and_the_warmup_trains_only_the_head():
  model = _model()
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  batch = _batch(1.0)
  loss, metrics = mlm_objective.loss(params, batch, None, graphdef)
  sequence = model.reader(batch['token_ids'], batch['segment_ids'],
                          batch['input_mask'])
  logits = np.asarray(model.reader.mlm_logits(sequence,
                                              batch['mlm_positions']),
                      np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True))
                              .sum(-1, keepdims=True)) - logits.max(
                                  -1, keepdims=True)
  picked = np.take_along_axis(log_probs, batch['mlm_targets'][..., None],
                              -1)[..., 0]
  w = batch['mlm_weights']
  np.testing.assert_allclose(loss, -(picked * w).sum() / w.sum(), rtol=1e-5)
  correct = (logits.argmax(-1) == batch['mlm_targets']) * w
  np.testing.assert_allclose(metrics['mlm_accuracy'], correct.sum() / w.sum())

  norm = lambda tree: float(sum(np.abs(x).sum() for x in jax.tree.leaves(
      tree)))
  for trains in (0.0, 1.0):
    grads = jax.grad(lambda p: mlm_objective.loss(
        p, _batch(trains), None, graphdef)[0])(params)['reader']
    assert norm(grads['mlm_head']) > 0
    assert norm(grads['span_head']) == 0
    encoder = norm(grads['encoder'])
    assert (encoder > 0) == bool(trains), (trains, encoder)
  # The gate does not change the loss, only where its gradient goes.
  np.testing.assert_allclose(
      mlm_objective.loss(params, _batch(0.0), None, graphdef)[0], loss,
      rtol=1e-6)
