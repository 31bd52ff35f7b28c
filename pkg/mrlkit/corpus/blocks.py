"""How pass 1 of corpus processing splits its input into Ray Data blocks.

A block is a list of files, or of ranges of lines of a large JSON Lines file
(:mod:`mrlkit.corpus.line_ranges`), sized by bytes so that memory stays flat as corpora grow and the
workers finish together.
"""

from __future__ import annotations

import logging
from typing import Any

from mrlkit.corpus.line_ranges import SPLITTABLE_FORMATS, LineRange, line_ranges
from mrlkit.corpus.sources import InputFile, Inputs

log = logging.getLogger(__name__)

BLOCK_BYTES = 16_000_000
MIN_BLOCK_BYTES = 2_000_000


def shard_plan(sizes: list[int], cpus: int) -> list[int]:
    """How pass 1 splits the input files (``sizes`` in bytes, in order) into Ray Data blocks: files per block.

    - At most about ``BLOCK_BYTES`` of input a block: a block's chunks travel to the driver as one table,
      so a fixed count would make worker and driver memory grow with the corpus (measured: driver +120 MB
      and Ray processes +175 MB from 150 MB to 300 MB of text with 8 blocks; flat with this).
    - At least about 4 blocks a CPU, so a small corpus still spreads over every worker.
    - Each block takes ``1 / cpus`` of the bytes still left once that is smaller (guided self-scheduling;
      with one CPU only the last block is affected): blocks shrink towards the end, so the workers finish
      together. With equal 16 MB blocks (~4.6 s each), 200 MB on 2 CPUs ran 7 blocks on one worker and 6
      on the other, which idled 1.5-3 s at the end; the second worker also starts ~1.8 s late (Ray Data's
      start-up). Pass 1 there, busy CPU time / (2 CPUs x wall), 3 runs each: 0.89-0.92 with equal blocks,
      0.91-0.95 guided, 0.91-0.92 with ``1 / (2 * cpus)`` (more, smaller tasks).
    - No block under ``MIN_BLOCK_BYTES`` (unless the whole corpus is small): each task costs ~0.2 s of
      scheduling besides its work.

    A file is never split, so a block holds at least one file whatever its size.
    """
    total = sum(sizes)
    largest = min(BLOCK_BYTES, total / (4 * cpus))
    smallest = min(MIN_BLOCK_BYTES, largest)
    plan: list[int] = []
    remaining, files, taken = total, 0, 0
    for size in sizes:
        if files == 0:  # opening a block: its target depends on what is left
            target = max(smallest, min(largest, remaining / cpus))
        files, taken = files + 1, taken + size
        if taken >= target:
            plan.append(files)
            remaining -= taken
            files, taken = 0, 0
    if files:
        plan.append(files)
    return plan


def file_blocks(inputs: Inputs, cpus: int) -> list[Any]:
    """Pass 1's input as Arrow tables, one per block of :func:`shard_plan`: a row per file, or per range of
    a JSON Lines file over ``BLOCK_BYTES`` (columns: see :func:`mrlkit.corpus.shard.process_files`)."""
    import pyarrow as pa

    pieces: list[tuple[InputFile, LineRange | None, bool]] = []  # (file, range or None: whole, last of file)
    for f in inputs.files:
        ranges = _line_ranges_or_none(f) if f.fmt in SPLITTABLE_FORMATS and f.size > BLOCK_BYTES else None
        if ranges:
            log.info("prepare: %s (%.0f MB) is read in %d ranges of lines", f.rel, f.size / 1e6, len(ranges))
            pieces += [(f, r, i == len(ranges) - 1) for i, r in enumerate(ranges)]
        else:
            pieces.append((f, None, True))
    sizes = [r.end - r.start if r else f.size for f, r, _ in pieces]
    blocks, start = [], 0
    for count in shard_plan(sizes, cpus):
        rows = pieces[start:start + count]
        blocks.append(pa.table({
            "uri": [f.uri for f, _, _ in rows], "rel": [f.rel for f, _, _ in rows], "fmt": [f.fmt for f, _, _ in rows],
            "start": pa.array([r.start if r else 0 for _, r, _ in rows], pa.int64()),
            "end": pa.array([r.end if r else -1 for _, r, _ in rows], pa.int64()),
            "first_line": pa.array([r.first_line if r else 1 for _, r, _ in rows], pa.int64()),
            "last": pa.array([last for _, _, last in rows], pa.bool_())}))
        start += count
    return blocks


def _line_ranges_or_none(f: InputFile) -> list[LineRange] | None:
    """:func:`line_ranges` of a large JSON Lines file; None if it cannot be read here: the file is then
    read whole by a worker, whose reject names the error (as for any unreadable file)."""
    try:
        return line_ranges(f.uri, MIN_BLOCK_BYTES)
    except OSError as exc:
        log.warning("prepare: cannot scan %s for line ranges (%s); it is read whole", f.rel, str(exc).splitlines()[0])
        return None
