"""The ``tcp`` transport: TLS 1.3 over TCP (asyncio), gossip datagrams over UDP.

One asyncio protocol per connection carries the bytes; everything above them (HELLO and
identity, envelopes, batching, requests, back-pressure, drain) is
:class:`caxton.transport.ConnectionTransport`. Gossip datagrams use a UDP socket bound
to the same port number as the TCP listener.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, cast

from cryptography import x509

from caxton.config import ConfigSection, Field
from caxton.drivers.transport import Address
from caxton.errors import PeerRejected, TransportError
from caxton.security.tls import (
    anonymous_client_context,
    client_context,
    explain_tls_error,
    server_context,
)
from caxton.transport import Channel, ConnectionTransport
from caxton.transport.base import REFUSAL_LOG_INTERVAL
from caxton.units import format_address

log = logging.getLogger("caxton.transport.tcp")

#: What a dialler can say when the listener closed right after the TLS handshake.
_CLOSED_AFTER_HANDSHAKE = (
    "it closed the connection right after the TLS handshake: it refuses this node's "
    "certificate (wrong CA, or expired; its log names the reason) or it is shutting down"
)

TCP_SECTION = ConfigSection(
    "transport.tcp",
    (
        Field("nodelay", "bool", True, "Disable Nagle's algorithm (TCP_NODELAY)"),
        Field("keepalive", "bool", True, "Enable TCP keep-alive probes (SO_KEEPALIVE)"),
        Field("keepalive_time", "duration", "30s", "Idle time before the first probe"),
        Field("keepalive_interval", "duration", "10s", "Time between probes"),
        Field("keepalive_probes", "int", 3, "Unanswered probes before the peer is dead", minimum=1),
        Field("send_buffer_size", "size", "0", "SO_SNDBUF in bytes (0: leave to the OS)"),
        Field("recv_buffer_size", "size", "0", "SO_RCVBUF in bytes (0: leave to the OS)"),
        Field(
            "connect_timeout",
            "duration",
            None,
            "Dial timeout (default: transport.connect_timeout)",
            optional=True,
        ),
        Field(
            "linger",
            "int",
            None,
            "SO_LINGER seconds; 0 resets connections on close and drops unsent data "
            "(default: unset, the OS closes gracefully)",
            optional=True,
            minimum=0,
        ),
    ),
    "TCP transport tuning",
    owner="caxton-transport-tcp",
)


class TcpChannel(asyncio.Protocol, Channel):
    """One TCP (TLS) connection, as a :class:`caxton.transport.Channel`."""

    def __init__(self, owner: TcpTransport, *, outbound: bool) -> None:
        self._owner = owner
        self._outbound = outbound
        self._transport: asyncio.Transport | None = None
        self._remote: Address = ("", 0)
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._certificate: x509.Certificate | None = None
        self._received = False

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self._transport = stream = cast(asyncio.Transport, transport)
        peer = stream.get_extra_info("peername")
        self._remote = (peer[0], peer[1]) if peer else ("", 0)
        sock = stream.get_extra_info("socket")
        if sock is not None:
            self._owner.tune_socket(sock)
        stream.set_write_buffer_limits(high=self._owner.settings.high_water)
        ssl_object = stream.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                self._certificate = x509.load_der_x509_certificate(der)
        if not self._outbound:
            self._owner.accept_channel(self)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self.receiver is not None:
            self.receiver.data_received(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport.close()  # marks Python 3.10's SSL transport closed too
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake_drain()
        if exc is None and self._outbound and not self._received and self._certificate:
            # The listener's TLS library refused this node's certificate after the
            # handshake ended on this side (TLS 1.3), and its alert never left it:
            # asyncio and uvloop close without sending it.
            exc = PeerRejected(self._owner.closed_after_handshake())
        if self.receiver is not None:
            self.receiver.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._drain_waiter = None

    # -- Channel --------------------------------------------------------------------

    @property
    def remote_address(self) -> Address:
        return self._remote

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    async def drain(self) -> None:
        if self._paused and not self._closed.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        await self._closed

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def peer_certificate(self) -> x509.Certificate | None:
        return self._certificate


class _GossipSocket(asyncio.DatagramProtocol):
    def __init__(self, owner: TcpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._owner.raw_datagram_received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("gossip socket error: %s", exc)


class TcpTransport(ConnectionTransport):
    """TLS 1.3 over TCP with mutual authentication; UDP for gossip datagrams."""

    config_section: ClassVar[ConfigSection | None] = TCP_SECTION

    def configure(self) -> None:
        if self.option("connect_timeout") is not None:
            self.settings = replace(
                self.settings, connect_timeout=float(self.option("connect_timeout"))
            )
        self._socket_options = self._socket_options_from_config()
        self._server_ssl: ssl.SSLContext | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self._listener_ssl: ssl.SSLContext | None = None
        self._anonymous = False
        if self.settings.tls is not None:
            self._load_tls()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._told: dict[Address, float] = {}
        self._telling: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None

    def _load_tls(self) -> None:
        tls = self.settings.tls
        assert tls is not None
        client = client_context(tls)
        server = server_context(tls) if tls.node_cert is not None else None
        if server is not None and self._anonymous:
            server.verify_mode = ssl.CERT_OPTIONAL
        if server is not None and self._listener_ssl is None:
            # The listener keeps its first context; at each ClientHello its callback
            # (called with or without SNI) hands the handshake the current one, so a
            # reload applies to every new connection: certificate, key and trusted CAs.
            self._listener_ssl = server_context(tls)
            self._listener_ssl.sni_callback = self._current_context
        self._client_ssl, self._server_ssl = client, server

    def _current_context(self, connection: Any, server_name: str | None, _: Any) -> None:
        if self._server_ssl is not None:
            connection.context = self._server_ssl

    def _socket_options_from_config(self) -> list[tuple[int, int, int | bytes]]:
        options: list[tuple[int, int, int | bytes]] = []
        if self.option("nodelay"):
            options.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
        if self.option("keepalive"):
            options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
            for name, key in (
                ("TCP_KEEPIDLE", "keepalive_time"),
                ("TCP_KEEPINTVL", "keepalive_interval"),
            ):
                if hasattr(socket, name):
                    seconds = max(1, round(self.option(key)))
                    options.append((socket.IPPROTO_TCP, getattr(socket, name), seconds))
            if hasattr(socket, "TCP_KEEPCNT"):
                options.append(
                    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.option("keepalive_probes"))
                )
        if self.option("send_buffer_size"):
            options.append((socket.SOL_SOCKET, socket.SO_SNDBUF, self.option("send_buffer_size")))
        if self.option("recv_buffer_size"):
            options.append((socket.SOL_SOCKET, socket.SO_RCVBUF, self.option("recv_buffer_size")))
        if self.option("linger") is not None:
            linger = struct.pack("ii", 1, self.option("linger"))
            options.append((socket.SOL_SOCKET, socket.SO_LINGER, linger))
        return options

    def tune_socket(self, sock: Any) -> None:
        for level, name, value in self._socket_options:
            try:
                sock.setsockopt(level, name, value)
            except OSError as exc:
                log.debug("setsockopt(%s, %s) failed: %s", level, name, exc)

    async def _serve(self, address: Address) -> Address:
        if self.settings.tls is not None and self._server_ssl is None:
            raise TransportError("listening with mutual TLS needs node_cert and node_key")
        loop = asyncio.get_running_loop()
        host, port = address
        last_error: OSError | None = None
        # The UDP socket must get the same port number; with port 0 retry until it does.
        for _ in range(8 if port == 0 else 1):
            listener = await _listening_socket(host, port)
            bound = listener.getsockname()
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _GossipSocket(self), local_addr=(bound[0], bound[1])
                )
            except OSError as exc:
                listener.close()
                last_error = exc
                continue
            self._listener = listener
            self._accepting = loop.create_task(self._accept_loop(listener))
            self._udp = udp
            return (str(bound[0]), int(bound[1]))
        raise TransportError(f"cannot bind UDP gossip port next to TCP {address}: {last_error}")

    async def _accept_loop(self, listener: socket.socket) -> None:
        # Accepting plain sockets and handing each to connect_accepted_socket, rather
        # than create_server(ssl=...), is what lets this node see a failed handshake:
        # asyncio and uvloop end those inside their TLS layer without telling anyone.
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, for instance: keep serving
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            handshake = loop.create_task(self._accept(sock, (str(peer[0]), int(peer[1]))))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    async def _accept(self, sock: socket.socket, peer: Address) -> None:
        loop = asyncio.get_running_loop()
        context = self._listener_ssl
        where = format_address(peer)
        try:
            await loop.connect_accepted_socket(
                lambda: TcpChannel(self, outbound=False),
                sock,
                ssl=context,
                ssl_handshake_timeout=self.settings.handshake_timeout if context else None,
            )
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            log.debug("%s closed during the TLS handshake: %s", where, exc)
            sock.close()
        except ssl.SSLError as exc:
            # This node refused the dialler's certificate, or (an alert) the dialler
            # refused this node's during the handshake.
            by_peer = "alert" in str(exc).lower()
            self.refused(where, explain_tls_error(exc), by_peer=by_peer, inbound=True)
            sock.close()
        except (OSError, asyncio.TimeoutError) as exc:  # reset, handshake timeout
            log.debug("connection from %s ended before it opened: %s", where, exc)
            sock.close()

    async def _stop_serving(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        for handshake in list(self._handshakes):
            handshake.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _dial(self, peer: Address, timeout: float) -> Channel:
        return await self._connect(peer, timeout, self._client_ssl)

    async def _dial_anonymous(self, peer: Address, timeout: float) -> Channel:
        return await self._connect(peer, timeout, anonymous_client_context())

    def _accept_anonymous(self) -> None:
        if self._server_ssl is None:
            raise TransportError("enrolment needs mutual TLS (security.cluster.mtls)")
        # A certificate a client does show is still verified against the CA; one that
        # shows none gets only as far as the connection's ENROL record.
        self._anonymous = True
        self._server_ssl.verify_mode = ssl.CERT_OPTIONAL
        if self._listener_ssl is not None:  # the verify mode stays the first context's
            self._listener_ssl.verify_mode = ssl.CERT_OPTIONAL

    async def _connect(
        self, peer: Address, timeout: float, context: ssl.SSLContext | None
    ) -> Channel:
        loop = asyncio.get_running_loop()
        try:
            _, channel = await asyncio.wait_for(
                loop.create_connection(
                    lambda: TcpChannel(self, outbound=True),
                    peer[0],
                    peer[1],
                    ssl=context,
                    server_hostname="" if context is not None else None,
                    ssl_handshake_timeout=timeout if context is not None else None,
                ),
                timeout,
            )
        except ssl.SSLError as exc:
            # This node refuses the listener's certificate (or, with an alert, the
            # listener refused this node during the handshake).
            why = explain_tls_error(exc)
            where = f"{peer[0]}:{peer[1]}"
            by_peer = "alert" in str(exc).lower()
            if not by_peer and context is not None and self._tell(peer):
                telling = loop.create_task(_send_alert(peer, context, timeout))
                self._telling.add(telling)
                telling.add_done_callback(self._telling.discard)
            self.refused(where, why, by_peer=by_peer, inbound=False)
            raise PeerRejected(f"TLS with {where}: {why}") from None
        return channel

    def _tell(self, peer: Address) -> bool:
        """Whether to tell ``peer`` now why this node refused it (once a minute)."""
        now = time.monotonic()
        if now - self._told.get(peer, -REFUSAL_LOG_INTERVAL) < REFUSAL_LOG_INTERVAL:
            return False
        self._told[peer] = now
        return True

    def closed_after_handshake(self) -> str:
        """Why a listener closed a dialled connection right after its TLS handshake,
        as far as this node can tell."""
        tls = self.settings.tls
        if tls is not None and tls.node_cert is not None:
            try:
                mine = x509.load_pem_x509_certificate(Path(tls.node_cert).read_bytes())
            except (OSError, ValueError):
                return _CLOSED_AFTER_HANDSHAKE
            if mine.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
                return "this node's certificate has expired"
        return _CLOSED_AFTER_HANDSHAKE

    async def _send_raw_datagram(self, peer: Address, data: bytes) -> bool:
        if self._udp is None:
            # Not listening: send from a throwaway socket (replies cannot come back).
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=peer
            )
            transport.sendto(data)
            transport.close()
            return True
        self._udp.sendto(data, peer)
        return True


async def _listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on the first address ``host`` resolves to."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise TransportError(f"cannot resolve listen address {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(100)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _send_alert(peer: Address, context: ssl.SSLContext, timeout: float) -> None:
    """Do the TLS handshake with ``peer`` again, by hand, so that the alert saying why
    this node refuses its certificate reaches it: asyncio's and uvloop's TLS layers
    close a failed handshake without sending their alert, and the listener would only
    see a reset. Only a refused dial pays for this, once a minute per peer."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*peer), timeout)
    except (OSError, asyncio.TimeoutError):
        return

    async def handshake() -> None:
        while True:
            try:
                tls.do_handshake()
                return  # the listener's certificate is acceptable by now
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                data = await reader.read(65536)
                if not data:
                    return
                incoming.write(data)
            except ssl.SSLError:
                writer.write(outgoing.read())  # the alert
                await writer.drain()
                return

    try:
        await asyncio.wait_for(handshake(), timeout)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()
