"""The transport conformance suite, and the certificates it needs.

A transport plugin's tests subclass :class:`TransportConformance`, name the driver and
say how to open a raw byte stream to a listener (the suite uses it to send garbage,
truncated frames and certificate-less handshakes)::

    from caxton.testing.transport import RawStream, TransportConformance

    class TestMyTransport(TransportConformance):
        driver_class = MyTransport
        entry_point_name = "mine"

        async def raw_connect(self, address, tls):
            ...  # a RawStream over your wire, TLS with ``tls`` (None: plaintext)

The driver is built as ``driver_class(config, context, settings=TransportSettings(...))``
(see :class:`caxton.transport.TransportSettings`), so the suite can give each node its
own certificates, node id and limits. Every test runs real sockets on loopback in a fresh
event loop; the security matrix runs with mutual TLS, the keyring tests in plaintext mode.
Test names say which guarantee fails. :func:`make_pki` builds the CA and certificates
(class-scoped fixture ``pki``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest

from caxton.drivers import Driver, DriverContext, Frame, FrameKind, Transport
from caxton.drivers.transport import Address
from caxton.errors import ConfigError, TransportError
from caxton.security.pki import init_ca, issue_node_cert
from caxton.security.tls import TlsFiles
from caxton.testing.conformance import DriverConformance, driver_config, run
from caxton.transport.envelope import Kind, pack_envelope
from caxton.transport.framing import frame
from caxton.transport.keyring import Keyring
from caxton.transport.settings import TransportSettings

__all__ = [
    "FrameRecorder",
    "RawSocketStream",
    "RawStream",
    "TransportConformance",
    "TransportPKI",
    "make_pki",
    "peer_main",
]

LOOPBACK = ("127.0.0.1", 0)


# -------------------------------------------------------------------------
# Certificates
# -------------------------------------------------------------------------


@dataclass
class TransportPKI:
    """A cluster CA, a foreign CA, and node certificates issued on demand."""

    directory: Path
    _issued: dict[str, TlsFiles] = field(default_factory=dict)

    @property
    def ca_dir(self) -> Path:
        return self.directory / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    def node(self, node_id: str) -> TlsFiles:
        """A valid certificate of the cluster CA for ``node_id``."""
        if node_id not in self._issued:
            issue_node_cert(
                self.ca_dir,
                node_id,
                self.directory / "nodes" / node_id,
                hosts=["127.0.0.1", "localhost"],
            )
            self._issued[node_id] = TlsFiles.from_dir(self.directory / "nodes" / node_id)
        return self._issued[node_id]

    def foreign(self, node_id: str) -> TlsFiles:
        """A certificate for ``node_id`` signed by another CA (trusting the real CA)."""
        key = f"foreign:{node_id}"
        if key not in self._issued:
            other = self.directory / "other-ca"
            if not (other / "ca.crt").exists():
                init_ca(other, name="Some other CA")
            out = self.directory / "foreign" / node_id
            issue_node_cert(other, node_id, out, hosts=["127.0.0.1"])
            self._issued[key] = TlsFiles(self.ca_cert, out / "node.crt", out / "node.key")
        return self._issued[key]

    def expired(self, node_id: str) -> TlsFiles:
        """A certificate of the cluster CA for ``node_id`` that expired last year."""
        key = f"expired:{node_id}"
        if key not in self._issued:
            out = self.directory / "expired" / node_id
            start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
            issue_node_cert(self.ca_dir, node_id, out, days=30, valid_from=start)
            self._issued[key] = TlsFiles.from_dir(out)
        return self._issued[key]

    def without_certificate(self) -> TlsFiles:
        """Trusts the cluster CA but presents no certificate of its own."""
        return TlsFiles(self.ca_cert, None, None)


def make_pki(directory: Path) -> TransportPKI:
    init_ca(directory / "ca")
    return TransportPKI(directory)


# -------------------------------------------------------------------------
# Nodes under test
# -------------------------------------------------------------------------


class RawStream(Protocol):
    """A byte stream to a listener that bypasses the transport's framing."""

    def write(self, data: bytes) -> None: ...

    async def wait_closed(self, timeout: float) -> bool:
        """Read and discard until the peer closes or resets (True) or ``timeout`` (False)."""
        ...

    def close(self) -> None: ...


class RawSocketStream:
    """A :class:`RawStream` over a TCP socket (TLS or not), for stream-socket transports."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, address: Address, tls: TlsFiles | None) -> RawSocketStream:
        from caxton.security.tls import client_context

        context = client_context(tls) if tls is not None else None
        reader, writer = await asyncio.open_connection(
            address[0], address[1], ssl=context, server_hostname="" if context else None
        )
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def wait_closed(self, timeout: float) -> bool:
        async def read_to_end() -> None:
            while await self._reader.read(65536):
                pass

        try:
            await asyncio.wait_for(read_to_end(), timeout)
        except asyncio.TimeoutError:
            return False
        except OSError:  # reset, or a TLS alert from the server
            return True
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


class FrameRecorder:
    """Handlers for :meth:`Transport.listen` that record what arrives.

    Requests are answered ``b"ok"``; :meth:`until` waits for a condition on the records.
    """

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.datagrams: list[tuple[bytes, Address]] = []
        self.changed = asyncio.Event()

    async def on_frame(self, frame_: Frame) -> bytes | None:
        self.frames.append(frame_)
        self.changed.set()
        return b"ok" if frame_.request_id else None

    def on_datagram(self, payload: bytes, source: Address) -> None:
        self.datagrams.append((payload, source))
        self.changed.set()

    async def until(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


@dataclass
class Node:
    """A started transport with recording handlers."""

    node_id: str
    transport: Transport
    address: Address
    frames: list[Frame] = field(default_factory=list)
    datagrams: list[tuple[bytes, Address]] = field(default_factory=list)
    #: Cleared: message handlers block (a slow peer).
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_frame(self, frame_: Frame) -> bytes | None:
        if not frame_.request_id:
            await self.gate.wait()
        self.frames.append(frame_)
        self.arrived.set()
        if not frame_.request_id:
            return None
        if frame_.payload.startswith(b"sleep:"):
            await asyncio.sleep(float(frame_.payload[6:]))
        if frame_.payload == b"fail":
            raise RuntimeError("handler refused")
        return b"echo:" + frame_.payload

    def on_datagram(self, payload: bytes, source: Address) -> None:
        self.datagrams.append((payload, source))
        self.arrived.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.node_id}: condition not met within {timeout}s")
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.1))

    def payloads(self, kind: FrameKind | None = None) -> list[bytes]:
        return [f.payload for f in self.frames if kind is None or f.kind == kind]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Retry ``check`` until it returns True (for reconnects), failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not achieved within {timeout}s")
        await asyncio.sleep(0.05)


class Cluster:
    """Transports started by one test, all closed at the end."""

    def __init__(self, suite: TransportConformance, pki: TransportPKI) -> None:
        self.suite = suite
        self.pki = pki
        self.transports: list[Transport] = []

    def settings(
        self, node_id: str, *, tls: TlsFiles | bool | None = True, **overrides: Any
    ) -> TransportSettings:
        files = self.pki.node(node_id) if tls is True else (tls or None)
        base = TransportSettings(
            node_id=node_id,
            tls=files,
            plaintext=files is None,
            connect_timeout=3.0,
            handshake_timeout=3.0,
            drain_timeout=5.0,
        )
        return replace(base, **overrides)

    def build(
        self, settings: TransportSettings, config: Mapping[str, Any] | None = None
    ) -> Transport:
        transport = self.suite.make_transport(settings, config or {})
        self.transports.append(transport)
        return transport

    async def start(
        self,
        node_id: str,
        *,
        tls: TlsFiles | bool | None = True,
        address: Address = LOOPBACK,
        config: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Node:
        transport = self.build(self.settings(node_id, tls=tls, **overrides), config)
        await transport.start()
        node = Node(node_id, transport, LOOPBACK)
        node.gate.set()
        node.address = await transport.listen(address, node.on_frame, node.on_datagram)
        return node

    async def close(self) -> None:
        for transport in reversed(self.transports):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transport.close(), 15)


# -------------------------------------------------------------------------
# A peer in another process (to be killed)
# -------------------------------------------------------------------------


def peer_main() -> None:
    """Child process body: ``python -c 'from caxton.testing.transport import peer_main;
    peer_main()' SPEC`` where SPEC is JSON {transport, node_id, tls: [ca, cert, key] | null,
    config}. Prints its address as one JSON line, then serves: a ``hang`` request never
    answers; a ``stream:HOST:PORT`` message starts an endless numbered stream to HOST:PORT.
    """
    spec = json.loads(sys.argv[1])
    (ep,) = [e for e in entry_points(group="caxton.transport") if e.name == spec["transport"]]
    cls = ep.load()
    tls = TlsFiles(*(Path(p) for p in spec["tls"])) if spec["tls"] else None
    settings = TransportSettings(spec["node_id"], tls=tls, plaintext=tls is None)

    async def main() -> None:
        context = DriverContext(node_id=spec["node_id"], data_dir=Path("."), hook=None)  # type: ignore[arg-type]
        transport = cls(driver_config(cls, spec["config"]), context, settings=settings)
        tasks: set[asyncio.Task[None]] = set()

        async def stream(target: Address) -> None:
            counter = 0
            while True:
                await transport.send(target, FrameKind.MESSAGE, counter.to_bytes(8, "big"))
                counter += 1
                if counter % 64 == 0:
                    await asyncio.sleep(0)

        async def on_frame(frame_: Frame) -> bytes | None:
            if frame_.payload == b"hang":
                await asyncio.Event().wait()
            if frame_.payload.startswith(b"stream:"):
                host, port = frame_.payload[7:].decode().rsplit(":", 1)
                task = asyncio.get_running_loop().create_task(stream((host, int(port))))
                tasks.add(task)
            return b"ok"

        await transport.start()
        address = await transport.listen(LOOPBACK, on_frame, lambda p, s: None)
        print(json.dumps({"address": list(address)}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -------------------------------------------------------------------------
# The suite
# -------------------------------------------------------------------------


class TransportConformance(DriverConformance):
    """The contract of :class:`caxton.drivers.Transport`; see the module docstring."""

    interface: ClassVar[type[Driver]] = Transport
    #: Values for the driver's own config section in every test.
    driver_config: ClassVar[Mapping[str, Any]] = {}

    # -- what a plugin provides -----------------------------------------------------

    async def raw_connect(self, address: Address, tls: TlsFiles | None) -> RawStream:
        """Open a raw byte stream to ``address`` on this wire (TLS with ``tls``)."""
        raise NotImplementedError("the plugin's test class must implement raw_connect()")

    def make_transport(self, settings: TransportSettings, config: Mapping[str, Any]) -> Transport:
        context = DriverContext(node_id=settings.node_id, data_dir=Path("."), hook=None)  # type: ignore[arg-type]
        values = driver_config(self.driver_class, {**self.driver_config, **config})
        transport = self.driver_class(values, context, settings=settings)  # type: ignore[call-arg]
        assert isinstance(transport, Transport)
        return transport

    def make_driver(self, data_dir: Path) -> Driver:
        return self.make_transport(TransportSettings("node-1", plaintext=True), {})

    @pytest.fixture(scope="class")
    @classmethod
    def pki(cls, tmp_path_factory: pytest.TempPathFactory) -> TransportPKI:
        return make_pki(tmp_path_factory.mktemp("transport-pki"))

    def scenario(
        self, pki: TransportPKI, body: Callable[[Cluster], Awaitable[None]], timeout: float = 60
    ) -> None:
        """Run ``body`` with a fresh :class:`Cluster` in a fresh event loop."""

        async def main() -> None:
            cluster = Cluster(self, pki)
            try:
                await asyncio.wait_for(body(cluster), timeout)
            finally:
                await cluster.close()

        run(main())

    # -- listen, connect, frames ----------------------------------------------------

    def test_listen_returns_the_bound_port(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            b = await c.start("node-b")
            assert b.address[0] == "127.0.0.1"
            assert b.address[1] > 0

        self.scenario(pki, body)

    def test_frames_arrive_reliably_in_order_with_the_sender_id(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            sent = [i.to_bytes(4, "big") * (1 + i % 50) for i in range(500)]
            for payload in sent:
                await a.transport.send(b.address, FrameKind.MESSAGE, payload)
            await b.wait_for(lambda: len(b.frames) == len(sent))
            assert b.payloads() == sent
            assert {f.sender for f in b.frames} == {"node-a"}
            assert {f.kind for f in b.frames} == {FrameKind.MESSAGE}

        self.scenario(pki, body)

    def test_every_frame_kind_and_a_bulk_payload_arrive_intact(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            bulk = os.urandom(3 * 1024 * 1024 + 7)
            kinds = [FrameKind.MESSAGE, FrameKind.GOSSIP, FrameKind.CONTROL, FrameKind.BULK]
            for kind in kinds:
                await a.transport.send(b.address, kind, b"k%d" % kind)
            await a.transport.send(b.address, FrameKind.BULK, bulk)
            await b.wait_for(lambda: len(b.frames) == 5)
            assert [f.kind for f in b.frames] == [*kinds, FrameKind.BULK]
            assert b.frames[-1].payload == bulk

        self.scenario(pki, body)

    def test_empty_payload_is_a_frame(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            await a.transport.send(b.address, FrameKind.MESSAGE, b"")
            assert await a.transport.request(b.address, FrameKind.REQUEST, b"", 5) == b"echo:"
            await b.wait_for(lambda: len(b.frames) == 2)

        self.scenario(pki, body)

    # -- requests -------------------------------------------------------------------

    def test_request_gets_its_own_response(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            payloads = [b"r%d" % i for i in range(200)]
            answers = await asyncio.gather(
                *(a.transport.request(b.address, FrameKind.REQUEST, p, 10) for p in payloads)
            )
            assert answers == [b"echo:" + p for p in payloads]
            assert all(f.request_id for f in b.frames)

        self.scenario(pki, body)

    def test_request_times_out_and_the_connection_stays_usable(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            with pytest.raises(TransportError, match="timed out"):
                await a.transport.request(b.address, FrameKind.REQUEST, b"sleep:3", 0.2)
            assert await a.transport.request(b.address, FrameKind.REQUEST, b"x", 5) == b"echo:x"

        self.scenario(pki, body)

    def test_a_failing_request_handler_is_reported_to_the_requester(
        self, pki: TransportPKI
    ) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            with pytest.raises(TransportError, match="handler refused"):
                await a.transport.request(b.address, FrameKind.REQUEST, b"fail", 5)
            assert await a.transport.request(b.address, FrameKind.REQUEST, b"y", 5) == b"echo:y"

        self.scenario(pki, body)

    def test_a_slow_request_does_not_stall_later_ones(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            slow = asyncio.ensure_future(
                a.transport.request(b.address, FrameKind.REQUEST, b"sleep:30", 60)
            )
            assert await a.transport.request(b.address, FrameKind.REQUEST, b"q", 5) == b"echo:q"
            assert not slow.done()
            slow.cancel()

        self.scenario(pki, body)

    # -- datagrams ------------------------------------------------------------------

    def test_datagrams_arrive_with_the_senders_listen_address(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")

            async def delivered() -> bool:
                await a.transport.send_datagram(b.address, b"probe")
                await asyncio.sleep(0.05)
                return bool(b.datagrams)

            await eventually(delivered)
            assert b.datagrams[0] == (b"probe", a.address)

        self.scenario(pki, body)

    def test_datagram_to_an_unreachable_peer_is_dropped_silently(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a = await c.start("node-a", connect_timeout=0.5)
            await a.transport.send_datagram(("127.0.0.1", await _closed_port()), b"lost")

        self.scenario(pki, body)

    # -- pooling, reconnects --------------------------------------------------------

    def test_one_connection_per_peer_is_reused(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            await asyncio.gather(
                *(a.transport.send(b.address, FrameKind.MESSAGE, b"m") for _ in range(50)),
                *(a.transport.request(b.address, FrameKind.REQUEST, b"r", 10) for _ in range(50)),
            )
            for _ in range(20):
                await a.transport.send(b.address, FrameKind.MESSAGE, b"later")
            await b.wait_for(lambda: len(b.frames) == 120)
            assert a.transport.peer_stats()[b.address].connects == 1
            assert b.transport.peer_stats()[a.address].connects == 1

        self.scenario(pki, body)

    def test_reconnects_after_the_peer_restarts(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            assert await a.transport.request(b.address, FrameKind.REQUEST, b"1", 5) == b"echo:1"
            await b.transport.close()
            b2 = await c.start("node-b", address=b.address)

            async def answered() -> bool:
                try:
                    return await a.transport.request(b.address, FrameKind.REQUEST, b"2", 2) == (
                        b"echo:2"
                    )
                except TransportError:
                    return False

            await eventually(answered)
            assert b2.payloads() == [b"2"]
            assert a.transport.peer_stats()[b.address].connects == 2

        self.scenario(pki, body)

    def test_unreachable_peer_raises_transport_error(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a = await c.start("node-a", connect_timeout=0.5)
            dead = ("127.0.0.1", await _closed_port())
            with pytest.raises(TransportError):
                await a.transport.send(dead, FrameKind.MESSAGE, b"x")
            with pytest.raises(TransportError):
                await a.transport.request(dead, FrameKind.REQUEST, b"x", 0.5)

        self.scenario(pki, body)

    # -- back-pressure, limits ------------------------------------------------------

    def test_a_slow_peer_makes_the_sender_wait(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            b.gate.clear()  # b's handler blocks: it reads nothing more
            chunk = b"z" * (256 * 1024)
            total = 256  # 64 MiB: far beyond every buffer on the way
            sent = 0

            async def sender() -> None:
                nonlocal sent
                for i in range(total):
                    await a.transport.send(
                        b.address, FrameKind.MESSAGE, i.to_bytes(4, "big") + chunk
                    )
                    sent += 1

            task = asyncio.ensure_future(sender())
            await b.wait_for(lambda: sent > 0)
            await asyncio.sleep(1.0)
            assert not task.done(), "send() never waited although the peer read nothing"
            blocked_at = sent
            assert blocked_at < total
            b.gate.set()
            await asyncio.wait_for(task, 60)
            await b.wait_for(lambda: len(b.frames) == total, 60)
            assert [int.from_bytes(p[:4], "big") for p in b.payloads()] == list(range(total))

        self.scenario(pki, body, timeout=120)

    def test_oversized_frame_closes_that_connection_and_the_node_survives(
        self, pki: TransportPKI, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="caxton.transport")

        async def body(c: Cluster) -> None:
            b = await c.start("node-b", max_frame_size=64 * 1024)
            a = await c.start("node-a")
            await a.transport.send(b.address, FrameKind.MESSAGE, b"small")
            await b.wait_for(lambda: len(b.frames) == 1)
            with contextlib.suppress(TransportError):
                await a.transport.send(b.address, FrameKind.BULK, b"x" * (200 * 1024))
                await a.transport.request(b.address, FrameKind.REQUEST, b"after", 3)
            await b.wait_for(lambda: "max_frame_size" in caplog.text)
            assert b.payloads() == [b"small"]
            other = await c.start("node-c")
            assert await other.transport.request(b.address, FrameKind.REQUEST, b"c", 5) == (
                b"echo:c"
            )

        self.scenario(pki, body)

    def test_sending_beyond_the_own_frame_limit_raises(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a = await c.start("node-a", max_frame_size=64 * 1024)
            b = await c.start("node-b")
            with pytest.raises(TransportError, match="max_frame_size"):
                await a.transport.send(b.address, FrameKind.BULK, b"x" * (100 * 1024))

        self.scenario(pki, body)

    # -- garbage from raw sockets ---------------------------------------------------

    def _garbage_case(
        self,
        pki: TransportPKI,
        caplog: pytest.LogCaptureFixture,
        tls: bool,
        data: bytes,
        expect_log: str,
        close_after: bool = False,
    ) -> None:
        caplog.set_level(logging.INFO, logger="caxton.transport")

        async def body(c: Cluster) -> None:
            b = await c.start("node-b", tls=tls)
            raw = await self.raw_connect(b.address, pki.node("node-r") if tls else None)
            raw.write(data)
            if close_after:
                raw.close()
            else:
                assert await raw.wait_closed(10), "the listener kept a garbage connection open"
                raw.close()
            await b.wait_for(lambda: expect_log in caplog.text)
            assert b.frames == []
            a = await c.start("node-a", tls=tls)
            assert await a.transport.request(b.address, FrameKind.REQUEST, b"ok", 5) == b"echo:ok"

        self.scenario(pki, body)

    @pytest.mark.parametrize("tls", [True, False], ids=["mtls", "plaintext"])
    def test_garbage_bytes_close_the_connection_and_the_listener_keeps_serving(
        self, pki: TransportPKI, caplog: pytest.LogCaptureFixture, tls: bool
    ) -> None:
        self._garbage_case(
            pki, caplog, tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4, "max_frame_size"
        )

    @pytest.mark.parametrize("tls", [True, False], ids=["mtls", "plaintext"])
    def test_undecodable_envelope_closes_the_connection(
        self, pki: TransportPKI, caplog: pytest.LogCaptureFixture, tls: bool
    ) -> None:
        self._garbage_case(pki, caplog, tls, frame(b"\xc1\xc1\xc1 not msgpack"), "envelope")

    @pytest.mark.parametrize("tls", [True, False], ids=["mtls", "plaintext"])
    def test_truncated_frame_is_logged_and_the_listener_keeps_serving(
        self, pki: TransportPKI, caplog: pytest.LogCaptureFixture, tls: bool
    ) -> None:
        hello = frame(pack_envelope("node-r", [(Kind.HELLO, 0, b"\x90")]))
        partial = frame(pack_envelope("node-r", [(Kind.MESSAGE, 0, b"m" * 100)]))[:40]
        self._garbage_case(pki, caplog, tls, hello + partial, "truncated frame", close_after=True)

    def test_frames_before_hello_are_refused(
        self, pki: TransportPKI, caplog: pytest.LogCaptureFixture
    ) -> None:
        message = frame(pack_envelope("node-r", [(Kind.MESSAGE, 0, b"sneaky")]))
        self._garbage_case(pki, caplog, True, message, "HELLO")

    # -- killed peers, close --------------------------------------------------------

    def _spawn_peer(
        self, node_id: str, tls: TlsFiles | None
    ) -> tuple[subprocess.Popen[str], Address]:
        if self.entry_point_name is None:
            pytest.skip("entry_point_name is not set on the test class")
        spec = {
            "transport": self.entry_point_name,
            "node_id": node_id,
            "tls": [str(tls.ca_cert), str(tls.node_cert), str(tls.node_key)] if tls else None,
            "config": dict(self.driver_config),
        }
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from caxton.testing.transport import peer_main; peer_main()",
                json.dumps(spec),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            child.kill()
            raise AssertionError("the peer process did not start")
        host, port = json.loads(line)["address"]
        return child, (host, port)

    def test_peer_killed_mid_stream(self, pki: TransportPKI) -> None:
        child, peer = self._spawn_peer("node-k", pki.node("node-k"))

        async def body(c: Cluster) -> None:
            a = await c.start("node-a")
            host, port = a.address
            await a.transport.send(peer, FrameKind.MESSAGE, f"stream:{host}:{port}".encode())
            await a.wait_for(lambda: len(a.frames) >= 500, 30)
            pending = asyncio.ensure_future(
                a.transport.request(peer, FrameKind.REQUEST, b"hang", 120)
            )
            await asyncio.sleep(0.1)
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(TransportError, match=r"lost|closed|reset"):
                await asyncio.wait_for(pending, 30)
            counters = [int.from_bytes(p, "big") for p in a.payloads(FrameKind.MESSAGE)]
            assert counters == list(range(len(counters))), "frames lost or reordered"
            b = await c.start("node-b")
            assert await b.transport.request(a.address, FrameKind.REQUEST, b"up", 5) == b"echo:up"
            with pytest.raises(TransportError):
                await a.transport.request(peer, FrameKind.REQUEST, b"gone", 1)

        try:
            self.scenario(pki, body)
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()

    def test_close_drains_queued_frames(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            for i in range(2000):
                await a.transport.send(b.address, FrameKind.MESSAGE, i.to_bytes(4, "big") * 64)
            await a.transport.close()
            await b.wait_for(lambda: len(b.frames) == 2000)
            assert [int.from_bytes(p[:4], "big") for p in b.payloads()] == list(range(2000))

        self.scenario(pki, body)

    def test_close_waits_for_in_flight_requests(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            pending = asyncio.ensure_future(
                a.transport.request(b.address, FrameKind.REQUEST, b"sleep:0.3", 10)
            )
            await b.wait_for(lambda: len(b.frames) == 1)
            await b.transport.close()
            assert await pending == b"echo:sleep:0.3"

        self.scenario(pki, body)

    def test_sending_after_close_raises(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            await a.transport.close()
            with pytest.raises(TransportError):
                await a.transport.send(b.address, FrameKind.MESSAGE, b"late")

        self.scenario(pki, body)

    # -- statistics -----------------------------------------------------------------

    def test_per_peer_stats_count_frames_bytes_and_rtt(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            a, b = await c.start("node-a"), await c.start("node-b")
            for _ in range(10):
                await a.transport.send(b.address, FrameKind.MESSAGE, b"s" * 100)
            for _ in range(5):
                await a.transport.request(b.address, FrameKind.REQUEST, b"q", 5)
            await b.wait_for(lambda: len(b.frames) == 15)
            mine = a.transport.peer_stats()[b.address]
            theirs = b.transport.peer_stats()[a.address]
            assert mine.frames_sent == 15
            assert theirs.frames_received == 15
            assert mine.frames_received == 5
            assert theirs.frames_sent == 5
            assert mine.bytes_sent >= 1000
            assert theirs.bytes_received >= 1000
            assert mine.rtt_ms is not None
            assert mine.rtt_ms > 0
            assert mine.errors == 0
            assert theirs.errors == 0

        self.scenario(pki, body)

    # -- with core's SWIM membership on top ---------------------------------------------

    def test_swim_membership_runs_over_this_transport(self, pki: TransportPKI) -> None:
        """Three nodes join, converge, and see a killed node fail (probes, gossip, push-pull)."""
        from caxton.drivers import MemberStatus
        from caxton.membership.swim import SwimMembership
        from caxton.plugins import PluginHost
        from caxton.testing.membership import FAST_CLUSTER
        from caxton.transport.dispatch import FrameDispatcher
        from caxton.units import format_address

        async def body(c: Cluster) -> None:
            members: dict[str, SwimMembership] = {}
            transports: dict[str, Transport] = {}
            for node_id in ("node-1", "node-2", "node-3"):
                transport = c.build(c.settings(node_id))
                dispatcher = FrameDispatcher(node_id)
                await transport.start()
                address = await transport.listen(
                    LOOPBACK, dispatcher.on_frame, dispatcher.on_datagram
                )
                context = DriverContext(
                    node_id, Path("."), PluginHost(use_entry_points=False, env={}).hook
                )
                context.services["transport"] = transport
                values = {**FAST_CLUSTER, "advertise_addr": format_address(address)}
                member = SwimMembership(driver_config(SwimMembership, values), context)
                dispatcher.route(FrameKind.GOSSIP, member.on_gossip_frame)
                dispatcher.route_datagrams(member.on_datagram)
                await member.start()
                members[node_id], transports[node_id] = member, transport

            def statuses(node_id: str) -> dict[str, MemberStatus]:
                return {m.node_id: m.status for m in members[node_id].members()}

            async def settled(check: Callable[[], bool]) -> None:
                async def holds() -> bool:
                    return check()

                await eventually(holds, 20)

            seed = members["node-1"].local_member().address
            try:
                assert await members["node-2"].join([seed]) == 1
                assert await members["node-3"].join([seed]) == 1
                alive = dict.fromkeys(members, MemberStatus.ALIVE)
                await settled(lambda: all(statuses(n) == alive for n in members))
                await members["node-3"].close()
                abort = getattr(transports["node-3"], "abort", None)
                await (abort() if abort is not None else transports["node-3"].close())
                await settled(
                    lambda: all(
                        statuses(n).get("node-3") in (MemberStatus.FAILED,)
                        for n in ("node-1", "node-2")
                    )
                )
            finally:
                for node_id in ("node-1", "node-2"):
                    await members[node_id].close()

        self.scenario(pki, body)

    # -- the security matrix ----------------------------------------------------------

    def _refused(
        self,
        pki: TransportPKI,
        node_id: str,
        files: Callable[[], TlsFiles],
        why: str,
        *,
        told: bool = True,
    ) -> None:
        """``node_id`` with ``files`` is refused; the listener records the refusal with
        ``why`` in its reason, and (``told``) the dialler records that it was refused."""

        async def body(c: Cluster) -> None:
            b = await c.start("node-b")
            bad = c.build(c.settings(node_id, tls=files(), connect_timeout=2.0))
            await bad.start()
            with pytest.raises(TransportError):
                await bad.request(b.address, FrameKind.REQUEST, b"let me in", 2)
            with pytest.raises(TransportError):
                await bad.send(b.address, FrameKind.MESSAGE, b"let me in")
            await asyncio.sleep(0.2)
            assert b.frames == [], "a refused peer's frame was delivered"
            listener = refusals_of(b.transport)
            assert any(why in r["reason"] for r in listener if not r["by_peer"]), listener
            assert not any(r["by_peer"] for r in listener), listener
            if told:
                dialler = [r for r in refusals_of(bad) if r["by_peer"]]
                assert dialler, refusals_of(bad)
                assert all(r["peer"].endswith(f":{b.address[1]}") for r in dialler), dialler
            good = await c.start("node-a")
            assert await good.transport.request(b.address, FrameKind.REQUEST, b"ok", 5) == (
                b"echo:ok"
            )

        self.scenario(pki, body)

    def test_mtls_refuses_a_client_without_certificate(self, pki: TransportPKI) -> None:
        self._refused(pki, "node-a", pki.without_certificate, "no", told=False)

    def test_mtls_refuses_a_certificate_from_another_ca(self, pki: TransportPKI) -> None:
        self._refused(pki, "node-a", lambda: pki.foreign("node-a"), "(wrong CA)")

    def test_mtls_refuses_an_expired_certificate(self, pki: TransportPKI) -> None:
        self._refused(pki, "node-a", lambda: pki.expired("node-a"), "expired")

    def test_mtls_refuses_another_nodes_certificate(self, pki: TransportPKI) -> None:
        # A valid cluster certificate for node-c, used by a peer claiming to be node-a.
        self._refused(pki, "node-a", lambda: pki.node("node-c"), "certificate is for 'node-c'")

    def test_a_refused_listener_hears_why_from_the_dialler(self, pki: TransportPKI) -> None:
        """A dialler that refuses the listener's certificate (it trusts another CA) says
        so, and the listener records that this dialler refused it, and why."""

        async def body(c: Cluster) -> None:
            b = await c.start("node-b")
            foreign = pki.foreign("node-a")
            other_ca = pki.directory / "other-ca" / "ca.crt"
            stranger = c.build(
                c.settings(
                    "node-a",
                    tls=TlsFiles(other_ca, foreign.node_cert, foreign.node_key),
                    connect_timeout=2.0,
                )
            )
            await stranger.start()
            with pytest.raises(TransportError):
                await stranger.request(b.address, FrameKind.REQUEST, b"let me in", 2)

            async def listener_heard() -> bool:
                return any(
                    r["by_peer"] and "(wrong CA)" in r["reason"] for r in refusals_of(b.transport)
                )

            await eventually(listener_heard, 10)
            own = [r for r in refusals_of(stranger) if not r["by_peer"]]
            assert any("(wrong CA)" in r["reason"] for r in own), own
            assert b.frames == []

        self.scenario(pki, body)

    def test_mtls_client_refuses_a_server_with_another_nodes_certificate(
        self, pki: TransportPKI
    ) -> None:
        async def body(c: Cluster) -> None:
            impostor = await c.start("node-b", tls=pki.node("node-c"))
            a = await c.start("node-a")
            with pytest.raises(TransportError):
                await a.transport.request(impostor.address, FrameKind.REQUEST, b"secret", 2)
            assert impostor.frames == []

        self.scenario(pki, body)

    @pytest.mark.parametrize("credentials", ["none", "foreign", "expired", "other-node"])
    def test_mtls_raw_client_is_closed_before_any_frame(
        self, pki: TransportPKI, credentials: str
    ) -> None:
        """Under TLS 1.3 the client only learns of its rejection when it reads: do I/O."""
        choices: dict[str, Callable[[], TlsFiles]] = {
            "none": pki.without_certificate,
            "foreign": lambda: pki.foreign("node-a"),
            "expired": lambda: pki.expired("node-a"),
            "other-node": lambda: pki.node("node-c"),
        }
        files = choices[credentials]

        async def body(c: Cluster) -> None:
            b = await c.start("node-b")
            try:
                raw = await self.raw_connect(b.address, files())
            except (OSError, TransportError, asyncio.TimeoutError):
                return  # refused during the handshake already
            hello = frame(pack_envelope("node-a", [(Kind.HELLO, 0, b"\x90")]))
            message = frame(pack_envelope("node-a", [(Kind.MESSAGE, 0, b"smuggled")]))
            raw.write(hello + message)
            assert await raw.wait_closed(10), "the server kept an unauthenticated peer"
            raw.close()
            await asyncio.sleep(0.2)
            assert b.frames == []

        self.scenario(pki, body)

    def test_plaintext_peer_cannot_talk_to_an_mtls_node(self, pki: TransportPKI) -> None:
        async def body(c: Cluster) -> None:
            b = await c.start("node-b")
            a = await c.start("node-a", tls=False, connect_timeout=1.0)
            with pytest.raises(TransportError):
                await a.transport.request(b.address, FrameKind.REQUEST, b"hi", 1)
            assert b.frames == []

        self.scenario(pki, body)

    def test_plaintext_only_when_explicitly_configured(self) -> None:
        with pytest.raises(ConfigError, match="mutual TLS"):
            TransportSettings("node-a")

    # -- plaintext mode and the gossip keyring ----------------------------------------

    def test_plaintext_gossip_is_sealed_and_a_wrong_key_is_dropped(self, pki: TransportPKI) -> None:
        old, new, wrong = os.urandom(32), os.urandom(32), os.urandom(32)

        async def body(c: Cluster) -> None:
            b = await c.start("node-b", tls=False, keyring=Keyring([new, old]))
            a = await c.start("node-a", tls=False, keyring=Keyring([old]))
            rotated = await c.start("node-r", tls=False, keyring=Keyring([new]))
            intruder = await c.start("node-x", tls=False, keyring=Keyring([wrong]))

            async def delivered(node: Node, payload: bytes) -> None:
                async def check() -> bool:
                    await node.transport.send_datagram(b.address, payload)
                    await asyncio.sleep(0.05)
                    return payload in [d for d, _ in b.datagrams]

                await eventually(check)

            for _ in range(5):
                await intruder.transport.send_datagram(b.address, b"forged")
            await delivered(a, b"old-key")
            await delivered(rotated, b"new-key")
            assert b"forged" not in [d for d, _ in b.datagrams]
            # Frames still flow in plaintext mode.
            assert await a.transport.request(b.address, FrameKind.REQUEST, b"p", 5) == b"echo:p"

        self.scenario(pki, body)


def refusals_of(transport: Transport) -> list[dict[str, Any]]:
    """The TLS and identity refusals ``transport`` recorded (a ConnectionTransport's)."""
    return list(getattr(transport, "refusals", ()))


async def _closed_port() -> int:
    """A loopback port nothing listens on."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port
