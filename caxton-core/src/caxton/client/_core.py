"""What the sync and async clients share: settings, requests, answers, errors, retries.

A :class:`Call` describes one REST request (method, path, query, JSON body, how long the
server may legitimately take); :mod:`caxton.client.operations` builds one per REST
operation, and both clients send it through httpx, so there is one HTTP code path.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "ApiError",
    "Call",
    "ClientError",
    "ConnectionProblem",
    "Settings",
]

DEFAULT_URL = "http://127.0.0.1:8080"
#: Seconds to wait for an answer, on top of any wait the request itself asks for.
DEFAULT_TIMEOUT = 30.0
#: Statuses after which the same request goes to the next URL: the node refused it
#: before doing anything (a minority partition, a node not ready yet).
RETRY_STATUSES = frozenset({503})


class ClientError(Exception):
    """Base of the client's errors."""


class ApiError(ClientError):
    """The API answered with an error status: its ``{"error", "details"}``."""

    def __init__(self, status: int, error: str, details: str, url: str = "") -> None:
        super().__init__(f"{error}: {details}" if details and details != error else error)
        self.status = status
        self.error = error
        self.details = details
        self.url = url

    @property
    def not_found(self) -> bool:
        return self.status == 404


class ConnectionProblem(ClientError):
    """No node answered: refused, unknown host, TLS failure, timeout."""


@dataclass(frozen=True)
class Call:
    """One REST request."""

    method: str
    path: str
    query: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    #: Seconds the server may legitimately take (a reply wait, a drain).
    wait: float = 0.0
    #: Safe to send again after a timeout (the node may have carried it out).
    idempotent: bool = False

    def params(self) -> dict[str, str]:
        return {k: _text(v) for k, v in self.query.items() if v is not None}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Settings:
    """Where the API is and how to talk to it (shared by both clients)."""

    urls: Sequence[str] = (DEFAULT_URL,)
    api_key: str | None = None
    token: str | None = None
    api_key_header: str = "X-API-Key"
    #: A CA bundle (PEM) to verify the nodes' certificates with.
    ca_cert: str | Path | None = None
    #: False: do not verify certificates at all (testing only).
    verify: bool = True
    timeout: float = DEFAULT_TIMEOUT
    user_agent: str = "caxton-client"

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            self.urls = [self.urls]
        self.urls = [url.rstrip("/") for url in self.urls]
        if not self.urls:
            raise ValueError("give at least one API URL")
        for url in self.urls:
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(
                    f"invalid API URL {url!r}: expected http://HOST:PORT or https://HOST:PORT"
                )

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.api_key:
            headers[self.api_key_header] = self.api_key
        return headers

    def tls(self) -> ssl.SSLContext | bool:
        """httpx's ``verify``: a context trusting ``ca_cert``, or the default, or off."""
        if not self.verify:
            return False
        if self.ca_cert is not None:
            try:
                return ssl.create_default_context(cafile=str(self.ca_cert))
            except (OSError, ssl.SSLError) as exc:
                raise ClientError(f"cannot load the CA certificate {self.ca_cert}: {exc}") from None
        return True

    def timeout_for(self, call: Call) -> httpx.Timeout:
        return httpx.Timeout(self.timeout + call.wait, connect=min(self.timeout, 10.0))

    def request(self, call: Call, url: str) -> dict[str, Any]:
        """httpx's ``request`` arguments for ``call`` sent to ``url``."""
        return {
            "method": call.method,
            "url": url + call.path,
            "params": call.params(),
            "json": call.body,
            "timeout": self.timeout_for(call),
        }

    def give_up(self, call: Call, exc: Exception, url: str, *, last: bool) -> ClientError | None:
        """The error to raise after ``exc`` from ``url``; None: try the next URL."""
        if not last and retry_after_error(call, exc):
            return None
        if isinstance(exc, ApiError):
            return exc
        return network_problem(exc, url, self.timeout + call.wait)


def answer(response: httpx.Response, url: str) -> Any:
    """The decoded JSON of a success (None for an empty body); raise :class:`ApiError`."""
    if response.status_code >= 400:
        raise api_error(response, url)
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        raise ClientError(
            f"the server at {url} did not answer with JSON; is it the Caxton API "
            f"(it serves /api/v1/health)?"
        ) from None


def api_error(response: httpx.Response, url: str) -> ApiError:
    try:
        data = json.loads(response.content or b"null")
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        return ApiError(response.status_code, str(data["error"]), str(data.get("details", "")), url)
    return ApiError(
        response.status_code,
        f"HTTP {response.status_code} {response.reason_phrase}",
        f"from {url}; is it the Caxton API?",
        url,
    )


def retry_after_error(call: Call, exc: Exception) -> bool:
    """Send ``call`` to the next URL after ``exc``?"""
    if isinstance(exc, ApiError):
        return exc.status in RETRY_STATUSES
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return True  # nothing reached the node
    return call.idempotent and isinstance(exc, httpx.TransportError)


def network_problem(exc: Exception, url: str, timeout: float) -> ConnectionProblem:
    where = f"cannot reach the Caxton API at {url}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return ConnectionProblem(f"{where}: no answer within {timeout:g}s")
    if isinstance(exc, httpx.ConnectError):
        lowered = text.lower()
        if "wrong_version_number" in lowered:
            return ConnectionProblem(
                f"{where}: the node does not speak TLS there ({text}); use http://"
            )
        if "refused" in lowered:
            return ConnectionProblem(
                f"{where}: connection refused (is `caxton server start` running?)"
            )
        if "certificate" in lowered or "ssl" in lowered:
            return ConnectionProblem(
                f"{where}: TLS failed ({text}); give the CA with --ca-cert / ca_cert, "
                f"or use http:// for a node without networking.tls_enabled"
            )
        if "name or service" in lowered or "nodename" in lowered or "getaddrinfo" in lowered:
            return ConnectionProblem(f"{where}: unknown host ({text})")
    return ConnectionProblem(f"{where}: {text}")


def stream_line(raw: str) -> dict[str, Any] | None:
    """One line of a streamed answer as JSON (None for a keep-alive blank line)."""
    raw = raw.strip()
    if not raw:
        return None
    data = json.loads(raw)
    return data if isinstance(data, dict) else {"value": data}
