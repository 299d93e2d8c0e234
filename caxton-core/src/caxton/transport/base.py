"""The shared half of every connection-oriented transport driver.

:class:`ConnectionTransport` implements :class:`caxton.drivers.transport.Transport` on
top of four plugin methods: listen (:meth:`~ConnectionTransport._serve`), stop
listening, dial (:meth:`~ConnectionTransport._dial`) and, for wires with a separate
datagram socket, :meth:`~ConnectionTransport._send_raw_datagram`. Everything else
(pooling, reconnects, back-pressure, requests, datagram protection, statistics, drain)
is here, so two transports behave the same way.

Datagrams: a wire whose datagrams travel inside TLS (QUIC) sends them natively. Other
datagrams (UDP beside TCP) are sealed with the gossip keyring when one is configured;
with mutual TLS and no keyring they ride the authenticated connection instead, so that
nothing unauthenticated is ever accepted; in plaintext mode without a keyring they go
out as they are (a warning says so at startup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from caxton.drivers.base import DriverContext
from caxton.drivers.transport import (
    Address,
    DatagramHandler,
    FrameHandler,
    FrameKind,
    PeerStats,
    Transport,
)
from caxton.errors import ConfigError, PeerRejected, ProtocolError, TransportError
from caxton.transport.connection import Channel, Connection, EnrolHandler
from caxton.transport.envelope import Kind, pack_envelope, unpack_envelope
from caxton.transport.framing import FrameDecoder, frame
from caxton.transport.pool import PeerPool
from caxton.transport.settings import TransportSettings

log = logging.getLogger("caxton.transport")

#: How many refusals a transport remembers, and how often one is logged again.
REFUSALS_KEPT = 32
REFUSAL_LOG_INTERVAL = 60.0


def settings_from_context(context: DriverContext) -> TransportSettings:
    """The node's transport settings, from the config of ``context.services["node"]``."""
    node = context.services.get("node")
    config = getattr(node, "config", None)
    if config is None:
        raise ConfigError(
            "the transport driver needs the node configuration (context.services['node']); "
            "pass settings= when constructing it directly"
        )
    return TransportSettings.from_config(config, context.node_id)


class ConnectionTransport(Transport):
    """Base class of the TCP and QUIC drivers; see the module docstring."""

    #: Does :meth:`Channel.send_datagram` exist on this wire, protected by its TLS?
    native_datagrams: ClassVar[bool] = False

    def __init__(
        self,
        config: Mapping[str, Any],
        context: DriverContext,
        *,
        settings: TransportSettings | None = None,
    ) -> None:
        super().__init__(config, context)
        self.settings = settings if settings is not None else settings_from_context(context)
        self.on_frame: FrameHandler | None = None
        self.on_datagram: DatagramHandler | None = None
        #: Answers enrolment requests when this node holds the cluster CA.
        self.on_enrol: EnrolHandler | None = None
        self._listen_address: Address | None = None
        self._pool = PeerPool(
            self._dial_connection,
            backoff_initial=self.settings.backoff_initial,
            backoff_max=self.settings.backoff_max,
        )
        self._connections: set[Connection] = set()
        self._stats: dict[Address, PeerStats] = {}
        #: The latest TLS and identity refusals, both ways, newest last (verify-auth).
        self.refusals: deque[dict[str, Any]] = deque(maxlen=REFUSALS_KEPT)
        self._refusal_logged: dict[tuple[str, str, bool], float] = {}
        self._ping_task: asyncio.Task[None] | None = None
        self._closed = False
        keyring = self.settings.keyring
        plaintext = self.settings.plaintext
        #: Seal datagrams with the keyring (they are not protected by TLS).
        self._seal_datagrams = bool(keyring) and (plaintext or not self.native_datagrams)
        #: Carry datagrams on the TLS connection (mTLS, no keyring, no native datagrams).
        self._datagrams_on_stream = not self.native_datagrams and not plaintext and not keyring
        if plaintext and not keyring:
            log.warning(
                "transport runs in plaintext mode without security.cluster.gossip_keys: "
                "node traffic and gossip are unencrypted (local development only)"
            )
        self.configure()

    def configure(self) -> None:
        """Plugin setup after :attr:`settings` is known (may replace them): TLS contexts,
        socket options. Runs at the end of ``__init__``."""

    def option(self, name: str) -> Any:
        """A key of the driver's own section, converted (its default when not given)."""
        section = self.config_section
        field = section.field(name) if section is not None else None
        if field is None:
            raise KeyError(name)
        value = self.config.get(name, field.default)
        try:
            return field.convert(value)
        except ValueError as exc:
            raise ConfigError(f"{section.path}.{name}: {exc}") from None  # type: ignore[union-attr]

    # -- the plugin's part ----------------------------------------------------------

    @abstractmethod
    async def _serve(self, address: Address) -> Address:
        """Start accepting; call :meth:`accept_channel` for each authenticated channel."""

    @abstractmethod
    async def _stop_serving(self) -> None:
        """Stop accepting new channels (existing ones are closed by the base)."""

    async def _release_listener(self) -> None:
        await self._stop_serving()
        # asyncio releases sockets on the next loop turns; let them go before returning
        # so that a restarted node can bind the same port at once.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    @abstractmethod
    async def _dial(self, peer: Address, timeout: float) -> Channel:
        """Open a channel to ``peer`` (TLS handshake included) within ``timeout``."""

    async def _send_raw_datagram(self, peer: Address, data: bytes) -> bool:
        """Send a datagram outside the connection (UDP); False if this wire has none."""
        return False

    async def _dial_anonymous(self, peer: Address, timeout: float) -> Channel:
        """Open a TLS channel to ``peer`` presenting no certificate and verifying none
        (enrolment: the answer is checked with the join token instead)."""
        raise TransportError(f"the {type(self).__name__} transport cannot enrol nodes")

    def _accept_anonymous(self) -> None:
        """From now on, let clients without a certificate finish the TLS handshake (their
        connection may carry one ENROL record and nothing else)."""
        raise TransportError(f"the {type(self).__name__} transport cannot enrol nodes")

    # -- called by the plugin -------------------------------------------------------

    def accept_channel(self, channel: Channel) -> Connection | None:
        """Wrap a new inbound channel; None (and the channel aborted) once closing."""
        if self._closed:
            channel.abort()
            return None
        connection = Connection(self, channel, outbound=False)
        self._connections.add(connection)
        return connection

    def raw_datagram_received(self, data: bytes, source: Address) -> None:
        """A datagram that arrived outside any connection (UDP)."""
        if self._datagrams_on_stream or self.on_datagram is None:
            return  # mTLS without a keyring: unauthenticated UDP is never accepted
        payload = self.open_datagram(data)
        if payload is None:
            return
        try:
            self.on_datagram(payload, source)
        except Exception:
            log.exception("datagram handler failed for a datagram from %s", source)

    def serve_enrolment(self, handler: EnrolHandler) -> None:
        """Answer enrolment requests with ``handler`` (call before :meth:`listen`)."""
        self.on_enrol = handler
        self._accept_anonymous()

    async def enrol(self, peer: Address, payload: bytes, timeout: float) -> bytes:
        """Send one enrolment request to ``peer`` without a certificate; its answer."""
        channel = await self._dial_anonymous(peer, timeout)
        exchange = _EnrolmentExchange(self.settings.max_frame_size, peer)
        channel.receiver = exchange
        channel.write(frame(pack_envelope(self.settings.node_id, [(Kind.ENROL, 0, payload)])))
        try:
            return await asyncio.wait_for(asyncio.shield(exchange.answer), timeout)
        except asyncio.TimeoutError:
            raise TransportError(
                f"{peer[0]}:{peer[1]} did not answer the enrolment within {timeout:g}s"
            ) from None
        finally:
            channel.abort()

    def reload_tls(self) -> None:
        """Read the TLS files again: new connections (both ways) use them, established
        ones carry on. Raises :class:`~caxton.errors.CertificateError` (and keeps the
        material in use) when the files do not load."""
        if self.settings.tls is None:
            raise TransportError("this transport runs without TLS; there is nothing to reload")
        self._load_tls()

    def _load_tls(self) -> None:
        """Plugin: (re)build the TLS contexts from :attr:`settings` ``.tls``."""
        raise TransportError(f"the {type(self).__name__} transport cannot reload TLS")

    # -- ConnectionOwner --------------------------------------------------------------

    def refused(self, peer: str, reason: str, *, by_peer: bool, inbound: bool) -> None:
        """Record (and log, at most once a minute per peer and reason) a refusal: this
        node refused ``peer``, or ``peer`` refused this node (``by_peer``). ``peer`` is
        ``[node@]host:port``; an ``inbound`` connection's port is the dialler's
        ephemeral one, so its host alone names the peer for the log's rate limit."""
        now = time.time()
        self.refusals.append({"at": now, "peer": peer, "reason": reason, "by_peer": by_peer})
        where = peer.rpartition("@")[2]
        key = (where.rpartition(":")[0] if inbound or by_peer else where, reason, by_peer)
        if now - self._refusal_logged.get(key, 0.0) < REFUSAL_LOG_INTERVAL:
            return
        self._refusal_logged[key] = now
        if by_peer:
            log.warning("%s refused this node: %s", peer, reason)
        else:
            log.warning("refused %s: %s", peer, reason)

    @property
    def advertised_address(self) -> Address | None:
        return self._listen_address

    def stats_for(self, peer: Address) -> PeerStats:
        stats = self._stats.get(peer)
        if stats is None:
            stats = self._stats[peer] = PeerStats()
        return stats

    def open_datagram(self, data: bytes) -> bytes | None:
        if not self._seal_datagrams:
            return data
        payload = self.settings.keyring.open(data)
        if payload is None:
            log.debug("dropped a datagram no gossip key authenticates")
        return payload

    def connection_ready(self, connection: Connection) -> None:
        pass

    def connection_draining(self, connection: Connection) -> None:
        self._pool.forget(connection)

    def connection_closed(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._pool.forget(connection)

    # -- Transport --------------------------------------------------------------------

    @property
    def address(self) -> Address | None:
        """The bound listen address, once :meth:`listen` returned."""
        return self._listen_address

    async def listen(
        self, address: Address, on_frame: FrameHandler, on_datagram: DatagramHandler
    ) -> Address:
        if self._listen_address is not None:
            raise TransportError(f"already listening on {self._listen_address}")
        self.on_frame = on_frame
        self.on_datagram = on_datagram
        self._listen_address = await self._serve(address)
        if self.settings.ping_interval > 0:
            self._ping_task = asyncio.get_running_loop().create_task(self._ping_loop())
        return self._listen_address

    async def _dial_connection(self, peer: Address, timeout: float) -> Connection:
        if self._closed:
            raise TransportError("the transport is closed")
        channel = await self._dial(peer, timeout)
        connection = Connection(self, channel, outbound=True, peer=peer)
        self._connections.add(connection)
        await connection.ready
        return connection

    async def connection(self, peer: Address, timeout: float | None = None) -> Connection:
        """The pooled connection to ``peer`` (dialled if needed)."""
        if self._closed:
            raise TransportError("the transport is closed")
        connection = self._pool.live(peer)
        if connection is not None:
            return connection
        return await self._pool.get(peer, timeout or self.settings.connect_timeout)

    def forget_peer(self, peer: Address) -> None:
        """Membership says ``peer`` is gone: end a dial to it under way, and drop the
        pooled connection (a partition leaves it open, with sends stuck behind it)."""
        reason = "membership reports the peer failed or left"
        self._pool.abandon(peer, reason)
        connection = self._pool.live(peer)
        if connection is not None:
            connection.fail(reason)

    async def send(self, peer: Address, kind: FrameKind, payload: bytes) -> None:
        connection = self._pool.live(peer) or await self.connection(peer)
        await connection.send(kind, payload)

    async def request(
        self, peer: Address, kind: FrameKind, payload: bytes, timeout: float
    ) -> bytes:
        connection = self._pool.live(peer)
        if connection is None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            connection = await self.connection(peer, min(timeout, self.settings.connect_timeout))
            timeout = max(0.001, timeout - (loop.time() - start))
        return await connection.request(kind, payload, timeout)

    async def send_datagram(self, peer: Address, payload: bytes) -> None:
        # A datagram is not worth a long dial: probes repeat, and a dead peer's dial
        # would hold the sender for the whole connect timeout.
        dial_timeout = min(1.0, self.settings.connect_timeout)
        try:
            if self._datagrams_on_stream:
                connection = await self.connection(peer, dial_timeout)
                connection.send_datagram_record(payload)
                return
            data = self.settings.keyring.seal(payload) if self._seal_datagrams else payload
            if self.native_datagrams:
                connection = await self.connection(peer, dial_timeout)
                if not connection.channel.send_datagram(data):
                    connection.send_datagram_record(payload)  # too large for one packet
            else:
                await self._send_raw_datagram(peer, data)
        except (TransportError, OSError) as exc:
            self.stats_for(peer).errors += 1
            log.debug("datagram to %s dropped: %s", peer, exc)

    def peer_stats(self) -> Mapping[Address, PeerStats]:
        return dict(self._stats)

    def connections(self) -> list[Connection]:
        """Every live connection, inbound and outbound."""
        return list(self._connections)

    async def _ping_loop(self) -> None:
        # Dead peers are found by the wire (TCP keep-alive, QUIC idle timeout); PINGs
        # measure the RTT and keep idle connections from timing out.
        while True:
            await asyncio.sleep(self.settings.ping_interval)
            for connection in list(self._connections):
                connection.ping()

    # -- shutdown -------------------------------------------------------------------

    async def _stop_pinging(self) -> None:
        if self._ping_task is not None:
            self._ping_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ping_task
            self._ping_task = None

    async def close(self) -> None:
        """Stop accepting, then close every connection gracefully (drain)."""
        if self._closed:
            return
        self._closed = True
        await self._stop_pinging()
        # Connections first: a QUIC listener's socket carries its inbound connections.
        connections = list(self._connections)
        await asyncio.gather(
            *(c.close(self.settings.drain_timeout) for c in connections),
            return_exceptions=True,
        )
        await self._release_listener()

    async def abort(self) -> None:
        """Drop everything at once, as a killed node would (no GOAWAY, no drain)."""
        self._closed = True
        await self._stop_pinging()
        for connection in list(self._connections):
            connection.abort()
        await self._release_listener()


class _EnrolmentExchange:
    """The receiver of an enrolment channel: waits for the one ENROL answer."""

    def __init__(self, max_frame_size: int, peer: Address) -> None:
        self._decoder = FrameDecoder(max_frame_size)
        self._max_size = max_frame_size
        self._peer = peer
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        try:
            for body in self._decoder.feed(data):
                records = unpack_envelope(body, max_size=self._max_size).records
                if records and records[0][0] == Kind.ENROL and not self.answer.done():
                    self.answer.set_result(records[0][2])
        except TransportError as exc:
            self._fail(ProtocolError(f"bad enrolment answer: {exc}"))

    def datagram_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        where = f"{self._peer[0]}:{self._peer[1]}"
        if isinstance(exc, PeerRejected) or exc is not None:
            self._fail(
                PeerRejected(
                    f"{where} refused the enrolment connection ({exc}): it is not a CA "
                    f"holder of this cluster, or not a Caxton node"
                )
            )
        else:
            self._fail(TransportError(f"{where} closed the connection without an answer"))

    def _fail(self, exc: TransportError) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)
            self.answer.exception()
