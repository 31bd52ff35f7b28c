"""A BEIR folder's queries (``queries.jsonl``: ``_id``, ``text``) and relevance judgements (``qrels/*.tsv``).

The qrels files (train/dev/test) are pooled; :mod:`mrlkit.pairs.build` re-splits them
by group so no document is relevant on both sides. Bad lines are rejected with
file and line, like the corpus readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mrlkit import storage
from mrlkit.corpus.normalize import normalize_line
from mrlkit.corpus.readers import BAD_CSV_ROW, EMPTY, MALFORMED_JSON, MISSING_COLUMN, NOT_UTF8, Reject
from mrlkit.errors import StorageError


@dataclass
class Qrels:
    queries: dict[str, str] = field(default_factory=dict)
    relevant: dict[str, list[str]] = field(default_factory=dict)  # query id -> relevant doc ids (score > 0)
    rejects: list[Reject] = field(default_factory=list)
    lines: int = 0


def read_beir_qrels(folder: str) -> Qrels:
    """Read ``queries.jsonl`` and every ``qrels/*.tsv`` under a BEIR folder."""
    out = Qrels()
    files = storage.list_files(folder)
    tsvs = [f for f in files if f.startswith("qrels/") and f.endswith(".tsv")]
    if "queries.jsonl" not in files or not tsvs:
        raise StorageError(f"{folder}: a BEIR folder for pairs.source 'qrels' needs queries.jsonl and qrels/*.tsv")
    for number, raw in enumerate(storage.read_bytes(storage.join(folder, "queries.jsonl")).split(b"\n"), 1):
        if not raw.strip():
            continue
        out.lines += 1
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.rejects.append(Reject("queries.jsonl", number, "line", NOT_UTF8, "invalid UTF-8"))
            continue
        except json.JSONDecodeError as exc:
            out.rejects.append(Reject("queries.jsonl", number, "line", MALFORMED_JSON, exc.msg))
            continue
        if not isinstance(obj, dict) or "_id" not in obj or "text" not in obj:
            out.rejects.append(Reject("queries.jsonl", number, "line", MISSING_COLUMN, "needs '_id' and 'text'"))
            continue
        text = normalize_line(str(obj["text"] or ""))
        if not text:
            out.rejects.append(Reject("queries.jsonl", number, "line", EMPTY, "empty query"))
            continue
        out.queries[str(obj["_id"])] = text
    for rel in tsvs:
        for number, line in enumerate(storage.read_text(storage.join(folder, rel)).splitlines(), 1):
            parts = line.split("\t")
            if number == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue  # header
            if not line.strip():
                continue
            out.lines += 1
            if len(parts) < 3 or not parts[2].strip().lstrip("-").isdigit():
                out.rejects.append(Reject(rel, number, "line", BAD_CSV_ROW,
                                          "expected query-id<TAB>corpus-id<TAB>score (integer)"))
                continue
            if int(parts[2]) > 0:
                docs = out.relevant.setdefault(parts[0], [])
                if parts[1] not in docs:
                    docs.append(parts[1])
    return out
