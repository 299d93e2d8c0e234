"""The tcp transport against the shared transport conformance suite."""

from __future__ import annotations

import asyncio
import contextlib

from caxton.drivers.transport import Address
from caxton.security.tls import TlsFiles, client_context
from caxton.testing.transport import TransportConformance
from caxton_transport_tcp import TcpTransport


class RawTcpStream:
    """A plain (or TLS) socket to a listener, below the transport's framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def wait_closed(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while await self._reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except OSError:  # reset, or a TLS alert from the server
            return True
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


class TestTcpConformance(TransportConformance):
    driver_class = TcpTransport
    entry_point_name = "tcp"

    async def raw_connect(self, address: Address, tls: TlsFiles | None) -> RawTcpStream:
        context = client_context(tls) if tls is not None else None
        reader, writer = await asyncio.open_connection(
            address[0], address[1], ssl=context, server_hostname="" if context else None
        )
        return RawTcpStream(reader, writer)
