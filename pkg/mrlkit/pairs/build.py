"""One pass over the chunk table: pairs from question columns, synthetic pairs, LLM questions or BEIR qrels.

Every pair knows the chunk it came from (``chunk_id``); the split is decided per
group before the pass (see :mod:`mrlkit.pairs.split`), so a pair lands on the side
of its chunk's group. The evaluation corpus is every kept chunk; for a test pair
made by inverse cloze, the corpus holds the chunk *without* the query sentence
(the pair's positive), so the query is not found verbatim.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mrlkit.config_schema import PipelineConfig
from mrlkit.corpus.pipeline import ChunkTable
from mrlkit.corpus.readers import EMPTY_QUESTION, Reject
from mrlkit.errors import MrlkitError
from mrlkit.layout import EVAL_CORPUS_COLUMNS, PAIR_TEXT_COLUMNS, TEST_EXTRA_COLUMNS
from mrlkit.pairs.qrels import Qrels
from mrlkit.pairs.split import UnionFind, pick_test_groups, reference_split
from mrlkit.pairs.spool import RowSpool
from mrlkit.pairs.synthetic import cloze_pair, inverse_cloze, title_pair

log = logging.getLogger(__name__)
LLM_BATCH = 64


META_COLUMNS = ("chunk_id", "method")


def train_schema(num_negatives: int = 0) -> pa.Schema:
    negatives = [f"negative_{k}" for k in range(1, num_negatives + 1)]
    return pa.schema([(c, pa.string()) for c in (*PAIR_TEXT_COLUMNS, *negatives, *META_COLUMNS)])


def test_schema() -> pa.Schema:
    query_id, relevant = TEST_EXTRA_COLUMNS
    return pa.schema([(query_id, pa.string()), *((c, pa.string()) for c in PAIR_TEXT_COLUMNS),
                      (relevant, pa.list_(pa.string())), *((c, pa.string()) for c in META_COLUMNS)])


def corpus_schema() -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in EVAL_CORPUS_COLUMNS])


@dataclass
class PairSets:
    """Everything the pairs folder holds, before writing: spooled to ``folder`` past a bound (see spool.py)."""

    train: RowSpool
    test: RowSpool
    corpus: RowSpool  # (chunk_id, eval text), in corpus order
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    split: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def spooled(cls, folder: Path | None = None) -> PairSets:
        """Empty sets whose rows spill to ``folder`` (None: kept in memory)."""
        return cls(RowSpool(train_schema(), folder), RowSpool(test_schema(), folder),
                   RowSpool(corpus_schema(), folder))


def build_pairs(cfg: PipelineConfig, chunks: ChunkTable, qrels: Qrels | None = None, llm: Any = None,
                spool_folder: Path | None = None) -> PairSets:
    """One streaming pass over ``chunks``; rows past a bound spill to ``spool_folder``."""
    if cfg.pairs.split.mode == "reference":
        return _reference(cfg, chunks, spool_folder)
    out = PairSets.spooled(spool_folder)
    emit = _Emitter(out)
    comp, test_side = _groups(cfg, chunks, _judged(chunks, qrels) if cfg.pairs.source == "qrels" else None)
    source = cfg.pairs.source
    seed = cfg.pairs.split.seed
    methods = cfg.pairs.synthetic.methods
    # Title pairs: one per (document, heading). A document's chunks are consecutive, so only the current
    # document's headings are remembered (a set over the whole corpus grew with it).
    section_doc: str | None = None
    doc_headings: set[str | None] = set()
    pending: list[tuple[str, str, str]] = []
    qrels_texts: dict[str, str] = {}  # the judged documents' texts, for (query, document) pairs after the pass
    judged = _judged_targets(chunks, qrels) if source == "qrels" else set()
    for first, rows in chunks.iter_columns():
        # Per batch, as Python lists: indexing numpy arrays row by row costs more than the work itself.
        stop = first + len(rows["text"])
        keep = chunks.keep[first:stop].tolist()
        targets = chunks.kept_indices(first, stop).tolist()
        for k, (text, target) in enumerate(zip(rows["text"], targets, strict=True)):
            if target < 0:
                continue
            cid = chunks.chunk_ids[target]
            side = "test" if comp[target] in test_side else "train"
            ict = []
            if source == "synthetic" and keep[k] and "inverse_cloze" in methods:
                spans = rows["cloze_spans"][k]
                if spans is None:  # a chunk table staged without them: find the sentences here
                    ict = inverse_cloze(cid, text, cfg.pairs.synthetic, seed)
                else:
                    ict = [cloze_pair(text, spans[j], spans[j + 1]) for j in range(0, len(spans), 2)]
                if side == "test":
                    ict = ict[:1]  # the eval corpus can hold only one "chunk minus sentence" per chunk
            if keep[k]:
                # A test chunk's eval text is the chunk without its query's sentence, so the query is not found
                # verbatim.
                emit.corpus(cid, ict[0].positive if side == "test" and ict else text)
                if cid in judged:
                    qrels_texts[cid] = text
            if source == "columns":
                question = rows["question"][k]
                if not question:
                    where = rows["source"][k]
                    out.rejects.append(Reject(where.rsplit(":", 1)[0], _line(where), "line", EMPTY_QUESTION,
                                              f"column {cfg.corpus.columns.question!r} is empty").to_json())
                    continue
                emit.pair(side, question, text, cid, "question")
            elif source == "synthetic" and keep[k]:
                for pair in ict:
                    emit.pair(side, pair.anchor, pair.positive, cid, pair.method)
                doc_id, heading = rows["doc_id"][k], rows["heading"][k]
                if doc_id != section_doc:
                    section_doc, doc_headings = doc_id, set()
                if "title" in methods and heading not in doc_headings:
                    doc_headings.add(heading)
                    pair = title_pair(rows["title"][k], heading, text)
                    if pair is not None:
                        emit.pair(side, pair.anchor, pair.positive, cid, pair.method)
            elif source == "llm" and keep[k]:
                pending.append((cid, text, side))
                if len(pending) >= LLM_BATCH:
                    _flush_llm(emit, pending, llm)
        emit.flush()
    if pending:
        _flush_llm(emit, pending, llm)
    if source == "qrels":
        _qrels_pairs(emit, chunks, qrels, comp, test_side, qrels_texts)
    emit.flush()
    out.split = {"mode": "group", "group_by": cfg.corpus.columns.group or "doc_id", "seed": seed,
                 "test_fraction": cfg.pairs.split.test_fraction, "test_groups": sorted(test_side),
                 "groups": len(set(comp[i] for i in range(len(comp)) if chunks.keep[i]))}
    return out


class _Emitter:
    """Collects a batch's pairs and eval-corpus rows as column lists, and hands them to the spools in one call each.

    Test queries are numbered in the order they are emitted (``q0000000``, ...).
    """

    def __init__(self, out: PairSets):
        self.out = out
        self._train = _columns(out.train.schema)
        self._test = _columns(out.test.schema)
        self._corpus = _columns(out.corpus.schema)

    def pair(self, side: str, anchor: str, positive: str, cid: str, method: str) -> None:
        self.out.counts[f"{side}_{method}"] += 1
        if side == "train":
            self._row(self._train, anchor=anchor, positive=positive, chunk_id=cid, method=method)
        else:
            self.test_query(f"q{len(self.out.test) + len(self._test['query_id']):07d}", anchor, positive, [cid], cid,
                            method)

    def test_query(self, query_id: str, anchor: str, positive: str, relevant_ids: list[str], cid: str,
                   method: str) -> None:
        self._row(self._test, query_id=query_id, anchor=anchor, positive=positive, relevant_ids=relevant_ids,
                  chunk_id=cid, method=method)

    def corpus(self, cid: str, text: str) -> None:
        self._row(self._corpus, chunk_id=cid, text=text)

    @staticmethod
    def _row(columns: dict[str, list[Any]], **values: Any) -> None:
        for name, column in columns.items():
            column.append(values[name])

    def flush(self) -> None:
        for spool, columns in ((self.out.train, self._train), (self.out.test, self._test),
                               (self.out.corpus, self._corpus)):
            spool.extend(columns)
            for column in columns.values():
                column.clear()


def _columns(schema: pa.Schema) -> dict[str, list[Any]]:
    return {name: [] for name in schema.names}


def _line(source: str) -> int | None:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _judged(chunks: ChunkTable, qrels: Qrels | None) -> set[int]:
    """Chunks some query is judged relevant to (a BEIR test side is drawn from these)."""
    if qrels is None:
        raise MrlkitError("pairs.source 'qrels' needs a BEIR input folder (corpus.format: beir)")
    wanted = {doc for docs in qrels.relevant.values() for doc in docs}
    return {i for i, cid in enumerate(chunks.chunk_ids) if cid in wanted}


def _groups(cfg: PipelineConfig, chunks: ChunkTable, among: set[int] | None = None) -> tuple[list[str], set[str]]:
    """Per chunk, the name of its merged group; and the set of test groups (drawn from ``among`` if given)."""
    # Per chunk, but lean: a document's chunks are consecutive and share one label object, and the first chunk
    # with each exact key comes from numpy rather than a dict (these lists are the pass's memory per chunk).
    labels: list[str] = []
    for _, row in chunks.iter_rows(("doc_id", "group")):
        label = row["group"] or row["doc_id"]
        labels.append(labels[-1] if labels and labels[-1] == label else label)
    first_with_key = np.zeros(0, dtype=np.int64)
    if len(chunks.keys):
        _, first, inverse = np.unique(chunks.keys, return_index=True, return_inverse=True)
        first_with_key = first[inverse.ravel()]
    uf = UnionFind()
    for i in range(len(labels)):
        uf.find(labels[i])
        if chunks.dup_of[i] >= 0:
            uf.union(labels[i], labels[int(chunks.dup_of[i])])
        j = int(first_with_key[i])
        if j != i:  # identical text under two groups (dedupe off): the groups must stay together
            uf.union(labels[i], labels[j])
    comp = [uf.find(label) for label in labels]
    live = Counter(comp[i] for i in range(len(comp)) if chunks.keep[i] and (among is None or i in among))
    return comp, pick_test_groups(live, cfg.pairs.split.test_fraction, cfg.pairs.split.seed)


def _flush_llm(emit: _Emitter, pending: list[tuple[str, str, str]], llm: Any) -> None:
    answers = llm.generate([text for _, text, _ in pending])
    for (cid, text, side), questions in zip(pending, answers, strict=True):
        if questions is None:
            emit.out.counts["llm_failed_chunks"] += 1
            continue
        if not questions:
            emit.out.counts["llm_no_question_chunks"] += 1
        for q in questions[:1] if side == "test" else questions:
            emit.pair(side, q, text, cid, "llm")
    pending.clear()


def _judged_targets(chunks: ChunkTable, qrels: Qrels | None) -> set[str]:
    """The kept chunk ids some query's judged document resolves to (itself, or the copy a duplicate was merged into)."""
    if qrels is None:
        return set()
    index = {cid: i for i, cid in enumerate(chunks.chunk_ids)}
    out = set()
    for doc in {doc for docs in qrels.relevant.values() for doc in docs}:
        i = index.get(doc)
        if i is not None:
            t = chunks.kept_index(i)
            if t >= 0:
                out.add(chunks.chunk_ids[t])
    return out


def _qrels_pairs(emit: _Emitter, chunks: ChunkTable, qrels: Qrels | None, comp: list[str],
                 test_side: set[str], texts: dict[str, str]) -> None:
    """BEIR: (query, relevant document) pairs; a query's side is its documents' (merged) group."""
    if qrels is None:
        raise MrlkitError("pairs.source 'qrels' needs a BEIR input folder (corpus.format: beir)")
    out = emit.out
    index = {cid: i for i, cid in enumerate(chunks.chunk_ids)}
    for qid in sorted(qrels.relevant):
        if qid not in qrels.queries:
            out.counts["qrels_unknown_query"] += 1
            continue
        targets = []
        for doc in qrels.relevant[qid]:
            i = index.get(doc)
            if i is None:
                out.counts["qrels_unknown_document"] += 1
                continue
            t = chunks.kept_index(i)
            if t >= 0 and chunks.chunk_ids[t] not in targets:
                targets.append(chunks.chunk_ids[t])
        if not targets:
            continue
        sides = {"test" if comp[index[t]] in test_side else "train" for t in targets}
        side = "test" if sides == {"test"} else "train"
        if len(sides) > 1:  # documents of one query split across sides: keep it in train only
            targets = [t for t in targets if comp[index[t]] not in test_side]
        if side == "test":
            out.counts["test_qrels"] += 1
            emit.test_query(qid, qrels.queries[qid], texts[targets[0]], targets, targets[0], "qrels")
        else:
            for t in targets:
                emit.pair("train", qrels.queries[qid], texts[t], t, "qrels")


def _reference(cfg: PipelineConfig, chunks: ChunkTable, spool_folder: Path | None) -> PairSets:
    """DESIGN.md's reference split: every row is a pair and its context has its own id.

    The split shuffles all rows at once, so they are held in memory (question/context sets of this
    kind are small; a corpus to chunk takes the streaming group split).
    """
    out = PairSets.spooled(spool_folder)
    rows = []
    for i, row in chunks.iter_rows():
        if not chunks.keep[i]:
            continue
        if not row["question"]:
            out.rejects.append(Reject(row["source"].rsplit(":", 1)[0], _line(row["source"]), "line", EMPTY_QUESTION,
                                      f"column {cfg.corpus.columns.question!r} is empty").to_json())
            continue
        rows.append((chunks.chunk_ids[i], row["question"], row["text"]))
    train, test = reference_split(rows, cfg.pairs.split.test_fraction, cfg.pairs.split.seed)
    emit = _Emitter(out)
    for cid, _question, text in rows:
        emit.corpus(cid, text)
    for cid, question, text in train:
        emit.pair("train", question, text, cid, "question")
    for cid, question, text in test:
        emit.pair("test", question, text, cid, "question")
    emit.flush()
    out.split = {"mode": "reference", "seed": cfg.pairs.split.seed, "test_fraction": cfg.pairs.split.test_fraction,
                 "rows": len(rows), "train": len(train), "test": len(test),
                 "rule": "drop empty questions; random.Random(seed).shuffle(rows); first int(n*test_fraction) are test"}
    return out
