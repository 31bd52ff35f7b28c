"""Stage ``prepare`` end to end on a real local Ray and a real local S3 server.

One mixed folder (Markdown, text, JSONL, CSV, Parquet, plus bad input of every
class and duplicates across files) is prepared locally; the same folder uploaded
to S3 must give byte-identical outputs; a re-run must too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrlkit import layout, s3, storage
from mrlkit.config import config_from_dict
from mrlkit.corpus.blocks import shard_plan
from mrlkit.corpus.chunking import load_tokenizer
from mrlkit.corpus.line_ranges import line_ranges
from mrlkit.corpus.pipeline import TooManyRejects
from mrlkit.corpus.sources import find_inputs
from mrlkit.errors import MrlkitError, StorageError
from mrlkit.pairs.stage import PrepareStage
from mrlkit.stage import run_stage

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SECTION = ("Matryoshka representation learning trains one embedding whose prefixes are embeddings too. "
           "The loss sums a ranking loss at every truncation dimension. Small prefixes serve fast search, "
           "while the full vector keeps the best quality for re-ranking the candidates.")


def _markdown(topic: str, paragraphs: int = 4) -> str:
    body = "\n\n".join(f"{SECTION} Paragraph {i} is about {topic} number {i}." for i in range(paragraphs))
    return f"# {topic.title()}\n\n{body}\n"


def write_mixed_corpus(root: Path) -> Path:
    """Good documents in every format, each bad-input class once, and duplicates across files."""
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "alpha.md").write_text(_markdown("alpha"))
    (root / "docs" / "copy_of_alpha.md").write_text(_markdown("alpha"))  # exact duplicate, another shard
    near = _markdown("beta").replace("Paragraph 2 is about", "Paragraph 2 is all about")
    (root / "docs" / "beta.md").write_text(_markdown("beta"))
    (root / "docs" / "beta_edit.md").write_text(near)  # near duplicate of one chunk, another shard
    (root / "docs" / "gamma.txt").write_text("Plain text notes about gamma rays and the sky. " * 3)
    (root / "docs" / "empty.md").write_text("  \n\n ")
    (root / "docs" / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "docs" / "huge.md").write_text("# Huge\n\n" + "word " * 3000)
    (root / "docs" / "image.png").write_bytes(b"\x89PNG")
    (root / "docs" / ".hidden.md").write_text("skipped")
    lines = [json.dumps({"text": f"JSON document {i} talks about delta topics and more words here.",
                         "title": f"Delta {i}"}) for i in range(4)]
    lines.insert(2, '{"text": "unterminated')
    lines.append(json.dumps({"body": "wrong column"}))
    (root / "rows.jsonl").write_text("\n".join(lines) + "\n")
    (root / "rows.csv").write_text("text,title\n\"CSV document one, about epsilon values.\",Eps 1\n"
                                   "too,many,fields\nCSV document two about zeta functions.,Zeta\n")
    pq.write_table(pa.table({"text": [f"Parquet row {i} describes eta and theta in some detail." for i in range(3)],
                             "title": ["P0", "P1", "P2"]}), root / "rows.parquet")
    return root


def _cfg(root: str, input_uri: str, **extra) -> object:
    data = {"name": "mixed", "storage": {"root": root},
            "corpus": {"input": input_uri, "chunk_tokens": 48, "chunk_overlap_tokens": 8,
                       "max_document_chars": 10_000, "max_reject_fraction": 0.6, "near_duplicate_threshold": 0.7,
                       "columns": {"text": "text", "title": "title"}},
            "pairs": {"source": "synthetic", "synthetic": {"min_query_words": 4}, "split": {"test_fraction": 0.3}}}
    for key, value in extra.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    return config_from_dict(data)


def _outputs(cfg) -> dict[str, bytes]:
    """Every output file's bytes except the publish markers (their only difference is the time)."""
    out = {}
    for uri in (layout.corpus_uri(cfg), layout.pairs_uri(cfg)):
        for rel in storage.list_files(uri):
            if rel != storage.MARKER:
                out[f"{uri.rsplit('/', 2)[-2]}/{rel}"] = storage.read_bytes(storage.join(uri, rel))
    return out


@pytest.fixture(scope="module")
def mixed(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("mixed")
    corpus = write_mixed_corpus(base / "raw")
    cfg = _cfg(str(base / "out"), str(corpus))
    summary = run_stage(PrepareStage, cfg)
    return corpus, cfg, summary, _outputs(cfg)


def test_every_format_read_and_every_bad_input_rejected(mixed):
    _, cfg, summary, _ = mixed
    chunks = layout.read_table(layout.corpus_uri(cfg)).to_pylist()
    assert list(chunks[0]) == list(layout.CHUNK_COLUMNS)
    sources = {c["source"] for c in chunks}
    assert {"docs/alpha.md", "docs/beta.md", "docs/gamma.txt", "rows.jsonl:1", "rows.csv:2",
            "rows.parquet:1"} <= sources
    rejects = [json.loads(line) for line in
               storage.read_text(storage.join(layout.corpus_uri(cfg), "rejects.jsonl")).splitlines()]
    found = {(r["source"], r.get("line", r.get("row")), r["code"]) for r in rejects}
    assert found == {
        ("docs/image.png", None, "unsupported_file"), ("docs/empty.md", None, "empty"),
        ("docs/latin1.txt", 1, "not_utf8"), ("docs/huge.md", None, "oversize"),
        ("rows.jsonl", 3, "malformed_json"), ("rows.jsonl", 6, "missing_column"), ("rows.csv", 3, "bad_csv_row")}
    assert all(r["reason"].startswith(r["code"] + ": ") and len(r["reason"]) > len(r["code"]) + 5 for r in rejects)
    manifest = storage.read_json(storage.join(layout.corpus_uri(cfg), "manifest.json"))
    counts = manifest["counts"]
    assert counts["rejected"] == 7 and counts["rejected_by_reason"]["oversize"] == 1 and counts["empty"] == 1
    assert counts["documents"] == 14 and counts["read"] == 14 + 7
    assert counts["skipped_hidden_files"] == 1
    assert summary["rejected"] == 7 and summary["chunks"] == counts["chunks"] == len(chunks)
    assert set(manifest["hashes"]) >= {"corpus_config", "pairs_config", "inputs", "content"}


def test_chunks_within_token_budget(mixed):
    _, cfg, _, _ = mixed
    texts = [c["text"] for c in layout.read_table(layout.corpus_uri(cfg)).to_pylist()]
    tokenizer = load_tokenizer(MODEL)
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert max(counts) <= 48 and sum(c > 30 for c in counts) >= 3  # long documents were really cut


def test_duplicates_removed_across_shards(mixed):
    _, cfg, summary, _ = mixed
    files = find_inputs(cfg.corpus).files
    plan = shard_plan([f.size for f in files], cpus=2)  # ray_local has 2 CPUs
    block_of = dict(zip([f.rel for f in files], np.repeat(np.arange(len(plan)), plan), strict=True))
    assert block_of["docs/alpha.md"] != block_of["docs/copy_of_alpha.md"]  # the duplicates really cross shards
    chunks = layout.read_table(layout.corpus_uri(cfg)).to_pylist()
    assert summary["duplicate_exact"] >= 3 and summary["duplicate_near"] >= 1
    assert not any(c["doc_id"] == "docs/copy_of_alpha.md" for c in chunks)  # every chunk duplicates alpha.md's
    texts = [" ".join(c["text"].casefold().split()) for c in chunks]
    assert len(texts) == len(set(texts))


def test_pairs_split_without_leakage(mixed):
    _, cfg, _, _ = mixed
    uri = layout.pairs_uri(cfg)
    train = layout.read_table(uri, "train").to_pylist()
    test = layout.read_table(uri, "test").to_pylist()
    corpus = {r["chunk_id"]: r["text"] for r in layout.read_table(uri, "corpus").to_pylist()}
    assert train and test
    doc_of = {c["chunk_id"]: c["doc_id"] for c in layout.read_table(layout.corpus_uri(cfg)).to_pylist()}
    train_docs = {doc_of[r["chunk_id"]] for r in train}
    test_docs = {doc_of[r["chunk_id"]] for r in test}
    assert not train_docs & test_docs
    assert not {r["chunk_id"] for r in train} & {r["chunk_id"] for r in test}
    for row in test:
        assert row["relevant_ids"] and all(rid in corpus for rid in row["relevant_ids"])
        if row["method"] == "inverse_cloze":  # the query sentence is not in its eval document
            assert row["anchor"] not in corpus[row["relevant_ids"][0]]
    split = storage.read_json(storage.join(uri, "split.json"))
    assert split["mode"] == "group" and split["train_pairs"] == len(train) and split["test_pairs"] == len(test)


def test_rerun_gives_identical_outputs(mixed):
    _, cfg, _, first = mixed
    run_stage(PrepareStage, cfg)
    assert _outputs(cfg) == first


@pytest.mark.parametrize("plan", ["one file a block", "one block"])
def test_outputs_do_not_depend_on_how_files_are_sharded(mixed, monkeypatch, plan):
    # Pass 1's blocks follow the CPU count and the file sizes; not a byte of what is published may.
    from mrlkit.corpus import blocks, pipeline

    _, cfg, _, first = mixed
    # small data pages: where a page ends must follow the rows, not the tables pass 1 happened to send
    monkeypatch.setattr(pipeline, "DATA_PAGE_BYTES", 512)
    monkeypatch.setattr(blocks, "shard_plan",
                        lambda sizes, cpus: [1] * len(sizes) if plan == "one file a block" else [len(sizes)])
    run_stage(PrepareStage, cfg)
    assert _outputs(cfg) == first


def test_a_large_jsonl_read_in_ranges_of_lines_gives_identical_outputs(mixed, monkeypatch):
    # A JSON Lines file over BLOCK_BYTES is cut into ranges of lines so one big file shards over every
    # worker; line numbers (in ids, sources and rejects) must come out as in a whole-file read.
    from mrlkit.corpus import blocks

    _, cfg, _, first = mixed
    cut: dict[str, list] = {}

    def recording_line_ranges(uri, piece_bytes):
        cut[uri.rsplit("/", 1)[-1]] = ranges = line_ranges(uri, piece_bytes)
        return ranges

    monkeypatch.setattr(blocks, "BLOCK_BYTES", 300)  # rows.jsonl (424 bytes, 7 lines) is "large"
    monkeypatch.setattr(blocks, "MIN_BLOCK_BYTES", 60)
    monkeypatch.setattr(blocks, "line_ranges", recording_line_ranges)
    run_stage(PrepareStage, cfg)
    assert len(cut["rows.jsonl"]) >= 4  # really read in several ranges (and some with bad lines in them)
    assert _outputs(cfg) == first  # rejects.jsonl included: the bad lines keep their numbers


def test_pairs_spilled_to_disk_give_identical_outputs(mixed, monkeypatch):
    # The pairs pass keeps a bounded number of rows in memory and spools the rest to disk (memory does
    # not grow with the corpus); where the bound falls must not change a byte of what is published.
    from mrlkit.pairs import spool

    _, cfg, _, first = mixed
    monkeypatch.setattr(spool, "MAX_ROWS_IN_MEMORY", 3)
    summary = run_stage(PrepareStage, cfg)
    assert summary["train_pairs"] > 3 * 2 and summary["eval_corpus"] > 3 * 2  # both really spilled
    assert _outputs(cfg) == first


def test_cloze_sentences_found_by_workers_match_the_driver(mixed, monkeypatch):
    # Shard workers find each chunk's inverse-cloze sentences (the costly half of the pairs pass) so that it
    # runs in parallel; a chunk table staged without them makes the driver find them. Both give the same bytes.
    import dataclasses

    _, cfg, _, first = mixed
    setup = PrepareStage.setup

    def setup_without_worker_cloze(self):
        setup(self)
        assert self.options.cloze is not None  # the workers would have found them
        self.options = dataclasses.replace(self.options, cloze=None)

    monkeypatch.setattr(PrepareStage, "setup", setup_without_worker_cloze)
    summary = run_stage(PrepareStage, cfg)
    assert summary["train_pairs"] and summary["test_pairs"]
    assert _outputs(cfg) == first


def test_s3_input_and_output_match_local(mixed, s3_root, monkeypatch):
    from mrlkit.corpus import blocks

    corpus, _, _, local = mixed
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 300)  # rows.jsonl is cut into ranges: ranged reads from S3 too
    monkeypatch.setattr(blocks, "MIN_BLOCK_BYTES", 60)
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        storage.upload_file(path, storage.join(s3_root, "raw", path.relative_to(corpus).as_posix()))
    cfg = _cfg(s3_root, storage.join(s3_root, "raw"))
    summary = run_stage(PrepareStage, cfg)
    assert summary["corpus"].startswith("s3://")
    remote = _outputs(cfg)
    assert remote.keys() == local.keys()
    differing = {k for k in remote if remote[k] != local[k]}
    # the manifests name their input URI; every data file is byte-identical
    assert differing <= {"corpora/manifest.json", "pairs/manifest.json"}
    assert storage.is_published(layout.pairs_uri(cfg))


def test_too_many_rejects_fails_with_top_reasons_and_publishes_nothing(ray_local, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "bad.jsonl").write_text("{oops\n" * 5 + json.dumps({"text": "one good line of text"}) + "\n")
    cfg = _cfg(str(tmp_path / "out"), str(raw), corpus__max_reject_fraction=0.2)
    with pytest.raises(TooManyRejects, match=r"5 of 6 .*malformed_json x5.*bad.jsonl:1"):
        run_stage(PrepareStage, cfg)
    assert not storage.exists(layout.corpus_uri(cfg)) and not storage.exists(layout.pairs_uri(cfg))


def test_missing_input_fails_at_once(tmp_path):
    stage = PrepareStage(_cfg(str(tmp_path / "out"), str(tmp_path / "nope")))
    with pytest.raises(StorageError, match=r"corpus.input .*nope.*no such file or folder"):
        stage.setup()
    assert stage.work is None  # failed before starting any work


def test_missing_bucket_fails_at_once(rclone_server, tmp_path):
    stage = PrepareStage(_cfg(str(tmp_path / "out"), "s3://no-such-bucket-here/raw"))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        stage.setup()


def test_unreachable_endpoint_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MRLKIT_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    s3.forget_clients()
    try:
        with pytest.raises(StorageError, match="cannot reach S3 endpoint http://127.0.0.1:9"):
            PrepareStage(_cfg(str(tmp_path / "out"), "s3://bucket/raw")).setup()
    finally:
        s3.forget_clients()


@pytest.mark.parametrize(("extra", "message"), [
    ({"pairs__source": "columns", "corpus__columns": {"text": "c", "question": "q"}}, "corpus.chunking"),
    ({"pairs__source": "qrels", "corpus__format": "csv", "corpus__chunking": False}, "BEIR"),
])
def test_inconsistent_options_rejected_before_work(tmp_path, extra, message):
    with pytest.raises(MrlkitError, match=message):
        PrepareStage(_cfg(str(tmp_path), str(tmp_path), **extra))
