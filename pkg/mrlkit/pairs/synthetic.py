"""Model-free, offline training pairs for a corpus without questions.

- **inverse cloze**: a sentence of a chunk is the query, the chunk without that
  sentence is the positive (Lee et al., 2019, "Latent Retrieval for Weakly
  Supervised Open Domain QA");
- **title**: a document's title / the section heading is the query, the first chunk
  of that section (heading line removed) is the positive.

Choices are seeded by the chunk id, so the same corpus always gives the same pairs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from mrlkit.config_schema import SyntheticPairsConfig

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|$)", re.MULTILINE)
_HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s+.*$\n?", re.MULTILINE)


@dataclass(frozen=True)
class SyntheticPair:
    anchor: str
    positive: str
    method: str


def inverse_cloze(chunk_id: str, text: str, cfg: SyntheticPairsConfig, seed: int) -> list[SyntheticPair]:
    """Up to ``cfg.pairs_per_chunk`` (sentence -> rest of chunk) pairs; none if the chunk has one sentence."""
    return [cloze_pair(text, start, end) for start, end in cloze_spans(chunk_id, text, cfg, seed)]


def cloze_spans(chunk_id: str, text: str, cfg: SyntheticPairsConfig, seed: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each sentence :func:`inverse_cloze` takes as a query, in text order.

    This is the costly half (every sentence is found and counted); prepare's shard workers run it in
    parallel and the driver rebuilds the pairs with the cheap :func:`cloze_pair`.
    """
    spans = [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.group().strip()]
    if len(spans) < 2:
        return []
    eligible = [s for s in spans
                if len(text[s[0]:s[1]].split()) >= cfg.min_query_words and not text[s[0]:s[1]].lstrip().startswith("#")]
    if not eligible:
        return []
    rng = random.Random(f"{seed}:{chunk_id}")
    picked = rng.sample(eligible, min(cfg.pairs_per_chunk, len(eligible)))
    # The rest's word count is the words before plus the words after (cloze_pair joins them with a space).
    return [(start, end) for start, end in sorted(picked)
            if len(text[:start].split()) + len(text[end:].split()) >= cfg.min_query_words]


def cloze_pair(text: str, start: int, end: int) -> SyntheticPair:
    """The sentence ``text[start:end]`` (whitespace collapsed) as query, the chunk without it as positive."""
    query = " ".join(text[start:end].split())
    rest = (text[:start].rstrip() + " " + text[end:].lstrip()).strip()
    return SyntheticPair(query, rest, "inverse_cloze")


def title_pair(title: str | None, heading: str | None, text: str) -> SyntheticPair | None:
    """(title [: heading] -> section text without its heading lines), or None when there is no title."""
    if not title and not heading:
        return None
    query = title or heading or ""
    if heading and title and heading.casefold() != title.casefold():
        query = f"{title}: {heading}"
    positive = _HEADING_LINE.sub("", text).strip()
    if len(positive.split()) < 3:
        return None
    return SyntheticPair(query, positive, "title")
