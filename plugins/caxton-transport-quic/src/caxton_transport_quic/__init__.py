"""Caxton's ``quic`` transport driver (entry point ``caxton.transport:quic``)."""

from __future__ import annotations

from caxton_transport_quic.driver import QUIC_SECTION, QuicTransport

__all__ = ["QUIC_SECTION", "QuicTransport"]
