"""The one place that knows local paths vs ``s3://bucket/prefix``.

Every stage reads and writes through these functions, given full URIs
(``/data/mrl/corpora/x/part-0.parquet`` or ``s3://bucket/mrl/corpora/x/part-0.parquet``).
How S3 is reached (endpoint and credentials from the environment, retries) is :mod:`mrlkit.s3`.

Atomic publish: a multi-file output (a shard set, a model folder) is complete
only once its ``_PUBLISHED.json`` marker exists; the marker is written last
and lists every file with its size and sha256. Locally the folder is built
aside and renamed into place; on S3 the old marker is removed first, so a
reader never takes a half-written output for a finished one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mrlkit.errors import StorageError, StorageNotFound
from mrlkit.s3 import S3Settings, attempts, s3_client, with_retries

log = logging.getLogger(__name__)

MARKER = "_PUBLISHED.json"


# -- URIs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A parsed storage URI: ``scheme`` is ``file`` (``path`` set) or ``s3`` (``bucket``/``key`` set)."""

    scheme: str
    path: str = ""
    bucket: str = ""
    key: str = ""


def parse_uri(uri: str) -> Location:
    """Parse a local path or ``s3://bucket/key``; raise ValueError naming what is allowed."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("must be a local path or s3://bucket/prefix, got an empty value")
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        bucket = parsed.netloc
        if not bucket or not _valid_bucket(bucket):
            raise ValueError(f"{uri!r} has no valid bucket name; expected s3://bucket/prefix")
        return Location("s3", bucket=bucket, key=parsed.path.lstrip("/").rstrip("/"))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ValueError(f"{uri!r} uses unsupported scheme {scheme!r}; use a local path or s3://bucket/prefix")
    if uri.startswith("file:"):
        raise ValueError(f"{uri!r}: write local paths plainly, without file:")
    return Location("file", path=os.path.abspath(os.path.expanduser(uri)))


def _valid_bucket(name: str) -> bool:
    return 3 <= len(name) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in name)


def is_s3_uri(uri: str) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (works for both schemes)."""
    out = uri.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def pyarrow_filesystem(uri: str) -> tuple[Any, str]:
    """A ``pyarrow.fs.FileSystem`` and the path inside it, for Ray Data and Ray Train.

    pyarrow ignores the endpoint environment variables, so the endpoint is passed explicitly.
    """
    import pyarrow.fs as pafs

    loc = parse_uri(uri)
    if loc.scheme == "file":
        return pafs.LocalFileSystem(), loc.path
    settings = S3Settings.from_env()
    kwargs: dict[str, Any] = {"region": settings.region,
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts()),
                              "connect_timeout": 3, "request_timeout": 60}
    if settings.access_key:
        kwargs.update(access_key=settings.access_key, secret_key=settings.secret_key,
                      session_token=settings.session_token)
    if settings.endpoint:
        ep = urlparse(settings.endpoint)
        kwargs.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
    return pafs.S3FileSystem(**kwargs), f"{loc.bucket}/{loc.key}".rstrip("/")


# -- object operations -------------------------------------------------------------------


def _s3(uri: str) -> tuple[Location, S3Settings, Any]:
    settings = S3Settings.from_env()
    return parse_uri(uri), settings, s3_client(settings)


def read_bytes(uri: str) -> bytes:
    loc = parse_uri(uri)
    if loc.scheme == "file":
        try:
            return Path(loc.path).read_bytes()
        except FileNotFoundError:
            raise StorageNotFound(f"{uri}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read ({exc.strerror})") from None
    loc, settings, client = _s3(uri)
    return with_retries(lambda: client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read(), uri, settings)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object atomically (a local file is written aside and renamed)."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        path = Path(loc.path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"{uri}: cannot write ({exc.strerror})") from None
        return
    loc, settings, client = _s3(uri)
    with_retries(lambda: client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data), uri, settings)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def exists(uri: str) -> bool:
    loc = parse_uri(uri)
    if loc.scheme == "file":
        return os.path.exists(loc.path)
    loc, settings, client = _s3(uri)

    def head() -> bool:
        from botocore.exceptions import ClientError

        try:
            client.head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    return with_retries(head, uri, settings)


def list_files(uri: str) -> list[str]:
    """Every file under a prefix, as sorted paths relative to it ('' if nothing is there)."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        base = Path(loc.path)
        if not base.is_dir():
            return []
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    loc, settings, client = _s3(uri)
    prefix = f"{loc.key}/" if loc.key else ""

    def collect() -> list[str]:
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            keys.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
        return sorted(keys)

    return with_retries(collect, uri, settings)


def delete(uri: str) -> None:
    """Delete a file/object or everything under a prefix; missing is fine."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        try:
            if os.path.isdir(loc.path):
                shutil.rmtree(loc.path)
            elif os.path.exists(loc.path):
                os.remove(loc.path)
        except OSError as exc:
            raise StorageError(f"{uri}: cannot delete ({exc.strerror})") from None
        return
    loc, settings, client = _s3(uri)
    keys = [join(loc.key, rel) for rel in list_files(uri)] if loc.key else []
    if exists(uri):
        keys.append(loc.key)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start:start + 1000]]
        with_retries(lambda b=batch: client.delete_objects(Bucket=loc.bucket, Delete={"Objects": b}), uri, settings)


def upload_file(local_path: str | Path, uri: str) -> None:
    """Copy one local file to a URI (multipart for large files on S3)."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        try:
            Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{loc.path}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, loc.path)
        except OSError as exc:
            raise StorageError(f"{uri}: cannot write ({exc.strerror})") from None
        return
    from boto3.s3.transfer import TransferConfig

    loc, settings, client = _s3(uri)
    transfer = TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20)
    with_retries(lambda: client.upload_file(str(local_path), loc.bucket, loc.key, Config=transfer), uri, settings)


def download_file(uri: str, local_path: str | Path) -> None:
    loc = parse_uri(uri)
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    if loc.scheme == "file":
        try:
            shutil.copyfile(loc.path, local_path)
        except FileNotFoundError:
            raise StorageNotFound(f"{uri}: no such file") from None
        return
    loc, settings, client = _s3(uri)
    with_retries(lambda: client.download_file(loc.bucket, loc.key, str(local_path)), uri, settings)


def check_reachable(uri: str) -> None:
    """Fail at once, with one clear message, if the storage root cannot be used."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        existing = Path(loc.path)
        while not existing.exists():
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            raise StorageError(f"{uri}: {existing} is not writable")
        return
    loc, settings, client = _s3(uri)
    try:
        with_retries(lambda: client.head_bucket(Bucket=loc.bucket), uri, settings)
    except StorageNotFound:  # head_bucket answers a bare 404 for a missing bucket
        raise StorageError(f"{uri}: bucket {loc.bucket!r} does not exist at {settings.where()}") from None


# -- atomic publish of a folder ------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish_dir(local_dir: str | Path, uri: str, extra: dict[str, Any] | None = None, *,
                consume: bool = False) -> dict[str, Any]:
    """Publish a local folder at ``uri`` so readers see all of it or none of it.

    Returns the marker written last (``files``: relative path -> size and sha256).
    Re-publishing replaces the previous output; stale files are removed.
    ``consume``: the caller is done with ``local_dir``. A local ``uri`` on the same filesystem then
    takes the folder by rename instead of a copy, so publishing needs no second copy's disk space
    (prepare's outputs are twice its corpus); across filesystems it is copied, then removed. If
    publishing fails, ``local_dir`` is left as it was. S3 uploads are unchanged.
    """
    src = Path(local_dir)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    marker = {
        "files": {p.relative_to(src).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    if MARKER in marker["files"]:
        raise StorageError(f"{local_dir}: {MARKER} is reserved for the publish marker")
    loc = parse_uri(uri)
    if loc.scheme == "file":
        _publish_local(src, Path(loc.path), marker, uri, consume=consume)
    else:
        delete(join(uri, MARKER))  # unpublish first: from here on readers see "not ready"
        for rel in marker["files"]:
            upload_file(src / rel, join(uri, rel))
        for stale in set(list_files(uri)) - set(marker["files"]):
            delete(join(uri, stale))
        write_json(join(uri, MARKER), marker)
    log.info("storage: published %d files to %s", len(files), uri)
    return marker


def _publish_local(src: Path, dest: Path, marker: dict[str, Any], uri: str, *, consume: bool = False) -> None:
    tag = uuid.uuid4().hex[:8]
    staging = dest.with_name(f".{dest.name}.staging-{tag}")
    old = dest.with_name(f".{dest.name}.old-{tag}")
    moved = False
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        moved = consume and _rename_on_same_filesystem(src, staging)
        if not moved:
            shutil.copytree(src, staging)
        (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            os.rename(dest, old)
        os.rename(staging, dest)
    except OSError as exc:
        if moved and staging.exists():  # give the caller's folder back as it was
            (staging / MARKER).unlink(missing_ok=True)
            os.rename(staging, src)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.rename(old, dest)  # put the previous output back; nothing half-published
        raise StorageError(f"{uri}: cannot publish ({_os_reason(exc)})") from None
    shutil.rmtree(old, ignore_errors=True)
    if consume and not moved:
        shutil.rmtree(src, ignore_errors=True)


def _rename_on_same_filesystem(src: Path, dest: Path) -> bool:
    """Rename ``src`` to ``dest``; False (nothing done) when they are on different filesystems."""
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def _os_reason(exc: OSError) -> str:
    """One short reason; copytree's shutil.Error carries a list of (src, dst, why) per failed file."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        first = exc.args[0][0]
        why = str(first[2] if isinstance(first, tuple) and len(first) == 3 else first)
        short = re.match(r"\[Errno \d+\] ([^:]+)", why)  # drop the two long file paths copytree appends
        return f"{short.group(1) if short else why}; {len(exc.args[0])} file(s) failed"
    return exc.strerror or str(exc)


def read_marker(uri: str) -> dict[str, Any]:
    """The publish marker of a complete output; StorageNotFound if it is absent or unfinished."""
    try:
        return read_json(join(uri, MARKER))
    except StorageNotFound:
        raise StorageNotFound(f"{uri}: no complete output here (no {MARKER}); run the stage that writes it") from None


def is_published(uri: str) -> bool:
    return exists(join(uri, MARKER))


def download_published(uri: str, local_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Download a published folder, checking every file against the marker's size and sha256."""
    marker = read_marker(uri)
    dest = Path(local_dir)
    for rel, meta in marker["files"].items():
        target = dest / rel
        download_file(join(uri, rel), target)
        if verify and (target.stat().st_size != meta["size"] or sha256_file(target) != meta["sha256"]):
            raise StorageError(f"{join(uri, rel)}: content does not match its publish marker (corrupt or replaced)")
    (dest / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return marker
