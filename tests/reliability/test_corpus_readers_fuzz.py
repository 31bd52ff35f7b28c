"""Bad input at scale for the corpus readers (``mrlkit.corpus.readers.read_file``).

Arbitrary bytes, truncated files, huge lines and wrong encodings in every
format: a reader never raises, yields exactly one record (a Document or a
Reject with its file, line/row and a reason) per record of the input, and
every accepted text can be written to parquet. Edge cases found by these
properties (deep JSON nesting, lone surrogate escapes) have their own tests at the end.
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrlkit.config_schema import ColumnMap, CorpusConfig
from mrlkit.corpus import readers
from mrlkit.corpus.readers import Document, Reject, read_file

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
CODES = {readers.MALFORMED_JSON, readers.BAD_CSV_ROW, readers.NOT_UTF8, readers.EMPTY, readers.OVERSIZE,
         readers.MISSING_COLUMN, readers.BAD_VALUE, readers.UNREADABLE}
CFG = CorpusConfig(max_document_chars=2000, columns=ColumnMap(text="text", title="title"))
TALLY = {"files": 0, "records": 0, "rejected": 0, "crashes": 0}

texts = st.text(max_size=60)  # lone surrogates included: they must come out as NOT_UTF8 rejects
huge_texts = st.integers(1990, 2100).map(lambda n: "word " * (n // 5))


def check(fmt: str, data: bytes, expected_records: int | None = None) -> list:
    """Read ``data``; assert the reader's contract; return its records."""
    TALLY["files"] += 1
    try:
        records = list(read_file(fmt, f"in.{fmt}", data, CFG))
    except Exception:
        TALLY["crashes"] += 1
        raise
    for record in records:
        assert isinstance(record, (Document, Reject))
        if isinstance(record, Reject):
            assert record.code in CODES and record.source == f"in.{fmt}" and record.detail
            as_json = record.to_json()
            assert as_json["reason"].startswith(f"{record.code}: ") and json.dumps(as_json)
            assert record.where is None or record.where >= 1
        else:
            assert record.text and record.text == record.text.strip() and len(record.text) <= CFG.max_document_chars
            pa.array([record.text, record.title, record.doc_id, record.source])  # writable as parquet strings
    TALLY["records"] += len(records)
    TALLY["rejected"] += sum(isinstance(r, Reject) for r in records)
    if expected_records is not None:
        assert len(records) == expected_records, (len(records), expected_records, records)
    return records


def nonblank_lines(data: bytes) -> int:
    return sum(1 for raw in data.split(b"\n") if raw.strip())


json_line = st.one_of(
    st.fixed_dictionaries({"text": texts | huge_texts | st.none() | st.integers()}, optional={"title": texts}),
    st.dictionaries(texts, texts, max_size=3),
    st.lists(st.integers(), max_size=3), st.integers(), texts,
).map(lambda obj: json.dumps(obj, ensure_ascii=False).encode("utf-8"))
junk_line = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" "))


@SETTINGS
@given(st.lists(json_line | junk_line, max_size=12), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_jsonl_one_record_per_line(lines, newline, trailing):
    data = newline.join(lines) + (newline if trailing else b"")
    check("jsonl", data, nonblank_lines(data))


@SETTINGS
@given(st.binary(max_size=400))
def test_every_format_survives_arbitrary_bytes(data):
    check("jsonl", data, nonblank_lines(data))
    check("csv", data)
    check("text", data, 1)
    records = check("parquet", data, 1)
    assert isinstance(records[0], Reject) and records[0].code == readers.UNREADABLE


def write_csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["text", "title"])
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


@SETTINGS
@given(st.lists(st.lists(texts | huge_texts, min_size=2, max_size=2), max_size=10))
def test_csv_one_record_per_row(rows):
    # csv.writer writes a row of two empty fields as "," (not a blank line), so every row is a record.
    check("csv", write_csv(rows), len(rows))


@SETTINGS
@given(st.lists(st.lists(texts, min_size=2, max_size=2), min_size=1, max_size=8), st.data())
def test_truncated_files(rows, data):
    csv_bytes = write_csv(rows)
    jsonl_bytes = b"\n".join(json.dumps({"text": a, "title": b}).encode() for a, b in rows)
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [r[0] for r in rows], "title": [r[1] for r in rows]}), buf)
    parquet_bytes = buf.getvalue()
    for fmt, full in (("csv", csv_bytes), ("jsonl", jsonl_bytes), ("parquet", parquet_bytes), ("text", csv_bytes)):
        cut = data.draw(st.integers(0, len(full)), label=f"{fmt} cut")
        part = full[:cut]
        expected = {"jsonl": nonblank_lines(part), "text": 1, "parquet": None, "csv": None}[fmt]
        records = check(fmt, part, expected)
        if fmt == "parquet" and cut < len(full):
            assert len(records) == 1 and records[0].code == readers.UNREADABLE


@SETTINGS
@given(st.lists(st.one_of(texts, st.none()), max_size=20), st.booleans())
def test_parquet_one_record_per_row(values, has_text_column):
    name = "text" if has_text_column else "body"
    buf = io.BytesIO()
    pq.write_table(pa.table({name: pa.array(values, pa.string()), "title": pa.array(["t"] * len(values))}), buf)
    records = check("parquet", buf.getvalue())
    if has_text_column:
        assert len(records) == len(values)
    else:  # the whole file is one reject that counts every row it held
        assert len(records) == 1 and records[0].code == readers.MISSING_COLUMN
        assert records[0].rows == max(len(values), 1)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "cp1252", "utf-8-sig"])
def test_wrong_encodings(encoding):
    text = "Caf\u00e9 cr\u00e8me and na\u00efve r\u00e9sum\u00e9 text"
    jsonl = "\n".join(json.dumps({"text": text}, ensure_ascii=False) for _ in range(3)).encode(encoding)
    csv_data = f"text,title\n{text},t\n{text},u\n".encode(encoding)
    for fmt, data in (("jsonl", jsonl), ("csv", csv_data), ("text", text.encode(encoding))):
        records = check(fmt, data, {"jsonl": nonblank_lines(jsonl), "csv": None, "text": 1}[fmt])
        if encoding != "utf-8-sig" and fmt != "csv":
            assert all(isinstance(r, Reject) for r in records), records  # not guessed at: rejected, accounted


def test_huge_lines():
    line = json.dumps({"text": "x" * 5_000_000}).encode()
    [record] = check("jsonl", line + b"\n", 1)
    assert record.code == readers.OVERSIZE
    records = check("csv", b"text,title\n" + b"y" * 300_000 + b",t\nshort text,t\n")
    assert records and all(isinstance(r, (Document, Reject)) for r in records)
    [record] = check("text", b"z " * 3_000_000, 1)
    assert record.code == readers.OVERSIZE


@pytest.fixture(scope="module", autouse=True)
def _record_figures(figures):
    """After the module: one reliability figure (lost = files on which a reader raised)."""
    yield
    if TALLY["files"]:
        figures("bad_input.corpus_readers", "hypothesis + fixed cases: arbitrary bytes in every format, random "
                "JSONL/CSV/parquet, truncations, wrong encodings, huge lines; one Document or Reject per record",
                TALLY["files"], TALLY["crashes"], records=TALLY["records"], rejected=TALLY["rejected"])


# -- known reader bugs: each asserts the correct behaviour ---------------------------------------------------------


def test_deeply_nested_json_line_is_rejected():
    try:
        records = list(read_file("jsonl", "in.jsonl", b"[" * 100_000 + b"\n" + b'{"text": "fine"}\n', CFG))
    except RecursionError:
        pytest.fail("RecursionError escaped the JSONL reader")
    assert [type(r).__name__ for r in records] == ["Reject", "Document"] and records[0].code == readers.MALFORMED_JSON


def test_lone_surrogate_escape_is_rejected():
    [record] = read_file("jsonl", "in.jsonl", b'{"text": "half a pair \\ud800 here"}', CFG)
    assert isinstance(record, Reject) and record.code in (readers.NOT_UTF8, readers.BAD_VALUE)
