"""The offline demo corpus: one Markdown file per stdlib module and class, each opening with a # heading."""

from __future__ import annotations

import subprocess
import sys

from mrlkit.config_schema import CorpusConfig
from mrlkit.corpus.readers import Document, read_file
from mrlkit.testing.stdlib_corpus import MAX_CHARS_PER_FILE, export_stdlib_docs


def test_export_writes_markdown_with_headings(tmp_path):
    out = export_stdlib_docs(tmp_path / "docs", max_modules=3)
    files = sorted(p.name for p in out.glob("*.md"))
    assert "abc.md" in files and "argparse.md" in files and "argparse.ArgumentParser.md" in files
    for path in out.glob("*.md"):
        text = path.read_text()
        assert text.startswith(f"# {path.stem}\n") and len(text) <= MAX_CHARS_PER_FILE + 200
        doc = next(iter(read_file("text", path.name, path.read_bytes(), CorpusConfig())))
        assert isinstance(doc, Document) and doc.title == path.stem


def test_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mrlkit.testing.stdlib_corpus", str(tmp_path), "--max-modules", "1"],
                         capture_output=True, text=True, check=True)
    assert "wrote" in out.stdout and (tmp_path / "abc.md").is_file()
