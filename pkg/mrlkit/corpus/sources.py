"""Find the input files of a corpus (local path or ``s3://`` prefix) and the format of each.

Fails at once, with one clear :class:`~mrlkit.errors.MrlkitError`, when the input
is missing, the bucket cannot be reached or nothing matches; this runs before any
Ray work starts. Files that match the glob but have no readable format become
rejects (never silently skipped); hidden files (``.x``, ``_x``) are skipped and counted.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

from mrlkit import storage
from mrlkit.config_schema import CorpusConfig
from mrlkit.corpus.readers import UNSUPPORTED, Reject
from mrlkit.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".md": "text", ".markdown": "text", ".txt": "text", ".rst": "text", ".text": "text",
}
BEIR_CORPUS = "corpus.jsonl"


@dataclass(frozen=True)
class InputFile:
    """One file to read: its full URI, its name relative to ``corpus.input`` and its concrete format."""

    uri: str
    rel: str
    fmt: str
    size: int


@dataclass(frozen=True)
class Inputs:
    files: list[InputFile]
    rejects: list[Reject]
    skipped_hidden: int
    is_beir: bool
    root: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def find_inputs(cfg: CorpusConfig) -> Inputs:
    """List and classify the input files; raise one clear error when there is nothing to read."""
    if not cfg.input:
        raise ConfigError("corpus.input: required for prepare (a local path or s3://bucket/prefix)")
    uri = cfg.input.rstrip("/")
    if storage.is_s3_uri(uri):
        try:
            storage.check_reachable(uri)  # unreachable endpoint / missing bucket: one clear StorageError now
        except StorageError as exc:
            raise StorageError(f"corpus.input: {exc}") from None
    entries = _list(uri)
    if entries is None:
        raise StorageError(f"corpus.input {cfg.input!r}: no such file or folder")
    if len(entries) == 1 and entries[0][0] == "":
        name = PurePosixPath(uri).name
        return _classify(cfg, uri.rsplit("/", 1)[0], [(name, entries[0][1])], is_beir=False)
    names = {rel for rel, _ in entries}
    is_beir = cfg.format == "beir" or (cfg.format == "auto" and BEIR_CORPUS in names and "queries.jsonl" in names)
    if is_beir:
        if BEIR_CORPUS not in names:
            raise StorageError(f"corpus.input {cfg.input!r}: format 'beir' needs {BEIR_CORPUS} in the folder")
        size = dict(entries)[BEIR_CORPUS]
        return Inputs([InputFile(storage.join(uri, BEIR_CORPUS), BEIR_CORPUS, "beir", size)], [], 0, True, uri)
    return _classify(cfg, uri, entries, is_beir=False)


def _list(uri: str) -> list[tuple[str, int]] | None:
    """(relative path, size) of every file under ``uri``; ``[("", size)]`` for a single file; None if absent."""
    import pyarrow.fs as pafs

    fs, path = storage.pyarrow_filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [("", info.size)]
        if info.type == pafs.FileType.NotFound and not storage.is_s3_uri(uri):
            return None
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        found = [(i.path[len(path):].lstrip("/"), i.size) for i in fs.get_file_info(selector)
                 if i.type == pafs.FileType.File]
    except OSError as exc:
        raise StorageError(f"corpus.input {uri!r}: cannot list ({str(exc).splitlines()[0]})") from None
    return sorted(found) or None


def _matches(rel: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    # "**/*.md" also matches files at the top level, as in a shell with globstar.
    return pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:])


def _classify(cfg: CorpusConfig, root: str, entries: list[tuple[str, int]], *, is_beir: bool) -> Inputs:
    files: list[InputFile] = []
    rejects: list[Reject] = []
    hidden = 0
    single = len(entries) == 1 and "/" not in entries[0][0]
    for rel, size in entries:
        if any(part.startswith((".", "_")) for part in PurePosixPath(rel).parts):
            hidden += 1
            continue
        if not single and not _matches(rel, cfg.glob):
            continue
        fmt = cfg.format if cfg.format != "auto" else EXTENSIONS.get(PurePosixPath(rel).suffix.lower())
        if fmt is None:
            rejects.append(Reject(rel, None, "line", UNSUPPORTED,
                                  f"unknown file type; known: {', '.join(sorted(EXTENSIONS))} "
                                  "(or set corpus.format)"))
            continue
        files.append(InputFile(storage.join(root, rel), rel, fmt, size))
    if hidden:
        log.info("prepare: skipped %d hidden files (names starting with '.' or '_')", hidden)
    if not files:
        raise StorageError(f"corpus.input {cfg.input!r}: no readable files match glob {cfg.glob!r} "
                           f"(format {cfg.format!r}; {len(entries)} files present, {len(rejects)} of unknown type)")
    return Inputs(files, rejects, hidden, is_beir, root)
