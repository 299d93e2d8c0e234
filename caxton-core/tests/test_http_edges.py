"""HTTP edges over raw sockets (issue 13, item 2): a client that goes away is a 499 and
one INFO line, streams end quietly, parser errors are one rate-limited WARNING line
each, ``Expect: 100-continue`` is checked against the body limit before any ``100``,
and HTTP/0.9 or a malformed request line is a 400 and a close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from caxton.api import cluster as api_cluster
from caxton.cluster.events import EventLog
from caxton.node import Node
from caxton.testing import NodeFactory

GIVE_UP = 10.0


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    config = {"networking.max_body_size": "64KB", "networking.request_timeout": "5s"}
    async with caxton_node_factory.node(config=config) as node:
        yield node


async def exchange(node: Node, data: bytes, *, close_after: bool = False) -> bytes:
    assert node.api_address is not None
    reader, writer = await asyncio.open_connection(*node.api_address)
    try:
        writer.write(data)
        await writer.drain()
        if close_after:
            return b""
        return await asyncio.wait_for(reader.read(), GIVE_UP)
    finally:
        writer.close()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def lines_of(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [
        f"{r.levelname} {r.name} {r.getMessage()}" for r in caplog.records if r.levelno >= level
    ]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.exc_text]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_a_client_that_goes_away_mid_body_is_499_and_one_info_line(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = (
        b"POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    await exchange(node, head + b'{"name": "half', close_after=True)
    await asyncio.sleep(0.3)
    assert tracebacks(caplog) == []
    access = [r.__dict__["access"] for r in caplog.records if r.name == "caxton.api.access"]
    assert [(a["path"], a["status"]) for a in access] == [("/api/v1/agents", 499)]
    assert [line for line in lines_of(caplog, logging.WARNING)] == []


class EventsOnly:
    """A node's cluster as the event stream sees it: the real event log, no members."""

    def __init__(self) -> None:
        self.events = EventLog()

    def recent_events(self, limit: int) -> list[Any]:
        return self.events.recent(limit)

    def watch(self) -> Any:
        return self.events.watch()


async def test_a_stream_ends_quietly_when_its_client_goes(
    node: Node, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    cluster = EventsOnly()
    monkeypatch.setattr(api_cluster, "_cluster", lambda request: cluster)
    assert node.api_address is not None
    reader, writer = await asyncio.open_connection(*node.api_address)
    writer.write(b"GET /api/v1/cluster/events/stream?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), GIVE_UP)).startswith(b"HTTP/1.1 200")
    writer.transport.abort()  # gone, without a goodbye
    await asyncio.sleep(0.1)
    for i in range(3):  # the stream writes to the client that went away
        cluster.events.record("joined", f"event {i}")
        await asyncio.sleep(0.1)
    assert tracebacks(caplog) == []
    assert [line for line in lines_of(caplog, logging.WARNING) if "caxton.api" in line] == []
    access = [r.__dict__["access"] for r in caplog.records if r.name == "caxton.api.access"]
    assert [a["status"] for a in access] == [499]


async def test_expect_100_continue_is_checked_before_any_100(node: Node) -> None:
    raw = await exchange(
        node,
        b"POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert not raw.startswith(b"HTTP/1.1 100"), raw[:200]
    assert status_of(raw) == 413
    assert b'"error"' in raw


async def test_expect_100_continue_within_the_limit_goes_on(node: Node) -> None:
    body = b'{"performative": "inform", "sender": "c", "receiver": "nobody"}'
    raw = await exchange(
        node,
        b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nExpect: 100-continue\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), raw[:200]
    assert status_of(raw.split(b"\r\n\r\n", 1)[1]) == 404  # nobody is not deployed


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /\r\n\r\n",  # HTTP/0.9
        b"GET /api/v1/health\r\n\r\n",
        b"GET /api/v1/health HTTP/0.9\r\n\r\n",
        b"GET  /api/v1/health HTTP/1.1\r\n\r\n",
        b"GET /api/v1/health HTTP/1.1 extra\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ],
)
async def test_http_0_9_and_malformed_request_lines_are_400_and_closed(
    node: Node, request_line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    raw = await exchange(node, request_line)  # returns when the server closes
    assert raw[:5] == b"HTTP/", raw[:200]
    assert status_of(raw) == 400, raw[:200]
    await settle()
    assert tracebacks(caplog) == []
    warnings = lines_of(caplog, logging.WARNING)  # a parser error: one short line
    assert len(warnings) <= 1, warnings
    assert all(len(line) < 300 for line in warnings)


async def test_parser_errors_are_rate_limited(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(100):
        await exchange(node, b"GET /api/v1/health HTTP/1.1 extra\r\n\r\n")
    await settle()
    assert tracebacks(caplog) == []
    warnings = lines_of(caplog, logging.WARNING)
    assert 1 <= len(warnings) <= 12, warnings
    assert sum(len(w) for w in warnings) < 4000
