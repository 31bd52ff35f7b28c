"""Storage round trips against a local folder and two real S3-compatible servers (rclone, moto)."""

from __future__ import annotations

import os
import time

import pytest

from mrlkit import s3, storage
from mrlkit.errors import StorageError
from mrlkit.testing.s3_server import LocalS3Server


def test_write_read_list_delete(any_root):
    a, b = storage.join(any_root, "x", "a.txt"), storage.join(any_root, "x", "sub", "b.json")
    storage.write_text(a, "hello")
    storage.write_json(b, {"k": [1, 2]})
    assert storage.read_text(a) == "hello"
    assert storage.read_json(b) == {"k": [1, 2]}
    assert storage.exists(a) and not storage.exists(storage.join(any_root, "x", "nope"))
    assert storage.list_files(storage.join(any_root, "x")) == ["a.txt", "sub/b.json"]
    storage.write_text(a, "overwritten")
    assert storage.read_text(a) == "overwritten"
    storage.delete(storage.join(any_root, "x"))
    assert storage.list_files(storage.join(any_root, "x")) == []
    with pytest.raises(storage.StorageNotFound, match="no such"):
        storage.read_bytes(a)


def test_large_object_goes_multipart_and_round_trips(any_root, tmp_path):
    big = tmp_path / "big.bin"
    payload = os.urandom(1 << 20) * 20  # 20 MiB: above the 8 MiB multipart threshold
    big.write_bytes(payload)
    uri = storage.join(any_root, "big", "blob.bin")
    storage.upload_file(big, uri)
    out = tmp_path / "back.bin"
    storage.download_file(uri, out)
    assert out.read_bytes() == payload


def _folder(tmp_path, name, files):
    d = tmp_path / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def test_atomic_publish_overwrite_and_verified_download(any_root, tmp_path):
    uri = storage.join(any_root, "models", "run1")
    with pytest.raises(storage.StorageNotFound, match="no complete output"):
        storage.read_marker(uri)
    first = _folder(tmp_path, "v1", {"a.txt": "one", "sub/b.txt": "two", "stale.txt": "old"})
    marker = storage.publish_dir(first, uri, extra={"stage": "test"})
    assert storage.is_published(uri)
    assert sorted(marker["files"]) == ["a.txt", "stale.txt", "sub/b.txt"] and marker["stage"] == "test"
    second = _folder(tmp_path, "v2", {"a.txt": "ONE", "sub/b.txt": "TWO"})
    storage.publish_dir(second, uri)
    assert storage.list_files(uri) == [storage.MARKER, "a.txt", "sub/b.txt"], "stale files are removed"
    got = tmp_path / "got"
    storage.download_published(uri, got)
    assert (got / "a.txt").read_text() == "ONE" and (got / "sub" / "b.txt").read_text() == "TWO"


def test_download_detects_a_replaced_file(any_root, tmp_path):
    uri = storage.join(any_root, "out")
    storage.publish_dir(_folder(tmp_path, "v", {"a.txt": "good"}), uri)
    storage.write_text(storage.join(uri, "a.txt"), "tampered")
    with pytest.raises(StorageError, match="does not match its publish marker"):
        storage.download_published(uri, tmp_path / "got")


def test_reader_never_sees_half_a_publish(s3_root, tmp_path):
    """On S3 the old marker is removed before new objects land, so a reader mid-publish sees 'not ready'."""
    uri = storage.join(s3_root, "pairs", "x")
    storage.publish_dir(_folder(tmp_path, "v1", {"a.txt": "1"}), uri)
    storage.delete(storage.join(uri, storage.MARKER))  # what publish_dir does first on a re-publish
    storage.write_text(storage.join(uri, "a.txt"), "2 (half-written)")
    assert not storage.is_published(uri)
    with pytest.raises(storage.StorageNotFound):
        storage.read_marker(uri)


def test_disk_full_mid_publish_keeps_previous_output(tmp_path, monkeypatch):
    """A local publish that fails half-way (disk full while copying) leaves the old output and no debris."""
    import errno
    import shutil

    root = tmp_path / "root"
    uri = str(root / "out")
    storage.publish_dir(_folder(tmp_path, "v1", {"a.txt": "1"}), uri)
    real_copytree = shutil.copytree

    def copytree_until_disk_full(src, dst, *args, **kwargs):
        real_copytree(src, dst, *args, **kwargs)  # the copy lands, then the marker write would not fit
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.shutil, "copytree", copytree_until_disk_full)
    with pytest.raises(StorageError, match="cannot publish .*No space left"):
        storage.publish_dir(_folder(tmp_path, "v2", {"a.txt": "2", "b.txt": "3"}), uri)
    monkeypatch.undo()
    assert storage.read_text(storage.join(uri, "a.txt")) == "1"
    assert storage.list_files(uri) == [storage.MARKER, "a.txt"]
    assert sorted(p.name for p in root.iterdir()) == ["out"], "no staging folder left behind"


def test_consumed_folder_is_published_by_rename_not_copy(tmp_path):
    """``consume=True`` on one filesystem: the files move into place (same inode), the source is gone."""
    src = _folder(tmp_path, "work", {"a.txt": "1", "sub/b.txt": "2"})
    inode = (src / "sub" / "b.txt").stat().st_ino
    uri = str(tmp_path / "root" / "out")
    marker = storage.publish_dir(src, uri, consume=True)
    assert not src.exists()
    assert (tmp_path / "root" / "out" / "sub" / "b.txt").stat().st_ino == inode, "renamed, not copied"
    assert sorted(marker["files"]) == ["a.txt", "sub/b.txt"] and storage.is_published(uri)


def test_consumed_folder_is_given_back_when_publishing_fails(tmp_path, monkeypatch):
    """A failure after the rename puts the caller's folder back untouched and keeps the previous output."""
    uri = str(tmp_path / "root" / "out")
    storage.publish_dir(_folder(tmp_path, "v1", {"a.txt": "1"}), uri)
    src = _folder(tmp_path, "work", {"a.txt": "2", "b.txt": "3"})
    real_rename = os.rename

    def rename_then_disk_full(a, b):
        if str(b) == uri and ".staging-" in str(a):  # the last step: the staged folder into place
            raise OSError(28, "No space left on device")
        real_rename(a, b)

    monkeypatch.setattr(storage.os, "rename", rename_then_disk_full)
    with pytest.raises(StorageError, match="cannot publish .*No space left"):
        storage.publish_dir(src, uri, consume=True)
    monkeypatch.undo()
    assert sorted(p.name for p in src.iterdir()) == ["a.txt", "b.txt"] and (src / "b.txt").read_text() == "3"
    assert storage.read_text(storage.join(uri, "a.txt")) == "1" and storage.list_files(uri) == [storage.MARKER,
                                                                                               "a.txt"]
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["out"], "no staging folder left behind"


def test_consumed_folder_on_another_filesystem_is_copied_then_removed(tmp_path, monkeypatch):
    import errno

    src = _folder(tmp_path, "work", {"a.txt": "1"})
    uri = str(tmp_path / "root" / "out")
    real_rename = os.rename

    def rename_across_devices(a, b):
        if str(a) == str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(a, b)

    monkeypatch.setattr(storage.os, "rename", rename_across_devices)
    storage.publish_dir(src, uri, consume=True)
    assert not src.exists() and storage.read_text(storage.join(uri, "a.txt")) == "1" and storage.is_published(uri)


def test_marker_name_is_reserved(tmp_path):
    with pytest.raises(StorageError, match="reserved"):
        storage.publish_dir(_folder(tmp_path, "v", {storage.MARKER: "x"}), str(tmp_path / "out"))


def test_missing_bucket_is_one_clear_error(rclone_server):
    with pytest.raises(StorageError, match="does not exist|no such"):
        storage.read_bytes("s3://no-such-bucket-here/x")
    with pytest.raises(StorageError):
        storage.check_reachable("s3://no-such-bucket-here/x")


def test_wrong_credentials_are_denied_clearly(rclone_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    s3.forget_clients()
    try:
        with pytest.raises(StorageError) as err:
            storage.check_reachable("s3://anybucket/x")
        assert "wrong-secret" not in str(err.value)
    finally:
        s3.forget_clients()


def test_server_down_fails_after_bounded_retries(monkeypatch, tmp_path):
    server = LocalS3Server("rclone", tmp_path / "data").start()
    server.create_bucket("bkt")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "3")
    s3.forget_clients()
    storage.write_text("s3://bkt/a.txt", "x")
    server.stop()
    started = time.monotonic()
    try:
        with pytest.raises(StorageError, match=r"cannot reach S3 endpoint http://127\.0\.0\.1:\d+ after 3 attempts"):
            storage.read_text("s3://bkt/a.txt")
    finally:
        s3.forget_clients()
    assert time.monotonic() - started < 15, "bounded retries, not a hang"


def test_transient_outage_is_retried_through(monkeypatch, tmp_path):
    """The server goes away and comes back inside the retry window: the call succeeds."""
    import threading

    server = LocalS3Server("rclone", tmp_path / "data").start()
    server.create_bucket("bkt")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "6")
    s3.forget_clients()
    storage.write_text("s3://bkt/a.txt", "survives")
    server.stop()
    restart = threading.Timer(1.0, server.start)
    restart.start()
    try:
        assert storage.read_text("s3://bkt/a.txt") == "survives"
    finally:
        restart.join()
        server.stop()
        s3.forget_clients()


def test_settings_never_show_the_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "planted-key-456")
    text = repr(s3.S3Settings.from_env())
    assert "planted-secret-123" not in text and "planted-key-456" not in text


def test_pyarrow_filesystem_uses_the_endpoint(s3_root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(s3_root)
    pq.write_table(pa.table({"x": [1, 2, 3]}), f"{path}/t.parquet", filesystem=fs)
    assert storage.list_files(s3_root) == ["t.parquet"]
    assert pq.read_table(f"{path}/t.parquet", filesystem=fs)["x"].to_pylist() == [1, 2, 3]


def test_parse_uri():
    loc = storage.parse_uri("s3://bucket/a/b/")
    assert (loc.scheme, loc.bucket, loc.key) == ("s3", "bucket", "a/b")
    assert storage.parse_uri("rel/dir").path == os.path.abspath("rel/dir")
    assert storage.join("s3://b/p/", "/x/", "y") == "s3://b/p/x/y"
    with pytest.raises(ValueError, match="unsupported scheme"):
        storage.parse_uri("gs://b/x")
