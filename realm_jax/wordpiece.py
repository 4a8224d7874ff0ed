"""BERT WordPiece tokenization (a vocab.txt) behind the `Tokenizer` protocol.

Built from the `tokenizers` library's BERT components (BertNormalizer,
BertPreTokenizer, the WordPiece model and decoder), so ids match
`transformers.BertTokenizerFast` on the same vocab.txt. One deliberate
difference: the special tokens are not registered as "added tokens", so a
literal "[MASK]" (or "[CLS]", ...) in a document is tokenized as text
("[", "mask", "]") and never turns into a special id -- as with the
SentencePiece tokenizer, whose special pieces are control symbols.
"""
from collections.abc import Sequence
import os
import pathlib

from tokenizers import Tokenizer as _HfTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from realm_jax.tokenization import SPECIAL_PIECES


class WordPieceTokenizer:
  """A BERT WordPiece vocab.txt; ids are line numbers in the file."""

  def __init__(self, vocab_path: str | os.PathLike[str],
               lowercase: bool = True):
    self.path = pathlib.Path(vocab_path)
    self.lowercase = lowercase
    vocab = models.WordPiece.read_file(str(self.path))
    missing = [piece for piece in SPECIAL_PIECES if piece not in vocab]
    if missing:
      raise ValueError(f'{self.path}: the vocab has no {", ".join(missing)}; '
                       f'realm_jax needs {", ".join(SPECIAL_PIECES)}')
    (self._pad_id, self._unk_id, self._cls_id, self._sep_id,
     self._mask_id) = (vocab[piece] for piece in SPECIAL_PIECES)
    # Dropped by decode, as SentencePiece drops its control symbols.
    self._control_ids = frozenset(
        (self._pad_id, self._cls_id, self._sep_id, self._mask_id))
    tokenizer = _HfTokenizer(models.WordPiece(
        vocab, unk_token='[UNK]', continuing_subword_prefix='##',
        max_input_chars_per_word=100))
    # As BertTokenizer(Fast): strip_accents follows lowercase (None).
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None,
        lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix='##', cleanup=True)
    self._tokenizer = tokenizer
    self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def unk_id(self) -> int:
    return self._unk_id

  @property
  def cls_id(self) -> int:
    return self._cls_id

  @property
  def sep_id(self) -> int:
    return self._sep_id

  @property
  def mask_id(self) -> int:
    return self._mask_id

  def encode(self, text: str) -> list[int]:
    """Word-piece ids of `text`, without [CLS]/[SEP]."""
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    encodings = self._tokenizer.encode_batch(list(texts),
                                             add_special_tokens=False)
    return [encoding.ids for encoding in encodings]

  def encode_batch_with_offsets(
      self, texts: Sequence[str]
  ) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """The ids of each text and the character span (start, end) of each id.

    Spans index the original text (before normalisation) and never include
    whitespace; a "##" piece spans just its own characters.
    """
    encodings = self._tokenizer.encode_batch(list(texts),
                                             add_special_tokens=False)
    return [(encoding.ids, [tuple(span) for span in encoding.offsets])
            for encoding in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; [PAD] [CLS] [SEP] [MASK] decode to nothing."""
    return self._tokenizer.decode(
        [int(i) for i in ids if int(i) not in self._control_ids],
        skip_special_tokens=False)

  def id_to_token(self, token_id: int) -> str:
    token = self._tokenizer.id_to_token(int(token_id))
    if token is None:
      raise IndexError(f'token id {token_id} is out of range for '
                       f'{self.path} ({self.vocab_size} tokens)')
    return token
