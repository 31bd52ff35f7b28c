"""Storage faults: the S3 endpoint goes away mid-write and comes back; a local root is full, read-only or denied.

Each fault gives either a complete output (every file its publish marker lists
reads back with the right sha256, byte-equal to an undisturbed run) or one clear
``StorageError`` with nothing half-published. Uses its own disk-backed rclone
server, so stopping it disturbs no other test.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mrlkit import layout, s3, storage
from mrlkit.cli import main
from mrlkit.config import config_from_dict
from mrlkit.errors import StorageError
from mrlkit.pairs.stage import PrepareStage
from mrlkit.stage import run_stage
from mrlkit.testing.faults import S3Outage, files_appear, output_bytes, verify_published
from mrlkit.testing.s3_server import LocalS3Server

TEXT = ("Matryoshka representation learning trains one embedding whose prefixes are embeddings too. "
        "The loss sums a ranking loss at every truncation dimension. Small prefixes serve fast search.")


@pytest.fixture
def own_s3(tmp_path, monkeypatch):
    """A private rclone S3 server for this test; the driver's storage settings point at it."""
    server = LocalS3Server("rclone", tmp_path / "s3" / "data").start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    s3.forget_clients()
    yield server
    server.stop()
    s3.forget_clients()


def write_folder(folder: Path, files: int = 20, size: int = 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"part-{i:05d}.bin").write_bytes(bytes((i * 7 + j) % 251 for j in range(size)))
    return folder


def write_corpus(raw: Path) -> Path:
    raw.mkdir(parents=True)
    for i, topic in enumerate(["copper", "violin", "harbor", "lantern", "orchard", "falcon"]):
        body = "\n\n".join(f"{TEXT} Paragraph {j} is about {topic} case {i}-{j}." for j in range(3))
        (raw / f"{topic}.md").write_text(f"# {topic.title()}\n\n{body}\n")
    return raw


def prepare_cfg(root: str, raw: Path):
    return config_from_dict({
        "name": "faults", "storage": {"root": root},
        "corpus": {"input": str(raw), "format": "text", "glob": "*.md", "chunk_tokens": 48,
                   "chunk_overlap_tokens": 8, "tokenizer": "sentence-transformers/all-MiniLM-L6-v2"},
        "pairs": {"source": "synthetic", "split": {"test_fraction": 0.3}}})


def leftovers(folder: Path) -> list[str]:
    """Staging or temp files a failed local publish left behind."""
    return sorted(p.name for p in folder.rglob("*") if ".staging-" in p.name or ".tmp-" in p.name or ".old-" in p.name)


# -- S3 endpoint outages ---------------------------------------------------------------------------------------


def test_publish_survives_s3_outages_mid_upload(own_s3, tmp_path, monkeypatch, caplog, figures):
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "10")  # backoff sum >= 11s: covers a 2s outage with room
    caplog.set_level(logging.WARNING, logger="mrlkit.storage")
    src = write_folder(tmp_path / "out")
    lost, runs = [], 3
    for run in range(runs):
        bucket = f"outage-{run}"
        own_s3.create_bucket(bucket)
        uri = f"s3://{bucket}/mrl/out"
        with S3Outage(own_s3, seconds=2, trigger=files_appear(own_s3.data_dir / bucket)) as outage:
            storage.publish_dir(src, uri)
        assert outage.fired and outage.restarted_at is not None
        problems = verify_published(uri)
        lost += problems
        assert not problems, problems
        assert output_bytes(uri) == {p.name: p.read_bytes() for p in src.iterdir()}
    retries = sum("retrying" in r.getMessage() for r in caplog.records)
    assert retries >= runs, "the outages were not seen by the uploads"
    figures("fault.s3_outage_during_publish", "rclone S3 stopped 2s after the first object of a 20-file publish "
            "landed, then restarted; output verified against its marker", runs, len(lost), retries=retries)


def test_outage_longer_than_retries_fails_clearly_and_publishes_nothing(own_s3, tmp_path, monkeypatch, figures):
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "2")
    own_s3.create_bucket("short")
    uri = "s3://short/mrl/out"
    storage.publish_dir(write_folder(tmp_path / "v1", files=3), uri)  # an older, complete output
    v2 = tmp_path / "v2"
    write_folder(v2)
    for path in v2.iterdir():
        path.rename(path.with_name("new-" + path.name))
    landed = own_s3.data_dir / "short" / "mrl" / "out"
    with S3Outage(own_s3, seconds=5, trigger=lambda: any(landed.glob("new-*"))) as outage:
        with pytest.raises(StorageError, match=r"cannot reach S3 endpoint http://127\.0\.0\.1:\d+ after 2 attempts"):
            storage.publish_dir(v2, uri)
    assert outage.fired
    # Half of v2 is up, but readers never take it for a finished output: the old marker was withdrawn first.
    assert any(rel.startswith("new-") for rel in storage.list_files(uri))
    assert not storage.is_published(uri)
    with pytest.raises(storage.StorageNotFound, match="no complete output here"):
        layout.read_table(uri)
    figures("fault.s3_outage_beyond_retries", "rclone S3 down 5s mid-upload with MRLKIT_STORAGE_ATTEMPTS=2 during a "
            "re-publish: one StorageError, no marker left claiming the half-written output is complete", 1, 0)


@pytest.mark.slow
def test_prepare_survives_s3_outage_and_equals_undisturbed_run(ray_local, own_s3, tmp_path, monkeypatch, caplog,
                                                               figures):
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "10")
    caplog.set_level(logging.WARNING, logger="mrlkit.storage")
    raw = write_corpus(tmp_path / "raw")
    own_s3.create_bucket("calm")
    own_s3.create_bucket("storm")
    calm, storm = prepare_cfg("s3://calm/mrl", raw), prepare_cfg("s3://storm/mrl", raw)
    run_stage(PrepareStage, calm)
    with S3Outage(own_s3, seconds=4, trigger=files_appear(own_s3.data_dir / "storm" / "mrl" / "corpora")) as outage:
        summary = run_stage(PrepareStage, storm)
        finished = time.monotonic()
    assert outage.fired and outage.restarted_at is not None and outage.restarted_at < finished
    assert any("retrying" in r.getMessage() for r in caplog.records), "the outage was not seen by the stage"
    lost = []
    for uri_of in (layout.corpus_uri, layout.pairs_uri):
        lost += verify_published(uri_of(storm))
        calm_files, storm_files = output_bytes(uri_of(calm)), output_bytes(uri_of(storm))
        assert storm_files.keys() == calm_files.keys()
        lost += [f"{uri_of(storm)}/{rel}: differs from the undisturbed run" for rel in calm_files
                 if storm_files[rel] != calm_files[rel]]
    assert summary["chunks"] > 0 and summary["train_pairs"] > 0
    figures("fault.s3_outage_during_prepare", "rclone S3 stopped 4s once prepare's first corpus object landed, "
            "then restarted; corpora/ and pairs/ verified against their markers and byte-compared with an "
            "undisturbed run", 1, len(lost), problems=lost)
    assert not lost, lost


# -- local root faults ------------------------------------------------------------------------------------------


IS_ROOT = os.geteuid() == 0  # real mounts and chattr need root; otherwise the faults are injected (see below)


@contextlib.contextmanager
def mounted(kind: str, target: Path, fill_leaving: int = 0):
    """A 1 MiB tmpfs with ``fill_leaving`` bytes free (``full``) or a read-only bind mount (``readonly``); root only."""
    target.mkdir(parents=True, exist_ok=True)
    if kind == "full":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)]
    else:
        cmd = ["mount", "--bind", "-o", "ro", str(target), str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot {kind}-mount {target} as root ({done.stderr.strip()})")
    try:
        if kind == "full":
            (target / ".filler").write_bytes(b"\0" * (1024 * 1024 - fill_leaving))
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


@contextlib.contextmanager
def full_disk(target: Path, monkeypatch: pytest.MonkeyPatch, fill_leaving: int = 0):
    """A full filesystem at ``target``: a real tmpfs as root; otherwise copies into it fail with ENOSPC once
    ``fill_leaving`` bytes are used and renames into it from outside fail as across filesystems (no mount
    without root: the one place this suite injects instead)."""
    if IS_ROOT:
        with mounted("full", target, fill_leaving):
            yield target
        return
    target.mkdir(parents=True, exist_ok=True)
    real, left = shutil.copyfile, [fill_leaving]

    def copyfile(src, dst, *args, **kwargs):
        if str(dst).startswith(str(target)):
            left[0] -= os.path.getsize(src)
            if left[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):  # the tmpfs root mode mounts is another filesystem: no renames into it
        if str(dst).startswith(str(target)) and not str(src).startswith(str(target)):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), str(dst))
        return real_rename(src, dst, *args, **kwargs)

    real_rename = os.rename
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    monkeypatch.setattr(os, "rename", rename)
    yield target


def test_disk_full_fails_and_keeps_previous_output(tmp_path, monkeypatch, figures):
    with full_disk(tmp_path / "root", monkeypatch, fill_leaving=64 * 1024) as root:
        uri = str(root / "corpora" / "x")
        storage.publish_dir(write_folder(tmp_path / "v1", files=2, size=1024), uri)
        before = output_bytes(uri)
        with pytest.raises(StorageError, match=r"cannot publish .*No space left on device"):
            storage.publish_dir(write_folder(tmp_path / "v2", files=40, size=8192), uri)
        assert not verify_published(uri) and output_bytes(uri) == before  # the old output is intact
        assert not leftovers(root), leftovers(root)
    figures("fault.local_disk_full", "publish to a full 1 MiB tmpfs root: one StorageError, previous output intact, "
            "no staging left", 1, 0)


def test_disk_full_error_is_one_short_line(tmp_path, monkeypatch):
    with full_disk(tmp_path / "root", monkeypatch, fill_leaving=16 * 1024) as root:
        with pytest.raises(StorageError) as caught:
            storage.publish_dir(write_folder(tmp_path / "big", files=40, size=8192), str(root / "corpora" / "x"))
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message and len(message) < 300, message[:300]


def test_read_only_and_denied_roots_fail_clearly(tmp_path, figures):
    src = write_folder(tmp_path / "out", files=2, size=64)
    times = 1
    if IS_ROOT:  # a read-only filesystem needs a mount
        times += 1
        with mounted("readonly", tmp_path / "ro") as root:
            with pytest.raises(StorageError, match=r"cannot publish \(Read-only file system\)"):
                storage.publish_dir(src, str(root / "corpora" / "x"))
            assert not any(root.iterdir())
    denied = tmp_path / "denied"
    denied.mkdir()
    # root ignores file modes, so an immutable folder (EPERM) stands in for a denied one
    lock, unlock = (["chattr", "+i", str(denied)], ["chattr", "-i", str(denied)]) if IS_ROOT else \
        (["chmod", "0500", str(denied)], ["chmod", "0700", str(denied)])
    subprocess.run(lock, check=True)
    try:
        with pytest.raises(StorageError, match=r"denied.* is not writable"):
            storage.check_reachable(str(denied / "mrl"))
        with pytest.raises(StorageError, match=r"cannot publish \((Operation not permitted|Permission denied)\)"):
            storage.publish_dir(src, str(denied / "corpora" / "x"))
        assert not any(denied.iterdir())
    finally:
        subprocess.run(unlock, check=True)
    figures("fault.local_root_read_only_or_denied", "publish to a read-only bind mount (as root) and a folder that "
            "refuses writes: one StorageError each, nothing created", times, 0)


def test_missing_bucket_publish_fails_clearly(own_s3, tmp_path, figures):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.publish_dir(write_folder(tmp_path / "out", files=2, size=64), "s3://no-such-bucket/mrl/x")
    figures("fault.s3_bucket_missing", "publish to a bucket that does not exist: one StorageError naming it", 1, 0)


def test_missing_bucket_root_is_named_at_setup(own_s3):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_reachable("s3://no-such-bucket/mrl")


@pytest.mark.slow
def test_prepare_on_full_disk_prints_one_error_and_publishes_nothing(ray_local, tmp_path, monkeypatch, capfd,
                                                                    figures):
    raw = write_corpus(tmp_path / "raw")
    with full_disk(tmp_path / "root", monkeypatch, fill_leaving=0) as root:
        code = main(["prepare", "name=faults", f"storage.root={root}/mrl", f"corpus.input={raw}",
                     "corpus.format=text", "corpus.glob=*.md", "corpus.chunk_tokens=48",
                     "corpus.chunk_overlap_tokens=8", "corpus.tokenizer=sentence-transformers/all-MiniLM-L6-v2"])
        err = capfd.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("mrlkit: error:")]
        published = [p for p in root.rglob(storage.MARKER)]
        stray = leftovers(root)
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    assert not published and not stray, (published, stray)
    figures("fault.prepare_disk_full", "`mrlkit prepare` onto a full tmpfs root: exit 2, one error line, no output "
            "published, no staging left", 1, len(published) + len(stray))
