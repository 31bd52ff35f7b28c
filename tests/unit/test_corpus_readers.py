"""Each input format parses into documents; each bad-input class becomes a reject with file, line/row and reason."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrlkit.config_schema import ColumnMap, CorpusConfig
from mrlkit.corpus.normalize import normalize_text
from mrlkit.corpus.readers import Document, Reject, read_file


def _read(fmt: str, data: bytes, **cfg) -> list:
    return list(read_file(fmt, "in/file", data, CorpusConfig(**cfg)))


def _docs(records):
    return [r for r in records if isinstance(r, Document)]


def _rejects(records):
    return [r for r in records if isinstance(r, Reject)]


def test_normalize_nfc_and_whitespace():
    assert normalize_text("Cafe\u0301  \t bar \r\n\r\n\r\n\nnext\x00 line ") == "Caf\u00e9 bar\n\nnext line"
    assert normalize_text(" \u200b\n\t ") == ""


def test_jsonl_documents_and_each_bad_line():
    lines = [
        json.dumps({"id": "a", "text": "first doc", "title": "T"}).encode(),
        b'{"id": "b", "text": "broken',                      # malformed JSON
        b"",                                                    # blank: not a record
        '{"id": "c", "text": "caf\u00e9"}'.encode("latin-1"),  # not UTF-8
        json.dumps({"id": "d", "text": "   "}).encode(),       # empty
        json.dumps({"id": "e", "body": "no text column"}).encode(),  # missing column
        json.dumps({"id": "f", "text": "x" * 50}).encode(),    # oversize
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"id": "g", "text": 42}).encode(),          # wrong type
    ]
    records = _read("jsonl", b"\n".join(lines), columns=ColumnMap(text="text", id="id", title="title"),
                    max_document_chars=40)
    assert [(d.doc_id, d.text, d.title, d.source) for d in _docs(records)] == [("a", "first doc", "T", "in/file:1")]
    got = [(r.where, r.code) for r in _rejects(records)]
    assert got == [(2, "malformed_json"), (4, "not_utf8"), (5, "empty"), (6, "missing_column"), (7, "oversize"),
                   (8, "malformed_json"), (9, "bad_value")]
    missing = _rejects(records)[3].to_json()
    assert missing["source"] == "in/file" and missing["line"] == 6 and "'text'" in missing["reason"]


def test_csv_rows_and_bad_rows():
    data = (b'question,context,ticker\n'
            b'What is A?,"A is a ""letter"", first",AAA\n'
            b'only,two\n'
            b',"no question, still a doc",BBB\n') + b'Q?,"bad \xff byte",CCC\n' + b'Q2?,,DDD\n'
    records = _read("csv", data, columns=ColumnMap(text="context", question="question", group="ticker"))
    docs = _docs(records)
    assert [(d.text, d.question, d.group, d.source) for d in docs] == [
        ('A is a "letter", first', "What is A?", "AAA", "in/file:2"),
        ("no question, still a doc", None, "BBB", "in/file:4")]
    assert [(r.where, r.code) for r in _rejects(records)] == [(3, "bad_csv_row"), (5, "not_utf8"), (6, "empty")]


def test_parquet_rows_and_missing_column():
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["one", None, "three"], "doc": ["x", "y", "z"]}), buf)
    records = _read("parquet", buf.getvalue(), columns=ColumnMap(text="text", id="doc"))
    assert [d.doc_id for d in _docs(records)] == ["x", "z"]
    assert [(r.where, r.code) for r in _rejects(records)] == [(2, "empty")]
    whole = _read("parquet", buf.getvalue(), columns=ColumnMap(text="body"))
    assert len(whole) == 1 and whole[0].code == "missing_column" and whole[0].rows == 3
    assert "'body'" in whole[0].detail and "text, doc" in whole[0].detail
    assert _read("parquet", b"not parquet")[0].code == "unreadable_file"


def test_text_and_markdown_titles():
    md = _docs(_read("text", b"Intro line\n\n## The Title ##\n\nBody text."))[0]
    assert md.title == "The Title" and md.doc_id == "in/file"
    plain = next(iter(read_file("text", "docs/my_notes.txt", b"just text", CorpusConfig())))
    assert plain.title == "my notes"
    assert _read("text", b"\xff\xfe bad")[0].code == "not_utf8"
    assert _read("text", b"  \n ")[0].code == "empty"
    assert _read("text", b"y" * 100, max_document_chars=10)[0].code == "oversize"


def test_beir_corpus_uses_beir_columns():
    data = b'{"_id": "d1", "title": "Doc one", "text": "alpha beta"}\n{"_id": "d2", "text": "gamma"}\n'
    docs = _docs(_read("beir", data))
    assert [(d.doc_id, d.title, d.text) for d in docs] == [("d1", "Doc one", "alpha beta"), ("d2", None, "gamma")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text"])
def test_reader_never_raises_on_garbage(fmt):
    garbage = bytes(range(256)) * 4
    records = _read(fmt, garbage)
    assert all(isinstance(r, (Document, Reject)) for r in records)
