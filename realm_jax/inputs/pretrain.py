"""REALM's pre-training queries: a block sentence with one salient span masked.

Salient spans are found once, offline, as REALM did
(realm/example_generator.py reads a corpus annotated in advance):
`prepare_examples` annotates the text of every block and records, for each
span lying inside one sentence, where its word pieces are in the block body.
`PretrainInput` then builds `[CLS] sentence [SEP]` queries with every piece
of exactly one span replaced by [MASK] (no 80/10/10), and the paper's
ablations, random token and random span masking.

An examples folder holds
  block.npy      int64 [n], the global block id of each example
  pieces.npy     int32 [n, 4], per example: the sentence's (start, end) in
                 the block's body tokens, then the span's (start, end) word
                 pieces counted from the start of the sentence
  manifest.json  counts, the annotator, the corpus it belongs to, and
                 `files`: the size and sha256 of the two arrays
one example per salient span, read memory-mapped.

The batches are a pure function of (seed, step), as in ict_input: example p'
= step * B + p of the global batch is drawn with its own random generator
seeded by (seed, p'), so a restarted run continues exactly, and each host
builds only its own rows.

The candidates of a query (`choose_candidates`, `candidate_inputs`): the
null document, then the best retrieved blocks other than the query's own
(trivial retrieval), featurized for the retriever and the reader.
"""
import array
import bisect
import collections
from collections.abc import Sequence
import datetime
import json
import os
import pathlib
import time
from typing import Any

import numpy as np
import tqdm

from realm_jax import config_lib
from realm_jax import corpus as corpus_lib
from realm_jax import documents
from realm_jax.inputs import blocks as blocks_lib
from realm_jax.inputs import salient_spans

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
MASKINGS = ('salient', 'random_tokens', 'random_spans')


def corpus_fingerprint(corpus: corpus_lib.Corpus) -> dict[str, Any]:
  """What ties an examples folder to the corpus it was made from."""
  manifest = corpus.manifest
  return dict(num_blocks=manifest['num_blocks'],
              tokenizer_sha256=manifest['tokenizer']['sha256'],
              source=manifest.get('source', {}).get('fingerprint'))


def _sentence_examples(sentence: tuple[int, int],
                       spans: Sequence[tuple[int, int]],
                       offsets: Sequence[tuple[int, int]], num_pieces: int,
                       query_len: int,
                       counts: collections.Counter) -> list[tuple[int, int]]:
  """The distinct (start, end) word pieces of the spans that make examples.

  A span makes an example if its pieces are exactly the span's characters.

  `spans` lie inside the sentence; `offsets` are the character spans of its
  pieces, relative to the sentence; the body holds its first `num_pieces`.
  """
  starts = np.array([start for start, _ in offsets]) + sentence[0]
  ends = np.array([end for _, end in offsets]) + sentence[0]
  kept = []
  for start, end in spans:
    # As realm/featurization.mask_query: the pieces fully inside the span.
    covered = np.flatnonzero((starts >= start) & (ends <= end))
    overlapping = np.count_nonzero((starts < end) & (ends > start))
    if not covered.size:
      counts['spans_without_pieces'] += 1
    elif overlapping > covered.size:
      # A piece straddles an edge ("-18" of "1812-1898" in SentencePiece;
      # rare with WordPiece, which splits at punctuation): the masked pieces
      # would not be the span, and the rest of it would stay visible.
      counts['spans_cut_by_pieces'] += 1
    elif covered[-1] >= num_pieces:
      counts['spans_past_block_end'] += 1
    elif covered[-1] >= query_len - 2:  # the mask would be truncated
      counts['spans_past_query_len'] += 1
    elif (covered[0], covered[-1] + 1) in kept:
      counts['spans_duplicate'] += 1
    else:
      kept.append((int(covered[0]), int(covered[-1]) + 1))
  return kept


def _block_examples(text: str, body: np.ndarray, bounds: np.ndarray,
                    sentences: Sequence[tuple[int, int]],
                    encoded: Sequence[tuple[list[int], list[tuple[int, int]]]],
                    spans: Sequence[tuple[int, int]], query_len: int,
                    counts: collections.Counter) -> list[tuple[int, ...]]:
  """(sentence start, end, span start, end) rows of one block.

  `sentences` are the character spans of text re-split, `encoded` their
  pieces; a sentence whose pieces differ from the corpus's is skipped.
  """
  counts['sentences'] += len(bounds)
  counts['spans_found'] += len(spans)
  if len(sentences) != len(bounds):
    counts['sentences_misaligned'] += len(bounds)
    counts['spans_misaligned'] += len(spans)
    return []
  by_sentence = collections.defaultdict(list)
  sentence_starts = [start for start, _ in sentences]
  for start, end in spans:
    index = bisect.bisect_right(sentence_starts, start) - 1
    if index >= 0 and end <= sentences[index][1]:
      by_sentence[index].append((start, end))
    else:
      counts['spans_across_sentences'] += 1
  rows = []
  for index, (begin, end) in enumerate(bounds):
    ids, offsets = encoded[index]
    num_pieces = int(end - begin)
    # Only a block's lone, over-long sentence is cut (corpus.pack_document).
    aligned = (len(ids) == num_pieces
               or (len(bounds) == 1 and len(ids) > num_pieces))
    if not aligned or not np.array_equal(ids[:num_pieces], body[begin:end]):
      counts['sentences_misaligned'] += 1
      counts['spans_misaligned'] += len(by_sentence[index])
      continue
    pieces = _sentence_examples(sentences[index], by_sentence[index], offsets,
                                num_pieces, query_len, counts)
    counts['sentences_with_examples'] += bool(pieces)
    rows.extend((int(begin), int(end), start, stop) for start, stop in pieces)
  return rows


def _write_npy(path: pathlib.Path, parts: Sequence[pathlib.Path],
               dtype: np.dtype, row_shape: tuple[int, ...]):
  """Concatenates .npy files into one, a part at a time, deleting the parts."""
  lengths = [len(np.load(part, mmap_mode='r')) for part in parts]
  with open(path, 'wb') as f:
    np.lib.format.write_array_header_1_0(f, dict(
        descr=np.lib.format.dtype_to_descr(np.dtype(dtype)),
        fortran_order=False, shape=(sum(lengths), *row_shape)))
    for part in parts:
      f.write(np.ascontiguousarray(np.load(part), dtype).tobytes())
      part.unlink()


def _write_examples(corpus: corpus_lib.Corpus, directory: pathlib.Path,
                    annotator: salient_spans.Annotator, query_len: int,
                    max_masks: int, batch_size: int) -> dict[str, Any]:
  start_time = time.time()
  counts = collections.Counter()
  span_lengths = collections.Counter()
  parts = []
  tokenizer = corpus.tokenizer
  with tqdm.tqdm(total=len(corpus), unit=' blocks', desc='salient spans',
                 mininterval=1) as bar:
    # One corpus shard of examples at most is in memory.
    for shard, (first, stop) in enumerate(corpus.shard_ranges):
      blocks, pieces = array.array('q'), array.array('i')
      for batch_start in range(first, stop, batch_size):
        ids = range(batch_start, min(stop, batch_start + batch_size))
        texts = [record['text'] for record in corpus.records(ids)]
        sentences = [documents.split_sentences(text) for text in texts]
        encoded = iter(tokenizer.encode_batch_with_offsets(
            [text[a:b] for text, spans in zip(texts, sentences)
             for a, b in spans]))
        for block_id, text, block_sentences in zip(ids, texts, sentences):
          rows = _block_examples(
              text, corpus.body_tokens(block_id),
              corpus.sentence_bounds(block_id), block_sentences,
              [next(encoded) for _ in block_sentences], annotator(text),
              query_len, counts)
          counts['blocks_with_examples'] += bool(rows)
          for row in rows:
            blocks.append(block_id)
            pieces.extend(row)
            span_lengths[row[3] - row[2]] += 1
        bar.update(len(ids))
        bar.set_postfix(examples=sum(span_lengths.values()), refresh=False)
      parts.append((directory / f'block-{shard:05d}.npy',
                    directory / f'pieces-{shard:05d}.npy'))
      np.save(parts[-1][0], np.frombuffer(blocks, np.int64))
      np.save(parts[-1][1], np.frombuffer(pieces, np.int32).reshape(-1, 4))
  _write_npy(directory / 'block.npy', [b for b, _ in parts], np.int64, ())
  _write_npy(directory / 'pieces.npy', [p for _, p in parts], np.int32, (4,))
  num_examples = sum(span_lengths.values())
  return dict(
      format_version=FORMAT_VERSION,
      num_examples=num_examples,
      annotator=getattr(annotator, 'name', None) or repr(annotator),
      query_len=query_len,
      max_masks=max_masks,
      corpus=corpus_fingerprint(corpus),
      counts=dict(
          blocks=len(corpus),
          **{key: counts[key] for key in (
              'blocks_with_examples', 'sentences', 'sentences_with_examples',
              'sentences_misaligned', 'spans_found', 'spans_across_sentences',
              'spans_misaligned', 'spans_without_pieces',
              'spans_cut_by_pieces', 'spans_past_block_end',
              'spans_past_query_len', 'spans_duplicate')},
          # Masked in the query, but only max_masks of their pieces scored.
          spans_longer_than_max_masks=sum(
              n for length, n in span_lengths.items() if length > max_masks)),
      span_length_counts={str(k): n for k, n in sorted(span_lengths.items())},
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
      wall_time_s=time.time() - start_time)


def prepare_examples(corpus: corpus_lib.Corpus,
                     directory: str | os.PathLike[str],
                     *,
                     annotator: salient_spans.Annotator | str,
                     query_len: int = 96,
                     max_masks: int = 10,
                     overwrite: bool = False,
                     batch_size: int = 256) -> dict[str, Any]:
  """Finds the salient spans of every block; writes them to `directory`.

  `annotator` is an Annotator or a `salient_spans.load_annotator` spec. An
  example is a span inside one sentence, covered exactly by word pieces that
  all fall in the sentence's first query_len - 2 (REALM drops spans whose
  mask would be truncated); the manifest counts every other span by the
  reason it was dropped. One streaming pass over the corpus, written by
  `corpus.atomic_folder` (`<directory>.tmp` renamed when complete; on a
  bucket, staged locally and uploaded with manifest.json last), so a crash
  leaves no partial folder. Returns the manifest.
  """
  if isinstance(annotator, str):
    annotator = salient_spans.load_annotator(annotator)
  with corpus_lib.atomic_folder(directory, overwrite,
                                'pass overwrite=True') as temporary:
    manifest = _write_examples(corpus, temporary, annotator, query_len,
                               max_masks, batch_size)
    manifest['files'] = corpus_lib.file_checksums(temporary)
    (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
  return manifest


def load_examples(corpus: corpus_lib.Corpus,
                  path: str | os.PathLike[str],
                  query_len: int) -> tuple[dict, np.ndarray, np.ndarray]:
  """(manifest, block.npy, pieces.npy) of the examples folder `path`
  (memory-mapped; a bucket's is copied to the local cache first), checked
  against `corpus` and `query_len`."""
  if corpus_lib.is_remote(path):  # memory maps need local files
    path = corpus_lib.local_copy(path, 'examples')
  path = pathlib.Path(path)
  manifest_file = path / MANIFEST
  if not manifest_file.exists():
    raise FileNotFoundError(f'{manifest_file} not found: not an examples '
                            'folder (make one with prepare_examples)')
  manifest = json.loads(manifest_file.read_text())
  if manifest['corpus'] != corpus_fingerprint(corpus):
    raise ValueError(f'{path} was prepared from another corpus than '
                     f'{corpus.path}')
  if manifest['query_len'] != query_len:
    raise ValueError(f'{path} was prepared for query_len='
                     f'{manifest["query_len"]}, not {query_len}')
  if not manifest['num_examples']:
    raise ValueError(f'{path} holds no example: the annotator found no '
                     'salient span inside a sentence')
  return (manifest, np.load(path / 'block.npy', mmap_mode='r'),
          np.load(path / 'pieces.npy', mmap_mode='r'))


_HELDOUT_BUCKETS = 1 << 20
_MAX_DRAWS = 10_000


class PretrainInput:
  """Host-local pre-training query batches for a given step.

  masking='salient' masks one salient span of an example sentence, drawn
  uniformly over all spans (REALM's random.choice) with replacement: REALM's
  run reads about as many queries as there are spans, and a permutation of
  100M+ spans would not fit on every host. The ablations mask the sentence
  of an example (the same query distribution) or, without `examples_dir`,
  a random sentence of a random block: 'random_tokens' each piece with
  probability random_mask_rate (at least one, at most max_masks);
  'random_spans' one run of pieces as long as a salient span (drawn from the
  examples' lengths; 1-5 uniformly without examples).

  `heldout_fraction` > 0 splits the queries by their sentence's block:
  about that fraction of blocks (fixed by block uid, not by seed) give the
  split='eval' queries and never a split='train' one; the blocks stay in
  the index, so held-out queries measure retrieval of facts for sentences
  the trainer never read (a rejected draw is redrawn from the same stream).
  """

  def __init__(self, corpus: corpus_lib.Corpus,
               examples_dir: str | os.PathLike[str] | None = None, *,
               masking: str = 'salient', global_batch_size: int,
               query_len: int, max_masks: int, seed: int,
               process_index: int = 0, process_count: int = 1,
               random_mask_rate: float = 0.15,
               heldout_fraction: float = 0.0, split: str = 'train'):
    if masking not in MASKINGS:
      raise ValueError(f'masking={masking!r}: one of {MASKINGS}')
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} does not split '
                       f'over {process_count} processes')
    if query_len < 3 or max_masks < 1 or not 0 < random_mask_rate <= 1:
      raise ValueError(f'need query_len >= 3 (got {query_len}), max_masks >= '
                       f'1 (got {max_masks}), 0 < random_mask_rate <= 1 (got '
                       f'{random_mask_rate})')
    if split not in ('train', 'eval') or not 0 <= heldout_fraction < 1 or (
        split == 'eval' and not heldout_fraction):
      raise ValueError(f"split={split!r} (one of 'train', 'eval') with "
                       f'heldout_fraction={heldout_fraction}: need 0 <= '
                       'heldout_fraction < 1, and > 0 for the eval split')
    self._corpus = corpus
    self._heldout_fraction = heldout_fraction
    self._want_heldout = split == 'eval'
    self._masking = masking
    self._global_batch = global_batch_size
    self._local_batch = global_batch_size // process_count
    self._offset = process_index * self._local_batch
    self._query_len = query_len
    self._max_masks = max_masks
    self._seed = seed
    self._rate = random_mask_rate
    self.manifest = None
    self._span_lengths = np.arange(1, 6)
    self._span_length_p = np.full(5, 1 / 5)
    if examples_dir is not None:
      self.manifest, self._blocks, self._pieces = load_examples(
          corpus, examples_dir, query_len)
      counts = self.manifest['span_length_counts']
      self._span_lengths = np.array([int(k) for k in counts])
      self._span_length_p = np.array(list(counts.values())) / sum(
          counts.values())
    elif masking == 'salient':
      raise ValueError("masking='salient' needs examples_dir (make it with "
                       'prepare_examples)')

  def is_heldout(self, blocks: np.ndarray) -> np.ndarray:
    """Whether each block's sentences are held-out (eval) queries."""
    uid = self._corpus.uid64(np.asarray(blocks, np.int64))
    return (uid % _HELDOUT_BUCKETS) < self._heldout_fraction * _HELDOUT_BUCKETS

  def _query(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Block id, sentence pieces and the indices to mask of example `index`."""
    rng = np.random.default_rng((self._seed, index, 2))
    limit = self._query_len - 2
    for _ in range(_MAX_DRAWS):
      if self.manifest is not None:
        row = rng.integers(len(self._blocks))
        block = int(self._blocks[row])
      else:
        block = int(rng.integers(len(self._corpus)))
      if (not self._heldout_fraction
          or bool(self.is_heldout([block])[0]) == self._want_heldout):
        break
    else:
      raise ValueError(
          f'no {"held-out" if self._want_heldout else "training"} query in '
          f'{_MAX_DRAWS} draws: heldout_fraction={self._heldout_fraction} '
          f'leaves (almost) none of the {len(self._corpus)} blocks')
    if self.manifest is not None:
      begin, end, span_start, span_end = (int(x) for x in self._pieces[row])
    else:
      bounds = self._corpus.sentence_bounds(block)
      begin, end = (int(x) for x in bounds[rng.integers(len(bounds))])
    sentence = self._corpus.body_tokens(block)[begin:end][:limit]
    n = len(sentence)
    if self._masking == 'salient':
      masked = np.arange(span_start, span_end)
    elif self._masking == 'random_tokens':
      masked = np.flatnonzero(rng.random(n) < self._rate)
      if not masked.size:
        masked = rng.integers(n, size=1)
      elif masked.size > self._max_masks:
        masked = np.sort(rng.choice(masked, self._max_masks, replace=False))
    else:
      length = min(int(rng.choice(self._span_lengths, p=self._span_length_p)),
                   n)
      first = rng.integers(n - length + 1)
      masked = np.arange(first, first + length)
    return block, sentence, masked

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows of the global batch at `step`."""
    b, length, max_masks = self._local_batch, self._query_len, self._max_masks
    tokenizer = self._corpus.tokenizer
    query_ids = np.full([b, length], tokenizer.pad_id, np.int32)
    query_mask = np.zeros([b, length], np.int32)
    mlm_positions = np.zeros([b, max_masks], np.int32)
    mlm_targets = np.zeros([b, max_masks], np.int32)
    mlm_weights = np.zeros([b, max_masks], np.float32)
    source_block = np.zeros([b], np.int64)
    first = step * self._global_batch + self._offset
    for row in range(b):
      block, sentence, masked = self._query(first + row)
      n = len(sentence)
      query_ids[row, 0] = tokenizer.cls_id
      query_ids[row, 1:n + 1] = sentence
      query_ids[row, n + 1] = tokenizer.sep_id
      query_mask[row, :n + 2] = 1
      positions = masked + 1  # after [CLS]
      scored = positions[:max_masks]  # the rest stay masked, unscored
      mlm_positions[row, :len(scored)] = scored
      mlm_targets[row, :len(scored)] = query_ids[row, scored]
      mlm_weights[row, :len(scored)] = 1
      query_ids[row, positions] = tokenizer.mask_id
      source_block[row] = block
    return dict(query_ids=query_ids, query_mask=query_mask,
                mlm_positions=mlm_positions, mlm_targets=mlm_targets,
                mlm_weights=mlm_weights, source_block=source_block,
                source_uid64=self._corpus.uid64(source_block))


def validate(config) -> None:
  """The pre-training config's masking and candidate fields."""
  config_lib.check(config.num_candidates >= 2, 'num_candidates',
                   'needs the null document and at least one block')
  config_lib.check(config.search_margin >= 0, 'search_margin', 'must be >= 0')
  config_lib.check(config.masking.kind in MASKINGS, 'masking.kind',
                   f'{config.masking.kind!r} is not one of {MASKINGS}')
  config_lib.check(1 <= config.masking.max_masks < config.lengths.query_len,
                   'masking.max_masks', 'must be in [1, query_len)')


def choose_candidates(retrieved: np.ndarray, retrieved_uid64: np.ndarray,
                      source_uid64: np.ndarray, num_candidates: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(block ids [B, K], valid [B, K]) of each query's candidates.

  Slot 0 is the null document (blocks.NULL_BLOCK); then the best retrieved
  blocks in order, skipping empty search slots (id < 0, e.g. ScaNN's),
  the query's own block (trivial retrieval, by uid as REALM does) and
  repeats of a block already chosen (by uid: REALM skips such examples). A
  search that leaves fewer than K - 1 usable blocks (search K - 1 plus a
  margin) leaves the last slots invalid: null documents whose score the
  loss excludes, so an odd query never stops a run.
  """
  b = len(retrieved)
  chosen = np.full((b, num_candidates), blocks_lib.NULL_BLOCK, np.int64)
  valid = np.zeros((b, num_candidates), bool)
  valid[:, 0] = True
  for row, (ids, uids) in enumerate(zip(retrieved, retrieved_uid64)):
    seen = {int(source_uid64[row])}
    slot = 1
    for block, uid in zip(ids.tolist(), uids.tolist()):
      if slot == num_candidates:
        break
      if block < 0 or uid in seen:
        continue
      seen.add(uid)
      chosen[row, slot], valid[row, slot] = block, True
      slot += 1
  return chosen, valid


def candidate_inputs(corpus: corpus_lib.Corpus, query_batch: dict,
                     chosen: np.ndarray, reader_len: int
                     ) -> dict[str, np.ndarray]:
  """Retriever inputs [B, K, L] (candidate_*) and reader inputs [B, K, J]
  (reader_*, blocks.READER_KEYS but block_mask) of the candidates (invalid
  slots hold the null document)."""
  blocks = blocks_lib.gather(corpus, chosen)  # read once, featurized twice
  retriever = blocks_lib.retriever_inputs(corpus, chosen, blocks)
  reader = blocks_lib.reader_inputs(corpus, query_batch['query_ids'],
                                    query_batch['query_mask'], chosen,
                                    reader_len, blocks)
  return dict(candidate_ids=retriever['token_ids'],
              candidate_segments=retriever['segment_ids'],
              candidate_mask=retriever['input_mask'],
              reader_ids=reader['reader_ids'],
              reader_segments=reader['reader_segments'],
              reader_mask=reader['reader_mask'])


def span_holders(corpus: corpus_lib.Corpus, batch: dict[str, np.ndarray],
                 chosen: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """bool [B, K]: candidate k of query b (a block other than the query's
  own, never the null document) holds the masked span's text - on the
  synthetic corpus, where names and dates are unique, a block that states
  the masked fact. Case-insensitive, as the tokenizer may lowercase."""
  tokenizer = corpus.tokenizer
  holds = np.zeros(chosen.shape, bool)
  for row in range(len(chosen)):
    pieces = batch['mlm_targets'][row][batch['mlm_weights'][row] > 0]
    span = tokenizer.decode(pieces.tolist()).strip().lower()
    slots = np.flatnonzero(valid[row] & (chosen[row] != blocks_lib.NULL_BLOCK))
    if span and slots.size:
      records = corpus.records(chosen[row][slots])
      holds[row, slots] = [span in r['text'].lower() for r in records]
  return holds


def fact_found(corpus: corpus_lib.Corpus, batch: dict[str, np.ndarray],
               chosen: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """bool [B]: a candidate block holds the masked span (span_holders)."""
  return span_holders(corpus, batch, chosen, valid).any(1)


def batch_shapes(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """(shape, dtype) of each array of the global batch realm-pretrain feeds
  its step: queries, K candidates for the retriever and for the reader,
  masked-token targets."""
  b, k, lengths = config.batch_size, config.num_candidates, config.lengths
  m = config.masking.max_masks
  shapes = dict(
      query_ids=(b, lengths.query_len), query_mask=(b, lengths.query_len),
      candidate_ids=(b, k, lengths.block_len),
      candidate_segments=(b, k, lengths.block_len),
      candidate_mask=(b, k, lengths.block_len), candidate_valid=(b, k),
      reader_ids=(b, k, lengths.joint_len),
      reader_segments=(b, k, lengths.joint_len),
      reader_mask=(b, k, lengths.joint_len),
      mlm_positions=(b, m), mlm_targets=(b, m), mlm_weights=(b, m),
      candidate_holds_span=(b, k))
  return {name: (shape, np.float32 if name == 'mlm_weights' else np.int32)
          for name, shape in shapes.items()}
