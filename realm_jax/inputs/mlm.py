"""BERT masked-LM examples from corpus blocks (realm-mlm).

Each example is a block as the retriever reads it, `[CLS] title [SEP] body
[SEP]`, cut to `seq_len` (the last piece kept a [SEP]). `mask_rate` of its
real pieces (never [CLS], [SEP] or padding), at least one and at most
`max_predictions`, are predicted; of those, 80% become [MASK], 10% a random
piece and 10% stay (BERT's create_pretraining_data.py). With `whole_word`,
the pieces of a word are chosen together (a word: a piece that starts one,
then its continuation pieces - '##' for WordPiece, no leading '▁' for
SentencePiece).

The last `eval_blocks` blocks of the corpus are held out: training reads
only the others, and `eval_batches` masks the held-out ones the same way
every time. Batches are a pure function of (seed, step) as in the other
inputs: example p' = step * B + p of the global batch is block
perm_e[p' mod n] (e the epoch) masked with its own generator seeded by
(seed, p'), so a resumed run continues exactly and each host builds only its
own rows.

Sentence pairs (`pair_query_len` > 0): each example is instead what REALM's
reader reads, `[CLS] sentence [SEP] body [SEP]` (blocks.reader_inputs), the
sentence one of the block's own with `pair_mask_rate` of its pieces
predicted, and the body masked as above except where it holds that
sentence. Every sentence piece can be copied from the body: BERT's corpus
teaches a reader to copy a name from its context, which REALM's reader
needs, but a small corpus of short blocks does not (issue 12). The
held-out `copy_eval_batches` predict the sentence's pieces alone, beside
its block or the null document: the gap between the two is the copying.

Linked pairs (`pair_evidence='linked'`, with `linked` the salient spans of
inputs/pretrain.py's examples folder): the sentence of a salient span, its
span masked as REALM masks it, beside another block that holds the same
span, as a perfect retriever would give REALM's reader (the body masked as
above except where it holds the span). A sentence beside its own block
copies by position; only another block's wording teaches the reader to
find a name or date in a block it was retrieved for, which at small scale
no other training here gives it (README, The learning test bed). The unit
of the data order is then a span, not a block; training spans and their
linked blocks both lie outside the held-out blocks.
"""
import collections
import functools
import pathlib

import numpy as np

from realm_jax import corpus as corpus_lib
from realm_jax.inputs import blocks as blocks_lib
from realm_jax.inputs import pretrain as pretrain_input

_HOLDER_TRIES = 8
_DISTRACTOR_TRIES = 16
MLM_KEYS = ('token_ids', 'segment_ids', 'input_mask', 'mlm_positions',
            'mlm_targets', 'mlm_weights')


def word_continuations(tokenizer) -> np.ndarray:
  """bool [vocab]: the piece continues a word (is not the start of one)."""
  pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
  if any(p.startswith('##') for p in pieces):  # WordPiece
    return np.array([p.startswith('##') for p in pieces])
  return np.array([not p.startswith('\u2581') and not p.startswith('[')
                   for p in pieces])  # SentencePiece: '▁' starts a word


class MlmInput:
  """Host-local masked-LM batches for a given step, and held-out batches."""

  def __init__(self, corpus: corpus_lib.Corpus, *, global_batch_size: int,
               seq_len: int, mask_rate: float, max_predictions: int,
               whole_word: bool, eval_blocks: int, seed: int,
               pair_query_len: int = 0, pair_mask_rate: float = 0.3,
               linked: 'LinkedSpans | None' = None,
               distractor_rate: float = 0.0, evidence_window: int = 0,
               process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} does not split '
                       f'over {process_count} processes')
    if not 0 <= eval_blocks < len(corpus):
      raise ValueError(f'eval_blocks={eval_blocks}: the corpus has '
                       f'{len(corpus)} blocks')
    self._corpus = corpus
    self._global_batch = global_batch_size
    self._local_batch = global_batch_size // process_count
    self._offset = process_index * self._local_batch
    self._seq_len = min(seq_len, corpus.block_len)
    if pair_query_len and pair_query_len < 3:
      raise ValueError(f'pair_query_len={pair_query_len}: a sentence needs '
                       '[CLS] and [SEP] and one piece')
    self._pair_query_len = pair_query_len
    self._pair_rate = pair_mask_rate
    self._rate = mask_rate
    self._max_predictions = max_predictions
    self._seed = seed
    self._num_train = len(corpus) - eval_blocks
    self._eval_blocks = eval_blocks
    tokenizer = corpus.tokenizer
    self._special = {tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id}
    self._mask_id = tokenizer.mask_id
    self._vocab_size = tokenizer.vocab_size
    self._sep = tokenizer.sep_id
    self._continues = word_continuations(tokenizer) if whole_word else None
    self._linked = linked
    if not 0 <= distractor_rate < 1 or (distractor_rate and linked is None):
      raise ValueError(f'distractor_rate={distractor_rate}: in [0, 1), and '
                       'only with linked pairs')
    self._distractor_rate = distractor_rate
    if evidence_window and (linked is None or evidence_window < 1
                            or evidence_window > self._seq_len - 1):
      raise ValueError(f'evidence_window={evidence_window}: only with linked '
                       f'pairs, and at most seq_len - 1 = {self._seq_len - 1}')
    self._window = evidence_window
    if linked is not None:
      if not pair_query_len:
        raise ValueError('linked pairs need pair_query_len > 0')
      self._train_spans = linked.spans(below=self._num_train)
      self._eval_spans = linked.spans(at_least=self._num_train)
      if not len(self._train_spans) or not len(self._eval_spans):
        raise ValueError(
            f'linked pairs: {len(self._train_spans)} training and '
            f'{len(self._eval_spans)} held-out salient spans have a block '
            'other than their own that holds them; need some of each')
    self._num_units = (len(self._train_spans) if linked is not None
                       else self._num_train)

  @functools.lru_cache(maxsize=2)
  def _permutation(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng((self._seed, epoch))
    return rng.permutation(self._num_units).astype(np.int64)

  def _units(self, step: int) -> np.ndarray:
    first = step * self._global_batch + self._offset
    n = self._num_units
    return np.array([self._permutation(p // n)[p % n]
                     for p in range(first, first + self._local_batch)])

  def block_ids(self, step: int) -> np.ndarray:
    """Global block ids of this host's rows of the batch at `step` (with
    linked pairs: the blocks their sentences come from)."""
    units = self._units(step)
    if self._linked is None:
      return units
    return self._linked.block[self._train_spans[units]]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows of the global training batch at `step`."""
    first = step * self._global_batch + self._offset
    seeds = np.arange(first, first + self._local_batch)
    if self._linked is not None:
      return self._linked_examples(self._train_spans[self._units(step)],
                                   seeds, stream=3)
    return self._examples(self.block_ids(step), seeds, stream=3)

  @property
  def seq_len(self) -> int:
    """The length of every example: a block, or a sentence and a body."""
    return self._pair_query_len + self._seq_len

  def eval_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The held-out blocks, masked alike every call, in batches of
    `batch_size` (the last one padded with weightless rows)."""
    return self._eval_batches(batch_size, self._examples, stream=4)

  def copy_eval_batches(self, batch_size: int, evidence: str
                        ) -> list[dict[str, np.ndarray]]:
    """Held-out sentence pairs predicting only sentence pieces, beside the
    sentence's block (`evidence='own'`) or the null document ('null'); the
    same sentences and masks for both, every call. With linked pairs, 'own'
    is the linked block and 'distractor' a block that does not hold the
    span: a reader that copies only what its evidence holds scores there as
    beside the null document. With an evidence window, 'own' and
    'distractor' are windows as in training and 'block' the whole linked
    block (at pair_query_len + the corpus block length), as REALM's reader
    reads its candidates."""
    if not self._pair_query_len:
      raise ValueError('copy_eval_batches needs pair_query_len > 0')
    kinds = ('own', 'null') + (('distractor',) if self._linked else ()) + (
        ('block',) if self._window else ())
    if evidence not in kinds:
      raise ValueError(f'evidence={evidence!r}: one of {", ".join(kinds)}')
    if self._linked is not None:  # the held-out spans
      spans = self._eval_spans
      batches = []
      for start in range(0, len(spans), batch_size):
        chunk = spans[start:start + batch_size]
        batch = self._linked_examples(
            chunk, chunk, stream=5, masks=False,
            evidence={'own': 'linked'}.get(evidence, evidence))
        batches.append(_padded(batch, batch_size))
      return batches
    def examples(ids, seeds, stream):
      rows = [self._pair_example(int(i), np.random.default_rng(
          (self._seed, int(s), stream)), body_masks=False,
                                 null=evidence == 'null')
              for i, s in zip(ids, seeds)]
      return {key: np.stack([r[key] for r in rows]) for key in MLM_KEYS}
    return self._eval_batches(batch_size, examples, stream=5)

  def _eval_batches(self, batch_size, examples, stream):
    ids = np.arange(self._num_train, self._num_train + self._eval_blocks)
    batches = []
    for start in range(0, len(ids), batch_size):
      chunk = ids[start:start + batch_size]
      batches.append(_padded(examples(chunk, chunk, stream=stream),
                             batch_size))
    return batches

  def _examples(self, block_ids, seeds, stream: int) -> dict[str, np.ndarray]:
    rngs = [np.random.default_rng((self._seed, int(s), stream)) for s in seeds]
    if self._pair_query_len:
      rows = [self._pair_example(int(i), rng)
              for i, rng in zip(block_ids, rngs)]
    else:
      blocks = self._corpus.blocks(block_ids)
      rows = [self._example({k: v[row] for k, v in blocks.items()}, rng)
              for row, rng in enumerate(rngs)]
    return {key: np.stack([r[key] for r in rows]) for key in MLM_KEYS}

  def _pair_example(self, block_id: int, rng, body_masks: bool = True,
                    null: bool = False) -> dict[str, np.ndarray]:
    """`[CLS] sentence [SEP] body [SEP]` of one of the block's sentences:
    pair_mask_rate of the sentence's pieces predicted, then (body_masks)
    mask_rate of the body's outside that sentence, max_predictions in all.
    `null`: the null document's empty body instead of the block's."""
    tokenizer = self._corpus.tokenizer
    bounds = self._corpus.sentence_bounds(block_id)
    # Sentences inside the part of the body that fits (seq_len - 1 pieces
    # at least, after the query), so that the copy is there to be read.
    bounds = bounds[bounds[:, 1] <= self._seq_len - 1] if (
        bounds[0, 1] <= self._seq_len - 1) else bounds[:1]
    begin, end = (int(x) for x in bounds[rng.integers(len(bounds))])
    sentence = self._corpus.body_tokens(block_id)[begin:end]
    sentence = sentence[:self._pair_query_len - 2]
    query = np.zeros((1, self._pair_query_len), np.int32)
    query[0, :len(sentence) + 2] = [tokenizer.cls_id, *sentence,
                                    tokenizer.sep_id]
    query_mask = (np.arange(self._pair_query_len) < len(sentence) + 2)
    reader = blocks_lib.reader_inputs(
        self._corpus, query, query_mask[None].astype(np.int32),
        np.array([[blocks_lib.NULL_BLOCK if null else block_id]]),
        self.seq_len)
    ids = reader['reader_ids'][0, 0]
    in_sentence = np.arange(1, len(sentence) + 1)
    chosen = self._choose(ids, in_sentence, rng, self._pair_rate,
                          self._max_predictions)
    if body_masks and len(chosen) < self._max_predictions:
      start = int(reader['body_start'][0, 0])
      body = np.arange(start, start + int(reader['body_len'][0, 0]))
      body = body[(body - start < begin) | (body - start >= end)]
      chosen = np.concatenate([chosen, self._choose(
          ids, body, rng, self._rate, self._max_predictions - len(chosen))])
    return self._masked(ids, reader['reader_segments'][0, 0],
                        reader['reader_mask'][0, 0], chosen, rng)

  def _linked_examples(self, spans, seeds, stream: int, masks: bool = True,
                       evidence: str = 'train') -> dict[str, np.ndarray]:
    rows = [self._linked_example(int(i), np.random.default_rng(
        (self._seed, int(s), stream)), masks, evidence)
            for i, s in zip(spans, seeds)]
    return {key: np.stack([r[key] for r in rows]) for key in MLM_KEYS}

  def _linked_example(self, span: int, rng, masks: bool, evidence: str
                      ) -> dict[str, np.ndarray]:
    """`[CLS] sentence [SEP] body [SEP]` of salient span `span`: the span
    all predicted ([MASK]ed when not `masks`, else 80/10/10), the body's
    other pieces at mask_rate (when `masks`). The body is a linked block's
    (`evidence='linked'`; 'block': a whole one even with a window), the
    null document's ('null'), a block that does not hold the span
    ('distractor'), or for training ('train') a distractor's with
    probability distractor_rate, else a linked one's. With an evidence
    window, a linked body is cut to that many pieces around the span (at a
    random place) and a distractor's to as many at a random place."""
    tokenizer = self._corpus.tokenizer
    linked = self._linked
    block = int(linked.block[span])
    begin, end, start, stop = (int(x) for x in linked.pieces[span])
    sentence = self._corpus.body_tokens(block)[begin:end]
    sentence = sentence[:self._pair_query_len - 2]
    stop = min(stop, len(sentence))
    below = self._num_train if masks else None
    holders = linked.holders(span, below=below)
    window, length = self._window, self.seq_len
    if evidence == 'block':
      evidence, window = 'linked', 0
      length = self._pair_query_len + self._corpus.block_len
    if evidence == 'train':
      evidence = 'distractor' if (self._distractor_rate and rng.random()
                                  < self._distractor_rate) else 'linked'
    query = np.zeros((1, self._pair_query_len), np.int32)
    query[0, :len(sentence) + 2] = [tokenizer.cls_id, *sentence,
                                    tokenizer.sep_id]
    query_mask = (np.arange(self._pair_query_len) < len(sentence) + 2)[None]
    chosen = np.arange(start, stop) + 1
    target = query[0, chosen]
    # A holder whose span lies in the part of its body that fits, or a
    # distractor, any other block whose body does not hold it (a few tries;
    # else the last one tried).
    if evidence == 'null':
      tries = [blocks_lib.NULL_BLOCK]
    elif evidence == 'linked':
      tries = rng.permutation(holders)[:_HOLDER_TRIES]
    else:
      tries = rng.integers(below or len(self._corpus), size=_DISTRACTOR_TRIES)
      tries = [t for t in tries if t != block] or [blocks_lib.NULL_BLOCK]
    for body_block in tries:
      body = (np.zeros(0, np.int32) if body_block == blocks_lib.NULL_BLOCK
              else self._corpus.body_tokens(int(body_block)))
      if window and len(body) > window:
        body = body[self._window_start(body, target, window, rng):][:window]
      reader = blocks_lib.reader_inputs(
          self._corpus, query, query_mask.astype(np.int32), np.array([[0]]),
          length, blocks=_title_free_block(body, tokenizer))
      ids = reader['reader_ids'][0, 0]
      body_start = int(reader['body_start'][0, 0])
      held = _holds(ids[body_start:body_start + int(reader['body_len'][0, 0])],
                    target)
      if held.any() == (evidence == 'linked'):
        break
    if masks and len(chosen) < self._max_predictions:
      chosen = np.concatenate([chosen, self._choose(
          ids, np.flatnonzero(~held) + body_start, rng, self._rate,
          self._max_predictions - len(chosen))])
    return self._masked(ids, reader['reader_segments'][0, 0],
                        reader['reader_mask'][0, 0],
                        chosen[:self._max_predictions], rng,
                        all_masked=not masks)

  @staticmethod
  def _window_start(body, target, window: int, rng) -> int:
    """Where a `window`-piece cut of `body` starts: at random among the
    cuts that hold target's first occurrence, or anywhere if it has none."""
    last = len(body) - window
    held = np.flatnonzero(_holds(body, target))
    if not len(held):
      return int(rng.integers(last + 1))
    first = int(held[0])
    lo = max(0, first + len(target) - window)
    return int(rng.integers(lo, max(lo, min(first, last)) + 1))

  def _example(self, block, rng) -> dict[str, np.ndarray]:
    length = self._seq_len
    ids = block['token_ids'][:length].copy()
    mask = block['input_mask'][:length].copy()
    if mask[-1]:  # cut: keep a final [SEP]
      ids[-1] = self._sep
    candidates = np.array([i for i in range(int(mask.sum()))
                           if int(ids[i]) not in self._special])
    chosen = self._choose(ids, candidates, rng, self._rate,
                          self._max_predictions)
    return self._masked(ids, block['segment_ids'][:length], mask, chosen, rng)

  def _masked(self, ids, segment_ids, mask, chosen, rng,
              all_masked: bool = False) -> dict[str, np.ndarray]:
    """The example predicting `chosen` (sorted or not): 80% [MASK], 10% a
    random piece, 10% kept; every one [MASK]ed when `all_masked`."""
    chosen = np.sort(chosen)
    targets = ids.copy()
    action = np.zeros(len(chosen)) if all_masked else rng.random(len(chosen))
    replaced = ids.copy()
    replaced[chosen[action < 0.8]] = self._mask_id
    random_rows = chosen[(action >= 0.8) & (action < 0.9)]
    replaced[random_rows] = rng.integers(0, self._vocab_size,
                                         len(random_rows))
    m = self._max_predictions
    positions = np.zeros(m, np.int32)
    weights = np.zeros(m, np.float32)
    positions[:len(chosen)] = chosen
    weights[:len(chosen)] = 1.0
    return dict(token_ids=replaced, segment_ids=segment_ids,
                input_mask=mask, mlm_positions=positions,
                mlm_targets=targets[positions] * (weights > 0),
                mlm_weights=weights)

  def _choose(self, ids, candidates, rng, rate: float,
              budget: int) -> np.ndarray:
    """Sorted positions to predict: `rate` of the candidates, at least
    one, at most `budget`; whole words when asked."""
    if not len(candidates) or budget < 1:
      return np.zeros(0, np.int64)
    count = min(budget, max(1, int(round(len(candidates) * rate))))
    if self._continues is None:
      return np.sort(rng.choice(candidates, count, replace=False))
    words, current = [], []
    for position in candidates:
      if current and not self._continues[ids[position]]:
        words.append(current)
        current = []
      current.append(position)
    words.append(current)
    chosen = []
    for w in rng.permutation(len(words)):
      if len(chosen) + len(words[w]) <= count:
        chosen += words[w]
      if len(chosen) == count:
        break
    if not chosen:  # every word longer than the budget: part of one
      chosen = words[rng.integers(len(words))][:count]
    return np.sort(np.array(chosen, np.int64))


def _holds(body: np.ndarray, target: np.ndarray) -> np.ndarray:
  """bool [len(body)]: the pieces of body that are part of an occurrence of
  target."""
  held = np.zeros(len(body), bool)
  for i in range(len(body) - len(target) + 1):
    if np.array_equal(body[i:i + len(target)], target):
      held[i:i + len(target)] = True
  return held


def _title_free_block(body: np.ndarray, tokenizer) -> dict[str, np.ndarray]:
  """blocks_lib.gather's view of one block, `[CLS] [SEP] body`: what
  reader_inputs reads to put `body` (a cut of a block's) after a query."""
  return dict(token_ids=np.array([[[tokenizer.cls_id, tokenizer.sep_id,
                                    *body]]], np.int32),
              title_len=np.zeros((1, 1), np.int32),
              body_len=np.array([[len(body)]], np.int32))


def _padded(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """`batch` with weightless zero rows appended up to `size` rows."""
  rows = len(batch['mlm_weights'])
  return {k: np.concatenate([v, np.zeros((size - rows, *v.shape[1:]),
                                         v.dtype)]) if rows < size else v
          for k, v in batch.items()}


class LinkedSpans:
  """The salient spans of an examples folder (inputs/pretrain.py) and, for
  each, the blocks other than its own whose body holds the same pieces."""

  def __init__(self, corpus: corpus_lib.Corpus, examples_dir: pathlib.Path,
               query_len: int):
    _, block, pieces = pretrain_input.load_examples(corpus, examples_dir,
                                                    query_len)
    self.block = np.asarray(block, np.int64)
    self.pieces = np.asarray(pieces, np.int32)
    by_text = collections.defaultdict(set)
    texts = []
    for block, (begin, end, start, stop) in zip(self.block, self.pieces):
      body = corpus.body_tokens(int(block))
      texts.append(tuple(body[begin:end][start:stop].tolist()))
      by_text[texts[-1]].add(int(block))
    self._others = [np.array(sorted(by_text[t] - {int(b)}), np.int64)
                    for t, b in zip(texts, self.block)]

  def holders(self, span: int, below: int | None = None) -> np.ndarray:
    """The other blocks holding span `span` (with ids < `below`)."""
    others = self._others[span]
    return others if below is None else others[others < below]

  def spans(self, below: int | None = None,
            at_least: int | None = None) -> np.ndarray:
    """Spans with a linked block: from blocks < `below` linked to blocks
    < `below` (training), or from blocks >= `at_least` (held out)."""
    keep = [i for i, b in enumerate(self.block)
            if (below is None or (b < below and len(self.holders(i, below))))
            and (at_least is None or (b >= at_least and len(self._others[i])))]
    return np.array(keep, np.int64)
