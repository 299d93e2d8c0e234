"""The tcp transport against the shared transport conformance suite."""

from __future__ import annotations

from caxton.drivers.transport import Address
from caxton.security.tls import TlsFiles
from caxton.testing.transport import RawSocketStream, TransportConformance
from caxton_transport_tcp import TcpTransport


class TestTcpConformance(TransportConformance):
    driver_class = TcpTransport
    entry_point_name = "tcp"

    async def raw_connect(self, address: Address, tls: TlsFiles | None) -> RawSocketStream:
        return await RawSocketStream.connect(address, tls)
