"""Model-free pairs: inverse cloze and title -> section, deterministic per chunk."""

from __future__ import annotations

from mrlkit.config_schema import SyntheticPairsConfig
from mrlkit.pairs.synthetic import inverse_cloze, title_pair

TEXT = ("Ray Data streams blocks between operators without holding the dataset. "
        "Each block is a pyarrow table of a few thousand rows. "
        "Backpressure keeps memory bounded while tasks run on every node.")


def test_inverse_cloze_removes_the_query_sentence():
    pairs = inverse_cloze("c1", TEXT, SyntheticPairsConfig(pairs_per_chunk=2), seed=42)
    assert len(pairs) == 2
    for p in pairs:
        assert p.method == "inverse_cloze" and p.anchor in TEXT and p.anchor not in p.positive
        assert len(p.positive.split()) >= 6
    again = inverse_cloze("c1", TEXT, SyntheticPairsConfig(pairs_per_chunk=2), seed=42)
    assert again == pairs


def test_inverse_cloze_needs_two_sentences_and_long_enough_queries():
    assert inverse_cloze("c", "One sentence only here, nothing else at all.", SyntheticPairsConfig(), 1) == []
    assert inverse_cloze("c", "Too short. Also short.", SyntheticPairsConfig(min_query_words=6), 1) == []


def test_title_pair_uses_heading_and_strips_it():
    pair = title_pair("asyncio", "Event loop", "## Event loop\n\nThe event loop runs tasks and callbacks.")
    assert pair.anchor == "asyncio: Event loop" and pair.positive == "The event loop runs tasks and callbacks."
    assert title_pair(None, None, TEXT) is None
    assert title_pair("t", None, "# t\n\nab") is None  # nothing left to retrieve
