"""The HTTP side of the operator commands: one small JSON client over ``urllib``.

Every failure becomes a :class:`click.ClickException` with one line: the API's own
``{"error", "details"}`` for HTTP errors, and what went wrong plus what to check for
network errors (connection refused, unknown host, timeout).
"""

from __future__ import annotations

import errno
import glob
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

__all__ = ["DEFAULT_API_URL", "ApiClient", "ApiError", "NotFoundError"]

DEFAULT_API_URL = "http://127.0.0.1:8080"
#: Seconds to wait for an answer, on top of any wait the request itself asks for.
DEFAULT_TIMEOUT = 30.0


#: Exit status of a command whose object was not found (the API's 404).
EXIT_NOT_FOUND = 3


class ApiError(click.ClickException):
    """The API answered with an error status (exit status 3 for a 404, else 1)."""

    def __init__(self, status: int, error: str, details: str) -> None:
        super().__init__(f"{error}: {details}" if details and details != error else error)
        self.status = status
        self.error = error
        self.details = details

    @classmethod
    def of(cls, status: int, error: str, details: str) -> ApiError:
        """The error for ``status``: a :class:`NotFoundError` for a 404."""
        return (NotFoundError if status == 404 else cls)(status, error, details)


class NotFoundError(ApiError):
    """The API answered 404 (exit status 3)."""

    exit_code = EXIT_NOT_FOUND


@dataclass
class ApiClient:
    url: str = DEFAULT_API_URL
    token: str | None = None
    api_key: str | None = None
    api_key_header: str = "X-API-Key"
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise click.ClickException(
                f"invalid API URL {self.url!r}: expected http://HOST:PORT or https://HOST:PORT "
                f"(--api-url or CAXTON_API_URL)"
            )

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "caxton-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.api_key:
            headers[self.api_key_header] = self.api_key
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        wait: float = 0.0,
    ) -> Any:
        """Send one request; return the decoded JSON answer (None for 204).

        ``wait`` is how long the server may legitimately take (a reply timeout, a
        drain), added to the client's own timeout.
        """
        url = self.url + path
        if query:
            pairs = {k: v for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        headers = self.headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout + wait) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise self._api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise click.ClickException(self._network_problem(exc, self.timeout + wait)) from None
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise click.ClickException(
                f"the server at {self.url} did not answer with JSON; is --api-url the "
                f"Caxton API (it serves /api/v1/health)?"
            ) from None

    def _api_error(self, exc: urllib.error.HTTPError) -> ApiError:
        try:
            data = json.loads(exc.read() or b"null")
        except (ValueError, OSError):
            data = None
        if isinstance(data, dict) and "error" in data:
            return ApiError.of(exc.code, str(data["error"]), str(data.get("details", "")))
        return ApiError.of(
            exc.code,
            f"HTTP {exc.code} {exc.reason}",
            f"from {self.url}; is --api-url the Caxton API?",
        )

    def _network_problem(self, exc: BaseException, timeout: float) -> str:
        where = f"cannot reach the Caxton API at {self.url}"
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ConnectionRefusedError) or (
            isinstance(reason, OSError) and reason.errno == errno.ECONNREFUSED
        ):
            return f"{where}: connection refused (is `caxton server start` running?)"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"{where}: no answer within {timeout:g}s"
        if isinstance(reason, socket.gaierror):
            return f"{where}: unknown host ({reason.strerror})"
        text = getattr(reason, "strerror", None) or str(reason)
        return f"{where}: {text}"

    # -- agents by name ---------------------------------------------------------------

    def agent(self, name_or_id: str) -> dict[str, Any]:
        """The agent with this id, or else this name, on whichever node of the cluster
        runs it."""
        if _is_uuid(name_or_id):
            found: dict[str, Any] = self.request("GET", f"/api/v1/agents/{name_or_id}")
            return found
        matches = self.request(
            "GET", "/api/v1/agents", query={"scope": "cluster", "name": glob.escape(name_or_id)}
        )
        if not matches:
            raise NotFoundError(404, "Not found", f"Agent not found: {name_or_id}")
        first: dict[str, Any] = matches[0]
        return first


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False
