"""A small pure-Python BERT WordPiece tokenizer (uncased), enough to feed the static embedding model.

It reproduces what the Hugging Face ``BertWordPieceTokenizer`` of all-MiniLM-L6-v2 does on the
way in (clean text, split CJK characters, lowercase, strip accents, split on whitespace and
punctuation, greedy longest-match-first WordPiece with ``##`` continuations), so the runtime needs
neither ``tokenizers`` nor ``transformers``. ``distill.py`` checks the two agree on a sample of text
before it writes the model file.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

_MAX_CHARS_PER_WORD = 100


def _is_whitespace(ch: str) -> bool:
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII symbol ("$", "^", "`", ...) as punctuation, even
    # those Unicode files under "symbol".
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


# ASCII control characters BERT drops (tab, newline and carriage return are whitespace instead).
_ASCII_CONTROLS = {cp: None for cp in (*range(0, 9), 11, 12, *range(14, 32), 127)}
# In ASCII every printable character that is not a letter, digit or space is BERT punctuation.
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def basic_tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercased, accent-free words and single punctuation marks."""
    if text.isascii():
        # Fast path, same result: tool descriptions and most queries are plain ASCII.
        return _ASCII_WORDS.findall(text.translate(_ASCII_CONTROLS).lower())
    return basic_tokenize_unicode(text)


def basic_tokenize_unicode(text: str) -> list[str]:
    """The general path of :func:`basic_tokenize`, for any text."""
    out: list[str] = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    words: list[str] = []
    for raw in "".join(out).lower().split():
        word = "".join(c for c in unicodedata.normalize("NFD", raw) if unicodedata.category(c) != "Mn")
        start = 0
        for i, ch in enumerate(word):
            if _is_punctuation(ch):
                if start < i:
                    words.append(word[start:i])
                words.append(ch)
                start = i + 1
        if start < len(word):
            words.append(word[start:])
    return words


class WordPieceTokenizer:
    """Maps text to vocabulary ids; words that cannot be pieced together become ``unk_id``."""

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        unk_token: str = "[UNK]",
        prefix: str = "##",
        special_tokens: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    ):
        self.vocab: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.unk_id: int | None = self.vocab.get(unk_token)
        self.prefix = prefix
        # Hugging Face matches special tokens in the raw text before normalising it ("[SEP]" typed
        # by a user is one token, not "[", "sep", "]"); do the same so ids agree.
        specials = sorted((t for t in special_tokens if t in self.vocab), key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in specials)) if specials else None
        # Tool descriptions repeat the same words over and over; remembering each word's pieces
        # keeps index builds fast.
        self._word_cache: dict[str, tuple[int, ...]] = {}

    def _word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        ids: list[int] = []
        if len(word) > _MAX_CHARS_PER_WORD:
            ids = [self.unk_id] if self.unk_id is not None else []
        else:
            start = 0
            vocab = self.vocab
            while start < len(word):
                end = len(word)
                found: int | None = None
                while start < end:
                    piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                    found = vocab.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id] if self.unk_id is not None else []
                    break
                ids.append(found)
                start = end
        result = tuple(ids)
        if len(self._word_cache) < 200_000:
            self._word_cache[word] = result
        return result

    def _encode_plain(self, text: str, ids: list[int]) -> None:
        for word in basic_tokenize(text):
            ids.extend(self._word_ids(word))

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        if self._special_re is None or "[" not in text:
            self._encode_plain(text, ids)
            return ids
        start = 0
        for match in self._special_re.finditer(text):
            self._encode_plain(text[start : match.start()], ids)
            ids.append(self.vocab[match.group(0)])
            start = match.end()
        self._encode_plain(text[start:], ids)
        return ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]
