"""Text normalisation applied to every document before chunking and hashing.

Unicode NFC (so a composed and a decomposed "é" hash the same), Windows/Mac line
ends to ``\\n``, control characters dropped, runs of spaces/tabs collapsed, at most
one blank line between paragraphs (paragraph breaks are kept: the chunker prefers them).
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_WS = r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]"
# Only runs that change: a single plain space stays untouched, which keeps the common case fast.
_SPACES = re.compile(rf"[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]{_WS}*| {_WS}+")
_SPACE_AROUND_NEWLINE = re.compile(r" +\n *|\n +")
_BLANK_LINES = re.compile(r"\n{3,}")
_LINE_BREAKS = str.maketrans({"\u2028": "\n", "\u2029": "\n", "\x85": "\n", "\x1c": "\n", "\x1d": "\n",
                              "\x1e": "\n", "\x1f": "\n"})


def normalize_text(text: str) -> str:
    """NFC, clean whitespace, keep paragraph breaks; returns '' for a text with no visible content."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_LINE_BREAKS)  # Unicode line breaks that tokenizers would not see as whitespace
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalize_line(text: str) -> str:
    """Normalise a one-line field (a title, a question): all whitespace becomes single spaces."""
    return " ".join(normalize_text(text).split())
