"""Caxton's ``tcp`` transport driver (entry point ``caxton.transport:tcp``)."""

from __future__ import annotations

from caxton_transport_tcp.driver import TCP_SECTION, TcpTransport

__all__ = ["TCP_SECTION", "TcpTransport"]
