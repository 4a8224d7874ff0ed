"""Blocks as the models read them, the null document included.

Retriever: `[CLS] title [SEP] body [SEP]` (segment 0 for [CLS] title [SEP],
1 for the body), as stored in the corpus. Reader: `[CLS] query [SEP] body
[SEP]` - the title dropped (realm/featurization.py; orqa_ops.cc
ReaderInputs) and the body truncated to fit. Block id NULL_BLOCK (-1) is
REALM's null document: empty title and body, `[CLS] [SEP] [SEP]` for the
retriever and `[CLS] query [SEP] [SEP]` for the reader.
"""
import numpy as np

from realm_jax import corpus as corpus_lib

NULL_BLOCK = -1
# What the reader's jitted functions read of `reader_inputs`.
READER_KEYS = ('reader_ids', 'reader_segments', 'reader_mask', 'block_mask')


def null_document(tokenizer, block_len: int) -> dict[str, np.ndarray]:
  """Empty title and body: [CLS] [SEP] [SEP], scored by the same tower."""
  ids = np.zeros(block_len, np.int32)
  ids[:3] = tokenizer.cls_id, tokenizer.sep_id, tokenizer.sep_id
  segments = np.zeros(block_len, np.int32)
  segments[2] = 1
  mask = (np.arange(block_len) < 3).astype(np.int32)
  return dict(token_ids=ids, segment_ids=segments, input_mask=mask)


def gather(corpus: corpus_lib.Corpus, block_ids: np.ndarray) -> dict:
  """corpus.blocks of [B, K] ids, NULL_BLOCK rows the null document's: what
  the two featurizers below read (pass it to both to read the corpus once)."""
  shape = block_ids.shape
  real = block_ids != NULL_BLOCK
  blocks = corpus.blocks(block_ids[real])
  null = null_document(corpus.tokenizer, corpus.block_len)
  out = {key: np.broadcast_to(null[key], (*shape, corpus.block_len)).copy()
         for key in null}
  out['title_len'] = np.zeros(shape, np.int32)
  out['body_len'] = np.zeros(shape, np.int32)
  for key in out:
    out[key][real] = blocks[key]
  return out


def retriever_inputs(corpus: corpus_lib.Corpus, block_ids: np.ndarray,
                     blocks: dict | None = None) -> dict[str, np.ndarray]:
  """[B, K, block_len] token_ids, segment_ids, input_mask of `block_ids`
  (`blocks`: their `gather`, if already read)."""
  blocks = gather(corpus, block_ids) if blocks is None else blocks
  return {key: blocks[key] for key in ('token_ids', 'segment_ids',
                                       'input_mask')}


def reader_inputs(corpus: corpus_lib.Corpus, query_ids: np.ndarray,
                  query_mask: np.ndarray, block_ids: np.ndarray,
                  length: int, blocks: dict | None = None
                  ) -> dict[str, np.ndarray]:
  """[B, K, length] reader inputs of the blocks `block_ids` [B, K].

  `query_ids` / `query_mask` [B, Q] are `[CLS] q [SEP]` rows; a query too
  long for `length` is cut before its [SEP], leaving room for one body
  piece. Returns reader_ids, reader_segments (1 from the body on),
  reader_mask, block_mask (the body's positions: where answer spans may
  lie), and body_start, body_len [B, K] (after truncation): body piece i
  sits at position body_start + i. `blocks`: their `gather`, if already
  read.
  """
  b, k = block_ids.shape
  blocks = gather(corpus, block_ids) if blocks is None else blocks
  shape = (b, k, length)
  token_ids = np.zeros(shape, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  reader_mask = np.zeros(shape, np.int32)
  block_mask = np.zeros(shape, np.int32)
  body_start = np.zeros((b, k), np.int32)
  body_len = np.zeros((b, k), np.int32)
  sep = corpus.tokenizer.sep_id
  query_lens = query_mask.sum(1)
  for i in range(b):
    query = query_ids[i, :query_lens[i]]
    query = np.concatenate([query[:-1][:length - 3], [sep]])
    for j in range(k):
      start = blocks['title_len'][i, j] + 2
      body = blocks['token_ids'][i, j, start:start + blocks['body_len'][i, j]]
      body = body[:length - len(query) - 1]
      tokens = np.concatenate([query, body, [sep]])
      token_ids[i, j, :len(tokens)] = tokens
      segment_ids[i, j, len(query):len(tokens)] = 1
      reader_mask[i, j, :len(tokens)] = 1
      block_mask[i, j, len(query):len(query) + len(body)] = 1
      body_start[i, j], body_len[i, j] = len(query), len(body)
  return dict(reader_ids=token_ids, reader_segments=segment_ids,
              reader_mask=reader_mask, block_mask=block_mask,
              body_start=body_start, body_len=body_len)
