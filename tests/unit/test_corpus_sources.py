"""Finding input files: formats by extension, glob, hidden files, BEIR folders, and fast clear failures."""

from __future__ import annotations

import pytest

from mrlkit.config_schema import CorpusConfig
from mrlkit.corpus.sources import find_inputs
from mrlkit.errors import ConfigError, StorageError


def _tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return root


def test_formats_by_extension_and_rejects_for_unknown(tmp_path):
    _tree(tmp_path, ["a.jsonl", "b/c.csv", "b/d.parquet", "e.md", "f.txt", "g.bin", ".git/config", "_tmp/x.md"])
    found = find_inputs(CorpusConfig(input=str(tmp_path)))
    assert [(f.rel, f.fmt) for f in found.files] == [("a.jsonl", "jsonl"), ("b/c.csv", "csv"),
                                                     ("b/d.parquet", "parquet"), ("e.md", "text"), ("f.txt", "text")]
    assert [(r.source, r.code) for r in found.rejects] == [("g.bin", "unsupported_file")]
    assert found.skipped_hidden == 2 and not found.is_beir


def test_glob_and_explicit_format(tmp_path):
    _tree(tmp_path, ["top.md", "sub/deep.md", "sub/skip.txt", "notes.log"])
    found = find_inputs(CorpusConfig(input=str(tmp_path), glob="**/*.md"))
    assert [f.rel for f in found.files] == ["sub/deep.md", "top.md"]
    logs = find_inputs(CorpusConfig(input=str(tmp_path), glob="*.log", format="text"))
    assert [(f.rel, f.fmt) for f in logs.files] == [("notes.log", "text")]


def test_single_file_and_beir_folder(tmp_path):
    _tree(tmp_path, ["one.csv", "beir/corpus.jsonl", "beir/queries.jsonl", "beir/qrels/test.tsv"])
    single = find_inputs(CorpusConfig(input=str(tmp_path / "one.csv")))
    assert [(f.rel, f.fmt) for f in single.files] == [("one.csv", "csv")]
    beir = find_inputs(CorpusConfig(input=str(tmp_path / "beir")))
    assert beir.is_beir and [(f.rel, f.fmt) for f in beir.files] == [("corpus.jsonl", "beir")]


def test_missing_or_empty_input_fails_clearly(tmp_path):
    with pytest.raises(StorageError, match="no such file or folder"):
        find_inputs(CorpusConfig(input=str(tmp_path / "missing")))
    _tree(tmp_path, ["only.bin"])
    with pytest.raises(StorageError, match="no readable files match glob"):
        find_inputs(CorpusConfig(input=str(tmp_path)))
    with pytest.raises(ConfigError, match="corpus.input"):
        find_inputs(CorpusConfig())
    with pytest.raises(StorageError, match="needs corpus.jsonl"):
        find_inputs(CorpusConfig(input=str(tmp_path), format="beir"))
