"""The quic transport against the shared transport conformance suite."""

from __future__ import annotations

import asyncio
import ssl

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration

from caxton.drivers.transport import Address
from caxton.security.tls import TlsFiles
from caxton.testing.transport import TransportConformance
from caxton_transport_quic import QuicTransport
from caxton_transport_quic.driver import ALPN


class RawQuicStream:
    """A raw aioquic client: TLS and one stream, none of the transport's framing."""

    def __init__(self, context: object, protocol: QuicConnectionProtocol, stream_id: int) -> None:
        self._context = context
        self._protocol = protocol
        self._stream_id = stream_id

    def write(self, data: bytes) -> None:
        self._protocol._quic.send_stream_data(self._stream_id, data)
        self._protocol.transmit()

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._protocol.wait_closed(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._protocol.close()
        if self._protocol._transport is not None:
            self._protocol._transport.close()


class TestQuicConformance(TransportConformance):
    driver_class = QuicTransport
    entry_point_name = "quic"

    async def raw_connect(self, address: Address, tls: TlsFiles | None) -> RawQuicStream:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        if tls is None:
            configuration.verify_mode = ssl.CERT_NONE
        else:
            configuration.load_verify_locations(cafile=str(tls.ca_cert))
            if tls.node_cert is not None:
                configuration.load_cert_chain(str(tls.node_cert), str(tls.node_key))
        context = connect(address[0], address[1], configuration=configuration)
        protocol = await context.__aenter__()
        stream_id = protocol._quic.get_next_available_stream_id()
        return RawQuicStream(context, protocol, stream_id)
