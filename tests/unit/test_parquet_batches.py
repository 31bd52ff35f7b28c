"""Prepare's scratch files are read back in bounded memory."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from mrlkit.parquet_batches import iter_row_groups

ROW_GROUP_ROWS = 1000
TEXT = "x" * 1000  # 1 MB of text per row group


def write_text_file(path, row_groups: int) -> None:
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())]),
                          compression="none", use_dictionary=False) as writer:
        for g in range(row_groups):
            ids = range(g * ROW_GROUP_ROWS, (g + 1) * ROW_GROUP_ROWS)
            writer.write_table(pa.table({"id": list(ids), "text": [f"{i} {TEXT}" for i in ids]}))


def test_reads_every_row_in_order_with_memory_bounded_by_one_row_group(tmp_path):
    path = tmp_path / "scratch.parquet"
    write_text_file(path, row_groups=40)  # 40 MB of text
    base = pa.total_allocated_bytes()
    peak, ids = 0, []
    for batch in iter_row_groups(path, ["id", "text"], batch_rows=300):
        assert batch.num_rows <= 300
        ids.extend(batch.column(0).to_pylist())
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert ids == list(range(40 * ROW_GROUP_ROWS))
    # One row group is ~1 MB; pyarrow's own iter_batches held ~all 40 MB by the end (see mrlkit.parquet_batches).
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB of Arrow memory held while streaming 40 MB"


def test_only_the_asked_columns_are_read(tmp_path):
    path = tmp_path / "scratch.parquet"
    write_text_file(path, row_groups=2)
    batch = next(iter_row_groups(path, ["id"]))
    assert batch.schema.names == ["id"]
