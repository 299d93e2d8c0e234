"""Where backups and cluster snapshots are kept: destination drivers.

A destination is named by a URL: a directory path (or ``file:///path``) or
``s3://BUCKET/PREFIX``. The URL's scheme picks the driver from the entry-point group
``caxton.backup_destination`` (``dir`` for paths, the scheme's own name otherwise);
core ships ``dir`` and ``s3``, the latter needing the optional extra
``caxton-core[s3]`` (boto3). Names inside a destination are ``/``-separated relative
paths (``n1/backup-20260101-020000.tar.gz``).

The S3 driver uses boto3's own configuration: credentials from the usual chain
(environment, ``~/.aws``, instance roles) and the endpoint from ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``) for S3-compatible servers such as MinIO.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from caxton.datadir import expand_user
from caxton.errors import CaxtonError, ConfigError, DriverNotFound, NotFound, ValidationError

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackupDestination",
    "DestinationError",
    "DirectoryDestination",
    "S3Destination",
    "open_destination",
]

ENTRY_POINT_GROUP = "caxton.backup_destination"


class DestinationError(CaxtonError):
    """A destination cannot be read or written."""

    http_status = 502
    error = "Backup destination error"


class BackupDestination(abc.ABC):
    """A place to keep backup files: the interface every destination driver implements.

    Methods are blocking (call them in a thread from async code). ``name`` arguments
    are relative ``/``-separated paths, checked by :meth:`check_name`.
    """

    #: The URL scheme this driver serves (its entry-point name).
    scheme: ClassVar[str] = ""

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def put_file(self, source: Path, name: str) -> None:
        """Store the local file ``source`` as ``name``; a reader never sees it partial."""

    @abc.abstractmethod
    def get_file(self, name: str, target: Path) -> None:
        """Write the stored ``name`` to the local file ``target``; NotFound if absent."""

    @abc.abstractmethod
    def names(self, prefix: str = "") -> list[str]:
        """Names stored under ``prefix``, sorted."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name`` (nothing when it is absent)."""

    def prune(self, prefix: str, keep: int) -> list[str]:
        """Delete all but the ``keep`` last names (in sorted order) under ``prefix``."""
        names = [n for n in self.names(prefix) if not n.rsplit("/", 1)[-1].startswith(".")]
        doomed = names[: max(0, len(names) - keep)]
        for name in doomed:
            self.delete(name)
        return doomed

    def describe(self, name: str) -> str:
        """``name`` as a URL, for messages."""
        return f"{self.url.rstrip('/')}/{name}"

    @staticmethod
    def check_name(name: str) -> str:
        path = PurePosixPath(name)
        if not name or path.is_absolute() or ".." in path.parts:
            raise ValidationError(f"invalid name in a backup destination: {name!r}")
        return name


class DirectoryDestination(BackupDestination):
    """A local (or mounted) directory."""

    scheme = "dir"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = urllib.parse.urlsplit(url)
        raw = parsed.path if parsed.scheme == "file" else url
        self.root = expand_user(raw)

    def _path(self, name: str) -> Path:
        return self.root / self.check_name(name)

    def put_file(self, source: Path, name: str) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            from caxton.backup.archive import private_file

            with source.open("rb") as src, private_file(partial) as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def get_file(self, name: str, target: Path) -> None:
        source = self._path(name)
        if not source.is_file():
            raise NotFound(f"no {name} in {self.root}")
        shutil.copyfile(source, target)

    def names(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(n for n in names if n.startswith(prefix) and not n.endswith(".partial"))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def describe(self, name: str) -> str:
        return str(self._path(name))


class S3Destination(BackupDestination):
    """``s3://BUCKET/PREFIX`` through boto3 (``pip install 'caxton-core[s3]'``)."""

    scheme = "s3"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValidationError(f"invalid S3 destination {url!r}: expected s3://BUCKET/PREFIX")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        try:
            import boto3
        except ImportError:
            raise DriverNotFound(
                f"the s3:// backup destination needs boto3: pip install 'caxton-core[s3]' "
                f"(for {url})"
            ) from None
        self.client: Any = boto3.client("s3")

    def _key(self, name: str) -> str:
        self.check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"{what}: not found in s3://{self.bucket}") from None
            raise DestinationError(f"{what} in s3://{self.bucket} failed: {exc}") from None
        except BotoCoreError as exc:
            raise DestinationError(f"{what} in s3://{self.bucket} failed: {exc}") from None

    def put_file(self, source: Path, name: str) -> None:
        key = self._key(name)
        # An S3 object appears whole or not at all: no partial object is ever listed.
        self._call(f"uploading {key}", self.client.upload_file, str(source), self.bucket, key)

    def get_file(self, name: str, target: Path) -> None:
        key = self._key(name)
        self._call(f"downloading {key}", self.client.download_file, self.bucket, key, str(target))

    def names(self, prefix: str = "") -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        names = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            "listing", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=base + prefix))
        )
        for page in pages:
            names += [str(item["Key"])[len(base) :] for item in page.get("Contents", ())]
        return sorted(names)

    def delete(self, name: str) -> None:
        key = self._key(name)
        self._call(f"deleting {key}", self.client.delete_object, Bucket=self.bucket, Key=key)

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"


def scheme_of(url: str) -> str:
    """The driver name for ``url``: its scheme, or ``dir`` for a path."""
    if not url:
        raise ConfigError("a backup destination is empty: give a directory or s3://BUCKET/PREFIX")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a path (C:\ too)
        return "dir"
    return parsed.scheme


def open_destination(url: str) -> BackupDestination:
    """The destination driver for ``url``, from ``caxton.backup_destination``."""
    from stevedore import DriverManager
    from stevedore.exception import NoMatches

    name = scheme_of(url)
    try:
        manager: DriverManager[Any] = DriverManager(ENTRY_POINT_GROUP, name, invoke_on_load=False)
    except NoMatches:
        from importlib.metadata import entry_points

        installed = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise DriverNotFound(
            f"no backup destination driver for {name}:// (installed: "
            f"{', '.join(installed) or 'none'}); install a plugin that provides it"
        ) from None
    driver = manager.driver
    if not (isinstance(driver, type) and issubclass(driver, BackupDestination)):
        raise DriverNotFound(f"the backup destination driver {name!r} is not a BackupDestination")
    return driver(url)
