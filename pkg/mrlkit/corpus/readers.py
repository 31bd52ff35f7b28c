"""Parse one input file into documents, rejecting each bad record with its file, line/row and reason.

Formats: ``jsonl`` (one JSON object per line), ``csv`` (header row), ``parquet``,
``text`` (plain text or Markdown: one document per file, title from the first
heading or the file name) and ``beir`` (a BEIR folder's ``corpus.jsonl``: ``_id``,
``title``, ``text``). Readers never raise on bad content: every problem becomes a
:class:`Reject` so the stage can write ``rejects.jsonl`` and count reasons.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from mrlkit.config_schema import ColumnMap, CorpusConfig
from mrlkit.corpus.normalize import normalize_line, normalize_text

# Reject reason codes (the manifest counts by these).
MALFORMED_JSON = "malformed_json"
BAD_CSV_ROW = "bad_csv_row"
NOT_UTF8 = "not_utf8"
EMPTY = "empty"
OVERSIZE = "oversize"
MISSING_COLUMN = "missing_column"
BAD_VALUE = "bad_value"
UNREADABLE = "unreadable_file"
UNSUPPORTED = "unsupported_file"
DUPLICATE_ID = "duplicate_id"
EMPTY_QUESTION = "empty_question"

BEIR_COLUMNS = ColumnMap(text="text", id="_id", title="title")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    """One normalised input document; ``question`` and ``group`` come from mapped columns when configured."""

    doc_id: str
    text: str
    title: str | None
    source: str
    question: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Reject:
    """One rejected record (or a whole file when ``where`` is None and ``rows`` counts what it held)."""

    source: str
    where: int | None
    unit: str  # "line" or "row"
    code: str
    detail: str
    rows: int = 1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, self.unit: self.where, "code": self.code,
                               "reason": f"{self.code}: {self.detail}"}
        if self.rows != 1:
            out["rows"] = self.rows
        return out


Record = Document | Reject


def read_file(fmt: str, rel: str, data: bytes, cfg: CorpusConfig, first_line: int = 1) -> Iterator[Record]:
    """Every document and reject of one file, in file order. ``fmt`` is a concrete format, not 'auto'.

    ``data`` may be a range of a JSON Lines file cut at line boundaries (:mod:`mrlkit.corpus.line_ranges`);
    ``first_line`` is then the number of its first line in the whole file.
    """
    if fmt in ("jsonl", "beir"):
        yield from _read_jsonl(rel, data, BEIR_COLUMNS if fmt == "beir" else cfg.columns, cfg, first_line)
    elif first_line != 1:
        raise ValueError(f"only JSON Lines files are read in ranges, not {fmt!r}")  # a bug if reached
    elif fmt == "csv":
        yield from _read_csv(rel, data, cfg)
    elif fmt == "parquet":
        yield from _read_parquet(rel, data, cfg)
    elif fmt == "text":
        yield from _read_text(rel, data, cfg)
    else:
        raise ValueError(f"unknown format {fmt!r}")  # formats are resolved by sources.py; a bug if reached


def _read_jsonl(rel: str, data: bytes, columns: ColumnMap, cfg: CorpusConfig, first_line: int) -> Iterator[Record]:
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        if not raw.strip():
            continue  # blank lines separate nothing in JSONL; they are not records
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Reject(rel, number, "line", NOT_UTF8, f"invalid UTF-8 byte at column {exc.start + 1}")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Reject(rel, number, "line", MALFORMED_JSON, f"{exc.msg} at column {exc.colno}")
            continue
        except RecursionError:
            yield Reject(rel, number, "line", MALFORMED_JSON, "nested too deeply to be a document")
            continue
        if not isinstance(obj, dict):
            yield Reject(rel, number, "line", MALFORMED_JSON, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield record_to_document(obj, columns, cfg, rel, number, "line")


def _read_csv(rel: str, data: bytes, cfg: CorpusConfig) -> Iterator[Record]:
    # surrogateescape keeps going past bad bytes; rows that contain them are rejected one by one below.
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        yield Reject(rel, None, "row", EMPTY, "the CSV file is empty (no header row)", rows=1)
        return
    except csv.Error as exc:
        yield Reject(rel, 1, "line", BAD_CSV_ROW, f"unreadable header: {exc}")
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Reject(rel, reader.line_num, "line", BAD_CSV_ROW, str(exc))
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line is not a record
        if len(row) != len(header):
            yield Reject(rel, reader.line_num, "line", BAD_CSV_ROW,
                         f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}")
            continue
        if any(_has_surrogates(value) for value in row):
            yield Reject(rel, reader.line_num, "line", NOT_UTF8, "the row holds bytes that are not valid UTF-8")
            continue
        yield record_to_document(dict(zip(header, row, strict=True)), cfg.columns, cfg, rel, reader.line_num, "line")


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_parquet(rel: str, data: bytes, cfg: CorpusConfig) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        yield Reject(rel, None, "row", UNREADABLE, f"not a readable parquet file ({exc})")
        return
    names = parquet.schema_arrow.names
    missing = [c for c in _mapped_columns(cfg.columns) if c not in names]
    if missing:
        yield Reject(rel, None, "row", MISSING_COLUMN,
                     f"no column(s) {', '.join(map(repr, missing))}; the file has {', '.join(names)} "
                     f"(set corpus.columns.*)", rows=max(parquet.metadata.num_rows, 1))
        return
    row = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=_mapped_columns(cfg.columns)):
        for obj in batch.to_pylist():
            row += 1
            yield record_to_document(obj, cfg.columns, cfg, rel, row, "row")


def _read_text(rel: str, data: bytes, cfg: CorpusConfig) -> Iterator[Record]:
    if len(data) > 4 * cfg.max_document_chars:  # cheap early exit before decoding a huge file
        yield Reject(rel, None, "line", OVERSIZE, f"{len(data)} bytes > corpus.max_document_chars "
                     f"({cfg.max_document_chars})")
        return
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        yield Reject(rel, line, "line", NOT_UTF8, f"invalid UTF-8 byte at offset {exc.start}")
        return
    if len(raw) > cfg.max_document_chars:
        yield Reject(rel, None, "line", OVERSIZE, f"{len(raw)} chars > corpus.max_document_chars "
                     f"({cfg.max_document_chars})")
        return
    text = normalize_text(raw)
    if not text:
        yield Reject(rel, None, "line", EMPTY, "the file has no text")
        return
    heading = _HEADING.search(text)
    title = normalize_line(heading.group(1)) if heading else PurePosixPath(rel).stem.replace("_", " ")
    yield Document(doc_id=rel, text=text, title=title or None, source=rel)


def _mapped_columns(columns: ColumnMap) -> list[str]:
    names = [columns.text, columns.id, columns.title, columns.question, columns.group]
    return list(dict.fromkeys(n for n in names if n))


def record_to_document(obj: dict[str, Any], columns: ColumnMap, cfg: CorpusConfig, rel: str, where: int,
                       unit: str) -> Record:
    """Map one row (JSON object, CSV row, parquet row) to a Document, or say why it cannot be one."""
    # text, id and question are needed per row; title and group may be absent from a JSON line (then null).
    missing = [c for c in (columns.text, columns.id, columns.question) if c and c not in obj]
    if missing:
        have = ", ".join(map(repr, list(obj)[:12])) or "none"
        return Reject(rel, where, unit, MISSING_COLUMN,
                      f"no column(s) {', '.join(map(repr, missing))}; the row has {have} (set corpus.columns.*)")
    raw = obj[columns.text]
    if raw is not None and not isinstance(raw, str):
        return Reject(rel, where, unit, BAD_VALUE, f"column {columns.text!r} must hold text, got {type(raw).__name__}")
    raw = raw or ""
    if len(raw) > cfg.max_document_chars:
        return Reject(rel, where, unit, OVERSIZE, f"{len(raw)} chars > corpus.max_document_chars "
                      f"({cfg.max_document_chars})")
    text = normalize_text(raw)
    if not text:
        return Reject(rel, where, unit, EMPTY, f"column {columns.text!r} is empty")
    doc_id = _field(obj, columns.id) or f"{rel}:{where}"
    doc = Document(doc_id=doc_id, text=text, title=_field(obj, columns.title), source=f"{rel}:{where}",
                   question=_field(obj, columns.question), group=_field(obj, columns.group))
    # A JSON \ud800 escape decodes to a lone surrogate: valid JSON, but no UTF-8 text (parquet cannot hold it).
    if any(v is not None and _has_surrogates(v) for v in (doc.doc_id, doc.text, doc.title, doc.question, doc.group)):
        return Reject(rel, where, unit, NOT_UTF8, "a value holds a lone UTF-16 surrogate escape, not valid text")
    return doc


def _field(obj: dict[str, Any], column: str | None) -> str | None:
    if column is None or obj.get(column) is None:
        return None
    value = normalize_line(str(obj[column]))
    return value or None
