"""The ``quic`` transport: aioquic, one connection per peer, mutual TLS 1.3.

Multiplexing: each connection carries **one** bidirectional stream, opened by the
dialling side, on which both directions write the same length-prefixed envelopes as
the TCP transport (requests and their responses are matched by request id, not by
stream). Frames queued in one event-loop turn leave as one envelope and one stream
write, so aioquic's per-write and per-stream costs are paid once per batch instead of
once per message; ordering per peer is the same as over TCP. Gossip uses QUIC DATAGRAM
frames on the same connection (inside its TLS); a datagram too large for one packet
falls back to the stream.

aioquic 1.7.2 neither asks for nor verifies client certificates (aioquic issue #541):
the server side sets the TLS engine to request one, and on ``HandshakeCompleted``
verifies the chain against the cluster CA itself (:func:`verify_client_chain`) before a
channel exists, so no frame of an unverified client is ever read. aioquic raises its
receive windows as data arrives rather than as it is consumed; to give a slow reader
back-pressure, the window updates are held back while the connection's reading is
paused. Both are instance-level hooks on aioquic internals (tested with aioquic 1.3 and
1.7.2); :func:`check_aioquic` refuses to start when they are missing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from cryptography import x509

from caxton.config import ConfigSection, Field
from caxton.drivers.transport import Address
from caxton.errors import PeerRejected, PluginError, TransportError
from caxton.security.enrolment import load_certificates
from caxton.security.identity import verify_client_chain
from caxton.security.pki import ephemeral_certificate
from caxton.security.tls import explain_tls_error
from caxton.transport import Channel, ConnectionTransport

log = logging.getLogger("caxton.transport.quic")

ALPN = "caxton/1"
#: Application close code sent to a client whose certificate is refused.
REFUSED = 0x1CA
#: Application close code for a peer that broke the one-stream rule.
PROTOCOL_VIOLATION = 0x1CB


def _tls_alert(code: int) -> bool:
    """Is ``code`` a TLS alert the peer closed with (0x100 + alert), not one of ours?"""
    return 0x100 <= code <= 0x1FF and code not in (REFUSED, PROTOCOL_VIOLATION)


#: Bytes a QUIC packet needs around a DATAGRAM frame's payload.
DATAGRAM_OVERHEAD = 64

QUIC_SECTION = ConfigSection(
    "transport.quic",
    (
        Field(
            "max_concurrent_streams",
            "int",
            16,
            "Streams a peer may open (the transport itself uses one per connection)",
            minimum=1,
        ),
        Field(
            "stream_receive_window",
            "size",
            "1MB",
            "Initial per-stream flow-control window",
            minimum=16384,
        ),
        Field(
            "connection_receive_window",
            "size",
            "10MB",
            "Initial per-connection flow-control window",
            minimum=16384,
        ),
        Field(
            "keep_alive_interval",
            "duration",
            "5s",
            "Interval of PING records (keeps NAT and idle timers alive, measures RTT)",
        ),
        Field("idle_timeout", "duration", "30s", "Close a connection silent for this long"),
        Field(
            "enable_0rtt",
            "bool",
            False,
            "Not supported: aioquic's resumption skips client authentication (ignored)",
        ),
        Field("enable_datagram", "bool", True, "Gossip over QUIC DATAGRAM frames"),
        Field(
            "max_datagram_size",
            "int",
            1200,
            "Largest UDP payload sent (QUIC packet size)",
            minimum=1200,
            maximum=65527,
        ),
        Field(
            "congestion_control",
            "str",
            "reno",
            "aioquic congestion control",
            choices=("reno", "cubic"),
        ),
        Field(
            "udp_buffer_size",
            "size",
            "4MB",
            "SO_RCVBUF/SO_SNDBUF of the UDP sockets (capped by net.core.rmem_max and "
            "wmem_max); 0 leaves the kernel default",
            minimum=0,
        ),
    ),
    "QUIC transport tuning",
    owner="caxton-transport-quic",
)


def check_aioquic() -> None:
    """Fail at startup, not silently, if aioquic's internals this driver hooks changed.

    The client-certificate check depends on them: without it a QUIC listener would take
    any client (aioquic issue #541).
    """
    from aioquic import __version__, tls
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.stream import QuicStreamSender

    missing = [
        name
        for owner, name in (
            (QuicConnection, "_initialize"),
            (QuicConnection, "_write_stream_limits"),
            (QuicConnection, "_write_connection_limits"),
            (tls.Context(is_client=False), "_request_client_certificate"),
            (tls.Context(is_client=False), "_peer_certificate_chain"),
            (QuicStreamSender(0, True), "_buffer"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise PluginError(
            f"caxton-transport-quic does not support aioquic {__version__} (missing "
            f"{', '.join(missing)}); install a tested one (pip install 'aioquic>=1.7.2,<1.8')"
        )


class QuicChannel(Channel):
    """The connection's one stream, as a :class:`caxton.transport.Channel`."""

    def __init__(self, protocol: Any, stream_id: int, remote: Address) -> None:
        self._protocol = protocol
        self._quic = protocol._quic
        self.stream_id = stream_id
        self._remote = remote
        self._drain_waiters: list[asyncio.Future[None]] = []

    @property
    def remote_address(self) -> Address:
        return self._remote

    def write(self, data: bytes) -> None:
        if not self._protocol.terminated:
            self._quic.send_stream_data(self.stream_id, data)
            self._protocol.transmit_soon()

    def buffered(self) -> int:
        stream = self._quic._streams.get(self.stream_id)
        return len(stream.sender._buffer) if stream is not None else 0

    async def drain(self, low_water: int | None = None) -> None:
        limit = self._protocol.owner.settings.high_water // 2 if low_water is None else low_water
        while self.buffered() > limit and not self._protocol.terminated:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pause_reading(self) -> None:
        self._protocol.reading_paused = True

    def resume_reading(self) -> None:
        self._protocol.reading_paused = False
        self._protocol.transmit_soon()  # send the window updates held back

    async def close(self) -> None:
        await self.drain(0)  # every byte acknowledged: closing now loses nothing
        self._protocol.close()
        await self._protocol.wait_closed()
        self._release_socket()

    def abort(self) -> None:
        self._protocol.close(error_code=0x1, reason_phrase="aborted")
        self._release_socket()

    def _release_socket(self) -> None:
        if self._protocol.outbound and self._protocol._transport is not None:
            self._protocol._transport.close()

    def peer_certificate(self) -> x509.Certificate | None:
        certificate: x509.Certificate | None = self._quic.tls._peer_certificate
        return certificate

    def send_datagram(self, data: bytes) -> bool:
        protocol = self._protocol
        if not protocol.datagrams_enabled or len(data) > protocol.max_datagram_payload:
            return False
        self._quic.send_datagram_frame(data)
        protocol.transmit_soon()
        return True


def _make_protocol_class() -> Callable[..., Any]:
    """Define the protocol class on first use, so importing the driver stays cheap."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events

    class _Protocol(QuicConnectionProtocol):
        def __init__(
            self, quic: Any, stream_handler: Any = None, *, owner: QuicTransport, outbound: bool
        ) -> None:
            super().__init__(quic, stream_handler)
            self.owner = owner
            self.outbound = outbound
            self.channel: QuicChannel | None = None
            self.terminated = False
            self.reading_paused = False
            self.datagrams_enabled = owner.option("enable_datagram")
            self.max_datagram_payload = owner.option("max_datagram_size") - DATAGRAM_OVERHEAD
            self._early: list[bytes] = []
            #: Our own record of the handshake: aioquic's wait_connected() misses a
            #: HandshakeCompleted that arrives before it is first awaited.
            self.handshake: asyncio.Future[None] = self._loop.create_future()
            self._hook_aioquic(quic)

        def _hook_aioquic(self, quic: Any) -> None:
            if not self.outbound:
                initialize = quic._initialize

                def request_client_certificate(peer_cid: bytes) -> None:
                    initialize(peer_cid)
                    # aioquic never asks for a client certificate otherwise (#541).
                    quic.tls._request_client_certificate = True

                quic._initialize = request_client_certificate
            quic._local_max_streams_bidi.value = self.owner.option("max_concurrent_streams")
            stream_limits = quic._write_stream_limits
            connection_limits = quic._write_connection_limits

            def hold_stream_window(*args: Any, **kwargs: Any) -> None:
                if not self.reading_paused:
                    stream_limits(*args, **kwargs)

            def hold_connection_window(*args: Any, **kwargs: Any) -> None:
                if not self.reading_paused:
                    connection_limits(*args, **kwargs)

            quic._write_stream_limits = hold_stream_window
            quic._write_connection_limits = hold_connection_window

        def transmit_soon(self) -> None:
            self._transmit_soon()

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            super().datagram_received(data, addr)
            if self.channel is not None and self.channel._drain_waiters:
                self.channel.wake_drainers()
            close_event = self._quic._close_event
            if close_event is not None and not self.terminated:
                # The peer closed: tell the connection now, not after the drain period.
                self._terminated(close_event)

        def error_received(self, exc: Exception) -> None:
            # ICMP port unreachable on the dialled (connected) socket: the peer is gone.
            if isinstance(exc, ConnectionRefusedError) and self.outbound and not self.terminated:
                self._quic.close(error_code=0x1, reason_phrase="peer unreachable")
                self._terminated(
                    events.ConnectionTerminated(
                        error_code=0x1, frame_type=None, reason_phrase="peer unreachable"
                    )
                )

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.StreamDataReceived):
                self._stream_data(event.stream_id, event.data)
            elif isinstance(event, events.DatagramFrameReceived):
                if self.channel is not None and self.channel.receiver is not None:
                    self.channel.receiver.datagram_received(event.data)
            elif isinstance(event, events.HandshakeCompleted):
                if not self.handshake.done():
                    self.handshake.set_result(None)
                if not self.outbound:
                    self._accept()
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(event)

        def _accept(self) -> None:
            tls = self._quic.tls
            owner = self.owner
            remote = self._quic._network_paths[0].addr
            address = (str(remote[0]), int(remote[1]))
            anonymous = tls._peer_certificate is None and owner.anonymous_clients
            if owner.settings.tls is not None and not anonymous:
                # A client without a certificate may only enrol: its connection takes
                # nothing but one ENROL record (caxton.transport.Connection).
                try:
                    verify_client_chain(
                        tls._peer_certificate, tls._peer_certificate_chain, owner.trusted_cas
                    )
                except PeerRejected as exc:
                    owner.refused(
                        f"{address[0]}:{address[1]}",
                        explain_tls_error(exc),
                        by_peer=False,
                        inbound=True,
                    )
                    self.close(error_code=REFUSED, reason_phrase=str(exc)[:200])
                    return
            stream_id = 0  # the dialler's first bidirectional stream
            self.channel = QuicChannel(self, stream_id, address)
            if owner.accept_channel(self.channel) is None:
                self.close()
                return
            for data in self._early:
                self._deliver(data)
            self._early.clear()

        def _stream_data(self, stream_id: int, data: bytes) -> None:
            channel = self.channel
            if channel is None:
                if not self.outbound and stream_id == 0 and not self.terminated:
                    self._early.append(data)  # before HandshakeCompleted was processed
                return
            if stream_id != channel.stream_id:
                reason = f"unexpected QUIC stream {stream_id} (one stream per connection)"
                log.warning("closing QUIC connection %s:%s: %s", *channel.remote_address, reason)
                self.close(error_code=PROTOCOL_VIOLATION, reason_phrase=reason)
                return
            self._deliver(data)

        def _deliver(self, data: bytes) -> None:
            if self.channel is not None and self.channel.receiver is not None and data:
                self.channel.receiver.data_received(data)

        def _terminated(self, event: Any) -> None:
            if self.terminated:
                return
            self.terminated = True
            if self.outbound and self._transport is not None:
                # A dialled connection owns its UDP socket; once the connection has
                # ended nothing more is sent on it (aioquic sends nothing while draining).
                self._transport.close()
            if not self.handshake.done():
                self.handshake.set_exception(ConnectionError(event.reason_phrase))
                self.handshake.exception()
            channel = self.channel
            if channel is None:
                if not self.outbound and _tls_alert(event.error_code):
                    # The client refused this node's certificate during the handshake.
                    remote = self._quic._network_paths[0].addr
                    self.owner.refused(
                        f"{remote[0]}:{remote[1]}",
                        explain_tls_error(
                            event.reason_phrase or hex(event.error_code), by_peer=True
                        ),
                        by_peer=True,
                        inbound=True,
                    )
                return
            channel.wake_drainers()
            if channel.receiver is None:
                return
            exc: BaseException | None = None
            if event.error_code == REFUSED or 0x100 <= event.error_code <= 0x1FF:
                exc = PeerRejected(f"refused: {event.reason_phrase or hex(event.error_code)}")
            elif event.error_code not in (0, 0x1) or event.reason_phrase:
                exc = TransportError(event.reason_phrase or f"QUIC error {event.error_code:#x}")
            channel.receiver.connection_lost(exc)

    return _Protocol


class QuicTransport(ConnectionTransport):
    """QUIC (aioquic) with mutual TLS 1.3; see the module docstring for the design."""

    config_section: ClassVar[ConfigSection | None] = QUIC_SECTION
    native_datagrams: ClassVar[bool] = True

    def configure(self) -> None:
        check_aioquic()
        self.settings = replace(
            self.settings, ping_interval=float(self.option("keep_alive_interval"))
        )
        if self.option("enable_0rtt"):
            log.warning(
                "transport.quic.enable_0rtt is ignored: aioquic session resumption skips the "
                "client certificate, and 0-RTT data could be replayed"
            )
        self.trusted_cas: list[x509.Certificate] = []
        self._protocol_class: Callable[..., Any] | None = None
        self._server: Any = None
        if self.settings.tls is not None:
            self._load_tls()
        #: Clients without a certificate may connect (to enrol): see _accept_anonymous.
        self.anonymous_clients = False

    def _load_tls(self) -> None:
        # Client configurations are made per dial, from the files; the listener's is
        # swapped, so the next connection it accepts uses the new material.
        tls = self.settings.tls
        assert tls is not None
        trusted = load_certificates(tls.ca_cert)
        server_configuration = self._configuration(is_client=False) if tls.node_cert else None
        self.trusted_cas = trusted
        if self._server is not None and server_configuration is not None:
            self._server._configuration = server_configuration

    def _configuration(self, *, is_client: bool, anonymous: bool = False) -> Any:
        import ssl

        from aioquic.quic.configuration import QuicConfiguration

        configuration = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=float(self.option("idle_timeout")),
            max_data=int(self.option("connection_receive_window")),
            max_stream_data=int(self.option("stream_receive_window")),
            max_datagram_size=int(self.option("max_datagram_size")),
            congestion_control_algorithm=str(self.option("congestion_control")),
            max_datagram_frame_size=65536 if self.option("enable_datagram") else None,
        )
        tls = self.settings.tls
        if tls is None or anonymous:
            configuration.verify_mode = ssl.CERT_NONE
            if not is_client:
                configuration.certificate, configuration.private_key = ephemeral_certificate()
            return configuration
        configuration.verify_mode = ssl.CERT_REQUIRED
        configuration.load_verify_locations(cafile=str(tls.ca_cert))
        if tls.node_cert is not None:
            configuration.load_cert_chain(str(tls.node_cert), str(tls.node_key or tls.node_cert))
        return configuration

    def _protocol_factory(self, *, outbound: bool) -> Callable[..., Any]:
        protocol_class = self._protocol_class
        if protocol_class is None:
            protocol_class = self._protocol_class = _make_protocol_class()
        return functools.partial(protocol_class, owner=self, outbound=outbound)

    async def _serve(self, address: Address) -> Address:
        from aioquic.asyncio.server import serve

        if self.settings.tls is not None and self.settings.tls.node_cert is None:
            raise TransportError("listening with mutual TLS needs node_cert and node_key")
        self._server = await serve(
            address[0],
            address[1],
            configuration=self._configuration(is_client=False),
            create_protocol=self._protocol_factory(outbound=False),
        )
        self._tune_udp(self._server._transport)
        bound = self._server._transport.get_extra_info("sockname")
        return (str(bound[0]), int(bound[1]))

    def _tune_udp(self, transport: Any) -> None:
        # Bursts of packets overflow the kernel's default UDP buffer (~208 KiB); every
        # drop costs a retransmission and halves the congestion window.
        size = int(self.option("udp_buffer_size"))
        sock = transport.get_extra_info("socket")
        if not size or sock is None:
            return
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError as exc:
                log.debug("cannot set UDP buffer size: %s", exc)

    async def _stop_serving(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _dial(self, peer: Address, timeout: float) -> Channel:
        return await self._connect(peer, timeout, self._configuration(is_client=True))

    async def _dial_anonymous(self, peer: Address, timeout: float) -> Channel:
        return await self._connect(
            peer, timeout, self._configuration(is_client=True, anonymous=True)
        )

    def _accept_anonymous(self) -> None:
        if self.settings.tls is None:
            raise TransportError("enrolment needs mutual TLS (security.cluster.mtls)")
        self.anonymous_clients = True

    def _handshake_failed(self, peer: Address, quic: Any, otherwise: str) -> TransportError:
        """The error for a dial whose connection ended in (or right at) its handshake."""
        close_event = quic._close_event
        where = f"{peer[0]}:{peer[1]}"
        if close_event is not None and (
            close_event.error_code == REFUSED or 0x100 <= close_event.error_code <= 0x1FF
        ):
            reason = close_event.reason_phrase or hex(close_event.error_code)
            by_peer = close_event.error_code == REFUSED
            self.refused(
                where, explain_tls_error(reason, by_peer=by_peer), by_peer=by_peer, inbound=False
            )
            return PeerRejected(f"QUIC handshake with {where} refused: {reason}")
        return TransportError(
            f"QUIC handshake with {where} failed: "
            f"{close_event.reason_phrase if close_event else otherwise}"
        )

    async def _connect(self, peer: Address, timeout: float, configuration: Any) -> Channel:
        from aioquic.quic.connection import QuicConnection

        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(peer[0], peer[1], type=socket.SOCK_DGRAM)
        remote = (str(infos[0][4][0]), int(infos[0][4][1]))
        quic = QuicConnection(configuration=configuration)
        factory = self._protocol_factory(outbound=True)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: factory(quic), remote_addr=remote
        )
        self._tune_udp(transport)
        protocol.connect(remote)
        try:
            await asyncio.wait_for(asyncio.shield(protocol.handshake), timeout)
        except BaseException as exc:
            transport.close()
            if not isinstance(exc, (ConnectionError, asyncio.TimeoutError)):
                raise
            raise self._handshake_failed(peer, quic, type(exc).__name__) from None
        if protocol.terminated:  # refused in the packets that completed the handshake
            transport.close()
            raise self._handshake_failed(peer, quic, "closed")
        channel = QuicChannel(protocol, quic.get_next_available_stream_id(), peer)
        protocol.channel = channel
        return channel
