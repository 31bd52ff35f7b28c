"""RowSpool: rows past the in-memory bound go to parquet and come back in order, in fixed-size tables."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mrlkit.pairs.spool import RowSpool

SCHEMA = pa.schema([("anchor", pa.string()), ("relevant_ids", pa.list_(pa.string()))])


def rows(n: int) -> list[dict]:
    return [{"anchor": f"q{i}", "relevant_ids": [f"c{i}", f"d{i}"]} for i in range(n)]


def test_spills_past_the_bound_and_reads_back_in_order(tmp_path):
    spool = RowSpool(SCHEMA, tmp_path, max_rows_in_memory=7)
    for row in rows(30):
        spool.append(row)
    assert len(spool) == 30 and spool
    assert len(list(tmp_path.glob("*.parquet"))) == 4  # 28 rows on disk, 2 in memory
    assert list(spool) == rows(30)
    assert list(spool) == rows(30)  # re-readable


def test_tables_have_the_same_boundaries_whatever_was_spilled(tmp_path):
    spilled = RowSpool.of(rows(30), SCHEMA, tmp_path, max_rows_in_memory=7)
    in_memory = RowSpool.of(rows(30), SCHEMA)
    sizes = [t.num_rows for t in spilled.tables(8)]
    assert sizes == [8, 8, 8, 6] == [t.num_rows for t in in_memory.tables(8)]
    assert all(a.equals(b) for a, b in zip(spilled.tables(8), in_memory.tables(8), strict=True))


def test_empty_spool_and_bad_bound(tmp_path):
    spool = RowSpool(SCHEMA, tmp_path)
    assert not spool and list(spool) == [] and list(spool.tables()) == []
    with pytest.raises(ValueError, match="max_rows_in_memory must be >= 1"):
        RowSpool(SCHEMA, tmp_path, max_rows_in_memory=0)


def test_spills_on_bytes_before_rows_when_rows_are_large(tmp_path):
    from mrlkit.pairs.spool import ROW_OVERHEAD_BYTES

    big = [{"anchor": "x" * 10_000 + str(i), "relevant_ids": []} for i in range(10)]
    # ~2.5 rows' worth of bytes: spills every 3 rows though the row bound (1000) is far away
    spool = RowSpool.of(big, SCHEMA, tmp_path, max_rows_in_memory=1000,
                        max_bytes_in_memory=int(2.5 * (10_001 + ROW_OVERHEAD_BYTES)))
    assert len(list(tmp_path.glob("*.parquet"))) == 3  # 9 rows on disk, 1 in memory
    assert list(spool) == big
    with pytest.raises(ValueError, match="max_bytes_in_memory must be >= 1"):
        RowSpool(SCHEMA, tmp_path, max_bytes_in_memory=0)


def test_extend_keeps_order_with_appended_rows_and_spills_on_bytes(tmp_path):
    data = rows(40)
    spool = RowSpool(SCHEMA, tmp_path, max_rows_in_memory=1000, max_bytes_in_memory=1500)
    spool.append(data[0])
    spool.extend({"anchor": [r["anchor"] for r in data[1:20]], "relevant_ids": [r["relevant_ids"] for r in data[1:20]]})
    spool.append(data[20])
    spool.extend({"anchor": [], "relevant_ids": []})  # nothing to add
    spool.extend({"anchor": [r["anchor"] for r in data[21:]], "relevant_ids": [r["relevant_ids"] for r in data[21:]]})
    assert len(spool) == 40
    assert list(tmp_path.glob("*.parquet"))  # the columns' Arrow bytes count toward the bound
    assert list(spool) == data
    in_memory = RowSpool(SCHEMA)
    in_memory.extend({"anchor": [r["anchor"] for r in data], "relevant_ids": [r["relevant_ids"] for r in data]})
    assert list(in_memory) == data


def test_extend_names_a_missing_column(tmp_path):
    spool = RowSpool(SCHEMA, tmp_path)
    with pytest.raises(KeyError, match="relevant_ids"):
        spool.extend({"anchor": ["a"]})
    assert len(spool) == 0


def test_drain_reads_in_order_and_frees_each_spill_file_once_read(tmp_path):
    spool = RowSpool.of(rows(30), SCHEMA, tmp_path, max_rows_in_memory=7)
    files_left = []
    got = []
    for table in spool.drain(8):
        got += table.to_pylist()
        files_left.append(len(list(tmp_path.glob("*.parquet"))))
    assert got == rows(30)
    # the first table of 8 takes all of the first 7-row file (deleted) and one row of the second
    assert files_left[0] == 3 and files_left[-1] == 0 and files_left == sorted(files_left, reverse=True)
    assert len(spool) == 30, "len still counts the rows appended"
    with pytest.raises(RuntimeError, match="drained"):
        list(spool)
