"""One request/reply across two real node processes, traced: the spans arrive at an
OTLP/HTTP receiver started here (aiohttp, decoding the protobuf export requests with
opentelemetry-proto) and form one tree, from the REST request on n1 to the agent on n2
and the reply back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cluster_support import ProcessCluster

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="needs caxton-core[tracing] (opentelemetry-proto)",
)


@dataclass
class Span:
    name: str
    node: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._ready.set()
        self._loop.run_forever()

    async def _receive(self, request: web.Request) -> web.Response:
        export = trace_service.ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        received = []
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        Span(
                            span.name,
                            resource.get("service.instance.id", ""),
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self._lock:
            self.spans.extend(received)
        response = trace_service.ExportTraceServiceResponse()
        return web.Response(
            body=response.SerializeToString(), content_type="application/x-protobuf"
        )

    def start(self) -> OtlpReceiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.close()


def test_a_cross_node_request_and_its_reply_make_one_trace(
    make_cluster: Any, echo: bytes, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s
    tracing = {
        "enable_tracing": True,
        "trace_sample_rate": 1.0,
        "otlp_endpoint": receiver.url,
    }
    cluster: ProcessCluster = make_cluster(extra={"observability": tracing})
    n1, n2 = cluster.start(2)
    n2.deploy("echo", echo)
    cluster.wait_until(
        lambda: all(n.agents().get("echo") == "n2" for n in (n1, n2)), 15, "echo known"
    )
    result = n1.ask("echo", {"traced": True})
    assert result["status"] == "replied"
    trace_id = result["reply"]["traceparent"].split("-")[1]

    def spans() -> list[Span]:
        return [s for s in receiver.snapshot() if s.trace_id == trace_id]

    cluster.wait_until(lambda: any(s.name == "caxton.reply" and s.node == "n1" for s in spans()),
                       15, "the reply's span on n1")  # fmt: skip
    time.sleep(0.3)
    found = spans()
    by_id = {s.span_id: s for s in found}

    def chain(leaf: Span) -> list[tuple[str, str]]:
        path = [(leaf.name, leaf.node)]
        while leaf.parent_id in by_id:
            leaf = by_id[leaf.parent_id]
            path.append((leaf.name, leaf.node))
        return path[::-1]

    roots = [s for s in found if s.parent_id not in by_id]
    assert len(roots) == 1, [(s.name, s.node) for s in roots]
    assert roots[0].name == "POST /api/v1/messages"
    assert roots[0].attributes["http.response.status_code"] == 200
    last = next(s for s in found if s.name == "caxton.reply" and s.node == "n1")
    assert chain(last) == [
        ("POST /api/v1/messages", "n1"),
        ("caxton.route", "n1"),
        ("caxton.forward", "n1"),
        ("caxton.route", "n2"),
        ("caxton.agent.handle", "n2"),
        ("caxton.reply", "n2"),
        ("caxton.forward", "n2"),
        ("caxton.reply", "n1"),
    ]
    handle = next(s for s in found if s.name == "caxton.agent.handle")
    assert handle.attributes["caxton.agent"] == "echo"
    assert handle.attributes["caxton.fuel_used"] > 0
    forward = next(s for s in found if s.name == "caxton.forward" and s.node == "n1")
    assert forward.attributes["caxton.to_node"] == "n2"
