"""The public Python client of the Caxton REST API, sync and async.

::

    from caxton.client import Client

    with Client("https://n1:8080", api_key="cxk_...", ca_cert="ca.crt") as caxton:
        agent = caxton.agent("echo")              # by name, on any node of the cluster
        caxton.suspend_agent(agent["id"])

    from caxton.client import AsyncClient

    async with AsyncClient(["http://n1:8080", "http://n2:8080"]) as caxton:
        reply = await caxton.send_message("echo", "hi", wait=5)

Every REST operation is a method (:class:`~caxton.client.operations.Operations`); both
clients send the same :class:`Call` through httpx. Given several URLs, a request that a
node refuses with 503 (a minority partition, not ready) or that cannot reach a node goes
to the next one. Errors: :class:`ApiError` (the API's ``{"error", "details"}`` and
status), :class:`ConnectionProblem` (no node answered). See docs/client.md.
"""

from __future__ import annotations

import glob
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

from caxton.client._core import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    ApiError,
    Call,
    ClientError,
    ConnectionProblem,
    Settings,
    answer,
    api_error,
    network_problem,
    stream_line,
)
from caxton.client.operations import Operations

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "Call",
    "Client",
    "ClientError",
    "ConnectionProblem",
    "Settings",
]

JSON = Any
#: The httpx client class of a client.
H = TypeVar("H")


def _named(matches: Any, name: str) -> dict[str, Any]:
    """The agent named ``name`` in a cluster listing (the first node's), or a 404."""
    for agent in matches or []:
        if isinstance(agent, dict) and agent.get("name") == name:
            return agent
    raise ApiError(404, "Not found", f"Agent not found: {name}")


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


class _Configured(Generic[H]):
    """What both clients are made with; ``_open`` makes the httpx client of each."""

    def __init__(
        self,
        urls: str | Sequence[str] = DEFAULT_URL,
        *,
        api_key: str | None = None,
        token: str | None = None,
        ca_cert: str | Path | None = None,
        verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        api_key_header: str = "X-API-Key",
    ) -> None:
        self.settings = Settings(
            [urls] if isinstance(urls, str) else list(urls),
            api_key=api_key,
            token=token,
            api_key_header=api_key_header,
            ca_cert=ca_cert,
            verify=verify,
            timeout=timeout,
        )
        self._http: H = self._open()

    def _open(self) -> H:
        raise NotImplementedError


class Client(_Configured[httpx.Client], Operations[JSON]):
    """A synchronous client; every :class:`Operations` method returns the decoded JSON."""

    def _open(self) -> httpx.Client:
        return httpx.Client(headers=self.settings.headers(), verify=self.settings.tls())

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> JSON:
        urls = self.settings.urls
        for index, url in enumerate(urls):
            try:
                return answer(self._http.request(**self.settings.request(call, url)), url)
            except (ApiError, httpx.HTTPError) as exc:
                error = self.settings.give_up(call, exc, url, last=index + 1 == len(urls))
                if error is not None:
                    raise error from None
        raise AssertionError("unreachable")

    def agent(self, name_or_id: str) -> JSON:
        """The agent with this id, or else this name, wherever it runs in the cluster."""
        if _is_uuid(name_or_id):
            return self.get_agent(name_or_id)
        return _named(self.list_agents(cluster=True, name=glob.escape(name_or_id)), name_or_id)

    def stream(self, path: str, query: Mapping[str, Any] | None = None) -> Iterator[JSON]:
        """The JSON lines of a streamed answer as they arrive (e.g. the cluster events)."""
        url = self.settings.urls[0]
        params = Call("GET", path, dict(query or {})).params()
        try:
            with self._http.stream(
                "GET", url + path, params=params, timeout=httpx.Timeout(None, connect=10.0)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response, url)
                for line in response.iter_lines():
                    data = stream_line(line)
                    if data is not None:
                        yield data
        except httpx.HTTPError as exc:
            raise network_problem(exc, url, self.settings.timeout) from None

    def iter_bytes(self, path: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The body of ``GET path`` in chunks as it arrives (e.g. a backup's file)."""
        url = self.settings.urls[0]
        try:
            with self._http.stream(
                "GET", url + path, timeout=self.settings.timeout_for(Call("GET", path))
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response, url)
                yield from response.iter_bytes(chunk_size)
        except httpx.HTTPError as exc:
            raise network_problem(exc, url, self.settings.timeout) from None

    def cluster_event_stream(self, history: int = 10, follow: bool = True) -> Iterator[JSON]:
        """Membership, registry and mode events: ``history`` recent ones, then live."""
        return self.stream("/api/v1/cluster/events/stream", {"limit": history, "follow": follow})


class AsyncClient(_Configured[httpx.AsyncClient], Operations[Any]):
    """An asyncio client; every :class:`Operations` method returns an awaitable of the JSON."""

    def _open(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=self.settings.headers(), verify=self.settings.tls())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> JSON:
        urls = self.settings.urls
        for index, url in enumerate(urls):
            try:
                return answer(await self._http.request(**self.settings.request(call, url)), url)
            except (ApiError, httpx.HTTPError) as exc:
                error = self.settings.give_up(call, exc, url, last=index + 1 == len(urls))
                if error is not None:
                    raise error from None
        raise AssertionError("unreachable")

    async def agent(self, name_or_id: str) -> JSON:
        """The agent with this id, or else this name, wherever it runs in the cluster."""
        if _is_uuid(name_or_id):
            return await self.get_agent(name_or_id)
        listed = await self.list_agents(cluster=True, name=glob.escape(name_or_id))
        return _named(listed, name_or_id)

    async def stream(
        self, path: str, query: Mapping[str, Any] | None = None
    ) -> AsyncIterator[JSON]:
        """The JSON lines of a streamed answer as they arrive (e.g. the cluster events)."""
        url = self.settings.urls[0]
        params = Call("GET", path, dict(query or {})).params()
        try:
            async with self._http.stream(
                "GET", url + path, params=params, timeout=httpx.Timeout(None, connect=10.0)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise api_error(response, url)
                async for line in response.aiter_lines():
                    data = stream_line(line)
                    if data is not None:
                        yield data
        except httpx.HTTPError as exc:
            raise network_problem(exc, url, self.settings.timeout) from None

    async def iter_bytes(self, path: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """The body of ``GET path`` in chunks as it arrives (e.g. a backup's file)."""
        url = self.settings.urls[0]
        try:
            async with self._http.stream(
                "GET", url + path, timeout=self.settings.timeout_for(Call("GET", path))
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise api_error(response, url)
                async for chunk in response.aiter_bytes(chunk_size):
                    yield chunk
        except httpx.HTTPError as exc:
            raise network_problem(exc, url, self.settings.timeout) from None

    def cluster_event_stream(self, history: int = 10, follow: bool = True) -> AsyncIterator[JSON]:
        """Membership, registry and mode events: ``history`` recent ones, then live."""
        return self.stream("/api/v1/cluster/events/stream", {"limit": history, "follow": follow})
