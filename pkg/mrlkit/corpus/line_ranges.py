"""Byte ranges of a large JSON Lines file that start and end on line boundaries, each with its first line number.

One big file (a BEIR ``corpus.jsonl`` of gigabytes, one exported JSONL) would otherwise be one Ray task: one
CPU however large the cluster, and the whole file in that worker's memory. Cut into ranges, it shards like
many files, and each range's first line number makes the records, ids and rejects exactly those of a
whole-file read, so the outputs do not change. Finding the cuts and counting the lines takes one streaming
read of the file on the driver (memory: one scan buffer); at GB/s that is small next to chunking it at
a few MB/s per core.

Only line-oriented formats can be cut this way: a CSV field may hold a newline, and Parquet is read whole.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITTABLE_FORMATS = ("jsonl", "beir")
SCAN_BYTES = 8 << 20


@dataclass(frozen=True)
class LineRange:
    start: int  # byte offset of the range's first line
    end: int  # byte offset just past its last newline (the file's end for the last range)
    first_line: int  # 1-based number of its first line in the whole file


def line_ranges(uri: str, piece_bytes: int) -> list[LineRange]:
    """Ranges of about ``piece_bytes`` (more where a line is longer) covering the file at ``uri`` in order."""
    from mrlkit import storage

    fs, path = storage.pyarrow_filesystem(uri)
    ranges: list[LineRange] = []
    start, first_line = 0, 1
    newlines = 0  # newlines in the file before the scan position
    pos = 0  # file offset of buf[0]
    with fs.open_input_stream(path) as fh:
        while buf := fh.read(SCAN_BYTES):
            at = 0  # index in buf up to which newlines are counted
            while True:
                # the range may close at the first newline once it holds piece_bytes
                nl = buf.find(b"\n", max(at, start + piece_bytes - 1 - pos))
                if nl < 0:
                    break
                newlines += buf.count(b"\n", at, nl + 1)
                ranges.append(LineRange(start, pos + nl + 1, first_line))
                start, first_line, at = pos + nl + 1, newlines + 1, nl + 1
            newlines += buf.count(b"\n", at)
            pos += len(buf)
    if start < pos or not ranges:
        ranges.append(LineRange(start, pos, first_line))
    return ranges
