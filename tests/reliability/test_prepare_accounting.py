"""Nothing is lost over a whole ``prepare`` run: read = accepted + rejected, on generated corpora.

Hypothesis builds a folder of JSONL, CSV, Markdown and text files with a known number of
good records and of each class of bad one (malformed JSON, a missing column, empty text, a
bad CSV row, an empty file, non-UTF-8 bytes), runs the real stage on the session's Ray, and
checks the manifest and ``rejects.jsonl`` against what was generated: every record counted,
every rejected one listed once with its file and line. (The per-reader properties are in
test_corpus_readers_fuzz.py; this is the same contract through sharding, dedupe and publish.)
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrlkit import layout, storage
from mrlkit.config import config_from_dict
from mrlkit.pairs.stage import PrepareStage
from mrlkit.stage import run_stage

WORDS = "alpha beta gamma delta ember fjord garnet hollow ivory juniper kelp lotus mango nectar onyx prism".split()
TOTALS = Counter()

good_text = st.lists(st.sampled_from(WORDS), min_size=3, max_size=12).map(" ".join)
jsonl_line = st.one_of(
    good_text.map(lambda t: ("good", json.dumps({"text": t}))),
    st.just(("malformed_json", '{"text": "cut off')),
    st.just(("missing_column", json.dumps({"body": "no text column here"}))),
    st.just(("empty", json.dumps({"text": "   "}))),
)
csv_row = st.one_of(good_text.map(lambda t: ("good", f'"{t}",t')), st.just(("bad_csv_row", '"a","b","c","d"')))
text_file = st.one_of(good_text.map(lambda t: ("good", t.encode())), st.just(("empty", b"")),
                      st.just(("not_utf8", b"caf\xe9 au lait")))
corpus_spec = st.fixed_dictionaries({
    "jsonl": st.lists(st.lists(jsonl_line, min_size=1, max_size=8), max_size=3),
    "csv": st.lists(st.lists(csv_row, min_size=1, max_size=6), max_size=2),
    "md": st.lists(text_file, max_size=4),
    "txt": st.lists(text_file, max_size=3),
})


def write_corpus(folder: Path, spec: dict) -> tuple[Counter, set[tuple[str, int | None, str]]]:
    """Write the generated files; return expected counts per kind and the expected (file, line, code) rejects."""
    expected, rejects = Counter(), set()
    for n, text in enumerate(("two fixed documents keep the", "group split possible in every example")):
        (folder / f"fixed{n}.md").write_text(text, encoding="utf-8")  # a split needs 2 groups: a clear error
        expected["good"] += 1
    for n, lines in enumerate(spec["jsonl"]):
        name = f"part{n}.jsonl"
        (folder / name).write_text("\n".join(text for _, text in lines) + "\n", encoding="utf-8")
        for line_no, (kind, _) in enumerate(lines, start=1):
            expected[kind] += 1
            if kind != "good":
                rejects.add((name, line_no, kind))
    for n, rows in enumerate(spec["csv"]):
        name = f"table{n}.csv"
        (folder / name).write_text("text,tag\n" + "\n".join(text for _, text in rows) + "\n", encoding="utf-8")
        for row_no, (kind, _) in enumerate(rows, start=2):  # row 1 is the header
            expected[kind] += 1
            if kind != "good":
                rejects.add((name, row_no, kind))
    for ext in ("md", "txt"):
        for n, (kind, data) in enumerate(spec[ext]):
            name = f"doc{n}.{ext}"
            (folder / name).write_bytes(data)
            expected[kind] += 1
            if kind != "good":
                rejects.add((name, 1 if kind == "not_utf8" else None, kind))
    return expected, rejects


@pytest.mark.slow
@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=corpus_spec)
def test_read_equals_accepted_plus_rejected_over_a_whole_prepare(ray_local, figures, spec):
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "raw")
        raw.mkdir()
        expected, expected_rejects = write_corpus(raw, spec)
        cfg = config_from_dict({
            "name": "accounting", "storage": {"root": str(Path(tmp, "out"))},
            "corpus": {"input": str(raw), "max_reject_fraction": 1.0, "chunking": False,
                       "columns": {"text": "text"}},
            "pairs": {"source": "synthetic", "split": {"test_fraction": 0.3}}})
        summary = run_stage(PrepareStage, cfg)

        counts = storage.read_json(storage.join(layout.corpus_uri(cfg), "manifest.json"))["counts"]
        bad = sum(v for k, v in expected.items() if k != "good")
        assert counts["read"] == sum(expected.values()) == counts["documents"] + counts["rejected"]
        assert counts["documents"] == expected["good"] and counts["rejected"] == bad == summary["rejected"]
        assert counts["rejected_by_reason"] == {k: v for k, v in expected.items() if k != "good"}
        lines = storage.read_text(storage.join(layout.corpus_uri(cfg), "rejects.jsonl")).splitlines()
        found = [json.loads(line) for line in lines]
        assert len(found) == bad  # each rejected record listed exactly once
        assert {(r["source"], r.get("line", r.get("row")), r["code"]) for r in found} == expected_rejects
        TOTALS.update(runs=1, records=counts["read"], rejected=counts["rejected"])
        # Cumulative, so the last example's line (the one the benchmark keeps per check) has the totals.
        figures("bad_input.prepare_accounting", "generated corpora of JSONL/CSV/Markdown/text files with malformed, "
                "missing-column, empty, bad-row and non-UTF-8 records through a whole prepare run",
                times=TOTALS["runs"], lost=0, records=TOTALS["records"], rejected=TOTALS["rejected"])

