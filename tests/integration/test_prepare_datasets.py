"""Question/context data, the reference split of the financial benchmark, group splits and a BEIR folder."""

from __future__ import annotations

import json
import random
from collections import Counter

from mrlkit import layout, storage
from mrlkit.config import load_config
from mrlkit.pairs.stage import PrepareStage
from mrlkit.stage import run_stage

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_reference_split_reproduced_exactly(ray_local, financial_data, tmp_path):
    jsonl = financial_data / "finanical_rag_embedding_dataset.jsonl"
    cfg = load_config(REPO / "ray_jobs/configs/financial.yaml",
                      [f"storage.root={tmp_path}", f"corpus.input={financial_data / 'Financial-QA-10k.csv'}"])
    summary = run_stage(PrepareStage, cfg)
    assert (summary["train_pairs"], summary["test_pairs"]) == (6299, 699)
    uri = layout.pairs_uri(cfg)
    train = layout.read_table(uri, "train").to_pylist()
    test = layout.read_table(uri, "test").to_pylist()
    corpus = layout.read_table(uri, "corpus").to_pylist()
    # DESIGN.md: drop empty questions (7,000 -> 6,998: one row is all empty, one has no question),
    # shuffle with random.Random(42), first 10% test; the eval corpus is every context with its own id.
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = [r for r in rows if r["question"].strip()]
    random.Random(42).shuffle(rows)
    assert [t["anchor"] for t in test] == [" ".join(r["question"].split()) for r in rows[:699]]
    assert [t["anchor"] for t in train] == [" ".join(r["question"].split()) for r in rows[699:]]
    assert len(corpus) == 6998 and len({c["chunk_id"] for c in corpus}) == 6998
    ids = {c["chunk_id"] for c in corpus}
    assert all(len(t["relevant_ids"]) == 1 and t["relevant_ids"][0] in ids for t in test)
    counts = storage.read_json(storage.join(layout.corpus_uri(cfg), "manifest.json"))["counts"]
    assert counts["read"] == 7000 and counts["rejected_by_reason"] == {"empty": 1, "empty_question": 1}


def test_group_split_by_column_keeps_groups_apart(ray_local, tmp_path):
    raw = tmp_path / "qa.csv"
    lines = ["question,context,company"]
    for company in ("AAA", "BBB", "CCC", "DDD", "EEE"):
        for i in range(4):
            lines.append(f"What did {company} report in item {i}?,\"{company} reported figure {i}, in detail.\","
                         f"{company}")
    lines.append("Shared question?,\"AAA reported figure 0, in detail.\",ZZZ")  # same context, other group
    raw.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, ["name=qa", f"storage.root={tmp_path / 'out'}", f"corpus.input={raw}",
                             "corpus.columns.text=context", "corpus.columns.question=question",
                             "corpus.columns.group=company", "corpus.chunking=false", "corpus.dedupe=exact",
                             "pairs.source=columns", "pairs.split.test_fraction=0.4"])
    summary = run_stage(PrepareStage, cfg)
    uri = layout.pairs_uri(cfg)
    train = layout.read_table(uri, "train").to_pylist()
    test = layout.read_table(uri, "test").to_pylist()
    assert len(train) + len(test) == 21 and summary["duplicate_exact"] == 1
    company = lambda row: row["anchor"].split()[2] if row["anchor"] != "Shared question?" else "AAA"  # noqa: E731
    assert not {company(r) for r in train} & {company(r) for r in test}
    assert not {r["chunk_id"] for r in train} & {c for r in test for c in r["relevant_ids"]}
    shared = next(r for r in train + test if r["anchor"] == "Shared question?")
    # the duplicate context's question points at the kept copy, on AAA's side
    assert shared["chunk_id"] == next(r["chunk_id"] for r in train + test if r["anchor"].startswith("What did AAA"))
    assert Counter(json.loads(storage.read_text(storage.join(uri, "split.json")))["test_groups"]) == Counter(
        sorted({company(r) for r in test}))


def test_beir_folder_with_qrels(ray_local, tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"Doc {i}", "text": f"Document {i} explains topic {i} with words."}
            for i in range(12)]
    (beir / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [{"_id": f"q{i}", "text": f"what explains topic {i}?"} for i in range(12)]
    (beir / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n{broken\n")
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(12)] + ["q0\td1\t1", "bad line"]
    (beir / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    cfg = load_config(None, ["name=beir", f"storage.root={tmp_path / 'out'}", f"corpus.input={beir}",
                             "corpus.chunking=false", "pairs.source=qrels", "pairs.split.test_fraction=0.3",
                             "corpus.max_reject_fraction=0.2"])
    summary = run_stage(PrepareStage, cfg)
    assert summary["chunks"] == 12 and summary["rejected_by_reason"] == {"bad_csv_row": 1, "malformed_json": 1}
    uri = layout.pairs_uri(cfg)
    train = layout.read_table(uri, "train").to_pylist()
    test = layout.read_table(uri, "test").to_pylist()
    corpus = {c["chunk_id"] for c in layout.read_table(uri, "corpus").to_pylist()}
    assert corpus == {f"d{i}" for i in range(12)} and test and train
    test_docs = {d for r in test for d in r["relevant_ids"]}
    assert not test_docs & {r["chunk_id"] for r in train}
    q0 = [r for r in train + test if r["anchor"] == "what explains topic 0?"]
    assert q0 and {d for r in q0 for d in r.get("relevant_ids") or [r["chunk_id"]]} <= {"d0", "d1"}


def _qa_csv(path, companies=("AAA", "BBB", "CCC", "DDD", "EEE"), per_company=4):
    lines = ["question,context,company"]
    for company in companies:
        for i in range(per_company):
            lines.append(f"What did {company} report in item {i}?,\"{company} reported figure {i}, in detail.\","
                         f"{company}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hard_negatives_mined_into_train_pairs(ray_local, tiny_model, tmp_path):
    raw = _qa_csv(tmp_path / "qa.csv")
    cfg = load_config(None, ["name=qa-neg", f"storage.root={tmp_path / 'out'}", f"corpus.input={raw}",
                             "corpus.columns.text=context", "corpus.columns.question=question",
                             "corpus.columns.group=company", "corpus.chunking=false", "pairs.source=columns",
                             "pairs.hard_negatives.enabled=true", "pairs.hard_negatives.num_negatives=1",
                             "pairs.hard_negatives.range_min=0", "pairs.hard_negatives.range_max=5",
                             "pairs.hard_negatives.relative_margin=null", f"train.base_model={tiny_model}"])
    run_stage(PrepareStage, cfg)
    train = layout.read_table(layout.pairs_uri(cfg), "train")
    assert train.column_names[:3] == ["anchor", "positive", "negative_1"]
    assert layout.negative_columns(train.column_names) == ["negative_1"]
    test_positives = {r["positive"] for r in layout.read_table(layout.pairs_uri(cfg), "test").to_pylist()}
    for row in train.to_pylist():
        assert row["negative_1"] != row["positive"] and row["negative_1"] not in test_positives


def test_llm_questions_from_a_local_endpoint(ray_local, tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            status = 500 if len(calls) == 1 else 200  # the first request fails and is retried
            passage = body["messages"][-1]["content"]
            payload = {"choices": [{"message": {"content": f"Which passage says {passage[:20]}?"}}]}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        raw = tmp_path / "raw"
        raw.mkdir()
        for i in range(4):
            (raw / f"d{i}.md").write_text(f"# Doc {i}\n\nDocument {i} is about subject number {i} in depth.")
        cfg = load_config(None, ["name=llm", f"storage.root={tmp_path / 'out'}", f"corpus.input={raw}",
                                 "pairs.source=llm", f"pairs.llm.endpoint=http://127.0.0.1:{server.server_port}/v1",
                                 "pairs.llm.model=tiny", "pairs.llm.concurrency=2", "pairs.split.test_fraction=0.25"])
        summary = run_stage(PrepareStage, cfg)
    finally:
        server.shutdown()
        server.server_close()
    assert summary["train_pairs"] + summary["test_pairs"] == 4 and len(calls) == 5
    rows = layout.read_table(layout.pairs_uri(cfg), "train").to_pylist()
    assert all(r["method"] == "llm" and r["anchor"].startswith("Which passage says") for r in rows)


def test_duplicate_document_ids_across_files_are_rejected(ray_local, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text(json.dumps({"id": "x1", "text": "First document with id x1 and words."}) + "\n"
                                 + json.dumps({"id": "x2", "text": "Second document, id x2, more words."}) + "\n")
    (raw / "b.jsonl").write_text(json.dumps({"id": "x1", "text": "Another document reusing the id x1."}) + "\n"
                                 + json.dumps({"id": "x3", "text": "Third document with id x3 and words."}) + "\n")
    cfg = load_config(None, ["name=ids", f"storage.root={tmp_path / 'out'}", f"corpus.input={raw}",
                             "corpus.columns.id=id", "corpus.max_reject_fraction=0.5"])
    summary = run_stage(PrepareStage, cfg)
    assert summary["rejected_by_reason"] == {"duplicate_id": 1} and summary["read"] == 4
    chunks = layout.read_table(layout.corpus_uri(cfg)).to_pylist()
    assert sorted({c["doc_id"] for c in chunks}) == ["x1", "x2", "x3"]
    assert not any("reusing" in c["text"] for c in chunks)
    rejects = storage.read_text(storage.join(layout.corpus_uri(cfg), "rejects.jsonl")).splitlines()
    assert [json.loads(r)["source"] for r in rejects] == ["b.jsonl"] and json.loads(rejects[0])["line"] == 1
