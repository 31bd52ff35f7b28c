"""How pass 1 splits the input files into Ray Data blocks (:mod:`mrlkit.corpus.blocks`)."""

from __future__ import annotations

import itertools

import pytest

from mrlkit.corpus.blocks import BLOCK_BYTES, MIN_BLOCK_BYTES, shard_plan

MB = 1_000_000


def _block_bytes(sizes: list[int], plan: list[int]) -> list[int]:
    bounds = [0, *itertools.accumulate(plan)]
    return [sum(sizes[a:b]) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_every_file_lands_in_one_block_in_order(cpus):
    sizes = [(i * 7919) % 300_000 + 1 for i in range(3000)]
    plan = shard_plan(sizes, cpus)
    assert all(count >= 1 for count in plan) and sum(plan) == len(sizes)


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_no_block_is_much_over_the_block_size_so_memory_stays_flat(cpus):
    sizes = [100_000] * 20_000  # 2 GB of 100 KB files
    blocks = _block_bytes(sizes, shard_plan(sizes, cpus))
    assert max(blocks) <= BLOCK_BYTES + 100_000  # a block closes with the file that reaches the target
    assert len(blocks) >= 2 * MB * 1000 / (BLOCK_BYTES + 100_000)


def test_blocks_shrink_towards_the_end_so_workers_finish_together():
    sizes = [100_000] * 2000  # 200 MB, the throughput benchmark's shape
    blocks = _block_bytes(sizes, shard_plan(sizes, cpus=2))
    assert blocks[0] >= BLOCK_BYTES and blocks == sorted(blocks, reverse=True)
    # the last 4 blocks together are at most ~one full block: whichever worker takes them evens the finish
    assert sum(blocks[-4:]) <= BLOCK_BYTES
    assert min(blocks[:-1]) >= MIN_BLOCK_BYTES  # only the remainder may be smaller: tasks are not free


def test_one_cpu_has_nothing_to_balance_so_blocks_stay_full():
    sizes = [100_000] * 2000
    blocks = _block_bytes(sizes, shard_plan(sizes, cpus=1))
    assert all(b >= BLOCK_BYTES for b in blocks[:-1]) and len(blocks) == 13


def test_a_small_corpus_still_spreads_over_every_cpu():
    sizes = [1000] * 1000  # 1 MB
    assert len(shard_plan(sizes, cpus=2)) >= 8
    assert shard_plan([1000] * 3, cpus=2) == [1, 1, 1]  # never more blocks than files


def test_a_file_over_the_block_size_is_never_split_and_closes_its_block():
    sizes = [1000, 3 * BLOCK_BYTES, 1000, 1000]
    ends = list(itertools.accumulate(shard_plan(sizes, cpus=2)))
    assert 2 in ends  # the block holding the big file ends with it
    assert shard_plan([3 * BLOCK_BYTES], cpus=2) == [1]


def test_no_files_no_blocks():
    assert shard_plan([], cpus=2) == []


def test_a_large_jsonl_becomes_ranges_and_an_unscannable_one_stays_whole(tmp_path, monkeypatch):
    from mrlkit.corpus import blocks as block_planning
    from mrlkit.corpus.sources import InputFile, Inputs

    monkeypatch.setattr(block_planning, "BLOCK_BYTES", 100)
    monkeypatch.setattr(block_planning, "MIN_BLOCK_BYTES", 40)
    big = tmp_path / "big.jsonl"
    line = b'{"text": "a short line"}\n'
    big.write_bytes(line * 20)
    files = [InputFile(str(big), "big.jsonl", "jsonl", big.stat().st_size),
             InputFile(str(tmp_path / "gone.jsonl"), "gone.jsonl", "jsonl", 10_000),  # listed, then deleted
             InputFile(str(tmp_path / "notes.md"), "notes.md", "text", 500)]  # not line-oriented: whole
    tables = block_planning.file_blocks(Inputs(files, [], 0, False, str(tmp_path)), cpus=2)
    rows = [row for table in tables for row in table.to_pylist()]
    big_rows = [r for r in rows if r["rel"] == "big.jsonl"]
    assert len(big_rows) > 5 and [r["last"] for r in big_rows] == [False] * (len(big_rows) - 1) + [True]
    assert big_rows[0]["start"] == 0 and big_rows[-1]["end"] == big.stat().st_size
    assert [r["first_line"] for r in big_rows] == [r["start"] // len(line) + 1 for r in big_rows]
    # the worker reads an unscannable file whole, and its reject names the error
    for rel in ("gone.jsonl", "notes.md"):
        [row] = [r for r in rows if r["rel"] == rel]
        assert (row["start"], row["end"], row["first_line"], row["last"]) == (0, -1, 1, True)
