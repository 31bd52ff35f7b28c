"""The per-shard work Ray Data runs: read files, normalise, chunk, hash. No global state.

:func:`process_files` is the ``map_batches`` function: one input row per file, and
out come Arrow tables of rows of three kinds, in file order:

- ``chunk``: one chunk with its ids, text, token count, exact key and MinHash signature, and (for
  synthetic pairs) the spans of its inverse-cloze query sentences, the costly per-chunk half of the
  pairs pass, done here so it runs on every worker instead of serially in the driver;
- ``reject``: one rejected record (``reject`` holds the rejects.jsonl line);
- ``file``: one per file, last, with its byte count (progress and MB/s); ``range`` instead for each range of
  a file cut into several but the last (:mod:`mrlkit.corpus.line_ranges`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mrlkit.config_schema import CorpusConfig, SyntheticPairsConfig
from mrlkit.corpus.dedupe import NUM_PERM, canonical, exact_keys, minhash_signatures
from mrlkit.corpus.readers import UNREADABLE, Document, Reject, read_file
from mrlkit.pairs.synthetic import cloze_spans

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
DOC_BATCH = 256
ROWS_PER_TABLE = 2048


def schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("kind", pa.string()), ("chunk_id", pa.string()), ("doc_id", pa.string()), ("title", pa.string()),
        ("text", pa.string()), ("source", pa.string()), ("heading", pa.string()), ("question", pa.string()),
        ("group", pa.string()), ("chunk_index", pa.int32()), ("n_tokens", pa.int32()), ("key", pa.int64()),
        ("sig", pa.binary(4 * NUM_PERM)), ("cloze_spans", pa.list_(pa.int32())), ("reject", pa.string()),
        ("bytes", pa.int64()),
    ])


@dataclass(frozen=True)
class ShardOptions:
    """What every shard needs; built once on the driver, pickled to workers."""

    corpus: CorpusConfig
    tokenizer: str | None  # None when chunking is off
    max_tokens: int
    overlap_tokens: int
    signatures: bool  # near-duplicate detection wants MinHash signatures
    cloze: SyntheticPairsConfig | None = None  # inverse-cloze pairs wanted: find their sentences per chunk
    cloze_seed: int = 0  # pairs.split.seed, which seeds the choice of sentence


class _Rows:
    """Column buffers that flush into Arrow tables of a fixed schema."""

    def __init__(self) -> None:
        self.schema = schema()
        self.cols: dict[str, list[Any]] = {name: [] for name in self.schema.names}

    def add(self, **values: Any) -> None:
        for name, column in self.cols.items():
            column.append(values.get(name))

    def __len__(self) -> int:
        return len(self.cols["kind"])

    def take(self) -> Any:
        import pyarrow as pa

        table = pa.Table.from_pydict(self.cols, schema=self.schema)
        self.cols = {name: [] for name in self.schema.names}
        return table


def process_files(batch: dict[str, Any], options: ShardOptions) -> Iterator[Any]:
    """Ray Data ``map_batches`` function (generator). Input columns: ``uri``, ``rel``, ``fmt``, and the byte
    range to read, ``start`` and ``end`` (-1: to the end), its ``first_line`` and whether it is the ``last``
    range of its file (see :mod:`mrlkit.corpus.line_ranges`; a whole file is one range)."""
    rows = _Rows()
    chunker = _chunker(options)
    for uri, rel, fmt, start, end, first_line, last in zip(
            batch["uri"], batch["rel"], batch["fmt"], batch["start"], batch["end"], batch["first_line"],
            batch["last"], strict=True):
        data = _read(str(uri), int(start), int(end))
        pending: list[Document] = []
        if isinstance(data, Reject):
            where = int(first_line) if int(start) else None  # a range of a file: from which line on it is lost
            _add_reject(rows, Reject(str(rel), where, "line", UNREADABLE, data.detail))
            size = 0
        else:
            size = len(data)
            for record in read_file(str(fmt), str(rel), data, options.corpus, int(first_line)):
                if isinstance(record, Reject):
                    _flush_docs(rows, pending, chunker, options)
                    _add_reject(rows, record)
                    continue
                pending.append(record)
                if len(pending) >= DOC_BATCH:
                    _flush_docs(rows, pending, chunker, options)
                if len(rows) >= ROWS_PER_TABLE:
                    yield rows.take()
            del data
        _flush_docs(rows, pending, chunker, options)
        rows.add(kind="file" if last else "range", source=str(rel), bytes=size)  # a file counts once, done
        if len(rows) >= ROWS_PER_TABLE:
            yield rows.take()
    if len(rows):
        yield rows.take()


def _read(uri: str, start: int = 0, end: int = -1) -> bytes | Reject:
    """The file's bytes ``[start, end)`` (``end`` -1: to the end of the file)."""
    from mrlkit import storage

    fs, path = storage.pyarrow_filesystem(uri)
    try:
        if start == 0 and end < 0:
            with fs.open_input_stream(path) as fh:
                return fh.read()
        with fs.open_input_file(path) as fh:
            data = fh.read_at(end - start, start)
        if len(data) != end - start:
            raise OSError(f"bytes {start}-{end} asked, {len(data)} read: the file changed while it was read")
        return data
    except OSError as exc:
        return Reject(uri, None, "line", UNREADABLE, f"cannot read ({str(exc).splitlines()[0]})")


def _add_reject(rows: _Rows, reject: Reject) -> None:
    rows.add(kind="reject", source=reject.source, reject=json.dumps(reject.to_json(), sort_keys=True))


def _chunker(options: ShardOptions) -> Any:
    if options.tokenizer is None:
        return None
    from mrlkit.corpus.chunking import Chunker, load_backend

    return Chunker(load_backend(options.tokenizer), options.max_tokens, options.overlap_tokens)


def _flush_docs(rows: _Rows, docs: list[Document], chunker: Any, options: ShardOptions) -> None:
    """Chunk, hash and sign a batch of documents (batched: tokenizer and MinHash are vectorised)."""
    if not docs:
        return
    if chunker is None:
        spans = [[(0, len(d.text), -1)] for d in docs]
    else:
        spans = chunker.chunk_texts([d.text for d in docs])
    texts, meta = [], []
    for doc, doc_spans in zip(docs, spans, strict=True):
        headings = [(m.start(), m.group(1)) for m in _HEADING.finditer(doc.text)] if doc.title else []
        for index, (start, end, n_tokens) in enumerate(doc_spans):
            texts.append(doc.text[start:end])
            meta.append((doc, index, n_tokens, _heading_at(headings, start), len(doc_spans)))
    canon = [canonical(t) for t in texts]
    keys = exact_keys(canon)
    sigs = minhash_signatures(canon) if options.signatures else None
    for i, (text, (doc, index, n_tokens, heading, count)) in enumerate(zip(texts, meta, strict=True)):
        chunk_id = doc.doc_id if count == 1 and chunker is None else f"{doc.doc_id}#{index:04d}"
        cloze = None
        if options.cloze is not None:
            cloze = [bound for span in cloze_spans(chunk_id, text, options.cloze, options.cloze_seed) for bound in span]
        rows.add(kind="chunk", chunk_id=chunk_id, doc_id=doc.doc_id, title=doc.title, text=text, source=doc.source,
                 heading=heading, question=doc.question, group=doc.group, chunk_index=index,
                 n_tokens=n_tokens if n_tokens >= 0 else None, key=int(keys[i]),
                 sig=sigs[i].tobytes() if sigs is not None else None, cloze_spans=cloze)
    docs.clear()


def _heading_at(headings: list[tuple[int, str]], position: int) -> str | None:
    """The last Markdown heading at or before ``position`` (the section a chunk belongs to)."""
    found = None
    for start, text in headings:
        if start > position:
            break
        found = text
    return found
