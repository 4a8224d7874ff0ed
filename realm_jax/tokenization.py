"""The tokenizer interface the rest of realm_jax uses, and SentencePiece.

Every tokenizer has BERT's special tokens. A SentencePiece vocab trained here
puts them at fixed ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4. A BERT
WordPiece vocab can be added later behind the same `Tokenizer` protocol.
"""
from collections.abc import Iterable, Sequence
import io
import os
import pathlib
from typing import Protocol

import sentencepiece as spm

SPECIAL_PIECES = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


class Tokenizer(Protocol):
  """Text <-> word-piece ids, with BERT's special tokens."""

  @property
  def vocab_size(self) -> int: ...
  @property
  def pad_id(self) -> int: ...
  @property
  def unk_id(self) -> int: ...
  @property
  def cls_id(self) -> int: ...
  @property
  def sep_id(self) -> int: ...
  @property
  def mask_id(self) -> int: ...

  def encode(self, text: str) -> list[int]: ...
  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
  def encode_batch_with_offsets(
      self, texts: Sequence[str]
  ) -> list[tuple[list[int], list[tuple[int, int]]]]: ...
  def decode(self, ids: Sequence[int]) -> str: ...
  def id_to_token(self, token_id: int) -> str: ...


class SentencePieceTokenizer:
  """A SentencePiece model with [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4."""

  pad_id, unk_id, cls_id, sep_id, mask_id = range(len(SPECIAL_PIECES))

  def __init__(self, model_path: str | os.PathLike[str], num_threads: int = -1):
    self.path = pathlib.Path(model_path)
    # -1: SentencePiece picks the number of hardware threads.
    self._num_threads = num_threads
    self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
    for token_id, piece in enumerate(SPECIAL_PIECES):
      if self._sp.id_to_piece(token_id) != piece:
        raise ValueError(
            f'{self.path}: id {token_id} is {self._sp.id_to_piece(token_id)!r}'
            f', expected {piece!r}; realm_jax needs a SentencePiece model '
            f'with {", ".join(SPECIAL_PIECES)} at ids 0-4 (train one with '
            'realm_jax.tokenization.train_sentencepiece)')
    for token_id in (self.cls_id, self.sep_id, self.mask_id):
      # A control symbol is never produced from text, so a literal "[MASK]"
      # in a document cannot turn into the mask token.
      if not self._sp.is_control(token_id):
        raise ValueError(f'{self.path}: {SPECIAL_PIECES[token_id]} (id '
                         f'{token_id}) is not a control symbol')

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int,
                           num_threads=self._num_threads)

  def encode_batch_with_offsets(
      self, texts: Sequence[str]
  ) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """The ids of each text and the character span (start, end) of each id.

    A span leaves out the whitespace a '▁' piece stands for, so a piece of
    whitespace alone spans nothing: (end, end), just before the next word.
    """
    encoded = self._sp.encode(list(texts), out_type='offset_mapping',
                              num_threads=self._num_threads)
    results = []
    for text, pieces in zip(texts, encoded):
      spans = []
      for start, end in pieces['offsets']:
        piece_text = text[start:end]
        spans.append((start + len(piece_text) - len(piece_text.lstrip()),
                       end))
      results.append((pieces['ids'], spans))
    return results

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_token(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))


def train_sentencepiece(sentences: Iterable[str],
                        output_path: str | os.PathLike[str],
                        vocab_size: int,
                        lowercase: bool = True,
                        model_type: str = 'unigram',
                        num_threads: int = os.cpu_count() or 1,
                        ) -> SentencePieceTokenizer:
  """Trains a SentencePiece model in memory and writes it to `output_path`.

  The vocab limit is soft: a corpus too small for `vocab_size` pieces gets
  a smaller vocab instead of an error.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model,
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      model_type=model_type,
      pad_id=0, pad_piece='[PAD]',
      unk_id=1, unk_piece='[UNK]',
      bos_id=-1, eos_id=-1,
      control_symbols=list(SPECIAL_PIECES[2:]),
      # nmt_nfkc_cf = NFKC + case folding, i.e. an uncased vocab like REALM's.
      normalization_rule_name='nmt_nfkc_cf' if lowercase else 'nmt_nfkc',
      num_threads=num_threads,
      minloglevel=2)
  output_path = pathlib.Path(output_path)
  output_path.write_bytes(model.getvalue())
  return SentencePieceTokenizer(output_path)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
  """Loads a tokenizer from its file, chosen by the file's suffix."""
  path = pathlib.Path(path)
  if path.suffix == '.model':
    return SentencePieceTokenizer(path)
  if path.suffix == '.txt':  # a BERT WordPiece vocab.txt
    from realm_jax import wordpiece  # pylint: disable=g-import-not-at-top
    return wordpiece.WordPieceTokenizer(path)
  raise ValueError(f'{path}: unknown tokenizer file type; expected a '
                   'SentencePiece .model or a WordPiece vocab .txt file')
