"""Write the corpus and pairs folders (parquet parts, rejects.jsonl, split.json, manifest.json) deterministically.

Nothing here carries a timestamp or depends on sharding: the same inputs and
config give byte-identical files. (The publish marker, written by
``storage.publish_dir``, is the one place with a time.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mrlkit.layout import EVAL_CORPUS_COLUMNS, PAIR_TEXT_COLUMNS, TEST_EXTRA_COLUMNS
from mrlkit.pairs.build import PairSets

ROW_GROUP = 8192
PART_ROWS = 200_000
META_COLUMNS = ("chunk_id", "method")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_rejects(path: Path, rejects: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for reject in rejects:
            fh.write(json.dumps(reject, sort_keys=True, ensure_ascii=False) + "\n")


def write_parts(folder: Path, columns: dict[str, Any], schema: Any) -> list[str]:
    """``part-NNNNN.parquet`` files of at most PART_ROWS rows, fixed row groups; one (empty) part at least."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pydict(columns, schema=schema)
    names = []
    for start in range(0, max(table.num_rows, 1), PART_ROWS):
        name = f"part-{len(names):05d}.parquet"
        pq.write_table(table.slice(start, PART_ROWS), folder / name, row_group_size=ROW_GROUP)
        names.append(name)
    return names


def write_pairs_dir(out: Path, pairs: PairSets, num_negatives: int) -> None:
    """train/, test/, corpus/ parquet parts and split.json (the manifest is written by the stage)."""
    import pyarrow as pa

    negs = [f"negative_{k}" for k in range(1, num_negatives + 1)]
    train_cols = [*PAIR_TEXT_COLUMNS, *negs, *META_COLUMNS]
    write_parts(out / "train", {c: [r[c] for r in pairs.train] for c in train_cols},
                pa.schema([(c, pa.string()) for c in train_cols]))
    query_id, relevant = TEST_EXTRA_COLUMNS
    test_schema = pa.schema([(query_id, pa.string()), *((c, pa.string()) for c in PAIR_TEXT_COLUMNS),
                             (relevant, pa.list_(pa.string())), *((c, pa.string()) for c in META_COLUMNS)])
    write_parts(out / "test", {c: [r[c] for r in pairs.test] for c in test_schema.names}, test_schema)
    chunk_id, text = EVAL_CORPUS_COLUMNS
    write_parts(out / "corpus", {chunk_id: list(pairs.corpus), text: list(pairs.corpus.values())},
                pa.schema([(chunk_id, pa.string()), (text, pa.string())]))
    write_json(out / "split.json", {**pairs.split, "train_pairs": len(pairs.train), "test_pairs": len(pairs.test),
                                    "eval_corpus": len(pairs.corpus)})


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative posix paths), for manifests."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def content_hash(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
