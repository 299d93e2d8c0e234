"""The CLI's side of :mod:`caxton.client`: its errors as one-line click errors.

:class:`ApiClient` wraps a :class:`caxton.client.Client` (the one HTTP code path of the
CLI and the Python client); every failure becomes a :class:`click.ClickException` with
one line: the API's own ``{"error", "details"}`` for HTTP errors (exit status 3 for a
404, else 1), and what went wrong plus what to check for network errors (connection
refused, unknown host, TLS, timeout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from caxton import client as api

__all__ = ["DEFAULT_API_URL", "EXIT_NOT_FOUND", "ApiClient", "ApiError", "NotFoundError"]

DEFAULT_API_URL = api.DEFAULT_URL
#: Exit status of a command whose object was not found (the API's 404).
EXIT_NOT_FOUND = 3


class ApiError(click.ClickException):
    """The API answered with an error status (exit status 1)."""

    def __init__(self, status: int, error: str, details: str) -> None:
        super().__init__(f"{error}: {details}" if details and details != error else error)
        self.status = status
        self.error = error
        self.details = details


class NotFoundError(ApiError):
    """The API answered 404 (exit status 3)."""

    exit_code = EXIT_NOT_FOUND


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn the client's errors into one-line click errors."""
    try:
        yield
    except api.ApiError as exc:
        kind = NotFoundError if exc.not_found else ApiError
        raise kind(exc.status, exc.error, exc.details) from None
    except api.ClientError as exc:
        raise click.ClickException(str(exc)) from None


class ApiClient:
    """The node's API as the commands use it (``--api-url`` may list several nodes)."""

    def __init__(
        self,
        url: str = DEFAULT_API_URL,
        *,
        token: str | None = None,
        api_key: str | None = None,
        ca_cert: str | Path | None = None,
        insecure: bool = False,
        timeout: float = api.DEFAULT_TIMEOUT,
    ) -> None:
        urls = [part.strip() for part in url.split(",") if part.strip()]
        try:
            self.client = api.Client(
                urls, token=token, api_key=api_key, ca_cert=ca_cert, verify=not insecure,
                timeout=timeout,
            )  # fmt: skip
        except (ValueError, api.ClientError) as exc:
            raise click.ClickException(f"{exc} (--api-url or CAXTON_API_URL)") from None
        self.url = self.client.settings.urls[0]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        wait: float = 0.0,
    ) -> Any:
        """Send one request; return the decoded JSON answer (None for 204)."""
        with cli_errors():
            return self.client.request(method, path, body, query=query, wait=wait)

    def agent(self, name_or_id: str) -> dict[str, Any]:
        """The agent with this id, or else this name, on whichever node runs it."""
        with cli_errors():
            found: dict[str, Any] = self.client.agent(name_or_id)
            return found

    def iter_bytes(self, path: str) -> Iterator[bytes]:
        """The body of ``GET path`` in chunks, as it arrives (a backup download)."""
        with cli_errors():
            yield from self.client.iter_bytes(path)

    def stream(self, path: str, query: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """The JSON lines of a streamed answer, as they arrive."""
        with cli_errors():
            yield from self.client.stream(path, query)
