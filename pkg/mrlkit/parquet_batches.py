"""Read a parquet file back in bounded batches, one row group at a time.

Why not ``ParquetFile.iter_batches``: with pyarrow 26 its reader keeps the string data of
every batch it has returned until the reader itself is dropped. Streaming a 384 MB staging
file through it held 340 MB of ``text`` column at the end; reading row group by row group
peaked at 22 MB. The files read here (prepare's scratch: staging chunks, spools) are written
with small row groups, so one row group is a bounded read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_row_groups(path: str | Path, columns: list[str] | None = None, batch_rows: int = 8192) -> Iterator[Any]:
    """Record batches of at most ``batch_rows`` rows, in file order, one row group read at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for index in range(parquet.metadata.num_row_groups):
        table = parquet.read_row_group(index, columns=columns)
        yield from table.to_batches(max_chunksize=batch_rows)
        del table  # before the next row group is read: at most one in memory
