"""Token-aware chunking with the target model's own tokenizer.

A chunk holds at most ``max_tokens`` content tokens (special tokens excluded), and
``max_tokens`` never exceeds what the model reads (its max sequence length, or
``train.max_seq_length`` when set, minus its special tokens). Cuts prefer, in
order: paragraph breaks, line breaks, sentence ends, then any word start, looking
back no further than half a chunk, so a chunk is never tiny. Overlap restarts the
next chunk at the earliest sentence start (else word start) within the last
``overlap_tokens`` tokens.

Cuts fall only on word starts, so re-tokenising a chunk's text gives the same
tokens the chunker counted (tests check this against the tokenizer).

Example::

    chunker = Chunker(load_tokenizer("sentence-transformers/all-MiniLM-L6-v2"), max_tokens=128, overlap_tokens=16)
    chunker.chunk_texts(["A long document. ..."])  # [[(0, 412, 97)]]: start char, end char, tokens
"""

from __future__ import annotations

import functools
import json
import logging
import re
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from mrlkit.errors import ConfigError

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"[.!?;:](?=[\"')\]]*\s)")


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_ref: str) -> Any:
    """The fast tokenizer of a model reference (hub id, folder, s3:// URI); cached per process (worker)."""
    from transformers import AutoTokenizer

    from mrlkit.models import resolve_model

    resolved = resolve_model(model_ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {model_ref!r} for chunking "
                          f"(corpus.tokenizer / train.base_model): {str(exc).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{model_ref!r} has no fast tokenizer; chunking needs token offsets")
    return tokenizer


@functools.lru_cache(maxsize=4)
def load_backend(model_ref: str) -> Any:
    """The Rust tokenizer alone (``tokenizer.json``): what workers need, without importing transformers."""
    from tokenizers import Tokenizer

    from mrlkit.models import resolve_model

    path = Path(resolve_model(model_ref)) / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    return load_tokenizer(model_ref).backend_tokenizer


def model_max_tokens(model_ref: str, max_seq_length: int | None = None) -> int:
    """Content tokens the model reads: its max sequence length minus the special tokens it adds.

    ``max_seq_length`` (``train.max_seq_length``) replaces the model's own: the fine-tuned model is trained and
    exported with it, so it is also what the served model reads of a chunk.

    Read from the model's files and its Rust tokenizer (:func:`load_backend`): ``prepare``'s driver then never
    imports transformers, which brings torch with it (~230 MB of the driver's memory, for two numbers).
    """
    from mrlkit.models import resolve_model

    folder = Path(resolve_model(model_ref))
    max_seq = max_seq_length or _json_field(folder / "sentence_bert_config.json", "max_seq_length")
    if not max_seq:
        limit = _json_field(folder / "tokenizer_config.json", "model_max_length")
        max_seq = limit if isinstance(limit, int) and limit < 1_000_000 else 512
    post_processor = load_backend(model_ref).post_processor  # adds the special tokens, e.g. [CLS] ... [SEP]
    specials = post_processor.num_special_tokens_to_add(False) if post_processor is not None else 0
    return int(max_seq) - specials


def _json_field(path: Path, name: str) -> Any:
    return json.loads(path.read_text()).get(name) if path.is_file() else None


def effective_limits(model_ref: str, chunk_tokens: int, overlap_tokens: int,
                     max_seq_length: int | None = None) -> tuple[int, int]:
    """Clamp chunk size to what the model reads (with a warning), and the overlap to under half a chunk.

    A longer chunk would be cut short by the model in training, in evaluation and when served: its tail would be
    silently unsearchable, and a synthetic query taken from the tail a pair the model cannot learn.
    """
    limit = model_max_tokens(model_ref, max_seq_length)
    size = chunk_tokens
    if chunk_tokens > limit:
        reader = f"train.max_seq_length={max_seq_length} lets {model_ref} read" if max_seq_length \
            else f"{model_ref} reads"
        log.warning("corpus.chunk_tokens=%d is over what %s (%d content tokens); using %d",
                    chunk_tokens, reader, limit, limit)
        size = limit
    overlap = overlap_tokens
    if overlap > size // 2:
        log.warning("corpus.chunk_overlap_tokens=%d is over half a chunk (%d tokens); using %d",
                    overlap_tokens, size, size // 2)
        overlap = size // 2
    return size, overlap


class Chunker:
    """Split texts into token-bounded chunks at the best boundaries available.

    Args:
        tokenizer: a Hugging Face fast tokenizer, or its Rust ``tokenizers.Tokenizer`` (gives offsets).
        max_tokens: the most content tokens in one chunk.
        overlap_tokens: tokens of context repeated at the start of the next chunk.
    """

    def __init__(self, tokenizer: Any, max_tokens: int, overlap_tokens: int = 0):
        if max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8, got {max_tokens}")
        if not 0 <= overlap_tokens <= max_tokens // 2:
            raise ValueError(f"overlap_tokens must be in [0, {max_tokens // 2}], got {overlap_tokens}")
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # a transformers fast tokenizer or its backend
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.word_additive = _is_word_additive(backend)
        # Per process and tokenizer, so a Ray worker keeps its cache across tasks.
        self._word_tokens = _WORD_TOKENS.setdefault(id(backend), {})

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Content tokens of each text (no special tokens), as the chunker counts them."""
        return [len(e.ids) for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def chunk_texts(self, texts: list[str]) -> list[list[tuple[int, int, int]]]:
        """For each text, its chunks as ``(start_char, end_char, token_count)``, in order."""
        out: list[list[tuple[int, int, int]] | None] = [None] * len(texts)
        slow = list(range(len(texts)))
        if self.word_additive:
            slow = []
            for i, text in enumerate(texts):
                out[i] = self._chunk_by_words(text)
                if out[i] is None:  # a single "word" longer than a chunk: cut it token by token
                    slow.append(i)
        if slow:
            encodings = self._backend.encode_batch([texts[i] for i in slow], add_special_tokens=False)
            for i, enc in zip(slow, encodings, strict=True):
                out[i] = self._chunk_by_tokens(texts[i], enc)
        return out  # type: ignore[return-value]

    def _chunk_by_tokens(self, text: str, encoding: Any) -> list[tuple[int, int, int]]:
        n = len(encoding)
        if n <= self.max_tokens:  # short texts never pay for converting offsets to Python
            return [(0, len(text), n)]
        offs = np.asarray(encoding.offsets, dtype=np.int64)
        quality = _boundary_quality(text, offs[:, 0], offs[:, 1])
        cum = np.arange(n + 1, dtype=np.int64)
        return [(int(offs[a, 0]), int(offs[b - 1, 1]), b - a)
                for a, b in _plan(cum, quality, self.max_tokens, self.overlap_tokens)]

    def _chunk_by_words(self, text: str) -> list[tuple[int, int, int]] | None:
        """Fast path for tokenizers that split on whitespace first (BERT's WordPiece and the like).

        Such a tokenizer gives a text exactly the sum of the tokens of its whitespace-separated
        words, so each distinct word is tokenized once (cached) instead of re-tokenizing the text.
        """
        parts = _WHITESPACE.split(text)
        words, seps = parts[0::2], parts[1::2]
        if words and not words[-1]:
            words.pop()
        if words and not words[0]:
            return None  # leading whitespace: normalised texts have none; take the exact path
        counts = self._counts(words)
        if max(counts, default=0) > self.max_tokens:
            return None
        cum = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(counts, out=cum[1:])
        total = int(cum[-1])
        if total <= self.max_tokens:
            return [(0, len(text), total)]
        lengths = np.empty(2 * len(words) - 1, dtype=np.int64)
        lengths[0::2] = list(map(len, words))
        lengths[1::2] = list(map(len, seps[: len(words) - 1]))
        ends = np.cumsum(lengths)
        word_end = ends[0::2]
        word_start = word_end - lengths[0::2]
        quality = np.zeros(len(words), dtype=np.int8)
        quality[0] = 3
        newline_count = np.array(list(map(str.count, seps[: len(words) - 1], repeat("\n"))), dtype=np.int64)
        sentence = np.array(list(map(_ends_sentence, words[:-1])), dtype=bool)
        quality[1:][sentence] = 1
        quality[1:][newline_count >= 1] = 2
        quality[1:][newline_count >= 2] = 3
        return [(int(word_start[a]), int(word_end[b - 1]), int(cum[b] - cum[a]))
                for a, b in _plan(cum, quality, self.max_tokens, self.overlap_tokens)]

    def _counts(self, words: list[str]) -> list[int]:
        cache = self._word_tokens
        missing = list(set(words).difference(cache))
        if missing:
            if len(cache) > 1_000_000:  # bound the cache on endless vocabularies
                cache.clear()
            for word, enc in zip(missing, self._backend.encode_batch(missing, add_special_tokens=False), strict=True):
                cache[word] = len(enc)
        return list(map(cache.__getitem__, words))


_WHITESPACE = re.compile(r"(\s+)")
_SENTENCE_MARKS = frozenset(".!?;:")
_CLOSERS = frozenset("\"')]")
_WORD_TOKENS: dict[int, dict[str, int]] = {}


def _ends_sentence(word: str) -> bool:
    last = word[-1]
    return last in _SENTENCE_MARKS or (last in _CLOSERS and word[-2:-1] in _SENTENCE_MARKS and len(word) > 1)
_ADDITIVE_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_PER_CHAR_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents", "NoneType"}


def _is_word_additive(backend: Any) -> bool:
    """Whether the tokenizer splits on whitespace before anything else and normalises character by character."""
    return (type(backend.pre_tokenizer).__name__ in _ADDITIVE_PRE_TOKENIZERS
            and type(backend.normalizer).__name__ in _PER_CHAR_NORMALIZERS)


def _plan(cum: np.ndarray, quality: np.ndarray, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Unit ranges ``[a, b)`` of each chunk. ``cum[i]``: tokens before unit i; ``quality[i]``: cut before unit i.

    Each range holds at most ``max_tokens`` tokens; the cut is the best-quality unit boundary in the
    back half of the budget; the next chunk restarts within the last ``overlap`` tokens.
    """
    n = len(cum) - 1
    ranges = []
    start = 0
    while start < n:
        hi = int(np.searchsorted(cum, cum[start] + max_tokens, side="right")) - 1
        if hi >= n:
            end = n
        else:
            lo = max(start + 1, int(np.searchsorted(cum, cum[start] + max_tokens // 2, side="left")))
            end = _best_cut(quality, lo, hi, prefer_last=True)
            if end is None:
                end = _best_cut(quality, start + 1, hi, prefer_last=True) or max(hi, start + 1)
        ranges.append((start, end))
        if end == n:
            break
        nxt = end
        if overlap:
            lo = max(start + 1, int(np.searchsorted(cum, cum[end] - overlap, side="left")))
            nxt = _best_cut(quality, lo, end - 1, prefer_last=False) or end
        start = nxt
    return ranges


def _boundary_quality(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per token i: how good a cut *before* it is. -1 mid-word, 0 word start, 1 sentence, 2 line, 3 paragraph."""
    quality = np.full(len(starts), -1, dtype=np.int8)
    gap_lo, gap_hi = ends[:-1], starts[1:]
    word_start = gap_hi > gap_lo
    quality[1:][word_start] = 0
    sentence_ends = np.fromiter((m.start() + 1 for m in _SENTENCE_END.finditer(text)), dtype=np.int64)
    if sentence_ends.size:
        after_sentence = np.isin(gap_lo, sentence_ends) & word_start
        quality[1:][after_sentence] = 1
    newlines = np.fromiter((m.start() for m in re.finditer("\n", text)), dtype=np.int64)
    if newlines.size:
        count = np.searchsorted(newlines, gap_hi) - np.searchsorted(newlines, gap_lo)
        quality[1:][count >= 1] = 2
        quality[1:][count >= 2] = 3
    quality[0] = 3
    return quality


def _best_cut(quality: np.ndarray, lo: int, hi: int, *, prefer_last: bool) -> int | None:
    """The token index in [lo, hi] with the best cut quality (>= word start); the last or first of the best."""
    if hi < lo:
        return None
    window = quality[lo: hi + 1]
    best = int(window.max())
    if best < 0:
        return None
    hits = np.flatnonzero(window == best)
    return lo + int(hits[-1] if prefer_last else hits[0])
