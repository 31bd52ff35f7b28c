"""Write the corpus and pairs folders (parquet parts, rejects.jsonl, split.json, manifest.json) deterministically.

Nothing here carries a timestamp or depends on sharding: the same inputs and
config give byte-identical files. (The publish marker, written by
``storage.publish_dir``, is the one place with a time.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mrlkit import storage
from mrlkit.pairs.build import PairSets

ROW_GROUP = 8192
PART_ROWS = 200_000


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_rejects(path: Path, rejects: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for reject in rejects:
            fh.write(json.dumps(reject, sort_keys=True, ensure_ascii=False) + "\n")


def write_parts(folder: Path, tables: Iterable[Any], schema: Any) -> list[str]:
    """``part-NNNNN.parquet`` files of at most PART_ROWS rows from a stream of tables (each at most ROW_GROUP
    rows, in order); one (empty) part at least. Only one table is in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    writer, in_part = None, 0
    try:
        for table in tables:
            offset = 0
            while offset < table.num_rows:
                if writer is None or in_part >= PART_ROWS:
                    if writer is not None:
                        writer.close()
                    names.append(f"part-{len(names):05d}.parquet")
                    writer, in_part = pq.ParquetWriter(folder / names[-1], schema), 0
                take = min(table.num_rows - offset, PART_ROWS - in_part)
                writer.write_table(table.slice(offset, take), row_group_size=ROW_GROUP)
                offset, in_part = offset + take, in_part + take
    finally:
        if writer is not None:
            writer.close()
    if not names:
        names.append("part-00000.parquet")
        pq.write_table(pa.Table.from_pylist([], schema=schema), folder / names[0])
    return names


def write_pairs_dir(out: Path, pairs: PairSets) -> None:
    """train/, test/, corpus/ parquet parts and split.json (the manifest is written by the stage).

    The spools are drained as they are written: their rows are in ``out`` afterwards, and only once on disk.
    """
    for name, rows in (("train", pairs.train), ("test", pairs.test), ("corpus", pairs.corpus)):
        write_parts(out / name, rows.drain(ROW_GROUP), rows.schema)
    write_json(out / "split.json", {**pairs.split, "train_pairs": len(pairs.train), "test_pairs": len(pairs.test),
                                    "eval_corpus": len(pairs.corpus)})


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative posix paths), for manifests."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out[path.relative_to(folder).as_posix()] = storage.sha256_file(path)  # in blocks: parts can be GBs
    return out


def content_hash(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
