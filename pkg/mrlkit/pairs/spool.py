"""Rows that may outgrow memory: appended in order, spilled to parquet past a bound, read back in order.

The pairs pass of ``prepare`` emits train pairs, test queries and the evaluation corpus
row by row while it streams over the chunk table. Holding them in lists would make the
driver's memory grow with the corpus (several times its text, for synthetic pairs); a
spool keeps at most ``max_rows_in_memory`` rows and about ``max_bytes_in_memory`` bytes of
text in memory and writes the rest to parquet files in a scratch folder, so memory stays flat
however large the corpus is. (A bound in rows alone is not enough: 50,000 rows of chunk-sized
text, as Python dicts, are a few hundred MB.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mrlkit.corpus.pipeline import release_arrow_memory
from mrlkit.parquet_batches import iter_row_groups

MAX_ROWS_IN_MEMORY = 50_000
MAX_BYTES_IN_MEMORY = 16_000_000
# What a buffered row costs beyond its text: the dict, its str objects and the list slot (measured, rounded up).
ROW_OVERHEAD_BYTES = 400
SPILL_ROW_GROUP = 8192  # spill files are read back one row group at a time (see mrlkit.parquet_batches)
_names = itertools.count()


class RowSpool:
    """An append-only sequence of rows (dicts with ``schema``'s keys); iterate it to read them back in order.

    ``folder`` None never spills (everything stays in memory). Otherwise the buffer spills when it holds
    ``max_rows_in_memory`` rows or about ``max_bytes_in_memory`` bytes, whichever comes first.
    """

    def __init__(self, schema: pa.Schema, folder: Path | None = None, max_rows_in_memory: int | None = None,
                 max_bytes_in_memory: int | None = None):
        # Defaults are read at call time, so a test can lower them.
        max_rows_in_memory = MAX_ROWS_IN_MEMORY if max_rows_in_memory is None else max_rows_in_memory
        max_bytes_in_memory = MAX_BYTES_IN_MEMORY if max_bytes_in_memory is None else max_bytes_in_memory
        for name, value in (("max_rows_in_memory", max_rows_in_memory), ("max_bytes_in_memory", max_bytes_in_memory)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.schema, self.folder = schema, folder
        self.max_rows_in_memory, self.max_bytes_in_memory = max_rows_in_memory, max_bytes_in_memory
        self._buffer: list[dict[str, Any]] = []  # rows appended one by one, not yet in a table
        self._tables: list[pa.Table] = []  # in order before ``_buffer``: sealed rows and extend()ed columns
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._files: list[Path] = []
        self._count = 0
        self._drained = False
        self._name = f"spool-{next(_names):04d}"

    @classmethod
    def of(cls, rows: Iterable[dict[str, Any]], schema: pa.Schema, folder: Path | None = None,
           max_rows_in_memory: int | None = None, max_bytes_in_memory: int | None = None) -> RowSpool:
        spool = cls(schema, folder, max_rows_in_memory, max_bytes_in_memory)
        for row in rows:
            spool.append(row)
        return spool

    def append(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self._count += 1
        self._buffered_rows += 1
        if self.folder is None:
            return
        self._buffered_bytes += ROW_OVERHEAD_BYTES + sum(len(v) for v in row.values() if isinstance(v, str))
        self._spill_if_full()

    def extend(self, columns: dict[str, list[Any]]) -> None:
        """Append many rows at once, given as one list per column (the fast path: no dict per row)."""
        table = pa.Table.from_pydict(columns, schema=self.schema)
        if not table.num_rows:
            return
        self._seal_rows()
        self._tables.append(table)
        self._count += table.num_rows
        self._buffered_rows += table.num_rows
        if self.folder is None:
            return
        self._buffered_bytes += table.nbytes
        self._spill_if_full()

    def _seal_rows(self) -> None:
        """Turn the appended rows into a table, so that the buffer keeps its order when columns follow."""
        if self._buffer:
            self._tables.append(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self._buffer = []

    def _spill_if_full(self) -> None:
        if self._buffered_rows >= self.max_rows_in_memory or self._buffered_bytes >= self.max_bytes_in_memory:
            self._spill()

    def _spill(self) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self._name}-{len(self._files):05d}.parquet"
        self._seal_rows()
        # scratch, read back once: no compression or dictionaries (~10x cheaper to write and read than the defaults)
        pq.write_table(pa.concat_tables(self._tables), path, row_group_size=SPILL_ROW_GROUP, compression="none",
                       use_dictionary=False)
        self._files.append(path)
        self._tables = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        release_arrow_memory()

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for table in self.tables():
            yield from table.to_pylist()

    def tables(self, rows_per_table: int = 8192) -> Iterator[pa.Table]:
        """The rows in order as tables of exactly ``rows_per_table`` rows (the last one fewer), whatever the
        spill boundaries: what is written from a spool does not depend on how much of it was in memory."""
        return self._fixed_size_tables(rows_per_table, drain=False)

    def drain(self, rows_per_table: int = 8192) -> Iterator[pa.Table]:
        """:meth:`tables`, deleting each spill file once it is read and dropping what is in memory at the end.

        For writing a spool out once: its rows never sit on disk twice (prepare's spools hold 2.5x its
        corpus). ``len()`` still counts every row appended; reading the rows again is an error.
        """
        return self._fixed_size_tables(rows_per_table, drain=True)

    def _fixed_size_tables(self, rows_per_table: int, drain: bool) -> Iterator[pa.Table]:
        if self._drained:
            raise RuntimeError(f"{self._name}: its rows were drained (written out) already; it holds none now")
        pending: list[pa.Table] = []
        count = 0
        for table in self._stored_tables(rows_per_table, drain):
            pending.append(table)
            count += table.num_rows
            while count >= rows_per_table:
                merged = pa.concat_tables(pending).combine_chunks()
                yield merged.slice(0, rows_per_table)
                rest = merged.slice(rows_per_table)
                pending, count = ([rest] if rest.num_rows else []), rest.num_rows
        if count:
            yield pa.concat_tables(pending).combine_chunks()

    def _stored_tables(self, rows_per_table: int, drain: bool) -> Iterator[pa.Table]:
        for path in self._files:
            for batch in iter_row_groups(path, batch_rows=rows_per_table):
                yield pa.Table.from_batches([batch], schema=self.schema)
            if drain:
                path.unlink()
        yield from self._tables
        for start in range(0, len(self._buffer), rows_per_table):
            yield pa.Table.from_pylist(self._buffer[start:start + rows_per_table], schema=self.schema)
        if drain:
            self._files, self._tables, self._buffer = [], [], []
            self._drained = True
