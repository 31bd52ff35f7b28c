"""A large JSON Lines file cut into ranges on line boundaries, each knowing its first line number."""

from __future__ import annotations

import itertools
import random

import pytest

from mrlkit.corpus import line_ranges as lr


def _check(data: bytes, ranges: list[lr.LineRange], piece: int) -> None:
    assert ranges[0].start == 0 and ranges[-1].end == len(data)
    for before, after in itertools.pairwise(ranges):
        assert before.end == after.start  # contiguous: no byte read twice or skipped
    for r in ranges:
        assert r.first_line == data.count(b"\n", 0, r.start) + 1
        assert r.start == 0 or data[r.start - 1:r.start] == b"\n"  # starts on a line
    for r in ranges[:-1]:  # each closes at the first newline once it holds ``piece`` bytes
        assert r.end == data.find(b"\n", r.start + piece - 1) + 1


@pytest.mark.parametrize("scan_bytes", [7, 64, 1 << 20])  # cuts and counts must not depend on the read size
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_ranges_cover_the_file_on_line_boundaries_with_line_numbers(tmp_path, monkeypatch, scan_bytes,
                                                                    trailing_newline):
    monkeypatch.setattr(lr, "SCAN_BYTES", scan_bytes)
    rng = random.Random(7)
    lines = [b'{"text": "' + b"x" * rng.choice([0, 3, 40, 400]) + b'"}' for _ in range(300)]
    lines[50] = b""  # blank lines count as lines
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    ranges = lr.line_ranges(str(path), piece_bytes=500)
    assert len(ranges) > 10
    _check(data, ranges, 500)


def test_a_line_longer_than_a_piece_stays_whole(tmp_path):
    data = b"a\n" + b"b" * 5000 + b"\nc\n"
    (tmp_path / "f.jsonl").write_bytes(data)
    ranges = lr.line_ranges(str(tmp_path / "f.jsonl"), piece_bytes=100)
    assert [(r.start, r.end, r.first_line) for r in ranges] == [(0, 5003, 1), (5003, 5005, 3)]


def test_small_and_empty_files_are_one_range(tmp_path):
    (tmp_path / "small.jsonl").write_bytes(b'{"text": "one"}\n')
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert lr.line_ranges(str(tmp_path / "small.jsonl"), piece_bytes=1000) == [lr.LineRange(0, 16, 1)]
    assert lr.line_ranges(str(tmp_path / "empty.jsonl"), piece_bytes=1000) == [lr.LineRange(0, 0, 1)]
