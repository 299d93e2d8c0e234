"""Tracing on one node: the spans reach an OTLP/HTTP receiver (aiohttp, protobuf decoded
with opentelemetry-proto), nest from the REST request to the agent's reply, continue a
client's traceparent; off, messages carry no trace; bad settings are config errors.
The cross-node trace is tests/cluster/test_tracing.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from caxton.config import load_config
from caxton.errors import ConfigError
from caxton.testing import NodeFactory
from caxton.tracing import check_tracing

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="needs caxton-core[tracing] (opentelemetry-proto)",
)


class Receiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def receive(self, request: web.Request) -> web.Response:
        export = trace_service.ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace": span.trace_id.hex(),
                            "id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {
                                a.key: getattr(a.value, a.value.WhichOneof("value"))
                                for a in span.attributes
                            },
                        }
                    )
        return web.Response(content_type="application/x-protobuf")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield found, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def traced(url: str, ratio: float = 1.0) -> dict[str, Any]:
    return {
        "observability.enable_tracing": True,
        "observability.trace_sample_rate": ratio,
        "observability.otlp_endpoint": url,
    }


async def ask(node: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    host, port = node.api_address
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"http://{host}:{port}/api/v1/messages",
            json={"performative": "request", "receiver": "echo", "content": 7, "wait_ms": 5000},
            headers=headers or {},
        )
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def test_a_request_and_its_reply_are_one_trace_of_nested_spans(
    tmp_path: Path,
    example_agents: dict[str, bytes],
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    found, url = receiver
    async with NodeFactory(tmp_path).node("t1", config=traced(url)) as node:
        await node.agents.deploy("echo", example_agents["echo"])
        client_trace = "0af7651916cd43dd8448eb211c80319c"
        answer = await ask(node, {"traceparent": f"00-{client_trace}-b7ad6b7169203331-01"})
    # stopping the node exported the rest
    spans = [s for s in found.spans if s["trace"] == client_trace]
    names = {s["id"]: s["name"] for s in spans}
    parents = {s["name"]: names.get(s["parent"], s["parent"]) for s in spans}
    assert parents == {
        "POST /api/v1/messages": "b7ad6b7169203331",  # the client's span
        "caxton.route": "POST /api/v1/messages",
        "caxton.agent.handle": "caxton.route",
        "caxton.reply": "caxton.agent.handle",
    }
    handle = next(s for s in spans if s["name"] == "caxton.agent.handle")
    assert handle["attributes"]["caxton.fuel_used"] > 0
    assert handle["attributes"]["caxton.agent"] == "echo"
    assert answer["reply"]["traceparent"].split("-")[1] == client_trace


async def test_sampling_keeps_a_fraction_of_the_traces(
    tmp_path: Path,
    example_agents: dict[str, bytes],
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    found, url = receiver
    async with NodeFactory(tmp_path).node("t2", config=traced(url, ratio=0.0)) as node:
        await node.agents.deploy("echo", example_agents["echo"])
        answer = await ask(node)
        await asyncio.sleep(0.2)
    assert found.spans == []
    flags = int(answer["reply"]["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 1 == 0  # propagated, marked not sampled


async def test_off_messages_carry_no_trace(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    async with NodeFactory(tmp_path).node("t3") as node:
        assert node.tracing is None
        await node.agents.deploy("echo", example_agents["echo"])
        answer = await ask(node)
    assert "traceparent" not in answer["reply"]


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"observability.otlp_endpoint": None}, "needs observability.otlp_endpoint"),
        ({"observability.otlp_endpoint": "collector:4318"}, "expected an http"),
    ],
)
def test_tracing_without_a_usable_collector_is_a_config_error(
    settings: dict[str, Any], error: str
) -> None:
    config = load_config(env={}, overrides={"observability.enable_tracing": True, **settings})
    with pytest.raises(ConfigError, match=error):
        check_tracing(config)


def test_the_collector_url_gets_the_traces_path() -> None:
    config = load_config(env={}, overrides=traced("http://127.0.0.1:4318/"))
    assert check_tracing(config) == "http://127.0.0.1:4318/v1/traces"
    config = load_config(env={}, overrides=traced("https://otel.example/custom/traces"))
    assert check_tracing(config) == "https://otel.example/custom/traces"
