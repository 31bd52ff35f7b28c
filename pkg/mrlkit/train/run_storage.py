"""The pyarrow filesystem Ray Train writes checkpoints through, for local folders and S3.

S3 has no directories, only keys. pyarrow's ``S3FileSystem`` still writes empty
``dir/`` marker objects on ``create_dir`` and insists on deleting them in
``delete_dir``; S3-compatible servers backed by a real filesystem (``rclone serve
s3``, the test server) refuse such keys when the directory already exists. Ray Train
calls both (run folder creation, keep-N pruning), so on S3 it gets this thin wrapper:
``create_dir`` is a no-op (a prefix exists once a key under it does) and ``delete_dir``
deletes the keys under the prefix. Everything else is the plain ``S3FileSystem``.

Ray pickles the filesystem to its controller and workers, and a pickled
``S3FileSystem`` loses its ``retry_strategy`` (pyarrow leaves it out of
``__reduce__``): the copies would fall back to pyarrow's 3 quick attempts (~2 s),
so a short S3 outage during a checkpoint upload or snapshot write failed the run.
The wrapper carries the attempt count (``MRLKIT_STORAGE_ATTEMPTS`` on the driver)
and puts the retry strategy back when it is unpickled.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs

from mrlkit import s3, storage


class KeysOnlyS3Handler(pafs.FileSystemHandler):
    """Delegates to an ``S3FileSystem``; directories are implicit (no marker objects)."""

    def __init__(self, base: pafs.FileSystem, attempts: int | None = None):
        self.base = base
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:  # Ray pickles the run config to its controller and workers
        return (_unpickle_handler, (self.base, self.attempts))

    def get_type_name(self) -> str:
        return "mrlkit-s3"

    def equals(self, other: Any) -> bool:
        return isinstance(other, KeysOnlyS3Handler) and self.base.equals(other.base)

    def normalize_path(self, path: str) -> str:
        return self.base.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.base.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        """Nothing to create: an S3 prefix exists as soon as a key below it does."""

    def delete_dir(self, path: str) -> None:
        storage.delete(f"s3://{path}")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        # Through boto3 (mrlkit.storage): pyarrow's deletes also write or remove "dir/" marker keys,
        # which servers backed by a real filesystem reject.
        uri = f"s3://{path}"
        if not missing_dir_ok and not storage.list_files(uri):
            raise FileNotFoundError(f"{uri}: no such directory")
        for rel in storage.list_files(uri):
            storage.delete(storage.join(uri, rel))

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of every bucket")

    def delete_file(self, path: str) -> None:
        storage.delete(f"s3://{path}")

    def move(self, src: str, dest: str) -> None:
        self.base.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.base.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.base.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.base.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.base.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.base.open_append_stream(path, metadata=metadata)


def with_retry_strategy(fs: pafs.S3FileSystem, attempts: int) -> pafs.S3FileSystem:
    """The same ``S3FileSystem`` with pyarrow's AWS standard retries at ``attempts`` per request."""
    _, (options,) = fs.__reduce__()  # every constructor option except the retry strategy
    return pafs.S3FileSystem(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts))


def _unpickle_handler(base: pafs.FileSystem, attempts: int | None) -> KeysOnlyS3Handler:
    if attempts and isinstance(base, pafs.S3FileSystem):
        base = with_retry_strategy(base, attempts)
    return KeysOnlyS3Handler(base, attempts)


def ray_storage(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(storage_filesystem, storage_path)`` for ``ray.train.RunConfig`` at ``uri`` (local or ``s3://``)."""
    fs, path = storage.pyarrow_filesystem(uri)
    if storage.is_s3_uri(uri):
        fs = pafs.PyFileSystem(KeysOnlyS3Handler(fs, s3.attempts()))
    return fs, path
