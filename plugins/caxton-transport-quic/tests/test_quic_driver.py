"""What is particular to the quic transport: its config keys, datagrams, the one-stream rule."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

from caxton.drivers import DriverContext, FrameKind
from caxton.plugins import PluginHost
from caxton.testing.conformance import driver_config
from caxton.testing.transport import FrameRecorder, TransportPKI, make_pki
from caxton.transport import Kind, TransportSettings, frame, pack_envelope
from caxton_transport_quic import QUIC_SECTION, QuicTransport
from caxton_transport_quic.driver import ALPN


def build(settings: TransportSettings, **config: Any) -> QuicTransport:
    context = DriverContext(
        settings.node_id, Path("."), PluginHost(use_entry_points=False, env={}).hook
    )
    return QuicTransport(driver_config(QuicTransport, config), context, settings=settings)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TransportPKI:
    return make_pki(tmp_path_factory.mktemp("quic-pki"))


def test_published_and_selected_by_name() -> None:
    assert PluginHost(env={}).driver_class("transport", "quic") is QuicTransport
    assert QUIC_SECTION.path == "transport.quic"
    keys = {f.name for f in QUIC_SECTION.fields}
    assert {
        "max_concurrent_streams",
        "stream_receive_window",
        "connection_receive_window",
        "keep_alive_interval",
        "idle_timeout",
        "enable_0rtt",
        "enable_datagram",
        "max_datagram_size",
        "congestion_control",
    } <= keys


def test_congestion_control_is_what_aioquic_offers() -> None:
    assert driver_config(QuicTransport, {"congestion_control": "cubic"})["congestion_control"] == (
        "cubic"
    )
    with pytest.raises(ValueError, match="expected one of 'reno', 'cubic', got 'bbr'"):
        driver_config(QuicTransport, {"congestion_control": "bbr"})


def test_configuration_maps_the_keys(pki: TransportPKI) -> None:
    transport = build(
        TransportSettings("node-a", tls=pki.node("node-a")),
        stream_receive_window="2MB",
        connection_receive_window="20MB",
        idle_timeout="45s",
        max_datagram_size=1400,
        congestion_control="cubic",
        keep_alive_interval="2s",
    )
    configuration = transport._configuration(is_client=False)
    assert configuration.max_stream_data == 2 * 1024 * 1024
    assert configuration.max_data == 20 * 1024 * 1024
    assert configuration.idle_timeout == 45.0
    assert configuration.max_datagram_size == 1400
    assert configuration.congestion_control_algorithm == "cubic"
    assert configuration.verify_mode == ssl.CERT_REQUIRED
    assert transport.settings.ping_interval == 2.0


def test_0rtt_is_refused_with_a_warning(
    pki: TransportPKI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="caxton.transport.quic"):
        build(TransportSettings("node-a", tls=pki.node("node-a")), enable_0rtt=True)
    assert "enable_0rtt is ignored" in caplog.text


@pytest.mark.parametrize("size", [200, 5000], ids=["in-a-packet", "too-large-for-a-packet"])
async def test_datagrams_of_any_size_arrive(pki: TransportPKI, size: int) -> None:
    a = build(TransportSettings("node-a", tls=pki.node("node-a")))
    b = build(TransportSettings("node-b", tls=pki.node("node-b")))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    a_address = await a.listen(("127.0.0.1", 0), FrameRecorder().on_frame, lambda p, s: None)
    try:
        await a.send_datagram(address, b"d" * size)
        await recorder.until(lambda: recorder.datagrams)
        assert recorder.datagrams == [(b"d" * size, a_address)]
    finally:
        await a.close()
        await b.close()


async def test_a_second_stream_closes_the_connection(
    pki: TransportPKI, caplog: pytest.LogCaptureFixture
) -> None:
    b = build(TransportSettings("node-b", tls=pki.node("node-b")))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
    files = pki.node("node-r")
    configuration.load_verify_locations(cafile=str(files.ca_cert))
    configuration.load_cert_chain(str(files.node_cert), str(files.node_key))
    try:
        with caplog.at_level(logging.WARNING, logger="caxton.transport.quic"):
            async with connect(*address, configuration=configuration) as client:
                quic = client._quic
                hello = frame(pack_envelope("node-r", [(Kind.HELLO, 0, b"\x90")]))
                quic.send_stream_data(quic.get_next_available_stream_id(), hello)
                quic.send_stream_data(quic.get_next_available_stream_id(), b"second")
                client.transmit()
                await asyncio.wait_for(client.wait_closed(), 10)
        assert "unexpected QUIC stream 4" in caplog.text
        assert "closing connection" not in caplog.text  # the HELLO itself was fine
        assert recorder.frames == []
    finally:
        await b.close()


async def test_plaintext_mode_still_runs_tls_with_an_ephemeral_certificate() -> None:
    a = build(TransportSettings("node-a", plaintext=True))
    b = build(TransportSettings("node-b", plaintext=True))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    try:
        assert await a.request(address, FrameKind.REQUEST, b"hi", 5) == b"ok"
        (connection,) = a.connections()
        assert connection.channel.peer_certificate() is not None
    finally:
        await a.close()
        await b.close()


async def test_udp_garbage_on_the_quic_port_is_ignored(pki: TransportPKI) -> None:
    b = build(TransportSettings("node-b", tls=pki.node("node-b")))
    a = build(TransportSettings("node-a", tls=pki.node("node-a")))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for size in (1, 20, 1200, 1500):
            junk.sendto(os.urandom(size), address)
        junk.sendto(b"\xc0\x00\x00\x00\x01" + os.urandom(1195), address)  # a fake Initial
        assert await a.request(address, FrameKind.REQUEST, b"still there?", 5) == b"ok"
        assert [f.payload for f in recorder.frames] == [b"still there?"]
    finally:
        junk.close()
        await a.close()
        await b.close()


def test_an_aioquic_without_the_hooked_internals_is_refused(
    monkeypatch: pytest.MonkeyPatch, pki: TransportPKI
) -> None:
    from aioquic import tls

    from caxton.errors import PluginError

    original = tls.Context.__init__

    def without_flag(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._request_client_certificate

    monkeypatch.setattr(tls.Context, "__init__", without_flag)
    with pytest.raises(PluginError, match="missing _request_client_certificate"):
        build(TransportSettings("node-a", tls=pki.node("node-a")))
