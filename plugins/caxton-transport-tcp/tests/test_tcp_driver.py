"""What is particular to the tcp transport: its config keys, UDP beside TCP, loading."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from caxton.config import load_config
from caxton.drivers import DriverContext, FrameKind
from caxton.errors import ConfigError, TransportError
from caxton.plugins import PluginHost
from caxton.testing.conformance import driver_config
from caxton.testing.transport import FrameRecorder, make_pki
from caxton.transport import Keyring, TransportSettings
from caxton_transport_tcp import TCP_SECTION, TcpTransport


def context(node_id: str = "node-a") -> DriverContext:
    return DriverContext(node_id, Path("."), PluginHost(use_entry_points=False, env={}).hook)


def build(settings: TransportSettings, **config: Any) -> TcpTransport:
    return TcpTransport(
        driver_config(TcpTransport, config), context(settings.node_id), settings=settings
    )


def test_published_and_selected_by_name() -> None:
    assert PluginHost(env={}).driver_class("transport", "tcp") is TcpTransport
    assert TcpTransport.config_section is TCP_SECTION
    assert TCP_SECTION.path == "transport.tcp"
    keys = {f.name for f in TCP_SECTION.fields}
    assert keys == {
        "nodelay",
        "keepalive",
        "keepalive_time",
        "keepalive_interval",
        "keepalive_probes",
        "send_buffer_size",
        "recv_buffer_size",
        "connect_timeout",
        "linger",
    }


def test_settings_come_from_the_node_configuration() -> None:
    config = load_config(
        env={}, overrides={"transport.plaintext": True, "transport.max_frame_size": "1MB"}
    )
    ctx = context()
    ctx.services["node"] = SimpleNamespace(config=config)
    transport = TcpTransport(driver_config(TcpTransport, {"connect_timeout": "250ms"}), ctx)
    assert transport.settings.plaintext
    assert transport.settings.max_frame_size == 1024 * 1024
    assert transport.settings.connect_timeout == 0.25
    with pytest.raises(ConfigError, match="needs the node configuration"):
        TcpTransport(driver_config(TcpTransport, {}), context())


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        driver_config(TcpTransport, {"keepalive_probes": 0})
    with pytest.raises(ValueError, match="duration"):
        driver_config(TcpTransport, {"keepalive_time": "soon"})


async def test_socket_options_are_applied(tmp_path: Path) -> None:
    settings = TransportSettings("node-a", plaintext=True)
    a = build(
        settings,
        keepalive_time="45s",
        keepalive_interval="5s",
        keepalive_probes=4,
        send_buffer_size="128KB",
        linger=1,
    )
    b = build(TransportSettings("node-b", plaintext=True))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    try:
        await a.send(address, FrameKind.MESSAGE, b"x")
        (connection,) = a.connections()
        sock = connection.channel._transport.get_extra_info("socket")  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 45
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 128 * 1024
    finally:
        await a.close()
        await b.close()


async def test_gossip_udp_shares_the_tcp_port_and_is_sealed() -> None:
    key = os.urandom(32)
    b = build(TransportSettings("node-b", plaintext=True, keyring=Keyring([key])))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", 0))
        probe.sendto(b"unsealed", address)  # reaches the UDP socket on the same port...
        probe.sendto(Keyring([key]).seal(b"sealed"), address)
        await recorder.until(lambda: recorder.datagrams)
        # ...but only what the keyring authenticates is delivered.
        assert recorder.datagrams == [(b"sealed", probe.getsockname())]
    finally:
        probe.close()
        await b.close()


async def test_with_mtls_and_no_keyring_udp_is_ignored_and_datagrams_use_tls(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    a = build(TransportSettings("node-a", tls=pki.node("node-a")))
    b = build(TransportSettings("node-b", tls=pki.node("node-b")))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    a_address = await a.listen(("127.0.0.1", 0), FrameRecorder().on_frame, lambda p, s: None)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.sendto(b"spoofed", address)
        await a.send_datagram(address, b"over-tls")
        await recorder.until(lambda: recorder.datagrams)
        assert recorder.datagrams == [(b"over-tls", a_address)]
    finally:
        probe.close()
        await a.close()
        await b.close()


@pytest.mark.parametrize("batching", [True, False])
async def test_compression_and_batching_settings_keep_payloads_intact(batching: bool) -> None:
    a = build(TransportSettings("node-a", plaintext=True, compression=True, batching=batching))
    b = build(TransportSettings("node-b", plaintext=True))
    recorder = FrameRecorder()
    address = await b.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    try:
        payloads = [bytes([i]) * 4000 for i in range(50)]
        for payload in payloads:
            await a.send(address, FrameKind.MESSAGE, payload)
        await recorder.until(lambda: len(recorder.frames) == 50)
        assert [f.payload for f in recorder.frames] == payloads
        assert a.peer_stats()[address].bytes_sent < sum(map(len, payloads)) // 10
    finally:
        await a.close()
        await b.close()


async def test_verify_peer_off_skips_only_the_identity_match(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    lenient = build(TransportSettings("node-b", tls=pki.node("node-b"), verify_peer=False))
    recorder = FrameRecorder()
    address = await lenient.listen(("127.0.0.1", 0), recorder.on_frame, recorder.on_datagram)
    # node-c's valid certificate, claiming node-a: accepted without the identity check...
    other = build(TransportSettings("node-a", tls=pki.node("node-c"), verify_peer=False))
    # ...but a certificate of another CA is still refused by TLS.
    foreign = build(
        TransportSettings(
            "node-a", tls=pki.foreign("node-a"), verify_peer=False, connect_timeout=1.0
        )
    )
    try:
        assert await other.request(address, FrameKind.REQUEST, b"hi", 5) == b"ok"
        with pytest.raises(TransportError):
            await foreign.request(address, FrameKind.REQUEST, b"hi", 1)
        assert [f.sender for f in recorder.frames] == ["node-a"]
    finally:
        for transport in (other, foreign, lenient):
            await transport.close()
