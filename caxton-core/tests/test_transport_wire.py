"""The shared transport pieces without sockets: envelope, framing, keyring, settings."""

from __future__ import annotations

import asyncio
import os
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caxton.config import load_config
from caxton.errors import ConfigError, ProtocolError, TransportError
from caxton.transport import (
    FrameDecoder,
    FrameTooLarge,
    Keyring,
    Kind,
    TransportSettings,
    frame,
    generate_key,
    pack_envelope,
    unpack_envelope,
)
from caxton.transport.keyring import decode_key
from caxton.transport.pool import Backoff, PeerPool

records = st.lists(
    st.tuples(st.integers(1, 21), st.integers(0, 2**63), st.binary(max_size=300)),
    min_size=1,
    max_size=20,
)


@given(records, st.booleans())
def test_envelope_round_trip(items: list[tuple[int, int, bytes]], compress: bool) -> None:
    body = pack_envelope("node-a", items, compress_over=0 if compress else None)
    envelope = unpack_envelope(body, max_size=1 << 20)
    assert envelope.sender == "node-a"
    assert envelope.records == items
    assert envelope.version == 1


def test_compression_applies_only_when_it_helps() -> None:
    big = [(int(Kind.MESSAGE), 0, b"a" * 10_000)]
    assert len(pack_envelope("n", big, compress_over=1024)) < 200
    noise = [(int(Kind.MESSAGE), 0, os.urandom(5000))]
    assert (
        unpack_envelope(pack_envelope("n", noise, compress_over=1024), max_size=1 << 20).flags == 0
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xc1", "undecodable envelope"),
        (msgpack.packb([2, 0, "n", [[1, 0, b""]]]), "unsupported wire version 2"),
        (msgpack.packb([1, 0, "n"]), "malformed envelope"),
        (msgpack.packb([1, 0, "n", []]), "no records"),
        (msgpack.packb([1, 0, "n", [[1, 0, "text"]]]), "malformed record"),
        (msgpack.packb([1, 0, 5, [[1, 0, b""]]]), "malformed envelope header"),
        (msgpack.packb([1, 1, "n", b"not zlib"]), "corrupt compressed envelope"),
    ],
)
def test_bad_envelopes_are_protocol_errors(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        unpack_envelope(body, max_size=1 << 20)


def test_a_compressed_envelope_cannot_inflate_past_the_frame_limit() -> None:
    bomb = zlib.compress(msgpack.packb([[1, 0, b"\0" * 2_000_000]]))
    body = msgpack.packb([1, 1, "n", bomb])
    with pytest.raises(ProtocolError, match="inflates beyond max_frame_size"):
        unpack_envelope(body, max_size=64 * 1024)


@given(st.lists(st.binary(min_size=1, max_size=500), min_size=1, max_size=30), st.integers(1, 64))
def test_decoder_reassembles_frames_split_anywhere(bodies: list[bytes], step: int) -> None:
    stream = b"".join(frame(body) for body in bodies)
    decoder = FrameDecoder(max_frame_size=1024)
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        out.extend(decoder.feed(stream[i : i + step]))
    assert out == bodies
    assert decoder.truncation() is None


def test_decoder_refuses_an_oversized_length_before_buffering() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    with pytest.raises(FrameTooLarge, match="frame of 1195725856 bytes exceeds max_frame_size"):
        decoder.feed(b"GET / HTTP/1.1\r\n")


def test_decoder_reports_truncation() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    assert decoder.feed(frame(b"abc")[:5]) == []
    assert decoder.truncation() == "truncated frame: 1 of 3 bytes received"
    decoder = FrameDecoder(max_frame_size=1024)
    decoder.feed(b"\0\0")
    assert decoder.truncation() == "truncated frame header: 2 of 4 bytes"
    with pytest.raises(ProtocolError, match="empty frame"):
        FrameDecoder(1024).feed(b"\0\0\0\0")


def test_keyring_first_key_encrypts_all_decrypt_and_rotation() -> None:
    old, new = os.urandom(32), os.urandom(16)
    sender, receiver = Keyring([old]), Keyring([old])
    sealed = sender.seal(b"probe")
    assert sealed != b"probe"
    assert receiver.open(sealed) == b"probe"
    receiver.install(new)  # step 1: everyone accepts the new key
    sender.install(new)
    sender.use(new)  # step 2: senders switch
    assert receiver.open(sender.seal(b"two")) == b"two"
    receiver.use(new)
    receiver.remove(old)  # step 3: the old key goes
    assert receiver.open(Keyring([old]).seal(b"stale")) is None
    with pytest.raises(ConfigError, match="primary"):
        receiver.remove(new)


def test_keyring_drops_tampered_and_foreign_datagrams() -> None:
    ring = Keyring([os.urandom(32)])
    sealed = bytearray(ring.seal(b"payload"))
    sealed[-1] ^= 1
    assert ring.open(bytes(sealed)) is None
    assert ring.open(Keyring([os.urandom(32)]).seal(b"x")) is None
    assert ring.open(b"short") is None


def test_gossip_keys_from_config() -> None:
    assert len(decode_key(generate_key())) == 32
    with pytest.raises(ConfigError, match="not valid base64"):
        decode_key("***")
    with pytest.raises(ConfigError, match="decodes to 5 bytes"):
        decode_key("aGVsbG8=")


def test_settings_need_tls_or_explicit_plaintext() -> None:
    with pytest.raises(ConfigError, match="needs mutual TLS"):
        TransportSettings("n")
    config = load_config(env={}, overrides={"transport.plaintext": True})
    settings = TransportSettings.from_config(config, "n")
    assert settings.plaintext
    assert settings.tls is None
    assert settings.max_frame_size == 16 * 1024 * 1024
    config = load_config(env={}, overrides={"security.cluster.mtls.enabled": True})
    with pytest.raises(ConfigError, match="ca_cert, node_cert, node_key are not set"):
        TransportSettings.from_config(config, "n")
    config = load_config(
        env={},
        overrides={
            "security.cluster.mtls.enabled": True,
            "security.cluster.mtls.ca_cert": "ca.crt",
            "security.cluster.mtls.node_cert": "node.crt",
            "security.cluster.mtls.node_key": "node.key",
            "transport.plaintext": True,
        },
    )
    with pytest.raises(ConfigError, match="contradicts"):
        TransportSettings.from_config(config, "n")


def test_backoff_grows_to_its_cap() -> None:
    backoff = Backoff(initial=0.05, maximum=1.0)
    delays = [backoff.failed(0.0, "refused") for _ in range(10)]
    assert all(0.025 <= d <= 1.0 for d in delays)
    assert max(delays[-3:]) > 0.4
    backoff.reset()
    assert backoff.retry_at == 0.0


async def test_dispatcher_routes_by_kind_and_refuses_unrouted_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from caxton.drivers import Frame, FrameKind
    from caxton.errors import TransportError
    from caxton.transport import FrameDispatcher

    dispatcher = FrameDispatcher("node-1")
    seen: list[Frame] = []

    async def gossip(frame: Frame) -> bytes | None:
        seen.append(frame)
        return b"merged"

    dispatcher.route(FrameKind.GOSSIP, gossip)
    with pytest.raises(ValueError, match="already routed"):
        dispatcher.route(FrameKind.GOSSIP, gossip)
    datagrams: list[bytes] = []
    dispatcher.route_datagrams(lambda payload, source: datagrams.append(payload))

    assert await dispatcher.on_frame(Frame(FrameKind.GOSSIP, b"g", "n2", 7)) == b"merged"
    assert await dispatcher.on_frame(Frame(FrameKind.MESSAGE, b"m", "n2")) is None
    with pytest.raises(TransportError, match="no handler for BULK requests on node node-1"):
        await dispatcher.on_frame(Frame(FrameKind.BULK, b"b", "n2", 8))
    dispatcher.on_datagram(b"probe", ("127.0.0.1", 1))
    assert [f.payload for f in seen] == [b"g"]
    assert datagrams == [b"probe"]
    assert "no handler for MESSAGE frames" in caplog.text


class _PipeChannel:
    """A channel that records what the connection writes (no wire)."""

    receiver = None
    remote_address = ("127.0.0.1", 40000)

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def buffered(self) -> int:
        return 0

    async def drain(self) -> None:
        return None

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def close(self) -> None: ...

    def abort(self) -> None:
        self.aborted = True

    def peer_certificate(self) -> None:
        return None

    def send_datagram(self, data: bytes) -> bool:
        return False


class _Owner:
    def __init__(self) -> None:
        self.settings = TransportSettings("node-a", plaintext=True, max_frame_size=4096)
        self.frames: list[object] = []
        self.on_datagram = None
        self.on_enrol = None
        self.advertised_address = ("127.0.0.1", 7946)

    async def on_frame(self, frame: object) -> None:
        self.frames.append(frame)

    def stats_for(self, peer: object) -> object:
        from caxton.drivers import PeerStats

        return PeerStats()

    def open_datagram(self, data: bytes) -> bytes:
        return data

    def connection_ready(self, connection: object) -> None: ...

    def connection_draining(self, connection: object) -> None: ...

    def connection_closed(self, connection: object) -> None: ...

    def refused(self, peer: str, reason: str, *, by_peer: bool, inbound: bool) -> None: ...


@given(st.binary(max_size=3000), st.booleans())
def test_no_byte_sequence_escapes_the_connection(data: bytes, after_hello: bool) -> None:
    """Whatever a peer sends, the connection delivers it, waits, or closes: never raises."""
    import asyncio

    from caxton.transport.connection import Connection, State

    async def feed() -> None:
        owner = _Owner()
        channel = _PipeChannel()
        connection = Connection(owner, channel, outbound=False)  # type: ignore[arg-type]
        if after_hello:
            hello = frame(pack_envelope("node-b", [(int(Kind.HELLO), 0, b"\x92\xa1h\x01")]))
            connection.data_received(hello)
            assert connection.state is State.OPEN
        connection.data_received(data)
        assert connection.state in (State.HANDSHAKE, State.OPEN, State.CLOSED)
        if connection.state is State.CLOSED:
            assert channel.aborted
        connection.connection_lost(None)

    asyncio.run(feed())


async def test_an_abandoned_dial_fails_at_once_instead_of_retrying() -> None:
    """forget_peer's core: a dial retrying a dead address gives up when told."""
    attempts = 0
    retrying = asyncio.Event()

    async def refused(peer: tuple[str, int], timeout: float) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            retrying.set()
        raise ConnectionRefusedError("connection refused")

    pool = PeerPool(refused, backoff_initial=0.05, backoff_max=0.2)
    peer = ("127.0.0.1", 9)
    dial = asyncio.ensure_future(pool.get(peer, timeout=30.0))
    await asyncio.wait_for(retrying.wait(), 5.0)
    waiter = asyncio.ensure_future(pool.get(peer, timeout=30.0))  # shares the dial
    await asyncio.sleep(0)
    pool.abandon(peer, "membership reports the peer failed or left")
    for call in (dial, waiter):
        with pytest.raises(TransportError, match="membership reports the peer failed"):
            await asyncio.wait_for(call, 1.0)
    pool.abandon(peer, "no dial under way: nothing to do")
