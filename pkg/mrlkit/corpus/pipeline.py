"""The driver of corpus processing: Ray Data over the files, then one global dedupe pass.

Pass 1 (sharded, streaming): Ray Data runs :func:`mrlkit.corpus.shard.process_files`
over the input files (a large JSON Lines file in ranges of lines) with order preserved;
the driver streams the results into a local staging parquet file (text) and keeps only
per-chunk numbers in memory (exact key, MinHash signature, ids), so memory does not grow
with the text.
Global pass: :class:`~mrlkit.corpus.dedupe.GlobalDeduper` marks duplicates across all
shards. Pass 2: the kept chunks are rewritten into ``part-*.parquet`` with fixed
row groups, so the bytes depend only on inputs and config, never on sharding.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrlkit.config_schema import CorpusConfig
from mrlkit.corpus.blocks import file_blocks
from mrlkit.corpus.dedupe import NUM_PERM, GlobalDeduper
from mrlkit.corpus.readers import DUPLICATE_ID, Reject
from mrlkit.corpus.shard import ShardOptions, process_files
from mrlkit.corpus.sources import Inputs
from mrlkit.errors import MrlkitError
from mrlkit.layout import CHUNK_COLUMNS
from mrlkit.parquet_batches import iter_row_groups

log = logging.getLogger(__name__)

ROW_GROUP = 8192
RELEASE_EVERY_TABLES = 32
PART_ROWS = 200_000
DATA_PAGE_BYTES = 1 << 20  # pyarrow's default, named so tests can make pages small
REPEATING_COLUMNS = ("doc_id", "title", "source")
STAGING_COLUMNS = ("chunk_id", "doc_id", "title", "text", "source", "heading", "question", "group", "n_tokens",
                   "cloze_spans")


class TooManyRejects(MrlkitError):
    """More than ``corpus.max_reject_fraction`` of the input records were rejected."""


class ChunkIds:
    """Every staged chunk's id in corpus order, held as Arrow strings: ~40 bytes an id, against ~90 for a
    Python ``str`` in a list (2M chunks, a 2 GB corpus: ~100 MB less in the driver). Reads like a list:
    ``len(ids)``, ``ids[i]``, ``for cid in ids``.
    """

    def __init__(self, arrays: list[Any] | None = None):
        import pyarrow as pa

        self._ids = pa.chunked_array(arrays or [], type=pa.string())

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> str:
        return self._ids[index].as_py()

    def __iter__(self):
        for chunk in self._ids.chunks:
            yield from chunk.to_pylist()


@dataclass
class ChunkTable:
    """Every chunk in corpus order (staging parquet) plus what the global pass decided about each."""

    staging: Path
    keep: np.ndarray  # bool: the chunk is in the published corpus
    dup_of: np.ndarray  # int64: index of the kept chunk this one duplicates, -1 if none
    keys: np.ndarray  # int64 exact keys (equal texts, equal keys)
    chunk_ids: ChunkIds
    counts: dict[str, Any] = field(default_factory=dict)

    def kept_index(self, i: int) -> int:
        """The kept chunk that stands for chunk ``i``: itself, the one it duplicates, or -1 (dropped)."""
        return i if self.keep[i] else int(self.dup_of[i])

    def kept_indices(self, start: int, stop: int) -> np.ndarray:
        """:meth:`kept_index` of every chunk in ``[start, stop)`` at once."""
        keep = self.keep[start:stop]
        return np.where(keep, np.arange(start, start + len(keep)), self.dup_of[start:stop])

    def iter_columns(self, columns: tuple[str, ...] = STAGING_COLUMNS, batch_rows: int = 8192):
        """Yield ``(index of the first row, {column: list of values})`` for every batch of staged chunks, in order."""
        index = 0
        for batch in iter_row_groups(self.staging, list(columns), batch_rows):
            yield index, {name: batch.column(name).to_pylist() for name in columns}
            index += batch.num_rows

    def iter_rows(self, columns: tuple[str, ...] = STAGING_COLUMNS, batch_rows: int = 4096):
        """Yield ``(index, row dict)`` for every staged chunk, kept or not, in order."""
        for first, batch in self.iter_columns(columns, batch_rows):
            for k, values in enumerate(zip(*batch.values(), strict=True)):
                yield first + k, dict(zip(columns, values, strict=True))


def build_chunks(inputs: Inputs, options: ShardOptions, work_dir: Path, num_cpus: int | None = None) -> tuple[
        ChunkTable, list[dict[str, Any]]]:
    """Pass 1 and the global dedupe pass. Returns the chunk table and every reject (in order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    cfg = options.corpus
    staging = work_dir / "staging-chunks.parquet"
    deduper = GlobalDeduper(cfg.dedupe, cfg.near_duplicate_threshold, spill_dir=work_dir)
    rejects: list[dict[str, Any]] = [r.to_json() for r in inputs.rejects]
    id_arrays: list[Any] = []  # per table, the chunk_id column (see ChunkIds)
    dropped: list[np.ndarray] = []  # per batch: rows dropped before dedupe (duplicate id, over max_documents)
    seen_docs: set[str] = set()
    counts: Counter[str] = Counter()
    progress = _Progress(len(inputs.files), inputs.total_bytes)
    ctx = ray.data.DataContext.get_current()
    previous_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # corpus order = file order: the output is deterministic
    try:
        cpus = num_cpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_arrow(file_blocks(inputs, cpus)).map_batches(
            process_files, fn_kwargs={"options": options}, batch_size=None, batch_format="numpy", num_cpus=1)
        # Scratch read back twice (corpus parts, pairs): uncompressed and without dictionaries it writes and reads
        # ~10x faster than the defaults (snappy + dictionary), which the single-threaded driver would pay in full.
        with pq.ParquetWriter(staging, _staging_schema(), compression="none", use_dictionary=False) as writer:
            in_duplicate_doc = False
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                kind = table.column("kind").to_numpy(zero_copy_only=False)
                for line in table.filter(pa.array(kind == "reject")).column("reject").to_pylist():
                    rejects.append(json.loads(line))
                for size in table.filter(pa.array(kind == "file")).column("bytes").to_pylist():
                    progress.file_done(size)
                for size in table.filter(pa.array(kind == "range")).column("bytes").to_pylist():
                    progress.range_done(size)
                chunks = table.filter(pa.array(kind == "chunk"))
                if not chunks.num_rows:
                    continue
                drop, in_duplicate_doc = _drop_repeated_documents(chunks, in_duplicate_doc, seen_docs, counts,
                                                                  rejects, cfg.max_documents)
                dropped.append(drop)
                # a copy: a view could keep the whole block alive in Ray's object store
                id_arrays.append(pa.concat_arrays(chunks.column("chunk_id").chunks))
                sigs = _signatures(chunks.column("sig")) if cfg.dedupe == "near" else None
                deduper.add(chunks.column("key").to_numpy(), sigs)
                writer.write_table(chunks.select(list(STAGING_COLUMNS)), row_group_size=ROW_GROUP)
                progress.chunks(chunks.num_rows, len(rejects))
                if progress.tables % RELEASE_EVERY_TABLES == 0:
                    release_arrow_memory()
    finally:
        ctx.execution_options.preserve_order = previous_order
    chunk_ids = ChunkIds(id_arrays)
    progress.finish(len(chunk_ids), len(rejects))
    release_arrow_memory()
    drop = np.concatenate(dropped) if dropped else np.zeros(0, dtype=bool)
    exact, near, dup_of = deduper.duplicates(exclude=drop)
    keep = ~(drop | exact | near)
    counts.update({"chunks_before_dedupe": int((~drop).sum()), "duplicate_exact": int(exact.sum()),
                   "duplicate_near": int(near.sum()), "chunks": int(keep.sum()),
                   "bytes_read": progress.bytes, "files": len(inputs.files),
                   "skipped_hidden_files": inputs.skipped_hidden})
    table = ChunkTable(staging, keep, dup_of, deduper.keys(), chunk_ids, dict(counts))
    return table, rejects


def _drop_repeated_documents(chunks: Any, in_duplicate_doc: bool, seen_docs: set[str], counts: Counter[str],
                             rejects: list[dict[str, Any]], max_documents: int | None) -> tuple[np.ndarray, bool]:
    """Which of a table's chunks belong to a document dropped before dedupe, and the state for the next table.

    A document whose id appeared before is a reject (``DUPLICATE_ID``); one past ``max_documents`` is counted
    and dropped. Decided once per document (at its chunk 0), then spread over its chunks: per chunk in Python
    this cost ~1 us, ~2 s of the driver's time at 2M chunks.
    """
    import pyarrow as pa

    starts = np.flatnonzero(chunks.column("chunk_index").to_numpy() == 0)
    first = pa.array(starts, type=pa.int64())
    flags = [in_duplicate_doc]  # rows before the first chunk 0 continue the previous table's document
    for doc_id, source in zip(chunks.column("doc_id").take(first).to_pylist(),
                              chunks.column("source").take(first).to_pylist(), strict=True):
        in_duplicate_doc = doc_id in seen_docs
        counts["documents"] += not in_duplicate_doc  # a duplicate id is counted as a reject
        if in_duplicate_doc:
            rejects.append(Reject(source.rsplit(":", 1)[0], _where(source), "line", DUPLICATE_ID,
                                  f"document id {doc_id!r} appeared before").to_json())
        elif max_documents is not None and len(seen_docs) >= max_documents:
            counts["over_max_documents"] += 1
            in_duplicate_doc = True
        else:
            seen_docs.add(doc_id)
        flags.append(in_duplicate_doc)
    lengths = np.diff(np.concatenate([[0], starts, [chunks.num_rows]]))
    return np.repeat(np.array(flags, dtype=bool), lengths), in_duplicate_doc


def _signatures(column: Any) -> np.ndarray:
    """A ``fixed_size_binary(4 * NUM_PERM)`` column as ``(rows, NUM_PERM)`` uint32, read off its data buffer."""
    array = column.combine_chunks()
    width = 4 * NUM_PERM
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)[array.offset * width: (array.offset + len(array)) * width]
    return data.view(np.uint32).reshape(-1, NUM_PERM)


def release_arrow_memory() -> None:
    """Give memory Arrow's allocator keeps after use back to the OS.

    Arrow's default pool (mimalloc) keeps freed pages per thread; over a long pass in the driver that
    retained memory grew with the corpus (~110 MB per phase on 60 MB of text) though little was in use.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _where(source: str) -> int | None:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _staging_schema() -> Any:
    import pyarrow as pa

    from mrlkit.corpus.shard import schema

    full = schema()
    return pa.schema([full.field(name) for name in STAGING_COLUMNS])


def reject_counts(rejects: list[dict[str, Any]]) -> dict[str, int]:
    """Rejected records by reason code (a whole-file reject counts every row it held)."""
    counts: Counter[str] = Counter()
    for r in rejects:
        counts[r["code"]] += int(r.get("rows", 1))
    return dict(sorted(counts.items()))


def check_reject_fraction(cfg: CorpusConfig, rejects: list[dict[str, Any]], documents: int) -> float:
    """Fail with the top reasons (and examples) when too much of the input was rejected."""
    by_reason = reject_counts(rejects)
    rejected = sum(by_reason.values())
    total = rejected + documents
    fraction = rejected / total if total else 0.0
    if total == 0:
        raise TooManyRejects("the input holds no records at all")
    if fraction > cfg.max_reject_fraction:
        top = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        examples = "; ".join(f"{r['source']}:{r.get('line', r.get('row'))}: {r['reason']}" for r in rejects[:3])
        raise TooManyRejects(
            f"{rejected} of {total} input records rejected ({fraction:.1%}), over corpus.max_reject_fraction "
            f"({cfg.max_reject_fraction:.1%}). Top reasons: {', '.join(f'{k} x{v}' for k, v in top)}. "
            f"First: {examples}")
    return fraction


def write_corpus_parts(chunks: ChunkTable, out_dir: Path) -> list[str]:
    """Write the kept chunks as ``part-NNNNN.parquet`` (CHUNK_COLUMNS) with fixed row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    writer = None
    in_part = 0
    buffer: list[Any] = []
    buffered = 0
    offset = 0

    def flush(final: bool) -> None:
        nonlocal writer, in_part, buffer, buffered
        while buffered >= ROW_GROUP or (final and buffered):
            table = pa.concat_tables(buffer)
            take = min(ROW_GROUP, table.num_rows, PART_ROWS - in_part)
            if writer is None:
                name = f"part-{len(names):05d}.parquet"
                names.append(name)
                # dictionaries only where values repeat (every chunk of a document): cheaper writes and reads
                writer = pq.ParquetWriter(out_dir / name, table.schema, use_dictionary=list(REPEATING_COLUMNS),
                                          data_page_size=DATA_PAGE_BYTES)
            # one contiguous chunk a column: parquet cuts data pages at chunk boundaries too, and these follow
            # the tables pass 1 sent (so the CPU count and file sizes), which must not reach the bytes
            writer.write_table(table.slice(0, take).combine_chunks(), row_group_size=ROW_GROUP)
            in_part += take
            buffer, buffered = [table.slice(take)], table.num_rows - take
            if in_part >= PART_ROWS:
                writer.close()
                writer, in_part = None, 0

    for batch in iter_row_groups(chunks.staging, list(CHUNK_COLUMNS), ROW_GROUP):
        keep = chunks.keep[offset: offset + batch.num_rows]
        offset += batch.num_rows
        kept = pa.Table.from_batches([batch]).filter(pa.array(keep))
        if kept.num_rows:
            buffer.append(kept)
            buffered += kept.num_rows
            flush(final=False)
    flush(final=True)
    if writer is not None:
        writer.close()
    release_arrow_memory()
    if not names:  # an empty corpus still gets a (schema-only) part so readers see the columns
        empty = pa.table({c: pa.array([], pa.string()) for c in CHUNK_COLUMNS})
        pq.write_table(empty, out_dir / "part-00000.parquet")
        names.append("part-00000.parquet")
    return names


class _Progress:
    """Log lines with counts and MB/s every few seconds on long work."""

    def __init__(self, files: int, total_bytes: int, every_s: float = 5.0):
        self.files_total, self.bytes_total, self.every_s = files, total_bytes, every_s
        self.files = self.bytes = self.n_chunks = self.n_rejects = self.tables = 0
        self.started = self.last = time.monotonic()

    def file_done(self, size: int) -> None:
        self.files += 1
        self.bytes += int(size or 0)

    def range_done(self, size: int) -> None:
        """A range of a file read in several (:mod:`mrlkit.corpus.line_ranges`): bytes, not yet the file."""
        self.bytes += int(size or 0)

    def chunks(self, n: int, rejects: int) -> None:
        self.n_chunks += n
        self.n_rejects = rejects
        self.tables += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("prepare: %d/%d files, %.1f/%.1f MB (%.2f MB/s), %d chunks, %d rejects", self.files,
                     self.files_total, self.bytes / 1e6, self.bytes_total / 1e6, self.rate(), self.n_chunks,
                     self.n_rejects)

    def rate(self) -> float:
        return self.bytes / 1e6 / max(time.monotonic() - self.started, 1e-9)

    def finish(self, n_chunks: int, rejects: int) -> None:
        log.info("prepare: read %d files, %.1f MB in %.1fs (%.2f MB/s): %d chunks before dedupe, %d rejects",
                 self.files, self.bytes / 1e6, time.monotonic() - self.started, self.rate(), n_chunks, rejects)
