"""The S3 connection: settings from the environment, one client per settings, and the one retry loop.

Settings come only from the environment, never from config files or logs:

- ``MRLKIT_S3_ENDPOINT`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``): e.g. ``http://127.0.0.1:9000``;
  unset means AWS itself.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_REGION``
  (or ``AWS_DEFAULT_REGION``, default ``us-east-1``).
- ``MRLKIT_STORAGE_ATTEMPTS`` (default 5) bounds the retries on transient errors.

Where objects live and how outputs are published is :mod:`mrlkit.storage`'s business; this module only
talks to the endpoint and turns its failures into one clear :class:`~mrlkit.errors.StorageError`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from mrlkit.errors import StorageError, StorageNotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

ENDPOINT_ENV_VARS = ("MRLKIT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_TRANSIENT_CODES = {"500", "502", "503", "504", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
                    "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}


@dataclass(frozen=True)
class S3Settings:
    """S3 connection settings from the environment. ``repr`` never shows the secret."""

    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    session_token: str | None

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        endpoint = next((env[v] for v in ENDPOINT_ENV_VARS if env.get(v)), None)
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(endpoint, region, env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"),
                   env.get("AWS_SESSION_TOKEN"))

    def __repr__(self) -> str:
        creds = "set" if self.access_key else "unset"
        return f"S3Settings(endpoint={self.endpoint!r}, region={self.region!r}, credentials={creds})"

    def where(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region})"


def attempts() -> int:
    """Tries per storage request (``MRLKIT_STORAGE_ATTEMPTS``, default 5), for every retry loop in mrlkit."""
    try:
        return max(1, int(os.environ.get("MRLKIT_STORAGE_ATTEMPTS", "5")))
    except ValueError:
        raise StorageError("MRLKIT_STORAGE_ATTEMPTS must be a whole number") from None


def retry(action: Callable[[], T], what: str, retriable: Callable[[BaseException], bool], tries: int,
          first_delay: float = 0.25, max_delay: float = 4.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``action``; on an exception ``retriable`` accepts, wait (jittered, doubling) and try again, up to
    ``tries`` times in all. Anything else, and the last failure, propagates unchanged.
    """
    for attempt in range(1, tries + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == tries or not retriable(exc):
                raise
            delay = min(max_delay, first_delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            log.warning("storage: %s failed (%s: %s); attempt %d/%d, retrying in %.1fs", what,
                        type(exc).__name__, exc, attempt, tries, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def is_transient(exc: BaseException) -> bool:
    """A connection failure, timeout or server-side error code: worth another try."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code")) in _TRANSIENT_CODES
    return False


def explain(exc: BaseException, uri: str, settings: S3Settings) -> StorageError:
    """One clear error for a failed request on ``uri``: what went wrong, and where to look."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("NoSuchBucket",):
            return StorageError(f"{uri}: bucket {urlparse(uri).netloc!r} does not exist at {settings.where()}")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageNotFound(f"{uri}: no such object")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{uri}: access denied by {settings.where()} ({code}); check the credentials")
        return StorageError(f"{uri}: S3 error {code} from {settings.where()}")
    if is_transient(exc):
        return StorageError(f"{uri}: cannot reach S3 endpoint {settings.where()} "
                            f"after {attempts()} attempts ({type(exc).__name__})")
    return StorageError(f"{uri}: {type(exc).__name__}: {exc}")


def with_retries(action: Callable[[], T], uri: str, settings: S3Settings) -> T:
    """Run a boto3 request on ``uri``, retrying transient errors (:func:`retry`), then one clear error."""
    try:
        return retry(action, uri, lambda exc: not isinstance(exc, StorageError) and is_transient(exc), attempts())
    except StorageError:
        raise
    except Exception as exc:
        raise explain(exc, uri, settings) from None


_clients: dict[S3Settings, Any] = {}


def s3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client for the environment's settings (path-style, short connect timeout)."""
    settings = settings or S3Settings.from_env()
    if settings not in _clients:
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},  # our own backoff wraps every call
            connect_timeout=3, read_timeout=60,
            # S3-compatible servers (rclone, MinIO) reject the newer default checksums.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        _clients[settings] = boto3.client(
            "s3", endpoint_url=settings.endpoint, region_name=settings.region, config=config,
            aws_access_key_id=settings.access_key, aws_secret_access_key=settings.secret_key,
            aws_session_token=settings.session_token,
        )
    return _clients[settings]


def forget_clients() -> None:
    """Drop cached clients, so the next request connects afresh (after the environment or the server changed)."""
    _clients.clear()
