"""Salient span examples and pre-training query batches."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from realm_jax import corpus as corpus_lib
from realm_jax import documents
from realm_jax.jobs import prepare_corpus
from realm_jax.inputs import pretrain as pretrain_input
from realm_jax.inputs import salient_spans

QUERY_LEN, MAX_MASKS = 32, 10
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


@pytest.fixture(scope='module')
def corpus(tiny_corpus_workdir):
  return corpus_lib.Corpus(tiny_corpus_workdir / 'corpus')


@pytest.fixture(scope='module')
def examples(corpus, tmp_path_factory):
  path = tmp_path_factory.mktemp('examples') / 'salient'
  pretrain_input.prepare_examples(corpus, path, annotator='builtin',
                                  query_len=QUERY_LEN, max_masks=MAX_MASKS)
  return path


def _make_input(corpus, examples_dir, **kwargs):
  settings = dict(global_batch_size=16, query_len=QUERY_LEN,
                  max_masks=MAX_MASKS, seed=0)
  return pretrain_input.PretrainInput(corpus, examples_dir,
                                      **(settings | kwargs))


def _arrays(examples_dir):
  return (np.load(examples_dir / 'block.npy'),
          np.load(examples_dir / 'pieces.npy'))


def test_manifest_counts(corpus, examples):
  manifest = json.loads((examples / 'manifest.json').read_text())
  blocks, pieces = _arrays(examples)
  counts = manifest['counts']
  assert manifest['annotator'] == 'builtin'
  assert manifest['corpus'] == pretrain_input.corpus_fingerprint(corpus)
  assert (manifest['query_len'], manifest['max_masks']) == (QUERY_LEN,
                                                            MAX_MASKS)
  assert manifest['num_examples'] == len(blocks) == len(pieces) > 100
  assert sum(manifest['span_length_counts'].values()) == len(blocks)
  assert counts['blocks'] == len(corpus)
  assert counts['blocks_with_examples'] == len(np.unique(blocks))
  assert counts['sentences'] == sum(
      len(corpus.sentence_bounds(i)) for i in range(len(corpus)))
  assert counts['sentences_with_examples'] == len(
      {(b, s) for b, s in zip(blocks, pieces[:, 0])})
  assert counts['sentences_misaligned'] == counts['spans_misaligned'] == 0
  # Every found span is an example or dropped for a counted reason.
  dropped = sum(counts[k] for k in counts if k.startswith('spans_')
                and k not in ('spans_found', 'spans_longer_than_max_masks'))
  assert counts['spans_found'] == len(blocks) + dropped
  # The short queries cut sentences, so some spans are past query_len - 2.
  assert counts['spans_past_query_len'] > 0


def test_examples_decode_to_their_spans(corpus, examples):
  blocks, pieces = _arrays(examples)
  tokenizer, annotator = corpus.tokenizer, salient_spans.load_annotator(
      'builtin')
  assert np.all(pieces[:, 0] < pieces[:, 1])
  assert np.all((0 <= pieces[:, 2]) & (pieces[:, 2] < pieces[:, 3]))
  assert np.all(pieces[:, 3] <= np.minimum(pieces[:, 1] - pieces[:, 0],
                                           QUERY_LEN - 2))
  for block in np.unique(blocks):
    text = corpus.records([block])[0]['text']
    spans = {text[s:e].lower() for s, e in annotator(text)}
    bounds = {tuple(b) for b in corpus.sentence_bounds(block)}
    body = corpus.body_tokens(block)
    for begin, end, start, stop in pieces[blocks == block]:
      assert (begin, end) in bounds
      assert tokenizer.decode(body[begin + start:begin + stop]) in spans


def test_misaligned_sentences_are_skipped(corpus, tmp_path, monkeypatch):
  split = documents.split_sentences
  # One sentence too many per block: no block can be aligned.
  monkeypatch.setattr(documents, 'split_sentences',
                      lambda text: split(text) + [(len(text), len(text))])
  manifest = pretrain_input.prepare_examples(corpus, tmp_path / 'a',
                                             annotator='builtin')
  counts = manifest['counts']
  assert manifest['num_examples'] == 0
  assert counts['sentences_misaligned'] == counts['sentences']
  assert counts['spans_misaligned'] == counts['spans_found'] > 0
  # Sentences without their last character: their word pieces differ.
  monkeypatch.setattr(documents, 'split_sentences',
                      lambda text: [(s, e - 1) for s, e in split(text)])
  manifest = pretrain_input.prepare_examples(corpus, tmp_path / 'b',
                                             annotator='builtin')
  assert manifest['counts']['sentences_misaligned'] == counts['sentences']


def test_prepare_is_atomic(corpus, examples, tmp_path):
  calls = []

  def failing(text):
    calls.append(text)
    if len(calls) == 50:
      raise RuntimeError('annotator crashed')
    return salient_spans.DateAnnotator()(text)

  path = tmp_path / 'examples'
  with pytest.raises(RuntimeError, match='annotator crashed'):
    pretrain_input.prepare_examples(corpus, path, annotator=failing)
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(FileExistsError):
    pretrain_input.prepare_examples(corpus, examples, annotator='builtin')
  pretrain_input.prepare_examples(corpus, path, annotator=failing)
  manifest = pretrain_input.prepare_examples(
      corpus, path, annotator=salient_spans.DateAnnotator(), overwrite=True)
  assert manifest['annotator'] == 'dates'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['examples']
  assert sorted(p.name for p in path.iterdir()) == [
      'block.npy', 'manifest.json', 'pieces.npy']


def _check_batch(batch, corpus, *, query_len, max_masks, contiguous):
  """The invariants of every query; returns the number masked per row."""
  tok = corpus.tokenizer
  b = len(batch['query_ids'])
  assert batch['query_ids'].shape == batch['query_mask'].shape == (
      b, query_len)
  for key in ('mlm_positions', 'mlm_targets', 'mlm_weights'):
    assert batch[key].shape == (b, max_masks)
  assert batch['query_ids'].dtype == batch['mlm_positions'].dtype == np.int32
  assert batch['mlm_weights'].dtype == np.float32
  assert batch['source_block'].dtype == batch['source_uid64'].dtype == np.int64
  np.testing.assert_array_equal(batch['source_uid64'],
                                corpus.uid64(batch['source_block']))
  num_masked = []
  for row in range(b):
    ids, mask = batch['query_ids'][row], batch['query_mask'][row]
    n = int(mask.sum()) - 2
    assert mask[:n + 2].all() and not mask[n + 2:].any()
    assert ids[0] == tok.cls_id and ids[n + 1] == tok.sep_id
    assert (ids[n + 2:] == tok.pad_id).all()
    masked = np.flatnonzero(ids == tok.mask_id)
    assert 1 <= len(masked) and masked.min() >= 1 and masked.max() <= n
    if contiguous:
      assert np.all(np.diff(masked) == 1)
    k = min(len(masked), max_masks)
    weights = batch['mlm_weights'][row]
    assert (weights[:k] == 1).all() and (weights[k:] == 0).all()
    np.testing.assert_array_equal(batch['mlm_positions'][row][:k], masked[:k])
    assert (batch['mlm_positions'][row][k:] == 0).all()
    assert (batch['mlm_targets'][row][k:] == 0).all()
    # Unmasked, the query is the start of one sentence of its source block.
    body = corpus.body_tokens(batch['source_block'][row])
    restored = ids[1:n + 1].copy()
    restored[masked[:k] - 1] = batch['mlm_targets'][row][:k]
    scored = np.ones(n, bool)
    scored[masked[k:] - 1] = False
    sentences = [body[s:e][:query_len - 2]
                 for s, e in corpus.sentence_bounds(batch['source_block'][row])]
    assert any(len(sentence) == n
               and np.array_equal(sentence[scored], restored[scored])
               for sentence in sentences)
    num_masked.append(len(masked))
  return np.array(num_masked)


def test_salient_batch(corpus, examples):
  batch = _make_input(corpus, examples).batch(3)
  num_masked = _check_batch(batch, corpus, query_len=QUERY_LEN,
                            max_masks=MAX_MASKS, contiguous=True)
  # Exactly one salient span: the masked run is one of the examples' spans.
  blocks, pieces = _arrays(examples)
  for row, block in enumerate(batch['source_block']):
    first = batch['mlm_positions'][row][0] - 1
    spans = pieces[blocks == block][:, 2:]
    assert [first, first + num_masked[row]] in spans.tolist()


def test_max_masks_cap(corpus, examples):
  inputs = _make_input(corpus, examples, max_masks=2, global_batch_size=64)
  batch = inputs.batch(0)
  num_masked = _check_batch(batch, corpus, query_len=QUERY_LEN, max_masks=2,
                            contiguous=True)
  # Longer spans stay masked in the query, but only 2 pieces are scored.
  assert (num_masked > 2).any()
  assert (batch['mlm_weights'].sum(1) == np.minimum(num_masked, 2)).all()


def test_deterministic_and_resumable(corpus, examples):
  first, second = _make_input(corpus, examples), _make_input(corpus, examples)
  for step in (5, 0, 5):  # any order: a pure function of (seed, step)
    a, b = first.batch(step), second.batch(step)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first.batch(0)['query_ids'],
                            first.batch(1)['query_ids'])
  other_seed = _make_input(corpus, examples, seed=1)
  assert not np.array_equal(first.batch(0)['query_ids'],
                            other_seed.batch(0)['query_ids'])


@pytest.mark.parametrize('masking', pretrain_input.MASKINGS)
def test_host_slices_make_the_global_batch(corpus, examples, masking):
  whole = _make_input(corpus, examples, masking=masking).batch(2)
  slices = [_make_input(corpus, examples, masking=masking, process_index=i,
                        process_count=4).batch(2) for i in range(4)]
  for key in whole:
    np.testing.assert_array_equal(
        np.concatenate([s[key] for s in slices]), whole[key])


@pytest.mark.parametrize('masking,use_examples', [
    ('salient', True), ('random_tokens', True), ('random_spans', False)])
def test_heldout_split_by_block(corpus, examples, masking, use_examples):
  folder = examples if use_examples else None
  split = dict(masking=masking, heldout_fraction=0.25,
               global_batch_size=64)
  train = _make_input(corpus, folder, **split, split='train')
  held = _make_input(corpus, folder, **split, split='eval', seed=7)
  uid = corpus.uid64(np.arange(len(corpus)))
  # An independent reading of the rule: the block's uid picks its split.
  heldout = (uid % (1 << 20)) < 0.25 * (1 << 20)
  assert 0.1 < heldout.mean() < 0.4
  train_blocks = np.concatenate([train.batch(s)['source_block']
                                 for s in range(4)])
  held_blocks = np.concatenate([held.batch(s)['source_block']
                                for s in range(4)])
  assert not heldout[train_blocks].any() and heldout[held_blocks].all()
  assert len(set(held_blocks)) > 20
  np.testing.assert_array_equal(train.is_heldout(np.arange(len(corpus))),
                                heldout)
  # The whole-corpus stream is unchanged by the split's existence.
  whole = _make_input(corpus, folder, masking=masking, global_batch_size=64)
  assert heldout[whole.batch(0)['source_block']].any()
  for key, value in held.batch(1).items():
    np.testing.assert_array_equal(value, held.batch(1)[key])
  with pytest.raises(ValueError, match='heldout_fraction'):
    _make_input(corpus, folder, masking=masking, split='eval')
  with pytest.raises(ValueError, match='split='):
    _make_input(corpus, folder, masking=masking, split='dev',
                heldout_fraction=0.25)
  with pytest.raises(ValueError, match='no held-out query'):
    _make_input(corpus, folder, masking=masking, split='eval',
                heldout_fraction=1e-9).batch(0)


@pytest.mark.parametrize('use_examples', [True, False])
def test_random_tokens(corpus, examples, use_examples):
  inputs = _make_input(corpus, examples if use_examples else None,
                       masking='random_tokens', global_batch_size=64,
                       max_masks=5)
  batch = inputs.batch(0)
  num_masked = _check_batch(batch, corpus, query_len=QUERY_LEN, max_masks=5,
                            contiguous=False)
  lengths = batch['query_mask'].sum(1) - 2
  assert (num_masked <= 5).all() and (num_masked >= 1).all()
  assert 0.05 < (num_masked / lengths).mean() < 0.25  # rate 0.15, cap 5
  assert not np.all(num_masked == num_masked[0])
  everything = _make_input(corpus, examples, masking='random_tokens',
                           random_mask_rate=1.0, max_masks=QUERY_LEN).batch(0)
  lengths = everything['query_mask'].sum(1) - 2
  assert (everything['mlm_weights'].sum(1) == lengths).all()


def test_random_spans(corpus, examples):
  manifest = json.loads((examples / 'manifest.json').read_text())
  longest = max(int(k) for k in manifest['span_length_counts'])
  with_examples = _make_input(corpus, examples, masking='random_spans',
                              global_batch_size=64).batch(0)
  num_masked = _check_batch(with_examples, corpus, query_len=QUERY_LEN,
                            max_masks=MAX_MASKS, contiguous=True)
  assert num_masked.max() <= longest and len(set(num_masked)) > 2
  without = _make_input(corpus, None, masking='random_spans',
                        global_batch_size=64).batch(0)
  num_masked = _check_batch(without, corpus, query_len=QUERY_LEN,
                            max_masks=MAX_MASKS, contiguous=True)
  assert set(num_masked) == {1, 2, 3, 4, 5}
  assert len(set(without['source_block'])) > 40  # any block of the corpus


def test_input_errors(corpus, examples):
  with pytest.raises(ValueError, match='needs examples_dir'):
    _make_input(corpus, None)
  with pytest.raises(ValueError, match='masking'):
    _make_input(corpus, examples, masking='whole_words')
  with pytest.raises(ValueError, match='query_len=32, not 64'):
    _make_input(corpus, examples, query_len=64)
  with pytest.raises(ValueError, match='does not split'):
    _make_input(corpus, examples, process_count=3)
  with pytest.raises(FileNotFoundError, match='not an examples folder'):
    _make_input(corpus, examples.parent)


def test_squad_corpus(shared_data, tmp_path):
  spec = importlib.util.spec_from_file_location(
      'prepare_corpus_config', CONFIGS / 'prepare_corpus.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.input.format = 'jsonl'
  config.input.paths = str(shared_data / 'squad_open' / 'corpus.jsonl')
  config.tokenizer.vocab_size = 2000
  prepare_corpus.prepare_corpus(config, str(tmp_path))
  corpus = corpus_lib.Corpus(tmp_path / 'corpus')
  manifest = pretrain_input.prepare_examples(corpus, tmp_path / 'examples',
                                             annotator='builtin')
  counts = manifest['counts']
  block_fraction = counts['blocks_with_examples'] / counts['blocks']
  sentence_fraction = counts['sentences_with_examples'] / counts['sentences']
  print(f'squad_open: {manifest["num_examples"]} examples; '
        f'{counts["blocks_with_examples"]}/{counts["blocks"]} blocks '
        f'({block_fraction:.1%}) and {counts["sentences_with_examples"]}/'
        f'{counts["sentences"]} sentences ({sentence_fraction:.1%}) have a '
        f'salient span; {counts["sentences_misaligned"]} sentences '
        'misaligned')
  assert block_fraction > 0.3 and sentence_fraction > 0.3
  assert counts['sentences_misaligned'] < 0.01 * counts['sentences']
  batch = pretrain_input.PretrainInput(
      corpus, tmp_path / 'examples', global_batch_size=8, query_len=96,
      max_masks=10, seed=0).batch(0)
  _check_batch(batch, corpus, query_len=96, max_masks=10, contiguous=True)
