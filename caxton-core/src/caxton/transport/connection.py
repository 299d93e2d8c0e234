"""One connection to a peer, whatever carries its bytes.

A plugin supplies a :class:`Channel` (a TLS socket, a QUIC stream) and calls its
``receiver`` with what arrives; :class:`Connection` does everything above the bytes, the
same way for every transport: the HELLO exchange and the peer's identity check, framing
and envelopes, batching of outbound records, request/response correlation and timeouts,
ordered delivery to the frame handler, back-pressure in both directions, statistics,
graceful close and drain.

Ordering: records other than requests reach the frame handler one at a time, in the
order they were sent. Request handlers start in order but run concurrently (at most
``max_inflight_requests`` per connection), so a slow request does not stall the stream.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import struct
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
from cryptography import x509

from caxton.drivers.transport import (
    Address,
    DatagramHandler,
    Frame,
    FrameHandler,
    FrameKind,
    PeerStats,
)
from caxton.errors import PeerRejected, ProtocolError, TransportError
from caxton.security.identity import verify_peer_identity
from caxton.security.tls import explain_tls_error
from caxton.transport.envelope import (
    APPLICATION_KINDS,
    Kind,
    Record,
    pack_envelope,
    unpack_envelope,
)
from caxton.transport.framing import FrameDecoder, frame
from caxton.units import format_address

if TYPE_CHECKING:
    from caxton.transport.settings import TransportSettings

log = logging.getLogger("caxton.transport")

_PING = struct.Struct("!d")
_RECORD_OVERHEAD = 16


class RefusedByPeer(PeerRejected):
    """The peer answered this node's HELLO with the reason it refuses it."""


class ChannelReceiver(Protocol):
    """What a :class:`Channel` reports to (a :class:`Connection`)."""

    def data_received(self, data: bytes) -> None: ...

    def datagram_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: BaseException | None) -> None: ...


class Channel(ABC):
    """An established, authenticated-at-the-TLS-level byte pipe; one per connection.

    Plugins implement it over their wire and call ``receiver`` (set by
    :class:`Connection`) with incoming bytes, native datagrams and the loss of the pipe.
    """

    receiver: ChannelReceiver | None = None

    @property
    @abstractmethod
    def remote_address(self) -> Address:
        """The address bytes come from (for an inbound peer, not its listen address)."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending, in order, without blocking."""

    @abstractmethod
    def buffered(self) -> int:
        """Bytes written but not yet handed to the network (or, for QUIC, not acked)."""

    @abstractmethod
    async def drain(self) -> None:
        """Return once :meth:`buffered` is back under the low-water mark."""

    @abstractmethod
    def pause_reading(self) -> None:
        """Stop taking bytes from the peer (it will feel back-pressure)."""

    @abstractmethod
    def resume_reading(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Send what is buffered, then close. The caller bounds the wait."""

    @abstractmethod
    def abort(self) -> None:
        """Close now, dropping buffered data."""

    @abstractmethod
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's certificate, its chain already verified against the cluster CA."""

    def send_datagram(self, data: bytes) -> bool:
        """Send a native unreliable datagram; False when this wire has none."""
        return False


#: Answers an enrolment request (payload, the requester's address) with the answer.
EnrolHandler = Callable[[bytes, str], bytes]


class ConnectionOwner(Protocol):
    """The transport a connection belongs to (:class:`ConnectionTransport`)."""

    settings: TransportSettings
    on_frame: FrameHandler | None
    on_datagram: DatagramHandler | None
    on_enrol: EnrolHandler | None

    @property
    def advertised_address(self) -> Address | None: ...

    def stats_for(self, peer: Address) -> PeerStats: ...

    def open_datagram(self, data: bytes) -> bytes | None: ...

    def connection_ready(self, connection: Connection) -> None: ...

    def connection_draining(self, connection: Connection) -> None: ...

    def connection_closed(self, connection: Connection) -> None: ...

    def refused(self, peer: str, reason: str, *, by_peer: bool, inbound: bool) -> None: ...


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """The protocol state of one connection. See the module docstring."""

    def __init__(
        self,
        owner: ConnectionOwner,
        channel: Channel,
        *,
        outbound: bool,
        peer: Address | None = None,
    ) -> None:
        self.owner = owner
        self.channel = channel
        self.settings = owner.settings
        self.outbound = outbound
        #: The peer's listen address: dialled (outbound) or announced in its HELLO.
        self.peer: Address | None = peer
        self.peer_node_id: str | None = None
        self.state = State.HANDSHAKE
        #: The peer sent GOAWAY: do not start new work on this connection.
        self.draining = False
        self.stats = owner.stats_for(peer) if peer is not None else PeerStats()
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._decoder = FrameDecoder(self.settings.max_frame_size)
        self._compress_over = self.settings.compress_threshold
        self._outbox: list[Record] = []
        self._outbox_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_request_id = 1
        self._inbox: deque[Record] = deque()
        self._inbox_bytes = 0
        self._reading_paused = False
        self._wakeup: asyncio.Future[None] | None = None
        self._slot: asyncio.Future[None] | None = None
        self._request_tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._hello_sent_at = 0.0
        self._closer: asyncio.Task[None] | None = None
        self._handshake_timer = self._loop.call_later(
            self.settings.handshake_timeout, self._handshake_expired
        )
        channel.receiver = self
        if outbound:
            self._send_hello()

    def __repr__(self) -> str:
        who = self.peer_node_id or "?"
        where = format_address(self.peer or self.channel.remote_address)
        direction = "to" if self.outbound else "from"
        return f"<Connection {direction} {who}@{where} {self.state.value}>"

    @property
    def describe(self) -> str:
        where = format_address(self.peer or self.channel.remote_address)
        return f"{self.peer_node_id}@{where}" if self.peer_node_id else where

    @property
    def usable(self) -> bool:
        return self.state is State.OPEN and not self.draining

    # -- handshake ------------------------------------------------------------------

    def _send_hello(self) -> None:
        listen = self.owner.advertised_address
        payload = msgpack.packb(list(listen) if listen else [])
        self._hello_sent_at = time.perf_counter()
        self._write_records([(Kind.HELLO, 0, payload)])

    def _accept_hello(self, sender: str, payload: bytes) -> None:
        if self.settings.tls is not None:
            certificate = self.channel.peer_certificate()
            if certificate is None:
                raise PeerRejected("peer presented no certificate")
            if self.settings.verify_peer:
                verify_peer_identity(certificate, sender)
        try:
            listen = msgpack.unpackb(payload)
        except Exception:
            raise ProtocolError("malformed HELLO") from None
        if not isinstance(listen, list) or len(listen) not in (0, 2):
            raise ProtocolError("malformed HELLO")
        self.peer_node_id = sender
        if not self.outbound:
            host = self.channel.remote_address[0]
            if listen and isinstance(listen[1], int):
                self.peer = (host, listen[1])
            else:
                self.peer = self.channel.remote_address
            self.stats = self.owner.stats_for(self.peer)
            self._send_hello()
        else:
            self.stats.rtt_ms = (time.perf_counter() - self._hello_sent_at) * 1000
        self.stats.connects += 1
        self._handshake_timer.cancel()
        self.state = State.OPEN
        if not self.ready.done():
            self.ready.set_result(None)
        self.owner.connection_ready(self)

    def _answer_enrolment(self, payload: bytes) -> None:
        """One enrolment request (the peer may hold no certificate): answer, then close."""
        handler = self.owner.on_enrol
        where = format_address(self.channel.remote_address)
        if handler is None:
            answer = msgpack.packb(
                {
                    "ok": False,
                    "error": f"node {self.settings.node_id} does not enrol nodes: it holds no "
                    f"cluster CA; join through the node that bootstrapped the cluster",
                }
            )
        else:
            answer = handler(payload, where)
        self._handshake_timer.cancel()
        self._write_records([(Kind.ENROL, 0, answer)])
        self._closer = self._loop.create_task(self.close(self.settings.drain_timeout))

    def _handshake_expired(self) -> None:
        if self.state is State.HANDSHAKE:
            self.fail(f"no HELLO within {self.settings.handshake_timeout:g}s")

    # -- inbound --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        try:
            for body in self._decoder.feed(data):
                self._envelope_received(body)
        except RefusedByPeer as exc:
            self.owner.refused(self.describe, str(exc), by_peer=True, inbound=not self.outbound)
            self._end(PeerRejected(f"{self.describe} refused this node: {exc}"))
        except PeerRejected as exc:
            if self.state is not State.HANDSHAKE:
                self.fail(str(exc))
                return
            self.owner.refused(self.describe, str(exc), by_peer=False, inbound=not self.outbound)
            if not self.outbound:  # tell the dialler why before closing
                self._write_records([(Kind.ERROR, 0, str(exc).encode())])
            self._end(exc)
        except TransportError as exc:  # ProtocolError
            self.fail(str(exc))

    def _end(self, error: PeerRejected) -> None:
        """Close after a refusal: what is written still leaves, nothing more comes in."""
        self.connection_lost(error, reason=str(error))
        self._closer = self._loop.create_task(self._close_channel())

    async def _close_channel(self) -> None:
        try:
            await asyncio.wait_for(self.channel.close(), self.settings.drain_timeout)
        except (asyncio.TimeoutError, OSError, TransportError):
            self.channel.abort()

    def _envelope_received(self, body: bytes) -> None:
        envelope = unpack_envelope(body, max_size=self.settings.max_frame_size)
        stats = self.stats
        stats.bytes_received += len(body) + 4
        records = envelope.records
        if self.state is State.HANDSHAKE:
            kind, _, payload = records[0]
            if kind == Kind.ENROL and not self.outbound:
                self._answer_enrolment(payload)
                return
            if kind == Kind.ERROR:
                raise RefusedByPeer(payload.decode("utf-8", "replace"))
            if kind != Kind.HELLO:
                raise ProtocolError("the first record on a connection must be HELLO")
            self._accept_hello(envelope.sender, payload)
            records = records[1:]
            stats = self.stats
        elif envelope.sender != self.peer_node_id:
            raise PeerRejected(
                f"envelope from {envelope.sender!r} on the connection of {self.peer_node_id!r}"
            )
        for record in records:
            kind, request_id, payload = record
            if kind in APPLICATION_KINDS:
                stats.frames_received += 1
                self._inbox.append(record)
                self._inbox_bytes += len(payload)
            elif kind == Kind.RESPONSE or kind == Kind.ERROR:
                stats.frames_received += 1
                self._response_received(kind, request_id, payload)
            elif kind == Kind.DATAGRAM:
                self.deliver_datagram(payload)
            elif kind == Kind.PING:
                self._write_records([(Kind.PONG, request_id, payload)])
            elif kind == Kind.PONG:
                self._pong_received(payload)
            elif kind == Kind.GOAWAY:
                self.draining = True
                self.owner.connection_draining(self)
            else:
                raise ProtocolError(f"unknown record kind {kind}")
        if self._inbox:
            if self._dispatcher is None:
                self._dispatcher = self._loop.create_task(self._dispatch())
            elif self._wakeup is not None and not self._wakeup.done():
                self._wakeup.set_result(None)
            if not self._reading_paused and self._inbox_bytes > self.settings.inbound_high_water:
                self._reading_paused = True
                self.channel.pause_reading()

    def datagram_received(self, data: bytes) -> None:
        """A native datagram from the channel (QUIC); the owner unseals it if needed."""
        if self.state is State.OPEN:
            payload = self.owner.open_datagram(data)
            if payload is not None:
                self.deliver_datagram(payload)

    def deliver_datagram(self, payload: bytes) -> None:
        handler = self.owner.on_datagram
        if handler is None or self.peer is None:
            return
        try:
            handler(payload, self.peer)
        except Exception:
            self.stats.errors += 1
            log.exception("datagram handler failed for a datagram from %s", self.describe)

    def _response_received(self, kind: int, request_id: int, payload: bytes) -> None:
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return  # timed out already
        if kind == Kind.RESPONSE:
            future.set_result(payload)
        else:
            reason = payload.decode("utf-8", "replace")
            future.set_exception(
                TransportError(f"peer {self.describe} failed to handle the request: {reason}")
            )

    def _pong_received(self, payload: bytes) -> None:
        if len(payload) == _PING.size:
            (sent,) = _PING.unpack(payload)
            self.stats.rtt_ms = (time.perf_counter() - sent) * 1000

    async def _dispatch(self) -> None:
        inbox = self._inbox
        handler = self.owner.on_frame
        sender = self.peer_node_id or ""
        limit = self.settings.max_inflight_requests
        while True:
            if not inbox:
                if self.state is State.CLOSED:
                    return
                self._wakeup = self._loop.create_future()
                await self._wakeup
                continue
            kind, request_id, payload = inbox.popleft()
            self._inbox_bytes -= len(payload)
            if self._reading_paused and self._inbox_bytes < self.settings.inbound_high_water // 2:
                self._reading_paused = False
                self.channel.resume_reading()
            if handler is None:
                continue
            frame_ = Frame(FrameKind(kind), payload, sender, request_id)
            if request_id:
                while len(self._request_tasks) >= limit:
                    self._slot = self._loop.create_future()
                    await self._slot
                task = self._loop.create_task(self._serve_request(handler, frame_))
                self._request_tasks.add(task)
                task.add_done_callback(self._request_done)
                continue
            try:
                await handler(frame_)
            except Exception:
                self.stats.errors += 1
                log.exception(
                    "frame handler failed for a %s frame from %s", frame_.kind.name, self.describe
                )

    async def _serve_request(self, handler: FrameHandler, request: Frame) -> None:
        try:
            result = await handler(request)
        except Exception as exc:
            self.stats.errors += 1
            log.warning("request handler failed for %s: %s", self.describe, exc, exc_info=True)
            self.queue(Kind.ERROR, request.request_id, f"{type(exc).__name__}: {exc}".encode())
            return
        self.queue(Kind.RESPONSE, request.request_id, result or b"")

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._request_tasks.discard(task)
        if self._slot is not None and not self._slot.done():
            self._slot.set_result(None)

    # -- outbound -------------------------------------------------------------------

    def queue(self, kind: int, request_id: int, payload: bytes) -> None:
        """Add a record to the next envelope; it is written at the end of this loop turn."""
        if self.state is State.CLOSED:
            return
        if not self.settings.batching:
            self._write_records([(kind, request_id, payload)])
            return
        self._outbox.append((kind, request_id, payload))
        self._outbox_bytes += len(payload) + _RECORD_OVERHEAD
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued record now, packed into as few envelopes as fit."""
        self._flush_handle = None
        records = self._outbox
        if not records or self.state is State.CLOSED:
            return
        self._outbox = []
        self._outbox_bytes = 0
        batch_max = self.settings.batch_max_bytes
        batch: list[Record] = []
        size = 0
        for record in records:
            n = len(record[2]) + _RECORD_OVERHEAD
            if batch and size + n > batch_max:
                self._write_records(batch)
                batch, size = [], 0
            batch.append(record)
            size += n
        self._write_records(batch)

    def _write_records(self, records: list[Record]) -> None:
        data = frame(
            pack_envelope(self.settings.node_id, records, compress_over=self._compress_over)
        )
        stats = self.stats
        stats.bytes_sent += len(data)
        stats.frames_sent += sum(1 for record in records if record[0] < Kind.HELLO)
        self.channel.write(data)

    def _check_sendable(self, size: int) -> None:
        if self.state is not State.OPEN:
            raise TransportError(f"connection to {self.describe} is {self.state.value}")
        if size + 64 > self.settings.max_frame_size:
            raise TransportError(
                f"frame of {size} bytes exceeds transport.max_frame_size "
                f"({self.settings.max_frame_size}); send it in parts"
            )

    async def _backpressure(self) -> None:
        if self._outbox_bytes + self.channel.buffered() > self.settings.high_water:
            self.flush()
            await self.channel.drain()
            if self.state is State.CLOSED:
                raise TransportError(f"connection to {self.describe} lost while sending")

    async def send(self, kind: int, payload: bytes) -> None:
        self._check_sendable(len(payload))
        self.queue(kind, 0, payload)
        await self._backpressure()

    async def request(self, kind: int, payload: bytes, timeout: float) -> bytes:
        self._check_sendable(len(payload))
        request_id = self._next_request_id
        self._next_request_id += 1
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[request_id] = future
        self.queue(kind, request_id, payload)
        timer = self._loop.call_later(timeout, self._expire, request_id, timeout)
        try:
            await self._backpressure()
            return await future
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)

    def _expire(self, request_id: int, timeout: float) -> None:
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            self.stats.errors += 1
            future.set_exception(
                TransportError(f"request to {self.describe} timed out after {timeout:g}s")
            )

    def send_datagram_record(self, payload: bytes) -> bool:
        """A datagram over the reliable stream; dropped (False) when the peer is slow."""
        if not self.usable or self.channel.buffered() > self.settings.high_water:
            return False
        self.queue(Kind.DATAGRAM, 0, payload)
        return True

    def ping(self) -> None:
        if self.state is State.OPEN:
            self.queue(Kind.PING, 0, _PING.pack(time.perf_counter()))

    # -- closing --------------------------------------------------------------------

    def fail(self, reason: str) -> None:
        """Close at once because the peer misbehaved: log why, count it, drop the pipe."""
        if self.state is State.CLOSED:
            return
        self.stats.errors += 1
        log.warning("closing connection %s: %s", self.describe, reason)
        self.channel.abort()
        self.connection_lost(None, reason=reason)

    async def close(self, timeout: float) -> None:
        """Graceful close: GOAWAY, finish in-flight work, flush, then close the pipe."""
        if self.state is State.CLOSED:
            return
        deadline = self._loop.time() + timeout
        if self.state is State.OPEN:
            self.queue(Kind.GOAWAY, 0, b"")
        self.state = State.CLOSING
        self.flush()
        waiting: list[asyncio.Future[Any]] = [*self._pending.values(), *self._request_tasks]
        if waiting:
            await asyncio.wait(waiting, timeout=max(0.0, deadline - self._loop.time()))
        self.flush()
        try:
            await asyncio.wait_for(self.channel.close(), max(0.0, deadline - self._loop.time()))
        except (asyncio.TimeoutError, OSError, TransportError):
            self.channel.abort()
        self.connection_lost(None, reason="closed")

    def connection_lost(self, exc: BaseException | None, *, reason: str | None = None) -> None:
        if self.state is State.CLOSED:
            return
        was_closing = self.state is State.CLOSING
        was_handshaking = self.state is State.HANDSHAKE
        self.state = State.CLOSED
        truncated = self._decoder.truncation()
        if truncated:
            self.stats.errors += 1
            log.warning("connection %s ended with a %s", self.describe, truncated)
        why = reason or (str(exc) if exc else "closed by peer")
        if exc is not None and not was_closing:
            self.stats.errors += 1
            log.info("connection %s lost: %s", self.describe, why)
        self._handshake_timer.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if isinstance(exc, PeerRejected):
            error: TransportError = exc
            if reason is None and was_handshaking:  # the channel says the peer refused
                why = explain_tls_error(exc, by_peer=True)
                self.owner.refused(self.describe, why, by_peer=True, inbound=not self.outbound)
        elif isinstance(exc, ssl.SSLError):
            why = explain_tls_error(exc)
            self.owner.refused(self.describe, why, by_peer=True, inbound=not self.outbound)
            error = PeerRejected(f"{self.describe} refused the TLS session: {why}")
        else:
            error = TransportError(f"connection to {self.describe} lost: {why}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # mark retrieved; the dialler re-raises its own error
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        self.owner.connection_closed(self)

    def abort(self) -> None:
        """Drop the connection without notice (tests use it to simulate a killed node)."""
        self.channel.abort()
        self.connection_lost(None, reason="aborted")
